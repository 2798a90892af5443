//! The simulated world: an origin cluster and N edges per region, each running the real state
//! machines (origin core and distributor, edge replicator plus a distributor serving peers) over
//! real QUIC through the simulated network, in virtual time. A discrete-event loop ordered by
//! (time, sequence) drives everything; all randomness comes from the run's seed.
//!
//! The origin cluster's consensus is modelled, not simulated packet by packet: every live
//! origin node applies each committed write at once (its Raft peers are 1 ms apart, next to
//! 40–240 ms to the edges), a node that restarts applies what it missed, and commits need a
//! live majority. When the leader dies, commits pause for an election drawn from what the real
//! cluster shows ([`ELECTION_MS`]); writes made meanwhile wait and commit when a new leader is
//! elected, as the write API's clients do. Each origin node serves edges over its own QUIC
//! endpoint, so edges fail over between nodes as in production.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::apply::{Applied, ApplyError, Command, OriginCore, Proposal};
use meridian_core::distributor::{ConnId, Distributor, DistributorConfig, Transmit};
use meridian_core::edge_node::{Action, EdgeNode as CoreEdge, EdgeNodeConfig, Upstream};
use meridian_core::entry;
use meridian_core::history::WriteMeta;
use meridian_core::replicator::{LinkId, Replicator, ReplicatorConfig};
use meridian_core::topology::PeerEntry;
use meridian_protocol::flags::exposure::{ExposureCounter, ExposureKey, ExposureLedger, Source};
use meridian_protocol::{
    Address, Change, Delta, Digest, Frame, FrameV1, Revision, Signer, TrustedKeys, VerifiedHeads,
    Version,
};
use meridian_store::{MemBackend, SignedState, WriteBack};
use quinn_proto::{ConnectionHandle, Side};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::invariants::{self, CheckCounts, Violation};
use crate::network::{Fault, LinkParams, Network, NodeId, REGIONS, Target};
use crate::quic::{HostEvent, QuicHost};
use crate::tls::SimPki;
use crate::{SimOptions, SimReport};

const QUIC_PORT: u16 = 4433;
/// How long commits pause when the origin leader dies, drawn uniformly from this range in
/// milliseconds: what `cargo run --release -p meridian-benches --bin failover` measured for a
/// three-node origin on loopback (SIGKILL of the leader until both survivors name a new one,
/// 0.9–2.2 s: openraft waits out the leader lease, `election_timeout_max`, plus a random
/// election timeout, and longer when a node's log is behind).
pub const ELECTION_MS: (u64, u64) = (900, 2_200);
const TRACE_TAIL: usize = 32;
/// Revisions whose verified heads the shared memo keeps (see `VerifiedHeads`).
const VERIFY_MEMO_REVISIONS: usize = 16_384;

fn transport() -> Arc<quinn_proto::TransportConfig> {
    let mut t = quinn_proto::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.max_idle_timeout(Some(quinn_proto::VarInt::from_u32(2_500).into()));
    t.max_concurrent_uni_streams(1024u32.into());
    // Cross-region round trips are ~80–240 ms; start loss detection from a realistic estimate
    // rather than the 333 ms default so a fresh connection recovers lost packets promptly.
    t.initial_rtt(Duration::from_millis(100));
    t.congestion_controller_factory(Arc::new(crate::tls::congestion()));
    Arc::new(t)
}

/// Node `n`'s address: `127.<region>.<n / 256>.<n % 256>`, distinct for every node of a run
/// (nodes are counted well below 65,536).
fn addr_of(n: NodeId, region: usize) -> SocketAddr {
    debug_assert!(n < 1 << 16, "node {n} has no address of its own");
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, region as u8, (n >> 8) as u8, n as u8)),
        QUIC_PORT,
    )
}

struct OriginNode {
    host: QuicHost,
    core: OriginCore<WriteBack<MemBackend>>,
    dist: Distributor,
    conns: BTreeMap<ConnectionHandle, ConnId>,
    by_id: BTreeMap<ConnId, ConnectionHandle>,
    next_conn: ConnId,
}

struct EdgeNode {
    host: QuicHost,
    /// The edge's replication: the same state machine `meridian edge` drives.
    node: CoreEdge<MemBackend>,
    /// The QUIC connection of each of the core's connection ids, and back.
    conns: BTreeMap<ConnId, ConnectionHandle>,
    ids: BTreeMap<ConnectionHandle, ConnId>,
    published: Revision,
    /// Flag evaluations this boot of the edge served (reported beside each report).
    counter: ExposureCounter,
    /// Which boot of the edge this is.
    boot: u64,
}

enum Node {
    Origin(Box<OriginNode>),
    Edge(Box<EdgeNode>),
    /// A crashed node: only what it had made durable survives.
    Down(MemBackend),
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: NodeId,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Wake(NodeId),
    Write,
    /// The election after the origin leader died is over.
    Elected,
    FaultStart(u64, Fault, Duration),
    FaultEnd(u64),
    FinalHeal,
    Inject(NodeId),
    /// Some edge serves flag evaluations.
    Evaluate,
}

/// How to break the replicator on purpose, to prove the invariants catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Broken {
    /// One edge also trusts an attacker's key (as if it skipped signature checks), and the
    /// attacker feeds it a forged delta.
    SkipsSignatureChecks,
    /// One edge restarts from a stale copy of its store (as if it applied a stale state).
    AppliesStaleState,
}

/// One simulation run.
pub struct World {
    opts: SimOptions,
    rng: Xoshiro256PlusPlus,
    now: Duration,
    base: Instant,
    queue: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
    net: Network,
    nodes: Vec<Node>,
    addrs: Vec<SocketAddr>,
    by_addr: BTreeMap<SocketAddr, NodeId>,
    wake_at: Vec<Option<Duration>>,
    incarnation: Vec<u64>,
    pki: SimPki,
    signer: Signer,
    trusted: TrustedKeys,
    /// Heads already verified by some edge or check, so that each is verified once per run.
    verified: Option<VerifiedHeads>,
    // Records for invariants and the SLO.
    commits: BTreeMap<Revision, Digest>,
    commit_time: BTreeMap<Revision, Duration>,
    newest: Revision,
    highest_served: Vec<Revision>,
    seen_digests: invariants::digests::SeenDigests,
    signature_check: invariants::signatures::SignatureCheck,
    path_since: Vec<Option<Duration>>,
    /// When each edge last went from no path to a path (kept when the path is lost again).
    path_regained: Vec<Duration>,
    latencies: Vec<Vec<Duration>>,
    heal_latency: Vec<Duration>,
    /// For every delivered revision: apply time minus the later of commit and regained path
    /// (what the SLO bounds by 5 s).
    slo_clock: Vec<Duration>,
    healed_at: Option<Duration>,
    heal_target: Revision,
    stale_copy: Option<MemBackend>,
    counts: CheckCounts,
    violations: Vec<Violation>,
    slo_reported: Vec<bool>,
    timeline: Vec<String>,
    trace: blake3::Hasher,
    tail: VecDeque<String>,
    events_processed: u64,
    datagrams: u64,
    writes_refused: u64,
    /// Nodes whose events are printed to stderr (`MERIDIAN_SIM_WATCH=<node>[,<node>…]`), for
    /// debugging.
    watch: BTreeSet<NodeId>,
    /// The origin nodes: node 0, then those after the edges.
    origins: Vec<NodeId>,
    edge_count: usize,
    /// The origin node that commits writes; `None` while electing or without a majority.
    leader: Option<NodeId>,
    /// An election is under way (`Ev::Elected` is scheduled).
    electing: bool,
    /// Every committed write, in order, for origin nodes that restart to catch up from.
    log: Vec<Proposal>,
    /// Writes made during an election, committed when it ends.
    held_writes: Vec<Command>,
    /// Draws for flag evaluations (apart from `rng`, so they do not move the fault plan).
    eval_rng: Xoshiro256PlusPlus,
    /// Every evaluation served, by the edge boot that served it: the truth.
    evaluated: BTreeMap<Source, BTreeMap<ExposureKey, u64>>,
    /// What the origin merged from the edges' reports (its Raft commit taken as immediate).
    exposures: ExposureLedger,
}

impl World {
    /// Builds the world for `opts`.
    pub fn new(opts: SimOptions) -> Result<Self, crate::tls::SimTlsError> {
        crate::tls::reseed(opts.seed);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(opts.seed);
        let mut region_of = vec![0usize];
        for r in 0..REGIONS.len() {
            region_of.extend(std::iter::repeat_n(r, opts.edges_per_region));
        }
        let edge_count = region_of.len() - 1;
        let mut origins = vec![0];
        for _ in 1..opts.origin_nodes.max(1) {
            origins.push(region_of.len());
            region_of.push(0);
        }
        let n = region_of.len();
        let addrs: Vec<SocketAddr> = (0..n).map(|i| addr_of(i, region_of[i])).collect();
        // Two nodes at one address would make one of them unreachable (its datagrams go to
        // the other): the bug that left some of 100 edges per region without a revision.
        assert_eq!(
            addrs.iter().collect::<BTreeSet<_>>().len(),
            addrs.len(),
            "every node has an address of its own"
        );
        let by_addr = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        let signer = Signer::from_bytes(&rng.random::<[u8; 32]>());
        // Sized to cover every revision a run commits at the default rate and duration.
        let verified = opts
            .verify_memo
            .then(|| VerifiedHeads::new(VERIFY_MEMO_REVISIONS));
        let mut net = Network::new(region_of, LinkParams::default());
        net.set_origins(origins.iter().copied());
        let mut world = Self {
            net,
            rng,
            eval_rng: Xoshiro256PlusPlus::seed_from_u64(opts.seed ^ 0x6578_706f_7375_7265),
            evaluated: BTreeMap::new(),
            exposures: ExposureLedger::default(),
            now: Duration::ZERO,
            base: Instant::now(),
            queue: BTreeMap::new(),
            seq: 0,
            nodes: Vec::with_capacity(n),
            addrs,
            by_addr,
            wake_at: vec![None; n],
            incarnation: vec![0; n],
            pki: SimPki::new()?,
            trusted: with_memo(TrustedKeys::new([signer.verifying_key()]), &verified),
            verified,
            signer,
            commits: BTreeMap::new(),
            commit_time: BTreeMap::new(),
            newest: Revision(0),
            highest_served: vec![Revision(0); n],
            seen_digests: Default::default(),
            signature_check: Default::default(),
            path_since: vec![Some(Duration::ZERO); n],
            path_regained: vec![Duration::ZERO; n],
            latencies: vec![Vec::new(); REGIONS.len()],
            heal_latency: Vec::new(),
            slo_clock: Vec::new(),
            healed_at: None,
            heal_target: Revision(0),
            stale_copy: None,
            counts: CheckCounts::default(),
            violations: Vec::new(),
            slo_reported: vec![false; n],
            timeline: Vec::new(),
            trace: blake3::Hasher::new(),
            tail: VecDeque::new(),
            events_processed: 0,
            datagrams: 0,
            writes_refused: 0,
            watch: std::env::var("MERIDIAN_SIM_WATCH")
                .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
                .unwrap_or_default(),
            origins,
            edge_count,
            leader: Some(0),
            electing: false,
            log: Vec::new(),
            held_writes: Vec::new(),
            opts,
        };
        for i in 0..n {
            let node = if world.is_origin(i) {
                world.boot_origin(i, MemBackend::new())?
            } else {
                world.boot_edge(i, MemBackend::new())?
            };
            world.nodes.push(node);
        }
        Ok(world)
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn is_origin(&self, n: NodeId) -> bool {
        self.origins.contains(&n)
    }

    /// The edges' node ids.
    fn edges(&self) -> std::ops::Range<NodeId> {
        1..1 + self.edge_count
    }

    /// Whether a majority of the origin nodes is up.
    fn quorum(&self) -> bool {
        let up = self.origins.iter().filter(|&&o| self.net.is_up(o)).count();
        up * 2 > self.origins.len()
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn record(&mut self, line: String) {
        self.trace.update(line.as_bytes());
        self.tail.push_back(line);
        if self.tail.len() > TRACE_TAIL {
            self.tail.pop_front();
        }
    }

    fn endpoint_seed(&mut self, n: NodeId) -> u64 {
        self.incarnation[n] += 1;
        self.opts.seed ^ ((n as u64) << 32) ^ (self.incarnation[n] << 48) ^ 0x9e37_79b9
    }

    fn boot_origin(
        &mut self,
        n: NodeId,
        backend: MemBackend,
    ) -> Result<Node, crate::tls::SimTlsError> {
        let seed = self.endpoint_seed(n);
        let server = self.pki.server_config(seed, transport())?;
        let host = QuicHost::new(
            self.addrs[n],
            crate::tls::endpoint_config(seed),
            Some(server),
            None,
        );
        let backend = WriteBack::new(backend, entry::WRITE_BACK);
        let state = SignedState::open(backend, self.opts.delta_window).map_err(|_| {
            crate::tls::SimTlsError::Rustls(rustls::Error::General("origin store".into()))
        })?;
        Ok(Node::Origin(Box::new(OriginNode {
            host,
            core: OriginCore::new(state, self.signer.clone()),
            dist: Distributor::new(distributor_config()),
            conns: BTreeMap::new(),
            by_id: BTreeMap::new(),
            next_conn: ConnId::FIRST,
        })))
    }

    fn boot_edge(
        &mut self,
        n: NodeId,
        backend: MemBackend,
    ) -> Result<Node, crate::tls::SimTlsError> {
        let seed = self.endpoint_seed(n);
        let server = self.pki.server_config(seed, transport())?;
        let client = self.pki.client_config(transport())?;
        let host = QuicHost::new(
            self.addrs[n],
            crate::tls::endpoint_config(seed),
            Some(server),
            Some(client),
        );
        let state = SignedState::open(backend, self.opts.delta_window).map_err(|_| {
            crate::tls::SimTlsError::Rustls(rustls::Error::General("edge store".into()))
        })?;
        let published = state.revision();
        let mut keys = vec![self.signer.verifying_key()];
        if self.opts.broken == Some(Broken::SkipsSignatureChecks) && n == 1 {
            keys.push(attacker().verifying_key());
        }
        let config = EdgeNodeConfig {
            replicator: ReplicatorConfig {
                edge_id: format!("edge-{n}"),
                region: REGIONS[self.net.region(n)].into(),
                origin_count: self.origins.len(),
                heartbeat_interval_ms: 500,
                reconnect_backoff_min_ms: 50,
                reconnect_backoff_max_ms: 1_000,
                connect_timeout_ms: 1_000,
                peer_connect_timeout_ms: 500,
                stall_timeout_ms: 1_000,
                silence_timeout_ms: 1_500,
                ..ReplicatorConfig::default()
            },
            serving: distributor_config(),
            origin_region: REGIONS[0].into(),
            // Every edge, in node order. The simulated origin keeps no directory of edges
            // (its commits are modelled), so the peers are configured as a static list.
            static_peers: self
                .edges()
                .map(|m| PeerEntry {
                    edge_id: format!("edge-{m}"),
                    region: REGIONS[self.net.region(m)].into(),
                    addr: self.addrs[m].to_string(),
                })
                .collect(),
            relay: true,
        };
        let now = self.instant();
        let node = CoreEdge::new(
            config,
            with_memo(TrustedKeys::new(keys), &self.verified),
            state,
            now,
        );
        Ok(Node::Edge(Box::new(EdgeNode {
            host,
            node,
            conns: BTreeMap::new(),
            ids: BTreeMap::new(),
            published,
            counter: ExposureCounter::default(),
            boot: self.incarnation[n],
        })))
    }

    /// Runs the whole simulation and returns its report.
    pub fn run(mut self) -> SimReport {
        let wall = Instant::now();
        let end = Duration::from_secs(self.opts.duration_s);
        let heal = end.mul_f64(self.opts.heal_at_fraction);
        let writes_end = end.saturating_sub(Duration::from_secs(10));
        self.schedule(Duration::ZERO, Ev::Write);
        self.schedule(Duration::ZERO, Ev::Evaluate);
        if self.opts.faults {
            self.plan_faults(heal);
        }
        for (i, (start, duration, fault)) in self.opts.script.clone().into_iter().enumerate() {
            let start = Duration::from_secs_f64(start);
            let until = (start + Duration::from_secs_f64(duration)).min(heal);
            self.schedule(start, Ev::FaultStart(2_000_000 + i as u64, fault, until));
        }
        self.schedule(heal, Ev::FinalHeal);
        if let Some(b) = self.opts.broken {
            self.schedule(heal.mul_f64(0.5), Ev::Inject(1));
            self.timeline.push(format!("deliberately broken: {b:?}"));
        }
        for n in 0..self.nodes.len() {
            self.schedule(Duration::ZERO, Ev::Wake(n));
        }
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            if at > end {
                break;
            }
            self.now = at;
            self.events_processed += 1;
            match ev {
                Ev::Deliver { to, from, data } => {
                    if !self.net.is_up(to) {
                        continue;
                    }
                    self.record(format!(
                        "{} deliver {}->{} {}B",
                        at.as_micros(),
                        self.by_addr.get(&from).copied().unwrap_or(usize::MAX),
                        to,
                        data.len()
                    ));
                    if self.watch.contains(&to) {
                        eprintln!(
                            "{:>10.3} node {to} datagram from {} {}B",
                            at.as_secs_f64(),
                            self.by_addr.get(&from).copied().unwrap_or(usize::MAX),
                            data.len()
                        );
                    }
                    let now = self.instant();
                    match &mut self.nodes[to] {
                        Node::Origin(o) => o.host.handle_datagram(now, from, &data),
                        Node::Edge(e) => e.host.handle_datagram(now, from, &data),
                        Node::Down(_) => continue,
                    }
                    self.service(to);
                }
                Ev::Wake(n) => {
                    if self.wake_at[n] == Some(at) || at == Duration::ZERO {
                        self.wake_at[n] = None;
                        self.service(n);
                    }
                }
                Ev::Write => {
                    if at < writes_end {
                        self.write();
                        let gap = self.rng.random_range(0.0..2.0) / self.opts.write_rate_per_s;
                        self.schedule(at + Duration::from_secs_f64(gap), Ev::Write);
                    }
                }
                Ev::Evaluate => {
                    if at < writes_end {
                        self.evaluate();
                        let gap = self.eval_rng.random_range(0.0..0.2);
                        self.schedule(at + Duration::from_secs_f64(gap), Ev::Evaluate);
                    }
                }
                Ev::Elected => self.elected(),
                Ev::FaultStart(id, fault, until) => self.start_fault(id, fault, until),
                Ev::FaultEnd(id) => self.end_fault(id),
                Ev::FinalHeal => {
                    for (id, _) in self.net.heal() {
                        self.after_fault_end(id);
                    }
                    self.healed_at = Some(self.now);
                    self.heal_target = self.newest;
                    self.timeline
                        .push(format!("{:>9} final heal", fmt_ms(self.now)));
                    self.refresh_paths(None);
                }
                Ev::Inject(n) => self.inject(n),
            }
        }
        self.now = end;
        self.finish(wall.elapsed())
    }

    fn plan_faults(&mut self, heal: Duration) {
        let mut t = Duration::from_secs(5);
        let mut id = 0u64;
        let edges = self.edge_count;
        loop {
            t += Duration::from_secs_f64(self.rng.random_range(2.0..16.0));
            if t >= heal {
                break;
            }
            id += 1;
            let len = |rng: &mut Xoshiro256PlusPlus, lo: f64, hi: f64| {
                Duration::from_secs_f64(rng.random_range(lo..hi))
            };
            let region = self.rng.random_range(0..REGIONS.len());
            let edge = 1 + self.rng.random_range(0..edges);
            let roll: u32 = self.rng.random_range(0..100);
            let (fault, dur) = match roll {
                0..20 => (
                    Fault::Partition {
                        from: Target::Region(1 + region % 2),
                        to: Target::Origin,
                        one_way: false,
                    },
                    len(&mut self.rng, 5.0, 30.0),
                ),
                20..30 => {
                    let r = 1 + region % 2;
                    let (from, to) = if self.rng.random_bool(0.5) {
                        (Target::Region(r), Target::Origin)
                    } else {
                        (Target::Origin, Target::Region(r))
                    };
                    (
                        Fault::Partition {
                            from,
                            to,
                            one_way: true,
                        },
                        len(&mut self.rng, 5.0, 20.0),
                    )
                }
                30..45 => (
                    Fault::Isolate(Target::Node(edge)),
                    len(&mut self.rng, 2.0, 20.0),
                ),
                45..52 => (
                    Fault::Isolate(Target::Origin),
                    len(&mut self.rng, 2.0, 15.0),
                ),
                52..57 => (
                    Fault::Isolate(Target::Region(region)),
                    len(&mut self.rng, 2.0, 15.0),
                ),
                57..70 => {
                    let other = if self.rng.random_bool(0.5) {
                        self.origins[self.rng.random_range(0..self.origins.len())]
                    } else {
                        1 + self.rng.random_range(0..edges)
                    };
                    (
                        Fault::Clog { a: edge, b: other },
                        len(&mut self.rng, 0.5, 4.0),
                    )
                }
                70..80 => (
                    Fault::LatencySpike {
                        extra_ms: self.rng.random_range(50..400),
                    },
                    len(&mut self.rng, 1.0, 8.0),
                ),
                80..95 => (Fault::Crash(edge), len(&mut self.rng, 1.0, 20.0)),
                // An origin node: the leader at the time, or any (see `start_fault`).
                _ => (Fault::Crash(usize::MAX), len(&mut self.rng, 1.0, 5.0)),
            };
            let until = (t + dur).min(heal);
            self.schedule(t, Ev::FaultStart(id, fault, until));
        }
    }

    fn start_fault(&mut self, id: u64, fault: Fault, until: Duration) {
        if let Fault::Clog { a, b } = fault
            && a == b
        {
            return;
        }
        let fault = match fault {
            // Half the time the leader, else any origin node.
            Fault::Crash(usize::MAX) => {
                let pick = self.origins[self.rng.random_range(0..self.origins.len())];
                let n = match self.leader {
                    Some(l) if self.rng.random_bool(0.5) => l,
                    _ => pick,
                };
                Fault::Crash(n)
            }
            other => other,
        };
        if let Fault::Crash(n) = fault {
            if !self.net.is_up(n) {
                return;
            }
            self.crash(n);
        }
        self.net.start(id, fault, until);
        self.timeline.push(format!(
            "{:>9} start #{id} {fault:?} until {}",
            fmt_ms(self.now),
            fmt_ms(until)
        ));
        self.record(format!("{} fault+ {id}", self.now.as_micros()));
        self.schedule(until, Ev::FaultEnd(id));
        if let Fault::Crash(n) = fault
            && self.leader == Some(n)
        {
            self.leader = None;
            self.timeline.push(format!(
                "{:>9} origin leader {n} down: commits pause for an election",
                fmt_ms(self.now)
            ));
            self.start_election();
        }
        self.refresh_paths(None);
    }

    /// Starts an election if none is under way and a majority is up (otherwise it starts when
    /// a node restarts). A lone origin node leads again as soon as it is back.
    fn start_election(&mut self) {
        if self.electing || self.leader.is_some() || !self.quorum() {
            return;
        }
        if self.origins.len() == 1 {
            self.leader = Some(self.origins[0]);
            return;
        }
        self.electing = true;
        let ms = self.rng.random_range(ELECTION_MS.0..=ELECTION_MS.1);
        self.schedule(self.now + Duration::from_millis(ms), Ev::Elected);
    }

    /// The election ended: a live origin node leads and the writes made meanwhile commit.
    fn elected(&mut self) {
        self.electing = false;
        let live: Vec<NodeId> = self
            .origins
            .iter()
            .copied()
            .filter(|&o| self.net.is_up(o))
            .collect();
        if !self.quorum() || live.is_empty() {
            // The majority went while electing; those writes time out at their clients.
            self.writes_refused += self.held_writes.len() as u64;
            self.held_writes.clear();
            return;
        }
        let leader = live[self.rng.random_range(0..live.len())];
        self.leader = Some(leader);
        self.timeline.push(format!(
            "{:>9} origin node {leader} elected leader",
            fmt_ms(self.now)
        ));
        self.record(format!("{} elected {leader}", self.now.as_micros()));
        for command in std::mem::take(&mut self.held_writes) {
            self.commit(command);
        }
    }

    fn end_fault(&mut self, id: u64) {
        if self.net.end(id).is_some() {
            self.after_fault_end(id);
            self.refresh_paths(None);
        }
    }

    fn after_fault_end(&mut self, id: u64) {
        self.timeline
            .push(format!("{:>9} end   #{id}", fmt_ms(self.now)));
        self.record(format!("{} fault- {id}", self.now.as_micros()));
        for n in 0..self.nodes.len() {
            if self.net.is_up(n) && matches!(self.nodes[n], Node::Down(_)) {
                self.restart(n);
            }
        }
    }

    fn crash(&mut self, n: NodeId) {
        let placeholder = Node::Down(MemBackend::new());
        let node = std::mem::replace(&mut self.nodes[n], placeholder);
        let survived = match node {
            Node::Origin(o) => {
                let state = o.core.into_state();
                state.backend().inner().crash()
            }
            Node::Edge(e) => e.node.into_state().backend().crash(),
            Node::Down(b) => b,
        };
        self.nodes[n] = Node::Down(survived);
        self.wake_at[n] = None;
    }

    fn restart(&mut self, n: NodeId) {
        let Node::Down(backend) =
            std::mem::replace(&mut self.nodes[n], Node::Down(MemBackend::new()))
        else {
            return;
        };
        let backend = match (self.opts.broken, n, self.stale_copy.take()) {
            (Some(Broken::AppliesStaleState), 1, Some(stale)) => stale,
            (_, _, stale) => {
                self.stale_copy = stale;
                backend
            }
        };
        let node = if self.is_origin(n) {
            self.boot_origin(n, backend)
        } else {
            self.boot_edge(n, backend)
        };
        match node {
            Ok(node) => self.nodes[n] = node,
            Err(e) => {
                self.violation("restart", format!("node {n} could not restart: {e}"));
                return;
            }
        }
        if let Node::Edge(e) = &self.nodes[n] {
            let (r, d, h) = published_of(e.node.replicator());
            self.check_publish(n, r, d, h.as_ref());
        }
        if self.is_origin(n) {
            // Catch up on what the cluster committed meanwhile, then lead if nobody does.
            let from = match &self.nodes[n] {
                Node::Origin(o) => o.core.state().revision().0 as usize,
                _ => self.log.len(),
            };
            for i in from..self.log.len() {
                let proposal = self.log[i].clone();
                self.apply_on(n, i as u64 + 1, proposal);
            }
            self.start_election();
        }
        let at = self.now;
        self.schedule(at, Ev::Wake(n));
        self.wake_at[n] = Some(at);
    }

    fn write(&mut self) {
        let key = format!("k{}", self.rng.random_range(0..500u32));
        let size = self.opts.value_bytes.max(2);
        let value: String = format!("\"{}\"", "x".repeat(size - 2));
        let address = match Address::parse("sim", "prod", &key) {
            Ok(a) => a,
            Err(_) => return,
        };
        let command = Command::Put {
            address,
            value: value.into(),
            expect_version: None,
        };
        if self.leader.is_some() {
            self.commit(command);
        } else if self.electing {
            self.held_writes.push(command);
        } else {
            self.writes_refused += 1;
        }
    }

    /// Commits `command` through the leader: every live origin node applies it.
    fn commit(&mut self, command: Command) {
        let Some(leader) = self.leader else {
            self.writes_refused += 1;
            return;
        };
        // What the write API would propose: the command and who wrote it when.
        let proposal = Proposal {
            command,
            meta: WriteMeta {
                time_ms: self.now.as_millis() as u64,
                actor: "sim".into(),
                ..WriteMeta::default()
            },
        };
        let index = self.log.len() as u64 + 1;
        let Some((revision, digest)) = self.apply_on(leader, index, proposal.clone()) else {
            return;
        };
        self.log.push(proposal.clone());
        self.newest = revision;
        self.commits.insert(revision, digest);
        self.commit_time.insert(revision, self.now);
        self.record(format!("{} commit {revision}", self.now.as_micros()));
        for o in self.origins.clone() {
            if o != leader && matches!(self.nodes[o], Node::Origin(_)) {
                self.apply_on(o, index, proposal.clone());
            }
        }
    }

    /// Origin node `n` applies `command` (deterministically: every node signs the same
    /// revision) and tells its edges; the revision and digest it made.
    /// Applies the committed log entry `index` on origin node `n` as every origin node does
    /// (`meridian_core::entry`): in a batch, through the apply core with history and audit,
    /// over a write-back state published unflushed, flushed every [`FLUSH_EVERY`] revisions
    /// (a crash loses what was not flushed; the node applies it again from the log).
    fn apply_on(
        &mut self,
        n: NodeId,
        index: u64,
        proposal: Proposal,
    ) -> Option<(Revision, Digest)> {
        let now = self.instant();
        let Node::Origin(o) = &mut self.nodes[n] else {
            return None;
        };
        let applied = apply_entry(&mut o.core, index, proposal);
        let out = match applied {
            Ok((Ok(applied), digest)) => {
                o.dist.handle_commit(now, o.core.state());
                (applied.revision, digest)
            }
            Ok((Err(e), _)) => {
                self.violation("origin", format!("origin node {n}: a put was refused: {e}"));
                return None;
            }
            Err(e) => {
                self.violation("origin", format!("origin node {n}: write failed: {e}"));
                return None;
            }
        };
        if let Some(expected) = self.commits.get(&out.0)
            && *expected != out.1
        {
            self.violation(
                "committed",
                format!(
                    "origin node {n} made revision {} with another digest than the leader",
                    out.0
                ),
            );
        }
        self.service(n);
        Some(out)
    }

    /// A forged delta handed straight to an edge's replicator, as an attacker on its link would.
    fn inject(&mut self, n: NodeId) {
        let now = self.instant();
        if let Node::Edge(e) = &mut self.nodes[n] {
            let revision = e.node.replicator().state().revision().next();
            let delta = Delta {
                revision,
                changes: vec![Change {
                    address: Address {
                        app: "sim".into(),
                        env: "prod".into(),
                        key: "forged".into(),
                    },
                    version: Version(1),
                    value: Some("\"evil\"".into()),
                }],
            };
            let digest = e.node.replicator().state().digest_after(&delta);
            let forged = attacker().sign_delta(delta, digest);
            e.node
                .handle_link_frame(now, LinkId::ORIGIN, FrameV1::Delta(forged).into());
            self.timeline.push(format!(
                "{:>9} forged delta offered to edge {n}",
                fmt_ms(self.now)
            ));
        }
        if self.opts.broken == Some(Broken::AppliesStaleState) {
            // Keep a copy of the store now, let the edge move on, then crash it and bring it
            // back from the copy.
            if let Node::Edge(e) = &self.nodes[n] {
                self.stale_copy = Some(e.node.replicator().state().backend().crash());
            }
            self.seq += 1;
            let id = 1_000_000 + self.seq;
            let at = self.now + Duration::from_secs(3);
            self.schedule(
                at,
                Ev::FaultStart(id, Fault::Crash(n), at + Duration::from_secs(2)),
            );
        }
        self.service(n);
    }

    fn service(&mut self, n: NodeId) {
        let now = self.instant();
        match &mut self.nodes[n] {
            Node::Origin(_) => self.service_origin(n, now),
            Node::Edge(_) => self.service_edge(n, now),
            Node::Down(_) => return,
        }
        let outbox = match &mut self.nodes[n] {
            Node::Origin(o) => o.host.take_outbox(),
            Node::Edge(e) => e.host.take_outbox(),
            Node::Down(_) => Vec::new(),
        };
        for (dst, data) in outbox {
            let Some(&to) = self.by_addr.get(&dst) else {
                continue;
            };
            self.datagrams += 1;
            let from = self.addrs[n];
            for at in self.net.plan(&mut self.rng, self.now, n, to) {
                self.schedule(
                    at,
                    Ev::Deliver {
                        to,
                        from,
                        data: data.clone(),
                    },
                );
            }
        }
        let next = match &mut self.nodes[n] {
            Node::Origin(o) => [o.host.poll_timeout(), o.dist.poll_timeout()]
                .into_iter()
                .flatten()
                .min(),
            Node::Edge(e) => [e.host.poll_timeout(), e.node.poll_timeout()]
                .into_iter()
                .flatten()
                .min(),
            Node::Down(_) => None,
        };
        if let Some(t) = next {
            let at = t
                .saturating_duration_since(self.base)
                .max(self.now + Duration::from_micros(1))
                .max(self.now);
            if self.wake_at[n].is_none_or(|w| at < w || w < self.now) {
                self.wake_at[n] = Some(at);
                self.schedule(at, Ev::Wake(n));
            }
        }
    }

    fn service_origin(&mut self, n: NodeId, now: Instant) {
        let Node::Origin(o) = &mut self.nodes[n] else {
            return;
        };
        o.host.handle_timeout(now);
        loop {
            o.host.drive(now);
            let mut progressed = false;
            while let Some(ev) = o.host.poll_event() {
                progressed = true;
                if self.watch.contains(&n) {
                    eprintln!("{:>10.3} node {n} host {ev:?}", self.now.as_secs_f64());
                }
                match ev {
                    HostEvent::Connected(ch, _) => {
                        let id = o.next_conn;
                        o.next_conn = id.next();
                        o.conns.insert(ch, id);
                        o.by_id.insert(id, ch);
                        o.dist.handle_connect(now, id);
                    }
                    HostEvent::Lost(ch) => {
                        if let Some(id) = o.conns.remove(&ch) {
                            o.by_id.remove(&id);
                            o.dist.handle_disconnect(id);
                        }
                    }
                    HostEvent::Frame(ch, f) => {
                        if let Some(id) = o.conns.get(&ch).copied() {
                            if let Frame::V1(FrameV1::Exposures { boot, counts }) = f {
                                if let Some(edge) = o.dist.edge(id) {
                                    let source = Source {
                                        edge: edge.edge_id.clone(),
                                        boot,
                                    };
                                    self.exposures.merge(&source, &edge.region, counts);
                                }
                            } else {
                                o.dist.handle_frame(now, id, f, o.core.state());
                            }
                        }
                    }
                    HostEvent::Malformed(_) => {}
                }
            }
            o.dist.handle_timeout(now, o.core.state());
            while let Some((id, t)) = o.dist.poll_transmit() {
                progressed = true;
                let Some(&ch) = o.by_id.get(&id) else {
                    continue;
                };
                if self.watch.contains(&n) {
                    let what = match &t {
                        Transmit::Stream(frames) => format!("stream of {} frame(s)", frames.len()),
                        other => format!("{other:?}"),
                    };
                    eprintln!(
                        "{:>10.3} node {n} dist {ch:?} {what}",
                        self.now.as_secs_f64()
                    );
                }
                transmit(&mut o.host, ch, t);
            }
            if !progressed {
                break;
            }
        }
        o.host.drive(now);
    }

    fn service_edge(&mut self, n: NodeId, now: Instant) {
        let mut published = None;
        let mut dial: Vec<(ConnId, Upstream)> = Vec::new();
        {
            let Node::Edge(e) = &mut self.nodes[n] else {
                return;
            };
            e.host.handle_timeout(now);
            for _round in 0..64 {
                e.host.drive(now);
                let mut progressed = false;
                while let Some(ev) = e.host.poll_event() {
                    progressed = true;
                    if self.watch.contains(&n) {
                        eprintln!("{:>10.3} node {n} host {ev:?}", self.now.as_secs_f64());
                    }
                    match ev {
                        HostEvent::Connected(ch, Side::Client) => match e.ids.get(&ch) {
                            Some(&id) => e.node.handle_connected(now, id),
                            None => e.host.close(now, ch),
                        },
                        HostEvent::Connected(ch, Side::Server) => {
                            let id = e.node.handle_accepted(now);
                            e.ids.insert(ch, id);
                            e.conns.insert(id, ch);
                        }
                        HostEvent::Lost(ch) => {
                            if let Some(id) = e.ids.remove(&ch) {
                                e.conns.remove(&id);
                                e.node.handle_lost(now, id);
                            }
                        }
                        HostEvent::Frame(ch, f) => {
                            if let Some(&id) = e.ids.get(&ch) {
                                // Data keys and reveal acknowledgements are not simulated.
                                let _ = e.node.handle_frame(now, id, f);
                            }
                        }
                        HostEvent::Malformed(ch) => {
                            if let Some(&id) = e.ids.get(&ch) {
                                e.node.handle_malformed(now, id);
                            }
                        }
                    }
                }
                let r = e.node.flush(now);
                if r > e.published {
                    e.published = r;
                    published = Some(r);
                }
                e.node.handle_timeout(now);
                while let Some(action) = e.node.poll_action() {
                    progressed = true;
                    if self.watch.contains(&n) {
                        eprintln!("{:>10.3} node {n} {action:?}", self.now.as_secs_f64());
                    }
                    match action {
                        Action::Dial { conn, to } => dial.push((conn, to)),
                        Action::Close { conn, .. } => {
                            if let Some(ch) = e.conns.remove(&conn) {
                                e.ids.remove(&ch);
                                e.host.close(now, ch);
                            }
                        }
                        Action::Send { conn, frame } => {
                            if let Some(&ch) = e.conns.get(&conn) {
                                e.host.send_control(ch, &frame);
                                // Beside each report, the cumulative exposure counts (as the
                                // edge binary does).
                                if matches!(frame, Frame::V1(FrameV1::Report { .. })) {
                                    let counts = e.counter.report();
                                    if !counts.is_empty() {
                                        let boot = e.boot;
                                        let f = FrameV1::Exposures { boot, counts }.into();
                                        e.host.send_control(ch, &f);
                                    }
                                }
                            }
                        }
                        Action::Stream {
                            conn,
                            frames,
                            priority,
                        } => {
                            // No stream available means the peer's limit is reached; its stall
                            // timer asks again, so dropping here loses nothing.
                            if let Some(&ch) = e.conns.get(&conn) {
                                let _ = e.host.send_stream(ch, &frames, priority);
                            }
                        }
                    }
                }
                for (conn, to) in dial.drain(..) {
                    progressed = true;
                    let addr = match &to {
                        Upstream::Origin(i) => Some(self.addrs[self.origins[*i]]),
                        Upstream::Peer(p) => p.addr.parse().ok(),
                    };
                    match addr.and_then(|a| e.host.connect(now, a)) {
                        Some(ch) => {
                            e.ids.insert(ch, conn);
                            e.conns.insert(conn, ch);
                        }
                        None => e.node.handle_lost(now, conn),
                    }
                }
                if !progressed {
                    break;
                }
            }
            e.host.drive(now);
        }
        if let Some(r) = published {
            let Node::Edge(e) = &self.nodes[n] else {
                return;
            };
            let (rev, digest, head) = published_of(e.node.replicator());
            debug_assert_eq!(rev, r);
            self.check_publish(n, rev, digest, head.as_ref());
        }
    }

    fn check_publish(
        &mut self,
        n: NodeId,
        revision: Revision,
        digest: Digest,
        head: Option<&meridian_protocol::SignedHead>,
    ) {
        self.record(format!("{} publish {n} {revision}", self.now.as_micros()));
        if revision > Revision(0) {
            self.counts.signatures += 1;
            if let Err(e) = self.signature_check.check(&self.trusted, head, digest) {
                self.violation("signatures", format!("edge {n}: {e}"));
            }
        }
        self.counts.monotonic += 1;
        if let Err(e) = invariants::monotonic::check(self.highest_served[n], revision) {
            self.violation("monotonic", format!("edge {n}: {e}"));
        }
        self.counts.digests += 1;
        if let Err(e) = self.seen_digests.check(revision, digest) {
            self.violation("digests", format!("edge {n}: {e}"));
        }
        self.counts.committed += 1;
        if let Err(e) = invariants::committed::check(&self.commits, revision, digest) {
            self.violation("committed", format!("edge {n}: {e}"));
        }
        // SLO and latency for every revision this publish delivered.
        let before = self.highest_served[n];
        if revision > before {
            let region = self.net.region(n);
            let regained = self.path_regained[n];
            let slo = Duration::from_millis(self.opts.slo_ms);
            let mut worst: Option<(Revision, Duration)> = None;
            for (v, committed) in self.commit_time.range(before.next()..=revision) {
                self.counts.slo += 1;
                self.latencies[region].push(self.now.saturating_sub(*committed));
                self.slo_clock
                    .push(self.now.saturating_sub((*committed).max(regained)));
                if let Some(late) = invariants::slo::late(self.now, *committed, regained, slo)
                    && worst.is_none_or(|(_, w)| late > w)
                {
                    worst = Some((*v, late));
                }
            }
            if let Some(heal) = self.healed_at
                && before < self.heal_target
                && revision >= self.heal_target
            {
                self.heal_latency.push(self.now.saturating_sub(heal));
            }
            if let Some((v, late)) = worst {
                self.violation(
                    "slo",
                    format!(
                        "edge {n} applied revision {v} {} after it was committed and reachable",
                        fmt_ms(late)
                    ),
                );
            }
            self.highest_served[n] = revision;
        }
        self.refresh_paths(Some(n));
    }

    /// Whether edge `n` can reach the origin or an edge already holding its next revision.
    fn has_path(&self, n: NodeId) -> bool {
        if !self.net.is_up(n) {
            return false;
        }
        let want = self.highest_served[n].next();
        (0..self.nodes.len()).any(|h| {
            h != n
                && self.net.is_up(h)
                && (self.is_origin(h) || self.highest_served[h] >= want)
                && self.net.reachable(n, h)
        })
    }

    /// Recomputes who has a path to a holder; `only` narrows it after one edge published.
    fn refresh_paths(&mut self, only: Option<NodeId>) {
        for n in self.edges() {
            let relevant = match only {
                None => true,
                Some(m) => m == n || self.path_since[n].is_none(),
            };
            if !relevant {
                continue;
            }
            let path = self.has_path(n);
            if self.watch.contains(&n) && path != self.path_since[n].is_some() {
                eprintln!(
                    "{:>10.3} node {n} path to a holder of revision {}: {path}",
                    self.now.as_secs_f64(),
                    self.highest_served[n].next()
                );
            }
            match (path, self.path_since[n]) {
                (true, None) => {
                    self.path_since[n] = Some(self.now);
                    self.path_regained[n] = self.now;
                }
                (false, Some(_)) => self.path_since[n] = None,
                _ => {}
            }
        }
        self.check_pending_slo();
    }

    /// Edges still missing a revision they should have had by now.
    fn check_pending_slo(&mut self) {
        let slo = Duration::from_millis(self.opts.slo_ms);
        for n in self.edges() {
            if self.slo_reported[n] {
                continue;
            }
            let Some(since) = self.path_since[n] else {
                continue;
            };
            let next = self.highest_served[n].next();
            let Some(committed) = self.commit_time.get(&next) else {
                continue;
            };
            let start = since.max(*committed);
            if self.now.saturating_sub(start) > slo {
                self.slo_reported[n] = true;
                self.counts.slo += 1;
                self.violation("slo", format!("edge {n} still lacks revision {next} {} after it was committed and reachable", fmt_ms(self.now - start)));
            }
        }
    }

    fn violation(&mut self, invariant: &'static str, detail: String) {
        if self.violations.len() >= 50 {
            return;
        }
        self.violations.push(Violation {
            invariant,
            at_ms: self.now.as_millis() as u64,
            detail,
            active_faults: self.net.active().iter().map(|f| format!("{f:?}")).collect(),
            last_events: self.tail.iter().cloned().collect(),
            reproduce: self.opts.command(),
        });
    }

    /// One live edge serves 1 to 3 evaluations of one of four flags, one of three variants.
    fn evaluate(&mut self) {
        let live: Vec<NodeId> = self
            .edges()
            .filter(|n| matches!(self.nodes[*n], Node::Edge(_)))
            .collect();
        if live.is_empty() {
            return;
        }
        let n = live[self.eval_rng.random_range(0..live.len())];
        let flag = format!("f{}", self.eval_rng.random_range(0..4u32));
        let variant = format!("v{}", self.eval_rng.random_range(0..3u32));
        let times = self.eval_rng.random_range(1..=3u64);
        let Node::Edge(e) = &mut self.nodes[n] else {
            return;
        };
        e.counter.record("shop", "prod", &flag, &variant, times);
        let source = Source {
            edge: format!("edge-{n}"),
            boot: e.boot,
        };
        let key = ExposureKey {
            app: "shop".into(),
            env: "prod".into(),
            flag,
            variant,
        };
        *self
            .evaluated
            .entry(source)
            .or_default()
            .entry(key)
            .or_default() += times;
    }

    fn finish(mut self, wall: Duration) -> SimReport {
        self.check_pending_slo();
        let live: BTreeSet<Source> = self
            .edges()
            .filter_map(|n| match &self.nodes[n] {
                Node::Edge(e) => Some(Source {
                    edge: format!("edge-{n}"),
                    boot: e.boot,
                }),
                _ => None,
            })
            .collect();
        self.counts.exposures += self.evaluated.len() as u64;
        if let Err(e) = invariants::exposures::check(&self.evaluated, &self.exposures, &live) {
            self.violation("exposures", e);
        }
        let newest = (
            self.newest,
            self.commits.get(&self.newest).copied().unwrap_or_default(),
        );
        for n in self.edges() {
            self.counts.convergence += 1;
            let held = match &self.nodes[n] {
                Node::Edge(e) => (
                    e.node.replicator().state().revision(),
                    e.node.replicator().state().digest(),
                ),
                _ => (Revision(0), Digest::default()),
            };
            if let Err(e) = invariants::convergence::check(newest, held) {
                self.violation("convergence", format!("edge {n}: {e}"));
            }
        }
        let trace_hash = self.trace.finalize().to_hex().to_string();
        crate::report::build(crate::report::Parts {
            opts: self.opts.clone(),
            simulated: self.now,
            wall,
            trace_hash,
            latencies: self.latencies,
            heal_latency: self.heal_latency,
            slo_clock: self.slo_clock,
            counts: self.counts,
            violations: self.violations,
            timeline: self.timeline,
            newest: self.newest,
            events: self.events_processed,
            datagrams: self.datagrams,
            writes_refused: self.writes_refused,
        })
    }
}

fn transmit(host: &mut QuicHost, ch: ConnectionHandle, t: Transmit) {
    match t {
        Transmit::Control(f) => host.send_control(ch, &f),
        Transmit::Stream(frames) => {
            // No stream available means the peer's limit is reached; the edge's stall timer
            // asks again, so dropping here loses nothing.
            let priority = meridian_core::distributor::stream_priority(&frames);
            let _ = host.send_stream(ch, &frames, priority);
        }
    }
}

/// How many revisions an origin node applies between flushes of its state (production
/// flushes before snapshots and log purges; the Raft log holds the rest).
const FLUSH_EVERY: u64 = 256;

/// One committed entry through the production apply path; the result of its one proposal and
/// the digest after it.
fn apply_entry(
    core: &mut OriginCore<WriteBack<MemBackend>>,
    index: u64,
    proposal: Proposal,
) -> Result<(Result<Applied, ApplyError>, Digest), ApplyError> {
    core.state_mut().begin_batch();
    core.begin_entry(Vec::new());
    let results = entry::apply_proposals(core, index, vec![proposal]);
    core.end_entry();
    let mut results = match results {
        Ok(r) => r,
        Err(e) => {
            core.state_mut().discard_batch();
            return Err(e);
        }
    };
    core.state_mut().commit_batch(Vec::new())?;
    let revision = core.state_mut().publish_unflushed()?;
    if revision.0 % FLUSH_EVERY == 0 {
        core.state_mut().write_back()?;
        core.state_mut().flush()?;
    }
    let digest = core.state().digest();
    let result = results
        .pop()
        .unwrap_or(Err(ApplyError::Invalid("no proposal".into())));
    Ok((result, digest))
}

fn with_memo(keys: TrustedKeys, memo: &Option<VerifiedHeads>) -> TrustedKeys {
    match memo {
        Some(m) => keys.with_shared_memo(m.clone()),
        None => keys,
    }
}

fn published_of(
    rep: &Replicator<MemBackend>,
) -> (Revision, Digest, Option<meridian_protocol::SignedHead>) {
    let reader = rep.state().reader();
    let p = reader.read().unwrap_or_else(|e| e.into_inner());
    (p.state.revision(), p.state.digest(), p.head)
}

fn distributor_config() -> DistributorConfig {
    DistributorConfig {
        heartbeat_interval_ms: 500,
        ..DistributorConfig::default()
    }
}

fn attacker() -> Signer {
    Signer::from_bytes(&[0xa7; 32])
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}
