//! What the replicator loop publishes for the HTTP API: the readable state, connection status,
//! staleness and counters (also exported as Prometheus metrics), and the changes of each
//! published revision for watches.

use meridian_protocol::flags::exposure::ExposureCounter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meridian_protocol::Revision;
use meridian_store::{Backend, Reader, SpaceGuard};

use crate::config::StrictNamespace;
use crate::watch::{WatchHub, WatchLimits};
use meridian_core::replicator::{Replicator, ReplicatorStats};

/// Most deltas read back from the store per published burst to feed watches; a longer jump
/// (a long catch-up) makes watchers resync instead.
const FEED_MAX_DELTAS: usize = 4_096;

/// One upstream link as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamStatus {
    /// The link's number (0 is the origin link).
    pub link: usize,
    /// `origin` or `peer`.
    pub kind: &'static str,
    /// Who it is on or dialing (an origin address, or a peer's id and address).
    pub upstream: String,
    /// `idle`, `connecting`, `settling` or `connected`.
    pub state: &'static str,
    /// Heads only, while the origin link delivers.
    pub standby: bool,
    /// The revision the upstream last said it holds.
    pub offered_revision: Option<u64>,
}

/// The upstream links and peers, as last observed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpstreamsStatus {
    /// Each link.
    pub links: Vec<UpstreamStatus>,
    /// Peers known (static and from the directory).
    pub peers_known: usize,
    /// Peers this edge is serving now.
    pub peers_served: usize,
}

/// Shared between the replicator loop and the read API.
pub struct EdgeShared {
    /// Edge id.
    pub edge_id: String,
    /// Region.
    pub region: String,
    /// Published state.
    pub reader: Reader,
    /// Whether a connection to an origin is up.
    pub origin_connected: AtomicBool,
    /// Newest revision announced by a verified head.
    pub newest_known: AtomicU64,
    /// Milliseconds the edge has been behind the newest known head.
    pub lag_ms: AtomicU64,
    /// Recent changes for watch subscribers.
    pub watch: Arc<WatchHub>,
    /// Strict namespaces (reads there refuse to be staler than their bound).
    pub strict: Vec<StrictNamespace>,
    /// What the Redis mirror did (all zero without one).
    pub mirror: Arc<Mutex<crate::mirror::MirrorStats>>,
    /// The data folder's free space, as the replicator loop last looked at it.
    pub space: SpaceGuard,
    /// Whether status and metrics answer without a token.
    pub public_status: bool,
    /// Tokens used to read here since they were last reported to the origin.
    pub token_uses: TokenUses,
    /// Revisions service instances applied, until the next report to the origin takes them.
    pub applied: meridian_net::applied::Pending,
    /// Flag evaluations served here since this process started (reported, cumulative, beside
    /// each report to the origin under [`EdgeShared::boot`]).
    pub exposures: Mutex<ExposureCounter>,
    /// Drawn at start: the counter's identity at the origin.
    pub boot: u64,
    /// The data keys this edge may serve secrets with (memory only).
    pub keys: crate::secrets::EdgeKeys,
    /// Secrets opened recently (memory only; cleared when the data keys change).
    pub opened: meridian_net::secrets::OpenedCache,
    /// Reveals waiting to reach the audit log (none: reveals are refused).
    pub reveals: Option<crate::secrets::RevealLog>,
    started: Instant,
    current_as_of: Mutex<Option<Instant>>,
    stats: Mutex<ReplicatorStats>,
    upstreams: Mutex<UpstreamsStatus>,
}

/// A boot id no earlier start of any edge is likely to have drawn: the clock in nanoseconds
/// and the process id, hashed.
fn boot_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(nanos, std::process::id()), &mut h);
    std::hash::Hasher::finish(&h)
}

impl EdgeShared {
    /// Counts one flag evaluation served here.
    pub fn count_exposure(&self, app: &str, env: &str, flag: &str, variant: &str) {
        let mut c = self.exposures.lock().unwrap_or_else(|e| e.into_inner());
        if !c.record(app, env, flag, variant, 1) {
            metrics::counter!("meridian_edge_exposures_dropped_total").increment(1);
        }
    }

    /// The frame that reports the exposure counts, if there are any.
    pub fn exposure_report(&self) -> Option<meridian_protocol::FrameV1> {
        let counts = self
            .exposures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .report();
        (!counts.is_empty()).then_some(meridian_protocol::FrameV1::Exposures {
            boot: self.boot,
            counts,
        })
    }

    /// Fresh shared state.
    pub fn new(
        edge_id: String,
        region: String,
        reader: Reader,
        limits: WatchLimits,
        strict: Vec<StrictNamespace>,
        space: SpaceGuard,
    ) -> Self {
        Self {
            strict,
            space,
            public_status: true,
            token_uses: TokenUses::default(),
            applied: Default::default(),
            exposures: Mutex::default(),
            boot: boot_id(),
            keys: Default::default(),
            opened: Default::default(),
            reveals: None,
            mirror: Arc::default(),
            edge_id,
            region,
            watch: Arc::new(WatchHub::new(reader.clone(), limits)),
            reader,
            origin_connected: AtomicBool::new(false),
            newest_known: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            started: Instant::now(),
            current_as_of: Mutex::new(None),
            stats: Mutex::new(ReplicatorStats::default()),
            upstreams: Mutex::new(UpstreamsStatus::default()),
        }
    }

    /// Milliseconds since this edge last knew that what it published was the newest the
    /// cluster signed (since start if never): a head merely heard of, not yet applied and
    /// persisted, does not count.
    pub fn staleness_ms(&self, now: Instant) -> u64 {
        let since = self
            .current_as_of
            .lock()
            .ok()
            .and_then(|g| *g)
            .unwrap_or(self.started);
        now.saturating_duration_since(since).as_millis() as u64
    }

    /// The replicator's counters as last observed.
    pub fn stats(&self) -> ReplicatorStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Feeds the watch hub the revisions published since it last looked: their deltas from
    /// the store, or a jump when they are not all there (a snapshot, a long catch-up).
    fn feed_watches<B: Backend>(&self, rep: &Replicator<B>) {
        let published = self
            .reader
            .read()
            .map(|p| p.state.revision())
            .unwrap_or_else(|e| e.into_inner().state.revision());
        let fed = Revision(self.watch.revision());
        if published <= fed {
            return;
        }
        match rep.state().deltas_after(fed, FEED_MAX_DELTAS) {
            Ok(Some(deltas))
                if deltas
                    .first()
                    .is_some_and(|d| d.delta.revision == fed.next())
                    && deltas.last().is_some_and(|d| d.delta.revision >= published) =>
            {
                self.watch.publish(
                    deltas
                        .iter()
                        .map(|d| &d.delta)
                        .filter(|d| d.revision <= published),
                );
            }
            Ok(_) => self.watch.jump(published.0),
            Err(e) => {
                tracing::warn!(error = %e, "reading deltas for watches failed; watchers resync");
                self.watch.jump(published.0);
            }
        }
    }

    /// Records the upstream links and peers the replication loop last saw.
    pub fn set_upstreams(
        &self,
        links: Vec<UpstreamStatus>,
        peers_known: usize,
        peers_served: usize,
    ) {
        if let Ok(mut g) = self.upstreams.lock() {
            *g = UpstreamsStatus {
                links,
                peers_known,
                peers_served,
            };
        }
    }

    /// The upstream links and peers as last seen.
    pub fn upstreams(&self) -> UpstreamsStatus {
        self.upstreams.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Copies the replicator's observable state, feeds watches and exports metrics.
    pub fn observe<B: Backend>(&self, rep: &Replicator<B>, now: Instant) {
        self.feed_watches(rep);
        self.origin_connected
            .store(rep.is_connected(), Ordering::Relaxed);
        self.newest_known
            .store(rep.newest_known().0, Ordering::Relaxed);
        self.lag_ms
            .store(rep.lag(now).as_millis() as u64, Ordering::Relaxed);
        if let Ok(mut g) = self.current_as_of.lock() {
            *g = rep.current_as_of();
        }
        let stats = rep.stats();
        if let Ok(mut g) = self.stats.lock() {
            *g = stats;
        }
        let edge = self.edge_id.clone();
        metrics::gauge!("meridian_edge_revision", "edge" => edge.clone())
            .set(rep.state().revision().0 as f64);
        metrics::counter!("meridian_edge_deltas_applied_total", "edge" => edge.clone())
            .absolute(stats.deltas_applied);
        metrics::counter!("meridian_edge_snapshots_installed_total", "edge" => edge.clone())
            .absolute(stats.snapshots_installed);
        metrics::counter!("meridian_edge_store_errors_total", "edge" => edge.clone())
            .absolute(stats.store_errors);
        metrics::gauge!("meridian_edge_staleness_ms", "edge" => edge.clone())
            .set(self.staleness_ms(now) as f64);
        metrics::gauge!("meridian_edge_disk_full", "edge" => edge.clone())
            .set(if rep.storage_full() { 1.0 } else { 0.0 });
        metrics::gauge!("meridian_edge_disk_free_bytes", "edge" => edge.clone())
            .set(self.space.free_bytes_seen() as f64);
        metrics::counter!("meridian_edge_dropped_disk_full_total", "edge" => edge.clone())
            .absolute(stats.dropped_disk_full);
        for (reason, v) in [
            ("bad_signature", stats.rejected_bad_signature),
            ("unknown_key", stats.rejected_unknown_key),
            ("delta_mismatch", stats.rejected_delta_mismatch),
            ("digest_mismatch", stats.rejected_digest_mismatch),
            ("malformed", stats.rejected_malformed),
            ("unexpected", stats.rejected_unexpected),
        ] {
            metrics::counter!("meridian_edge_rejected_total", "edge" => edge.clone(), "reason" => reason)
                .absolute(v);
        }
    }
}

/// When tokens were last used at this edge, until the next report to the origin takes them:
/// one entry per token, at most [`TokenUses::MAX_TOKENS`] (more are not counted until the
/// next report).
#[derive(Debug, Default)]
pub struct TokenUses {
    seen: Mutex<std::collections::HashMap<u64, u64>>,
}

impl TokenUses {
    /// Most distinct tokens held between two reports.
    pub const MAX_TOKENS: usize = 10_000;

    /// Notes that token `id` was used at `ms`.
    pub fn touch(&self, id: u64, ms: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= Self::MAX_TOKENS && !seen.contains_key(&id) {
            return;
        }
        let at = seen.entry(id).or_default();
        *at = (*at).max(ms);
    }

    /// Takes at most `max` of the uses noted.
    pub fn take(&self, max: usize) -> Vec<(u64, u64)> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<u64> = seen.keys().take(max).copied().collect();
        keys.into_iter()
            .filter_map(|k| seen.remove(&k).map(|ms| (k, ms)))
            .collect()
    }
}
