//! Meridian's origin: the deterministic write state machine over a sled-backed signed state,
//! the HTTP write API, the sans-IO distributor that decides what each edge is sent, and the
//! QUIC server shell that carries it out.

pub mod admission;
pub mod api;
pub mod audit;
pub mod audit_api;
pub mod bootstrap;
pub mod config;
pub mod core;
pub mod disk;
pub mod distributor;
pub mod drift;
pub mod edges_api;
pub mod history;
pub mod history_api;
pub mod node;
pub mod raft;
pub mod schema;
pub mod schema_api;
pub mod server;
pub mod tokens_api;

pub use config::OriginConfig;
pub use node::{OriginHandle, StartError, start};
