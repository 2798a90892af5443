//! The distributor: a sans-IO state machine that decides what each connected edge is sent.
//!
//! It learns of connections, frames and commits through `handle_*`, and says what to send
//! through [`Distributor::poll_transmit`]; [`Distributor::poll_timeout`] says when it next wants
//! [`Distributor::handle_timeout`]. The QUIC shell and the simulator drive it the same way.
//!
//! Per edge it tracks the revision acknowledged and the revision sent. An edge that says
//! `Hello`/`Need` from revision r gets the deltas after r when the origin still keeps them, and
//! a chunked snapshot of the signed state otherwise. At most `max_inflight_deltas` revisions are
//! sent beyond the last acknowledgement, so a slow edge cannot make the origin buffer without
//! bound. A signed head goes out on every heartbeat so edges can measure staleness and notice
//! they are behind. An edge that says `Standby` (a peer link kept warm while its own origin link
//! delivers) gets only those heartbeat heads until its next `Need`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_protocol::frame::{DEFAULT_SNAPSHOT_CHUNK_BYTES, change_bytes};
use meridian_protocol::{
    Address, Digest, EntryState, Frame, FrameV1, Revision, SignedDelta, SignedHead,
};
use meridian_store::{Backend, SignedState, StoreError};

/// Names one connection of a shell (to the distributor, and to an edge's dial policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

impl ConnId {
    /// The first id a shell hands out.
    pub const FIRST: ConnId = ConnId(1);

    /// Id `n` of a shell's own numbering (a fuzzer's, a test's).
    pub const fn new(n: u64) -> ConnId {
        ConnId(n)
    }

    /// The id after this one (ids are never reused).
    pub fn next(self) -> ConnId {
        ConnId(self.0 + 1)
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// Tuning of the distributor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributorConfig {
    /// How often every edge is sent the newest head.
    pub heartbeat_interval_ms: u64,
    /// Most revisions sent to one edge beyond its last acknowledgement.
    pub max_inflight_deltas: u64,
    /// Most deltas carried by one catch-up stream.
    pub max_deltas_per_stream: usize,
    /// Entries per snapshot chunk, at most.
    pub snapshot_chunk_entries: usize,
    /// Bytes of entries per snapshot chunk, at most (as [`change_bytes`] counts them; a larger
    /// single entry goes alone), well below the frame limit edges enforce.
    pub snapshot_chunk_bytes: usize,
    /// One connection is sent at most one snapshot per this interval, and the state is copied
    /// for a snapshot at most once per it: a snapshot taken earlier serves every connection
    /// for as long as the deltas after it are kept. An edge that asks again and again
    /// (`Need { from: 0 }` in a loop) waits instead of costing a copy of the state each time.
    pub snapshot_min_interval_ms: u64,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 500,
            max_inflight_deltas: 1024,
            max_deltas_per_stream: 64,
            snapshot_chunk_entries: 1024,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            snapshot_min_interval_ms: 1_000,
        }
    }
}

/// Where the distributor reads committed data from.
pub trait ChangeSource {
    /// The newest signed head.
    fn head(&self) -> Option<SignedHead>;
    /// Deltas after `after` (at most `max`); `None` if compacted.
    fn deltas_after(
        &self,
        after: Revision,
        max: usize,
    ) -> Result<Option<Vec<SignedDelta>>, StoreError>;
    /// The published state with its head.
    fn snapshot(&self) -> (Option<SignedHead>, Vec<(Address, EntryState)>);
    /// The newest signed head this node knows of, announced on heartbeats. An edge serving
    /// peers may know of a newer head than it holds; announcing it lets a peer notice that
    /// this edge is behind and look elsewhere.
    fn newest_head(&self) -> Option<SignedHead> {
        self.head()
    }
    /// How stale this node's knowledge is, when it is not the origin itself: sent to peers so
    /// they can leave a relay that has lost its own path to the origin.
    fn staleness_ms(&self, _now: Instant) -> Option<u64> {
        None
    }
}

impl<B: Backend> ChangeSource for SignedState<B> {
    fn head(&self) -> Option<SignedHead> {
        SignedState::head(self)
    }
    fn deltas_after(
        &self,
        after: Revision,
        max: usize,
    ) -> Result<Option<Vec<SignedDelta>>, StoreError> {
        SignedState::deltas_after(self, after, max)
    }
    fn snapshot(&self) -> (Option<SignedHead>, Vec<(Address, EntryState)>) {
        SignedState::snapshot(self)
    }
}

/// What to send on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A frame on the connection's control stream.
    Control(Frame),
    /// Frames on a new unidirectional stream, in order, then finish it.
    Stream(Vec<Frame>),
}

/// What an edge told us about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeInfo {
    /// Edge id from its Hello.
    pub edge_id: String,
    /// Region from its Hello.
    pub region: String,
    /// The newest revision it acknowledged.
    pub acked: Revision,
    /// The revision it last reported serving (Hello or Report) and its digest there.
    pub reported: (Revision, Digest),
    /// How far behind the newest head it knows it said it was, in milliseconds.
    pub lag_ms: u64,
    /// When it last reported.
    pub reported_at: Instant,
}

#[derive(Debug)]
struct Session {
    info: Option<EdgeInfo>,
    sent: Revision,
    /// The edge asked for heads only (a peer link kept warm while its origin link delivers):
    /// nothing is pushed until its next `Need`.
    standby: bool,
    /// When this connection was last sent a snapshot.
    last_snapshot: Option<Instant>,
    /// It needs a snapshot that the interval holds back: sent from `handle_timeout`.
    snapshot_waiting: bool,
}

/// How many snapshot intervals the last snapshot taken is kept for.
const SNAPSHOT_KEPT_INTERVALS: u32 = 10;

/// The last snapshot taken, shared by every connection that needs one while the deltas after
/// it are kept, for [`SNAPSHOT_KEPT_INTERVALS`] snapshot intervals at most.
#[derive(Debug)]
struct CachedSnapshot {
    head: SignedHead,
    entries: Arc<Vec<(Address, EntryState)>>,
    taken_at: Instant,
}

/// Counters kept by the distributor.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DistributorStats {
    /// Deltas sent.
    pub deltas_sent: u64,
    /// Snapshots sent.
    pub snapshots_sent: u64,
    /// Frames from edges that made no sense here.
    pub unexpected_frames: u64,
    /// Reads of the change source that failed.
    pub source_errors: u64,
    /// Snapshots held back by `snapshot_min_interval_ms` (sent later).
    pub snapshots_deferred: u64,
    /// Copies of the state taken for snapshots.
    pub snapshots_taken: u64,
}

/// The sans-IO distributor.
#[derive(Debug)]
pub struct Distributor {
    config: DistributorConfig,
    sessions: BTreeMap<ConnId, Session>,
    out: VecDeque<(ConnId, Transmit)>,
    next_heartbeat: Option<Instant>,
    stats: DistributorStats,
    snapshot: Option<CachedSnapshot>,
}

impl Distributor {
    /// A distributor with no connections.
    pub fn new(config: DistributorConfig) -> Self {
        Self {
            config,
            sessions: BTreeMap::new(),
            out: VecDeque::new(),
            next_heartbeat: None,
            stats: DistributorStats::default(),
            snapshot: None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> DistributorStats {
        self.stats
    }

    /// What the edge on connection `conn` said in its Hello, if it said one.
    pub fn edge(&self, conn: ConnId) -> Option<&EdgeInfo> {
        self.sessions.get(&conn).and_then(|s| s.info.as_ref())
    }

    /// Every edge connected, as far as its Hello told.
    pub fn edges(&self) -> impl Iterator<Item = &EdgeInfo> {
        self.sessions.values().filter_map(|s| s.info.as_ref())
    }

    /// A connection was accepted.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId) {
        self.sessions.insert(
            conn,
            Session {
                info: None,
                sent: Revision(0),
                standby: false,
                last_snapshot: None,
                snapshot_waiting: false,
            },
        );
        if self.next_heartbeat.is_none() {
            self.next_heartbeat = Some(now + self.heartbeat_interval());
        }
    }

    /// A connection ended.
    pub fn handle_disconnect(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
        self.out.retain(|(c, _)| *c != conn);
    }

    /// A frame arrived from an edge.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: Frame,
        src: &impl ChangeSource,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Frame::V1(frame) = frame;
        match frame {
            FrameV1::Hello {
                edge_id,
                region,
                revision,
                digest,
            } => {
                session.info = Some(EdgeInfo {
                    edge_id,
                    region,
                    acked: revision,
                    reported: (revision, digest),
                    lag_ms: 0,
                    reported_at: now,
                });
                session.sent = revision;
                session.standby = false;
                // Announce at once what this node knows and how fresh it is, so a peer that
                // dialed a relay which lost the origin can move on without waiting for the
                // next heartbeat.
                self.announce(now, conn, src);
                self.pump(now, conn, src);
            }
            FrameV1::Ack { revision } => {
                if let Some(info) = session.info.as_mut() {
                    info.acked = info.acked.max(revision);
                    session.sent = session.sent.max(revision);
                    self.pump(now, conn, src);
                } else {
                    self.stats.unexpected_frames += 1;
                }
            }
            FrameV1::Need { from } => {
                if let Some(info) = session.info.as_mut() {
                    // The edge lost or refused something after `from` (or is switching a warm
                    // standby link over): resend from there and push from now on.
                    info.acked = from;
                    session.sent = from;
                    session.standby = false;
                    self.pump(now, conn, src);
                } else {
                    self.stats.unexpected_frames += 1;
                }
            }
            FrameV1::Standby => {
                if session.info.is_some() {
                    session.standby = true;
                } else {
                    self.stats.unexpected_frames += 1;
                }
            }
            FrameV1::Heartbeat { .. } => {}
            FrameV1::Report {
                revision,
                digest,
                lag_ms,
            } => {
                if let Some(info) = session.info.as_mut() {
                    info.reported = (revision, digest);
                    info.lag_ms = lag_ms;
                    info.reported_at = now;
                } else {
                    self.stats.unexpected_frames += 1;
                }
            }
            _ => self.stats.unexpected_frames += 1,
        }
    }

    /// A new revision was committed.
    pub fn handle_commit(&mut self, now: Instant, src: &impl ChangeSource) {
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            self.pump(now, conn, src);
        }
    }

    /// Time passed; sends heartbeats when due.
    pub fn handle_timeout(&mut self, now: Instant, src: &impl ChangeSource) {
        let Some(due) = self.next_heartbeat else {
            return;
        };
        if now < due {
            return;
        }
        let conns: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.info.is_some())
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            self.announce(now, conn, src);
        }
        // The copy is a whole state held in memory: kept only while it is likely to be asked
        // for again.
        let keep =
            Duration::from_millis(self.config.snapshot_min_interval_ms) * SNAPSHOT_KEPT_INTERVALS;
        if self
            .snapshot
            .as_ref()
            .is_some_and(|c| now.saturating_duration_since(c.taken_at) >= keep)
        {
            self.snapshot = None;
        }
        let waiting: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.snapshot_waiting)
            .map(|(c, _)| *c)
            .collect();
        for conn in waiting {
            self.pump(now, conn, src);
        }
        self.next_heartbeat = if self.sessions.is_empty() {
            None
        } else {
            Some(now + self.heartbeat_interval())
        };
    }

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<(ConnId, Transmit)> {
        self.out.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_heartbeat
    }

    /// Sends a connection the newest head known here and, from a relay, its staleness.
    fn announce(&mut self, now: Instant, conn: ConnId, src: &impl ChangeSource) {
        let frame = match src.newest_head() {
            Some(h) => FrameV1::Head(h),
            None => FrameV1::Heartbeat {
                revision: Revision(0),
            },
        };
        self.out.push_back((conn, Transmit::Control(frame.into())));
        if let Some(staleness_ms) = src.staleness_ms(now) {
            let holds = src.head().map_or(Revision(0), |h| h.head.revision);
            let frame = FrameV1::Freshness {
                staleness_ms,
                holds,
            };
            self.out.push_back((conn, Transmit::Control(frame.into())));
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_interval_ms.max(1))
    }

    /// Sends a connection whatever it lacks, within the in-flight bound.
    fn pump(&mut self, now: Instant, conn: ConnId, src: &impl ChangeSource) {
        let Some(head) = src.head() else { return };
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(info) = session.info.as_ref() else {
            return;
        };
        if session.standby {
            return;
        }
        let target = head.head.revision;
        while session.sent < target {
            let budget =
                // The acknowledgement comes from the wire: it may be anything.
                (info.acked.0.saturating_add(self.config.max_inflight_deltas))
                    .saturating_sub(session.sent.0);
            if budget == 0 {
                return;
            }
            let max = (budget as usize)
                .min(self.config.max_deltas_per_stream)
                .max(1);
            match src.deltas_after(session.sent, max) {
                Ok(Some(deltas)) if !deltas.is_empty() => {
                    session.sent = deltas.last().map_or(session.sent, |d| d.delta.revision);
                    self.stats.deltas_sent += deltas.len() as u64;
                    let frames = deltas
                        .into_iter()
                        .map(|d| FrameV1::Delta(d).into())
                        .collect();
                    self.out.push_back((conn, Transmit::Stream(frames)));
                }
                Ok(Some(_)) => return,
                Ok(None) => {
                    let interval = Duration::from_millis(self.config.snapshot_min_interval_ms);
                    let recent = |t: Option<Instant>| {
                        t.is_some_and(|t| now.saturating_duration_since(t) < interval)
                    };
                    if recent(session.last_snapshot) {
                        if !session.snapshot_waiting {
                            session.snapshot_waiting = true;
                            self.stats.snapshots_deferred += 1;
                        }
                        return;
                    }
                    // The snapshot taken last serves while it is newer than what the edge
                    // has and the deltas after it are kept.
                    let reusable = self.snapshot.as_ref().is_some_and(|c| {
                        c.head.head.revision > session.sent
                            && matches!(src.deltas_after(c.head.head.revision, 1), Ok(Some(_)))
                    });
                    if !reusable {
                        if recent(self.snapshot.as_ref().map(|c| c.taken_at)) {
                            if !session.snapshot_waiting {
                                session.snapshot_waiting = true;
                                self.stats.snapshots_deferred += 1;
                            }
                            return;
                        }
                        let (snap_head, entries) = src.snapshot();
                        let Some(snap_head) = snap_head else { return };
                        self.stats.snapshots_taken += 1;
                        self.snapshot = Some(CachedSnapshot {
                            head: snap_head,
                            entries: Arc::new(entries),
                            taken_at: now,
                        });
                    }
                    let Some(cached) = self.snapshot.as_ref() else {
                        return;
                    };
                    session.sent = cached.head.head.revision;
                    session.last_snapshot = Some(now);
                    session.snapshot_waiting = false;
                    self.stats.snapshots_sent += 1;
                    let frames = snapshot_frames(
                        cached.head,
                        cached.entries.as_ref().clone(),
                        self.config.snapshot_chunk_entries,
                        self.config.snapshot_chunk_bytes,
                    );
                    self.out.push_back((conn, Transmit::Stream(frames)));
                    return;
                }
                Err(_) => {
                    self.stats.source_errors += 1;
                    return;
                }
            }
        }
    }
}

/// The transport priority for a stream of frames: older revisions first, so a connection that
/// is catching up receives its deltas in the order the edge can apply them, and a burst of new
/// commits never starves the oldest missing delta. Snapshots go before everything.
pub fn stream_priority(frames: &[Frame]) -> i32 {
    match frames.first() {
        Some(Frame::V1(FrameV1::Delta(d))) => -((d.delta.revision.0 & 0x3fff_ffff) as i32),
        _ => i32::MAX,
    }
}

/// Splits a snapshot into Begin, Chunk… and End frames: each chunk holds at most `per_chunk`
/// entries and `chunk_bytes` bytes of them (one larger entry goes alone), so that a state of
/// large values never makes a frame an edge refuses.
pub fn snapshot_frames(
    head: SignedHead,
    entries: Vec<(Address, EntryState)>,
    per_chunk: usize,
    chunk_bytes: usize,
) -> Vec<Frame> {
    let per_chunk = per_chunk.max(1);
    let mut frames = Vec::with_capacity(entries.len() / per_chunk + 3);
    frames.push(
        FrameV1::SnapshotBegin {
            head,
            entries: entries.len() as u64,
        }
        .into(),
    );
    let mut seq = 0u32;
    let mut chunk: Vec<(Address, EntryState)> = Vec::new();
    let mut bytes = 0usize;
    let mut flush = |chunk: &mut Vec<_>, frames: &mut Vec<Frame>| {
        frames.push(
            FrameV1::SnapshotChunk {
                seq,
                entries: std::mem::take(chunk),
            }
            .into(),
        );
        seq += 1;
    };
    for (address, entry) in entries {
        let size = change_bytes(&address, entry.value.as_ref().map_or(0, |v| v.len()));
        if !chunk.is_empty() && (chunk.len() >= per_chunk || bytes + size > chunk_bytes) {
            flush(&mut chunk, &mut frames);
            bytes = 0;
        }
        bytes += size;
        chunk.push((address, entry));
    }
    if !chunk.is_empty() {
        flush(&mut chunk, &mut frames);
    }
    frames.push(FrameV1::SnapshotEnd { chunks: seq }.into());
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::{Change, Delta, Signer, Version};
    use meridian_store::MemBackend;

    const C1: ConnId = ConnId(1);
    const C2: ConnId = ConnId(2);

    fn source(revisions: u64, window: u64) -> SignedState<MemBackend> {
        let signer = Signer::from_bytes(&[5; 32]);
        let mut s = SignedState::open(MemBackend::new(), window).unwrap();
        for i in 0..revisions {
            let delta = Delta {
                revision: Revision(i + 1),
                changes: vec![Change {
                    address: Address::parse("a", "p", &format!("k{}", i % 7)).unwrap(),
                    version: Version(i / 7 + 1),
                    value: Some(i.to_string().into()),
                }],
            };
            let d = signer.sign_delta(delta.clone(), s.digest_after(&delta));
            s.apply_delta(&d).unwrap();
        }
        s.publish().unwrap();
        s
    }

    fn hello(rev: u64) -> Frame {
        FrameV1::Hello {
            edge_id: "e".into(),
            region: "r".into(),
            revision: Revision(rev),
            digest: Default::default(),
        }
        .into()
    }

    fn drain(d: &mut Distributor) -> Vec<(ConnId, Transmit)> {
        std::iter::from_fn(|| d.poll_transmit()).collect()
    }

    #[test]
    fn behind_within_window_gets_deltas_in_bounded_streams() {
        let src = source(50, 100);
        let mut d = Distributor::new(DistributorConfig {
            max_deltas_per_stream: 20,
            ..Default::default()
        });
        let now = Instant::now();
        d.handle_connect(now, C1);
        d.handle_frame(now, C1, hello(10), &src);
        let out = drain(&mut d);
        // First the announcement of the newest head, then the deltas.
        assert!(matches!(
            &out[0],
            (C1, Transmit::Control(Frame::V1(FrameV1::Head(h)))) if h.head.revision == Revision(50)
        ));
        let counts: Vec<usize> = out[1..]
            .iter()
            .map(|(_, t)| match t {
                Transmit::Stream(f) => f.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(counts, vec![20, 20]);
        assert_eq!(d.stats().deltas_sent, 40);
    }

    #[test]
    fn behind_the_window_gets_a_snapshot() {
        let src = source(50, 10);
        let mut d = Distributor::new(DistributorConfig {
            snapshot_chunk_entries: 3,
            ..Default::default()
        });
        let now = Instant::now();
        d.handle_connect(now, C1);
        d.handle_frame(now, C1, hello(2), &src);
        let out = drain(&mut d);
        assert_eq!(
            out.len(),
            2,
            "the head announcement and the snapshot stream"
        );
        let Transmit::Stream(frames) = &out[1].1 else {
            panic!()
        };
        // 7 entries in chunks of 3: begin, 3 chunks, end.
        assert_eq!(frames.len(), 5);
        assert!(matches!(
            frames[0],
            Frame::V1(FrameV1::SnapshotBegin { entries: 7, .. })
        ));
        assert_eq!(d.stats().snapshots_sent, 1);
    }

    /// Snapshot streams among the transmits.
    fn snapshots(out: &[(ConnId, Transmit)]) -> Vec<ConnId> {
        out.iter()
            .filter(|(_, t)| {
                matches!(t, Transmit::Stream(f)
                    if matches!(f.first(), Some(Frame::V1(FrameV1::SnapshotBegin { .. }))))
            })
            .map(|(c, _)| *c)
            .collect()
    }

    #[test]
    fn an_edge_asking_for_everything_again_and_again_costs_one_snapshot_per_interval() {
        let src = source(50, 10);
        let mut d = Distributor::new(DistributorConfig::default());
        let now = Instant::now();
        for conn in [C1, C2] {
            d.handle_connect(now, conn);
            d.handle_frame(now, conn, hello(0), &src);
        }
        // Both get a snapshot; the state is copied once for both.
        assert_eq!(snapshots(&drain(&mut d)), vec![C1, C2]);
        assert_eq!(d.stats().snapshots_taken, 1);
        // Edge 1 asks for everything 1,000 times at once: nothing more is copied or sent.
        for _ in 0..1_000 {
            d.handle_frame(now, C1, FrameV1::Need { from: Revision(0) }.into(), &src);
        }
        assert!(snapshots(&drain(&mut d)).is_empty());
        assert_eq!(d.stats().snapshots_taken, 1);
        assert_eq!(d.stats().snapshots_sent, 2);
        assert_eq!(
            d.stats().snapshots_deferred,
            1,
            "one deferral, however often it asks"
        );
        // Edge 2 is not held back by edge 1: its own Need is served at once from the copy.
        d.handle_frame(
            now + Duration::from_millis(10),
            C2,
            FrameV1::Need { from: Revision(0) }.into(),
            &src,
        );
        assert!(
            snapshots(&drain(&mut d)).is_empty(),
            "edge 2 had one just now too"
        );
        // Once the interval has passed, the waiting edge gets its snapshot from the heartbeat,
        // still from the one copy (its deltas are kept).
        let later = now + Duration::from_millis(1_100);
        d.handle_timeout(later, &src);
        let sent = snapshots(&drain(&mut d));
        assert_eq!(sent, vec![C1, C2]);
        assert_eq!(d.stats().snapshots_taken, 1);
        // The copy is dropped after ten intervals; the next snapshot is a fresh one.
        let much_later = now + Duration::from_secs(11);
        d.handle_timeout(much_later, &src);
        d.handle_frame(
            much_later,
            C1,
            FrameV1::Need { from: Revision(0) }.into(),
            &src,
        );
        assert_eq!(snapshots(&drain(&mut d)), vec![C1]);
        assert_eq!(d.stats().snapshots_taken, 2);
    }

    #[test]
    fn snapshot_chunks_are_bounded_in_bytes_whatever_the_value_sizes() {
        let signer = Signer::from_bytes(&[3; 32]);
        let value: meridian_protocol::JsonText = format!("\"{}\"", "v".repeat(900 * 1024)).into();
        let entries: Vec<_> = (0..40)
            .map(|i| {
                let address = Address::parse("app", "prod", &format!("k{i:02}")).unwrap();
                let entry = EntryState {
                    revision: Revision(i + 1),
                    version: Version(1),
                    value: Some(value.clone()),
                };
                (address, entry)
            })
            .collect();
        let state = meridian_protocol::CacheState::from_entries(Revision(40), entries.clone());
        let head = signer.sign(meridian_protocol::Head {
            revision: Revision(40),
            digest: state.digest(),
            delta_hash: Default::default(),
        });
        // 1,024 entries per chunk would be 36 MB here; 4 MB of bytes keeps each chunk small.
        let frames = snapshot_frames(head, entries, 1024, 4 << 20);
        let mut chunks = 0;
        for f in &frames {
            let encoded = postcard::to_allocvec(f).unwrap();
            assert!(
                encoded.len() <= 4 << 20,
                "a frame of {} bytes",
                encoded.len()
            );
            if let Frame::V1(FrameV1::SnapshotChunk { entries, .. }) = f {
                assert_eq!(entries.len(), 4, "four 900 KiB entries fit in 4 MiB");
                chunks += 1;
            }
        }
        assert_eq!(chunks, 10);
        // One entry larger than the chunk goes alone.
        let frames = snapshot_frames(
            head,
            state.iter().map(|(a, e)| (a, e.clone())).take(2).collect(),
            1024,
            1024,
        );
        assert_eq!(frames.len(), 4, "begin, two single-entry chunks, end");
    }

    #[test]
    fn revisions_near_the_top_of_u64_from_an_edge_are_harmless() {
        let src = source(50, 100);
        let mut d = Distributor::new(DistributorConfig::default());
        let now = Instant::now();
        d.handle_connect(now, C1);
        for frame in [
            hello(u64::MAX - 1),
            FrameV1::Ack {
                revision: Revision(u64::MAX),
            }
            .into(),
            FrameV1::Need {
                from: Revision(u64::MAX),
            }
            .into(),
        ] {
            d.handle_frame(now, C1, frame, &src);
        }
        d.handle_timeout(now + Duration::from_secs(5), &src);
        // Nothing is sent for revisions the origin does not have; nothing panicked.
        assert!(
            drain(&mut d)
                .iter()
                .all(|(_, t)| matches!(t, Transmit::Control(_))),
            "only heads and heartbeats"
        );
        assert_eq!(d.stats().deltas_sent, 0);
        assert_eq!(d.stats().snapshots_sent, 0);
    }

    #[test]
    fn in_flight_is_bounded_until_acked() {
        let src = source(50, 100);
        let mut d = Distributor::new(DistributorConfig {
            max_inflight_deltas: 5,
            max_deltas_per_stream: 100,
            ..Default::default()
        });
        let now = Instant::now();
        d.handle_connect(now, C1);
        d.handle_frame(now, C1, hello(0), &src);
        assert_eq!(d.stats().deltas_sent, 5);
        d.handle_frame(
            now,
            C1,
            FrameV1::Ack {
                revision: Revision(5),
            }
            .into(),
            &src,
        );
        assert_eq!(d.stats().deltas_sent, 10);
        // Need rewinds.
        d.handle_frame(now, C1, FrameV1::Need { from: Revision(3) }.into(), &src);
        assert_eq!(d.stats().deltas_sent, 15);
    }

    #[test]
    fn a_standby_link_gets_heads_only_until_it_needs() {
        let mut src = source(10, 100);
        let mut d = Distributor::new(DistributorConfig::default());
        let now = Instant::now();
        d.handle_connect(now, C1);
        d.handle_frame(now, C1, hello(10), &src);
        d.handle_frame(now, C1, FrameV1::Standby.into(), &src);
        drain(&mut d);
        // Commits are not pushed to a standby link...
        let more = source(20, 100);
        src = more;
        d.handle_commit(now, &src);
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.stats().deltas_sent, 0);
        // ...but heartbeats still announce the newest head.
        let later = now + Duration::from_secs(1);
        d.handle_timeout(later, &src);
        let out = drain(&mut d);
        assert!(
            out.iter().any(|(_, t)| matches!(
                t,
                Transmit::Control(Frame::V1(FrameV1::Head(h))) if h.head.revision == Revision(20)
            )),
            "{out:?}"
        );
        assert!(!out.iter().any(|(_, t)| matches!(t, Transmit::Stream(_))));
        // Need switches it over: everything after `from` is sent, and later commits are pushed.
        d.handle_frame(later, C1, FrameV1::Need { from: Revision(10) }.into(), &src);
        assert_eq!(d.stats().deltas_sent, 10);
        let more = source(25, 100);
        d.handle_commit(later, &more);
        assert_eq!(d.stats().deltas_sent, 15);
        // Standby before Hello makes no sense.
        d.handle_connect(now, C2);
        d.handle_frame(now, C2, FrameV1::Standby.into(), &src);
        assert_eq!(d.stats().unexpected_frames, 1);
    }

    #[test]
    fn heartbeats_carry_the_head_and_pre_hello_frames_are_ignored() {
        let src = source(3, 100);
        let mut d = Distributor::new(DistributorConfig::default());
        let now = Instant::now();
        d.handle_connect(now, C1);
        d.handle_frame(
            now,
            C1,
            FrameV1::Ack {
                revision: Revision(1),
            }
            .into(),
            &src,
        );
        assert_eq!(d.stats().unexpected_frames, 1);
        assert!(drain(&mut d).is_empty());
        d.handle_frame(now, C1, hello(3), &src);
        assert_eq!(drain(&mut d).len(), 1, "the head is announced on Hello");
        let due = d.poll_timeout().unwrap();
        d.handle_timeout(due, &src);
        let out = drain(&mut d);
        assert!(
            matches!(&out[..], [(C1, Transmit::Control(Frame::V1(FrameV1::Head(h))))] if h.head.revision == Revision(3))
        );
    }
}
