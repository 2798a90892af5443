//! The client side of the origin's Raft channel: HTTPS with mutual TLS to origin nodes,
//! presenting an origin certificate and accepting only a server whose certificate is issued for
//! the origin role (whatever host or IP address the membership names). One connection pool
//! serves every peer; answers are bounded in size. Origin nodes use it for Raft RPC and
//! forwarding; the CLI uses it for membership changes.

use std::time::Duration;

use crate::tls::ORIGIN_SERVER_NAME;
use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest answer a peer may send (a snapshot chunk's answer is small; a forwarded batch's
/// outcomes stay far below this).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made (refused, no route, handshake refused).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The connection failed or timed out after it was made.
    #[error("{0}")]
    Failed(String),
    /// The peer answered with an error status.
    #[error("HTTP {0} from the peer")]
    Status(StatusCode),
}

/// HTTPS to other origin nodes; clones share the pool.
#[derive(Clone)]
pub struct PeerClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl PeerClient {
    /// A client presenting the identity in `tls` (see
    /// [`crate::tls::origin_peer_client_crypto`]).
    pub fn new(tls: rustls::ClientConfig) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .with_server_name_resolver(FixedServerNameResolver::new(
                rustls::pki_types::ServerName::try_from(ORIGIN_SERVER_NAME)
                    .expect("the origin role name is a valid DNS name"),
            ))
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Self { http }
    }

    /// `POST https://{addr}{path}` with `body`; the answer's bytes if it succeeded within
    /// `timeout`.
    pub async fn post(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        match self
            .request(Method::POST, addr, path, body, timeout)
            .await?
        {
            (status, body) if status.is_success() => Ok(body),
            (status, _) => Err(PeerError::Status(status)),
        }
    }

    /// `{method} https://{addr}{path}` with `body`: the status and the answer's bytes, within
    /// `timeout`.
    pub async fn request(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), PeerError> {
        let request = Request::builder()
            .method(method)
            .uri(format!("https://{addr}{path}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PeerError::Failed(format!("request to {addr}: {e}")))?;
        let call = async {
            let answer = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    PeerError::Unreachable(format!("{addr}: {e}"))
                } else {
                    PeerError::Failed(format!("{addr}: {e}"))
                }
            })?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| PeerError::Failed(format!("{addr}: reading the answer: {e}")))?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| {
            PeerError::Failed(format!(
                "{addr}: no answer within {} ms",
                timeout.as_millis()
            ))
        })?
    }
}
