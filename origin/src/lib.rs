//! Meridian's origin shell: Raft (openraft) over a private mutual-TLS listener with its log and
//! state machine in sled, the HTTP write API, and the QUIC server that carries out what the
//! distributor decides. The decisions themselves (the apply core, the distributor) live in
//! `meridian-core`.

pub mod admission;
pub mod applied;
pub mod backup;
pub mod bootstrap;
pub mod config;
pub mod delivery;
pub mod disk;
pub mod drift;
pub mod exposures;
pub mod flagset;
pub mod http;
pub mod node;
pub mod raft;
pub mod rollout;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod webhooks;

pub use config::OriginConfig;
pub use node::{OriginHandle, StartError, start};
