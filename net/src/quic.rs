//! QUIC endpoints on quinn with the rustls configs from [`crate::tls`], and frame I/O on
//! streams. This is plumbing only: what to send and when is decided by the sans-IO state
//! machines in origin and edge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_protocol::frame::{FrameDecoder, encode};
use meridian_protocol::{Frame, FrameError};

use crate::tls::{TlsError, TlsPaths, client_crypto, server_crypto};

/// Transport timing shared by both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicTuning {
    /// QUIC keep-alive PING interval.
    pub keep_alive_interval_ms: u64,
    /// A connection silent this long is closed.
    pub max_idle_timeout_ms: u64,
    /// Where this node accepts QUIC connections (an origin from edges): connections open at
    /// once, handshakes included; one more is refused.
    pub max_connections: usize,
    /// The same from one client address.
    pub max_connections_per_client: usize,
}

impl Default for QuicTuning {
    fn default() -> Self {
        Self {
            keep_alive_interval_ms: 1_000,
            max_idle_timeout_ms: 4_000,
            max_connections: 4_096,
            max_connections_per_client: 64,
        }
    }
}

impl QuicTuning {
    /// Checks every value against its limits (keys named under `quic.`).
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        crate::config::check_places(
            ("quic.max_connections", self.max_connections),
            (
                "quic.max_connections_per_client",
                self.max_connections_per_client,
            ),
        )
    }
}

/// Why a QUIC endpoint or stream failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding the UDP socket.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing to a stream.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Finishing a stream.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// Reading from a stream.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Bytes that were not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

fn transport(tuning: QuicTuning) -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(tuning))
}

fn transport_config(tuning: QuicTuning) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(tuning.keep_alive_interval_ms)));
    // The idle timeout is a VarInt of milliseconds; values beyond its range are clamped.
    let idle = quinn::VarInt::from_u64(tuning.max_idle_timeout_ms).unwrap_or(quinn::VarInt::MAX);
    t.max_idle_timeout(Some(idle.into()));
    t.max_concurrent_uni_streams(1024u32.into());
    // Cross-region round trips are 80–240 ms: start from a realistic RTT estimate and a
    // 64-packet window so a reconnecting edge gets its backlog in a few round trips. The
    // simulator uses the same settings (see meridian-sim's transport).
    t.initial_rtt(Duration::from_millis(100));
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(64 * 1200);
    t.congestion_controller_factory(Arc::new(cubic));
    t
}

/// Most streams an edge may open to the origin at once: its control stream, and one more
/// while a reconnect races the old one. It opens no unidirectional stream; the origin sends on
/// those.
pub const EDGE_BIDI_STREAMS: u32 = 2;

/// The server's transport: as [`transport`], but a client may open only
/// [`EDGE_BIDI_STREAMS`] bidirectional streams and no unidirectional one, so a client that
/// opens streams and never finishes them holds nothing beyond its control stream.
fn server_transport(tuning: QuicTuning) -> Arc<quinn::TransportConfig> {
    let mut t = transport_config(tuning);
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(EDGE_BIDI_STREAMS.into());
    Arc::new(t)
}

/// A server endpoint that requires client certificates.
pub fn server_endpoint(
    addr: SocketAddr,
    paths: &TlsPaths,
    tuning: QuicTuning,
) -> Result<quinn::Endpoint, NetError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto(paths)?)
        .map_err(TlsError::from)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(server_transport(tuning));
    quinn::Endpoint::server(config, addr).map_err(|source| NetError::Bind { addr, source })
}

/// A client endpoint that presents `paths.cert` to servers.
pub fn client_endpoint(
    bind: SocketAddr,
    paths: &TlsPaths,
    tuning: QuicTuning,
) -> Result<quinn::Endpoint, NetError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto(paths)?)
        .map_err(TlsError::from)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(tuning));
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// An edge's endpoint: a client to origins and peers presenting `paths.cert`, and a server
/// at `listen` for peers that dial it, which demands a client certificate of the same CA
/// (which edge it is, the shell checks against the peer's Hello).
pub fn edge_endpoint(
    listen: SocketAddr,
    paths: &TlsPaths,
    tuning: QuicTuning,
) -> Result<quinn::Endpoint, NetError> {
    let mut endpoint = server_endpoint(listen, paths, tuning)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto(paths)?)
        .map_err(TlsError::from)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(tuning));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Writes one length-prefixed frame.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), NetError> {
    let bytes = encode(frame)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Sends frames, in order, on a new unidirectional stream with the given transport priority
/// (higher goes first) and finishes it.
pub async fn send_uni(
    conn: &quinn::Connection,
    frames: &[Frame],
    priority: i32,
) -> Result<(), NetError> {
    let mut send = conn
        .open_uni()
        .await
        .map_err(|e| NetError::Write(e.into()))?;
    let _ = send.set_priority(priority);
    for frame in frames {
        write_frame(&mut send, frame).await?;
    }
    send.finish()?;
    Ok(())
}

/// Reads the next frame, `Ok(None)` at a clean end of stream.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, NetError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes),
            None => {
                decoder.finish()?;
                return Ok(None);
            }
        }
    }
}
