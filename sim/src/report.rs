//! The run report: a text summary and a JSON document with the seed, the options it expanded
//! to, simulated and wall time, commit→apply latency per region, heal→converged times, the
//! faults timeline, invariant check counts and every violation with the command to replay it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use meridian_protocol::Revision;
use serde::Serialize;

use crate::SimOptions;
use crate::invariants::{CheckCounts, Violation};
use crate::network::REGIONS;

/// p50/p99/max of a latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Sample count.
    pub count: usize,
}

impl Latency {
    fn of(mut v: Vec<Duration>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        Some(Self {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            count: v.len(),
        })
    }
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Every option, as the seed expanded them.
    pub options: SimOptions,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Simulated seconds per wall second.
    pub speedup: f64,
    /// Hash over every delivery, commit, publish and fault, in order.
    pub trace_hash: String,
    /// Newest committed revision.
    pub newest_revision: u64,
    /// Events processed.
    pub events: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Writes refused while the origin was down.
    pub writes_refused: u64,
    /// Commit → applied at the edge, per region.
    pub commit_to_apply: BTreeMap<String, Latency>,
    /// Final heal → each edge holds the newest revision committed before the heal.
    pub heal_to_converged: Option<Latency>,
    /// What the SLO bounds by 5 s, for every delivered revision: apply time minus the later of
    /// commit and the edge regaining a path to a holder. Its maximum is the run's margin.
    pub slo_clock: Option<Latency>,
    /// How often each invariant was checked.
    pub invariant_checks: CheckCounts,
    /// Fault starts and ends.
    pub faults_timeline: Vec<String>,
    /// What went wrong, if anything.
    pub violations: Vec<Violation>,
}

pub(crate) struct Parts {
    pub opts: SimOptions,
    pub simulated: Duration,
    pub wall: Duration,
    pub trace_hash: String,
    pub latencies: Vec<Vec<Duration>>,
    pub heal_latency: Vec<Duration>,
    pub slo_clock: Vec<Duration>,
    pub counts: CheckCounts,
    pub violations: Vec<Violation>,
    pub timeline: Vec<String>,
    pub newest: Revision,
    pub events: u64,
    pub datagrams: u64,
    pub writes_refused: u64,
}

pub(crate) fn build(p: Parts) -> SimReport {
    let simulated_s = p.simulated.as_secs_f64();
    let wall_s = p.wall.as_secs_f64().max(1e-9);
    SimReport {
        seed: p.opts.seed,
        options: p.opts,
        simulated_s,
        wall_s,
        speedup: simulated_s / wall_s,
        trace_hash: p.trace_hash,
        newest_revision: p.newest.0,
        events: p.events,
        datagrams: p.datagrams,
        writes_refused: p.writes_refused,
        commit_to_apply: REGIONS
            .iter()
            .zip(p.latencies)
            .filter_map(|(r, v)| Latency::of(v).map(|l| (r.to_string(), l)))
            .collect(),
        heal_to_converged: Latency::of(p.heal_latency),
        slo_clock: Latency::of(p.slo_clock),
        invariant_checks: p.counts,
        faults_timeline: p.timeline,
        violations: p.violations,
    }
}

impl SimReport {
    /// Whether every invariant and the SLO held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "seed {}  trace {}", self.seed, &self.trace_hash[..16]);
        let _ = writeln!(
            s,
            "simulated {:.0} s in {:.2} s wall ({:.0}x real time), {} revisions, {} datagrams, {} faults",
            self.simulated_s,
            self.wall_s,
            self.speedup,
            self.newest_revision,
            self.datagrams,
            self.faults_timeline
                .iter()
                .filter(|l| l.contains("start"))
                .count()
        );
        for (region, l) in &self.commit_to_apply {
            let _ = writeln!(
                s,
                "  commit->apply {region:<9} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  (n={})",
                l.p50_ms, l.p99_ms, l.max_ms, l.count
            );
        }
        if let Some(l) = &self.heal_to_converged {
            let _ = writeln!(
                s,
                "  heal->converged   p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        if let Some(l) = &self.slo_clock {
            let _ = writeln!(
                s,
                "  slo clock         p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  (limit {} ms)",
                l.p50_ms, l.p99_ms, l.max_ms, self.options.slo_ms
            );
        }
        let c = &self.invariant_checks;
        let _ = writeln!(
            s,
            "  checks: signatures {} monotonic {} digests {} committed {} convergence {} slo {} exposures {}",
            c.signatures, c.monotonic, c.digests, c.committed, c.convergence, c.slo, c.exposures
        );
        if self.passed() {
            let _ = writeln!(s, "PASS");
        } else {
            let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
            for v in &self.violations {
                *by_kind.entry(v.invariant).or_default() += 1;
            }
            let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let _ = writeln!(
                s,
                "FAIL: {} violation(s) [{}]",
                self.violations.len(),
                kinds.join(" ")
            );
            for v in self.violations.iter().take(10) {
                let _ = writeln!(s, "  [{}] at {} ms: {}", v.invariant, v.at_ms, v.detail);
                let _ = writeln!(s, "    faults then: {}", v.active_faults.join(", "));
            }
            if let Some(v) = self.violations.first() {
                let _ = writeln!(s, "  last events before the first violation:");
                for e in v.last_events.iter().rev().take(8).rev() {
                    let _ = writeln!(s, "    {e}");
                }
                let _ = writeln!(s, "reproduce: {}", v.reproduce);
            }
        }
        s
    }
}
