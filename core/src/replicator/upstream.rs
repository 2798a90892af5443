//! Upstream selection: which upstream a link dials next, when the origin link counts as
//! delivering, and acting on offers from peers that dialed this edge holding more.

use std::time::{Duration, Instant};

use meridian_protocol::Revision;
use meridian_store::Backend;

use super::{Link, LinkId, LinkState, Output, Replicator, UpstreamId};

/// A peer that dialed this edge said it holds `holds`, newer than what the edge has.
#[derive(Debug, Clone, Copy)]
pub(super) struct Offer {
    pub(super) upstream: UpstreamId,
    pub(super) holds: Revision,
    pub(super) at: Instant,
}

impl<B: Backend> Replicator<B> {
    /// Whether the origin link is up, has answered since it connected, is not suspected of
    /// having stopped delivering, and has brought a verified head or delta within the origin
    /// quiet time. A freshly connected origin may take several round trips to answer (after a
    /// partition every edge reconnects at once), and peers keep delivering until it does.
    pub(super) fn origin_delivering(&self, now: Instant) -> bool {
        self.link_connected(LinkId::ORIGIN)
            && self.links.get(LinkId::ORIGIN).is_some_and(|l| l.got_frame)
            && !self.origin_suspect
            && self
                .origin_quiet_at()
                .is_some_and(|quiet_at| now < quiet_at)
    }

    /// When the origin link counts as quiet unless a verified head or delta arrives first: the
    /// origin quiet time after the later of the last one and the link's connection.
    pub(super) fn origin_quiet_at(&self) -> Option<Instant> {
        let connected_at = self.links.get(LinkId::ORIGIN)?.connected_at?;
        let since = self
            .origin_heard
            .map_or(connected_at, |h| h.max(connected_at));
        Some(since + Duration::from_millis(self.config.origin_quiet_ms.max(1)))
    }

    /// Dials link `link`'s next upstream; a peer link skips peers another peer link is on.
    pub(super) fn dial(&mut self, now: Instant, link: LinkId) {
        let busy: Vec<UpstreamId> = if link.is_peer() {
            self.links
                .peers()
                .filter(|&(other, _)| other != link)
                .flat_map(|(_, l)| l.on())
                .collect()
        } else {
            Vec::new()
        };
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        let upstream = l.next_upstream(&busy);
        l.start_dial(now, upstream);
        self.out.push_back(Output::Connect { link, upstream });
    }

    /// A peer that connected to this edge (to be served by it) says it holds `holds`, in its
    /// `Hello` or a heartbeat. When that is newer than what this edge has, and the origin link
    /// is not delivering, a peer link that is searching or idle goes to that peer directly:
    /// inside a region cut off from everything, the edges that still got the newest revisions
    /// announce themselves this way as they search, and the others need not find them by
    /// rotation. `upstream` is the peer as the shell would dial it.
    pub fn handle_peer_holds(&mut self, now: Instant, upstream: UpstreamId, holds: Revision) {
        if self.links.peer_ids().next().is_none()
            || !matches!(upstream, UpstreamId::Peer(_))
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
    pub(super) fn take_offer(&mut self, now: Instant) {
        let Some(offer) = self.offer else {
            return;
        };
        let held = self.state.revision();
        let limit = Duration::from_millis(self.config.peer_staleness_limit_ms);
        if offer.holds <= held
            || now.saturating_duration_since(offer.at) > limit
            || self.origin_delivering(now)
            || self
                .links
                .peers()
                .any(|(_, l)| l.on().any(|u| u == offer.upstream))
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
        let pick = self
            .links
            .peer_ids()
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
}
