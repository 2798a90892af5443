//! The replicator: a sans-IO state machine that keeps an edge's signed state up to date.
//!
//! It holds one link to an origin node (rotating through the configured origins) and, when
//! peers are configured, warm links to `peer_links` peer edges (each rotating through its share
//! of the peers). A peer link carries heads only (`Standby`) while the origin link delivers, and
//! is asked for deltas (`Need`) the moment it stops; a peer that reports it has lost the origin
//! itself, and has stopped delivering, is left for the next. Every upstream serves the same
//! origin-signed data, so whatever arrives on any link is verified the same way and merged into
//! one state; a region cut off from the origin but reachable from another region keeps
//! converging through its peer links.
//!
//! On each link it says Hello with its revision and digest, verifies and applies pushed deltas
//! strictly in order (buffering a bounded number that arrive early), installs chunked
//! snapshots, asks for what it lacks when a newer signed head is known and nothing arrives,
//! acknowledges what is durable, and reconnects with bounded exponential backoff. It never
//! moves its revision backwards, and nothing it did not verify reaches the store.
//!
//! Inputs come through `handle_*`, outputs through [`Replicator::poll_output`], and
//! [`Replicator::poll_timeout`] says when to call [`Replicator::handle_timeout`]. The QUIC
//! shell and the simulator drive it identically.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use meridian_protocol::{
    Address, Digest, EntryState, Frame, FrameV1, Revision, SignedDelta, SignedHead, TrustedKeys,
    VerifyError,
};
use meridian_store::{Backend, SignedState, StoreError};

/// The link to an origin node.
pub const ORIGIN_LINK: usize = 0;
/// The first link to a peer edge (only when peers are configured); peer links are
/// `PEER_LINK..PEER_LINK + peer_links`.
pub const PEER_LINK: usize = 1;

/// Tuning of the replicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatorConfig {
    /// This edge's id.
    pub edge_id: String,
    /// This edge's region.
    pub region: String,
    /// How many origin addresses the shell can dial; upstreams `0..origin_count` are origins.
    pub origin_count: usize,
    /// How many peers the peer links rotate through; upstreams
    /// `origin_count..origin_count + peer_count` are peers. The shell may know more peers than
    /// that: a peer named in [`Replicator::handle_peer_holds`] is dialed by its upstream number
    /// whether or not it is in the rotation.
    pub peer_count: usize,
    /// How many peers to keep warm links to at once (at most `peer_count`). Two links,
    /// interleaved over the peer list, mean one dead or cut-off peer never leaves the edge
    /// searching alone.
    pub peer_links: usize,
    /// How often the edge sends a heartbeat on each link.
    pub heartbeat_interval_ms: u64,
    /// First reconnect delay.
    pub reconnect_backoff_min_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_backoff_max_ms: u64,
    /// When a newer head is known but nothing arrived for this long, ask again with `Need`.
    pub stall_timeout_ms: u64,
    /// When nothing at all arrived on a link for this long, drop it and reconnect.
    pub silence_timeout_ms: u64,
    /// When the origin link has brought no verified head or delta for this long (the origin
    /// announces its head every heartbeat), the peer links leave standby and deliver until it
    /// does again. Shorter than the silence and stall timeouts: under a one-way partition the
    /// origin's packets stop while the connection is not yet silent long enough to drop, and
    /// no newer head may be known to start the stall timer.
    pub origin_quiet_ms: u64,
    /// A dial of the origin link that has not completed its handshake after this long gets a
    /// fresh dial beside it: a handshake whose first packets were lost (during a partition,
    /// say) backs off exponentially inside QUIC and would otherwise finish long after the path
    /// healed.
    pub connect_timeout_ms: u64,
    /// How long after a link's handshake completes its `Hello` waits. The `Hello` must not
    /// overtake our last handshake flight: a QUIC server drops 1-RTT packets that arrive
    /// before its handshake completes (quinn-proto does not buffer them), and the lost `Hello`
    /// is then only resent after loss detection, a round trip or more later. The handshake
    /// flight and the `Hello` leave in separate datagrams (the transport sends the flight
    /// before the application hears the handshake finished), so any jitter reorders them; a
    /// short wait beyond the path's jitter keeps them in order.
    pub hello_delay_ms: u64,
    /// The connect timeout of peer links. Shorter than the origin's: a peer link has many
    /// candidates, some in regions that may be cut off, and dials overlap, so moving on
    /// quickly costs little while waiting on an unreachable peer costs the SLO.
    pub peer_connect_timeout_ms: u64,
    /// A peer that reports not having heard the origin for longer than this, and has not
    /// delivered a delta for as long, is left for the next one (it is cut off itself and can
    /// only relay stale data).
    pub peer_staleness_limit_ms: u64,
    /// Most deltas buffered ahead of the next expected revision.
    pub max_pending_deltas: usize,
    /// Most entries accepted in one snapshot.
    pub max_snapshot_entries: u64,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        Self {
            edge_id: "edge".into(),
            region: "local".into(),
            origin_count: 1,
            peer_count: 0,
            peer_links: 2,
            heartbeat_interval_ms: 500,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 2_000,
            stall_timeout_ms: 1_000,
            silence_timeout_ms: 1_500,
            origin_quiet_ms: 1_200,
            connect_timeout_ms: 1_000,
            hello_delay_ms: 20,
            peer_connect_timeout_ms: 500,
            peer_staleness_limit_ms: 1_500,
            max_pending_deltas: 4096,
            max_snapshot_entries: 10_000_000,
        }
    }
}

/// What the replicator asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Dial upstream number `upstream` for link `link`. If the link is already dialing, the
    /// earlier dial keeps going: the first to complete becomes the link's connection and the
    /// shell closes the others (a handshake slowed by loss or a latency spike is not thrown
    /// away just as it is about to finish). The shell keeps at most the two most recent dials
    /// of a link: a third closes the oldest. If the link is connected, the connection stays
    /// up beside the dial until the dial completes and replaces it (see
    /// [`Output::AbandonDials`]); to move a connected link, the replicator sends
    /// [`Output::Disconnect`] first.
    Connect {
        /// Which link ([`ORIGIN_LINK`], or a peer link from [`PEER_LINK`] on).
        link: usize,
        /// Which upstream address: origins first, then peers.
        upstream: usize,
    },
    /// Close link `link`'s connection and abandon every dial in progress for it.
    Disconnect {
        /// Which link.
        link: usize,
    },
    /// Abandon the dials in progress for link `link` and keep its connection: the
    /// connection answered after all.
    AbandonDials {
        /// Which link.
        link: usize,
    },
    /// Send a frame on link `link`'s control stream.
    Send {
        /// Which link.
        link: usize,
        /// What to send.
        frame: Frame,
    },
}

/// One link as the replicator sees it (for status pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// Which link ([`ORIGIN_LINK`], or a peer link).
    pub link: usize,
    /// `idle`, `connecting`, `settling` or `connected`.
    pub state: &'static str,
    /// The upstream it is on or dialing (its latest dial).
    pub upstream: Option<usize>,
    /// It asked its upstream for heads only (a warm peer link while the origin delivers).
    pub standby: bool,
    /// The revision its upstream last said it holds (peers report it on heartbeats).
    pub offered: Option<Revision>,
}

/// Counters the replicator keeps; exported as metrics by the shell.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplicatorStats {
    /// Deltas applied.
    pub deltas_applied: u64,
    /// Snapshots installed.
    pub snapshots_installed: u64,
    /// Deltas or heads refused for a bad signature.
    pub rejected_bad_signature: u64,
    /// Refused because signed by a key not trusted here.
    pub rejected_unknown_key: u64,
    /// Refused because the delta was not the one its head commits to.
    pub rejected_delta_mismatch: u64,
    /// Refused because applying it would not give the signed digest.
    pub rejected_digest_mismatch: u64,
    /// Frames that did not decode (garbage, truncated, oversize).
    pub rejected_malformed: u64,
    /// Frames that made no sense in the current state.
    pub rejected_unexpected: u64,
    /// Deltas already held when they arrived.
    pub duplicates: u64,
    /// Storage failures.
    pub store_errors: u64,
    /// Deltas and snapshot frames dropped unapplied because the disk was full.
    pub dropped_disk_full: u64,
    /// Connections established.
    pub connects: u64,
}

impl ReplicatorStats {
    /// Every refusal of received data, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_bad_signature
            + self.rejected_unknown_key
            + self.rejected_delta_mismatch
            + self.rejected_digest_mismatch
            + self.rejected_malformed
            + self.rejected_unexpected
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Waiting until `retry_at` to dial.
    Idle { retry_at: Instant },
    /// The latest dial started at `since` (an earlier one may still run beside it).
    Connecting { since: Instant },
    /// The handshake completed; the `Hello` leaves at `until` (see
    /// [`ReplicatorConfig::hello_delay_ms`]).
    Settling { until: Instant },
    /// Connected; `last_frame` is when anything last arrived.
    Connected { last_frame: Instant },
}

#[derive(Debug)]
struct SnapshotAssembly {
    head: SignedHead,
    expected: u64,
    next_seq: u32,
    entries: Vec<(Address, EntryState)>,
}

#[derive(Debug)]
struct Link {
    state: LinkState,
    /// Upstream indexes this link rotates through.
    first: usize,
    count: usize,
    attempts: u64,
    backoff_ms: u64,
    next_heartbeat: Option<Instant>,
    acked: Revision,
    snapshot: Option<SnapshotAssembly>,
    connected_at: Option<Instant>,
    got_frame: bool,
    /// This link told its upstream `Standby` (heads only) and has not sent `Need` since.
    standby: bool,
    /// Rotation: this link dials upstream `first + (offset + stride * attempts) % count`.
    offset: u64,
    stride: u64,
    /// A peer's last freshness report: its staleness, when it arrived, what it holds.
    reported: Option<(Duration, Instant, Revision)>,
    /// When this link last delivered a verified delta.
    delivered: Option<Instant>,
    /// The upstreams of the link's two latest dials (the shell keeps two running), latest
    /// first; its connection, once connected, is to one of them.
    upstreams: [Option<usize>; 2],
    /// When a fresh dial was started beside this link's connection because the connection
    /// had not answered within the connect timeout.
    probe: Option<Instant>,
}

impl Link {
    /// A link rotating through upstreams `first..first + count`, starting at `offset` and
    /// stepping by `stride`, idle until `now`.
    fn new(
        now: Instant,
        acked: Revision,
        backoff_ms: u64,
        rotation: (usize, usize, u64, u64),
    ) -> Self {
        let (first, count, offset, stride) = rotation;
        Self {
            state: LinkState::Idle { retry_at: now },
            first,
            count,
            attempts: 0,
            backoff_ms,
            next_heartbeat: None,
            acked,
            snapshot: None,
            connected_at: None,
            got_frame: false,
            standby: false,
            offset,
            stride,
            reported: None,
            delivered: None,
            upstreams: [None; 2],
            probe: None,
        }
    }

    /// The upstream this link dials next, advancing its rotation past the upstreams in `busy`
    /// (those other links are on) unless every one is busy.
    fn next_upstream(&mut self, busy: &[usize]) -> usize {
        let count = self.count.max(1) as u64;
        let mut candidate = self.first;
        for _ in 0..count {
            let i = (self.offset + self.stride * self.attempts) % count;
            self.attempts += 1;
            candidate = self.first + i as usize;
            if !busy.contains(&candidate) {
                break;
            }
        }
        candidate
    }

    fn is_active(&self) -> bool {
        !matches!(self.state, LinkState::Idle { .. })
    }

    /// The upstreams this link is connected to or dialing.
    fn on(&self) -> impl Iterator<Item = usize> + '_ {
        self.upstreams
            .iter()
            .flatten()
            .copied()
            .filter(|_| self.is_active())
    }

    /// Starts a dial of `upstream` beside the latest one, if the link is dialing.
    fn start_dial(&mut self, now: Instant, upstream: usize) {
        let previous = match self.state {
            LinkState::Connecting { .. } => self.upstreams[0],
            _ => None,
        };
        self.upstreams = [Some(upstream), previous];
        self.state = LinkState::Connecting { since: now };
    }
}

/// The links for `config`: the origin link (when `origin` is set) and the peer links, which
/// interleave over the peers (link `j` starts at peer `j` and steps by the number of links).
fn peer_links_for(
    config: &ReplicatorConfig,
    now: Instant,
    acked: Revision,
    origin: bool,
) -> Vec<Link> {
    let backoff_ms = config.reconnect_backoff_min_ms.max(1);
    let mut links = Vec::new();
    if origin {
        links.push(Link::new(
            now,
            acked,
            backoff_ms,
            (0, config.origin_count.max(1), 0, 1),
        ));
    }
    let peer_links = config.peer_links.clamp(1, config.peer_count.max(1)) as u64;
    if config.peer_count > 0 {
        for j in 0..peer_links {
            let rotation = (config.origin_count.max(1), config.peer_count, j, peer_links);
            links.push(Link::new(now, acked, backoff_ms, rotation));
        }
    }
    links
}

/// A peer that dialed this edge said it holds `holds`, newer than what the edge has.
#[derive(Debug, Clone, Copy)]
struct Offer {
    upstream: usize,
    holds: Revision,
    at: Instant,
}

/// The sans-IO replicator over a signed state in backend `B`.
pub struct Replicator<B: Backend> {
    config: ReplicatorConfig,
    trusted: TrustedKeys,
    state: SignedState<B>,
    links: Vec<Link>,
    pending: BTreeMap<Revision, SignedDelta>,
    newest_known: Revision,
    newest_head: Option<SignedHead>,
    /// The origin link is up but stopped delivering while a newer head is known (a one-way
    /// partition, say): the peer link is used until the origin link delivers again.
    origin_suspect: bool,
    /// The last moment this edge knew that what it has published (applied and persisted) was
    /// the newest the cluster had signed: a head no newer arrived then, or the newest head
    /// heard was published. What staleness is measured from.
    current_as_of: Option<Instant>,
    /// When the newest head known was heard.
    newest_heard_at: Option<Instant>,
    /// The revision last published by [`Replicator::flush`].
    published: Revision,
    /// When the origin link last delivered a verified head or delta.
    origin_heard: Option<Instant>,
    /// The best recent offer from a peer that dialed us holding more than we do.
    offer: Option<Offer>,
    started: Instant,
    last_progress: Instant,
    /// When a verified delta last arrived, applied or buffered: a link that keeps delivering
    /// deltas is slow, not stalled.
    last_delta: Instant,
    behind_since: Option<Instant>,
    out: VecDeque<Output>,
    stats: ReplicatorStats,
    /// The shell found too little free space to persist anything: deltas and snapshots are
    /// dropped unapplied (what is published keeps being served) until it finds room again.
    storage_full: bool,
}

impl<B: Backend> Replicator<B> {
    /// A replicator over a loaded state; it asks to connect at once.
    pub fn new(
        config: ReplicatorConfig,
        trusted: TrustedKeys,
        state: SignedState<B>,
        now: Instant,
    ) -> Self {
        let revision = state.revision();
        let newest_head = state.head();
        let links = peer_links_for(&config, now, revision, true);
        Self {
            config,
            trusted,
            state,
            links,
            pending: BTreeMap::new(),
            newest_known: revision,
            newest_head,
            origin_suspect: false,
            current_as_of: None,
            newest_heard_at: None,
            published: revision,
            origin_heard: None,
            offer: None,
            started: now,
            last_progress: now,
            last_delta: now,
            behind_since: None,
            out: VecDeque::new(),
            stats: ReplicatorStats::default(),
            storage_full: false,
        }
    }

    /// Whether the disk was last reported full (see [`Replicator::handle_storage`]).
    pub fn storage_full(&self) -> bool {
        self.storage_full
    }

    /// The shell looked at the free space: `full` when it is below the reserve. While full,
    /// nothing is applied (an edge applies nothing it cannot persist) and nothing is asked
    /// for; when room returns, every connected upstream is asked for what came meanwhile.
    pub fn handle_storage(&mut self, now: Instant, full: bool) {
        if full == self.storage_full {
            return;
        }
        self.storage_full = full;
        if full {
            self.pending.clear();
            for l in &mut self.links {
                l.snapshot = None;
            }
            return;
        }
        self.last_progress = now;
        let from = self.state.revision();
        for (i, l) in self.links.iter_mut().enumerate() {
            if matches!(l.state, LinkState::Connected { .. }) {
                l.standby = false;
                let frame = FrameV1::Need { from }.into();
                self.out.push_back(Output::Send { link: i, frame });
            }
        }
    }

    /// The signed state.
    pub fn state(&self) -> &SignedState<B> {
        &self.state
    }

    /// Counters.
    pub fn stats(&self) -> ReplicatorStats {
        self.stats
    }

    /// Whether the link to an origin is up.
    pub fn is_connected(&self) -> bool {
        self.link_connected(ORIGIN_LINK)
    }

    /// Every link, for status pages.
    pub fn links(&self) -> Vec<LinkView> {
        self.links
            .iter()
            .enumerate()
            .map(|(link, l)| LinkView {
                link,
                state: match l.state {
                    LinkState::Idle { .. } => "idle",
                    LinkState::Connecting { .. } => "connecting",
                    LinkState::Settling { .. } => "settling",
                    LinkState::Connected { .. } => "connected",
                },
                upstream: l.upstreams[0].filter(|_| l.is_active()),
                standby: l.standby,
                offered: l.reported.map(|(_, _, holds)| holds),
            })
            .collect()
    }

    /// How it is set up.
    pub fn config(&self) -> &ReplicatorConfig {
        &self.config
    }

    /// How many links the shell must keep track of (the origin link and the peer links).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The peers changed (the directory of edges did): the peer links now rotate through
    /// `peer_count` peers. Every peer link is closed and starts over on the new list, since
    /// upstream numbers may now name other peers; the origin link is left alone.
    pub fn handle_peers(&mut self, now: Instant, peer_count: usize) {
        for link in PEER_LINK..self.links.len() {
            if self.links[link].is_active() {
                self.out.push_back(Output::Disconnect { link });
            }
        }
        self.links.truncate(PEER_LINK);
        self.config.peer_count = peer_count;
        self.offer = None;
        let revision = self.state.revision();
        let peers = peer_links_for(&self.config, now, revision, false);
        self.links.extend(peers);
    }

    /// Whether link `link` is up.
    pub fn link_connected(&self, link: usize) -> bool {
        self.links
            .get(link)
            .is_some_and(|l| matches!(l.state, LinkState::Connected { .. }))
    }

    /// The newest revision any verified head announced.
    pub fn newest_known(&self) -> Revision {
        self.newest_known
    }

    /// The newest verified head heard from any upstream (what this edge announces to peers).
    pub fn newest_head(&self) -> Option<SignedHead> {
        self.newest_head
    }

    /// How long ago this edge last heard the origin, directly or through its peer's report.
    pub fn staleness(&self, now: Instant) -> Duration {
        let direct = now.saturating_duration_since(self.origin_heard.unwrap_or(self.started));
        let relayed = self
            .links
            .iter()
            .filter_map(|l| l.reported)
            .map(|(s, at, _)| s + now.saturating_duration_since(at))
            .min()
            .unwrap_or(Duration::MAX);
        direct.min(relayed)
    }

    /// When a verified head or delta last arrived.
    pub fn current_as_of(&self) -> Option<Instant> {
        self.current_as_of
    }

    /// How long the edge has been behind the newest known head (zero when current).
    pub fn lag(&self, now: Instant) -> Duration {
        self.behind_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_interval_ms.max(1))
    }

    /// The shell finished dialing link `link`: the link says `Hello` after the hello delay.
    pub fn handle_connected(&mut self, now: Instant, link: usize) {
        let delay = Duration::from_millis(self.config.hello_delay_ms);
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if delay.is_zero() {
            self.say_hello(now, link);
        } else {
            l.state = LinkState::Settling { until: now + delay };
        }
    }

    /// The link's connection is settled: it counts as connected and says `Hello`.
    fn say_hello(&mut self, now: Instant, link: usize) {
        let revision = self.state.revision();
        let digest = self.state.digest();
        let interval = self.heartbeat_interval();
        let min_backoff = self.config.reconnect_backoff_min_ms.max(1);
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        l.state = LinkState::Connected { last_frame: now };
        l.backoff_ms = min_backoff;
        l.next_heartbeat = Some(now + interval);
        l.acked = revision;
        l.snapshot = None;
        l.connected_at = Some(now);
        l.got_frame = false;
        l.standby = false;
        l.reported = None;
        l.delivered = None;
        l.probe = None;
        self.stats.connects += 1;
        self.last_progress = now;
        if link == ORIGIN_LINK {
            self.origin_suspect = false;
        }
        let hello = FrameV1::Hello {
            edge_id: self.config.edge_id.clone(),
            region: self.config.region.clone(),
            revision,
            digest,
        };
        self.out.push_back(Output::Send {
            link,
            frame: hello.into(),
        });
        if link >= PEER_LINK && self.origin_delivering(now) {
            self.set_standby(link, true, revision);
        }
    }

    /// Whether the origin link is up, has answered since it connected, is not suspected of
    /// having stopped delivering, and has brought a verified head or delta within the origin
    /// quiet time. A freshly connected origin may take several round trips to answer (after a
    /// partition every edge reconnects at once), and peers keep delivering until it does.
    fn origin_delivering(&self, now: Instant) -> bool {
        self.link_connected(ORIGIN_LINK)
            && self.links.get(ORIGIN_LINK).is_some_and(|l| l.got_frame)
            && !self.origin_suspect
            && self
                .origin_quiet_at()
                .is_some_and(|quiet_at| now < quiet_at)
    }

    /// When the origin link counts as quiet unless a verified head or delta arrives first: the
    /// origin quiet time after the later of the last one and the link's connection.
    fn origin_quiet_at(&self) -> Option<Instant> {
        let connected_at = self.links.get(ORIGIN_LINK)?.connected_at?;
        let since = self
            .origin_heard
            .map_or(connected_at, |h| h.max(connected_at));
        Some(since + Duration::from_millis(self.config.origin_quiet_ms.max(1)))
    }

    /// Tells the peer on `link` to keep the link warm (heads only) or to deliver from
    /// `revision` on; sends nothing when the peer already knows.
    fn set_standby(&mut self, link: usize, standby: bool, revision: Revision) {
        if !self.link_connected(link) {
            return;
        }
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if l.standby == standby {
            return;
        }
        l.standby = standby;
        let frame = if standby {
            FrameV1::Standby
        } else {
            FrameV1::Need { from: revision }
        };
        self.out.push_back(Output::Send {
            link,
            frame: frame.into(),
        });
    }

    /// The dial failed or the connection of link `link` ended.
    pub fn handle_disconnected(&mut self, now: Instant, link: usize) {
        let max = self.config.reconnect_backoff_max_ms.max(1);
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        l.state = LinkState::Idle {
            retry_at: now + Duration::from_millis(l.backoff_ms),
        };
        l.backoff_ms = (l.backoff_ms * 2).min(max);
        l.snapshot = None;
        l.next_heartbeat = None;
        l.connected_at = None;
        l.standby = false;
        // What the last peer reported or delivered says nothing about the next one.
        l.reported = None;
        l.delivered = None;
        l.probe = None;
    }

    /// Closes a peer link if it is up or dialing, and readies it to dial its next peer at
    /// once.
    fn release_peer_link(&mut self, now: Instant, link: usize) {
        let min_backoff = self.config.reconnect_backoff_min_ms.max(1);
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if matches!(
            l.state,
            LinkState::Connected { .. } | LinkState::Connecting { .. } | LinkState::Settling { .. }
        ) {
            self.out.push_back(Output::Disconnect { link });
        }
        l.state = LinkState::Idle { retry_at: now };
        l.backoff_ms = min_backoff;
        l.snapshot = None;
        l.next_heartbeat = None;
        l.connected_at = None;
        l.standby = false;
        l.reported = None;
        l.delivered = None;
        l.probe = None;
    }

    /// Bytes on some stream of link `link` did not form a valid frame.
    pub fn handle_malformed(&mut self, _now: Instant, _link: usize) {
        self.stats.rejected_malformed += 1;
    }

    /// A frame arrived on link `link`.
    pub fn handle_frame(&mut self, now: Instant, link: usize, frame: Frame) {
        // The upstream spoke first: the connection is settled.
        if self
            .links
            .get(link)
            .is_some_and(|l| matches!(l.state, LinkState::Settling { .. }))
        {
            self.say_hello(now, link);
        }
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if let LinkState::Connected { last_frame } = &mut l.state {
            *last_frame = now;
            l.got_frame = true;
            if l.probe.take().is_some() {
                self.out.push_back(Output::AbandonDials { link });
            }
        }
        let Frame::V1(frame) = frame;
        if self.storage_full
            && matches!(
                frame,
                FrameV1::Delta(_)
                    | FrameV1::SnapshotBegin { .. }
                    | FrameV1::SnapshotChunk { .. }
                    | FrameV1::SnapshotEnd { .. }
            )
        {
            self.stats.dropped_disk_full += 1;
            return;
        }
        match frame {
            FrameV1::Head(head) => {
                if self.verify_head(&head) {
                    self.heard(now, link, &head);
                    if link == ORIGIN_LINK {
                        self.origin_heard = Some(now);
                    }
                }
            }
            FrameV1::Freshness {
                staleness_ms,
                holds,
            } => {
                if link >= PEER_LINK {
                    let staleness = Duration::from_millis(staleness_ms);
                    self.links[link].reported = Some((staleness, now, holds));
                    // A peer that was current at `now - staleness` holding no more than what
                    // is published here confirms it as of then.
                    if holds <= self.published
                        && self.newest_known <= self.published
                        && let Some(t) = now.checked_sub(staleness)
                    {
                        self.current_as_of = Some(self.current_as_of.map_or(t, |c| c.max(t)));
                    }
                }
            }
            FrameV1::Delta(delta) => self.on_delta(now, link, delta),
            FrameV1::SnapshotBegin { head, entries } => {
                if !self.verify_head(&head) {
                    return;
                }
                self.heard(now, link, &head);
                if head.head.revision <= self.state.revision()
                    || entries > self.config.max_snapshot_entries
                {
                    self.stats.rejected_unexpected += 1;
                    return;
                }
                let cap = entries.min(1 << 20) as usize;
                self.links[link].snapshot = Some(SnapshotAssembly {
                    head,
                    expected: entries,
                    next_seq: 0,
                    entries: Vec::with_capacity(cap),
                });
            }
            FrameV1::SnapshotChunk { seq, entries } => {
                let slot = &mut self.links[link].snapshot;
                let ok = match slot.as_mut() {
                    Some(s)
                        if s.next_seq == seq
                            && s.entries.len() as u64 + entries.len() as u64 <= s.expected =>
                    {
                        s.next_seq += 1;
                        s.entries.extend(entries);
                        true
                    }
                    _ => false,
                };
                if ok {
                    // A snapshot still arriving is slow, not stalled: asking again would throw
                    // away what came and start over, forever for a snapshot that takes longer
                    // than the stall timeout to arrive.
                    self.last_delta = now;
                } else {
                    *slot = None;
                    self.stats.rejected_unexpected += 1;
                }
            }
            FrameV1::SnapshotEnd { chunks } => {
                let Some(s) = self.links[link].snapshot.take() else {
                    self.stats.rejected_unexpected += 1;
                    return;
                };
                if s.next_seq != chunks || s.entries.len() as u64 != s.expected {
                    self.stats.rejected_unexpected += 1;
                    return;
                }
                if s.head.head.revision <= self.state.revision() {
                    return;
                }
                match self.state.install_snapshot(s.head, s.entries) {
                    Ok(()) => {
                        self.stats.snapshots_installed += 1;
                        self.last_progress = now;
                        self.drain_pending(now);
                    }
                    Err(StoreError::SnapshotMismatch(_)) => {
                        self.stats.rejected_digest_mismatch += 1
                    }
                    Err(_) => self.stats.store_errors += 1,
                }
            }
            FrameV1::Heartbeat { .. } => {}
            FrameV1::Hello { .. }
            | FrameV1::Ack { .. }
            | FrameV1::Need { .. }
            | FrameV1::Standby
            | FrameV1::Report { .. }
            | FrameV1::TokenUses { .. }
            | FrameV1::Exposures { .. }
            | FrameV1::DataKeys { .. }
            | FrameV1::Reveals { .. }
            | FrameV1::RevealsAck { .. }
            | FrameV1::PeerAddress { .. } => {
                self.stats.rejected_unexpected += 1;
            }
        }
        self.update_behind(now);
    }

    /// Makes applied revisions durable and visible to readers, then acknowledges them on every
    /// link. The shell calls this after each burst of frames. Returns the published revision.
    pub fn flush(&mut self, now: Instant) -> Revision {
        let revision = match self.state.publish() {
            Ok(r) => r,
            Err(_) => {
                self.stats.store_errors += 1;
                return self.published;
            }
        };
        self.published = revision;
        if revision >= self.newest_known
            && let Some(heard) = self.newest_heard_at
        {
            // Published up to the newest head: current as of the moment that head was heard.
            self.current_as_of = Some(self.current_as_of.map_or(heard, |c| c.max(heard)));
        }
        for (i, l) in self.links.iter_mut().enumerate() {
            // A standby upstream pushes nothing, so there is nothing to acknowledge to it; the
            // `Need` that wakes it says where to start.
            if revision > l.acked && !l.standby && matches!(l.state, LinkState::Connected { .. }) {
                l.acked = revision;
                self.out.push_back(Output::Send {
                    link: i,
                    frame: FrameV1::Ack { revision }.into(),
                });
            }
        }
        self.update_behind(now);
        revision
    }

    /// Time passed: dial when due, send heartbeats, notice stalls and silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        let silence = Duration::from_millis(self.config.silence_timeout_ms);
        let origin_connect_timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1));
        let peer_connect_timeout =
            Duration::from_millis(self.config.peer_connect_timeout_ms.max(1));
        let interval = self.heartbeat_interval();
        let revision = self.state.revision();
        let digest = self.state.digest();
        let report_lag_ms = self.lag(now).as_millis() as u64;
        // Peer links are kept warm: heads only while the origin link delivers, so that when
        // it stops the switch-over is one `Need`, not a dial across a possibly slow path.
        let delivering = self.origin_delivering(now);
        for link in PEER_LINK..self.links.len() {
            self.set_standby(link, delivering, revision);
        }
        // A peer that has itself lost the origin can only relay stale data: move on, but only
        // once it has nothing newer to give. A relay that is still delivering is kept whatever
        // it reports: its reports trail its deltas, and staleness adds up along a chain of
        // relays and under latency spikes.
        let held = self.state.revision();
        let limit = Duration::from_millis(self.config.peer_staleness_limit_ms);
        for link in PEER_LINK..self.links.len() {
            let l = &self.links[link];
            let still_delivering = l
                .delivered
                .is_some_and(|at| now.saturating_duration_since(at) <= limit);
            let stale = !still_delivering
                && l.reported.is_some_and(|(s, at, holds)| {
                    holds <= held && s + now.saturating_duration_since(at) > limit
                });
            if stale && self.link_connected(link) {
                self.release_peer_link(now, link);
            }
        }
        self.take_offer(now);
        for i in 0..self.links.len() {
            let l = &mut self.links[i];
            match l.state {
                // A dial that has not completed within the connect timeout gets another beside
                // it (to the next peer, for a peer link): the first may only have lost its early
                // packets and be about to finish, the new one starts afresh on a path that may
                // have healed since. The shell keeps the two most recent, so each dial lives two
                // timeouts and a fresh Initial leaves at least every connect timeout.
                LinkState::Idle { retry_at } if now >= retry_at => self.dial(now, i),
                LinkState::Settling { until } if now >= until => self.say_hello(now, i),
                LinkState::Connecting { since }
                    if now.saturating_duration_since(since)
                        >= if i == ORIGIN_LINK {
                            origin_connect_timeout
                        } else {
                            peer_connect_timeout
                        } =>
                {
                    self.dial(now, i)
                }
                LinkState::Connected { last_frame } => {
                    // Until the first frame arrives, allow for a lost Hello being resent
                    // across a slow path (and an upstream busy with many reconnecting edges).
                    let limit = if l.got_frame { silence } else { silence * 2 };
                    if now.saturating_duration_since(last_frame) >= limit {
                        self.out.push_back(Output::Disconnect { link: i });
                        self.handle_disconnected(now, i);
                        continue;
                    }
                    // An origin connection that has not answered within the connect timeout
                    // gets a fresh dial beside it. The handshake can complete on our side while
                    // the upstream never received our last handshake flight (lost under a
                    // latency spike after a partition, then backed off inside QUIC): the
                    // upstream drops what we send until then. Whichever answers first stays.
                    if i == ORIGIN_LINK
                        && !l.got_frame
                        && l.probe.is_none()
                        && l.connected_at.is_some_and(|at| {
                            now.saturating_duration_since(at) >= origin_connect_timeout
                        })
                    {
                        l.probe = Some(now);
                        let upstream = l.next_upstream(&[]);
                        l.upstreams = [Some(upstream), l.upstreams[0]];
                        self.out.push_back(Output::Connect { link: i, upstream });
                    }
                    if l.next_heartbeat.is_some_and(|due| now >= due) {
                        l.next_heartbeat = Some(now + interval);
                        let frame = FrameV1::Heartbeat { revision }.into();
                        self.out.push_back(Output::Send { link: i, frame });
                        if i == ORIGIN_LINK {
                            // What this edge serves, for the origin's drift view.
                            let frame = FrameV1::Report {
                                revision,
                                digest,
                                lag_ms: report_lag_ms,
                            }
                            .into();
                            self.out.push_back(Output::Send { link: i, frame });
                        }
                    }
                }
                _ => {}
            }
        }
        let stall = Duration::from_millis(self.config.stall_timeout_ms);
        let quiet_since = self.last_progress.max(self.last_delta);
        if self.newest_known > revision
            && !self.storage_full
            && now.saturating_duration_since(quiet_since) >= stall
        {
            self.last_progress = now;
            // Ask every connected upstream again. A slow peer is kept (a latency spike is not
            // a reason to churn); a peer that has lost the origin says so in its freshness
            // reports and is left for the next one above.
            for (i, l) in self.links.iter_mut().enumerate() {
                if matches!(l.state, LinkState::Connected { .. }) {
                    l.snapshot = None;
                    l.standby = false;
                    if i == ORIGIN_LINK {
                        // The origin may have lost what it sent us; let the peer link help
                        // until the origin delivers again.
                        self.origin_suspect = true;
                    }
                    let frame = FrameV1::Need { from: revision }.into();
                    self.out.push_back(Output::Send { link: i, frame });
                }
            }
        }
    }

    /// Dials link `i`'s next upstream; a peer link skips peers another peer link is on.
    fn dial(&mut self, now: Instant, i: usize) {
        let busy: Vec<usize> = if i >= PEER_LINK {
            self.links
                .iter()
                .enumerate()
                .filter(|&(j, _)| j >= PEER_LINK && j != i)
                .flat_map(|(_, l)| l.on())
                .collect()
        } else {
            Vec::new()
        };
        let Some(l) = self.links.get_mut(i) else {
            return;
        };
        let upstream = l.next_upstream(&busy);
        l.start_dial(now, upstream);
        self.out.push_back(Output::Connect { link: i, upstream });
    }

    /// A peer that connected to this edge (to be served by it) says it holds `holds`, in its
    /// `Hello` or a heartbeat. When that is newer than what this edge has, and the origin link
    /// is not delivering, a peer link that is searching or idle goes to that peer directly:
    /// inside a region cut off from everything, the edges that still got the newest revisions
    /// announce themselves this way as they search, and the others need not find them by
    /// rotation. `upstream` is the peer's upstream number as the shell would dial it.
    pub fn handle_peer_holds(&mut self, now: Instant, upstream: usize, holds: Revision) {
        if self.links.len() <= PEER_LINK
            || upstream < self.config.origin_count
            || holds <= self.state.revision()
        {
            return;
        }
        let limit = Duration::from_millis(self.config.peer_staleness_limit_ms);
        let replace = match self.offer {
            None => true,
            Some(o) => holds >= o.holds || now.saturating_duration_since(o.at) > limit,
        };
        if replace {
            self.offer = Some(Offer {
                upstream,
                holds,
                at: now,
            });
        }
    }

    /// Acts on a peer's offer (see [`Replicator::handle_peer_holds`]): redirects a peer link
    /// that is idle, dialing, or on a peer with nothing newer, unless a link is already on the
    /// offering peer. An offer lasts the peer staleness limit.
    fn take_offer(&mut self, now: Instant) {
        let Some(offer) = self.offer else {
            return;
        };
        let held = self.state.revision();
        let limit = Duration::from_millis(self.config.peer_staleness_limit_ms);
        if offer.holds <= held
            || now.saturating_duration_since(offer.at) > limit
            || self.origin_delivering(now)
            || self.links[PEER_LINK..]
                .iter()
                .any(|l| l.on().any(|u| u == offer.upstream))
        {
            self.offer = None;
            return;
        }
        // A link is left alone while it delivers, while its peer holds more than this edge,
        // and for a while after it connects (its first answer may be on the way).
        let useful = |l: &Link| {
            l.delivered
                .is_some_and(|at| now.saturating_duration_since(at) <= limit)
                || l.reported.is_some_and(|(_, _, holds)| holds > held)
                || (!l.got_frame
                    && l.connected_at
                        .is_some_and(|at| now.saturating_duration_since(at) <= limit))
        };
        let pick = (PEER_LINK..self.links.len())
            .filter(|&i| !useful(&self.links[i]))
            .min_by_key(|&i| match self.links[i].state {
                LinkState::Idle { .. } => 0,
                LinkState::Connecting { .. } => 1,
                LinkState::Settling { .. } | LinkState::Connected { .. } => 2,
            });
        let Some(i) = pick else {
            return;
        };
        self.offer = None;
        self.release_peer_link(now, i);
        self.links[i].start_dial(now, offer.upstream);
        self.out.push_back(Output::Connect {
            link: i,
            upstream: offer.upstream,
        });
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = Duration::from_millis(self.config.silence_timeout_ms);
        let mut any_connected = false;
        let mut at: Option<Instant> = None;
        let mut take = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        for (i, l) in self.links.iter().enumerate() {
            match l.state {
                LinkState::Idle { retry_at } | LinkState::Settling { until: retry_at } => {
                    take(retry_at)
                }
                LinkState::Connecting { since } => {
                    let ms = if i == ORIGIN_LINK {
                        self.config.connect_timeout_ms
                    } else {
                        self.config.peer_connect_timeout_ms
                    };
                    take(since + Duration::from_millis(ms.max(1)))
                }
                LinkState::Connected { last_frame } => {
                    any_connected = true;
                    take(last_frame + if l.got_frame { silence } else { silence * 2 });
                    if i == ORIGIN_LINK
                        && !l.got_frame
                        && l.probe.is_none()
                        && let Some(at) = l.connected_at
                    {
                        take(at + Duration::from_millis(self.config.connect_timeout_ms.max(1)));
                    }
                    if let Some(h) = l.next_heartbeat {
                        take(h);
                    }
                }
            }
        }
        // The moment a delivering origin link turns quiet, the standby peer links wake.
        if self.links.iter().skip(PEER_LINK).any(|l| l.standby)
            && let Some(quiet_at) = self.origin_quiet_at()
        {
            take(quiet_at);
        }
        if any_connected && self.newest_known > self.state.revision() {
            let quiet_since = self.last_progress.max(self.last_delta);
            take(quiet_since + Duration::from_millis(self.config.stall_timeout_ms));
        }
        at
    }

    /// Until when link `link`'s upstream knew the newest head: now for an origin; for a peer,
    /// the moment its last freshness report says it last heard the origin (`None` before its
    /// first report). Confirmations relayed by peers thus age as the peers' own knowledge does:
    /// edges that have all lost the origin do not keep one another fresh.
    fn known_as_of(&self, now: Instant, link: usize) -> Option<Instant> {
        if link == ORIGIN_LINK {
            return Some(now);
        }
        let (staleness, at, _) = self.links.get(link)?.reported?;
        at.checked_sub(staleness)
    }

    fn heard(&mut self, now: Instant, link: usize, head: &SignedHead) {
        let as_of = self.known_as_of(now, link);
        if head.head.revision >= self.newest_known
            && let Some(t) = as_of
        {
            self.newest_heard_at = Some(self.newest_heard_at.map_or(t, |h| h.max(t)));
        }
        if head.head.revision > self.newest_known {
            self.newest_known = head.head.revision;
            self.newest_head = Some(*head);
        }
        // Only a head no newer than what is published confirms it; a newer one merely heard
        // of (not yet applied, or not persistable) does not make this edge fresh.
        if head.head.revision <= self.published
            && let Some(t) = as_of
        {
            self.current_as_of = Some(self.current_as_of.map_or(t, |c| c.max(t)));
        }
    }

    fn update_behind(&mut self, now: Instant) {
        if self.newest_known > self.state.revision() {
            self.behind_since.get_or_insert(now);
        } else {
            self.behind_since = None;
        }
    }

    fn count_verify_error(&mut self, e: &VerifyError) {
        match e {
            VerifyError::UnknownKey(_) => self.stats.rejected_unknown_key += 1,
            VerifyError::BadSignature(_) => self.stats.rejected_bad_signature += 1,
            VerifyError::DeltaMismatch(_) | VerifyError::RevisionMismatch { .. } => {
                self.stats.rejected_delta_mismatch += 1
            }
        }
    }

    fn verify_head(&mut self, head: &SignedHead) -> bool {
        match self.trusted.verify_head(head) {
            Ok(()) => true,
            Err(e) => {
                self.count_verify_error(&e);
                false
            }
        }
    }

    fn on_delta(&mut self, now: Instant, link: usize, delta: SignedDelta) {
        if let Err(e) = self.trusted.verify_delta(&delta) {
            self.count_verify_error(&e);
            return;
        }
        self.heard(now, link, &delta.head);
        self.last_delta = now;
        if link == ORIGIN_LINK {
            self.origin_suspect = false;
            self.origin_heard = Some(now);
        } else if let Some(l) = self.links.get_mut(link) {
            l.delivered = Some(now);
        }
        let next = self.state.revision().next();
        let r = delta.delta.revision;
        if r < next || self.pending.contains_key(&r) {
            self.stats.duplicates += 1;
        } else if r > next {
            if self.pending.len() < self.config.max_pending_deltas {
                self.pending.insert(r, delta);
            }
        } else {
            self.apply(now, &delta);
            self.drain_pending(now);
        }
    }

    fn apply(&mut self, now: Instant, delta: &SignedDelta) {
        match self.state.apply_delta(delta) {
            Ok(()) => {
                self.stats.deltas_applied += 1;
                self.last_progress = now;
            }
            Err(StoreError::DigestMismatch(_)) => self.stats.rejected_digest_mismatch += 1,
            Err(StoreError::OutOfOrder { .. }) => self.stats.duplicates += 1,
            Err(_) => self.stats.store_errors += 1,
        }
    }

    fn drain_pending(&mut self, now: Instant) {
        let current = self.state.revision();
        self.pending.retain(|r, _| *r > current);
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.state.revision().next() {
                break;
            }
            let delta = entry.remove();
            self.apply(now, &delta);
            if self.state.revision() != delta.delta.revision {
                break;
            }
        }
    }

    /// The digest of the working state (for Hello and status).
    pub fn digest(&self) -> Digest {
        self.state.digest()
    }

    /// Gives up the state (a crash in the simulator, or shutdown).
    pub fn into_state(self) -> SignedState<B> {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::{Change, Delta, Signer, Version};
    use meridian_store::MemBackend;

    fn signer() -> Signer {
        Signer::from_bytes(&[4; 32])
    }

    /// Signed deltas 1..=n as an origin would produce them.
    fn history(n: u64) -> Vec<SignedDelta> {
        let mut origin = meridian_protocol::CacheState::new();
        (1..=n)
            .map(|r| {
                let delta = Delta {
                    revision: Revision(r),
                    changes: vec![Change {
                        address: Address::parse("a", "p", &format!("k{}", r % 3)).unwrap(),
                        version: Version(r),
                        value: Some(r.to_string().into()),
                    }],
                };
                let d = signer().sign_delta(delta.clone(), origin.digest_after(&delta));
                origin.apply_delta(&delta);
                d
            })
            .collect()
    }

    /// The default tuning, but saying `Hello` the moment a link connects (most tests are
    /// about what follows; the hello delay has its own test).
    fn config() -> ReplicatorConfig {
        ReplicatorConfig {
            hello_delay_ms: 0,
            ..ReplicatorConfig::default()
        }
    }

    fn replicator(now: Instant) -> Replicator<MemBackend> {
        let state = SignedState::open(MemBackend::new(), 100).unwrap();
        Replicator::new(
            config(),
            TrustedKeys::new([signer().verifying_key()]),
            state,
            now,
        )
    }

    /// A replicator with an empty store, `peer_count` peers and `peer_links` peer links.
    fn with_peers(now: Instant, peer_count: usize, peer_links: usize) -> Replicator<MemBackend> {
        let state = SignedState::open(MemBackend::new(), 100).unwrap();
        let config = ReplicatorConfig {
            peer_count,
            peer_links,
            ..config()
        };
        Replicator::new(
            config,
            TrustedKeys::new([signer().verifying_key()]),
            state,
            now,
        )
    }

    /// Three peers over `peer_links` links, no origin, and peer link 1 has just relayed
    /// `delta`.
    fn relaying(now: Instant, peer_links: usize, delta: &SignedDelta) -> Replicator<MemBackend> {
        let mut r = with_peers(now, 3, peer_links);
        r.handle_timeout(now);
        r.handle_connected(now, 1);
        r.handle_frame(now, 1, FrameV1::Delta(delta.clone()).into());
        r.flush(now);
        outputs(&mut r);
        r
    }

    /// Asserts that `out` asks `link` for everything after `from`.
    fn assert_needs(out: &[Output], link: usize, from: Revision) {
        let frame = FrameV1::Need { from }.into();
        assert!(out.contains(&Output::Send { link, frame }), "{out:?}");
    }

    /// Asserts that `out` dials `upstream` for `link`.
    fn assert_dials(out: &[Output], link: usize, upstream: usize) {
        assert!(out.contains(&Output::Connect { link, upstream }), "{out:?}");
    }

    /// Whether the pending outputs dial anything (heartbeats and the like are dropped).
    fn dials(r: &mut Replicator<MemBackend>) -> bool {
        outputs(r)
            .iter()
            .any(|o| matches!(o, Output::Connect { .. }))
    }

    fn outputs(r: &mut Replicator<MemBackend>) -> Vec<Output> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn connected(now: Instant) -> Replicator<MemBackend> {
        let mut r = replicator(now);
        r.handle_timeout(now);
        assert_eq!(
            outputs(&mut r),
            vec![Output::Connect {
                link: 0,
                upstream: 0
            }]
        );
        r.handle_connected(now, 0);
        let out = outputs(&mut r);
        assert!(matches!(
            &out[..],
            [Output::Send {
                link: 0,
                frame: Frame::V1(FrameV1::Hello {
                    revision: Revision(0),
                    ..
                })
            }]
        ));
        r
    }

    #[test]
    fn staleness_counts_from_what_is_published_not_from_heads_merely_heard() {
        let t0 = Instant::now();
        let d = history(3);
        let mut r = connected(t0);
        assert_eq!(r.current_as_of(), None);
        // A head newer than anything published is heard: the edge is not fresh for it.
        let t1 = t0 + Duration::from_millis(100);
        r.handle_frame(t1, 0, FrameV1::Head(d[2].head).into());
        r.flush(t1);
        assert_eq!(r.current_as_of(), None, "heard of 3, holds 0");
        // Deltas 1 and 2 are applied and published: still behind the head heard.
        let t2 = t1 + Duration::from_millis(100);
        for delta in &d[..2] {
            r.handle_frame(t2, 0, FrameV1::Delta(delta.clone()).into());
        }
        r.flush(t2);
        assert_eq!(r.current_as_of(), None, "holds 2 of 3");
        // Delta 3 applied but not yet published: still not fresh.
        let t3 = t2 + Duration::from_millis(100);
        r.handle_frame(t3, 0, FrameV1::Delta(d[2].clone()).into());
        assert_eq!(r.current_as_of(), None, "applied but not published");
        // Published: current as of the moment the newest head was last heard (with delta 3,
        // at t3), not from the flush.
        r.flush(t3 + Duration::from_millis(50));
        assert_eq!(r.current_as_of(), Some(t3));
        // The same head heard again later confirms it.
        let t4 = t3 + Duration::from_millis(100);
        r.handle_frame(t4, 0, FrameV1::Head(d[2].head).into());
        assert_eq!(r.current_as_of(), Some(t4));
    }

    #[test]
    fn out_of_order_deltas_are_buffered_then_applied_in_order_and_acked_after_flush() {
        let now = Instant::now();
        let mut r = connected(now);
        let h = history(5);
        for i in [4, 2, 3, 1, 0, 0] {
            r.handle_frame(now, 0, FrameV1::Delta(h[i].clone()).into());
        }
        assert_eq!(r.state().revision(), Revision(5));
        assert_eq!(r.stats().deltas_applied, 5);
        assert_eq!(r.stats().duplicates, 1);
        assert!(
            outputs(&mut r).is_empty(),
            "no ack before the revisions are durable"
        );
        assert_eq!(r.flush(now), Revision(5));
        assert_eq!(
            outputs(&mut r),
            vec![Output::Send {
                link: 0,
                frame: FrameV1::Ack {
                    revision: Revision(5)
                }
                .into()
            }]
        );
        assert_eq!(r.state().digest(), h[4].head.head.digest);
    }

    #[test]
    fn a_full_disk_applies_and_asks_nothing_and_room_asks_for_what_came_meanwhile() {
        let now = Instant::now();
        let mut r = connected(now);
        let h = history(3);
        r.handle_frame(now, 0, FrameV1::Delta(h[0].clone()).into());
        r.flush(now);
        outputs(&mut r);
        r.handle_storage(now, true);
        assert!(r.storage_full());
        r.handle_frame(now, 0, FrameV1::Delta(h[1].clone()).into());
        r.handle_frame(now, 0, FrameV1::Delta(h[2].clone()).into());
        assert_eq!(r.state().revision(), Revision(1), "nothing applied");
        assert_eq!(r.stats().dropped_disk_full, 2);
        // Heads are still heard: the edge knows it is behind.
        r.handle_frame(now, 0, FrameV1::Head(h[2].head).into());
        assert_eq!(r.newest_known(), Revision(3));
        assert_eq!(r.flush(now), Revision(1));
        // No stall re-asks while full (past the stall timeout, within the silence timeout):
        // what arrives would only be dropped.
        let later = now + Duration::from_millis(1_200);
        r.handle_timeout(later);
        let out = outputs(&mut r);
        assert!(
            !out.iter().any(|o| matches!(
                o,
                Output::Send {
                    frame: Frame::V1(FrameV1::Need { .. }),
                    ..
                }
            )),
            "{out:?}"
        );
        r.handle_storage(later, false);
        assert_needs(&outputs(&mut r), 0, Revision(1));
        r.handle_frame(later, 0, FrameV1::Delta(h[1].clone()).into());
        r.handle_frame(later, 0, FrameV1::Delta(h[2].clone()).into());
        assert_eq!(r.flush(later), Revision(3));
    }

    #[test]
    fn a_stall_behind_a_known_head_asks_again() {
        let now = Instant::now();
        let mut r = connected(now);
        let h = history(3);
        r.handle_frame(now, 0, FrameV1::Delta(h[0].clone()).into());
        r.handle_frame(now, 0, FrameV1::Head(h[2].head).into());
        assert_eq!(r.newest_known(), Revision(3));
        let due = r.poll_timeout().unwrap();
        assert!(due <= now + Duration::from_millis(1_000));
        let later = now + Duration::from_millis(1_000);
        r.handle_timeout(later);
        let out = outputs(&mut r);
        assert_needs(&out, 0, Revision(1));
        assert!(r.lag(later) >= Duration::from_millis(1_000));
    }

    #[test]
    fn an_origin_connection_that_never_answers_gets_a_fresh_dial_beside_it() {
        let t0 = Instant::now();
        let mut r = connected(t0);
        let timeout = Duration::from_millis(ReplicatorConfig::default().connect_timeout_ms);
        assert!(r.poll_timeout().unwrap() <= t0 + timeout);
        r.handle_timeout(t0 + timeout - Duration::from_millis(1));
        assert!(!dials(&mut r), "too early");
        // Silent for the connect timeout: a second dial, the connection stays up.
        r.handle_timeout(t0 + timeout);
        let out = outputs(&mut r);
        assert_eq!(
            out,
            vec![Output::Connect {
                link: 0,
                upstream: 0
            }]
        );
        assert!(r.is_connected());
        r.handle_timeout(t0 + timeout + Duration::from_millis(100));
        assert!(
            outputs(&mut r).is_empty(),
            "one fresh dial per silent connection"
        );
        // The old connection answers first: the dial is abandoned, the link is kept.
        let h = history(1);
        let at = t0 + timeout + Duration::from_millis(200);
        r.handle_frame(at, 0, FrameV1::Head(h[0].head).into());
        assert!(outputs(&mut r).contains(&Output::AbandonDials { link: 0 }));
        // An origin link that answered is never probed again, whatever the silence.
        r.handle_timeout(at + Duration::from_millis(1_400));
        let out = outputs(&mut r);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Connect { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn a_fresh_dial_that_completes_first_replaces_the_silent_connection() {
        let t0 = Instant::now();
        let mut r = connected(t0);
        let timeout = Duration::from_millis(ReplicatorConfig::default().connect_timeout_ms);
        r.handle_timeout(t0 + timeout);
        assert_dials(&outputs(&mut r), 0, 0);
        // The new dial completes: the link starts over with a Hello on the new connection
        // and waits its own connect timeout before dialing again.
        let t1 = t0 + timeout + Duration::from_millis(300);
        r.handle_connected(t1, 0);
        let out = outputs(&mut r);
        assert!(
            matches!(
                &out[..],
                [Output::Send {
                    link: 0,
                    frame: Frame::V1(FrameV1::Hello { .. })
                }]
            ),
            "{out:?}"
        );
        r.handle_timeout(t1 + timeout - Duration::from_millis(1));
        assert!(!dials(&mut r));
        r.handle_timeout(t1 + timeout);
        assert_dials(&outputs(&mut r), 0, 0);
    }

    #[test]
    fn silence_drops_the_link_and_reconnects_with_bounded_backoff() {
        let t0 = Instant::now();
        let mut r = connected(t0);
        let t1 = t0 + Duration::from_millis(3_000);
        r.handle_timeout(t1);
        assert!(outputs(&mut r).contains(&Output::Disconnect { link: 0 }));
        assert!(!r.is_connected());
        // Backoff doubles from 50 ms to the 2 s cap across failed dials.
        let mut now = t1;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let at = r.poll_timeout().unwrap();
            delays.push(at.duration_since(now).as_millis());
            now = at;
            r.handle_timeout(now);
            assert!(matches!(outputs(&mut r)[..], [Output::Connect { .. }]));
            r.handle_disconnected(now, 0);
        }
        assert_eq!(delays, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        r.handle_connected(now, 0);
        r.handle_disconnected(now, 0);
        assert_eq!(
            r.poll_timeout().unwrap().duration_since(now).as_millis(),
            50,
            "reset on success"
        );
    }

    #[test]
    fn hello_waits_out_the_hello_delay_and_nothing_goes_before_it() {
        let t0 = Instant::now();
        let state = SignedState::open(MemBackend::new(), 100).unwrap();
        let mut r = Replicator::new(
            ReplicatorConfig::default(),
            TrustedKeys::new([signer().verifying_key()]),
            state,
            t0,
        );
        r.handle_timeout(t0);
        assert_dials(&outputs(&mut r), ORIGIN_LINK, 0);
        r.handle_connected(t0, ORIGIN_LINK);
        // Nothing leaves before the delay: a Hello sent now could overtake the handshake's
        // last flight and be dropped by the upstream.
        assert!(outputs(&mut r).is_empty());
        assert!(!r.link_connected(ORIGIN_LINK));
        let delay = Duration::from_millis(ReplicatorConfig::default().hello_delay_ms);
        assert_eq!(r.poll_timeout(), Some(t0 + delay));
        r.handle_timeout(t0 + delay / 2);
        assert!(outputs(&mut r).is_empty());
        r.handle_timeout(t0 + delay);
        let out = outputs(&mut r);
        assert!(
            matches!(
                &out[..],
                [Output::Send {
                    link: ORIGIN_LINK,
                    frame: Frame::V1(FrameV1::Hello { .. })
                }]
            ),
            "{out:?}"
        );
        assert!(r.link_connected(ORIGIN_LINK));

        // An upstream that speaks first settles the link at once: Hello goes before anything
        // the frame causes.
        let mut r = replicator(t0);
        r.config.hello_delay_ms = 50;
        r.handle_timeout(t0);
        outputs(&mut r);
        r.handle_connected(t0, ORIGIN_LINK);
        let head = history(1)[0].head;
        r.handle_frame(t0, ORIGIN_LINK, FrameV1::Head(head).into());
        let out = outputs(&mut r);
        assert!(
            matches!(
                out.first(),
                Some(Output::Send {
                    link: ORIGIN_LINK,
                    frame: Frame::V1(FrameV1::Hello { .. })
                })
            ),
            "{out:?}"
        );
        assert!(r.link_connected(ORIGIN_LINK));
    }

    #[test]
    fn heartbeats_go_out_on_schedule() {
        let now = Instant::now();
        let mut r = connected(now);
        let due = r.poll_timeout().unwrap();
        assert_eq!(due, now + Duration::from_millis(500));
        r.handle_frame(
            due,
            0,
            FrameV1::Heartbeat {
                revision: Revision(0),
            }
            .into(),
        );
        r.handle_timeout(due);
        // On the origin link, a drift report goes with each heartbeat.
        assert_eq!(
            outputs(&mut r),
            vec![
                Output::Send {
                    link: 0,
                    frame: FrameV1::Heartbeat {
                        revision: Revision(0)
                    }
                    .into()
                },
                Output::Send {
                    link: 0,
                    frame: FrameV1::Report {
                        revision: Revision(0),
                        digest: r.digest(),
                        lag_ms: 0,
                    }
                    .into()
                }
            ]
        );
    }

    /// The entries of the state `h` leads to.
    fn entries_after(h: &[SignedDelta]) -> Vec<(Address, EntryState)> {
        let mut full = meridian_protocol::CacheState::new();
        for d in h {
            full.apply_delta(&d.delta);
        }
        full.iter().map(|(a, e)| (a, e.clone())).collect()
    }

    #[test]
    fn a_snapshot_arriving_for_longer_than_the_stall_timeout_is_not_asked_for_again() {
        let start = Instant::now();
        let mut r = connected(start);
        let h = history(4);
        let entries = entries_after(&h);
        r.handle_frame(
            start,
            0,
            FrameV1::SnapshotBegin {
                head: h[3].head,
                entries: entries.len() as u64,
            }
            .into(),
        );
        outputs(&mut r);
        // One chunk every 600 ms, for three stall timeouts (1 s) in all; heartbeats from the
        // origin keep the link from going silent.
        let mut now = start;
        for (seq, entry) in entries.iter().enumerate() {
            now += Duration::from_millis(600);
            r.handle_frame(now, 0, FrameV1::Head(h[3].head).into());
            r.handle_timeout(now);
            r.handle_frame(
                now,
                0,
                FrameV1::SnapshotChunk {
                    seq: seq as u32,
                    entries: vec![entry.clone()],
                }
                .into(),
            );
            let out = outputs(&mut r);
            assert!(
                !out.iter().any(|o| matches!(
                    o,
                    Output::Send {
                        frame: Frame::V1(FrameV1::Need { .. }),
                        ..
                    }
                )),
                "asked again while chunks arrive: {out:?}"
            );
        }
        r.handle_frame(
            now,
            0,
            FrameV1::SnapshotEnd {
                chunks: entries.len() as u32,
            }
            .into(),
        );
        assert_eq!(r.state().revision(), Revision(4));
        assert_eq!(r.stats().snapshots_installed, 1);
    }

    #[test]
    fn a_snapshot_with_a_missing_chunk_is_refused() {
        let now = Instant::now();
        let mut r = connected(now);
        let h = history(4);
        let entries = entries_after(&h);
        r.handle_frame(
            now,
            0,
            FrameV1::SnapshotBegin {
                head: h[3].head,
                entries: entries.len() as u64,
            }
            .into(),
        );
        r.handle_frame(
            now,
            0,
            FrameV1::SnapshotChunk {
                seq: 1,
                entries: entries.clone(),
            }
            .into(),
        );
        r.handle_frame(now, 0, FrameV1::SnapshotEnd { chunks: 1 }.into());
        assert_eq!(r.state().revision(), Revision(0));
        assert!(r.stats().rejected_unexpected >= 1);
        r.handle_frame(
            now,
            0,
            FrameV1::SnapshotBegin {
                head: h[3].head,
                entries: entries.len() as u64,
            }
            .into(),
        );
        r.handle_frame(now, 0, FrameV1::SnapshotChunk { seq: 0, entries }.into());
        r.handle_frame(now, 0, FrameV1::SnapshotEnd { chunks: 1 }.into());
        assert_eq!(r.state().revision(), Revision(4));
        assert_eq!(r.stats().snapshots_installed, 1);
    }

    #[test]
    fn the_peer_link_stays_warm_switches_over_with_need_and_leaves_stale_peers() {
        let now = Instant::now();
        let mut r = with_peers(now, 3, 1);
        r.handle_timeout(now);
        // Both the origin and the first peer are dialed at once.
        let out = outputs(&mut r);
        assert_dials(&out, 0, 0);
        assert_dials(&out, 1, 1);
        // A peer connected while the origin link has not answered yet is left delivering;
        // once the origin answers, the peer is told to stand by: heads only, no deltas.
        r.handle_connected(now, 0);
        r.handle_connected(now, 1);
        let standby = Output::Send {
            link: 1,
            frame: FrameV1::Standby.into(),
        };
        assert!(!outputs(&mut r).contains(&standby));
        let hb = FrameV1::Heartbeat {
            revision: Revision(0),
        };
        r.handle_frame(now, 0, hb.clone().into());
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert!(out.contains(&standby), "{out:?}");
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert!(!out.contains(&standby), "said once: {out:?}");
        assert!(
            !out.iter().any(|o| matches!(
                o,
                Output::Disconnect { link: 1 } | Output::Connect { link: 1, .. }
            )),
            "the warm link is kept: {out:?}"
        );

        // The origin link drops: the peer is asked to deliver, without dialing anything.
        r.handle_disconnected(now, 0);
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert_needs(&out, 1, Revision(0));

        // The peer says it has not heard the origin for 5 s: move to the next peer.
        r.handle_frame(
            now,
            1,
            FrameV1::Freshness {
                staleness_ms: 5_000,
                holds: Revision(0),
            }
            .into(),
        );
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert!(out.contains(&Output::Disconnect { link: 1 }), "{out:?}");
        assert_dials(&out, 1, 2);

        // That peer's link then goes silent and drops; its old report must not condemn the
        // next peer the moment it connects.
        r.handle_connected(now, 1);
        r.handle_frame(
            now,
            1,
            FrameV1::Freshness {
                staleness_ms: 1_400,
                holds: Revision(0),
            }
            .into(),
        );
        r.handle_disconnected(now, 1);
        let later = now + Duration::from_millis(200);
        r.handle_timeout(later);
        outputs(&mut r);
        r.handle_connected(later, 1);
        r.handle_timeout(later);
        let out = outputs(&mut r);
        assert!(!out.contains(&Output::Disconnect { link: 1 }), "{out:?}");

        // A fresh peer relays a delta; when the origin comes back the peer stands by again.
        r.handle_connected(now, 1);
        let out = outputs(&mut r);
        assert!(!out.contains(&standby), "origin is down: {out:?}");
        r.handle_frame(
            now,
            1,
            FrameV1::Freshness {
                staleness_ms: 20,
                holds: Revision(1),
            }
            .into(),
        );
        r.handle_frame(now, 1, FrameV1::Delta(history(1)[0].clone()).into());
        assert_eq!(r.state().revision(), Revision(1));
        outputs(&mut r);
        r.handle_connected(now, 0);
        r.handle_frame(now, 0, hb.into());
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert!(out.contains(&standby), "{out:?}");
        assert!(!out.contains(&Output::Disconnect { link: 1 }), "{out:?}");
    }

    #[test]
    fn confirmations_relayed_by_peers_age_with_the_peers_own_knowledge() {
        // Edges that have all lost the origin keep sending one another the same heads; those
        // must not keep any of them fresh (strict namespaces would never refuse).
        let t0 = Instant::now();
        let mut r = with_peers(t0, 3, 1);
        r.handle_timeout(t0);
        r.handle_connected(t0, 1);
        let d = history(1);
        // A peer that last heard the origin 5 s before it reported.
        let stale = FrameV1::Freshness {
            staleness_ms: 5_000,
            holds: Revision(1),
        };
        r.handle_frame(t0, 1, stale.into());
        r.handle_frame(t0, 1, FrameV1::Delta(d[0].clone()).into());
        r.flush(t0);
        assert_eq!(r.state().revision(), Revision(1));
        let t1 = t0 + Duration::from_secs(10);
        r.handle_frame(t1, 1, FrameV1::Head(d[0].head).into());
        r.handle_frame(
            t1,
            1,
            FrameV1::Freshness {
                staleness_ms: 15_000,
                holds: Revision(1),
            }
            .into(),
        );
        let as_of = r.current_as_of().expect("confirmed as of some moment");
        assert!(
            as_of <= t0,
            "no fresher than the peer knew: {:?}",
            as_of - t0
        );
        // A peer that is current confirms it as of its own report.
        let t2 = t1 + Duration::from_secs(1);
        r.handle_frame(
            t2,
            1,
            FrameV1::Freshness {
                staleness_ms: 100,
                holds: Revision(1),
            }
            .into(),
        );
        assert_eq!(r.current_as_of(), Some(t2 - Duration::from_millis(100)));
    }

    #[test]
    fn an_origin_link_that_goes_quiet_wakes_the_standby_peers_until_it_speaks_again() {
        // A one-way partition: the origin connection stays up (not yet silent long enough to
        // drop) but its heads and deltas stop, and no newer head is known to start the stall
        // timer. The standby peer must be asked to deliver within the origin quiet time.
        let now = Instant::now();
        let mut r = with_peers(now, 3, 1);
        r.handle_timeout(now);
        r.handle_connected(now, 0);
        r.handle_connected(now, 1);
        let deltas = history(2);
        r.handle_frame(now, 0, FrameV1::Delta(deltas[0].clone()).into());
        r.flush(now);
        r.handle_timeout(now);
        let standby = Output::Send {
            link: 1,
            frame: FrameV1::Standby.into(),
        };
        assert!(outputs(&mut r).contains(&standby));
        let quiet = Duration::from_millis(ReplicatorConfig::default().origin_quiet_ms);
        assert_eq!(r.poll_timeout().map(|t| t <= now + quiet), Some(true));

        // Just before the quiet time nothing changes; at it, the peer is asked to deliver.
        let almost = now + quiet - Duration::from_millis(1);
        r.handle_timeout(almost);
        let out = outputs(&mut r);
        assert!(!out.iter().any(|o| matches!(
            o,
            Output::Send {
                link: 1,
                frame: Frame::V1(FrameV1::Need { .. })
            }
        )));
        r.handle_timeout(now + quiet);
        assert_needs(&outputs(&mut r), 1, Revision(1));
        // No busy loop once the peers are awake.
        assert!(r.poll_timeout().is_some_and(|t| t > now + quiet));

        // The peer relays revision 2; then the origin speaks again and the peer stands by.
        let later = now + quiet + Duration::from_millis(100);
        r.handle_frame(later, 1, FrameV1::Delta(deltas[1].clone()).into());
        r.flush(later);
        assert_eq!(r.state().revision(), Revision(2));
        outputs(&mut r);
        r.handle_frame(later, 0, FrameV1::Head(deltas[1].head).into());
        r.handle_timeout(later);
        assert!(outputs(&mut r).contains(&standby));
    }

    #[test]
    fn a_relay_that_keeps_delivering_is_kept_whatever_it_reports() {
        let now = Instant::now();
        let mut r = with_peers(now, 3, 2);
        r.handle_timeout(now);
        r.handle_connected(now, 1);
        outputs(&mut r);
        let h = history(2);
        // Its report trails what it delivers: it claims 2 s staleness and to hold revision 0,
        // yet revision 1 arrives from it.
        r.handle_frame(
            now,
            1,
            FrameV1::Freshness {
                staleness_ms: 2_000,
                holds: Revision(0),
            }
            .into(),
        );
        r.handle_frame(now, 1, FrameV1::Delta(h[0].clone()).into());
        r.flush(now);
        let soon = now + Duration::from_millis(500);
        r.handle_timeout(soon);
        assert!(!outputs(&mut r).contains(&Output::Disconnect { link: 1 }));
        // Once it has delivered nothing for longer than the limit, it is left.
        let later = now + Duration::from_millis(1_600);
        r.handle_frame(
            later,
            1,
            FrameV1::Freshness {
                staleness_ms: 3_000,
                holds: Revision(1),
            }
            .into(),
        );
        r.handle_timeout(later);
        assert!(outputs(&mut r).contains(&Output::Disconnect { link: 1 }));
    }

    #[test]
    fn two_peer_links_interleave_the_peers_and_both_switch_over() {
        let now = Instant::now();
        let mut r = with_peers(now, 4, 2);
        assert_eq!(r.link_count(), 3);
        r.handle_timeout(now);
        let out = outputs(&mut r);
        for (link, upstream) in [(0, 0), (1, 1), (2, 2)] {
            assert!(out.contains(&Output::Connect { link, upstream }), "{out:?}");
        }
        // A failed dial moves each link to its next share of the peers, never the other's.
        r.handle_disconnected(now, 1);
        r.handle_disconnected(now, 2);
        let later = now + Duration::from_secs(2);
        r.handle_timeout(later);
        let out = outputs(&mut r);
        for (link, upstream) in [(1, 3), (2, 4)] {
            assert!(out.contains(&Output::Connect { link, upstream }), "{out:?}");
        }
        r.handle_connected(later, 0);
        r.handle_frame(
            later,
            0,
            FrameV1::Heartbeat {
                revision: Revision(0),
            }
            .into(),
        );
        r.handle_connected(later, 1);
        r.handle_connected(later, 2);
        let out = outputs(&mut r);
        for link in [1, 2] {
            assert!(
                out.contains(&Output::Send {
                    link,
                    frame: FrameV1::Standby.into()
                }),
                "{out:?}"
            );
        }
        r.handle_disconnected(later, 0);
        r.handle_timeout(later);
        let out = outputs(&mut r);
        for link in [1, 2] {
            assert_needs(&out, link, Revision(0));
        }
    }

    #[test]
    fn a_peer_that_dials_us_holding_more_is_dialed_back() {
        let now = Instant::now();
        let mut r = with_peers(now, 3, 2);
        r.handle_timeout(now);
        outputs(&mut r);
        // Nothing newer: no offer.
        r.handle_peer_holds(now, 5, Revision(0));
        r.handle_timeout(now);
        assert!(outputs(&mut r).is_empty());
        // Upstream 5 is outside the rotation (peers 1..=3), yet it is dialed when it offers
        // more than the edge holds, on a link that was still searching.
        r.handle_peer_holds(now, 5, Revision(2));
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert!(out.contains(&Output::Disconnect { link: 1 }), "{out:?}");
        assert_dials(&out, 1, 5);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Connect { link: 2, .. })),
            "one link is enough: {out:?}"
        );
        // An offer from the peer a link is already on changes nothing.
        r.handle_peer_holds(now, 5, Revision(3));
        r.handle_timeout(now);
        assert!(outputs(&mut r).is_empty());
    }

    #[test]
    fn offers_leave_a_delivering_origin_or_relay_alone_and_expire() {
        let now = Instant::now();
        let h = history(1);
        // The origin delivers: offers are ignored (standby peers stay standby).
        let mut r = with_peers(now, 3, 2);
        r.handle_timeout(now);
        r.handle_connected(now, 0);
        r.handle_frame(
            now,
            0,
            FrameV1::Heartbeat {
                revision: Revision(0),
            }
            .into(),
        );
        outputs(&mut r);
        r.handle_peer_holds(now, 4, Revision(1));
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Connect { upstream: 4, .. })),
            "{out:?}"
        );

        // No origin; link 1's relay is delivering, so link 2 is the one redirected.
        let mut r = relaying(now, 2, &h[0]);
        r.handle_peer_holds(now, 4, Revision(5));
        r.handle_timeout(now);
        let out = outputs(&mut r);
        assert_dials(&out, 2, 4);
        assert!(!out.contains(&Output::Disconnect { link: 1 }), "{out:?}");

        // An offer not taken within the staleness limit is dropped.
        let mut r = relaying(now, 1, &h[0]);
        r.handle_peer_holds(now, 4, Revision(5));
        r.handle_timeout(now);
        assert!(
            !outputs(&mut r)
                .iter()
                .any(|o| matches!(o, Output::Connect { .. }))
        );
        let later = now + Duration::from_millis(1_600);
        r.handle_frame(
            later,
            1,
            FrameV1::Heartbeat {
                revision: Revision(1),
            }
            .into(),
        );
        r.handle_timeout(later);
        let out = outputs(&mut r);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Connect { upstream: 4, .. })),
            "{out:?}"
        );
    }

    #[test]
    fn peer_links_never_dial_the_same_peer_at_once() {
        let now = Instant::now();
        // Three peers over two links: the rotations overlap, so link 1, searching, skips the
        // peer link 2 is connected to.
        let mut r = with_peers(now, 3, 2);
        r.handle_timeout(now);
        outputs(&mut r);
        r.handle_connected(now, 2);
        let mut at = now;
        let mut dialed = Vec::new();
        for _ in 0..12 {
            at += Duration::from_millis(600);
            let hb = FrameV1::Heartbeat {
                revision: Revision(0),
            };
            r.handle_frame(at, 2, hb.into());
            r.handle_timeout(at);
            for o in outputs(&mut r) {
                if let Output::Connect { link: 1, upstream } = o {
                    dialed.push(upstream);
                }
            }
        }
        assert_eq!(dialed.len(), 12, "{dialed:?}");
        assert!(!dialed.contains(&2), "link 2 is on upstream 2: {dialed:?}");
    }
}
