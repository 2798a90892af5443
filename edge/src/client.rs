//! The QUIC client shell around the [`Replicator`]: dials the origin with mutual TLS, feeds
//! every frame from the control stream and from unidirectional delta streams into the
//! replicator, makes applied revisions durable after each burst, and carries out what the
//! replicator asks. It decides nothing itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use meridian_net::quic::{read_frame, write_frame};
use meridian_protocol::frame::DEFAULT_MAX_FRAME_BYTES;
use meridian_protocol::{Frame, FrameDecoder};
use meridian_store::Backend;
use tokio::sync::{mpsc, watch};

use crate::replicator::{Output, Replicator};
use crate::shared::EdgeShared;

/// Bound on events from connection tasks to the replicator loop.
const EVENT_QUEUE: usize = 8192;
/// Bound on control frames waiting to be written.
const CONTROL_QUEUE: usize = 1024;
/// Most events handled before the applied revisions are flushed and published.
const BURST: usize = 512;

enum Event {
    Connected(quinn::Connection, mpsc::Sender<Frame>),
    ConnectFailed(String),
    Frame(Frame),
    Malformed(String),
    Closed,
}

/// Runs the replicator until `shutdown` turns true.
pub async fn run<B: Backend>(
    mut rep: Replicator<B>,
    endpoint: quinn::Endpoint,
    origins: Vec<SocketAddr>,
    server_name: String,
    shared: Arc<EdgeShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (events_tx, mut events_rx) = mpsc::channel::<(u64, Event)>(EVENT_QUEUE);
    let mut generation = 0u64;
    let mut control: Option<(quinn::Connection, mpsc::Sender<Frame>)> = None;
    loop {
        while let Some(output) = rep.poll_output() {
            match output {
                Output::Connect { origin } => {
                    generation += 1;
                    let addr = origins[origin % origins.len().max(1)];
                    tokio::spawn(dial(
                        endpoint.clone(),
                        addr,
                        server_name.clone(),
                        generation,
                        events_tx.clone(),
                    ));
                }
                Output::Disconnect => {
                    generation += 1;
                    if let Some((conn, _)) = control.take() {
                        conn.close(0u32.into(), b"reconnecting");
                    }
                }
                Output::Send(frame) => {
                    if let Some((_, tx)) = &control {
                        // A full control queue means the link is stuck; the replicator's
                        // silence timeout will replace it.
                        let _ = tx.try_send(frame);
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
                while let Some((g, ev)) = next.take() {
                    handle(&mut rep, &mut control, g, generation, ev);
                    handled += 1;
                    if handled >= BURST { break }
                    next = events_rx.try_recv().ok();
                }
                rep.flush(Instant::now());
            }
            _ = sleep_until(timeout) => rep.handle_timeout(Instant::now()),
        }
    }
    if let Some((conn, _)) = control.take() {
        conn.close(0u32.into(), b"shutdown");
    }
    shared.origin_connected.store(false, Ordering::Relaxed);
}

fn handle<B: Backend>(
    rep: &mut Replicator<B>,
    control: &mut Option<(quinn::Connection, mpsc::Sender<Frame>)>,
    event_gen: u64,
    current_gen: u64,
    event: Event,
) {
    let now = Instant::now();
    if event_gen != current_gen {
        if let Event::Connected(conn, _) = event {
            conn.close(0u32.into(), b"superseded");
        }
        return;
    }
    match event {
        Event::Connected(conn, tx) => {
            *control = Some((conn, tx));
            rep.handle_connected(now);
        }
        Event::ConnectFailed(reason) => {
            tracing::debug!(%reason, "connecting to origin failed");
            rep.handle_disconnected(now);
        }
        Event::Frame(frame) => rep.handle_frame(now, frame),
        Event::Malformed(reason) => {
            tracing::warn!(%reason, "rejected a malformed frame");
            rep.handle_malformed(now);
        }
        Event::Closed => {
            *control = None;
            rep.handle_disconnected(now);
        }
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
    addr: SocketAddr,
    server_name: String,
    generation: u64,
    events: mpsc::Sender<(u64, Event)>,
) {
    let conn = match endpoint.connect(addr, &server_name) {
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
