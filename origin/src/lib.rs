//! Meridian's origin: the deterministic write state machine over a sled-backed signed state,
//! the HTTP write API, the sans-IO distributor that decides what each edge is sent, and the
//! QUIC server shell that carries it out.

pub mod admission;
pub mod audit;
pub mod bootstrap;
pub mod config;
pub mod core;
pub mod disk;
pub mod distributor;
pub mod drift;
pub mod exposures;
pub mod flagset;
pub mod history;
pub mod http;
pub mod node;
pub mod raft;
pub mod rollout;
pub mod schema;
pub mod secrets;
pub mod server;

pub use config::OriginConfig;
pub use node::{OriginHandle, StartError, start};
