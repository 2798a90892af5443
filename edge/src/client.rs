//! The QUIC shell around the core's [`EdgeNode`]: dials origins and peers with mutual TLS,
//! accepts peers that dial this edge (edge certificates only), feeds every frame into the
//! node, makes applied revisions durable after each burst, and carries out the node's
//! [`Action`]s. It decides nothing about replication itself; what it owns is the edge's
//! secrets side channel (data keys, reveal records), which never enters the core.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use meridian_core::distributor::ConnId;
use meridian_core::edge_node::{Action, EdgeNode, Upstream};
use meridian_core::replicator::LinkId;
use meridian_net::quic::{read_frame, send_uni, write_frame};
use meridian_net::slots::{Slot, Slots};
use meridian_protocol::applied::MAX_APPLIED_PER_FRAME;
use meridian_protocol::frame::{DEFAULT_MAX_FRAME_BYTES, MAX_REVEALS_PER_FRAME, MAX_TOKEN_USES};
use meridian_protocol::{Frame, FrameDecoder, FrameV1};
use meridian_store::Backend;
use tokio::sync::{mpsc, watch};

use crate::shared::{EdgeShared, UpstreamStatus};

/// Bound on events from connection tasks to the replicator loop.
const EVENT_QUEUE: usize = 8192;
/// Bound on frames and streams waiting to be written on one connection; a connection that
/// falls this far behind loses what does not fit (a link's silence timeout replaces it; a
/// peer being served asks again).
const CONN_QUEUE: usize = 1024;
/// Most events handled before the applied revisions are flushed and published.
const BURST: usize = 512;
/// How often the data folder's free space is looked at (before a burst, at most this often;
/// heartbeats wake the loop at least every heartbeat interval).
const SPACE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Something to write on a connection.
enum Out {
    Control(Frame),
    Stream(Vec<Frame>, i32),
}

enum Event {
    /// A dial completed.
    Connected(ConnId, quinn::Connection, mpsc::Sender<Out>),
    /// A peer that dialed us completed its handshake and said a Hello its certificate backs.
    Accepted(ConnId, quinn::Connection, mpsc::Sender<Out>),
    Frame(ConnId, Frame),
    Malformed(ConnId, String),
    /// A connection ended, or its dial or handshake failed.
    Lost(ConnId, String),
}

/// One origin the shell can dial: an address and the TLS server name it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginAddr {
    /// QUIC address.
    pub addr: SocketAddr,
    /// Expected TLS server name.
    pub server_name: String,
}

/// How the shell reaches upstreams and serves peers.
pub struct Wiring {
    /// The QUIC endpoint: a client, and a server for peers when it has a server config.
    pub endpoint: quinn::Endpoint,
    /// Origins, in the order the node counts them.
    pub origins: Vec<OriginAddr>,
    /// Where this edge accepts peers, announced to the origin for the directory.
    pub peer_addr: Option<String>,
    /// Limits on peers served at once (none: this edge does not serve peers).
    pub peer_slots: Option<Slots>,
}

/// A connection the shell holds for the node.
#[derive(Default)]
struct Held {
    conn: Option<quinn::Connection>,
    tx: Option<mpsc::Sender<Out>>,
    task: Option<tokio::task::AbortHandle>,
}

impl Held {
    fn close(self, reason: &'static str) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(conn) = self.conn {
            conn.close(0u32.into(), reason.as_bytes());
        }
    }
}

/// Runs the edge's replication until `shutdown` turns true.
pub async fn run<B: Backend>(
    mut node: EdgeNode<B>,
    wiring: Wiring,
    shared: Arc<EdgeShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Wiring {
        endpoint,
        origins,
        peer_addr,
        peer_slots,
    } = wiring;
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let mut held: BTreeMap<ConnId, Held> = BTreeMap::new();
    let mut space_checked: Option<Instant> = None;
    let serving = peer_slots.is_some();
    loop {
        // Before taking on more frames: is there room to persist them?
        let now = Instant::now();
        if space_checked.is_none_or(|t| now.duration_since(t) >= SPACE_CHECK_EVERY) {
            space_checked = Some(now);
            let checked = shared.space.check();
            let full = node.replicator().storage_full();
            if let Err(e) = &checked
                && !full
            {
                tracing::error!(error = %e, "disk full: serving what is stored, applying nothing until space returns");
            } else if checked.is_ok() && full {
                tracing::info!("disk space is back: catching up");
            }
            node.handle_storage(now, checked.is_err());
        }
        while let Some(action) = node.poll_action() {
            carry_out(
                action,
                &mut node,
                &mut held,
                &endpoint,
                &origins,
                peer_addr.as_deref(),
                &events_tx,
                &shared,
            );
        }
        observe(&node, &origins, &shared);
        let timeout = node.poll_timeout();
        tokio::select! {
            _ = shutdown.changed() => break,
            incoming = endpoint.accept(), if serving => {
                let Some(incoming) = incoming else { break };
                let ip = incoming.remote_address().ip();
                let slot = peer_slots.as_ref().map(|s| s.take(Some(ip)));
                let Some(Ok(slot)) = slot else {
                    metrics::counter!("meridian_connections_refused_total", "listener" => "peer")
                        .increment(1);
                    incoming.refuse();
                    continue;
                };
                let id = node.handle_accepted(Instant::now());
                let task = tokio::spawn(serve_peer(incoming, id, events_tx.clone(), slot));
                held.insert(id, Held { task: Some(task.abort_handle()), ..Held::default() });
            }
            event = events_rx.recv() => {
                let Some(first) = event else { break };
                let mut handled = 0;
                let mut next = Some(first);
                while let Some(ev) = next.take() {
                    handle(&mut node, &mut held, ev, &shared);
                    handled += 1;
                    if handled >= BURST { break }
                    next = events_rx.try_recv().ok();
                }
                node.flush(Instant::now());
                // Readers see the flushed revision now; the stats that go with it follow at once.
                observe(&node, &origins, &shared);
            }
            _ = sleep_until(timeout) => node.handle_timeout(Instant::now()),
        }
    }
    for (_, h) in std::mem::take(&mut held) {
        h.close("shutdown");
    }
    shared.origin_connected.store(false, Ordering::Relaxed);
}

/// Carries out one action of the node.
#[allow(clippy::too_many_arguments)]
fn carry_out<B: Backend>(
    action: Action,
    node: &mut EdgeNode<B>,
    held: &mut BTreeMap<ConnId, Held>,
    endpoint: &quinn::Endpoint,
    origins: &[OriginAddr],
    peer_addr: Option<&str>,
    events: &mpsc::Sender<Event>,
    shared: &EdgeShared,
) {
    match action {
        Action::Dial { conn, to } => {
            let target = match &to {
                Upstream::Origin(i) => origins.get(*i).map(|o| (Ok(o.addr), o.server_name.clone())),
                Upstream::Peer(p) => Some((
                    p.addr.parse::<SocketAddr>().map_err(|_| p.addr.clone()),
                    meridian_net::tls::edge_certificate_name(&p.edge_id),
                )),
            };
            let Some((Ok(addr), server_name)) = target else {
                tracing::debug!(?to, "cannot dial: no such upstream or not an address");
                node.handle_lost(Instant::now(), conn);
                return;
            };
            let task = tokio::spawn(dial(
                endpoint.clone(),
                addr,
                server_name,
                conn,
                events.clone(),
            ));
            held.insert(
                conn,
                Held {
                    task: Some(task.abort_handle()),
                    ..Held::default()
                },
            );
        }
        Action::Close { conn, reason } => {
            if let Some(h) = held.remove(&conn) {
                h.close(reason);
            }
        }
        Action::Send { conn, frame } => {
            let Some(tx) = held.get(&conn).and_then(|h| h.tx.as_ref()) else {
                return;
            };
            let to_origin = node.link_of(conn) == Some(LinkId::ORIGIN);
            let report = to_origin && matches!(frame, Frame::V1(FrameV1::Report { .. }));
            let hello = to_origin && matches!(frame, Frame::V1(FrameV1::Hello { .. }));
            // A full queue means the connection is stuck; the node's silence timeout
            // replaces it.
            let _ = tx.try_send(Out::Control(frame));
            // After the Hello to an origin: where this edge accepts peers, for the directory.
            if hello && let Some(addr) = peer_addr {
                let _ = tx.try_send(Out::Control(
                    FrameV1::PeerAddress { addr: addr.into() }.into(),
                ));
            }
            if report {
                for frame in report_extras(shared) {
                    let _ = tx.try_send(Out::Control(frame));
                }
            }
        }
        Action::Stream {
            conn,
            frames,
            priority,
        } => {
            if let Some(tx) = held.get(&conn).and_then(|h| h.tx.as_ref()) {
                let _ = tx.try_send(Out::Stream(frames, priority));
            }
        }
    }
}

/// What goes to the origin beside each report: the tokens read with here, the revisions
/// service instances applied, the flag exposure
/// counts (cumulative: a lost one is made good by the next), and the reveals not yet in the
/// audit log (sent again until the origin acknowledges them).
fn report_extras(shared: &EdgeShared) -> Vec<Frame> {
    let mut out = Vec::new();
    let uses = shared.token_uses.take(MAX_TOKEN_USES);
    if !uses.is_empty() {
        out.push(FrameV1::TokenUses { uses }.into());
    }
    let reports = shared.applied.take(MAX_APPLIED_PER_FRAME);
    if !reports.is_empty() {
        out.push(FrameV1::Applied { reports }.into());
    }
    if let Some(frame) = shared.exposure_report() {
        out.push(frame.into());
    }
    if let Some(log) = &shared.reveals {
        let records = log.pending(MAX_REVEALS_PER_FRAME);
        if !records.is_empty() {
            out.push(FrameV1::Reveals { records }.into());
        }
    }
    out
}

fn handle<B: Backend>(
    node: &mut EdgeNode<B>,
    held: &mut BTreeMap<ConnId, Held>,
    event: Event,
    shared: &EdgeShared,
) {
    let now = Instant::now();
    match event {
        Event::Connected(id, conn, tx) | Event::Accepted(id, conn, tx) => {
            let Some(h) = held.get_mut(&id) else {
                // Closed by the node meanwhile.
                conn.close(0u32.into(), b"superseded");
                return;
            };
            h.conn = Some(conn);
            h.tx = Some(tx);
            if node.link_of(id).is_some() {
                node.handle_connected(now, id);
            }
        }
        Event::Lost(id, reason) => {
            tracing::debug!(%reason, conn = %id, "connection ended");
            if held.remove(&id).is_some() {
                node.handle_lost(now, id);
            }
        }
        Event::Frame(id, frame) => {
            if !held.contains_key(&id) {
                return;
            }
            // Data keys and reveal acknowledgements count only from the origin: a peer
            // knows this connection's session key too.
            if let Some(frame) = node.handle_frame(now, id, frame)
                && node.link_of(id) == Some(LinkId::ORIGIN)
            {
                secrets_frame(id, frame, held, shared);
            }
        }
        Event::Malformed(id, reason) => {
            if held.contains_key(&id) {
                tracing::warn!(%reason, conn = %id, "rejected a malformed frame");
                node.handle_malformed(now, id);
            }
        }
    }
}

/// The data keys, unwrapped with this connection's session key (held in memory only), and
/// acknowledgements of reveals, from an origin.
fn secrets_frame(id: ConnId, frame: Frame, held: &BTreeMap<ConnId, Held>, shared: &EdgeShared) {
    let Some(h) = held.get(&id) else { return };
    match frame {
        Frame::V1(FrameV1::DataKeys { keys }) => {
            let session = h
                .conn
                .as_ref()
                .and_then(|c| meridian_net::secrets::session_key(c, &shared.edge_id));
            if let Some(session) = session {
                let n = shared.keys.replace(&keys, &session);
                shared.opened.clear();
                tracing::debug!(held = n, "data keys received");
            }
        }
        // The next batch at once, so that a busy edge's reveals reach the audit log as fast
        // as the origin commits them rather than one batch per report.
        Frame::V1(FrameV1::RevealsAck { upto }) => {
            if let Some(log) = &shared.reveals {
                log.ack(upto);
                let records = log.pending(MAX_REVEALS_PER_FRAME);
                if let (false, Some(tx)) = (records.is_empty(), &h.tx) {
                    let _ = tx.try_send(Out::Control(FrameV1::Reveals { records }.into()));
                }
            }
            metrics::gauge!("meridian_edge_reveals_pending")
                .set(shared.reveals.as_ref().map_or(0, |l| l.len()) as f64);
        }
        _ => {}
    }
}

/// Publishes what the node knows into the shared status.
fn observe<B: Backend>(node: &EdgeNode<B>, origins: &[OriginAddr], shared: &EdgeShared) {
    let now = Instant::now();
    shared.observe(node.replicator(), now);
    let links = node
        .replicator()
        .links()
        .into_iter()
        .map(|l| {
            let to = l.upstream.and_then(|u| node.upstream(u));
            let (kind, name) = match &to {
                Some(Upstream::Origin(i)) => (
                    "origin",
                    origins
                        .get(*i)
                        .map(|o| o.addr.to_string())
                        .unwrap_or_default(),
                ),
                Some(Upstream::Peer(p)) => ("peer", format!("{} ({})", p.edge_id, p.addr)),
                None if l.link == LinkId::ORIGIN => ("origin", String::new()),
                None => ("peer", String::new()),
            };
            UpstreamStatus {
                link: l.link.index(),
                kind,
                upstream: name,
                state: l.state,
                standby: l.standby,
                offered_revision: l.offered.map(|r| r.0),
            }
        })
        .collect();
    shared.set_upstreams(links, node.peers().len(), node.serving().edges().count());
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes what the node sends on one connection: control frames on its control stream,
/// streams each on their own task so a large snapshot never holds up a newer head.
fn spawn_writer(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
) -> (mpsc::Sender<Out>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Out>(CONN_QUEUE);
    let task = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Control(frame) => {
                    if write_frame(&mut send, &frame).await.is_err() {
                        break;
                    }
                }
                Out::Stream(frames, priority) => {
                    let c = conn.clone();
                    // A failed stream means a failed connection; the peer reconnects and asks
                    // again from its own revision.
                    tokio::spawn(async move {
                        let _ = send_uni(&c, &frames, priority).await;
                    });
                }
            }
        }
    });
    (tx, task)
}

/// Reads frames from `recv` into the node until the stream ends; a bad frame closes `conn`.
async fn read_control(
    conn: &quinn::Connection,
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    id: ConnId,
    events: &mpsc::Sender<Event>,
) -> String {
    loop {
        match read_frame(&mut recv, &mut decoder).await {
            Ok(Some(frame)) => {
                if events.send(Event::Frame(id, frame)).await.is_err() {
                    return "shutdown".into();
                }
            }
            Ok(None) => return "closed".into(),
            Err(meridian_net::NetError::Read(e)) => return e.to_string(),
            Err(e) => {
                let _ = events.send(Event::Malformed(id, e.to_string())).await;
                conn.close(2u32.into(), b"bad frame");
                return "bad frame".into();
            }
        }
    }
}

async fn dial(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    id: ConnId,
    events: mpsc::Sender<Event>,
) {
    let connected = match endpoint.connect(addr, &server_name) {
        Ok(connecting) => connecting.await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let conn = match connected {
        Ok(c) => c,
        Err(e) => {
            let _ = events.send(Event::Lost(id, e)).await;
            return;
        }
    };
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(Event::Lost(id, e.to_string())).await;
            return;
        }
    };
    let (tx, writer) = spawn_writer(conn.clone(), send);
    if events
        .send(Event::Connected(id, conn.clone(), tx))
        .await
        .is_err()
    {
        return;
    }
    // Deltas and snapshots arrive on unidirectional streams, each read by its own task.
    let uni_conn = conn.clone();
    let uni_events = events.clone();
    let uni = tokio::spawn(async move {
        while let Ok(mut stream) = uni_conn.accept_uni().await {
            let ev = uni_events.clone();
            tokio::spawn(async move {
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
                loop {
                    match read_frame(&mut stream, &mut decoder).await {
                        Ok(Some(frame)) => {
                            if ev.send(Event::Frame(id, frame)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) | Err(meridian_net::NetError::Read(_)) => return,
                        Err(e) => {
                            let _ = ev.send(Event::Malformed(id, e.to_string())).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let reason = read_control(&conn, recv, decoder, id, &events).await;
    uni.abort();
    writer.abort();
    let _ = events.send(Event::Lost(id, reason)).await;
}

/// Serves a peer that dialed this edge: its first frame must be a Hello whose edge id its
/// certificate was issued for (an edge speaks only for itself, and only edges relay).
async fn serve_peer(
    incoming: quinn::Incoming,
    id: ConnId,
    events: mpsc::Sender<Event>,
    _slot: Slot,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("meridian_edge_peer_handshake_failures_total").increment(1);
            let _ = events.send(Event::Lost(id, e.to_string())).await;
            return;
        }
    };
    let (send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(Event::Lost(id, e.to_string())).await;
            return;
        }
    };
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let hello = match read_frame(&mut recv, &mut decoder).await {
        Ok(Some(frame @ Frame::V1(FrameV1::Hello { .. }))) => frame,
        _ => {
            conn.close(3u32.into(), b"hello first");
            let _ = events.send(Event::Lost(id, "no hello".into())).await;
            return;
        }
    };
    if let Frame::V1(FrameV1::Hello { edge_id, .. }) = &hello
        && !meridian_net::tls::is_certified_edge(&conn, edge_id)
    {
        metrics::counter!("meridian_edge_peer_refusals_total").increment(1);
        tracing::warn!(claimed = %edge_id, "peer's edge id does not match its certificate");
        conn.close(3u32.into(), b"edge_id does not match the certificate");
        let _ = events.send(Event::Lost(id, "impersonation".into())).await;
        return;
    }
    let (tx, writer) = spawn_writer(conn.clone(), send);
    if events
        .send(Event::Accepted(id, conn.clone(), tx))
        .await
        .is_err()
        || events.send(Event::Frame(id, hello)).await.is_err()
    {
        return;
    }
    // What was read past the Hello is still in the decoder.
    let reason = read_control(&conn, recv, decoder, id, &events).await;
    writer.abort();
    let _ = events.send(Event::Lost(id, reason)).await;
}
