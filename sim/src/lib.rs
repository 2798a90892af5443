//! Meridian's deterministic simulator. It runs the real origin distributor and edge replicator
//! state machines over real QUIC (quinn-proto endpoints and connections with rustls) through a
//! simulated datagram network in virtual time, injects partitions, loss, clogging, latency
//! spikes and crashes, checks the invariants continuously, and measures the five-second
//! propagation SLO: every edge applies revision v by
//! `max(commit(v), the moment it regained a path to a holder of v) + 5 s`.
//!
//! Everything random comes from one `u64` seed, so a seed replays exactly; each run reports a
//! trace hash to prove it.

pub mod invariants;
pub mod network;
pub mod quic;
pub mod report;
pub mod tls;
pub mod world;

use serde::Serialize;

pub use report::SimReport;
pub use world::Broken;

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimOptions {
    /// The seed everything random derives from.
    pub seed: u64,
    /// Edges in each of the three regions.
    pub edges_per_region: usize,
    /// Origin nodes (a Raft cluster in us-east): 1, 3 or 5. With more than one, a crashed
    /// leader is replaced after an election pause (see `world::ELECTION_MS`), and edges fail
    /// over between nodes.
    pub origin_nodes: usize,
    /// Simulated duration in seconds.
    pub duration_s: u64,
    /// Mean writes per simulated second.
    pub write_rate_per_s: f64,
    /// Bytes per written value.
    pub value_bytes: usize,
    /// Whether to inject the default fault profile (otherwise only loss, duplication, jitter).
    pub faults: bool,
    /// When the final heal happens, as a fraction of the duration.
    pub heal_at_fraction: f64,
    /// The propagation SLO in milliseconds.
    pub slo_ms: u64,
    /// Deltas kept by every node for catch-up.
    pub delta_window: u64,
    /// A deliberately broken replicator, for testing the invariants themselves.
    pub broken: Option<Broken>,
    /// Faults at fixed times, in addition to the random profile: `(start_s, duration_s, fault)`.
    pub script: Vec<(f64, f64, network::Fault)>,
    /// Share verified signed heads among the simulated edges so each distinct head is
    /// verified once per run (exact comparison; see `meridian_protocol::VerifiedHeads`). It
    /// changes cost only: a run replays to the same trace either way.
    pub verify_memo: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            edges_per_region: 10,
            origin_nodes: 3,
            duration_s: 600,
            write_rate_per_s: 20.0,
            value_bytes: 64,
            faults: true,
            heal_at_fraction: 0.8,
            slo_ms: 5_000,
            delta_window: 1_000,
            broken: None,
            script: Vec::new(),
            verify_memo: true,
        }
    }
}

impl SimOptions {
    /// The `meridian sim` command line that replays these options.
    pub fn command(&self) -> String {
        let mut c = format!(
            "meridian sim --seed {} --edges-per-region {} --origin-nodes {} --duration-s {} --write-rate {} --value-bytes {}",
            self.seed,
            self.edges_per_region,
            self.origin_nodes,
            self.duration_s,
            self.write_rate_per_s,
            self.value_bytes
        );
        if !self.faults {
            c.push_str(" --no-faults");
        }
        if !self.verify_memo {
            c.push_str(" --no-verify-memo");
        }
        c
    }
}

/// Why a run could not be set up.
pub type SetupError = tls::SimTlsError;

/// Runs one simulation.
pub fn run(opts: SimOptions) -> Result<SimReport, SetupError> {
    Ok(world::World::new(opts)?.run())
}
