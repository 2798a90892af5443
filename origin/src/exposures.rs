//! Flag exposure counts at the origin: what edges report ([`FrameV1::Exposures`]) is merged by
//! maximum into this node's [`ExposureLedger`]; the counts that grew are committed through
//! Raft every interval as [`Command::Exposures`] (so every node answers the same totals and
//! none is lost with a node), stored per `(app, env, flag, variant, edge, boot)` under
//! [`EXPOSURE_PREFIX`] and applied by maximum again, so a count committed twice, or by two
//! nodes that both heard it, counts once.
//!
//! [`FrameV1::Exposures`]: meridian_protocol::FrameV1::Exposures

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meridian_protocol::flags::exposure::{
    ExposureCount, ExposureKey, ExposureLedger, ExposureTotals, Source,
};
use serde::{Deserialize, Serialize};

use crate::core::{Command, Proposal};

/// Where committed counts live.
pub const EXPOSURE_PREFIX: [u8; 2] = [meridian_store::EXTRA_PREFIX, b'e'];
/// How often a node commits the counts that grew (the totals' delay behind evaluation).
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most counts one [`Command::Exposures`] carries.
pub const MAX_EXPOSURES_PER_COMMAND: usize = 1000;
/// Longest name in a committed count (an edge id, region, app, env, flag or variant).
pub const MAX_EXPOSURE_NAME_BYTES: usize = 128;

/// One count as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureEntry {
    /// The edge and boot that counted.
    pub source: Source,
    /// The edge's region.
    pub region: String,
    /// What, and how many since that boot.
    pub count: ExposureCount,
}

impl ExposureEntry {
    /// The store key: `prefix app 0 env 0 flag 0 variant 0 edge 0 boot(8, big-endian)`, so
    /// one flag's counts are one range.
    pub fn store_key(&self) -> Vec<u8> {
        let k = &self.count.key;
        let mut out = flag_prefix(&k.app, &k.env, &k.flag);
        out.extend_from_slice(k.variant.as_bytes());
        out.push(0);
        out.extend_from_slice(self.source.edge.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.source.boot.to_be_bytes());
        out
    }

    /// The stored value: the count (8, big-endian) then the region.
    pub fn store_value(&self) -> Vec<u8> {
        let mut v = self.count.count.to_be_bytes().to_vec();
        v.extend_from_slice(self.region.as_bytes());
        v
    }

    /// Whether every name is within bounds and free of the separator.
    pub fn is_admissible(&self) -> bool {
        let k = &self.count.key;
        [
            &k.app,
            &k.env,
            &k.flag,
            &k.variant,
            &self.source.edge,
            &self.region,
        ]
        .iter()
        .all(|s| s.len() <= MAX_EXPOSURE_NAME_BYTES && !s.contains('\0'))
    }
}

/// The start of the store keys of one flag's counts.
pub fn flag_prefix(app: &str, env: &str, flag: &str) -> Vec<u8> {
    let mut out = EXPOSURE_PREFIX.to_vec();
    for part in [app, env, flag] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out
}

/// The count stored under a key, if any.
pub fn stored_count(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The totals of one flag from its stored `(key, value)` records.
pub fn totals(app: &str, env: &str, flag: &str, records: &[(Vec<u8>, Vec<u8>)]) -> ExposureTotals {
    let prefix = flag_prefix(app, env, flag);
    let mut ledger = ExposureLedger::default();
    for (k, v) in records {
        let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let mut parts = rest.splitn(3, |b| *b == 0);
        let (Some(variant), Some(edge), Some(boot)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(boot) = <[u8; 8]>::try_from(boot) else {
            continue;
        };
        let source = Source {
            edge: String::from_utf8_lossy(edge).into_owned(),
            boot: u64::from_be_bytes(boot),
        };
        let region = String::from_utf8_lossy(v.get(8..).unwrap_or_default()).into_owned();
        let count = ExposureCount {
            key: ExposureKey {
                app: app.to_owned(),
                env: env.to_owned(),
                flag: flag.to_owned(),
                variant: String::from_utf8_lossy(variant).into_owned(),
            },
            count: stored_count(v),
        };
        ledger.merge(&source, &region, [count]);
    }
    ledger.totals(app, env, flag)
}

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
                meta: crate::history::WriteMeta {
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
