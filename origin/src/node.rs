//! Starting and stopping an origin node: opens the store, binds HTTP and QUIC, and runs the
//! distributor loop until shut down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meridian_net::{NetError, TlsError};
use meridian_protocol::Signer;
use meridian_store::{SignedState, SledBackend, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{AppState, router};
use crate::config::{ConfigError, OriginConfig};
use crate::core::OriginCore;
use crate::distributor::{Distributor, DistributorConfig};

/// Why an origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Storage could not be opened.
    #[error("opening store in {path}: {source}")]
    Store {
        /// The data folder.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// TLS material or the signing key.
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

/// A running origin.
pub struct OriginHandle {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where the QUIC server listens.
    pub quic_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl OriginHandle {
    /// Stops serving and waits for the tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts an origin node.
pub async fn start(config: OriginConfig) -> Result<OriginHandle, StartError> {
    config.validate()?;
    meridian_net::http::metrics_handle();
    let signer = Signer::new(meridian_net::tls::load_signing_key(&config.signing_key)?);
    let store_err = |source| StartError::Store {
        path: config.data_dir.clone(),
        source,
    };
    let backend = SledBackend::open(&config.data_dir).map_err(|e| store_err(e.into()))?;
    let state = SignedState::open(backend, config.delta_window).map_err(store_err)?;
    let reader = state.reader();
    let revision = state.revision();
    let core = Arc::new(Mutex::new(OriginCore::new(state, signer)));
    let (commits, commits_rx) = watch::channel(revision);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let edges = Arc::new(Mutex::new(Vec::new()));

    let endpoint =
        meridian_net::quic::server_endpoint(config.quic_listen, &config.tls, config.quic)?;
    let quic_addr = endpoint.local_addr().map_err(|source| StartError::Http {
        addr: config.quic_listen,
        source,
    })?;
    let distributor = Distributor::new(DistributorConfig {
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        max_inflight_deltas: config.max_inflight_deltas,
        ..DistributorConfig::default()
    });
    let quic_task = tokio::spawn(crate::server::run(
        endpoint,
        core.clone(),
        commits_rx,
        distributor,
        edges.clone(),
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
    let app = router(Arc::new(AppState {
        node_id: config.node_id.clone(),
        core,
        reader,
        commits,
        max_value_bytes: config.max_value_bytes,
        edges,
    }));
    let mut rx = shutdown_rx;
    let http_task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.wait_for(|v| *v).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "origin HTTP server failed");
        }
    });
    tracing::info!(%http_addr, %quic_addr, revision = revision.0, "origin started");
    Ok(OriginHandle {
        http_addr,
        quic_addr,
        shutdown,
        tasks: vec![quic_task, http_task],
    })
}
