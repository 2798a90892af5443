//! The QUIC client shell around the [`Replicator`]: dials the origin with mutual TLS, feeds
//! every frame from the control stream and from unidirectional delta streams into the
//! replicator, makes applied revisions durable after each burst, and carries out what the
//! replicator asks. It decides nothing itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use meridian_net::quic::{read_frame, write_frame};
use meridian_protocol::frame::{DEFAULT_MAX_FRAME_BYTES, MAX_REVEALS_PER_FRAME, MAX_TOKEN_USES};
use meridian_protocol::{Frame, FrameDecoder, FrameV1};
use meridian_store::Backend;
use tokio::sync::{mpsc, watch};

use crate::shared::EdgeShared;
use meridian_core::replicator::{Output, Replicator};

/// Bound on events from connection tasks to the replicator loop.
const EVENT_QUEUE: usize = 8192;
/// Bound on control frames waiting to be written.
const CONTROL_QUEUE: usize = 1024;
/// Most events handled before the applied revisions are flushed and published.
const BURST: usize = 512;
/// How often the data folder's free space is looked at (before a burst, at most this often;
/// heartbeats wake the loop at least every heartbeat interval).
const SPACE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

enum Event {
    Connected(quinn::Connection, mpsc::Sender<Frame>),
    ConnectFailed(String),
    Frame(Frame),
    Malformed(String),
    Closed,
}

/// One upstream the shell can dial: an address and the TLS server name it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// QUIC address.
    pub addr: SocketAddr,
    /// Expected TLS server name.
    pub server_name: String,
}

/// The shell's view of one replicator link: its established connection (with the dial it
/// came from) and the dials in progress, at most the two most recent (see
/// [`Output::Connect`]). `generation` changes on every `Disconnect`, so that events of
/// connections and dials from before it are recognised and dropped.
#[derive(Default)]
struct LinkSlot {
    generation: u64,
    control: Option<(quinn::Connection, mpsc::Sender<Frame>, u64)>,
    dialing: Vec<(u64, tokio::task::AbortHandle)>,
}

/// At most this many dials of one link run at once.
const MAX_DIALS_PER_LINK: usize = 2;

/// Runs the replicator until `shutdown` turns true. `upstreams` lists origins first, then
/// peers, in the order the replicator's config counts them.
pub async fn run<B: Backend>(
    mut rep: Replicator<B>,
    endpoint: quinn::Endpoint,
    upstreams: Vec<Upstream>,
    shared: Arc<EdgeShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (events_tx, mut events_rx) = mpsc::channel::<(LinkGen, Event)>(EVENT_QUEUE);
    let mut slots: Vec<LinkSlot> = (0..rep.link_count()).map(|_| LinkSlot::default()).collect();
    let mut next_dial = 0u64;
    let mut space_checked: Option<Instant> = None;
    loop {
        // Before taking on more frames: is there room to persist them?
        let now = Instant::now();
        if space_checked.is_none_or(|t| now.duration_since(t) >= SPACE_CHECK_EVERY) {
            space_checked = Some(now);
            let checked = shared.space.check();
            if let Err(e) = &checked
                && !rep.storage_full()
            {
                tracing::error!(error = %e, "disk full: serving what is stored, applying nothing until space returns");
            } else if checked.is_ok() && rep.storage_full() {
                tracing::info!("disk space is back: catching up");
            }
            rep.handle_storage(now, checked.is_err());
        }
        while let Some(output) = rep.poll_output() {
            match output {
                Output::Connect { link, upstream } => {
                    let (Some(up), Some(slot)) =
                        (upstreams.get(upstream).cloned(), slots.get_mut(link))
                    else {
                        rep.handle_disconnected(Instant::now(), link);
                        continue;
                    };
                    while slot.dialing.len() >= MAX_DIALS_PER_LINK {
                        let (_, oldest) = slot.dialing.remove(0);
                        oldest.abort();
                    }
                    next_dial += 1;
                    let tag = LinkGen {
                        link,
                        generation: slot.generation,
                        dial: next_dial,
                    };
                    let task = tokio::spawn(dial(endpoint.clone(), up, tag, events_tx.clone()));
                    slot.dialing.push((next_dial, task.abort_handle()));
                }
                Output::Disconnect { link } => {
                    if let Some(slot) = slots.get_mut(link) {
                        slot.generation += 1;
                        for (_, task) in slot.dialing.drain(..) {
                            task.abort();
                        }
                        if let Some((conn, _, _)) = slot.control.take() {
                            conn.close(0u32.into(), b"reconnecting");
                        }
                    }
                }
                Output::AbandonDials { link } => {
                    if let Some(slot) = slots.get_mut(link) {
                        for (_, task) in slot.dialing.drain(..) {
                            task.abort();
                        }
                    }
                }
                Output::Send { link, frame } => {
                    if let Some((_, tx, _)) = slots.get(link).and_then(|s| s.control.as_ref()) {
                        // Beside each report to the origin: the tokens read with here.
                        let report = matches!(frame, Frame::V1(FrameV1::Report { .. }));
                        // A full control queue means the link is stuck; the replicator's
                        // silence timeout will replace it.
                        let _ = tx.try_send(frame);
                        let uses = if report {
                            shared.token_uses.take(MAX_TOKEN_USES)
                        } else {
                            Vec::new()
                        };
                        if !uses.is_empty() {
                            let _ = tx.try_send(FrameV1::TokenUses { uses }.into());
                        }
                        // And the flag exposure counts (cumulative: a lost one is made good
                        // by the next).
                        if report && let Some(frame) = shared.exposure_report() {
                            let _ = tx.try_send(frame.into());
                        }
                        // And the reveals not yet in the audit log (sent again until the
                        // origin acknowledges them).
                        if report && let Some(log) = &shared.reveals {
                            let records = log.pending(MAX_REVEALS_PER_FRAME);
                            if !records.is_empty() {
                                let _ = tx.try_send(FrameV1::Reveals { records }.into());
                            }
                        }
                    }
                }
            }
        }
        shared.observe(&rep, Instant::now());
        let timeout = rep.poll_timeout();
        tokio::select! {
            _ = shutdown.changed() => break,
            event = events_rx.recv() => {
                let Some(first) = event else { break };
                let mut handled = 0;
                let mut next = Some(first);
                while let Some((tag, ev)) = next.take() {
                    if let Some(slot) = slots.get_mut(tag.link) {
                        handle(&mut rep, slot, tag, ev, &shared);
                    }
                    handled += 1;
                    if handled >= BURST { break }
                    next = events_rx.try_recv().ok();
                }
                rep.flush(Instant::now());
                // Readers see the flushed revision now; the stats that go with it follow at once.
                shared.observe(&rep, Instant::now());
            }
            _ = sleep_until(timeout) => rep.handle_timeout(Instant::now()),
        }
    }
    for slot in &mut slots {
        for (_, task) in slot.dialing.drain(..) {
            task.abort();
        }
        if let Some((conn, _, _)) = slot.control.take() {
            conn.close(0u32.into(), b"shutdown");
        }
    }
    shared.origin_connected.store(false, Ordering::Relaxed);
}

/// Which link, which of its generations and which dial an event belongs to.
#[derive(Debug, Clone, Copy)]
struct LinkGen {
    link: usize,
    generation: u64,
    dial: u64,
}

fn handle<B: Backend>(
    rep: &mut Replicator<B>,
    slot: &mut LinkSlot,
    tag: LinkGen,
    event: Event,
    shared: &EdgeShared,
) {
    let now = Instant::now();
    let link = tag.link;
    if tag.generation != slot.generation {
        if let Event::Connected(conn, _) = event {
            conn.close(0u32.into(), b"superseded");
        }
        return;
    }
    let established = slot
        .control
        .as_ref()
        .is_some_and(|(_, _, d)| *d == tag.dial);
    match event {
        Event::Connected(conn, tx) => {
            let pending = slot.dialing.iter().any(|(d, _)| *d == tag.dial);
            if !pending {
                conn.close(0u32.into(), b"superseded");
                return;
            }
            // The first dial to complete wins; the others are abandoned, and so is a
            // connection that had not answered when this dial started beside it.
            for (d, task) in slot.dialing.drain(..) {
                if d != tag.dial {
                    task.abort();
                }
            }
            if let Some((old, _, _)) = slot.control.take() {
                old.close(0u32.into(), b"replaced");
            }
            slot.control = Some((conn, tx, tag.dial));
            rep.handle_connected(now, link);
        }
        Event::ConnectFailed(reason) => {
            tracing::debug!(%reason, link, "connecting upstream failed");
            slot.dialing.retain(|(d, _)| *d != tag.dial);
            if slot.dialing.is_empty() && slot.control.is_none() {
                rep.handle_disconnected(now, link);
            }
        }
        // Secrets are the shell's: the data keys, unwrapped with this connection's session
        // key (held in memory only), and acknowledgements of reveals.
        Event::Frame(Frame::V1(FrameV1::DataKeys { keys })) if established => {
            let session = slot
                .control
                .as_ref()
                .and_then(|(conn, _, _)| meridian_net::secrets::session_key(conn, &shared.edge_id));
            if let Some(session) = session {
                let held = shared.keys.replace(&keys, &session);
                shared.opened.clear();
                tracing::debug!(held, "data keys received");
            }
        }
        // The next batch at once, so that a busy edge's reveals reach the audit log as fast
        // as the origin commits them rather than one batch per report.
        Event::Frame(Frame::V1(FrameV1::RevealsAck { upto })) if established => {
            if let Some(log) = &shared.reveals {
                log.ack(upto);
                let records = log.pending(MAX_REVEALS_PER_FRAME);
                if let (false, Some((_, tx, _))) = (records.is_empty(), &slot.control) {
                    let _ = tx.try_send(FrameV1::Reveals { records }.into());
                }
            }
            metrics::gauge!("meridian_edge_reveals_pending")
                .set(shared.reveals.as_ref().map_or(0, |l| l.len()) as f64);
        }
        Event::Frame(frame) if established => rep.handle_frame(now, link, frame),
        Event::Malformed(reason) if established => {
            tracing::warn!(%reason, "rejected a malformed frame");
            rep.handle_malformed(now, link);
        }
        Event::Closed if established => {
            slot.control = None;
            rep.handle_disconnected(now, link);
        }
        Event::Frame(_) | Event::Malformed(_) | Event::Closed => {}
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn dial(
    endpoint: quinn::Endpoint,
    upstream: Upstream,
    generation: LinkGen,
    events: mpsc::Sender<(LinkGen, Event)>,
) {
    let conn = match endpoint.connect(upstream.addr, &upstream.server_name) {
        Ok(connecting) => match connecting.await {
            Ok(c) => c,
            Err(e) => {
                let _ = events
                    .send((generation, Event::ConnectFailed(e.to_string())))
                    .await;
                return;
            }
        },
        Err(e) => {
            let _ = events
                .send((generation, Event::ConnectFailed(e.to_string())))
                .await;
            return;
        }
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            let _ = events
                .send((generation, Event::ConnectFailed(e.to_string())))
                .await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Frame>(CONTROL_QUEUE);
    if events
        .send((generation, Event::Connected(conn.clone(), tx)))
        .await
        .is_err()
    {
        return;
    }
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_frame(&mut send, &frame).await.is_err() {
                break;
            }
        }
    });
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
                            if ev.send((generation, Event::Frame(frame))).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(meridian_net::NetError::Read(_)) => return,
                        Err(e) => {
                            let _ = ev.send((generation, Event::Malformed(e.to_string()))).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    loop {
        match read_frame(&mut recv, &mut decoder).await {
            Ok(Some(frame)) => {
                if events
                    .send((generation, Event::Frame(frame)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(None) | Err(meridian_net::NetError::Read(_)) => break,
            Err(e) => {
                let _ = events
                    .send((generation, Event::Malformed(e.to_string())))
                    .await;
                conn.close(2u32.into(), b"bad frame");
                break;
            }
        }
    }
    uni.abort();
    let _ = events.send((generation, Event::Closed)).await;
}
