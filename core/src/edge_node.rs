//! An edge as one sans-IO state machine: the [`Replicator`] with its links to origins and
//! peers, the [`Distributor`] that serves the peers that dial this edge, the peer topology it
//! follows, and the dial policy that maps links to connections.
//!
//! The dial policy: a link may have an established connection and up to
//! [`MAX_DIALS_PER_LINK`] dials in progress; the first dial to complete becomes the link's
//! connection and every other dial, and a connection it was dialed beside, is closed (a
//! handshake slowed by loss or a latency spike is not thrown away just as it is about to
//! finish). Connections are named by [`ConnId`]s this state machine hands out, for dials and
//! for accepted connections alike, so the shell keeps nothing but a map from ids to its own
//! connections.
//!
//! The shell (tokio and quinn in `meridian edge`, quinn-proto in virtual time in the
//! simulator) follows one loop: feed what happened through `handle_*`, call
//! [`EdgeNode::flush`] after a burst of frames, carry out every [`Action`] from
//! [`EdgeNode::poll_action`], and call [`EdgeNode::handle_timeout`] at
//! [`EdgeNode::poll_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use meridian_protocol::auth::SYSTEM_APP;
use meridian_protocol::directory::{self, EDGES_ENV};
use meridian_protocol::{
    Address, EntryState, Frame, FrameV1, Revision, SignedDelta, SignedHead, TrustedKeys,
};
use meridian_store::{Backend, SignedState, StoreError};

use crate::distributor::{ChangeSource, ConnId, Distributor, DistributorConfig, Transmit};
use crate::replicator::{LinkId, Output, Replicator, ReplicatorConfig, UpstreamId};
use crate::topology::{PeerEntry, peer_order};

/// At most this many dials of one link run at once; a newer dial closes the oldest.
pub const MAX_DIALS_PER_LINK: usize = 2;

/// Who a dial goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The shell's origin address number `n`.
    Origin(usize),
    /// A peer edge.
    Peer(PeerEntry),
}

/// What the edge asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Dial `to` as connection `conn`; report the outcome with [`EdgeNode::handle_connected`]
    /// or [`EdgeNode::handle_lost`].
    Dial {
        /// The id the connection goes by.
        conn: ConnId,
        /// Where to.
        to: Upstream,
    },
    /// Close connection `conn`, or abandon its dial. Nothing more is reported about it.
    Close {
        /// Which connection.
        conn: ConnId,
        /// Why (sent to the other end).
        reason: &'static str,
    },
    /// Send a frame on `conn`'s control stream.
    Send {
        /// Which connection.
        conn: ConnId,
        /// What.
        frame: Frame,
    },
    /// Send frames, in order, on a new unidirectional stream of `conn` at `priority` (higher
    /// first), then finish it. A stream that cannot be opened may be dropped: the peer asks
    /// again.
    Stream {
        /// Which connection.
        conn: ConnId,
        /// What.
        frames: Vec<Frame>,
        /// Stream priority.
        priority: i32,
    },
}

/// What a connection is to this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A dial for link `link`, not yet complete.
    Dialing { link: LinkId },
    /// Link `link`'s connection.
    Link { link: LinkId },
    /// A peer that dialed this edge, to be served; the upstream it is in this edge's own
    /// peer order once its Hello named it.
    Served { upstream: Option<UpstreamId> },
}

/// How an edge is set up.
#[derive(Debug, Clone)]
pub struct EdgeNodeConfig {
    /// The replicator (its `peer_count` is set from the directory).
    pub replicator: ReplicatorConfig,
    /// How peers that dial this edge are served.
    pub serving: DistributorConfig,
    /// The region of the origin cluster (its edges come first in the peer rotation).
    pub origin_region: String,
    /// Peers known without the origin's directory (`peers` of the edge's configuration),
    /// listed first; the directory replicated from the origin adds the others.
    pub static_peers: Vec<PeerEntry>,
    /// Whether to relay from peers at all (peer links); without it the edge still serves
    /// peers that dial it.
    pub relay: bool,
}

/// An edge's replication, as one state machine over its signed state in `B`.
pub struct EdgeNode<B: Backend> {
    rep: Replicator<B>,
    serving: Distributor,
    origin_region: String,
    roles: BTreeMap<ConnId, Role>,
    /// Per link: its connection, and its dials in progress, oldest first.
    links: BTreeMap<LinkId, (Option<ConnId>, Vec<ConnId>)>,
    /// The peers in this edge's order: [`UpstreamId::Peer`]`(i)` is `peers[i]`.
    peers: Vec<PeerEntry>,
    directory: Vec<PeerEntry>,
    static_peers: Vec<PeerEntry>,
    relay: bool,
    /// The directory namespace as last read: its record count and newest revision.
    directory_seen: Option<(usize, Revision)>,
    next_conn: ConnId,
    published: Revision,
    actions: VecDeque<Action>,
}

impl<B: Backend> EdgeNode<B> {
    /// An edge over a loaded state, with its static peers and the directory its state holds.
    pub fn new(
        mut config: EdgeNodeConfig,
        trusted: TrustedKeys,
        state: SignedState<B>,
        now: Instant,
    ) -> Self {
        config.replicator.peer_count = 0;
        let published = state.revision();
        let mut node = Self {
            rep: Replicator::new(config.replicator, trusted, state, now),
            serving: Distributor::new(config.serving),
            origin_region: config.origin_region,
            roles: BTreeMap::new(),
            links: BTreeMap::new(),
            peers: Vec::new(),
            directory: Vec::new(),
            static_peers: config.static_peers,
            relay: config.relay,
            directory_seen: None,
            next_conn: ConnId::FIRST,
            published,
            actions: VecDeque::new(),
        };
        node.refresh_directory(now);
        node
    }

    /// The replicator (its state, statistics and links).
    pub fn replicator(&self) -> &Replicator<B> {
        &self.rep
    }

    /// The distributor serving peers.
    pub fn serving(&self) -> &Distributor {
        &self.serving
    }

    /// The peers in the order this edge tries them.
    pub fn peers(&self) -> &[PeerEntry] {
        &self.peers
    }

    /// Who `upstream` is.
    pub fn upstream(&self, upstream: UpstreamId) -> Option<Upstream> {
        match upstream {
            UpstreamId::Origin(i) => {
                (i < self.rep.config().origin_count.max(1)).then_some(Upstream::Origin(i))
            }
            UpstreamId::Peer(i) => {
                let n = self.peers.len();
                (n > 0).then(|| Upstream::Peer(self.peers[i % n].clone()))
            }
        }
    }

    /// The connection of link `link`, if it is connected.
    pub fn link_upstream(&self, link: LinkId) -> Option<ConnId> {
        self.links.get(&link).and_then(|(c, _)| *c)
    }

    /// What connection `conn` is: `Some(link)` for a link's connection or dial, `None` for a
    /// peer being served or an unknown id.
    pub fn link_of(&self, conn: ConnId) -> Option<LinkId> {
        match self.roles.get(&conn) {
            Some(Role::Dialing { link } | Role::Link { link }) => Some(*link),
            _ => None,
        }
    }

    /// Whether `conn` is an established link (frames on it come from an upstream).
    pub fn is_link(&self, conn: ConnId) -> bool {
        matches!(self.roles.get(&conn), Some(Role::Link { .. }))
    }

    /// Whether `conn` is a peer being served.
    pub fn is_served(&self, conn: ConnId) -> bool {
        matches!(self.roles.get(&conn), Some(Role::Served { .. }))
    }

    /// Reads the directory of edges from the published state when it changed there: the
    /// static peers first, then the directory's other edges by id.
    fn refresh_directory(&mut self, now: Instant) {
        let reader = self.rep.state().reader();
        let published = reader.read().unwrap_or_else(|e| e.into_inner());
        let seen = published.state.namespace(SYSTEM_APP, EDGES_ENV).map(|ns| {
            (
                ns.len(),
                ns.values().map(|e| e.revision).max().unwrap_or_default(),
            )
        });
        if seen == self.directory_seen && !self.directory.is_empty() {
            return;
        }
        self.directory_seen = seen;
        let mut directory = self.static_peers.clone();
        for (edge_id, record) in directory::edges(&published.state) {
            if !directory.iter().any(|p| p.edge_id == edge_id) {
                directory.push(PeerEntry {
                    edge_id,
                    region: record.region,
                    addr: record.addr,
                });
            }
        }
        drop(published);
        self.set_directory(now, directory);
    }

    /// The directory of edges changed (or was learned): every edge, in one canonical order.
    /// When this edge's peer order changes, its peer links start over on the new one.
    fn set_directory(&mut self, now: Instant, directory: Vec<PeerEntry>) {
        if directory == self.directory {
            return;
        }
        let config = self.rep.config();
        let (order, rotation) = peer_order(
            &config.edge_id,
            &config.region,
            &self.origin_region,
            &directory,
        );
        let peers: Vec<PeerEntry> = if self.relay {
            order.iter().map(|&i| directory[i].clone()).collect()
        } else {
            Vec::new()
        };
        self.directory = directory;
        if peers != self.peers {
            self.peers = peers;
            self.rep.handle_peers(now, rotation);
            // Served peers are named by their place in the order: find them again.
            for role in self.roles.values_mut() {
                if let Role::Served { upstream } = role {
                    *upstream = None;
                }
            }
            self.pump(now);
        }
    }

    /// The shell found the disk full (or not) before taking on more frames.
    pub fn handle_storage(&mut self, now: Instant, full: bool) {
        self.rep.handle_storage(now, full);
        self.pump(now);
    }

    /// Dial `conn` completed its handshake.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        let Some(Role::Dialing { link }) = self.roles.get(&conn).copied() else {
            self.close(conn, "superseded");
            return;
        };
        let (current, dials) = self.links.entry(link).or_default();
        // The first dial to complete wins; the others go, and so does a connection it was
        // dialed beside.
        let losers: Vec<ConnId> = dials
            .drain(..)
            .filter(|d| *d != conn)
            .chain(current.take())
            .collect();
        *current = Some(conn);
        self.roles.insert(conn, Role::Link { link });
        for other in losers {
            self.close(other, "replaced");
        }
        self.rep.handle_connected(now, link);
        self.pump(now);
    }

    /// A peer dialed this edge; it is served under the id returned.
    pub fn handle_accepted(&mut self, now: Instant) -> ConnId {
        let conn = self.next_id();
        self.roles.insert(conn, Role::Served { upstream: None });
        self.serving.handle_connect(now, conn);
        conn
    }

    /// Connection `conn` ended, or its dial failed.
    pub fn handle_lost(&mut self, now: Instant, conn: ConnId) {
        match self.roles.remove(&conn) {
            Some(Role::Link { link }) => {
                if let Some((current, _)) = self.links.get_mut(&link) {
                    *current = None;
                }
                self.rep.handle_disconnected(now, link);
            }
            Some(Role::Dialing { link }) => {
                let (current, dials) = self.links.entry(link).or_default();
                dials.retain(|d| *d != conn);
                // A failed dial matters only once no other is left.
                if dials.is_empty() && current.is_none() {
                    self.rep.handle_disconnected(now, link);
                }
            }
            Some(Role::Served { .. }) => self.serving.handle_disconnect(conn),
            None => return,
        }
        self.pump(now);
    }

    /// A frame arrived on `conn`. Frames that are not about replication (data keys, reveal
    /// acknowledgements) are handed back for the shell.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) -> Option<Frame> {
        match self.roles.get(&conn).copied() {
            Some(Role::Link { link }) => match frame {
                Frame::V1(FrameV1::DataKeys { .. } | FrameV1::RevealsAck { .. }) => {
                    return Some(frame);
                }
                frame => self.rep.handle_frame(now, link, frame),
            },
            Some(Role::Served { mut upstream }) => {
                if let Frame::V1(FrameV1::Hello { edge_id, .. }) = &frame {
                    upstream = self
                        .peers
                        .iter()
                        .position(|p| p.edge_id == *edge_id)
                        .map(UpstreamId::Peer);
                    self.roles.insert(conn, Role::Served { upstream });
                }
                if let (
                    Some(upstream),
                    Frame::V1(FrameV1::Hello { revision, .. } | FrameV1::Heartbeat { revision }),
                ) = (upstream, &frame)
                {
                    self.rep.handle_peer_holds(now, upstream, *revision);
                }
                self.serving
                    .handle_frame(now, conn, frame, &Serving(&self.rep));
            }
            Some(Role::Dialing { .. }) | None => {}
        }
        self.pump(now);
        None
    }

    /// A frame on link `link` whatever connection carries it: how the simulator plays an
    /// attacker on the link.
    pub fn handle_link_frame(&mut self, now: Instant, link: LinkId, frame: Frame) {
        self.rep.handle_frame(now, link, frame);
        self.pump(now);
    }

    /// The signed state, for a shell that stops (a crash in the simulator).
    pub fn into_state(self) -> SignedState<B> {
        self.rep.into_state()
    }

    /// Bytes on one of `conn`'s streams did not form a valid frame.
    pub fn handle_malformed(&mut self, now: Instant, conn: ConnId) {
        if let Some(Role::Link { link }) = self.roles.get(&conn).copied() {
            self.rep.handle_malformed(now, link);
        }
    }

    /// Makes what was applied since the last flush durable and published; returns the
    /// revision now published. Peers being served are sent what is new.
    pub fn flush(&mut self, now: Instant) -> Revision {
        let r = self.rep.flush(now);
        if r > self.published {
            self.published = r;
            self.serving.handle_commit(now, &Serving(&self.rep));
            self.refresh_directory(now);
        }
        self.pump(now);
        r
    }

    /// Time passed: reconnects, heartbeats, stall checks, and heartbeats to peers served.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rep.handle_timeout(now);
        self.serving.handle_timeout(now, &Serving(&self.rep));
        self.pump(now);
    }

    /// The next thing for the shell to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`EdgeNode::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.rep.poll_timeout(), self.serving.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_id(&mut self) -> ConnId {
        let id = self.next_conn;
        self.next_conn = id.next();
        id
    }

    fn close(&mut self, conn: ConnId, reason: &'static str) {
        self.roles.remove(&conn);
        self.actions.push_back(Action::Close { conn, reason });
    }

    /// Turns what the replicator and the distributor want into actions on connections.
    fn pump(&mut self, now: Instant) {
        while let Some(out) = self.rep.poll_output() {
            match out {
                Output::Connect { link, upstream } => self.dial(now, link, upstream),
                Output::Disconnect { link } => {
                    let (current, dials) = self.links.remove(&link).unwrap_or_default();
                    for conn in current.into_iter().chain(dials) {
                        self.close(conn, "reconnecting");
                    }
                }
                Output::AbandonDials { link } => {
                    let dials = self
                        .links
                        .get_mut(&link)
                        .map(|(_, d)| std::mem::take(d))
                        .unwrap_or_default();
                    for conn in dials {
                        self.close(conn, "abandoned");
                    }
                }
                Output::Send { link, frame } => {
                    if let Some(conn) = self.link_upstream(link) {
                        self.actions.push_back(Action::Send { conn, frame });
                    }
                }
            }
        }
        while let Some((conn, t)) = self.serving.poll_transmit() {
            let action = match t {
                Transmit::Control(frame) => Action::Send { conn, frame },
                Transmit::Stream(frames) => {
                    let priority = crate::distributor::stream_priority(&frames);
                    Action::Stream {
                        conn,
                        frames,
                        priority,
                    }
                }
            };
            self.actions.push_back(action);
        }
    }

    fn dial(&mut self, now: Instant, link: LinkId, upstream: UpstreamId) {
        let Some(to) = self.upstream(upstream) else {
            self.rep.handle_disconnected(now, link);
            return;
        };
        let conn = self.next_id();
        let (_, dials) = self.links.entry(link).or_default();
        dials.push(conn);
        let excess: Vec<ConnId> = if dials.len() > MAX_DIALS_PER_LINK {
            dials.drain(..dials.len() - MAX_DIALS_PER_LINK).collect()
        } else {
            Vec::new()
        };
        for old in excess {
            self.close(old, "superseded");
        }
        self.roles.insert(conn, Role::Dialing { link });
        self.actions.push_back(Action::Dial { conn, to });
    }
}

/// What an edge serves its peers: its own signed state, and the newest head it has heard of.
struct Serving<'a, B: Backend>(&'a Replicator<B>);

impl<B: Backend> ChangeSource for Serving<'_, B> {
    fn head(&self) -> Option<SignedHead> {
        self.0.state().head()
    }
    fn deltas_after(
        &self,
        after: Revision,
        max: usize,
    ) -> Result<Option<Vec<SignedDelta>>, StoreError> {
        self.0.state().deltas_after(after, max)
    }
    fn snapshot(&self) -> (Option<SignedHead>, Vec<(Address, EntryState)>) {
        self.0.state().snapshot()
    }
    fn newest_head(&self) -> Option<SignedHead> {
        self.0.newest_head().or_else(|| self.head())
    }
    fn staleness_ms(&self, now: Instant) -> Option<u64> {
        Some(self.0.staleness(now).as_millis().min(u64::MAX as u128) as u64)
    }
}
