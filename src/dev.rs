//! The local development topology: one origin and one edge per region on loopback, with a
//! throwaway PKI and signing key. Used by `meridian dev`, the end-to-end tests and benchmarks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use meridian_edge::{EdgeConfig, EdgeHandle};
use meridian_net::QuicTuning;
use meridian_net::tls::{DevPki, ensure_dev_pki};
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
    /// Edge HTTP addresses, one per region in [`REGIONS`] order.
    pub edge_http: [SocketAddr; 3],
    /// Origin delta window.
    pub delta_window: u64,
}

impl DevOptions {
    /// The documented ports: origin 7070 (QUIC 7443), edges 7081–7083.
    pub fn standard(data_dir: PathBuf) -> Self {
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Self {
            data_dir,
            origin_http: at(7070),
            origin_quic: at(7443),
            edge_http: [at(7081), at(7082), at(7083)],
            delta_window: 10_000,
        }
    }

    /// Every port chosen by the OS (for tests that run side by side).
    pub fn ephemeral(data_dir: PathBuf) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir,
            origin_http: any,
            origin_quic: any,
            edge_http: [any; 3],
            delta_window: 10_000,
        }
    }
}

/// The edge id used for a region in the dev topology.
pub fn edge_id(region: &str) -> String {
    format!("{region}-1")
}

/// Creates the dev PKI under `data_dir/pki`.
pub fn pki(data_dir: &Path) -> anyhow::Result<DevPki> {
    let ids: Vec<String> = REGIONS.iter().map(|r| edge_id(r)).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    ensure_dev_pki(&data_dir.join("pki"), &refs).context("creating the development PKI")
}

/// The origin's config in the dev topology.
pub fn origin_config(opts: &DevOptions, pki: &DevPki) -> OriginConfig {
    OriginConfig {
        node_id: "origin-1".into(),
        http_listen: opts.origin_http,
        quic_listen: opts.origin_quic,
        data_dir: opts.data_dir.join("origin"),
        signing_key: pki.signing_key.clone(),
        tls: pki.origin.clone(),
        max_value_bytes: meridian_protocol::model::DEFAULT_MAX_VALUE_BYTES,
        delta_window: opts.delta_window,
        heartbeat_interval_ms: 500,
        max_inflight_deltas: 1024,
        quic: QuicTuning::default(),
        raft: meridian_origin::config::RaftConfig::default(),
    }
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
    }
}

/// A running dev topology.
pub struct DevCluster {
    /// The PKI in use.
    pub pki: DevPki,
    /// The origin.
    pub origin: OriginHandle,
    /// One edge per region, in [`REGIONS`] order.
    pub edges: Vec<EdgeHandle>,
}

impl DevCluster {
    /// Starts the origin, then the three edges pointed at it.
    pub async fn start(opts: &DevOptions) -> anyhow::Result<Self> {
        let pki = pki(&opts.data_dir)?;
        let origin = meridian_origin::start(origin_config(opts, &pki))
            .await
            .context("starting the origin")?;
        let mut edges = Vec::new();
        for (region, http) in REGIONS.iter().zip(opts.edge_http) {
            let config = edge_config(&opts.data_dir, &pki, region, http, origin.quic_addr);
            edges.push(
                meridian_edge::start(config)
                    .await
                    .with_context(|| format!("starting edge {region}"))?,
            );
        }
        Ok(Self { pki, origin, edges })
    }

    /// Stops everything.
    pub async fn shutdown(self) {
        for e in self.edges {
            e.shutdown().await;
        }
        self.origin.shutdown().await;
    }
}
