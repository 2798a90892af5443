//! The origin's typed configuration: a TOML file, defaults for everything optional, and
//! `validate()` whose errors name the key and the limit.

use std::net::SocketAddr;
use std::path::PathBuf;

use meridian_net::{QuicTuning, TlsPaths};
use serde::{Deserialize, Serialize};

/// Origin node configuration (`deploy/regions/origin.toml` documents each key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// This node's id, shown in `/v1/status`.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    /// Where the HTTP write API listens.
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// Where the QUIC replication server listens.
    #[serde(default = "default_quic")]
    pub quic_listen: SocketAddr,
    /// Folder for the sled database.
    pub data_dir: PathBuf,
    /// Ed25519 signing key, 64 hex characters.
    pub signing_key: PathBuf,
    /// Server certificate, key, and the CA edges' client certificates must chain to.
    pub tls: TlsPaths,
    /// Largest accepted value, in bytes of JSON text.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// How many recent deltas are kept for catch-up; edges further behind get a snapshot.
    #[serde(default = "default_delta_window")]
    pub delta_window: u64,
    /// How often edges are sent the newest head.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Most revisions in flight to one edge beyond its acknowledgement.
    #[serde(default = "default_max_inflight_deltas")]
    pub max_inflight_deltas: u64,
    /// QUIC keep-alive and idle timeout.
    #[serde(default)]
    pub quic: QuicTuning,
}

fn default_node_id() -> String {
    "origin-1".into()
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_quic() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_max_value_bytes() -> usize {
    meridian_protocol::model::DEFAULT_MAX_VALUE_BYTES
}
fn default_delta_window() -> u64 {
    10_000
}
fn default_heartbeat_interval_ms() -> u64 {
    500
}
fn default_max_inflight_deltas() -> u64 {
    1024
}

pub use meridian_net::config::ConfigError;
use meridian_net::config::check;

impl OriginConfig {
    /// Checks every value against its limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(!self.node_id.is_empty(), "node_id", "must not be empty")?;
        check(
            (1..=64 * 1024 * 1024).contains(&self.max_value_bytes),
            "max_value_bytes",
            format!(
                "must be between 1 and 67108864, got {}",
                self.max_value_bytes
            ),
        )?;
        check(
            self.max_value_bytes + 64 * 1024 <= meridian_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            "max_value_bytes",
            "must leave 64 KiB of room below the 8 MiB frame limit",
        )?;
        check(
            (1..=10_000_000).contains(&self.delta_window),
            "delta_window",
            format!("must be between 1 and 10000000, got {}", self.delta_window),
        )?;
        check(
            (10..=60_000).contains(&self.heartbeat_interval_ms),
            "heartbeat_interval_ms",
            format!(
                "must be between 10 and 60000, got {}",
                self.heartbeat_interval_ms
            ),
        )?;
        check(
            (1..=1_000_000).contains(&self.max_inflight_deltas),
            "max_inflight_deltas",
            format!(
                "must be between 1 and 1000000, got {}",
                self.max_inflight_deltas
            ),
        )?;
        check(
            self.quic.keep_alive_interval_ms < self.quic.max_idle_timeout_ms,
            "quic.keep_alive_interval_ms",
            "must be below quic.max_idle_timeout_ms",
        )?;
        Ok(())
    }
}
