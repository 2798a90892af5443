//! The replicator: a sans-IO state machine that keeps an edge's signed state up to date.
//!
//! It says Hello with its revision and digest, verifies and applies pushed deltas strictly in
//! order (buffering a bounded number that arrive early), installs chunked snapshots, asks for
//! what it lacks when the newest signed head is ahead and nothing arrives, acknowledges what is
//! durable, and reconnects with bounded exponential backoff. It never moves its revision
//! backwards, and nothing it did not verify reaches the store.
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

/// Tuning of the replicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatorConfig {
    /// This edge's id.
    pub edge_id: String,
    /// This edge's region.
    pub region: String,
    /// How many origin addresses the shell can dial (connect attempts rotate through them).
    pub origin_count: usize,
    /// How often the edge sends a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// First reconnect delay.
    pub reconnect_backoff_min_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_backoff_max_ms: u64,
    /// When a newer head is known but nothing arrived for this long, ask again with `Need`.
    pub stall_timeout_ms: u64,
    /// When nothing at all arrived for this long, drop the connection and reconnect.
    pub silence_timeout_ms: u64,
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
            heartbeat_interval_ms: 500,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 2_000,
            stall_timeout_ms: 1_000,
            silence_timeout_ms: 3_000,
            max_pending_deltas: 4096,
            max_snapshot_entries: 10_000_000,
        }
    }
}

/// What the replicator asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Dial origin number `origin` (an index below `origin_count`).
    Connect {
        /// Which origin address.
        origin: usize,
    },
    /// Close the current connection.
    Disconnect,
    /// Send a frame on the control stream.
    Send(Frame),
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
enum Link {
    /// Waiting until `retry_at` to dial.
    Idle { retry_at: Instant },
    /// A dial is in progress.
    Connecting,
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

/// The sans-IO replicator over a signed state in backend `B`.
pub struct Replicator<B: Backend> {
    config: ReplicatorConfig,
    trusted: TrustedKeys,
    state: SignedState<B>,
    link: Link,
    attempts: u64,
    backoff_ms: u64,
    pending: BTreeMap<Revision, SignedDelta>,
    snapshot: Option<SnapshotAssembly>,
    newest_known: Revision,
    last_heard: Option<Instant>,
    last_progress: Instant,
    behind_since: Option<Instant>,
    next_heartbeat: Option<Instant>,
    acked: Revision,
    out: VecDeque<Output>,
    stats: ReplicatorStats,
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
        let backoff_ms = config.reconnect_backoff_min_ms.max(1);
        Self {
            config,
            trusted,
            state,
            link: Link::Idle { retry_at: now },
            attempts: 0,
            backoff_ms,
            pending: BTreeMap::new(),
            snapshot: None,
            newest_known: revision,
            last_heard: None,
            last_progress: now,
            behind_since: None,
            next_heartbeat: None,
            acked: revision,
            out: VecDeque::new(),
            stats: ReplicatorStats::default(),
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

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Connected { .. })
    }

    /// The newest revision any verified head announced.
    pub fn newest_known(&self) -> Revision {
        self.newest_known
    }

    /// When a verified head or delta last arrived.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// How long the edge has been behind the newest known head (zero when current).
    pub fn lag(&self, now: Instant) -> Duration {
        self.behind_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// The shell finished dialing.
    pub fn handle_connected(&mut self, now: Instant) {
        self.link = Link::Connected { last_frame: now };
        self.stats.connects += 1;
        self.backoff_ms = self.config.reconnect_backoff_min_ms.max(1);
        self.last_progress = now;
        self.next_heartbeat =
            Some(now + Duration::from_millis(self.config.heartbeat_interval_ms.max(1)));
        self.out.push_back(Output::Send(
            FrameV1::Hello {
                edge_id: self.config.edge_id.clone(),
                region: self.config.region.clone(),
                revision: self.state.revision(),
                digest: self.state.digest(),
            }
            .into(),
        ));
        self.acked = self.state.revision();
    }

    /// The dial failed or the connection ended.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let retry_at = now + Duration::from_millis(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(self.config.reconnect_backoff_max_ms.max(1));
        self.link = Link::Idle { retry_at };
        self.snapshot = None;
        self.next_heartbeat = None;
    }

    /// Bytes on some stream did not form a valid frame.
    pub fn handle_malformed(&mut self, _now: Instant) {
        self.stats.rejected_malformed += 1;
    }

    /// A frame arrived.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if let Link::Connected { last_frame } = &mut self.link {
            *last_frame = now;
        }
        let Frame::V1(frame) = frame;
        match frame {
            FrameV1::Head(head) => {
                if self.verify_head(&head) {
                    self.heard(now, head.head.revision);
                }
            }
            FrameV1::Delta(delta) => self.on_delta(now, delta),
            FrameV1::SnapshotBegin { head, entries } => {
                if !self.verify_head(&head) {
                    return;
                }
                self.heard(now, head.head.revision);
                if head.head.revision <= self.state.revision()
                    || entries > self.config.max_snapshot_entries
                {
                    self.stats.rejected_unexpected += 1;
                    return;
                }
                let cap = entries.min(1 << 20) as usize;
                self.snapshot = Some(SnapshotAssembly {
                    head,
                    expected: entries,
                    next_seq: 0,
                    entries: Vec::with_capacity(cap),
                });
            }
            FrameV1::SnapshotChunk { seq, entries } => {
                let ok = match self.snapshot.as_mut() {
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
                if !ok {
                    self.stats.rejected_unexpected += 1;
                    self.snapshot = None;
                }
            }
            FrameV1::SnapshotEnd { chunks } => {
                let Some(s) = self.snapshot.take() else {
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
            FrameV1::Hello { .. } | FrameV1::Ack { .. } | FrameV1::Need { .. } => {
                self.stats.rejected_unexpected += 1;
            }
        }
        self.update_behind(now);
    }

    /// Makes applied revisions durable and visible to readers, then acknowledges them.
    /// The shell calls this after each burst of frames. Returns the published revision.
    pub fn flush(&mut self, now: Instant) -> Revision {
        let revision = match self.state.publish() {
            Ok(r) => r,
            Err(_) => {
                self.stats.store_errors += 1;
                return self.acked;
            }
        };
        if revision > self.acked && self.is_connected() {
            self.acked = revision;
            self.out
                .push_back(Output::Send(FrameV1::Ack { revision }.into()));
        }
        self.update_behind(now);
        revision
    }

    /// Time passed: dial when due, send heartbeats, notice stalls and silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.link {
            Link::Idle { retry_at } if now >= retry_at => {
                self.link = Link::Connecting;
                let count = self.config.origin_count.max(1) as u64;
                self.out.push_back(Output::Connect {
                    origin: (self.attempts % count) as usize,
                });
                self.attempts += 1;
            }
            Link::Connected { last_frame } => {
                if now.saturating_duration_since(last_frame)
                    >= Duration::from_millis(self.config.silence_timeout_ms)
                {
                    self.out.push_back(Output::Disconnect);
                    self.handle_disconnected(now);
                    return;
                }
                if self.next_heartbeat.is_some_and(|due| now >= due) {
                    self.out.push_back(Output::Send(
                        FrameV1::Heartbeat {
                            revision: self.state.revision(),
                        }
                        .into(),
                    ));
                    self.next_heartbeat =
                        Some(now + Duration::from_millis(self.config.heartbeat_interval_ms.max(1)));
                }
                let stall = Duration::from_millis(self.config.stall_timeout_ms);
                if self.newest_known > self.state.revision()
                    && now.saturating_duration_since(self.last_progress) >= stall
                {
                    self.pending.clear();
                    self.snapshot = None;
                    self.last_progress = now;
                    self.out.push_back(Output::Send(
                        FrameV1::Need {
                            from: self.state.revision(),
                        }
                        .into(),
                    ));
                }
            }
            _ => {}
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Idle { retry_at } => Some(retry_at),
            Link::Connecting => None,
            Link::Connected { last_frame } => {
                let silence = last_frame + Duration::from_millis(self.config.silence_timeout_ms);
                let stall = (self.newest_known > self.state.revision()).then(|| {
                    self.last_progress + Duration::from_millis(self.config.stall_timeout_ms)
                });
                [Some(silence), stall, self.next_heartbeat]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    fn heard(&mut self, now: Instant, revision: Revision) {
        self.last_heard = Some(now);
        if revision > self.newest_known {
            self.newest_known = revision;
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

    fn on_delta(&mut self, now: Instant, delta: SignedDelta) {
        if let Err(e) = self.trusted.verify_delta(&delta) {
            self.count_verify_error(&e);
            return;
        }
        self.heard(now, delta.delta.revision);
        let next = self.state.revision().next();
        let r = delta.delta.revision;
        if r < next {
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

    fn replicator(now: Instant) -> Replicator<MemBackend> {
        let state = SignedState::open(MemBackend::new(), 100).unwrap();
        Replicator::new(
            ReplicatorConfig::default(),
            TrustedKeys::new([signer().verifying_key()]),
            state,
            now,
        )
    }

    fn outputs(r: &mut Replicator<MemBackend>) -> Vec<Output> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn connected(now: Instant) -> Replicator<MemBackend> {
        let mut r = replicator(now);
        r.handle_timeout(now);
        assert_eq!(outputs(&mut r), vec![Output::Connect { origin: 0 }]);
        r.handle_connected(now);
        let out = outputs(&mut r);
        assert!(matches!(
            &out[..],
            [Output::Send(Frame::V1(FrameV1::Hello {
                revision: Revision(0),
                ..
            }))]
        ));
        r
    }

    #[test]
    fn out_of_order_deltas_are_buffered_then_applied_in_order_and_acked_after_flush() {
        let now = Instant::now();
        let mut r = connected(now);
        let h = history(5);
        for i in [4, 2, 3, 1, 0, 0] {
            r.handle_frame(now, FrameV1::Delta(h[i].clone()).into());
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
            vec![Output::Send(
                FrameV1::Ack {
                    revision: Revision(5)
                }
                .into()
            )]
        );
        assert_eq!(r.state().digest(), h[4].head.head.digest);
    }

    #[test]
    fn a_stall_behind_a_known_head_asks_again() {
        let now = Instant::now();
        let mut r = connected(now);
        let h = history(3);
        r.handle_frame(now, FrameV1::Delta(h[0].clone()).into());
        r.handle_frame(now, FrameV1::Head(h[2].head).into());
        assert_eq!(r.newest_known(), Revision(3));
        let due = r.poll_timeout().unwrap();
        assert!(due <= now + Duration::from_millis(1_000));
        let later = now + Duration::from_millis(1_000);
        r.handle_timeout(later);
        let out = outputs(&mut r);
        assert!(
            out.contains(&Output::Send(FrameV1::Need { from: Revision(1) }.into())),
            "{out:?}"
        );
        assert!(r.lag(later) >= Duration::from_millis(1_000));
    }

    #[test]
    fn silence_drops_the_link_and_reconnects_with_bounded_backoff() {
        let t0 = Instant::now();
        let mut r = connected(t0);
        let t1 = t0 + Duration::from_millis(3_000);
        r.handle_timeout(t1);
        assert!(outputs(&mut r).contains(&Output::Disconnect));
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
            r.handle_disconnected(now);
        }
        assert_eq!(delays, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        r.handle_connected(now);
        r.handle_disconnected(now);
        assert_eq!(
            r.poll_timeout().unwrap().duration_since(now).as_millis(),
            50,
            "reset on success"
        );
    }

    #[test]
    fn heartbeats_go_out_on_schedule() {
        let now = Instant::now();
        let mut r = connected(now);
        let due = r.poll_timeout().unwrap();
        assert_eq!(due, now + Duration::from_millis(500));
        r.handle_frame(
            due,
            FrameV1::Heartbeat {
                revision: Revision(0),
            }
            .into(),
        );
        r.handle_timeout(due);
        assert_eq!(
            outputs(&mut r),
            vec![Output::Send(
                FrameV1::Heartbeat {
                    revision: Revision(0)
                }
                .into()
            )]
        );
    }

    #[test]
    fn a_snapshot_with_a_missing_chunk_is_refused() {
        let now = Instant::now();
        let mut r = connected(now);
        let h = history(4);
        let mut full = meridian_protocol::CacheState::new();
        for d in &h {
            full.apply_delta(&d.delta);
        }
        let entries: Vec<_> = full.iter().map(|(a, e)| (a, e.clone())).collect();
        r.handle_frame(
            now,
            FrameV1::SnapshotBegin {
                head: h[3].head,
                entries: entries.len() as u64,
            }
            .into(),
        );
        r.handle_frame(
            now,
            FrameV1::SnapshotChunk {
                seq: 1,
                entries: entries.clone(),
            }
            .into(),
        );
        r.handle_frame(now, FrameV1::SnapshotEnd { chunks: 1 }.into());
        assert_eq!(r.state().revision(), Revision(0));
        assert!(r.stats().rejected_unexpected >= 1);
        r.handle_frame(
            now,
            FrameV1::SnapshotBegin {
                head: h[3].head,
                entries: entries.len() as u64,
            }
            .into(),
        );
        r.handle_frame(now, FrameV1::SnapshotChunk { seq: 0, entries }.into());
        r.handle_frame(now, FrameV1::SnapshotEnd { chunks: 1 }.into());
        assert_eq!(r.state().revision(), Revision(4));
        assert_eq!(r.stats().snapshots_installed, 1);
    }
}
