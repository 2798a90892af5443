//! The replicator's timers: every deadline it keeps, named, and what happens when one passes.

use std::time::{Duration, Instant};

use meridian_protocol::FrameV1;
use meridian_store::Backend;

use super::{LinkId, LinkState, Output, Replicator};

/// A deadline the replicator keeps. Each is derived from the state it belongs to (a link's
/// state carries its own), so a transition that resets the state resets its timers with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// An idle link dials again (after its backoff).
    Redial {
        /// Which link.
        link: LinkId,
    },
    /// A link whose handshake completed says its `Hello`.
    Hello {
        /// Which link.
        link: LinkId,
    },
    /// A dial that has not completed gets another beside it.
    ConnectTimeout {
        /// Which link.
        link: LinkId,
    },
    /// A connected link that heard nothing for this long is dropped.
    Silence {
        /// Which link.
        link: LinkId,
    },
    /// A connected link sends its heartbeat (and, to the origin, its report).
    Heartbeat {
        /// Which link.
        link: LinkId,
    },
    /// An origin connection that never answered gets a fresh dial beside it.
    Probe,
    /// A delivering origin link has been quiet long enough to wake the standby peer links.
    OriginQuiet,
    /// A newer head is known and nothing arrived: ask every upstream again.
    Stall,
}

impl<B: Backend> Replicator<B> {
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
        for link in self.links.peer_ids() {
            self.set_standby(link, delivering, revision);
        }
        // A peer that has itself lost the origin can only relay stale data: move on, but only
        // once it has nothing newer to give. A relay that is still delivering is kept whatever
        // it reports: its reports trail its deltas, and staleness adds up along a chain of
        // relays and under latency spikes.
        let held = self.state.revision();
        let limit = Duration::from_millis(self.config.peer_staleness_limit_ms);
        for link in self.links.peer_ids() {
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
        for i in self.links.ids() {
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
                        >= if i == LinkId::ORIGIN {
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
                    if i == LinkId::ORIGIN
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
                        if i == LinkId::ORIGIN {
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
            for (i, l) in self.links.iter_mut() {
                if matches!(l.state, LinkState::Connected { .. }) {
                    l.snapshot = None;
                    l.standby = false;
                    if i == LinkId::ORIGIN {
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

    /// When [`Replicator::handle_timeout`] is due next: the earliest of [`Replicator::timers`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().into_iter().map(|(_, at)| at).min()
    }

    /// Every deadline the replicator keeps, named (quinn-proto keeps such a table): what
    /// [`Replicator::poll_timeout`] takes the earliest of, and what a status page can show.
    pub fn timers(&self) -> Vec<(Timer, Instant)> {
        let silence = Duration::from_millis(self.config.silence_timeout_ms);
        let connect = |link: LinkId| {
            Duration::from_millis(if link == LinkId::ORIGIN {
                self.config.connect_timeout_ms.max(1)
            } else {
                self.config.peer_connect_timeout_ms.max(1)
            })
        };
        let mut out = Vec::new();
        let mut any_connected = false;
        for (link, l) in self.links.iter() {
            match l.state {
                LinkState::Idle { retry_at } => out.push((Timer::Redial { link }, retry_at)),
                LinkState::Settling { until } => out.push((Timer::Hello { link }, until)),
                LinkState::Connecting { since } => {
                    out.push((Timer::ConnectTimeout { link }, since + connect(link)))
                }
                LinkState::Connected { last_frame } => {
                    any_connected = true;
                    // Until the first frame arrives, allow for a lost Hello being resent.
                    let limit = if l.got_frame { silence } else { silence * 2 };
                    out.push((Timer::Silence { link }, last_frame + limit));
                    if link == LinkId::ORIGIN
                        && !l.got_frame
                        && l.probe.is_none()
                        && let Some(at) = l.connected_at
                    {
                        out.push((Timer::Probe, at + connect(link)));
                    }
                    if let Some(h) = l.next_heartbeat {
                        out.push((Timer::Heartbeat { link }, h));
                    }
                }
            }
        }
        // The moment a delivering origin link turns quiet, the standby peer links wake.
        if self.links.peers().any(|(_, l)| l.standby)
            && let Some(quiet_at) = self.origin_quiet_at()
        {
            out.push((Timer::OriginQuiet, quiet_at));
        }
        if any_connected && self.newest_known > self.state.revision() {
            let quiet_since = self.last_progress.max(self.last_delta);
            let stall = Duration::from_millis(self.config.stall_timeout_ms);
            out.push((Timer::Stall, quiet_since + stall));
        }
        out
    }
}
