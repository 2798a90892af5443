//! The invariants the simulator checks continuously, one module each, and the record of checks
//! and violations.

pub mod committed;
pub mod convergence;
pub mod digests;
pub mod exposures;
pub mod monotonic;
pub mod signatures;
pub mod slo;

use serde::Serialize;

/// A broken invariant or missed SLO, with what is needed to reproduce it.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Which invariant (or `slo`).
    pub invariant: &'static str,
    /// Simulated milliseconds.
    pub at_ms: u64,
    /// What happened.
    pub detail: String,
    /// Faults in force at that moment.
    pub active_faults: Vec<String>,
    /// The last trace events before it.
    pub last_events: Vec<String>,
    /// The command that replays this run.
    pub reproduce: String,
}

/// How often each invariant was checked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckCounts {
    /// Signature checks.
    pub signatures: u64,
    /// Monotonicity checks.
    pub monotonic: u64,
    /// Equal-digest checks.
    pub digests: u64,
    /// Committed-only checks.
    pub committed: u64,
    /// Convergence checks.
    pub convergence: u64,
    /// SLO checks (one per edge and revision applied, plus pending checks).
    pub slo: u64,
    /// Exposure-count checks (one per edge boot that served evaluations).
    pub exposures: u64,
}
