//! Leader failover of a three-node origin cluster, one process per node. Writers keep writing
//! while the leader is SIGKILLed `--kills` times (restarted after each); for each kill it
//! measures the time until the two survivors agree on a new leader and the write pause (the
//! longest gap between acknowledged writes around the kill). The simulator's model of an origin
//! leader failover pauses commits for this long.
//!
//! `cargo run --release -p meridian-benches --bin failover -- --kills 5`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use meridian::dev::{DevOptions, origin_cluster_configs, pki};
use meridian_benches::Summary;
use meridian_benches::cluster::{await_leader, leader_at, serve_origin, spawn_origin};

#[derive(Parser)]
#[command(about = "Election time and write pause when the leader of a three-node origin dies")]
struct Args {
    /// Leader kills.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Internal: run one origin node from this config file until stdin closes.
    #[arg(long, hide = true)]
    serve_origin: Option<std::path::PathBuf>,
}

/// One writer: puts to the nodes in turn until `stop`, recording when each ack arrived.
async fn writer(
    id: usize,
    bases: Vec<String>,
    token: String,
    acks: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
) {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    let c = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .expect("http client");
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let base = &bases[(id + i) % bases.len()];
        i += 1;
        let sent = c
            .put(format!("{base}/v1/kv/bench/prod/w{id}"))
            .json(&serde_json::json!({ "value": i }))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => acks.lock().expect("acks").push(Instant::now()),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(config) = &args.serve_origin {
        return serve_origin(config).await;
    }
    let dir = tempfile::tempdir()?;
    let pki = pki(dir.path())?;
    let mut opts = DevOptions::ephemeral(dir.path().to_owned());
    opts.origin_nodes = 3;
    let token = meridian::dev::ensure_admin_token(&opts)?;
    let mut paths = Vec::new();
    let mut nodes = Vec::new();
    let mut bases = Vec::new();
    for (i, config) in origin_cluster_configs(&opts, &pki).iter().enumerate() {
        let path = dir.path().join(format!("origin-{}.toml", i + 1));
        std::fs::write(&path, toml::to_string(config)?)?;
        let (child, base) = spawn_origin(&path)?;
        paths.push(path);
        nodes.push(Some(child));
        bases.push(base);
    }
    await_leader(&bases).await?;
    let acks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..args.clients)
        .map(|id| {
            tokio::spawn(writer(
                id,
                bases.clone(),
                token.clone(),
                acks.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let c = reqwest::Client::new();
    let acked = || acks.lock().expect("acks").len();
    let mut elections = Vec::new();
    let mut pauses = Vec::new();
    for _ in 0..args.kills {
        // Let writes flow, then kill whoever leads.
        let before = acked();
        while acked() < before + 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let leader = leader_at(&c, &bases[0]).await.context("no leader named")? as usize;
        let mut child = nodes[leader - 1].take().context("leader already down")?;
        let killed = Instant::now();
        child.kill()?;
        child.wait()?;
        let survivors: Vec<&String> = (1..=3)
            .filter(|&i| i != leader)
            .map(|i| &bases[i - 1])
            .collect();
        let deadline = killed + Duration::from_secs(30);
        loop {
            let mut named = std::collections::BTreeSet::new();
            for b in &survivors {
                named.insert(leader_at(&c, b).await);
            }
            let agreed = named.len() == 1
                && named
                    .first()
                    .is_some_and(|l| l.is_some_and(|l| l as usize != leader));
            if agreed {
                elections.push(killed.elapsed());
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no new leader within 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Writes resume; the pause is the longest gap between acks around the kill.
        let resumed = acked();
        while acked() < resumed + 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let gap = {
            let acks = acks.lock().expect("acks");
            let window: Vec<Instant> = acks
                .iter()
                .copied()
                .filter(|t| *t + Duration::from_secs(1) >= killed)
                .collect();
            let mut sorted = window;
            sorted.sort_unstable();
            sorted
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default()
        };
        pauses.push(gap);
        println!(
            "killed leader {leader}: new leader after {:.0} ms, writes paused {:.0} ms",
            elections.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            gap.as_secs_f64() * 1e3
        );
        let (child, base) = spawn_origin(&paths[leader - 1])?;
        anyhow::ensure!(base == bases[leader - 1], "restarted node moved to {base}");
        nodes[leader - 1] = Some(child);
        await_leader(&bases).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    for mut child in nodes.into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
    println!(
        "election (kill -> survivors agree on a new leader): {}",
        Summary::of(&mut elections).map_or_else(|| "-".into(), |s| s.to_string())
    );
    println!(
        "write pause (longest gap between acks around the kill): {}",
        Summary::of(&mut pauses).map_or_else(|| "-".into(), |s| s.to_string())
    );
    Ok(())
}
