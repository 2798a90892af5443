//! Starting and stopping an edge node: opens the store, starts the replicator loop and the
//! read API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meridian_net::{NetError, TlsError};
use meridian_protocol::TrustedKeys;
use meridian_store::{SignedState, SledBackend, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, EdgeConfig};
use crate::shared::EdgeShared;
use meridian_core::distributor::DistributorConfig;
use meridian_core::edge_node::{EdgeNode, EdgeNodeConfig};
use meridian_core::replicator::ReplicatorConfig;
use meridian_core::topology::PeerEntry;

/// Why an edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data folder could not be created or made private.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The data folder.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Storage could not be opened.
    #[error("opening store in {path}: {source}")]
    Store {
        /// The data folder.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// TLS material or a trusted key.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// QUIC endpoint.
    #[error(transparent)]
    Net(#[from] NetError),
    /// HTTP listener.
    #[error("bind HTTP {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running edge.
pub struct EdgeHandle {
    /// Where the read API listens.
    pub http_addr: SocketAddr,
    /// Where it accepts peers, as announced to the origin (none: it serves no peers).
    pub peer_addr: Option<String>,
    /// Shared status (for tests and embedding).
    pub shared: Arc<EdgeShared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl EdgeHandle {
    /// Stops serving and waits for the tasks to end (the store is closed when they have).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Reveals answered during the server's grace period, to disk before the process goes.
        if let Some(log) = &self.shared.reveals
            && let Err(e) = log.persist()
        {
            tracing::error!(error = %e, "reveal log not written at shutdown");
        }
    }
}

/// Starts an edge node.
pub async fn start(config: EdgeConfig) -> Result<EdgeHandle, StartError> {
    config.validate()?;
    meridian_net::http::metrics_handle();
    let keys = config
        .trusted_signing_keys
        .iter()
        .map(|p| meridian_net::tls::load_verifying_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let store_err = |source| StartError::Store {
        path: config.data_dir.clone(),
        source,
    };
    meridian_net::private::private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let db = meridian_store::DurableDb::open(&config.data_dir)
        .map_err(|e| store_err(StoreError::Backend(e.into())))?;
    let reveals = crate::secrets::RevealLog::open(db.db())
        .map_err(|e| store_err(StoreError::Backend(e.into())))?;
    let backend = SledBackend::from_db(db).map_err(|e| store_err(e.into()))?;
    let state = SignedState::open(backend, config.delta_window).map_err(store_err)?;
    let mut shared = EdgeShared::new(
        config.edge_id.clone(),
        config.region.clone(),
        state.reader(),
        config.watch,
        config.strict.clone(),
        meridian_store::SpaceGuard::new(&config.data_dir, config.storage),
    );
    shared.public_status = config.auth.public_status;
    shared.reveals = Some(reveals);
    let shared = Arc::new(shared);
    let revision = state.revision();
    let node = EdgeNode::new(
        EdgeNodeConfig {
            replicator: ReplicatorConfig {
                edge_id: config.edge_id.clone(),
                region: config.region.clone(),
                origin_count: config.origins.len(),
                peer_links: config.peer_links.max(1),
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                reconnect_backoff_min_ms: config.reconnect_backoff_min_ms,
                reconnect_backoff_max_ms: config.reconnect_backoff_max_ms,
                stall_timeout_ms: config.stall_timeout_ms,
                silence_timeout_ms: config.silence_timeout_ms,
                ..ReplicatorConfig::default()
            },
            serving: DistributorConfig {
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                ..DistributorConfig::default()
            },
            origin_region: config
                .origin_region
                .clone()
                .unwrap_or_else(|| config.region.clone()),
            static_peers: config
                .peers
                .iter()
                .map(|p| PeerEntry {
                    edge_id: p.edge_id.clone(),
                    region: p.region.clone(),
                    addr: p.addr.clone(),
                })
                .collect(),
            relay: config.peer_links > 0,
        },
        TrustedKeys::new(keys),
        state,
        Instant::now(),
    );
    let (endpoint, peer_slots) = match config.peer_listen {
        Some(listen) => (
            meridian_net::quic::edge_endpoint(listen, &config.tls, config.quic)?,
            Some(meridian_net::slots::Slots::new(
                config.quic.max_connections,
                config.quic.max_connections_per_client,
            )),
        ),
        None => {
            let bind = SocketAddr::from(([0, 0, 0, 0], 0));
            (
                meridian_net::quic::client_endpoint(bind, &config.tls, config.quic)?,
                None,
            )
        }
    };
    let peer_addr = config.advertised_peer_addr().or_else(|| {
        // `peer_listen` on port 0 (tests): announce the port the endpoint got.
        let listen = config.peer_listen?;
        let port = endpoint.local_addr().ok()?.port();
        (!listen.ip().is_unspecified()).then(|| SocketAddr::new(listen.ip(), port).to_string())
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let rep_task = tokio::spawn(crate::client::run(
        node,
        crate::client::Wiring {
            endpoint,
            origins: config
                .origins
                .iter()
                .map(|addr| crate::client::OriginAddr {
                    addr: *addr,
                    server_name: config.origin_server_name.clone(),
                })
                .collect(),
            peer_addr: peer_addr.clone(),
            peer_slots,
        },
        shared.clone(),
        shutdown_rx.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Http {
            addr: config.http_listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Http {
        addr: config.http_listen,
        source,
    })?;
    let app = crate::api::router(shared.clone());
    let mut tasks = vec![
        rep_task,
        tokio::spawn(crate::secrets::flush_reveals(
            shared.clone(),
            shutdown_rx.clone(),
        )),
    ];
    if let Some(redis) = config.redis.clone() {
        tasks.push(tokio::spawn(crate::mirror::run(
            redis,
            config.edge_id.clone(),
            shared.watch.clone(),
            shared.mirror.clone(),
            shutdown_rx.clone(),
        )));
    }
    // Watch streams end when the server stops, so that the grace period is not spent on them.
    let (mut rx, hub) = (shutdown_rx.clone(), shared.watch.clone());
    tasks.push(tokio::spawn(async move {
        let _ = rx.wait_for(|v| *v).await;
        hub.close();
    }));
    let https = meridian_net::tls::https_acceptor(config.https.as_ref())?;
    let http_task = tokio::spawn(meridian_net::serve::serve(
        "api",
        listener,
        https,
        app,
        config.http,
        shutdown_rx,
    ));
    tracing::info!(edge = %config.edge_id, region = %config.region, %http_addr, peer_addr = ?peer_addr, revision = revision.0, "edge started");
    Ok(EdgeHandle {
        http_addr,
        peer_addr,
        shared,
        shutdown,
        tasks: {
            tasks.push(http_task);
            tasks
        },
    })
}
