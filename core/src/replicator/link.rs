//! The lifecycle of a link: idle, dialing (up to two dials at once), settling, connected; what
//! each upstream link remembers, reset in one place when it ends or is moved; and the peer
//! links' interleaved rotation.

use std::time::{Duration, Instant};

use meridian_protocol::{FrameV1, Revision};
use meridian_store::Backend;

use super::{LinkId, Output, Replicator, ReplicatorConfig, SnapshotAssembly, UpstreamId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkState {
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
pub(super) struct Link {
    pub(super) state: LinkState,
    /// The upstreams this link rotates through: `family(0..count)`.
    pub(super) family: fn(usize) -> UpstreamId,
    pub(super) count: usize,
    pub(super) attempts: u64,
    pub(super) backoff_ms: u64,
    pub(super) next_heartbeat: Option<Instant>,
    pub(super) acked: Revision,
    pub(super) snapshot: Option<SnapshotAssembly>,
    pub(super) connected_at: Option<Instant>,
    pub(super) got_frame: bool,
    /// This link told its upstream `Standby` (heads only) and has not sent `Need` since.
    pub(super) standby: bool,
    /// Rotation: this link dials upstream `family((offset + stride * attempts) % count)`.
    pub(super) offset: u64,
    pub(super) stride: u64,
    /// A peer's last freshness report: its staleness, when it arrived, what it holds.
    pub(super) reported: Option<(Duration, Instant, Revision)>,
    /// When this link last delivered a verified delta.
    pub(super) delivered: Option<Instant>,
    /// The upstreams of the link's two latest dials (the shell keeps two running), latest
    /// first; its connection, once connected, is to one of them.
    pub(super) upstreams: [Option<UpstreamId>; 2],
    /// When a fresh dial was started beside this link's connection because the connection
    /// had not answered within the connect timeout.
    pub(super) probe: Option<Instant>,
}

impl Link {
    /// A link rotating through upstreams `family(0..count)`, starting at `offset` and
    /// stepping by `stride`, idle until `now`.
    pub(super) fn new(
        now: Instant,
        acked: Revision,
        backoff_ms: u64,
        rotation: (fn(usize) -> UpstreamId, usize, u64, u64),
    ) -> Self {
        let (family, count, offset, stride) = rotation;
        Self {
            state: LinkState::Idle { retry_at: now },
            family,
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

    /// The link's connection ended or was given up: idle until `retry_at`, with `backoff_ms`
    /// for the next failure. Everything that belonged to the connection is reset here, and
    /// only here: what the last upstream reported or delivered says nothing about the next.
    pub(super) fn go_idle(&mut self, retry_at: Instant, backoff_ms: u64) {
        self.state = LinkState::Idle { retry_at };
        self.backoff_ms = backoff_ms;
        self.snapshot = None;
        self.next_heartbeat = None;
        self.connected_at = None;
        self.standby = false;
        self.reported = None;
        self.delivered = None;
        self.probe = None;
    }

    /// The upstream this link dials next, advancing its rotation past the upstreams in `busy`
    /// (those other links are on) unless every one is busy.
    pub(super) fn next_upstream(&mut self, busy: &[UpstreamId]) -> UpstreamId {
        let count = self.count.max(1) as u64;
        let mut candidate = (self.family)(0);
        for _ in 0..count {
            let i = (self.offset + self.stride * self.attempts) % count;
            self.attempts += 1;
            candidate = (self.family)(i as usize);
            if !busy.contains(&candidate) {
                break;
            }
        }
        candidate
    }

    pub(super) fn is_active(&self) -> bool {
        !matches!(self.state, LinkState::Idle { .. })
    }

    /// The upstreams this link is connected to or dialing.
    pub(super) fn on(&self) -> impl Iterator<Item = UpstreamId> + '_ {
        self.upstreams
            .iter()
            .flatten()
            .copied()
            .filter(|_| self.is_active())
    }

    /// Starts a dial of `upstream` beside the latest one, if the link is dialing.
    pub(super) fn start_dial(&mut self, now: Instant, upstream: UpstreamId) {
        let previous = match self.state {
            LinkState::Connecting { .. } => self.upstreams[0],
            _ => None,
        };
        self.upstreams = [Some(upstream), previous];
        self.state = LinkState::Connecting { since: now };
    }
}

/// A replicator's links, named by [`LinkId`]: the origin link, then the peer links.
#[derive(Debug)]
pub(super) struct Links(Vec<Link>);

impl Links {
    /// The origin link and the peer links for `config`.
    pub(super) fn new(config: &ReplicatorConfig, now: Instant, acked: Revision) -> Self {
        let backoff_ms = config.reconnect_backoff_min_ms.max(1);
        let origin = Link::new(
            now,
            acked,
            backoff_ms,
            (UpstreamId::Origin, config.origin_count.max(1), 0, 1),
        );
        let mut links = Links(vec![origin]);
        links.set_peers(config, now, acked);
        links
    }

    /// Replaces the peer links with fresh ones for `config`: they interleave over the peers
    /// (link `j` starts at peer `j` and steps by the number of links).
    pub(super) fn set_peers(&mut self, config: &ReplicatorConfig, now: Instant, acked: Revision) {
        self.0.truncate(1);
        if config.peer_count == 0 {
            return;
        }
        let backoff_ms = config.reconnect_backoff_min_ms.max(1);
        let peer_links = config.peer_links.clamp(1, config.peer_count) as u64;
        for j in 0..peer_links {
            let rotation = (
                UpstreamId::Peer as fn(usize) -> UpstreamId,
                config.peer_count,
                j,
                peer_links,
            );
            self.0.push(Link::new(now, acked, backoff_ms, rotation));
        }
    }

    pub(super) fn get(&self, link: LinkId) -> Option<&Link> {
        self.0.get(link.index())
    }

    pub(super) fn get_mut(&mut self, link: LinkId) -> Option<&mut Link> {
        self.0.get_mut(link.index())
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Every link's id, the origin link first.
    pub(super) fn ids(&self) -> impl Iterator<Item = LinkId> + use<> {
        (0..self.0.len()).map(LinkId::from_index)
    }

    /// The peer links' ids.
    pub(super) fn peer_ids(&self) -> impl Iterator<Item = LinkId> + use<> {
        (1..self.0.len()).map(LinkId::from_index)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (LinkId, &Link)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, l)| (LinkId::from_index(i), l))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (LinkId, &mut Link)> {
        self.0
            .iter_mut()
            .enumerate()
            .map(|(i, l)| (LinkId::from_index(i), l))
    }

    /// The peer links.
    pub(super) fn peers(&self) -> impl Iterator<Item = (LinkId, &Link)> {
        self.iter().skip(1)
    }
}

impl std::ops::Index<LinkId> for Links {
    type Output = Link;
    fn index(&self, link: LinkId) -> &Link {
        &self.0[link.index()]
    }
}

impl std::ops::IndexMut<LinkId> for Links {
    fn index_mut(&mut self, link: LinkId) -> &mut Link {
        &mut self.0[link.index()]
    }
}

impl<B: Backend> Replicator<B> {
    /// The peers changed (the directory of edges did): the peer links now rotate through
    /// `peer_count` peers. Every peer link is closed and starts over on the new list, since
    /// peer numbers may now name other peers; the origin link is left alone.
    pub fn handle_peers(&mut self, now: Instant, peer_count: usize) {
        for (link, l) in self.links.peers() {
            if l.is_active() {
                self.out.push_back(Output::Disconnect { link });
            }
        }
        self.config.peer_count = peer_count;
        self.offer = None;
        let revision = self.state.revision();
        self.links.set_peers(&self.config, now, revision);
    }

    /// The shell finished dialing link `link`: the link says `Hello` after the hello delay.
    pub fn handle_connected(&mut self, now: Instant, link: LinkId) {
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
    pub(super) fn say_hello(&mut self, now: Instant, link: LinkId) {
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
        if link == LinkId::ORIGIN {
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
        if link.is_peer() && self.origin_delivering(now) {
            self.set_standby(link, true, revision);
        }
    }

    /// Tells the peer on `link` to keep the link warm (heads only) or to deliver from
    /// `revision` on; sends nothing when the peer already knows.
    pub(super) fn set_standby(&mut self, link: LinkId, standby: bool, revision: Revision) {
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
    pub fn handle_disconnected(&mut self, now: Instant, link: LinkId) {
        let max = self.config.reconnect_backoff_max_ms.max(1);
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        let retry_at = now + Duration::from_millis(l.backoff_ms);
        l.go_idle(retry_at, (l.backoff_ms * 2).min(max));
    }

    /// Closes a peer link if it is up or dialing, and readies it to dial its next peer at
    /// once.
    pub(super) fn release_peer_link(&mut self, now: Instant, link: LinkId) {
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
        l.go_idle(now, min_backoff);
    }

    /// Bytes on some stream of link `link` did not form a valid frame.
    pub fn handle_malformed(&mut self, _now: Instant, _link: LinkId) {
        self.stats.rejected_malformed += 1;
    }
}
