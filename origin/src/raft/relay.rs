//! Signed heads passed from the leader to the followers, so that each revision is signed once
//! in the cluster instead of once per node.
//!
//! Every node applies every committed entry and needs each revision's signed head (it serves
//! edges). Ed25519 is deterministic, so a follower's signature would equal the leader's; the
//! leader, which applies an entry first, offers the heads it signed to each follower with its
//! next AppendEntries RPC, and a follower applying that entry takes a signature whose head
//! equals the one it computed itself (see [`meridian_protocol::Signer::sign_delta_reusing`])
//! and signs only what it was not offered. Nothing depends on the offer arriving: a follower
//! waits for it at most [`OFFER_WAIT`] and only while offers are flowing, then signs itself.
//!
//! [`Relay`] holds the decisions and the bounded buffers, with the time passed in;
//! [`SharedRelay`] is the shell the state machine, the RPC client and the RPC route share.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_protocol::SignedHead;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::NodeId;

/// Signed heads kept to offer, and kept as offered, at most (each is about 170 bytes).
pub const MAX_KEPT_HEADS: usize = 65_536;

/// Signed heads sent in one RPC at most; older ones are left to the follower to sign.
pub const MAX_HEADS_PER_RPC: usize = 4_096;

/// How long a follower holds back applying an entry whose heads have not been offered yet.
pub const OFFER_WAIT: Duration = Duration::from_millis(10);

/// A follower waits for offers only if the last one came within this: a leader that offers
/// nothing (it just took over, or it runs a build that does not offer) costs no waiting.
pub const OFFERS_FLOWING: Duration = Duration::from_secs(1);

/// The heads a node produced applying the entry at a log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The entry's log index.
    pub index: u64,
    /// Its revisions' signed heads, in order (none when it made no revision).
    pub heads: Vec<SignedHead>,
}

/// The relay's state: what this node applied, to offer, and what it was offered.
#[derive(Debug, Default)]
pub struct Relay {
    /// Entries this node applied, oldest first, with strictly increasing indexes.
    applied: VecDeque<Offer>,
    applied_heads: usize,
    /// The highest index offered to each peer.
    sent: BTreeMap<NodeId, u64>,
    /// Offers received, by index.
    offered: BTreeMap<u64, Vec<SignedHead>>,
    offered_heads: usize,
    /// The highest index ever offered to this node, and when the last offer came.
    highest_offered: u64,
    last_offer_at: Option<Instant>,
}

impl Relay {
    /// Records the heads this node produced applying the entry at `index`. An index at or below
    /// one recorded before (the log was applied again from a snapshot) drops the later ones.
    pub fn applied(&mut self, index: u64, heads: Vec<SignedHead>) {
        while self.applied.back().is_some_and(|o| o.index >= index) {
            if let Some(o) = self.applied.pop_back() {
                self.applied_heads -= o.heads.len();
            }
        }
        self.applied_heads += heads.len();
        self.applied.push_back(Offer { index, heads });
        while self.applied_heads > MAX_KEPT_HEADS {
            match self.applied.pop_front() {
                Some(o) => self.applied_heads -= o.heads.len(),
                None => break,
            }
        }
    }

    /// What to offer `peer` with the next RPC: the entries applied since the last offer to it,
    /// newest [`MAX_HEADS_PER_RPC`] heads at most, oldest first.
    pub fn to_offer(&mut self, peer: NodeId) -> Vec<Offer> {
        let after = self.sent.get(&peer).copied().unwrap_or(0);
        let mut out = Vec::new();
        let mut heads = 0;
        for o in self.applied.iter().rev() {
            if o.index <= after || heads + o.heads.len() > MAX_HEADS_PER_RPC {
                break;
            }
            heads += o.heads.len();
            out.push(o.clone());
        }
        out.reverse();
        if let Some(last) = out.last() {
            self.sent.insert(peer, last.index);
        }
        out
    }

    /// Takes offers from the leader, received at `now`.
    pub fn offered(&mut self, offers: Vec<Offer>, now: Instant) {
        if offers.is_empty() {
            return;
        }
        self.last_offer_at = Some(now);
        for o in offers {
            self.highest_offered = self.highest_offered.max(o.index);
            self.offered_heads += o.heads.len();
            if let Some(old) = self.offered.insert(o.index, o.heads) {
                self.offered_heads -= old.len();
            }
        }
        while self.offered_heads > MAX_KEPT_HEADS {
            match self.offered.pop_first() {
                Some((_, heads)) => self.offered_heads -= heads.len(),
                None => break,
            }
        }
    }

    /// The heads offered for the entry at `index` (none if none were), dropping those for
    /// earlier entries: entries are applied in order.
    pub fn take(&mut self, index: u64) -> Vec<SignedHead> {
        let later = self.offered.split_off(&index);
        let dropped = std::mem::replace(&mut self.offered, later);
        self.offered_heads -= dropped.values().map(Vec::len).sum::<usize>();
        let heads = self.offered.remove(&index).unwrap_or_default();
        self.offered_heads -= heads.len();
        heads
    }

    /// Whether a follower about to apply entries up to `index` at `now` should wait for the
    /// leader's offer of them: offers are flowing and the leader has not offered this far yet.
    pub fn should_wait(&self, index: u64, now: Instant) -> bool {
        index > self.highest_offered
            && self
                .last_offer_at
                .is_some_and(|at| now.saturating_duration_since(at) < OFFERS_FLOWING)
    }

    /// The highest index offered so far.
    pub fn highest_offered(&self) -> u64 {
        self.highest_offered
    }
}

/// The relay shared by a node's state machine, its RPC client and its RPC route.
#[derive(Debug)]
pub struct SharedRelay {
    relay: Mutex<Relay>,
    highest: watch::Sender<u64>,
    leader: AtomicBool,
}

impl Default for SharedRelay {
    fn default() -> Self {
        Self {
            relay: Mutex::new(Relay::default()),
            highest: watch::channel(0).0,
            leader: AtomicBool::new(false),
        }
    }
}

impl SharedRelay {
    /// A relay with nothing applied or offered.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Relay> {
        self.relay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Says whether this node leads (a leader is offered nothing and never waits).
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// See [`Relay::applied`]; kept only while this node leads (only a leader offers).
    pub fn applied(&self, index: u64, heads: Vec<SignedHead>) {
        if self.leader.load(Ordering::Relaxed) {
            self.lock().applied(index, heads);
        }
    }

    /// See [`Relay::to_offer`].
    pub fn to_offer(&self, peer: NodeId) -> Vec<Offer> {
        self.lock().to_offer(peer)
    }

    /// See [`Relay::offered`]; wakes a state machine waiting for these.
    pub fn offered(&self, offers: Vec<Offer>) {
        let highest = {
            let mut r = self.lock();
            r.offered(offers, Instant::now());
            r.highest_offered()
        };
        self.highest.send_if_modified(|h| {
            let changed = *h != highest;
            *h = highest;
            changed
        });
    }

    /// See [`Relay::take`].
    pub fn take(&self, index: u64) -> Vec<SignedHead> {
        self.lock().take(index)
    }

    /// Waits, at most [`OFFER_WAIT`], until the leader has offered the heads of the entries up
    /// to `index`, if this node follows and offers are flowing (see [`Relay::should_wait`]).
    pub async fn wait_for(&self, index: u64) {
        if self.leader.load(Ordering::Relaxed) || !self.lock().should_wait(index, Instant::now()) {
            return;
        }
        let mut rx = self.highest.subscribe();
        let waited = tokio::time::timeout(OFFER_WAIT, rx.wait_for(|h| *h >= index)).await;
        let outcome = if waited.is_ok() {
            "offered"
        } else {
            "timed_out"
        };
        metrics::counter!("meridian_origin_head_offer_waits_total", "outcome" => outcome)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use meridian_protocol::{Delta, Digest, Revision, Signer};

    use super::*;

    fn heads(from: u64, n: u64) -> Vec<SignedHead> {
        let signer = Signer::from_bytes(&[5; 32]);
        (from..from + n)
            .map(|r| {
                signer
                    .sign_delta(
                        Delta {
                            revision: Revision(r),
                            changes: Vec::new(),
                        },
                        Digest::default(),
                    )
                    .head
            })
            .collect()
    }

    #[test]
    fn each_peer_is_offered_each_applied_entry_once_in_order() {
        let mut r = Relay::default();
        r.applied(1, heads(1, 2));
        r.applied(2, Vec::new());
        let first = r.to_offer(7);
        assert_eq!(
            first.iter().map(|o| o.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(first[0].heads, heads(1, 2));
        assert!(r.to_offer(7).is_empty(), "nothing new for peer 7");
        r.applied(3, heads(3, 1));
        assert_eq!(
            r.to_offer(7).iter().map(|o| o.index).collect::<Vec<_>>(),
            vec![3]
        );
        // Another peer gets everything still kept.
        assert_eq!(r.to_offer(8).len(), 3);
    }

    #[test]
    fn buffers_are_bounded_and_an_rpc_carries_the_newest_heads() {
        let mut r = Relay::default();
        let per_entry = 1_000;
        for i in 1..=100 {
            r.applied(i, heads(i * per_entry, 1).repeat(per_entry as usize));
        }
        assert!(r.applied_heads <= MAX_KEPT_HEADS);
        let offer = r.to_offer(1);
        let sent: usize = offer.iter().map(|o| o.heads.len()).sum();
        assert!(sent <= MAX_HEADS_PER_RPC);
        assert_eq!(offer.last().map(|o| o.index), Some(100));

        let now = Instant::now();
        let mut f = Relay::default();
        for i in 1..=100 {
            f.offered(
                vec![Offer {
                    index: i,
                    heads: heads(i, 1).repeat(per_entry as usize),
                }],
                now,
            );
        }
        assert!(f.offered_heads <= MAX_KEPT_HEADS);
        assert_eq!(f.highest_offered(), 100);
    }

    #[test]
    fn taking_an_entry_drops_earlier_offers_and_applying_again_replaces_later_entries() {
        let now = Instant::now();
        let mut r = Relay::default();
        r.offered(
            vec![
                Offer {
                    index: 4,
                    heads: heads(10, 2),
                },
                Offer {
                    index: 5,
                    heads: heads(12, 1),
                },
                Offer {
                    index: 6,
                    heads: heads(13, 1),
                },
            ],
            now,
        );
        assert_eq!(r.take(5), heads(12, 1));
        assert_eq!(r.offered_heads, 1, "index 4 is dropped with 5");
        assert!(r.take(5).is_empty());
        assert_eq!(r.take(6), heads(13, 1));
        assert_eq!(r.offered_heads, 0);

        r.applied(1, heads(1, 1));
        r.applied(2, heads(2, 1));
        r.applied(2, heads(2, 1));
        r.applied(1, heads(1, 1));
        assert_eq!(r.applied.len(), 1);
        assert_eq!(r.applied_heads, 1);
    }

    #[test]
    fn a_follower_waits_only_while_offers_flow_and_only_for_what_is_not_offered_yet() {
        let start = Instant::now();
        let mut r = Relay::default();
        assert!(!r.should_wait(1, start), "never offered anything");
        r.offered(
            vec![Offer {
                index: 10,
                heads: Vec::new(),
            }],
            start,
        );
        assert!(!r.should_wait(10, start), "already offered");
        assert!(r.should_wait(11, start));
        assert!(!r.should_wait(11, start + OFFERS_FLOWING), "offers stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_the_offer_or_after_the_bound() {
        let relay = SharedRelay::new();
        relay.offered(vec![Offer {
            index: 1,
            heads: Vec::new(),
        }]);
        // No offer for 2 comes: the wait ends after OFFER_WAIT (virtual time).
        let started = tokio::time::Instant::now();
        relay.wait_for(2).await;
        assert!(started.elapsed() >= OFFER_WAIT);

        // An offer for 3 arriving meanwhile ends the wait before the bound.
        let r2 = relay.clone();
        let waiter = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            r2.wait_for(3).await;
            started.elapsed()
        });
        tokio::task::yield_now().await;
        relay.offered(vec![Offer {
            index: 3,
            heads: Vec::new(),
        }]);
        let waited = waiter.await.expect("waiter");
        assert!(waited < OFFER_WAIT, "woken by the offer, waited {waited:?}");

        // A leader never waits.
        relay.set_leader(true);
        let started = tokio::time::Instant::now();
        relay.wait_for(100).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
