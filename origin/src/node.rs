//! Starting and stopping an origin node: opens the store, binds the client API (HTTP), the
//! private Raft channel (HTTPS, mutual TLS, origin certificates only) and QUIC for edges, and
//! runs the distributor loop until shut down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meridian_net::{NetError, TlsError};
use meridian_protocol::Signer;
use meridian_store::{DurableDb, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::BasicNode;

use crate::config::{ConfigError, OriginConfig};
use crate::http::{AppState, router};
use crate::raft::cluster::Cluster;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, Raft};
use crate::raft::relay::SharedRelay;
use crate::raft::state_machine::StateMachine;
use meridian_core::distributor::{Distributor, DistributorConfig};
use meridian_net::peer::PeerClient;

/// Why an origin could not start.
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
    /// TLS material or the signing key.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// QUIC endpoint.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Raft could not start.
    #[error("raft: {0}")]
    Raft(String),
    /// The key-encryption key file could not be used.
    #[error("secrets: {0}")]
    Secrets(#[from] crate::secrets::kek_file::KekFileError),
    /// The bootstrap token file.
    #[error(transparent)]
    Bootstrap(#[from] meridian_net::auth::BootstrapFileError),
    /// A TCP listener (client API or Raft channel).
    #[error("bind {addr}: {source}")]
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
    /// Where the private Raft channel listens.
    pub raft_addr: SocketAddr,
    /// The Raft node.
    pub raft: Raft,
    core: crate::raft::state_machine::SharedCore,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Ends when Raft stops.
    leader_task: JoinHandle<()>,
}

impl OriginHandle {
    /// Stops serving and waits for the tasks to end.
    /// Stops serving, hands what the state machine gathered to disk (a clean stop needs no
    /// redo from the Raft log), stops Raft, and waits for the tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Before Raft stops, on this task alone: sled must not be written while the state
        // machine's worker tears its handles down.
        if let Err(e) = self
            .core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state_mut()
            .flush()
        {
            tracing::warn!(error = %e, "state not flushed at shutdown; it is redone from the log");
        }
        let _ = self.raft.shutdown().await;
        let _ = self.leader_task.await;
    }
}

/// Starts an origin node.
pub async fn start(config: OriginConfig) -> Result<OriginHandle, StartError> {
    config.validate()?;
    let bootstrap = config
        .auth
        .bootstrap_token_file
        .as_deref()
        .map(meridian_net::auth::read_bootstrap_token)
        .transpose()?;
    meridian_net::http::metrics_handle();
    let keyring = match &config.secrets.kek_file {
        Some(path) => Some(Arc::new(crate::secrets::Keyring::open(path.clone())?)),
        None => None,
    };
    let signer = Signer::new(meridian_net::tls::load_signing_key(&config.signing_key)?);
    let store_err = |source| StartError::Store {
        path: config.data_dir.clone(),
        source,
    };
    meridian_net::private::private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let db =
        DurableDb::open(&config.data_dir).map_err(|e| store_err(StoreError::Backend(e.into())))?;
    let relay = SharedRelay::new();
    let sm =
        StateMachine::open(&db, signer, config.delta_window, relay.clone()).map_err(store_err)?;
    let log = LogStore::open(&db).map_err(|e| store_err(StoreError::Backend(e.into())))?;
    let core = sm.core();
    let (reader, revision) = {
        let c = core.lock().unwrap_or_else(|e| e.into_inner());
        (c.state().reader(), c.state().revision())
    };
    let commits_rx = sm.commits().subscribe();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let edges = Arc::new(Mutex::new(crate::drift::KnownEdges::default()));
    let applied = Arc::new(Mutex::new(crate::applied::AppliedTable::default()));

    let r = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: "meridian".into(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_logs),
        max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let timeout = Duration::from_millis(r.request_timeout_ms);
    let client = PeerClient::new(meridian_net::tls::origin_peer_client_crypto(&config.tls)?);
    let raft_tls = Arc::new(meridian_net::tls::origin_peer_server_crypto(&config.tls)?);
    let raft_listener = bind(config.raft_listen).await?;
    let raft_addr = local_addr(&raft_listener, config.raft_listen)?;
    let raft = Raft::new(
        r.id,
        Arc::new(raft_config),
        Network::new(client.clone(), relay.clone()),
        log,
        sm.clone(),
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let advertise = r.advertise.clone().unwrap_or_else(|| raft_addr.to_string());
    let members: BTreeMap<u64, BasicNode> = if r.members.is_empty() {
        BTreeMap::from([(r.id, BasicNode::new(advertise))])
    } else {
        r.members
            .iter()
            .map(|m| (m.id, BasicNode::new(m.addr.clone())))
            .collect()
    };
    let first = members.keys().next().copied();
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let mut init_task = None;
    if !initialized && first == Some(r.id) {
        if members.len() == 1 {
            raft.initialize(members)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
        } else {
            // The others may not listen yet: wait until a quorum does, so that the first
            // election is not a burst of unreachable peers.
            init_task = Some(tokio::spawn(initialize_when_quorum_listens(
                raft.clone(),
                members,
                shutdown_rx.clone(),
            )));
        }
    }
    let cluster = Cluster::new(
        raft.clone(),
        client.clone(),
        timeout,
        config.max_value_bytes,
    );

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
    let last_used = crate::http::tokens::LastUsed::default();
    let exposures = crate::exposures::Pending::default();
    let quic_task = tokio::spawn(crate::server::run(
        endpoint,
        core.clone(),
        commits_rx,
        distributor,
        crate::server::EdgeReports {
            edges: edges.clone(),
            last_used: last_used.clone(),
            exposures: exposures.clone(),
            keyring: keyring.clone(),
            cluster: Some(cluster.clone()),
            applied: applied.clone(),
        },
        config.quic,
        shutdown_rx.clone(),
    ));

    let space = meridian_store::SpaceGuard::new(&config.data_dir, config.storage);
    let space_task = tokio::spawn(crate::disk::watch_space(
        space.clone(),
        raft.clone(),
        shutdown_rx.clone(),
    ));
    let listener = bind(config.http_listen).await?;
    let http_addr = local_addr(&listener, config.http_listen)?;
    let refusals = crate::http::audit::RefusalQueue::default();
    let uses = last_used.clone();
    let queue = refusals.clone();
    let gate = meridian_net::auth::Gate {
        index: crate::bootstrap::index_source(reader.clone(), bootstrap),
        public_observe: config.auth.public_status,
        on_refusal: Some(Arc::new(move |r: &meridian_net::auth::Refusal| {
            queue.push(r)
        })),
        on_accept: Some(Arc::new(move |p: &meridian_protocol::auth::Principal| {
            if let Some(id) = p.id {
                uses.touch(id, meridian_net::auth::now_ms());
            }
        })),
    };
    let bootstrap_task = bootstrap.map(|hash| {
        tokio::spawn(crate::bootstrap::commit_record(
            cluster.clone(),
            reader.clone(),
            hash,
            shutdown_rx.clone(),
        ))
    });
    let rollout_reader = reader.clone();
    let due_reader = reader.clone();
    let state = Arc::new(AppState {
        node_id: config.node_id.clone(),
        cluster: cluster.clone(),
        gate,
        reader,
        max_value_bytes: config.max_value_bytes,
        edges: edges.clone(),
        core: core.clone(),
        peers: client.clone(),
        space: space.clone(),
        keyring: keyring.clone(),
        state_machine: sm,
        applied,
    });
    let app = router(state.clone());
    // The private channel: nothing here is reachable from the client API.
    let raft_app = crate::raft::network::routes(raft.clone(), relay.clone(), r.max_snapshot_bytes)
        .merge(crate::raft::cluster::routes(cluster.clone()))
        .merge(crate::raft::admin::membership_routes(raft.clone()))
        .merge(crate::http::edges::peer_routes(state.clone()))
        .merge(crate::http::applied::peer_routes(state))
        .fallback(meridian_net::http::unknown_route);
    let raft_task = tokio::spawn(meridian_net::serve::serve(
        "raft",
        raft_listener,
        Some(raft_tls),
        raft_app,
        meridian_net::serve::ServeLimits {
            max_connections: r.max_connections,
            max_connections_per_client: r.max_connections,
            ..config.http
        },
        shutdown_rx.clone(),
    ));
    let compact_task = tokio::spawn(compact_history(
        cluster.clone(),
        r.id,
        config.history.clone(),
        config.audit.retention_days,
        shutdown_rx.clone(),
    ));
    let refusal_task = tokio::spawn(crate::http::audit::record_refusals(
        refusals,
        cluster.clone(),
        Duration::from_millis(250),
        shutdown_rx.clone(),
    ));
    let exposures_task = tokio::spawn(crate::exposures::commit_exposures(
        exposures,
        cluster.clone(),
        crate::exposures::COMMIT_INTERVAL,
        shutdown_rx.clone(),
    ));
    let (leader_raft, node) = (raft.clone(), r.id);
    let rollout_task = tokio::spawn(crate::rollout::advance(
        rollout_reader,
        cluster.clone(),
        move || leader_raft.metrics().borrow().current_leader == Some(node),
        shutdown_rx.clone(),
    ));
    let (leader_raft, node) = (raft.clone(), r.id);
    let schedule_task = tokio::spawn(crate::schedule::apply_due(
        core.clone(),
        cluster.clone(),
        move || leader_raft.metrics().borrow().current_leader == Some(node),
        shutdown_rx.clone(),
    ));
    let (leader_raft, node) = (raft.clone(), r.id);
    let delivery_task = tokio::spawn(crate::delivery::deliver(
        core.clone(),
        cluster.clone(),
        move || leader_raft.metrics().borrow().current_leader == Some(node),
        shutdown_rx.clone(),
    ));
    let last_used_task = tokio::spawn(crate::http::tokens::commit_last_used(
        last_used,
        cluster.clone(),
        Duration::from_millis(config.auth.last_used_interval_ms),
        shutdown_rx.clone(),
    ));
    let drift_task = tokio::spawn(export_drift(
        edges,
        core.clone(),
        cluster,
        shutdown_rx.clone(),
    ));
    let due_task = tokio::spawn(crate::secrets::export_due(due_reader, shutdown_rx.clone()));
    let leader_task = tokio::spawn(track_leadership(raft.clone(), r.id, relay));
    let https = meridian_net::tls::https_acceptor(config.https.as_ref())?;
    let http_task = tokio::spawn(meridian_net::serve::serve(
        "api",
        listener,
        https,
        app,
        config.http,
        shutdown_rx,
    ));
    tracing::info!(%http_addr, %quic_addr, %raft_addr, revision = revision.0, "origin started");
    Ok(OriginHandle {
        http_addr,
        quic_addr,
        raft_addr,
        raft,
        core,
        shutdown,
        leader_task,
        tasks: init_task
            .into_iter()
            .chain(bootstrap_task)
            .chain([
                quic_task,
                http_task,
                raft_task,
                compact_task,
                refusal_task,
                last_used_task,
                exposures_task,
                rollout_task,
                schedule_task,
                delivery_task,
                drift_task,
                due_task,
                space_task,
            ])
            .collect(),
    })
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Http { addr, source })
}

fn local_addr(l: &tokio::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Http { addr, source })
}

/// Initializes a new cluster of `members` once all of them accept connections on their Raft
/// addresses (this node's listener is bound already), or once a majority does after
/// [`ALL_MEMBERS_WAIT`]; gives up at shutdown. Waiting for all keeps the first election free of
/// unreachable peers when the nodes are started one after another.
const ALL_MEMBERS_WAIT: Duration = Duration::from_secs(10);

/// See [`ALL_MEMBERS_WAIT`].
async fn initialize_when_quorum_listens(
    raft: Raft,
    members: BTreeMap<u64, BasicNode>,
    mut shutdown: watch::Receiver<bool>,
) {
    const PROBE_EVERY: Duration = Duration::from_millis(50);
    let quorum = members.len() / 2 + 1;
    let mut waited = Duration::ZERO;
    loop {
        let mut listening = 0;
        for node in members.values() {
            let probe = tokio::net::TcpStream::connect(node.addr.as_str());
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_EVERY, probe).await {
                listening += 1;
            }
        }
        if listening == members.len() || (listening >= quorum && waited >= ALL_MEMBERS_WAIT) {
            break;
        }
        if waited.as_secs() > 0 && waited.as_millis() % 10_000 < PROBE_EVERY.as_millis() {
            tracing::info!(
                listening,
                quorum,
                "waiting for a quorum of members to listen"
            );
        }
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(PROBE_EVERY) => waited += PROBE_EVERY,
        }
    }
    if let Err(e) = raft.initialize(members).await {
        tracing::error!(error = %e, "initializing the cluster failed");
    }
}

/// Tells the head relay whether this node leads (a leader waits for no offers), for as long as
/// Raft runs.
async fn track_leadership(raft: Raft, id: u64, relay: Arc<SharedRelay>) {
    let mut metrics = raft.metrics();
    loop {
        let leads = metrics.borrow_and_update().current_leader == Some(id);
        relay.set_leader(leads);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Every few seconds, exports the drift view of every known edge as Prometheus gauges.
async fn export_drift(
    edges: Arc<Mutex<crate::drift::KnownEdges>>,
    core: crate::raft::state_machine::SharedCore,
    cluster: Cluster,
    mut shutdown: watch::Receiver<bool>,
) {
    const EVERY: Duration = Duration::from_secs(5);
    // The flags each edge had at the last look: a newly raised one is an event.
    let mut flagged: std::collections::BTreeSet<(String, &'static str)> = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let known = edges
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let rows = {
            let core = core.lock().unwrap_or_else(|e| e.into_inner());
            crate::drift::rows(
                &known,
                core.state(),
                std::time::Instant::now(),
                crate::drift::DEFAULT_LAG_THRESHOLD_MS,
            )
        };
        crate::drift::export(&rows);
        let now: std::collections::BTreeSet<(String, &'static str)> = rows
            .iter()
            .flat_map(|r| {
                r.flags
                    .iter()
                    .filter(|f| matches!(**f, "diverged" | "lagging"))
                    .map(|f| (r.edge_id.clone(), *f))
            })
            .collect();
        for (edge, flag) in now.difference(&flagged) {
            let Some(row) = rows.iter().find(|r| r.edge_id == *edge) else {
                continue;
            };
            let data = serde_json::json!({
                "edge": row.edge_id, "region": row.region, "revision": row.revision,
                "behind_revisions": row.behind_revisions, "lag_ms": row.lag_ms,
                "digest_match": row.digest_match,
            });
            let proposal = meridian_core::apply::Proposal {
                command: meridian_core::apply::Command::Webhook(
                    meridian_core::webhooks::WebhookOp::Emit {
                        kind: format!("edge.{flag}"),
                        data: data.to_string(),
                    },
                ),
                meta: meridian_core::history::WriteMeta {
                    time_ms: meridian_core::history::now_ms(),
                    actor: "drift".into(),
                    ..Default::default()
                },
            };
            if let Err(e) = cluster.write(proposal).await {
                tracing::debug!(error = %e, %edge, "an edge event was not committed");
            }
        }
        flagged = now;
    }
}

/// While this node leads, commits a history compaction every `compact_interval_s`: every node
/// applies the same one, so their histories stay equal.
async fn compact_history(
    cluster: Cluster,
    id: u64,
    history: crate::config::HistoryConfig,
    audit_retention_days: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(history.compact_interval_s.max(1));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(every) => {}
        }
        if cluster.leader().await != Some(id) {
            continue;
        }
        let now_ms = meridian_core::history::now_ms();
        let proposal = meridian_core::apply::Proposal {
            command: meridian_core::apply::Command::CompactHistory {
                retention: history.retention(),
                now_ms,
            },
            meta: meridian_core::history::WriteMeta {
                time_ms: now_ms,
                actor: "meridian".into(),
                reason: Some("history compaction".into()),
                ..Default::default()
            },
        };
        if let Err(e) = cluster.write(proposal).await {
            tracing::debug!(error = %e, "history compaction not committed; next time");
        }
        // The audit log keeps its own retention, independent of the history's.
        let before_ms = now_ms.saturating_sub(audit_retention_days.saturating_mul(86_400_000));
        let proposal = meridian_core::apply::Proposal {
            command: meridian_core::apply::Command::CompactAudit { before_ms },
            meta: meridian_core::history::WriteMeta {
                time_ms: now_ms,
                actor: "meridian".into(),
                reason: Some("audit retention".into()),
                ..Default::default()
            },
        };
        if let Err(e) = cluster.write(proposal).await {
            tracing::debug!(error = %e, "audit retention not committed; next time");
        }
    }
}
