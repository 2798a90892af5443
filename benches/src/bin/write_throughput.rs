//! Write latency and throughput of a three-node Meridian origin cluster beside a three-node
//! etcd cluster, both on loopback, same workload in the same run: concurrent clients each
//! writing unique keys with values of `--value-bytes` bytes, spread over every node (followers
//! forward to the leader in both systems). Reports p50/p99/max and writes/s for each, and the
//! ratios.
//!
//! Each Meridian node runs in its own process (this harness started again with
//! `--serve-origin CONFIG`), as etcd's do, so neither system shares a runtime with the load.
//!
//! Needs `etcd` on PATH for the comparison (Debian: `apt-get install -y etcd-server`); without
//! it only Meridian is measured and the harness says so.
//!
//! `cargo run --release -p meridian-benches --bin write_throughput -- --seconds 10`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use meridian::dev::{DevOptions, origin_cluster_configs, pki};
use meridian_benches::{ProcessUsage, Summary};

#[derive(Parser, Clone)]
#[command(about = "Three-node Meridian origin writes beside three-node etcd writes, same run")]
struct Args {
    /// Concurrent clients per system.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load per system.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Meridian origin nodes (1, 3 or 5); etcd always runs three.
    #[arg(long, default_value_t = 3)]
    origin_nodes: usize,
    /// Skip the etcd run (Meridian alone, for profiling).
    #[arg(long)]
    no_etcd: bool,
    /// Internal: run one origin node from this config file until stdin closes.
    #[arg(long, hide = true)]
    serve_origin: Option<std::path::PathBuf>,
}

struct Outcome {
    writes: u64,
    errors: u64,
    elapsed: Duration,
    latency: Option<Summary>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

/// A request builder for write number `i` of a client against `base`.
type MakeRequest = fn(&reqwest::Client, &str, usize, usize, &str) -> reqwest::RequestBuilder;

fn meridian_put(
    c: &reqwest::Client,
    base: &str,
    client: usize,
    i: usize,
    value: &str,
) -> reqwest::RequestBuilder {
    c.put(format!("{base}/v1/kv/bench/prod/c{client}.k{i}"))
        .body(format!("{{\"value\":\"{value}\"}}"))
}

fn etcd_put(
    c: &reqwest::Client,
    base: &str,
    client: usize,
    i: usize,
    value: &str,
) -> reqwest::RequestBuilder {
    let key = b64(format!("bench/prod/c{client}.k{i}").as_bytes());
    c.post(format!("{base}/v3/kv/put")).body(format!(
        "{{\"key\":\"{key}\",\"value\":\"{}\"}}",
        b64(value.as_bytes())
    ))
}

/// Standard base64, the etcd JSON gateway's encoding of bytes.
fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

async fn load(args: &Args, bases: &[String], make: MakeRequest) -> Outcome {
    let value = "x".repeat(args.value_bytes);
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let (bases, value) = (bases.to_vec(), value.clone());
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let base = &bases[client % bases.len()];
            let (mut ok, mut errors, mut samples) = (0u64, 0u64, Vec::new());
            let mut i = 0;
            while Instant::now() < until {
                let t = Instant::now();
                let sent = make(&c, base, client, i, &value)
                    .header("content-type", "application/json")
                    .send()
                    .await;
                i += 1;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok += 1;
                        samples.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors, samples)
        }));
    }
    let (mut writes, mut errors, mut samples) = (0, 0, Vec::new());
    for t in tasks {
        if let Ok((o, e, s)) = t.await {
            writes += o;
            errors += e;
            samples.extend(s);
        }
    }
    Outcome {
        writes,
        errors,
        elapsed: started.elapsed(),
        latency: Summary::of(&mut samples),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a three-member etcd cluster; its client URLs, or `None` without `etcd` on PATH.
fn start_etcd(dir: &std::path::Path) -> anyhow::Result<Option<(Vec<Child>, Vec<String>)>> {
    if Command::new("etcd").arg("--version").output().is_err() {
        return Ok(None);
    }
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut children = Vec::new();
    let mut urls = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        children.push(
            Command::new("etcd")
                .args(["--name", &format!("n{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{i}")))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting etcd")?,
        );
        urls.push(url);
    }
    Ok(Some((children, urls)))
}

/// What the servers `pids` used since `before`, if both readings could be taken.
fn used_since(pids: &[u32], before: Option<ProcessUsage>) -> Option<ProcessUsage> {
    Some(ProcessUsage::of(pids)?.since(&before?))
}

fn report(name: &str, o: &Outcome, usage: Option<ProcessUsage>) {
    println!(
        "{name:<28} {:>9.0} writes/s  {:>8} ok {:>6} errors  latency {}",
        o.rate(),
        o.writes,
        o.errors,
        o.latency
            .as_ref()
            .map_or_else(|| "-".to_string(), |s| s.to_string())
    );
    if let Some(u) = usage {
        println!("{:<28} {}", "", u.per_op(o.writes));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(config) = &args.serve_origin {
        return meridian_benches::cluster::serve_origin(config).await;
    }
    let dir = tempfile::tempdir()?;
    let pki = pki(dir.path())?;
    let mut opts = DevOptions::ephemeral(dir.path().to_owned());
    anyhow::ensure!(
        [1, 3, 5].contains(&args.origin_nodes),
        "--origin-nodes must be 1, 3 or 5"
    );
    opts.origin_nodes = args.origin_nodes;
    let mut nodes = Vec::new();
    let mut bases = Vec::new();
    for (i, config) in origin_cluster_configs(&opts, &pki).iter().enumerate() {
        let path = dir.path().join(format!("origin-{}.toml", i + 1));
        std::fs::write(&path, toml::to_string(config)?)?;
        let (child, base) = meridian_benches::cluster::spawn_origin(&path)?;
        nodes.push(child);
        bases.push(base);
    }
    meridian_benches::cluster::await_leader(&bases).await?;
    println!(
        "{} clients per system, {} s each, {}-byte values, writes spread over every node",
        args.clients, args.seconds, args.value_bytes
    );
    let pids: Vec<u32> = nodes.iter().map(Child::id).collect();
    let before = ProcessUsage::of(&pids);
    let meridian = load(&args, &bases, meridian_put).await;
    let meridian_usage = used_since(&pids, before);
    report(
        &format!("meridian ({}-node origin)", args.origin_nodes),
        &meridian,
        meridian_usage,
    );
    for mut n in nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    if args.no_etcd {
        return Ok(());
    }

    match start_etcd(dir.path())? {
        None => println!("etcd not on PATH: no comparison (apt-get install -y etcd-server)"),
        Some((mut children, urls)) => {
            // Wait until the etcd cluster accepts a write.
            let c = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = etcd_put(&c, &urls[0], 0, usize::MAX, "ready")
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "etcd did not start within 30 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let pids: Vec<u32> = children.iter().map(Child::id).collect();
            let before = ProcessUsage::of(&pids);
            let etcd = load(&args, &urls, etcd_put).await;
            let etcd_usage = used_since(&pids, before);
            report("etcd (3-node)", &etcd, etcd_usage);
            for child in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let (Some(m), Some(e)) = (&meridian.latency, &etcd.latency) {
                println!(
                    "ratio meridian/etcd: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (latency: lower is better)",
                    meridian.rate() / etcd.rate(),
                    m.p50.as_secs_f64() / e.p50.as_secs_f64(),
                    m.p99.as_secs_f64() / e.p99.as_secs_f64()
                );
            }
            if let (Some(m), Some(e)) = (meridian_usage, etcd_usage) {
                let per = |u: ProcessUsage, o: &Outcome| u.cpu_s / o.writes.max(1) as f64;
                println!(
                    "ratio meridian/etcd: server CPU per write {:.2}x",
                    per(m, &meridian) / per(e, &etcd)
                );
            }
        }
    }
    Ok(())
}
