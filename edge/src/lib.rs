//! Meridian's edge shell: the QUIC client (and peer server) that carries out what the core's
//! replicator decides, the local read API served from memory, watch, OFREP and the Redis mirror.

pub mod api;
pub mod client;
pub mod config;
pub mod mirror;
pub mod node;
pub mod ofrep;
pub mod openapi;
pub mod secrets;
pub mod shared;
pub mod watch;

pub use config::EdgeConfig;
pub use node::{EdgeHandle, StartError, start};
