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
//! Server CPU time and bytes written to storage per write are read from `/proc` for both
//! systems' processes. `--rounds N` runs both systems N times, alternating, on fresh clusters,
//! and reports medians and each round's ratio: this machine's speed drifts by tens of percent
//! between runs, so one pair of runs can mislead either way.
//!
//! Before each round a disk probe (`--disk-probe-seconds`, default 5) times 16 KiB writes each
//! followed by `fdatasync` on the same filesystem with nothing else running, and counts the
//! syncs that alone take longer than the 20 ms p99 target: a tail the clusters inherit. Each
//! run also reports the leader elections during its load (the highest Raft term any node
//! reports, before and after): an election pauses every write for as long as it takes.
//!
//! `cargo run --release -p meridian-benches --bin write_throughput -- --seconds 10 --rounds 5`

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
    /// Rounds, each running both systems back to back on fresh clusters; more than one
    /// reports medians and each round's ratio (the machine's speed drifts between runs).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds of a disk probe before each round: 16 KiB writes, each followed by
    /// `fdatasync`, on the same filesystem with nothing else running, reporting how often one
    /// sync alone takes longer than the p99 target (0 skips it).
    #[arg(long, default_value_t = 5)]
    disk_probe_seconds: u64,
    /// Internal: run one origin node from this config file until stdin closes.
    #[arg(long, hide = true)]
    serve_origin: Option<std::path::PathBuf>,
}

struct Outcome {
    writes: u64,
    errors: u64,
    elapsed: Duration,
    latency: Option<Summary>,
    /// Latency of the writes sent to each node, in the order of the nodes given to [`load`].
    by_node: Vec<Option<Summary>>,
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

async fn load(args: &Args, bases: &[String], make: MakeRequest, token: Option<&str>) -> Outcome {
    let value = "x".repeat(args.value_bytes);
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let (bases, value) = (bases.to_vec(), value.clone());
        let c = match token {
            Some(t) => meridian_benches::client(t).expect("http client"),
            None => reqwest::Client::new(),
        };
        tasks.push(tokio::spawn(async move {
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
    let mut per_node = vec![Vec::new(); bases.len()];
    for (client, t) in tasks.into_iter().enumerate() {
        if let Ok((o, e, s)) = t.await {
            writes += o;
            errors += e;
            per_node[client % bases.len()].extend_from_slice(&s);
            samples.extend(s);
        }
    }
    Outcome {
        writes,
        errors,
        elapsed: started.elapsed(),
        latency: Summary::of(&mut samples),
        by_node: per_node.iter_mut().map(|s| Summary::of(s)).collect(),
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

/// A node's current Raft term, read with [`meridian_term`] or [`etcd_term`].
type ReadTerm = fn(&reqwest::Client, &str) -> reqwest::RequestBuilder;

/// `GET /v1/cluster` of a Meridian origin node (its `term`).
fn meridian_term(c: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
    c.get(format!("{base}/v1/cluster"))
}

/// `POST /v3/maintenance/status` of an etcd member (its `raftTerm`, a decimal string).
fn etcd_term(c: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
    c.post(format!("{base}/v3/maintenance/status")).body("{}")
}

/// The highest Raft term any of `bases` reports (a node that does not answer is skipped).
async fn highest_term(c: &reqwest::Client, bases: &[String], read: ReadTerm) -> Option<u64> {
    let mut highest = None;
    for base in bases {
        let answer = read(c, base).timeout(Duration::from_secs(2)).send().await;
        let Ok(r) = answer else { continue };
        let Ok(v) = r.json::<serde_json::Value>().await else {
            continue;
        };
        let term = v["term"]
            .as_u64()
            .or_else(|| v["raftTerm"].as_str().and_then(|t| t.parse().ok()));
        highest = highest.max(term);
    }
    highest
}

/// How many terms began between two readings: each is an election, won or not.
fn elections_since(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// What the servers `pids` used since `before`, if both readings could be taken.
fn used_since(pids: &[u32], before: Option<ProcessUsage>) -> Option<ProcessUsage> {
    Some(ProcessUsage::of(pids)?.since(&before?))
}

fn report(name: &str, run: &Run) {
    let (o, usage) = (&run.outcome, run.usage);
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
    match run.elections {
        Some(n) => println!("{:<28} leader elections during the load: {n}", ""),
        None => println!("{:<28} leader elections during the load: unknown", ""),
    }
    for (i, s) in o.by_node.iter().enumerate() {
        if let Some(s) = s {
            println!("{:<28} written to node {}: {s}", "", i + 1);
        }
    }
}

/// One system's run: what the clients saw and what the servers used.
struct Run {
    outcome: Outcome,
    usage: Option<ProcessUsage>,
    /// Raft terms begun during the load (elections), when both readings could be taken.
    elections: Option<u64>,
}

impl Run {
    fn cpu_ms_per_write(&self) -> Option<f64> {
        self.usage
            .map(|u| u.cpu_s * 1000.0 / self.outcome.writes.max(1) as f64)
    }
}

/// Starts a fresh Meridian cluster in `dir`, loads it and stops it.
async fn run_meridian(args: &Args, dir: &std::path::Path) -> anyhow::Result<Run> {
    let pki = pki(dir)?;
    let mut opts = DevOptions::ephemeral(dir.to_owned());
    opts.origin_nodes = args.origin_nodes;
    let token = meridian::dev::ensure_admin_token(&opts)?;
    let mut nodes = Vec::new();
    let mut bases = Vec::new();
    for (i, config) in origin_cluster_configs(&opts, &pki).iter().enumerate() {
        let path = dir.join(format!("origin-{}.toml", i + 1));
        std::fs::write(&path, toml::to_string(config)?)?;
        let (child, base) = meridian_benches::cluster::spawn_origin(&path)?;
        nodes.push(child);
        bases.push(base);
    }
    meridian_benches::cluster::await_leader(&bases).await?;
    let pids: Vec<u32> = nodes.iter().map(Child::id).collect();
    let c = reqwest::Client::new();
    let term_before = highest_term(&c, &bases, meridian_term).await;
    let before = ProcessUsage::of(&pids);
    let outcome = load(args, &bases, meridian_put, Some(&token)).await;
    let usage = used_since(&pids, before);
    let elections = elections_since(term_before, highest_term(&c, &bases, meridian_term).await);
    for mut n in nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    Ok(Run {
        outcome,
        usage,
        elections,
    })
}

/// Starts a fresh etcd cluster in `dir`, loads it and stops it; `None` without etcd.
async fn run_etcd(args: &Args, dir: &std::path::Path) -> anyhow::Result<Option<Run>> {
    let Some((mut children, urls)) = start_etcd(dir)? else {
        return Ok(None);
    };
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
    let term_before = highest_term(&c, &urls, etcd_term).await;
    let before = ProcessUsage::of(&pids);
    let outcome = load(args, &urls, etcd_put, None).await;
    let usage = used_since(&pids, before);
    let elections = elections_since(term_before, highest_term(&c, &urls, etcd_term).await);
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(Some(Run {
        outcome,
        usage,
        elections,
    }))
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(match n % 2 {
        1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(config) = &args.serve_origin {
        return meridian_benches::cluster::serve_origin(config).await;
    }
    anyhow::ensure!(
        [1, 3, 5].contains(&args.origin_nodes),
        "--origin-nodes must be 1, 3 or 5"
    );
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    println!(
        "{} clients per system, {} s each, {}-byte values, writes spread over every node, {} round(s)",
        args.clients, args.seconds, args.value_bytes, args.rounds
    );
    let meridian_name = format!("meridian ({}-node origin)", args.origin_nodes);
    let (mut meridian, mut etcd) = (Vec::new(), Vec::new());
    let mut have_etcd = !args.no_etcd;
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round}");
        }
        // Fresh clusters every round, in their own folders: rounds differ only in when they ran.
        let dir = tempfile::tempdir()?;
        if args.disk_probe_seconds > 0 {
            let probe = disk_probe(dir.path(), Duration::from_secs(args.disk_probe_seconds))?;
            println!("{probe}");
        }
        let m = run_meridian(&args, &dir.path().join("meridian")).await?;
        report(&meridian_name, &m);
        meridian.push(m);
        if have_etcd {
            match run_etcd(&args, &dir.path().join("etcd")).await? {
                None => {
                    println!("etcd not on PATH: no comparison (apt-get install -y etcd-server)");
                    have_etcd = false;
                }
                Some(e) => {
                    report("etcd (3-node)", &e);
                    compare(&meridian[meridian.len() - 1], &e);
                    etcd.push(e);
                }
            }
        }
    }
    if args.rounds > 1 {
        summarize(&meridian_name, &meridian, &etcd);
    }
    Ok(())
}

/// What a disk did alone: each sync's time, and how many exceeded [`P99_TARGET`].
struct DiskProbe {
    elapsed: Duration,
    syncs: Option<Summary>,
    p999: Duration,
    over_target: usize,
}

/// The write p99 target: a sync slower than this alone puts every write waiting on it over.
const P99_TARGET: Duration = Duration::from_millis(20);

impl std::fmt::Display for DiskProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(s) = &self.syncs else {
            return write!(f, "disk alone: no sync completed");
        };
        write!(
            f,
            "disk alone, 16 KiB write + fdatasync for {:.0} s: {s}, p99.9 {:.3} ms; {} syncs over {} ms",
            self.elapsed.as_secs_f64(),
            self.p999.as_secs_f64() * 1e3,
            self.over_target,
            P99_TARGET.as_millis()
        )
    }
}

/// Writes and syncs 16 KiB at a time in `dir` for `seconds`, nothing else running: how the
/// disk under both clusters answers a flush on its own. With C closed-loop clients every sync
/// stall longer than the target holds up about C writes in flight on every node at once (the
/// three nodes share the disk), so more than `writes / 100 / C` such stalls in a run put the
/// p99 over the target whatever the servers do.
fn disk_probe(dir: &std::path::Path, seconds: Duration) -> anyhow::Result<DiskProbe> {
    use std::io::Write as _;
    let path = dir.join("disk-probe");
    let mut file = std::fs::File::create(&path).context("creating the disk probe file")?;
    let block = vec![0x5a_u8; 16 << 10];
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < seconds {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(t.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let over_target = samples.iter().filter(|d| **d > P99_TARGET).count();
    let syncs = Summary::of(&mut samples);
    let p999 = samples
        .get(((samples.len() as f64 - 1.0) * 0.999).round() as usize)
        .copied()
        .unwrap_or_default();
    Ok(DiskProbe {
        elapsed: started.elapsed(),
        syncs,
        p999,
        over_target,
    })
}

/// The ratios of one round.
fn compare(m: &Run, e: &Run) {
    if let (Some(ml), Some(el)) = (&m.outcome.latency, &e.outcome.latency) {
        println!(
            "ratio meridian/etcd: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (latency: lower is better)",
            m.outcome.rate() / e.outcome.rate(),
            ml.p50.as_secs_f64() / el.p50.as_secs_f64(),
            ml.p99.as_secs_f64() / el.p99.as_secs_f64()
        );
    }
    if let (Some(mc), Some(ec)) = (m.cpu_ms_per_write(), e.cpu_ms_per_write()) {
        println!("ratio meridian/etcd: server CPU per write {:.2}x", mc / ec);
    }
}

/// Medians over the rounds, and each round's throughput ratio (the machine's speed drifts
/// between rounds; each round ran both systems back to back).
fn summarize(meridian_name: &str, meridian: &[Run], etcd: &[Run]) {
    let line = |name: &str, runs: &[Run]| {
        let rate = median(runs.iter().map(|r| r.outcome.rate()).collect());
        let p99 = median(
            runs.iter()
                .filter_map(|r| r.outcome.latency.map(|l| l.p99.as_secs_f64() * 1000.0))
                .collect(),
        );
        let cpu = median(runs.iter().filter_map(Run::cpu_ms_per_write).collect());
        println!(
            "median of {} rounds, {name:<28} {:>6.0} writes/s, p99 {:.1} ms, server CPU {} ms/write",
            runs.len(),
            rate.unwrap_or(0.0),
            p99.unwrap_or(0.0),
            cpu.map_or_else(|| "-".to_string(), |c| format!("{c:.2}"))
        );
    };
    line(meridian_name, meridian);
    if etcd.is_empty() {
        return;
    }
    line("etcd (3-node)", etcd);
    let ratios: Vec<f64> = meridian
        .iter()
        .zip(etcd)
        .map(|(m, e)| m.outcome.rate() / e.outcome.rate())
        .collect();
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "throughput ratio meridian/etcd per round: {}; median {:.2}x",
        each.join(", "),
        median(ratios.clone()).unwrap_or(0.0)
    );
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn elections_are_the_terms_begun_between_readings() {
        use super::elections_since;
        assert_eq!(elections_since(Some(1), Some(1)), Some(0));
        assert_eq!(elections_since(Some(1), Some(3)), Some(2));
        assert_eq!(elections_since(None, Some(3)), None);
        assert_eq!(elections_since(Some(4), None), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
