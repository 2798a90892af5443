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
//! shell and the simulator drive it identically (through `crate::edge_node`).
//!
//! By concern: `link` (a link's lifecycle and what it remembers, reset in one place),
//! `upstream` (which upstream a link dials, offers from peers), `apply` (verify, then apply in
//! order), `snapshot` (bounded assembly), `timers` (the named deadlines and what each does),
//! `config`; this file holds the state, the frame dispatch and publishing.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use meridian_protocol::{Digest, Frame, FrameV1, Revision, SignedDelta, SignedHead, TrustedKeys};
use meridian_store::{Backend, SignedState};

mod apply;
mod config;
mod ids;
mod link;
mod snapshot;
#[cfg(test)]
mod tests;
mod timers;
mod upstream;

pub use config::ReplicatorConfig;
pub use ids::{LinkId, UpstreamId};
pub use timers::Timer;

use link::{Link, LinkState, Links};
use snapshot::SnapshotAssembly;
use upstream::Offer;

/// What the replicator asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Dial `upstream` for link `link`. If the link is already dialing, the
    /// earlier dial keeps going: the first to complete becomes the link's connection and the
    /// shell closes the others (a handshake slowed by loss or a latency spike is not thrown
    /// away just as it is about to finish). The shell keeps at most the two most recent dials
    /// of a link: a third closes the oldest. If the link is connected, the connection stays
    /// up beside the dial until the dial completes and replaces it (see
    /// [`Output::AbandonDials`]); to move a connected link, the replicator sends
    /// [`Output::Disconnect`] first.
    Connect {
        /// Which link.
        link: LinkId,
        /// Which upstream.
        upstream: UpstreamId,
    },
    /// Close link `link`'s connection and abandon every dial in progress for it.
    Disconnect {
        /// Which link.
        link: LinkId,
    },
    /// Abandon the dials in progress for link `link` and keep its connection: the
    /// connection answered after all.
    AbandonDials {
        /// Which link.
        link: LinkId,
    },
    /// Send a frame on link `link`'s control stream.
    Send {
        /// Which link.
        link: LinkId,
        /// What to send.
        frame: Frame,
    },
}

/// One link as the replicator sees it (for status pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// Which link.
    pub link: LinkId,
    /// `idle`, `connecting`, `settling` or `connected`.
    pub state: &'static str,
    /// The upstream it is on or dialing (its latest dial).
    pub upstream: Option<UpstreamId>,
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

/// The sans-IO replicator over a signed state in backend `B`.
pub struct Replicator<B: Backend> {
    config: ReplicatorConfig,
    trusted: TrustedKeys,
    state: SignedState<B>,
    links: Links,
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
        let links = Links::new(&config, now, revision);
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
            for (_, l) in self.links.iter_mut() {
                l.snapshot = None;
            }
            return;
        }
        self.last_progress = now;
        let from = self.state.revision();
        for (link, l) in self.links.iter_mut() {
            if matches!(l.state, LinkState::Connected { .. }) {
                l.standby = false;
                let frame = FrameV1::Need { from }.into();
                self.out.push_back(Output::Send { link, frame });
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
        self.link_connected(LinkId::ORIGIN)
    }

    /// Every link, for status pages.
    pub fn links(&self) -> Vec<LinkView> {
        self.links
            .iter()
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

    /// Whether link `link` is up.
    pub fn link_connected(&self, link: LinkId) -> bool {
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
            .filter_map(|(_, l)| l.reported)
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

    pub(super) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_interval_ms.max(1))
    }

    /// A frame arrived on link `link`.
    pub fn handle_frame(&mut self, now: Instant, link: LinkId, frame: Frame) {
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
                    if link == LinkId::ORIGIN {
                        self.origin_heard = Some(now);
                    }
                }
            }
            FrameV1::Freshness {
                staleness_ms,
                holds,
            } => {
                if link.is_peer() {
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
                self.on_snapshot_begin(now, link, head, entries)
            }
            FrameV1::SnapshotChunk { seq, entries } => {
                self.on_snapshot_chunk(now, link, seq, entries)
            }
            FrameV1::SnapshotEnd { chunks } => self.on_snapshot_end(now, link, chunks),
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
            | FrameV1::PeerAddress { .. }
            | FrameV1::Applied { .. } => {
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
        for (link, l) in self.links.iter_mut() {
            // A standby upstream pushes nothing, so there is nothing to acknowledge to it; the
            // `Need` that wakes it says where to start.
            if revision > l.acked && !l.standby && matches!(l.state, LinkState::Connected { .. }) {
                l.acked = revision;
                self.out.push_back(Output::Send {
                    link,
                    frame: FrameV1::Ack { revision }.into(),
                });
            }
        }
        self.update_behind(now);
        revision
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
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
