//! The simulated datagram network: a region latency matrix with jitter, loss, duplication,
//! latency spikes, partitions (symmetric and one-way, of a region, an edge or the origin),
//! clogged links and crashed nodes. It only decides when (and whether) each datagram arrives;
//! all randomness comes from the caller's seeded RNG.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, RngExt};
use serde::Serialize;

/// Index of a simulated node: 0 is the first origin node, edges follow, then the other origin
/// nodes.
pub type NodeId = usize;

/// Region names, in matrix order; the origin lives in the first.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// One-way latency between regions, in milliseconds (DESIGN §8; 1 ms inside a region).
pub fn one_way_ms(a: usize, b: usize) -> f64 {
    match (a.min(b), a.max(b)) {
        (x, y) if x == y => 1.0,
        (0, 1) => 40.0,
        (0, 2) => 108.0,
        _ => 120.0,
    }
}

/// What a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// Every node of a region (the origin too, for us-east).
    Region(usize),
    /// One node.
    Node(NodeId),
    /// Every origin node (the cluster, which keeps talking to itself).
    Origin,
}

/// A fault in force for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// Datagrams from `from` to `to` are dropped, and back too unless `one_way`.
    Partition {
        /// Sending side.
        from: Target,
        /// Receiving side.
        to: Target,
        /// Only `from → to` is cut.
        one_way: bool,
    },
    /// Everything to and from the target is dropped.
    Isolate(Target),
    /// Datagrams between two nodes are held until the fault ends (FoundationDB's clogging).
    Clog {
        /// One end.
        a: NodeId,
        /// The other end.
        b: NodeId,
    },
    /// Every datagram takes `extra_ms` longer.
    LatencySpike {
        /// Added one-way latency.
        extra_ms: u64,
    },
    /// The node is down; it restarts when the fault ends.
    Crash(NodeId),
}

/// Base behaviour of every link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkParams {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Jitter as a fraction of the base latency (plus 1 ms), uniformly added; also reorders.
    pub jitter_fraction: f64,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            loss: 0.01,
            duplicate: 0.005,
            jitter_fraction: 0.1,
        }
    }
}

/// The network's state: where nodes are and which faults are active.
#[derive(Debug)]
pub struct Network {
    region_of: Vec<usize>,
    origins: BTreeSet<NodeId>,
    params: LinkParams,
    active: BTreeMap<u64, (Fault, Duration)>,
    down: BTreeSet<NodeId>,
}

impl Network {
    /// A network of nodes in the given regions.
    pub fn new(region_of: Vec<usize>, params: LinkParams) -> Self {
        Self {
            region_of,
            origins: BTreeSet::from([0]),
            params,
            active: BTreeMap::new(),
            down: BTreeSet::new(),
        }
    }

    /// The region of a node.
    pub fn region(&self, n: NodeId) -> usize {
        self.region_of[n]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.region_of.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.region_of.is_empty()
    }

    /// Names the origin nodes ([`Target::Origin`]); node 0 alone until this is called.
    pub fn set_origins(&mut self, origins: impl IntoIterator<Item = NodeId>) {
        self.origins = origins.into_iter().collect();
    }

    fn matches(&self, t: Target, n: NodeId) -> bool {
        match t {
            Target::Region(r) => self.region_of[n] == r,
            Target::Node(x) => x == n,
            Target::Origin => self.origins.contains(&n),
        }
    }

    /// Starts fault `id`, in force until `until`.
    pub fn start(&mut self, id: u64, fault: Fault, until: Duration) {
        if let Fault::Crash(n) = fault {
            self.down.insert(n);
        }
        self.active.insert(id, (fault, until));
    }

    /// Ends fault `id`; returns it.
    pub fn end(&mut self, id: u64) -> Option<Fault> {
        let (fault, _) = self.active.remove(&id)?;
        if let Fault::Crash(n) = fault {
            self.down.remove(&n);
        }
        Some(fault)
    }

    /// Ends every fault (the final heal); returns them.
    pub fn heal(&mut self) -> Vec<(u64, Fault)> {
        let ids: Vec<u64> = self.active.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.end(id).map(|f| (id, f)))
            .collect()
    }

    /// Faults in force.
    pub fn active(&self) -> Vec<Fault> {
        self.active.values().map(|(f, _)| *f).collect()
    }

    /// Whether a node is up.
    pub fn is_up(&self, n: NodeId) -> bool {
        !self.down.contains(&n)
    }

    /// Whether datagrams from `a` to `b` are dropped by a partition or a crash.
    pub fn blocked(&self, a: NodeId, b: NodeId) -> bool {
        if self.down.contains(&a) || self.down.contains(&b) {
            return true;
        }
        self.active.values().any(|(f, _)| match *f {
            Fault::Partition { from, to, one_way } => {
                (self.matches(from, a) && self.matches(to, b))
                    || (!one_way && self.matches(to, a) && self.matches(from, b))
            }
            Fault::Isolate(t) => self.matches(t, a) != self.matches(t, b),
            _ => false,
        })
    }

    /// Whether two nodes can talk both ways (clogs only delay, so they do not count).
    pub fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        !self.blocked(a, b) && !self.blocked(b, a)
    }

    /// When the copies of a datagram sent now from `a` to `b` arrive (none if dropped).
    pub fn plan(&self, rng: &mut impl Rng, now: Duration, a: NodeId, b: NodeId) -> Vec<Duration> {
        if self.blocked(a, b) {
            return Vec::new();
        }
        if rng.random_bool(self.params.loss) {
            return Vec::new();
        }
        let copies = if rng.random_bool(self.params.duplicate) {
            2
        } else {
            1
        };
        let base = one_way_ms(self.region_of[a], self.region_of[b]);
        let mut start = now;
        let mut extra = 0.0;
        for (f, until) in self.active.values() {
            match *f {
                Fault::Clog { a: x, b: y } if (x == a && y == b) || (x == b && y == a) => {
                    start = start.max(*until);
                }
                Fault::LatencySpike { extra_ms } => extra += extra_ms as f64,
                _ => {}
            }
        }
        (0..copies)
            .map(|_| {
                let jitter = rng.random_range(0.0..=(base * self.params.jitter_fraction + 1.0));
                start + Duration::from_micros(((base + extra + jitter) * 1000.0) as u64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn partitions_block_the_right_directions() {
        let mut n = Network::new(vec![0, 0, 1, 2], LinkParams::default());
        n.start(
            1,
            Fault::Partition {
                from: Target::Region(2),
                to: Target::Node(0),
                one_way: true,
            },
            Duration::from_secs(9),
        );
        assert!(n.blocked(3, 0));
        assert!(!n.blocked(0, 3));
        assert!(!n.reachable(0, 3));
        assert!(n.reachable(2, 3));
        n.end(1);
        n.start(2, Fault::Isolate(Target::Region(1)), Duration::from_secs(9));
        assert!(n.blocked(0, 2) && n.blocked(2, 3) && !n.blocked(0, 1));
        n.heal();
        n.start(3, Fault::Crash(1), Duration::from_secs(9));
        assert!(!n.is_up(1) && n.blocked(0, 1));
    }

    #[test]
    fn latency_follows_the_matrix_and_clogs_hold() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(1);
        let n = Network::new(
            vec![0, 2],
            LinkParams {
                loss: 0.0,
                duplicate: 0.0,
                jitter_fraction: 0.0,
            },
        );
        let t = n.plan(&mut rng, Duration::ZERO, 0, 1);
        assert!(
            t[0] >= Duration::from_millis(108) && t[0] <= Duration::from_millis(109),
            "{t:?}"
        );
        let mut n = n;
        n.start(1, Fault::Clog { a: 1, b: 0 }, Duration::from_secs(3));
        let t = n.plan(&mut rng, Duration::ZERO, 0, 1);
        assert!(t[0] >= Duration::from_millis(3108));
    }
}
