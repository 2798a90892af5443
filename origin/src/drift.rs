//! Drift detection: which edges lag or diverge.
//!
//! This module owns the table of edges this origin node has heard from (kept after they
//! disconnect, so a stopped edge shows as lagging rather than vanishing) and the assessment of
//! each row against this node's signed history: an edge whose reported digest differs from the
//! origin's digest at the same revision has diverged (a wrong or corrupted store, a foreign
//! deployment); an edge more than a threshold behind, by its own report or by silence while
//! the origin moved on, lags. The assessment is pure; the HTTP handler and the metrics task
//! feed it.

use std::collections::BTreeMap;
use std::time::Instant;

use meridian_protocol::{CacheState, Digest, Revision};
use serde::Serialize;

use meridian_core::distributor::{ChangeSource, EdgeInfo};

/// Most edges remembered; beyond it the longest-silent disconnected ones are forgotten.
pub const MAX_KNOWN_EDGES: usize = 100_000;

/// Default lag beyond which an edge is flagged.
pub const DEFAULT_LAG_THRESHOLD_MS: u64 = 10_000;

/// An edge as last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownEdge {
    /// Its latest Hello and Report.
    pub info: EdgeInfo,
    /// Whether it is connected to this node now.
    pub connected: bool,
}

/// Every edge this node has heard from, by edge id.
#[derive(Debug, Default, Clone)]
pub struct KnownEdges {
    edges: BTreeMap<String, KnownEdge>,
}

impl KnownEdges {
    /// Updates from the sessions connected now (an edge with several connections counts by
    /// its latest report); edges not among them are kept as disconnected.
    pub fn update<'a>(&mut self, connected: impl IntoIterator<Item = &'a EdgeInfo>) {
        for e in self.edges.values_mut() {
            e.connected = false;
        }
        for info in connected {
            let entry = self
                .edges
                .entry(info.edge_id.clone())
                .or_insert_with(|| KnownEdge {
                    info: info.clone(),
                    connected: true,
                });
            if info.reported_at >= entry.info.reported_at || !entry.connected {
                entry.info = info.clone();
            }
            entry.connected = true;
        }
        while self.edges.len() > MAX_KNOWN_EDGES {
            let oldest = self
                .edges
                .iter()
                .filter(|(_, e)| !e.connected)
                .min_by_key(|(_, e)| e.info.reported_at)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.edges.remove(&id),
                None => break,
            };
        }
    }

    /// The edges connected now.
    pub fn connected(&self) -> impl Iterator<Item = &EdgeInfo> {
        self.edges.values().filter(|e| e.connected).map(|e| &e.info)
    }

    /// Every edge known.
    pub fn all(&self) -> impl Iterator<Item = &KnownEdge> {
        self.edges.values()
    }
}

/// One row of `GET /v1/edges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftRow {
    /// Edge id.
    pub edge_id: String,
    /// Region.
    pub region: String,
    /// Connected to this origin node now.
    pub connected: bool,
    /// The revision it reported serving.
    pub revision: u64,
    /// Its digest there.
    pub digest: String,
    /// Whether that digest is the origin's at the same revision (`null`: this node cannot
    /// tell, the revision is newer than its own or older than its change log).
    pub digest_match: Option<bool>,
    /// Revisions it is behind this node.
    pub behind_revisions: u64,
    /// Its own lag report, in milliseconds.
    pub lag_ms: u64,
    /// Milliseconds since its last report.
    pub last_report_ms: u64,
    /// `diverged`, `lagging`, `disconnected`.
    pub flags: Vec<&'static str>,
}

/// Assesses one edge: `origin_digest_at` gives this node's digest at the edge's revision
/// when it knows it.
pub fn assess(
    e: &KnownEdge,
    now: Instant,
    origin_revision: Revision,
    origin_digest_at: Option<Digest>,
    lag_threshold_ms: u64,
) -> DriftRow {
    let (revision, digest) = e.info.reported;
    let digest_match = origin_digest_at.map(|d| d == digest);
    let silent_ms = now
        .saturating_duration_since(e.info.reported_at)
        .as_millis() as u64;
    let behind = origin_revision.0.saturating_sub(revision.0);
    let mut flags = Vec::new();
    if digest_match == Some(false) {
        flags.push("diverged");
    }
    // Lagging by its own account, or silent while the origin moved past it.
    if e.info.lag_ms > lag_threshold_ms || (behind > 0 && silent_ms > lag_threshold_ms) {
        flags.push("lagging");
    }
    if !e.connected {
        flags.push("disconnected");
    }
    DriftRow {
        edge_id: e.info.edge_id.clone(),
        region: e.info.region.clone(),
        connected: e.connected,
        revision: revision.0,
        digest: digest.to_string(),
        digest_match,
        behind_revisions: behind,
        lag_ms: e.info.lag_ms,
        last_report_ms: silent_ms,
        flags,
    }
}

/// This node's digest at `revision`, when its head or change log still has it.
pub fn digest_at(src: &impl ChangeSource, revision: Revision) -> Option<Digest> {
    let head = src.head();
    let newest = head.map_or(Revision(0), |h| h.head.revision);
    if revision > newest {
        return None;
    }
    if revision == newest {
        return Some(head.map_or_else(|| CacheState::new().digest(), |h| h.head.digest));
    }
    if revision == Revision(0) {
        return Some(CacheState::new().digest());
    }
    let prev = Revision(revision.0 - 1);
    src.deltas_after(prev, 1)
        .ok()
        .flatten()?
        .into_iter()
        .find(|d| d.delta.revision == revision)
        .map(|d| d.head.head.digest)
}

/// Every known edge assessed against `src` (this node's signed state).
pub fn rows(
    known: &KnownEdges,
    src: &impl ChangeSource,
    now: Instant,
    lag_threshold_ms: u64,
) -> Vec<DriftRow> {
    let origin_revision = src.head().map_or(Revision(0), |h| h.head.revision);
    known
        .all()
        .map(|e| {
            let at = digest_at(src, e.info.reported.0);
            assess(e, now, origin_revision, at, lag_threshold_ms)
        })
        .collect()
}

/// Sets the Prometheus gauges of `rows`.
pub fn export(rows: &[DriftRow]) {
    for r in rows {
        let edge = r.edge_id.clone();
        metrics::gauge!("meridian_origin_edge_revision", "edge" => edge.clone())
            .set(r.revision as f64);
        metrics::gauge!("meridian_origin_edge_behind_revisions", "edge" => edge.clone())
            .set(r.behind_revisions as f64);
        metrics::gauge!("meridian_origin_edge_lag_ms", "edge" => edge.clone()).set(r.lag_ms as f64);
        metrics::gauge!("meridian_origin_edge_diverged", "edge" => edge.clone())
            .set(f64::from(u8::from(r.digest_match == Some(false))));
        metrics::gauge!("meridian_origin_edge_lagging", "edge" => edge.clone())
            .set(f64::from(u8::from(r.flags.contains(&"lagging"))));
        metrics::gauge!("meridian_origin_edge_connected", "edge" => edge)
            .set(f64::from(u8::from(r.connected)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use meridian_protocol::Hash32;

    fn info(id: &str, revision: u64, digest: u8, at: Instant) -> EdgeInfo {
        EdgeInfo {
            edge_id: id.into(),
            region: "eu-west".into(),
            acked: Revision(revision),
            reported: (Revision(revision), Digest(Hash32([digest; 32]))),
            lag_ms: 0,
            reported_at: at,
        }
    }

    #[test]
    fn divergence_lag_and_disconnection_are_flagged() {
        let t0 = Instant::now();
        let good = Digest(Hash32([1; 32]));
        let mut known = KnownEdges::default();
        known.update([
            &info("a", 10, 1, t0),
            &info("b", 10, 9, t0),
            &info("c", 4, 1, t0),
        ]);
        let at = |k: &KnownEdges, id: &str| k.all().find(|e| e.info.edge_id == id).unwrap().clone();
        let row = assess(&at(&known, "a"), t0, Revision(10), Some(good), 10_000);
        assert_eq!((row.digest_match, row.flags.clone()), (Some(true), vec![]));
        let row = assess(&at(&known, "b"), t0, Revision(10), Some(good), 10_000);
        assert_eq!(
            (row.digest_match, row.flags),
            (Some(false), vec!["diverged"])
        );
        // Behind but reporting: fine until its own lag report exceeds the threshold.
        let row = assess(&at(&known, "c"), t0, Revision(10), None, 10_000);
        assert_eq!((row.behind_revisions, row.flags), (6, vec![]));
        let mut c = at(&known, "c");
        c.info.lag_ms = 12_000;
        assert_eq!(
            assess(&c, t0, Revision(10), None, 10_000).flags,
            ["lagging"]
        );

        // "c" goes away; it is remembered, and once silent past the threshold while the
        // origin moved on, it lags.
        known.update([&info("a", 10, 1, t0), &info("b", 10, 9, t0)]);
        let c = at(&known, "c");
        assert!(!c.connected);
        let later = t0 + Duration::from_secs(11);
        let row = assess(&c, later, Revision(12), None, 10_000);
        assert_eq!(row.flags, ["lagging", "disconnected"]);
        assert_eq!(row.last_report_ms, 11_000);
        assert_eq!(known.connected().count(), 2);
    }
}
