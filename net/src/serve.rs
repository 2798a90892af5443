//! Serving an axum router on a TCP listener, over mutual TLS or plain HTTP, with the limits a
//! listener that faces a network needs: a cap on concurrent connections in all and from one
//! client address (one more is closed as soon as it is accepted, while the others keep being
//! served), a deadline for the TLS handshake and for each request's headers (a client that
//! trickles bytes, slowloris, is cut off), and on shutdown a grace period for open requests
//! before every connection is closed. The origin's client API and Raft channel and the edge's
//! read API are served this way.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, check};

/// The limits of one listener (`[http]` in a node's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_connections_per_client: usize,
    /// Time a client has to complete the TLS handshake (TLS listeners).
    pub handshake_timeout_ms: u64,
    /// Time a client has to send a request's headers once it started one.
    pub header_read_timeout_ms: u64,
    /// Time a request has from its headers to its response's headers, its body read included:
    /// beyond it the answer is 503 `request_timeout`. A stream (a watch) is timed only until
    /// it starts. Longer than the longest wait a read may ask for (`wait_ms`, 60 s).
    pub request_timeout_ms: u64,
    /// At shutdown, how long open requests (watch streams included) may take to end.
    pub shutdown_grace_ms: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_client: 1024,
            handshake_timeout_ms: 5_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 75_000,
            shutdown_grace_ms: 5_000,
        }
    }
}

impl ServeLimits {
    /// Checks every value against its limits (keys named under `http.`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::check_places(
            ("http.max_connections", self.max_connections),
            (
                "http.max_connections_per_client",
                self.max_connections_per_client,
            ),
        )?;
        for (key, ms) in [
            ("http.handshake_timeout_ms", self.handshake_timeout_ms),
            ("http.header_read_timeout_ms", self.header_read_timeout_ms),
            ("http.request_timeout_ms", self.request_timeout_ms),
            ("http.shutdown_grace_ms", self.shutdown_grace_ms),
        ] {
            check(
                (1..=600_000).contains(&ms),
                key,
                format!("must be between 1 and 600000, got {ms}"),
            )?;
        }
        Ok(())
    }
}

/// Serves `app` on `listener` until `shutdown` turns true: over TLS when `tls` is given (it
/// decides who may connect), plain HTTP otherwise. Then stops accepting, lets open requests end
/// within the grace period and closes every connection. `name` labels log lines and metrics.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let app = app.layer(axum::middleware::from_fn_with_state(
        Duration::from_millis(limits.request_timeout_ms),
        request_deadline,
    ));
    let slots = crate::slots::Slots::new(limits.max_connections, limits.max_connections_per_client);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.take(Some(peer.ip())) else {
            metrics::counter!("meridian_connections_refused_total", "listener" => name)
                .increment(1);
            tracing::debug!(listener = name, %peer, "connection limit reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, app, watcher) = (acceptor.clone(), app.clone(), graceful.watcher());
        connections.spawn(async move {
            let _held = slot;
            let Some(acceptor) = acceptor else {
                return serve_connection(name, stream, peer, app, &limits, watcher).await;
            };
            let handshake = Duration::from_millis(limits.handshake_timeout_ms);
            match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(name, tls, peer, app, &limits, watcher).await,
                // A connection closed before it said anything (a port probe) is not worth a
                // line.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Ok(Err(e)) => {
                    metrics::counter!("meridian_tls_handshake_failures_total", "listener" => name)
                        .increment(1);
                    tracing::info!(listener = name, %peer, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    metrics::counter!("meridian_tls_handshake_failures_total", "listener" => name)
                        .increment(1);
                    tracing::info!(listener = name, %peer, "TLS handshake timed out");
                }
            }
        });
    }
    drop(listener);
    // Open connections finish their requests (a handshake under way gets no new request),
    // within the grace period; then everything still open is closed.
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    connections.shutdown().await;
}

/// Answers 503 `request_timeout` when the request has not produced its response's headers
/// within the deadline (its body read included), so a client trickling a body or a handler
/// stuck waiting holds nothing past it.
async fn request_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("meridian_request_timeouts_total").increment(1);
            crate::http::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the request took longer than http.request_timeout_ms ({} ms)",
                    deadline.as_millis()
                ),
            )
            .into_response()
        }
    }
}

async fn serve_connection<S>(
    name: &'static str,
    stream: S,
    peer: std::net::SocketAddr,
    app: axum::Router,
    limits: &ServeLimits,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let builder = builder.http1_only();
    // Handlers that bound something per client read its address as
    // `Extension<ConnectInfo<SocketAddr>>`.
    let app =
        tower::ServiceExt::map_request(app, move |mut r: hyper::Request<hyper::body::Incoming>| {
            r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            r
        });
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(listener = name, error = %e, "connection ended");
    }
}
