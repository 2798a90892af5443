//! Propagation on the loopback dev topology: sequential writes at the origin, and for each the
//! time from the write's acknowledgement until all three edges serve it (read from each edge's
//! published in-memory state, which is what its HTTP API answers from).
//!
//! `cargo run --release -p meridian-benches --bin propagation -- --writes 1000`

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use meridian::dev::{DevCluster, DevOptions, REGIONS};
use meridian_benches::Summary;

#[derive(Parser)]
#[command(about = "Write-ack → visible-at-every-edge latency on the loopback dev topology")]
struct Args {
    /// Number of sequential writes.
    #[arg(long, default_value_t = 1000)]
    writes: usize,
    /// Size of each value in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    meridian_benches::prepare_node_process();
    let dir = tempfile::tempdir()?;
    let opts = DevOptions::ephemeral(dir.path().to_owned());
    let cluster = DevCluster::start(&opts).await?;
    let origin = format!("http://{}", cluster.origin.http_addr);
    let client = meridian_benches::client(&opts.admin_token)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.edges.iter().all(|e| {
        e.shared
            .origin_connected
            .load(std::sync::atomic::Ordering::Relaxed)
    }) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "edges did not connect within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let value = "v".repeat(args.value_bytes);
    let mut ack = Vec::with_capacity(args.writes);
    let mut visible_all = Vec::with_capacity(args.writes);
    let mut visible_edge: Vec<Vec<Duration>> = vec![Vec::with_capacity(args.writes); REGIONS.len()];
    for i in 0..args.writes {
        let start = Instant::now();
        let resp: serde_json::Value = client
            .put(format!("{origin}/v1/kv/bench/prod/key{}", i % 100))
            .json(&serde_json::json!({ "value": format!("{value}{i}") }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let acked = Instant::now();
        ack.push(acked - start);
        let revision = resp["revision"].as_u64().context("revision in answer")?;
        let mut seen: Vec<Option<Duration>> = vec![None; REGIONS.len()];
        let give_up = acked + Duration::from_secs(10);
        while seen.iter().any(Option::is_none) {
            for (slot, edge) in seen.iter_mut().zip(&cluster.edges) {
                if slot.is_none() {
                    let r = edge
                        .shared
                        .reader
                        .read()
                        .map(|p| p.state.revision().0)
                        .unwrap_or(0);
                    if r >= revision {
                        *slot = Some(acked.elapsed());
                    }
                }
            }
            anyhow::ensure!(
                Instant::now() < give_up,
                "revision {revision} not visible within 10 s"
            );
            tokio::task::yield_now().await;
        }
        let mut worst = Duration::ZERO;
        for (k, s) in seen.into_iter().enumerate() {
            let d = s.unwrap_or_default();
            visible_edge[k].push(d);
            worst = worst.max(d);
        }
        visible_all.push(worst);
    }
    println!(
        "propagation on the loopback dev topology, {} sequential writes of {} B",
        args.writes, args.value_bytes
    );
    if let Some(s) = Summary::of(&mut ack) {
        println!("  write ack (origin, durable):        {s}");
    }
    if let Some(s) = Summary::of(&mut visible_all) {
        println!("  ack -> visible at all three edges:  {s}");
    }
    for (region, samples) in REGIONS.iter().zip(visible_edge.iter_mut()) {
        if let Some(s) = Summary::of(samples) {
            println!("    {region:<9}                        {s}");
        }
    }
    cluster.shutdown().await;
    Ok(())
}
