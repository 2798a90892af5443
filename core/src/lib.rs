//! Meridian's replication core: every decision about what is committed, what is sent to whom
//! and what is applied, as plain state machines with no sockets, tasks or clocks of their own.
//!
//! The origin and edge binaries and the simulator drive these same state machines; only the
//! shells differ (quinn and tokio in production, quinn-proto over a simulated network in
//! virtual time in the simulator), so what the simulator proves is what ships.
//!
//! - [`apply`]: the origin's deterministic apply core (commands, conditions, history, schemas,
//!   audit chain) over a signed state; [`entry`]: how a committed log entry goes through it;
//!   [`changes`]: change requests and the protection rules that require them.
//! - [`distributor`]: what an origin node, or an edge serving its peers, sends each connection.
//! - [`replicator`]: how an edge keeps its signed state up to date from origins and peers.
//! - [`edge_node`]: an edge whole: the replicator, the distributor serving its peers, and the
//!   dial policy that maps links to connections; [`topology`]: the order it tries peers in.

pub mod apply;
pub mod audit;
pub mod changes;
pub mod distributor;
pub mod edge_node;
pub mod entry;
pub mod exposures;
pub mod history;
pub mod replicator;
pub mod reveals;
pub mod schema;
pub mod tokens;
pub mod topology;
pub mod webhooks;
