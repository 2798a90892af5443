//! Watch fan-out: N concurrent Server-Sent-Events subscribers on one edge; each write at the
//! origin is timed until every subscriber has received it (p50/p99/max over subscribers and
//! writes). Beside it, in the same run, `redis-server` PUBLISH to N SUBSCRIBE connections,
//! and the ratio of the two.
//!
//! The subscribers live in a child process (this harness started again with `--subscribe`),
//! so that neither side runs out of file descriptors and the edge does not share a runtime
//! with its clients; both processes stamp times with the system clock of the one machine.
//!
//! `cargo run --release -p meridian-benches --bin fanout -- --subscribers 10000`

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use meridian::dev::{DevCluster, DevOptions};
use meridian_benches::Summary;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Clone, Debug)]
#[command(about = "One write fanned out to N watch subscribers, beside Redis pub/sub")]
struct Args {
    /// Concurrent subscribers.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Writes timed (one after another, each once every subscriber has it).
    #[arg(long, default_value_t = 5)]
    writes: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Child role: hold the subscriptions (`sse:HOST:PORT` or `redis:HOST:PORT`).
    #[arg(long, hide = true)]
    subscribe: Option<String>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One subscriber: connects, subscribes, then reports `(marker, received_at_us)` for every
/// marker it sees. SSE markers are revisions (`id: R`), Redis markers the published numbers.
async fn subscriber(
    kind: Arc<String>,
    addr: String,
    tx: tokio::sync::mpsc::UnboundedSender<(u64, u64)>,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    s.set_nodelay(true)?;
    let (request, needle): (String, &[u8]) = if kind.as_str() == "sse" {
        (
            "GET /v1/watch?app=bench&env=prod HTTP/1.1\r\nHost: edge\r\nAccept: text/event-stream\r\n\r\n"
                .into(),
            b"\nid: ",
        )
    } else {
        ("SUBSCRIBE bench\r\n".into(), b"\r\nfanout-")
    };
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut subscribed = false;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        let at = now_us();
        buf.extend_from_slice(&chunk[..n]);
        if !subscribed {
            let ok = if kind.as_str() == "sse" {
                buf.windows(4).any(|w| w == b"\r\n\r\n")
            } else {
                buf.windows(9).any(|w| w == b"subscribe")
            };
            if ok {
                subscribed = true;
                let _ = ready.send(());
            }
        }
        // Find every marker followed by digits.
        let mut i = 0;
        let mut keep_from = buf.len().saturating_sub(64);
        while let Some(p) = buf[i..].windows(needle.len()).position(|w| w == needle) {
            let start = i + p + needle.len();
            let digits: Vec<u8> = buf[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            if start + digits.len() >= buf.len() {
                keep_from = keep_from.min(i + p);
                break;
            }
            if let Some(m) = std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse().ok())
                && seen.insert(m)
            {
                let _ = tx.send((m, at));
            }
            i = start;
        }
        buf.drain(..keep_from.min(buf.len()));
    }
}

/// The child: holds the subscriptions, prints `ready` when all are subscribed, then one line
/// `MARKER US US …` per marker once every subscriber has it (or after 30 s).
async fn subscribe(spec: &str, n: usize, writes: usize) -> anyhow::Result<()> {
    let (kind, addr) = spec.split_once(':').context("--subscribe KIND:ADDR")?;
    let kind = Arc::new(kind.to_owned());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..n {
        tokio::spawn(subscriber(
            kind.clone(),
            addr.to_owned(),
            tx.clone(),
            ready_tx.clone(),
        ));
        if i % 500 == 499 {
            // Let the accept queue drain.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    drop(tx);
    let mut ready = 0;
    while ready < n {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("subscribers not ready within 60 s")?
            .context("subscribers gone")?;
        ready += 1;
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut got: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30 + 5 * writes as u64);
    while got.values().filter(|v| v.len() >= n).count() < writes {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((m, at))) => got.entry(m).or_default().push(at),
            _ => break,
        }
    }
    for (m, times) in got {
        let line: Vec<String> = times.iter().map(u64::to_string).collect();
        println!("{m} {}", line.join(" "));
    }
    Ok(())
}

struct Fanout {
    per_write: Vec<Summary>,
    all: Option<Summary>,
    missing: usize,
}

/// Starts the child for `spec`, runs `write(i)` (which returns the marker and the write's
/// start time) once all are subscribed, and measures.
async fn measure<F, Fut>(args: &Args, spec: &str, mut write: F) -> anyhow::Result<Fanout>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u64, u64)>>,
{
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--subscribe", spec])
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--writes", &args.writes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the subscriber process")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = tokio::task::block_in_place(|| lines.next())
        .context("subscriber process ended early")??;
    anyhow::ensure!(first == "ready", "subscriber process said {first:?}");
    let mut started = std::collections::BTreeMap::new();
    for i in 0..args.writes {
        let (marker, at) = write(i).await?;
        started.insert(marker, at);
        // Let each fan-out finish before the next write.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rest: Vec<String> = tokio::task::block_in_place(|| lines.map_while(Result::ok).collect());
    let _ = child.wait();
    let (mut per_write, mut all, mut missing) = (Vec::new(), Vec::new(), 0);
    for line in rest {
        let mut parts = line.split_whitespace();
        let Some(marker) = parts.next().and_then(|m| m.parse::<u64>().ok()) else {
            continue;
        };
        let Some(&t0) = started.get(&marker) else {
            continue;
        };
        let mut lat: Vec<Duration> = parts
            .filter_map(|t| t.parse::<u64>().ok())
            .map(|t| Duration::from_micros(t.saturating_sub(t0)))
            .collect();
        missing += args.subscribers.saturating_sub(lat.len());
        all.extend(lat.iter().copied());
        if let Some(s) = Summary::of(&mut lat) {
            per_write.push(s);
        }
    }
    missing += args.subscribers * args.writes.saturating_sub(per_write.len());
    Ok(Fanout {
        per_write,
        all: Summary::of(&mut all),
        missing,
    })
}

fn report(name: &str, f: &Fanout) {
    for (i, s) in f.per_write.iter().enumerate() {
        println!("  {name:<8} write {}: {s}", i + 1);
    }
    match f.all {
        Some(s) => println!("  {name:<8} all:     {s}, {} deliveries missing", f.missing),
        None => println!("  {name:<8} nothing delivered"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(spec) = &args.subscribe {
        return subscribe(spec, args.subscribers, args.writes).await;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    meridian_benches::prepare_node_process();
    let dir = tempfile::tempdir()?;
    let opts = DevOptions::ephemeral(dir.path().to_owned());
    let cluster = DevCluster::start(&opts).await?;
    let origin = format!("http://{}", cluster.origin.http_addr);
    let edge = cluster.edges[0].http_addr;
    let c = meridian_benches::client(&opts.admin_token)?;
    // The subscribers watch without a token: the namespace is public to readers.
    c.put(format!("{origin}/v1/policies/public-bench"))
        .json(&serde_json::json!({"subjects": ["anonymous"], "role": "viewer", "resources": ["bench/prod/*"]}))
        .send()
        .await?
        .error_for_status()?;
    let value = "x".repeat(args.value_bytes);
    println!(
        "fan-out of one write to {} subscribers, {} writes, {}-byte values",
        args.subscribers, args.writes, args.value_bytes
    );

    let meridian = measure(&args, &format!("sse:{edge}"), |i| {
        let (c, origin, value) = (c.clone(), origin.clone(), value.clone());
        async move {
            let at = now_us();
            let value = serde_json::Value::String(value);
            let revision =
                meridian_benches::put(&c, &origin, &format!("bench/prod/k{i}"), &value).await?;
            Ok((revision, at))
        }
    })
    .await?;
    report("meridian", &meridian);

    let redis = match meridian_benches::redis_server::start().await? {
        None => {
            println!(
                "  redis-server not found on PATH; for the side-by-side figure install it: apt-get install -y redis-server"
            );
            None
        }
        Some((server, url)) => {
            let client = redis::Client::open(url.as_str())?;
            let con = client.get_multiplexed_async_connection().await?;
            let addr = url
                .trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned();
            let f = measure(&args, &format!("redis:{addr}"), |i| {
                let mut con = con.clone();
                let payload = format!("fanout-{} {value}", i + 1);
                async move {
                    let at = now_us();
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg("bench")
                        .arg(payload)
                        .query_async(&mut con)
                        .await?;
                    Ok(((i + 1) as u64, at))
                }
            })
            .await?;
            drop(con);
            drop(server);
            report("redis", &f);
            Some(f)
        }
    };
    if let (Some(m), Some(r)) = (meridian.all, redis.as_ref().and_then(|r| r.all)) {
        println!(
            "  ratio (meridian / redis): p50 {:.2}, p99 {:.2}, max {:.2}",
            m.p50.as_secs_f64() / r.p50.as_secs_f64(),
            m.p99.as_secs_f64() / r.p99.as_secs_f64(),
            m.max.as_secs_f64() / r.max.as_secs_f64()
        );
    }
    if let Some(m) = meridian.all {
        println!(
            "  target: every subscriber within 1 s: {}",
            if m.max <= Duration::from_secs(1) && meridian.missing == 0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    cluster.shutdown().await;
    Ok(())
}
