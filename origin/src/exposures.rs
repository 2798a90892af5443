//! Flag exposure counts at the origin: what edges report ([`FrameV1::Exposures`]) is merged by
//! maximum into this node's [`ExposureLedger`]; the counts that grew are committed through
//! Raft every interval as [`Command::Exposures`] (so every node answers the same totals and
//! none is lost with a node). How they are stored and applied is `meridian_core::exposures`.
//!
//! [`FrameV1::Exposures`]: meridian_protocol::FrameV1::Exposures

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meridian_core::apply::{Command, Proposal};
use meridian_protocol::flags::exposure::{ExposureCount, ExposureKey, ExposureLedger, Source};

pub use meridian_core::exposures::*;

/// How often a node commits the counts that grew (the totals' delay behind evaluation).
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts that grew since they were last committed, with the region of their edge.
type Grown = BTreeMap<(Source, ExposureKey), (String, u64)>;

/// What this node heard from edges, and the counts that grew since they were last committed.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    inner: Arc<Mutex<(ExposureLedger, Grown)>>,
}

impl Pending {
    /// Merges an edge's report.
    pub fn merge(&self, source: Source, region: &str, counts: Vec<ExposureCount>) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (ledger, grown) = &mut *guard;
        for c in ledger.merge(&source, region, counts) {
            let slot = grown
                .entry((source.clone(), c.key))
                .or_insert_with(|| (region.to_owned(), 0));
            slot.1 = slot.1.max(c.count);
        }
    }

    /// Takes at most `max` of the grown counts.
    pub fn take(&self, max: usize) -> Vec<ExposureEntry> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let grown = &mut guard.1;
        let keys: Vec<_> = grown.keys().take(max).cloned().collect();
        keys.into_iter()
            .filter_map(|k| {
                grown.remove(&k).map(|(region, count)| ExposureEntry {
                    source: k.0,
                    region,
                    count: ExposureCount { key: k.1, count },
                })
            })
            .collect()
    }

    /// Puts back counts whose commit failed (the larger count wins if more arrived since).
    pub fn put_back(&self, entries: Vec<ExposureEntry>) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            let slot = guard
                .1
                .entry((e.source, e.count.key))
                .or_insert_with(|| (e.region, 0));
            slot.1 = slot.1.max(e.count.count);
        }
    }
}

/// Commits the grown counts every `interval`, until shutdown.
pub async fn commit_exposures(
    pending: Pending,
    cluster: crate::raft::cluster::Cluster,
    interval: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        loop {
            let batch = pending.take(MAX_EXPOSURES_PER_COMMAND);
            if batch.is_empty() {
                break;
            }
            let proposal = Proposal {
                command: Command::Exposures(batch.clone()),
                meta: meridian_core::history::WriteMeta {
                    time_ms: meridian_net::auth::now_ms(),
                    actor: "meridian".into(),
                    ..Default::default()
                },
            };
            if let Err(e) = cluster.write(proposal).await {
                tracing::debug!(error = %e, "exposure counts not committed; next time");
                pending.put_back(batch);
                break;
            }
        }
    }
}
