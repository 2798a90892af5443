//! The local development topology: one origin and one edge per region on loopback, with a
//! throwaway PKI and signing key. Used by `meridian dev`, the end-to-end tests and benchmarks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use meridian_edge::{EdgeConfig, EdgeHandle};
use meridian_net::QuicTuning;
use meridian_net::tls::{DevPki, ensure_dev_pki};
use meridian_origin::config::{Member, RaftConfig};
use meridian_origin::{OriginConfig, OriginHandle};

/// The three regions of the dev topology, in port order.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// Where the dev topology listens and keeps data.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Root folder for all data and the PKI.
    pub data_dir: PathBuf,
    /// Origin HTTP address.
    pub origin_http: SocketAddr,
    /// Origin QUIC address.
    pub origin_quic: SocketAddr,
    /// Origin Raft channel address (mutual TLS between origin nodes).
    pub origin_raft: SocketAddr,
    /// Edge HTTP addresses, one per region in [`REGIONS`] order.
    pub edge_http: [SocketAddr; 3],
    /// Origin delta window.
    pub delta_window: u64,
    /// How many origin nodes form the Raft cluster (1, 3 or 5). Node `i` (from 0) listens on
    /// `origin_http`, `origin_quic` and `origin_raft` plus `i` for the documented ports, on free
    /// ports when those are 0.
    pub origin_nodes: usize,
    /// History retention of the origin nodes.
    pub history: meridian_origin::config::HistoryConfig,
    /// The admin token written to `DATA_DIR/admin.token` (mode 0600) for the origins to
    /// bootstrap with, unless that file exists already (then it is kept, so a restarted dev
    /// topology keeps its token).
    pub admin_token: String,
    /// A Redis every edge mirrors into (`redis://host:port`), if any.
    pub redis_url: Option<String>,
}

impl DevOptions {
    /// The documented ports: origin 7070 (QUIC 7443, Raft 7170), edges 7081–7083.
    pub fn standard(data_dir: PathBuf) -> Self {
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Self {
            data_dir,
            origin_http: at(7070),
            origin_quic: at(7443),
            origin_raft: at(7170),
            edge_http: [at(7081), at(7082), at(7083)],
            delta_window: 10_000,
            origin_nodes: 3,
            history: Default::default(),
            admin_token: meridian_net::auth::new_token(),
            redis_url: None,
        }
    }

    /// Every port chosen by the OS (for tests that run side by side).
    pub fn ephemeral(data_dir: PathBuf) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir,
            origin_http: any,
            origin_quic: any,
            origin_raft: any,
            edge_http: [any; 3],
            delta_window: 10_000,
            origin_nodes: 1,
            history: Default::default(),
            admin_token: meridian_net::auth::new_token(),
            redis_url: None,
        }
    }

    /// The HTTP, QUIC and Raft addresses of origin node `i` (from 0).
    pub fn origin_addrs(&self, i: usize) -> (SocketAddr, SocketAddr, SocketAddr) {
        let shift = |a: SocketAddr| -> SocketAddr {
            if a.port() == 0 {
                // A free port now, so that every node can be told the others' addresses.
                SocketAddr::new(a.ip(), free_port(a.ip()))
            } else {
                SocketAddr::new(a.ip(), a.port() + i as u16)
            }
        };
        (
            shift(self.origin_http),
            shift(self.origin_quic),
            shift(self.origin_raft),
        )
    }
}

/// A port free for both TCP and UDP on `ip`, chosen below Linux's ephemeral range
/// (32768–60999): a port the kernel handed out for port 0 could be handed out again, to
/// another socket of the same tests, before the node that was told it binds it. Ports are
/// taken in turn from a start that depends on the process id, so that test processes running
/// side by side rarely try the same ones.
pub fn free_port(ip: std::net::IpAddr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 40) * 300;
    for _ in 0..COUNT {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        let a = SocketAddr::new(ip, port);
        if std::net::TcpListener::bind(a).is_ok() && std::net::UdpSocket::bind(a).is_ok() {
            return port;
        }
    }
    // Everything below the ephemeral range is taken: let the kernel choose.
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// The edge id used for a region in the dev topology.
pub fn edge_id(region: &str) -> String {
    format!("{region}-1")
}

/// Creates the dev PKI under `data_dir/pki`.
pub fn pki(data_dir: &Path) -> anyhow::Result<DevPki> {
    let ids: Vec<String> = REGIONS.iter().map(|r| edge_id(r)).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let pki =
        ensure_dev_pki(&data_dir.join("pki"), &refs).context("creating the development PKI")?;
    let kek = kek_path(data_dir);
    if !kek.exists() {
        meridian_origin::secrets::kek_file::create(&kek)
            .context("creating the development key-encryption key")?;
    }
    Ok(pki)
}

/// Where the dev topology keeps its admin token.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// The dev topology's admin token: the one in `DATA_DIR/admin.token` if that file exists,
/// else `opts.admin_token`, written there (mode 0600).
pub fn ensure_admin_token(opts: &DevOptions) -> anyhow::Result<String> {
    let path = admin_token_path(&opts.data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            meridian_net::private::private_dir(&opts.data_dir)
                .with_context(|| format!("creating {}", opts.data_dir.display()))?;
            meridian_net::private::write_private(
                &path,
                format!("{}\n", opts.admin_token).as_bytes(),
            )
            .with_context(|| format!("writing {}", path.display()))?;
            Ok(opts.admin_token.clone())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The origin's config in the dev topology (its bootstrap token file is
/// [`admin_token_path`]; see [`ensure_admin_token`]).
pub fn origin_config(opts: &DevOptions, pki: &DevPki) -> OriginConfig {
    OriginConfig {
        node_id: "origin-1".into(),
        http_listen: opts.origin_http,
        quic_listen: opts.origin_quic,
        raft_listen: opts.origin_raft,
        data_dir: opts.data_dir.join("origin"),
        signing_key: pki.signing_key.clone(),
        tls: pki.origin.clone(),
        max_value_bytes: meridian_protocol::model::DEFAULT_MAX_VALUE_BYTES,
        delta_window: opts.delta_window,
        heartbeat_interval_ms: 500,
        max_inflight_deltas: 1024,
        quic: QuicTuning::default(),
        http: Default::default(),
        storage: Default::default(),
        raft: meridian_origin::config::RaftConfig::default(),
        history: opts.history.clone(),
        auth: meridian_net::auth::AuthConfig {
            bootstrap_token_file: Some(admin_token_path(&opts.data_dir)),
            ..Default::default()
        },
        https: None,
        audit: Default::default(),
        secrets: meridian_origin::config::SecretsConfig {
            kek_file: Some(kek_path(&opts.data_dir)),
        },
    }
}

/// The dev topology's key-encryption key file (shared by its origin nodes).
pub fn kek_path(data_dir: &Path) -> PathBuf {
    data_dir.join("pki").join("kek.json")
}

/// An edge's config in the dev topology.
pub fn edge_config(
    data_dir: &Path,
    pki: &DevPki,
    region: &str,
    http: SocketAddr,
    origin_quic: SocketAddr,
) -> EdgeConfig {
    let id = edge_id(region);
    EdgeConfig {
        edge_id: id.clone(),
        region: region.into(),
        http_listen: http,
        data_dir: data_dir.join(format!("edge-{id}")),
        origins: vec![origin_quic],
        origin_server_name: meridian_net::tls::ORIGIN_SERVER_NAME.into(),
        tls: pki.edge(&id),
        trusted_signing_keys: vec![pki.signing_pub.clone()],
        delta_window: 1_000,
        heartbeat_interval_ms: 500,
        reconnect_backoff_min_ms: 50,
        reconnect_backoff_max_ms: 2_000,
        stall_timeout_ms: 1_000,
        silence_timeout_ms: 1_500,
        quic: QuicTuning::default(),
        http: Default::default(),
        storage: Default::default(),
        watch: Default::default(),
        strict: Vec::new(),
        redis: None,
        auth: Default::default(),
        peer_listen: None,
        peer_advertise: None,
        peers: Vec::new(),
        peer_links: 2,
        origin_region: None,
        https: None,
    }
}

/// The configs of a dev origin cluster of `opts.origin_nodes` nodes (data in
/// `DATA_DIR/origin-N`). Call [`ensure_admin_token`] before starting them.
pub fn origin_cluster_configs(opts: &DevOptions, pki: &DevPki) -> Vec<OriginConfig> {
    let n = opts.origin_nodes.max(1);
    let addrs: Vec<_> = (0..n).map(|i| opts.origin_addrs(i)).collect();
    let members: Vec<Member> = addrs
        .iter()
        .enumerate()
        .map(|(i, (_, _, raft))| Member {
            id: i as u64 + 1,
            addr: raft.to_string(),
        })
        .collect();
    addrs
        .iter()
        .enumerate()
        .map(|(i, (http, quic, raft))| {
            let mut c = origin_config(opts, pki);
            c.node_id = format!("origin-{}", i + 1);
            c.http_listen = *http;
            c.quic_listen = *quic;
            c.raft_listen = *raft;
            c.data_dir = opts.data_dir.join(format!("origin-{}", i + 1));
            c.raft = RaftConfig {
                id: i as u64 + 1,
                members: members.clone(),
                ..RaftConfig::default()
            };
            c
        })
        .collect()
}

/// Waits (at most 30 s) until every edge holds the record of `token`: the bootstrap revision
/// has committed and reached them, so the token works everywhere.
pub async fn wait_for_token(edges: &[EdgeHandle], token: &str) -> anyhow::Result<()> {
    let hash = meridian_protocol::auth::parse_token(token).context("the admin token")?;
    let id = meridian_protocol::auth::TokenId::of(&hash);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for e in edges {
        let reader = e.shared.reader.clone();
        while !reader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .auth
            .has_record(id)
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "edge {} did not receive the admin token's record within 30 s",
                e.shared.edge_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Waits until every edge's replicated directory lists every edge in `edges` (the origin
/// commits an edge's record when it announces where it accepts peers).
pub async fn wait_for_directory(edges: &[EdgeHandle]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for e in edges {
        loop {
            let listed = {
                let p = e.shared.reader.read().unwrap_or_else(|e| e.into_inner());
                meridian_protocol::directory::edges(&p.state)
                    .into_iter()
                    .filter(|(id, _)| edges.iter().any(|x| x.shared.edge_id == *id))
                    .count()
            };
            if listed == edges.len() {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "edge {} did not receive the directory of edges within 30 s",
                e.shared.edge_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// A running dev topology.
pub struct DevCluster {
    /// The PKI in use.
    pub pki: DevPki,
    /// Origin node 1 (writes and reads work on any node; followers forward to the leader).
    pub origin: OriginHandle,
    /// The other origin nodes, 2 and up.
    pub more_origins: Vec<OriginHandle>,
    /// One edge per region, in [`REGIONS`] order.
    pub edges: Vec<EdgeHandle>,
}

impl DevCluster {
    /// Starts the origin nodes, waits for them to elect a leader, then starts the three edges,
    /// each knowing every origin node (edge `r` tries node `r` first).
    pub async fn start(opts: &DevOptions) -> anyhow::Result<Self> {
        let pki = pki(&opts.data_dir)?;
        ensure_admin_token(opts)?;
        let mut origins = Vec::new();
        for config in origin_cluster_configs(opts, &pki) {
            let id = config.raft.id;
            origins.push(
                meridian_origin::start(config)
                    .await
                    .with_context(|| format!("starting origin node {id}"))?,
            );
        }
        for o in &origins {
            o.raft
                .wait(Some(std::time::Duration::from_secs(30)))
                .metrics(|m| m.current_leader.is_some(), "a leader")
                .await
                .context("the origin cluster elected no leader within 30 s")?;
        }
        let quic: Vec<SocketAddr> = origins.iter().map(|o| o.quic_addr).collect();
        let mut edges = Vec::new();
        for (r, (region, http)) in REGIONS.iter().zip(opts.edge_http).enumerate() {
            let mut config = edge_config(&opts.data_dir, &pki, region, http, quic[0]);
            let mut order = quic.clone();
            order.rotate_left(r % quic.len());
            config.origins = order;
            config.redis =
                opts.redis_url
                    .clone()
                    .map(|url| meridian_edge::mirror::RedisMirrorConfig {
                        url,
                        check_interval_ms: 1_000,
                    });
            // Peer relay on: each edge accepts its peers on a loopback port of its own and
            // announces it to the origin, whose directory tells the others.
            config.peer_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            edges.push(
                meridian_edge::start(config)
                    .await
                    .with_context(|| format!("starting edge {region}"))?,
            );
        }
        let token = ensure_admin_token(opts)?;
        wait_for_token(&edges, &token).await?;
        wait_for_directory(&edges).await?;
        let mut origins = origins.into_iter();
        let origin = origins.next().context("no origin node")?;
        Ok(Self {
            pki,
            origin,
            more_origins: origins.collect(),
            edges,
        })
    }

    /// Every origin node, node 1 first.
    pub fn origins(&self) -> impl Iterator<Item = &OriginHandle> {
        std::iter::once(&self.origin).chain(&self.more_origins)
    }

    /// Stops everything.
    pub async fn shutdown(self) {
        for e in self.edges {
            e.shutdown().await;
        }
        for o in self.more_origins {
            o.shutdown().await;
        }
        self.origin.shutdown().await;
    }
}
