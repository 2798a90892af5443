//! The apply pipeline: verify a delta or head, note what it says about freshness, apply
//! deltas strictly in order (buffering a bounded number that arrive early), count refusals.

use std::time::Instant;

use meridian_protocol::{SignedDelta, SignedHead, VerifyError};
use meridian_store::{Backend, StoreError};

use super::{LinkId, Replicator};

impl<B: Backend> Replicator<B> {
    /// Until when link `link`'s upstream knew the newest head: now for an origin; for a peer,
    /// the moment its last freshness report says it last heard the origin (`None` before its
    /// first report). Confirmations relayed by peers thus age as the peers' own knowledge does:
    /// edges that have all lost the origin do not keep one another fresh.
    pub(super) fn known_as_of(&self, now: Instant, link: LinkId) -> Option<Instant> {
        if link == LinkId::ORIGIN {
            return Some(now);
        }
        let (staleness, at, _) = self.links.get(link)?.reported?;
        at.checked_sub(staleness)
    }

    pub(super) fn heard(&mut self, now: Instant, link: LinkId, head: &SignedHead) {
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

    pub(super) fn update_behind(&mut self, now: Instant) {
        if self.newest_known > self.state.revision() {
            self.behind_since.get_or_insert(now);
        } else {
            self.behind_since = None;
        }
    }

    pub(super) fn count_verify_error(&mut self, e: &VerifyError) {
        match e {
            VerifyError::UnknownKey(_) => self.stats.rejected_unknown_key += 1,
            VerifyError::BadSignature(_) => self.stats.rejected_bad_signature += 1,
            VerifyError::DeltaMismatch(_) | VerifyError::RevisionMismatch { .. } => {
                self.stats.rejected_delta_mismatch += 1
            }
        }
    }

    pub(super) fn verify_head(&mut self, head: &SignedHead) -> bool {
        match self.trusted.verify_head(head) {
            Ok(()) => true,
            Err(e) => {
                self.count_verify_error(&e);
                false
            }
        }
    }

    pub(super) fn on_delta(&mut self, now: Instant, link: LinkId, delta: SignedDelta) {
        if let Err(e) = self.trusted.verify_delta(&delta) {
            self.count_verify_error(&e);
            return;
        }
        self.heard(now, link, &delta.head);
        self.last_delta = now;
        if link == LinkId::ORIGIN {
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

    pub(super) fn apply(&mut self, now: Instant, delta: &SignedDelta) {
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

    pub(super) fn drain_pending(&mut self, now: Instant) {
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
}
