//! Wire frames between origin, edges and peers: a versioned envelope encoded with postcard and
//! prefixed with its length as a big-endian u32 (DESIGN §5).
//!
//! [`FrameDecoder`] is the only way bytes from the network become frames; it enforces the
//! frame size limit before it allocates and reports malformed input as an error, never a panic.

use serde::{Deserialize, Serialize};

use crate::addr::Address;
use crate::digest::Digest;
use crate::model::{EntryState, Revision};
use crate::sign::{SignedDelta, SignedHead};

/// The default largest frame body, in bytes. A value is at most 1 MiB, so this leaves room for a
/// transaction of several large values and for snapshot chunks.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// The most bytes of changes one revision may carry (keys, values and a little per change, see
/// [`change_bytes`]): its delta must fit one frame, with room left for the signed head and the
/// encoding and the revision's provenance (`crate::provenance`), or no edge could ever take
/// it. A write or transaction beyond it is refused before it is proposed.
pub const MAX_REVISION_BYTES: usize =
    DEFAULT_MAX_FRAME_BYTES - 16 * 1024 - crate::provenance::MAX_PROVENANCE_BYTES;
/// The most bytes of entries in one snapshot chunk (a single larger entry goes alone).
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// What one change (or snapshot entry) at `address` holding `value_bytes` of JSON counts for
/// towards [`MAX_REVISION_BYTES`] and chunk sizes: an upper bound of its encoded size.
pub fn change_bytes(address: &Address, value_bytes: usize) -> usize {
    address.app.len() + address.env.len() + address.key.len() + value_bytes + 32
}

/// The versioned envelope. New versions are added as new variants; old ones stay decodable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Protocol version 1.
    V1(FrameV1),
}

/// Version 1 messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameV1 {
    /// Edge → origin or peer, first on the control stream: who it is and what it holds.
    Hello {
        /// The edge's id.
        edge_id: String,
        /// The edge's region.
        region: String,
        /// The revision it holds.
        revision: Revision,
        /// Its digest at that revision.
        digest: Digest,
    },
    /// Origin → edge: the newest signed head (sent on commit and as a heartbeat).
    Head(SignedHead),
    /// Origin → edge, on its own unidirectional stream: one signed delta.
    Delta(SignedDelta),
    /// Start of a snapshot at the signed head's revision.
    SnapshotBegin {
        /// The head the snapshot's digest must match.
        head: SignedHead,
        /// Number of entries that follow, tombstones included.
        entries: u64,
    },
    /// A slice of a snapshot, in address order.
    SnapshotChunk {
        /// 0-based chunk number.
        seq: u32,
        /// The entries.
        entries: Vec<(Address, EntryState)>,
    },
    /// End of a snapshot.
    SnapshotEnd {
        /// Number of chunks sent.
        chunks: u32,
    },
    /// Edge → origin: the revision now durable at the edge.
    Ack {
        /// The applied revision.
        revision: Revision,
    },
    /// Edge → origin: send what comes after `from`.
    Need {
        /// The edge's revision.
        from: Revision,
    },
    /// Either way: liveness, carrying the sender's revision.
    Heartbeat {
        /// The sender's revision.
        revision: Revision,
    },
    /// Peer → edge, beside each heartbeat: how long ago the sending edge last heard the
    /// origin (directly or through a fresh peer). Used only to choose a relay, never to
    /// decide what is true, so it needs no signature.
    Freshness {
        /// Milliseconds since the sender last heard the origin.
        staleness_ms: u64,
        /// The revision the sender holds (and can relay).
        holds: Revision,
    },
    /// Edge → peer: keep this connection warm but send no deltas until the next `Need` (the
    /// dialer's origin link is delivering). Heads and freshness still come on heartbeats, so
    /// the dialer notices at once when it falls behind and can switch over without dialing.
    Standby,
    /// Edge → origin, beside each heartbeat: what the edge serves, for drift detection. Not
    /// trusted for anything but display and alerts.
    Report {
        /// The revision it serves.
        revision: Revision,
        /// Its digest at that revision.
        digest: Digest,
        /// Milliseconds it has been behind the newest head it knows (0 when caught up).
        lag_ms: u64,
    },
    /// Edge → origin, beside a report: when tokens were last used to read at this edge,
    /// `(token id, ms since the Unix epoch)`, at most [`MAX_TOKEN_USES`]. Only for the tokens'
    /// last-used time; the origin ignores ids it holds no record of.
    TokenUses {
        /// Token ids and times.
        uses: Vec<(u64, u64)>,
    },
    /// Edge → origin, beside a report: the edge's cumulative flag exposure counts since its
    /// boot (a grow-only counter, merged by maximum: `crate::flags::exposure`), at most
    /// [`crate::flags::exposure::MAX_EXPOSURE_ENTRIES`].
    Exposures {
        /// Drawn at the edge's start: a restarted edge counts anew under a new boot.
        boot: u64,
        /// Counts since that boot.
        counts: Vec<crate::flags::exposure::ExposureCount>,
    },
    /// Origin → edge: every data key the edge may serve secrets with, wrapped for this
    /// connection's TLS session (replaces what the edge held), at most [`MAX_SESSION_KEYS`].
    DataKeys {
        /// The keys.
        keys: Vec<crate::secrets::SessionKey>,
    },
    /// Edge → origin, beside a report: reveals of secrets at the edge not yet acknowledged,
    /// oldest first, at most [`MAX_REVEALS_PER_FRAME`].
    Reveals {
        /// The records.
        records: Vec<crate::secrets::RevealRecord>,
    },
    /// Origin → edge: the reveals up to this sequence number are in the audit log.
    RevealsAck {
        /// The newest sequence number recorded.
        upto: u64,
    },
    /// Edge → origin, after `Hello`: where this edge accepts connections from its peers
    /// (`host:port`), for the directory of edges (`meridian_protocol::directory`).
    PeerAddress {
        /// The address, at most `directory::MAX_PEER_ADDR_BYTES`.
        addr: String,
    },
    /// Edge → origin, beside a report: which revision service instances applied, as they
    /// told this edge since its last report, at most
    /// [`crate::applied::MAX_APPLIED_PER_FRAME`]. For display and alerts only.
    Applied {
        /// The reports, each the instance's latest.
        reports: Vec<crate::applied::AppliedReport>,
    },
}

/// Most data keys one [`FrameV1::DataKeys`] carries.
pub const MAX_SESSION_KEYS: usize = 16_384;
/// Most reveal records one [`FrameV1::Reveals`] carries.
pub const MAX_REVEALS_PER_FRAME: usize = 256;

/// Most token uses one [`FrameV1::TokenUses`] carries.
pub const MAX_TOKEN_USES: usize = 1000;

impl From<FrameV1> for Frame {
    fn from(f: FrameV1) -> Self {
        Frame::V1(f)
    }
}

/// Why bytes were not a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body was not a valid postcard `Frame`.
    #[error("malformed frame")]
    Malformed(#[source] postcard::Error),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// Encodes a frame with its length prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(frame).map_err(FrameError::Malformed)?;
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Turns a byte stream into frames, one limit-checked frame at a time.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames larger than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_frame_bytes,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an error the stream is
    /// not trusted any more and should be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        if self.buf.len() < LENGTH_PREFIX_BYTES + len {
            return Ok(None);
        }
        let body = &self.buf[LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + len];
        let frame = postcard::from_bytes(body).map_err(FrameError::Malformed)?;
        self.buf.drain(..LENGTH_PREFIX_BYTES + len);
        Ok(Some(frame))
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

/// Decodes exactly one whole frame from `bytes` (a finished stream).
pub fn decode_one(bytes: &[u8], max_frame_bytes: usize) -> Result<Frame, FrameError> {
    let mut d = FrameDecoder::new(max_frame_bytes);
    d.push(bytes);
    match d.next_frame()? {
        Some(f) => {
            d.finish()?;
            Ok(f)
        }
        None => Err(FrameError::Truncated(bytes.len())),
    }
}
