//! Serving an axum router over mutual TLS on a TCP listener, with the limits a listener that
//! faces a network needs: a cap on concurrent connections, a deadline for the TLS handshake and
//! for each request's headers (a client that trickles bytes is cut off), and every connection
//! closed when the server stops. The origin's Raft channel is served this way.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send a request's headers once it started one.
    pub header_read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `app` over TLS (`tls` decides who may connect) on `listener` until `shutdown` turns
/// true; then closes every connection. `name` labels the log lines and metrics.
pub async fn serve_tls(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("meridian_connections_refused_total", "listener" => name)
                .increment(1);
            tracing::warn!(listener = name, %peer, limit = limits.max_connections,
                "connection limit reached; closing a new connection");
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                // A connection closed before it said anything (a port probe) is not worth a
                // line.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Ok(Err(e)) => {
                    metrics::counter!("meridian_tls_handshake_failures_total", "listener" => name)
                        .increment(1);
                    tracing::info!(listener = name, %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    metrics::counter!("meridian_tls_handshake_failures_total", "listener" => name)
                        .increment(1);
                    tracing::info!(listener = name, %peer, "TLS handshake timed out");
                    return;
                }
            };
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended");
            }
        });
    }
    connections.shutdown().await;
}
