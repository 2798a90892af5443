//! Snapshot assembly: a chunked, signed snapshot gathered per link, bounded in entries and
//! bytes, installed whole or not at all.

use std::time::Instant;

use meridian_protocol::{Address, EntryState, SignedHead};
use meridian_store::{Backend, StoreError};

use super::{LinkId, Replicator};

/// The bytes an entry counts for against `max_snapshot_bytes`: its address and its value.
fn entry_bytes(address: &Address, entry: &EntryState) -> u64 {
    (address.app.len()
        + address.env.len()
        + address.key.len()
        + entry.value.as_ref().map_or(0, |v| v.len())) as u64
}

#[derive(Debug)]
pub(super) struct SnapshotAssembly {
    pub(super) head: SignedHead,
    pub(super) expected: u64,
    pub(super) next_seq: u32,
    /// Bytes of the entries gathered so far (see `entry_bytes`).
    pub(super) bytes: u64,
    pub(super) entries: Vec<(Address, EntryState)>,
}

impl<B: Backend> Replicator<B> {
    /// A snapshot starts on `link`: its signed head and how many entries follow.
    pub(super) fn on_snapshot_begin(
        &mut self,
        now: Instant,
        link: LinkId,
        head: SignedHead,
        entries: u64,
    ) {
        if !self.verify_head(&head) {
            return;
        }
        self.heard(now, link, &head);
        if head.head.revision <= self.state.revision() || entries > self.config.max_snapshot_entries
        {
            self.stats.rejected_unexpected += 1;
            return;
        }
        let cap = entries.min(1 << 20) as usize;
        self.links[link].snapshot = Some(SnapshotAssembly {
            head,
            expected: entries,
            next_seq: 0,
            bytes: 0,
            entries: Vec::with_capacity(cap),
        });
    }

    /// The next chunk of `link`'s snapshot. A chunk out of order, or one that would exceed the
    /// announced entries or `max_snapshot_bytes`, drops the assembly.
    pub(super) fn on_snapshot_chunk(
        &mut self,
        now: Instant,
        link: LinkId,
        seq: u32,
        entries: Vec<(Address, EntryState)>,
    ) {
        let max_bytes = self.config.max_snapshot_bytes;
        let slot = &mut self.links[link].snapshot;
        let bytes: u64 = entries.iter().map(|(a, e)| entry_bytes(a, e)).sum();
        let ok = match slot.as_mut() {
            Some(s)
                if s.next_seq == seq
                    && s.entries.len() as u64 + entries.len() as u64 <= s.expected
                    && s.bytes + bytes <= max_bytes =>
            {
                s.next_seq += 1;
                s.bytes += bytes;
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

    /// `link`'s snapshot ends after `chunks` chunks: installed whole if complete.
    pub(super) fn on_snapshot_end(&mut self, now: Instant, link: LinkId, chunks: u32) {
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
            Err(StoreError::SnapshotMismatch(_)) => self.stats.rejected_digest_mismatch += 1,
            Err(_) => self.stats.store_errors += 1,
        }
    }
}
