//! Meridian's edge: the sans-IO replicator that keeps a verified copy of the origin's signed
//! state, its QUIC client shell, and the local read API served from memory.

pub mod api;
pub mod client;
pub mod config;
pub mod mirror;
pub mod node;
pub mod ofrep;
pub mod replicator;
pub mod secrets;
pub mod shared;
pub mod watch;

pub use config::EdgeConfig;
pub use node::{EdgeHandle, StartError, start};
