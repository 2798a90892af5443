//! How a replicator is tuned: timeouts, backoff, peer links and the bounds on what it buffers.

/// Tuning of the replicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatorConfig {
    /// This edge's id.
    pub edge_id: String,
    /// This edge's region.
    pub region: String,
    /// How many origin addresses the shell can dial: [`UpstreamId::Origin`](super::UpstreamId::Origin)`(0..origin_count)`.
    pub origin_count: usize,
    /// How many peers the peer links rotate through: [`UpstreamId::Peer`](super::UpstreamId::Peer)`(0..peer_count)`.
    /// The shell may know more peers than that: a peer named in
    /// [`Replicator::handle_peer_holds`](super::Replicator::handle_peer_holds) is dialed
    /// whether or not it is in the rotation.
    pub peer_count: usize,
    /// How many peers to keep warm links to at once (at most `peer_count`). Two links,
    /// interleaved over the peer list, mean one dead or cut-off peer never leaves the edge
    /// searching alone.
    pub peer_links: usize,
    /// How often the edge sends a heartbeat on each link.
    pub heartbeat_interval_ms: u64,
    /// First reconnect delay.
    pub reconnect_backoff_min_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_backoff_max_ms: u64,
    /// When a newer head is known but nothing arrived for this long, ask again with `Need`.
    pub stall_timeout_ms: u64,
    /// When nothing at all arrived on a link for this long, drop it and reconnect.
    pub silence_timeout_ms: u64,
    /// When the origin link has brought no verified head or delta for this long (the origin
    /// announces its head every heartbeat), the peer links leave standby and deliver until it
    /// does again. Shorter than the silence and stall timeouts: under a one-way partition the
    /// origin's packets stop while the connection is not yet silent long enough to drop, and
    /// no newer head may be known to start the stall timer.
    pub origin_quiet_ms: u64,
    /// A dial of the origin link that has not completed its handshake after this long gets a
    /// fresh dial beside it: a handshake whose first packets were lost (during a partition,
    /// say) backs off exponentially inside QUIC and would otherwise finish long after the path
    /// healed.
    pub connect_timeout_ms: u64,
    /// How long after a link's handshake completes its `Hello` waits. The `Hello` must not
    /// overtake our last handshake flight: a QUIC server drops 1-RTT packets that arrive
    /// before its handshake completes (quinn-proto does not buffer them), and the lost `Hello`
    /// is then only resent after loss detection, a round trip or more later. The handshake
    /// flight and the `Hello` leave in separate datagrams (the transport sends the flight
    /// before the application hears the handshake finished), so any jitter reorders them; a
    /// short wait beyond the path's jitter keeps them in order.
    pub hello_delay_ms: u64,
    /// The connect timeout of peer links. Shorter than the origin's: a peer link has many
    /// candidates, some in regions that may be cut off, and dials overlap, so moving on
    /// quickly costs little while waiting on an unreachable peer costs the SLO.
    pub peer_connect_timeout_ms: u64,
    /// A peer that reports not having heard the origin for longer than this, and has not
    /// delivered a delta for as long, is left for the next one (it is cut off itself and can
    /// only relay stale data).
    pub peer_staleness_limit_ms: u64,
    /// Most deltas buffered ahead of the next expected revision.
    pub max_pending_deltas: usize,
    /// Most entries accepted in one snapshot.
    pub max_snapshot_entries: u64,
    /// Most bytes of addresses and values accepted in one snapshot (per link: what a peer
    /// or an origin can make this edge hold in memory before the snapshot is checked).
    pub max_snapshot_bytes: u64,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        Self {
            edge_id: "edge".into(),
            region: "local".into(),
            origin_count: 1,
            peer_count: 0,
            peer_links: 2,
            heartbeat_interval_ms: 500,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 2_000,
            stall_timeout_ms: 1_000,
            silence_timeout_ms: 1_500,
            origin_quiet_ms: 1_200,
            connect_timeout_ms: 1_000,
            hello_delay_ms: 20,
            peer_connect_timeout_ms: 500,
            peer_staleness_limit_ms: 1_500,
            max_pending_deltas: 4096,
            max_snapshot_entries: 10_000_000,
            max_snapshot_bytes: 4 << 30,
        }
    }
}
