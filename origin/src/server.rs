//! The QUIC shell around the [`Distributor`]: accepts mutual-TLS connections from edges, reads
//! their control stream into the distributor, and carries out what it says to transmit.
//! It decides nothing itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meridian_net::QuicTuning;
use meridian_net::quic::{read_frame, send_uni, write_frame};
use meridian_net::slots::{Slot, Slots};
use meridian_protocol::applied::MAX_APPLIED_PER_FRAME;
use meridian_protocol::directory::{EDGES_ENV, EdgeRecord};
use meridian_protocol::frame::{DEFAULT_MAX_FRAME_BYTES, MAX_TOKEN_USES};
use meridian_protocol::{Address, Frame, FrameDecoder, FrameV1, Revision};
use meridian_store::{Backend, SignedState};
use tokio::sync::{mpsc, watch};

use crate::drift::KnownEdges;
use meridian_core::apply::OriginCore;
use meridian_core::distributor::{ConnId, Distributor, Transmit};

/// Bound on queued transmits per connection; a connection that falls this far behind is closed
/// (it reconnects and catches up from its own revision).
const CONN_QUEUE: usize = 4096;
/// Bound on events from all connections to the distributor loop.
const EVENT_QUEUE: usize = 8192;

enum Event {
    Connected(ConnId, quinn::Connection, mpsc::Sender<Transmit>),
    /// The key data keys are wrapped with for this connection's edge.
    Session(ConnId, [u8; 32]),
    /// The edge's reveals up to this sequence number are in the audit log.
    RevealsRecorded(ConnId, u64),
    /// Committing the edge's reveals failed; they come again with its next report.
    RevealsFailed(ConnId),
    /// The directory record of this edge was committed (or not): it may be written again.
    DirectoryDone(String),
    Frame(ConnId, Frame),
    Disconnected(ConnId),
}

/// Where what edges tell the origin goes: their drift reports, and the tokens read with.
pub struct EdgeReports {
    /// Edges heard from, as the distributor last saw them.
    pub edges: Arc<Mutex<KnownEdges>>,
    /// When tokens were last used.
    pub last_used: crate::http::tokens::LastUsed,
    /// Flag exposure counts heard, until committed.
    pub exposures: crate::exposures::Pending,
    /// Data keys to send edges (none: secrets are not configured).
    pub keyring: Option<Arc<crate::secrets::Keyring>>,
    /// Where edges' reveals are committed to the audit log.
    pub cluster: Option<crate::raft::cluster::Cluster>,
    /// Which revision service instances applied, as edges pass them on.
    pub applied: Arc<Mutex<crate::applied::AppliedTable>>,
}

/// How often what each edge may hold of the data keys is looked at again.
const DATA_KEYS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection's data-key session: its key, and the digest of what it was last sent.
struct Session {
    key: [u8; 32],
    sent: Option<[u8; 32]>,
}

/// Runs until `shutdown` turns true.
pub async fn run<B: Backend + 'static>(
    endpoint: quinn::Endpoint,
    core: Arc<Mutex<OriginCore<B>>>,
    mut commits: watch::Receiver<Revision>,
    mut distributor: Distributor,
    reports: EdgeReports,
    limits: QuicTuning,
    mut shutdown: watch::Receiver<bool>,
) {
    let EdgeReports {
        edges: edges_out,
        last_used,
        exposures,
        keyring,
        cluster,
        applied,
    } = reports;
    let mut sessions: BTreeMap<ConnId, Session> = BTreeMap::new();
    let mut revealing: std::collections::BTreeSet<ConnId> = std::collections::BTreeSet::new();
    let mut announcing: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut keys_tick = tokio::time::interval(DATA_KEYS_EVERY);
    keys_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let mut writers: BTreeMap<ConnId, mpsc::Sender<Transmit>> = BTreeMap::new();
    let mut connections: BTreeMap<ConnId, quinn::Connection> = BTreeMap::new();
    let mut next_conn = ConnId::FIRST;
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_client);
    loop {
        let timeout = distributor.poll_timeout();
        tokio::select! {
            _ = shutdown.changed() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let ip = incoming.remote_address().ip();
                let Ok(slot) = slots.take(Some(ip)) else {
                    metrics::counter!("meridian_connections_refused_total", "listener" => "quic")
                        .increment(1);
                    tracing::debug!(%ip, "QUIC connection limit reached; refusing a connection");
                    incoming.refuse();
                    continue;
                };
                let id = next_conn;
                next_conn = id.next();
                tokio::spawn(connection(incoming, id, events_tx.clone(), slot));
            }
            Some(event) = events_rx.recv() => {
                let now = Instant::now();
                let guard = core.lock().unwrap_or_else(|e| e.into_inner());
                let src: &SignedState<B> = guard.state();
                match event {
                    Event::Connected(id, conn, tx) => {
                        writers.insert(id, tx);
                        connections.insert(id, conn);
                        distributor.handle_connect(now, id);
                    }
                    // Reads at the edge, for the tokens' last-used time: only tokens this
                    // node holds a record of, so a report cannot grow the table.
                    Event::Frame(_, Frame::V1(FrameV1::TokenUses { uses })) => {
                        let index = src.reader().read().unwrap_or_else(|e| e.into_inner()).auth.clone();
                        for (id, ms) in uses.into_iter().take(MAX_TOKEN_USES) {
                            let id = meridian_protocol::auth::TokenId(id);
                            if index.has_record(id) {
                                last_used.touch(id, ms.min(meridian_net::auth::now_ms()));
                            }
                        }
                    }
                    // Exposure counts, under the edge id and region its Hello gave (an
                    // edge can only ever raise its own counters).
                    Event::Frame(id, Frame::V1(FrameV1::Exposures { boot, mut counts })) => {
                        if let Some(edge) = distributor.edge(id) {
                            counts.truncate(meridian_protocol::flags::exposure::MAX_EXPOSURE_ENTRIES);
                            let source = meridian_protocol::flags::exposure::Source {
                                edge: edge.edge_id.clone(),
                                boot,
                            };
                            exposures.merge(source, &edge.region, counts);
                        }
                    }
                    // What service instances applied, under the edge id its certificate
                    // names; each report is checked again (an edge is not trusted with names).
                    Event::Frame(id, Frame::V1(FrameV1::Applied { reports })) => {
                        if let Some(edge) = distributor.edge(id) {
                            let now_ms = meridian_net::auth::now_ms();
                            let mut table = applied.lock().unwrap_or_else(|e| e.into_inner());
                            for mut r in reports.into_iter().take(MAX_APPLIED_PER_FRAME) {
                                if r.validate().is_ok() {
                                    r.at_ms = r.at_ms.min(now_ms);
                                    table.insert(r, edge.edge_id.clone());
                                }
                            }
                        }
                    }
                    Event::Session(id, key) => {
                        sessions.insert(id, Session { key, sent: None });
                    }
                    // Reveals at the edge, committed to the audit log under the edge id its
                    // certificate names; one commit per edge at a time.
                    Event::Frame(id, Frame::V1(FrameV1::Reveals { mut records })) => {
                        if let (Some(edge), Some(cluster)) = (distributor.edge(id), &cluster)
                            && !records.is_empty()
                            && revealing.insert(id)
                        {
                            records.truncate(meridian_protocol::frame::MAX_REVEALS_PER_FRAME);
                            tokio::spawn(commit_reveals(
                                cluster.clone(),
                                id,
                                edge.edge_id.clone(),
                                records,
                                events_tx.clone(),
                            ));
                        }
                    }
                    Event::RevealsRecorded(id, upto) => {
                        revealing.remove(&id);
                        if let Some(tx) = writers.get(&id) {
                            let _ = tx.try_send(Transmit::Control(FrameV1::RevealsAck { upto }.into()));
                        }
                    }
                    Event::RevealsFailed(id) => {
                        revealing.remove(&id);
                    }
                    // Where the edge accepts its peers, into the directory of edges under the
                    // edge id its certificate names, when the directory says otherwise; one
                    // commit per edge at a time.
                    Event::Frame(id, Frame::V1(FrameV1::PeerAddress { addr })) => {
                        if let (Some(edge), Some(cluster)) = (distributor.edge(id), &cluster)
                            && let Some(record) = directory_change(src, edge, addr)
                            && announcing.insert(edge.edge_id.clone())
                        {
                            tokio::spawn(commit_directory(
                                cluster.clone(),
                                edge.edge_id.clone(),
                                record,
                                events_tx.clone(),
                            ));
                        }
                    }
                    Event::DirectoryDone(edge) => {
                        announcing.remove(&edge);
                    }
                    Event::Frame(id, frame) => {
                        let hello = matches!(frame, Frame::V1(FrameV1::Hello { .. }));
                        distributor.handle_frame(now, id, frame, src);
                        if hello {
                            send_data_keys(keyring.as_deref(), src, &distributor, &writers, &mut sessions, Some(id));
                        }
                    }
                    Event::Disconnected(id) => {
                        writers.remove(&id);
                        connections.remove(&id);
                        sessions.remove(&id);
                        revealing.remove(&id);
                        distributor.handle_disconnect(id);
                    }
                }
            }
            changed = commits.changed() => {
                if changed.is_err() { break }
                let guard = core.lock().unwrap_or_else(|e| e.into_inner());
                distributor.handle_commit(Instant::now(), guard.state());
            }
            _ = keys_tick.tick() => {
                let guard = core.lock().unwrap_or_else(|e| e.into_inner());
                send_data_keys(keyring.as_deref(), guard.state(), &distributor, &writers, &mut sessions, None);
            }
            _ = sleep_until(timeout) => {
                let guard = core.lock().unwrap_or_else(|e| e.into_inner());
                distributor.handle_timeout(Instant::now(), guard.state());
            }
        }
        while let Some((id, transmit)) = distributor.poll_transmit() {
            let Some(tx) = writers.get(&id) else { continue };
            if tx.try_send(transmit).is_err() {
                // It reconnects and catches up from its own revision; its read loop ends with
                // the connection and reports the disconnect.
                tracing::warn!(conn = %id, "edge is not keeping up; closing its connection");
                writers.remove(&id);
                if let Some(conn) = connections.remove(&id) {
                    conn.close(4u32.into(), b"not keeping up");
                }
                distributor.handle_disconnect(id);
            }
        }
        if let Ok(mut e) = edges_out.lock() {
            e.update(distributor.edges());
        }
    }
    endpoint.close(0u32.into(), b"shutdown");
}

/// Sends each edge with a session (or only `only`) the data keys it may hold, when they
/// differ from what it was last sent: on its Hello, and whenever keys or its grants change.
fn send_data_keys<B: Backend>(
    keyring: Option<&crate::secrets::Keyring>,
    src: &SignedState<B>,
    distributor: &Distributor,
    writers: &BTreeMap<ConnId, mpsc::Sender<Transmit>>,
    sessions: &mut BTreeMap<ConnId, Session>,
    only: Option<ConnId>,
) {
    let Some(keyring) = keyring else { return };
    let published = src.reader();
    let p = published.read().unwrap_or_else(|e| e.into_inner());
    for (id, session) in sessions.iter_mut() {
        if only.is_some_and(|o| o != *id) {
            continue;
        }
        let (Some(edge), Some(tx)) = (distributor.edge(*id), writers.get(id)) else {
            continue;
        };
        let principal = p.auth.edge(&edge.edge_id);
        let (digest, records) = crate::secrets::edge_records(&p.state, &principal);
        if session.sent == Some(digest) {
            continue;
        }
        let keys = crate::secrets::session_keys(keyring, &records, &session.key);
        let n = keys.len();
        if tx
            .try_send(Transmit::Control(FrameV1::DataKeys { keys }.into()))
            .is_ok()
        {
            session.sent = Some(digest);
            tracing::debug!(edge = %edge.edge_id, keys = n, "sent data keys");
        }
    }
}

/// The directory record to commit for `edge` announcing `addr`, if the published state does
/// not hold it already (`None` too for an address that is not `host:port`).
fn directory_change<B: Backend>(
    src: &SignedState<B>,
    edge: &meridian_core::distributor::EdgeInfo,
    addr: String,
) -> Option<EdgeRecord> {
    if !meridian_protocol::directory::valid_peer_addr(&addr) {
        tracing::info!(edge = %edge.edge_id, "refused a peer address that is not host:port");
        return None;
    }
    let record = EdgeRecord {
        region: edge.region.clone(),
        addr,
    };
    let published = src.reader();
    let p = published.read().unwrap_or_else(|e| e.into_inner());
    let held = meridian_protocol::directory::edges(&p.state)
        .into_iter()
        .any(|(id, r)| id == edge.edge_id && r == record);
    (!held).then_some(record)
}

/// Commits an edge's directory record.
async fn commit_directory(
    cluster: crate::raft::cluster::Cluster,
    edge: String,
    record: EdgeRecord,
    events: mpsc::Sender<Event>,
) {
    let address = Address::system(EDGES_ENV, &edge);
    let value = serde_json::to_string(&record).map(Into::into);
    if let (Ok(address), Ok(value)) = (address, value) {
        let proposal = meridian_core::apply::Proposal {
            command: meridian_core::apply::Command::Put {
                address,
                value,
                expect_version: None,
            },
            meta: meridian_core::history::WriteMeta {
                time_ms: meridian_net::auth::now_ms(),
                actor: format!("edge:{edge}"),
                reason: Some("peer address announced".into()),
                ..Default::default()
            },
        };
        match cluster.write(proposal).await {
            Ok(_) => tracing::info!(%edge, addr = %record.addr, "edge directory updated"),
            Err(e) => tracing::warn!(%edge, error = %e, "edge directory not updated yet"),
        }
    } else {
        tracing::info!(%edge, "edge id is not a valid directory key");
    }
    let _ = events.send(Event::DirectoryDone(edge)).await;
}

/// Commits an edge's reveals to the audit log and reports how far they got.
async fn commit_reveals(
    cluster: crate::raft::cluster::Cluster,
    id: ConnId,
    edge: String,
    records: Vec<meridian_protocol::secrets::RevealRecord>,
    events: mpsc::Sender<Event>,
) {
    let upto = records.iter().map(|r| r.seq).max().unwrap_or(0);
    let proposal = meridian_core::apply::Proposal {
        command: meridian_core::apply::Command::Reveals {
            edge: edge.clone(),
            records,
        },
        meta: meridian_core::history::WriteMeta {
            time_ms: meridian_net::auth::now_ms(),
            actor: format!("edge:{edge}"),
            ..Default::default()
        },
    };
    let event = match cluster.write(proposal).await {
        Ok(_) => {
            metrics::counter!("meridian_secret_reveals_total", "node" => "edge").increment(1);
            Event::RevealsRecorded(id, upto)
        }
        Err(e) => {
            tracing::warn!(%edge, error = %e, "an edge's reveals were not recorded yet");
            Event::RevealsFailed(id)
        }
    };
    let _ = events.send(event).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn connection(
    incoming: quinn::Incoming,
    id: ConnId,
    events: mpsc::Sender<Event>,
    _slot: Slot,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("meridian_origin_handshake_failures_total").increment(1);
            tracing::info!(error = %e, "edge handshake failed");
            return;
        }
    };
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "edge closed before opening its control stream");
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Transmit>(CONN_QUEUE);
    if events
        .send(Event::Connected(id, conn.clone(), tx))
        .await
        .is_err()
    {
        return;
    }
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        while let Some(t) = rx.recv().await {
            match t {
                Transmit::Control(frame) => {
                    if write_frame(&mut send, &frame).await.is_err() {
                        break;
                    }
                }
                Transmit::Stream(frames) => {
                    // Each stream goes out on its own task so a large snapshot never holds up
                    // a newer head or a small delta behind it.
                    let c = writer_conn.clone();
                    tokio::spawn(async move {
                        // A failed stream means a failed connection; the edge reconnects and
                        // asks again from its own revision.
                        let priority = meridian_core::distributor::stream_priority(&frames);
                        let _ = send_uni(&c, &frames, priority).await;
                    });
                }
            }
        }
    });
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    loop {
        match read_frame(&mut recv, &mut decoder).await {
            Ok(Some(frame)) => {
                if let Frame::V1(meridian_protocol::FrameV1::Hello { edge_id, .. }) = &frame
                    && !meridian_net::tls::is_certified_edge(&conn, edge_id)
                {
                    // An edge speaks only for itself: its drift reports and acknowledgements
                    // are trusted as the certificate's edge.
                    metrics::counter!("meridian_origin_impersonation_refusals_total").increment(1);
                    tracing::warn!(conn = %id, claimed = %edge_id, "edge id does not match its certificate");
                    conn.close(3u32.into(), b"edge_id does not match the certificate");
                    break;
                }
                if let Frame::V1(meridian_protocol::FrameV1::Hello { edge_id, .. }) = &frame
                    && let Some(key) = meridian_net::secrets::session_key(&conn, edge_id)
                    && events.send(Event::Session(id, key)).await.is_err()
                {
                    break;
                }
                if events.send(Event::Frame(id, frame)).await.is_err() {
                    break;
                }
            }
            Ok(None) | Err(meridian_net::NetError::Read(_)) => break,
            Err(e) => {
                metrics::counter!("meridian_origin_bad_frames_total").increment(1);
                tracing::info!(conn = %id, error = %e, "closing edge connection");
                conn.close(2u32.into(), b"bad frame");
                break;
            }
        }
    }
    writer.abort();
    let _ = events.send(Event::Disconnected(id)).await;
}
