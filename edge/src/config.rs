//! The edge's typed configuration: a TOML file, defaults for everything optional, and
//! `validate()` whose errors name the key and the limit.

use std::net::SocketAddr;
use std::path::PathBuf;

use meridian_net::{QuicTuning, TlsPaths};
use serde::{Deserialize, Serialize};

use crate::mirror::RedisMirrorConfig;
use crate::watch::WatchLimits;

/// Edge node configuration (`deploy/regions/<region>.toml` documents each key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This edge's id (unique across the deployment).
    pub edge_id: String,
    /// The region it serves, e.g. `eu-west`.
    pub region: String,
    /// Where the HTTP read API listens.
    pub http_listen: SocketAddr,
    /// Folder for the sled database.
    pub data_dir: PathBuf,
    /// Origin QUIC addresses; the edge rotates through them when a connection fails.
    pub origins: Vec<SocketAddr>,
    /// TLS server name the origin's certificate carries.
    #[serde(default = "default_server_name")]
    pub origin_server_name: String,
    /// Client certificate, key, and the CA the origin's certificate must chain to.
    pub tls: TlsPaths,
    /// Ed25519 public keys (64 hex characters each) whose signed heads are accepted.
    pub trusted_signing_keys: Vec<PathBuf>,
    /// How many recent deltas are kept (for peers, later).
    #[serde(default = "default_delta_window")]
    pub delta_window: u64,
    /// How often the edge sends a heartbeat.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// First reconnect delay.
    #[serde(default = "default_backoff_min")]
    pub reconnect_backoff_min_ms: u64,
    /// Largest reconnect delay.
    #[serde(default = "default_backoff_max")]
    pub reconnect_backoff_max_ms: u64,
    /// Ask again when a newer head is known and nothing arrived for this long.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// Reconnect when nothing at all arrived for this long.
    #[serde(default = "default_silence_timeout_ms")]
    pub silence_timeout_ms: u64,
    /// QUIC keep-alive and idle timeout.
    #[serde(default)]
    pub quic: QuicTuning,
    /// Connection limits and deadlines of the read API.
    #[serde(default)]
    pub http: meridian_net::serve::ServeLimits,
    /// Watch ring size, per-subscriber buffer and heartbeat interval.
    #[serde(default)]
    pub watch: WatchLimits,
    /// Strict namespaces: reads there answer 503 `stale` rather than serve data older than
    /// their bound.
    #[serde(default)]
    pub strict: Vec<StrictNamespace>,
    /// Optional mirror of the edge's state into a regional Redis.
    #[serde(default)]
    pub redis: Option<RedisMirrorConfig>,
    /// The free space kept on the data folder's filesystem: below it the edge applies nothing
    /// more (it serves what it has) until space returns.
    #[serde(default)]
    pub storage: meridian_store::StorageConfig,
    /// Authentication: whether status and metrics are public (tokens and policies come from
    /// the origin, replicated).
    #[serde(default)]
    pub auth: meridian_net::auth::AuthConfig,
    /// Where this edge accepts connections from peer edges (QUIC, mutual TLS, edge
    /// certificates only). Without it the edge relays from peers but serves none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_listen: Option<SocketAddr>,
    /// The address peers dial (`host:port`), announced to the origin for the directory of
    /// edges; defaults to `peer_listen` when that names a specific address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_advertise: Option<String>,
    /// Peers known without the origin's directory (tried first, in this order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<StaticPeer>,
    /// How many warm links to peers the edge keeps (0: relay from no peer).
    #[serde(default = "default_peer_links")]
    pub peer_links: usize,
    /// The origin cluster's region: its edges come first when choosing peers (defaults to
    /// this edge's region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_region: Option<String>,
    /// Serve the client API over HTTPS with this certificate (plain HTTP without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<meridian_net::tls::HttpsPaths>,
}

/// A peer edge named in the configuration (`[[peers]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPeer {
    /// Its edge id (its certificate must be issued for it).
    pub edge_id: String,
    /// Its region.
    pub region: String,
    /// Where it accepts peers, `host:port`.
    pub addr: String,
}

/// Most warm peer links.
pub const MAX_PEER_LINKS: usize = 8;

impl EdgeConfig {
    /// The address announced to the origin for peers to dial, if any.
    pub fn advertised_peer_addr(&self) -> Option<String> {
        match (&self.peer_advertise, self.peer_listen) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(l)) if !l.ip().is_unspecified() && l.port() != 0 => Some(l.to_string()),
            _ => None,
        }
    }
}

/// A namespace pattern whose reads must not be staler than `max_staleness_ms` (`[[strict]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrictNamespace {
    /// `app/env`; either side may be `*` (any), e.g. `payments/prod`, `*/prod`, `payments/*`.
    pub namespace: String,
    /// Longest time since the edge last confirmed the origin's newest head (directly or
    /// through a peer) that reads here tolerate.
    pub max_staleness_ms: u64,
}

impl StrictNamespace {
    /// Whether `app/env` falls under this pattern.
    pub fn matches(&self, app: &str, env: &str) -> bool {
        let Some((a, e)) = self.namespace.split_once('/') else {
            return false;
        };
        (a == "*" || a == app) && (e == "*" || e == env)
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let valid = self.namespace.split_once('/').is_some_and(|(a, e)| {
            (a == "*" || meridian_protocol::addr::validate_app(a).is_ok())
                && (e == "*" || meridian_protocol::addr::validate_env(e).is_ok())
        });
        check(
            valid,
            "strict.namespace",
            format!(
                "(rule {}) must be app/env with either side `*`, got {:?}",
                i + 1,
                self.namespace
            ),
        )?;
        check(
            (1..=86_400_000).contains(&self.max_staleness_ms),
            "strict.max_staleness_ms",
            format!(
                "(rule {}) must be between 1 and 86400000, got {}",
                i + 1,
                self.max_staleness_ms
            ),
        )
    }

    /// The tightest bound among `rules` that covers `app/env`, if any.
    pub fn bound(rules: &[StrictNamespace], app: &str, env: &str) -> Option<u64> {
        rules
            .iter()
            .filter(|r| r.matches(app, env))
            .map(|r| r.max_staleness_ms)
            .min()
    }
}

fn default_peer_links() -> usize {
    2
}
fn default_server_name() -> String {
    meridian_net::tls::ORIGIN_SERVER_NAME.into()
}
fn default_delta_window() -> u64 {
    1_000
}
fn default_heartbeat_interval_ms() -> u64 {
    500
}
fn default_backoff_min() -> u64 {
    50
}
fn default_backoff_max() -> u64 {
    2_000
}
fn default_stall_timeout_ms() -> u64 {
    1_000
}
fn default_silence_timeout_ms() -> u64 {
    1_500
}

pub use meridian_net::config::ConfigError;
use meridian_net::config::check;

impl EdgeConfig {
    /// Checks every value against its limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.auth.bootstrap_token_file.is_none(),
            "auth.bootstrap_token_file",
            "only an origin takes a bootstrap token; edges replicate the origin's tokens",
        )?;
        self.http.validate()?;
        self.quic.validate()?;
        check(
            self.peer_links <= MAX_PEER_LINKS,
            "peer_links",
            format!("must be at most {MAX_PEER_LINKS}, got {}", self.peer_links),
        )?;
        if let Some(a) = &self.peer_advertise {
            check(
                meridian_protocol::directory::valid_peer_addr(a),
                "peer_advertise",
                format!("must be host:port, got {a:?}"),
            )?;
        }
        for (i, p) in self.peers.iter().enumerate() {
            check(
                meridian_protocol::directory::valid_peer_addr(&p.addr),
                "peers.addr",
                format!("(peer {}) must be host:port, got {:?}", i + 1, p.addr),
            )?;
            check(
                p.edge_id != self.edge_id,
                "peers.edge_id",
                format!("(peer {}) names this edge itself", i + 1),
            )?;
        }
        check(
            meridian_protocol::addr::validate_app(&self.edge_id).is_ok() && self.edge_id != "_",
            "edge_id",
            "must match [a-z0-9][a-z0-9_-]{0,62}",
        )?;
        check(
            meridian_protocol::addr::validate_app(&self.region).is_ok() && self.region != "_",
            "region",
            "must match [a-z0-9][a-z0-9_-]{0,62}",
        )?;
        check(
            !self.origins.is_empty(),
            "origins",
            "must list at least one origin address",
        )?;
        check(
            !self.trusted_signing_keys.is_empty(),
            "trusted_signing_keys",
            "must list at least one public key file",
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
            self.reconnect_backoff_min_ms >= 1
                && self.reconnect_backoff_min_ms <= self.reconnect_backoff_max_ms
                && self.reconnect_backoff_max_ms <= 60_000,
            "reconnect_backoff_min_ms",
            "must satisfy 1 <= reconnect_backoff_min_ms <= reconnect_backoff_max_ms <= 60000",
        )?;
        check(
            self.stall_timeout_ms >= self.heartbeat_interval_ms,
            "stall_timeout_ms",
            "must be at least heartbeat_interval_ms",
        )?;
        check(
            self.silence_timeout_ms > self.heartbeat_interval_ms,
            "silence_timeout_ms",
            "must exceed heartbeat_interval_ms",
        )?;
        meridian_net::config::check_places(
            ("watch.max_subscribers", self.watch.max_subscribers),
            (
                "watch.max_subscribers_per_client",
                self.watch.max_subscribers_per_client,
            ),
        )?;
        check(
            (1..=10_000_000).contains(&self.watch.ring_events),
            "watch.ring_events",
            format!(
                "must be between 1 and 10000000, got {}",
                self.watch.ring_events
            ),
        )?;
        check(
            (1024..=1 << 34).contains(&self.watch.ring_bytes),
            "watch.ring_bytes",
            format!(
                "must be between 1024 and 17179869184, got {}",
                self.watch.ring_bytes
            ),
        )?;
        check(
            (1..=self.watch.ring_events).contains(&self.watch.subscriber_buffer_events),
            "watch.subscriber_buffer_events",
            "must be between 1 and watch.ring_events",
        )?;
        check(
            (100..=600_000).contains(&self.watch.heartbeat_ms),
            "watch.heartbeat_ms",
            format!(
                "must be between 100 and 600000, got {}",
                self.watch.heartbeat_ms
            ),
        )?;
        if let Some(r) = &self.redis {
            check(
                r.url.starts_with("redis://") || r.url.starts_with("rediss://"),
                "redis.url",
                format!(
                    "must be redis://host:port[/db], got {:?}",
                    crate::mirror::redacted(&r.url)
                ),
            )?;
            check(
                (10..=600_000).contains(&r.check_interval_ms),
                "redis.check_interval_ms",
                format!("must be between 10 and 600000, got {}", r.check_interval_ms),
            )?;
        }
        for (i, rule) in self.strict.iter().enumerate() {
            rule.validate(i)?;
        }
        check(
            self.quic.keep_alive_interval_ms < self.quic.max_idle_timeout_ms,
            "quic.keep_alive_interval_ms",
            "must be below quic.max_idle_timeout_ms",
        )?;
        Ok(())
    }
}
