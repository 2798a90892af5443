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
    /// Where the private Raft channel listens: HTTPS with mutual TLS, for origin certificates
    /// only (Raft RPC, forwarded writes and reads, membership changes).
    #[serde(default = "default_raft_listen")]
    pub raft_listen: SocketAddr,
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
    /// Connection limits and deadlines of the client API (and the Raft channel's deadlines).
    #[serde(default)]
    pub http: meridian_net::serve::ServeLimits,
    /// This node's place in the Raft cluster.
    #[serde(default)]
    pub raft: RaftConfig,
    /// How much per-key history is kept.
    #[serde(default)]
    pub history: HistoryConfig,
    /// The free space kept on the data folder's filesystem: below it the node refuses writes
    /// with 507 and leaves the Raft quorum to the others.
    #[serde(default)]
    pub storage: meridian_store::StorageConfig,
    /// Authentication: the bootstrap admin token, and whether status and metrics are public.
    #[serde(default)]
    pub auth: meridian_net::auth::AuthConfig,
    /// How long audit records are kept.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Serve the client API over HTTPS with this certificate (plain HTTP without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<meridian_net::tls::HttpsPaths>,
    /// Secrets: where the key-encryption keys are.
    #[serde(default)]
    pub secrets: SecretsConfig,
}

/// Secrets (`[secrets]` in the origin's TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// The key-encryption key file (JSON, mode 0600, the same on every origin node; made by
    /// `meridian secret init-keys`). Without it secret writes and reveals answer 503
    /// `secrets_unconfigured`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_file: Option<PathBuf>,
}

/// Audit log retention (`[audit]` in the origin's TOML), independent of the history's: the
/// leader drops older records at each compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days a record is kept.
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 365,
        }
    }
}

/// History retention (`[history]` in the origin's TOML). The leader commits a compaction every
/// `compact_interval_s` with these limits, so every node keeps the same history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Versions kept per key (the newest always is).
    pub max_versions: u32,
    /// Versions older than this many seconds are dropped (0: no age limit); the newest version
    /// of a key is kept whatever its age.
    pub max_age_s: u64,
    /// How often the leader compacts.
    pub compact_interval_s: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_versions: 100,
            max_age_s: 30 * 24 * 3600,
            compact_interval_s: 60,
        }
    }
}

impl HistoryConfig {
    /// The retention this config asks for.
    pub fn retention(&self) -> meridian_core::history::Retention {
        meridian_core::history::Retention {
            max_versions: self.max_versions,
            max_age_ms: (self.max_age_s > 0).then(|| self.max_age_s.saturating_mul(1000)),
        }
    }
}

/// A cluster member: its number and the Raft address other nodes reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The member's number (at least 1).
    pub id: u64,
    /// Its Raft listener's address, `host:port`.
    pub addr: String,
}

/// Raft settings (`[raft]` in the origin's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// This node's number in the cluster (at least 1).
    pub id: u64,
    /// The Raft address other nodes reach this one at; defaults to `raft_listen`.
    pub advertise: Option<String>,
    /// The members a new cluster starts with. Empty means a cluster of this node alone. Only
    /// the member with the lowest id initializes the cluster, and only while its log is empty;
    /// the others wait to be contacted. Later changes go through the membership API.
    pub members: Vec<Member>,
    /// How often the leader sends heartbeats to followers.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min_ms, election_timeout_max_ms)` starts an election.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many log entries since the last one; the log before
    /// it is purged, which bounds the disk the log uses.
    pub snapshot_after_logs: u64,
    /// Entries kept behind a snapshot, so that a follower slightly behind catches up from the
    /// log rather than by snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How long a write or a linearizable read may wait for a quorum before it is refused
    /// with 503 `no_quorum`.
    pub request_timeout_ms: u64,
    /// The largest snapshot this node takes from a leader; a chunk beyond it is refused.
    pub max_snapshot_bytes: u64,
    /// Connections the Raft listener serves at once.
    pub max_connections: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            id: 1,
            advertise: None,
            members: Vec::new(),
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            request_timeout_ms: 5_000,
            max_snapshot_bytes: 4 << 30,
            max_connections: 256,
        }
    }
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
fn default_raft_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7170))
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
        self.http.validate()?;
        self.quic.validate()?;
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
        check(
            (1..=1_000_000).contains(&self.history.max_versions),
            "history.max_versions",
            format!(
                "must be between 1 and 1000000, got {}",
                self.history.max_versions
            ),
        )?;
        check(
            (1..=86_400).contains(&self.history.compact_interval_s),
            "history.compact_interval_s",
            format!(
                "must be between 1 and 86400, got {}",
                self.history.compact_interval_s
            ),
        )?;
        self.auth.validate()?;
        check(
            (1..=36_500).contains(&self.audit.retention_days),
            "audit.retention_days",
            format!(
                "must be between 1 and 36500, got {}",
                self.audit.retention_days
            ),
        )?;
        let r = &self.raft;
        check(r.id >= 1, "raft.id", "must be at least 1")?;
        check(
            r.members.is_empty() || r.members.iter().any(|m| m.id == r.id),
            "raft.members",
            format!("must include this node (raft.id = {})", r.id),
        )?;
        for m in &r.members {
            check(m.id >= 1, "raft.members", "every id must be at least 1")?;
            check(
                !m.addr.is_empty(),
                "raft.members",
                format!("member {} has an empty addr", m.id),
            )?;
            check(
                r.members.iter().filter(|o| o.id == m.id).count() == 1,
                "raft.members",
                format!("member id {} appears twice", m.id),
            )?;
        }
        check(
            (1..=10_000).contains(&r.heartbeat_interval_ms),
            "raft.heartbeat_interval_ms",
            format!(
                "must be between 1 and 10000, got {}",
                r.heartbeat_interval_ms
            ),
        )?;
        check(
            r.election_timeout_min_ms > 2 * r.heartbeat_interval_ms,
            "raft.election_timeout_min_ms",
            "must exceed twice raft.heartbeat_interval_ms",
        )?;
        check(
            r.election_timeout_max_ms > r.election_timeout_min_ms,
            "raft.election_timeout_max_ms",
            "must exceed raft.election_timeout_min_ms",
        )?;
        check(
            r.snapshot_after_logs >= 1,
            "raft.snapshot_after_logs",
            "must be at least 1",
        )?;
        check(
            (1..=600_000).contains(&r.request_timeout_ms),
            "raft.request_timeout_ms",
            format!("must be between 1 and 600000, got {}", r.request_timeout_ms),
        )?;
        check(
            (1 << 20..=1 << 40).contains(&r.max_snapshot_bytes),
            "raft.max_snapshot_bytes",
            format!(
                "must be between 1048576 and 1099511627776, got {}",
                r.max_snapshot_bytes
            ),
        )?;
        check(
            (4..=65_536).contains(&r.max_connections),
            "raft.max_connections",
            format!("must be between 4 and 65536, got {}", r.max_connections),
        )?;
        Ok(())
    }
}
