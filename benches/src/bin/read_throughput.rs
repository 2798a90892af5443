//! Read throughput of one edge over HTTP/1.1 keep-alive on loopback, side by side in the same
//! run with `redis-server` GET of the same keys and values, reporting both rates and the ratio.
//! The edge is read twice: with a read token (authenticated and authorized per request) and
//! without one, through a policy that makes the namespace public to anonymous readers, so the
//! cost of authentication shows as the ratio of the two.
//!
//! Needs `redis-server` on PATH for the comparison (Debian: `apt-get install -y redis-server`);
//! without it only Meridian is measured and the harness says so.
//!
//! `cargo run --release -p meridian-benches --bin read_throughput -- --seconds 5`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian::dev::{DevCluster, DevOptions};
use meridian_benches::load::{self, Outcome};

#[derive(Parser, Clone)]
#[command(about = "Edge HTTP GET throughput beside redis-server GET, same keys, same run")]
struct Args {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load per target.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Distinct keys read.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Rounds of the token / no-token pair, alternating which goes first (the machine's speed
    /// drifts; the median ratio is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

async fn redis_worker(
    url: String,
    keys: Arc<Vec<String>>,
    offset: usize,
    until: Instant,
) -> anyhow::Result<(u64, u64, Vec<Duration>)> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
    let mut i = offset;
    while Instant::now() < until {
        i = (i + 1) % keys.len();
        let t = Instant::now();
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&keys[i])
            .query_async(&mut conn)
            .await?;
        lat.push(t.elapsed());
        if v.is_some() { ok += 1 } else { errors += 1 }
    }
    Ok((ok, errors, lat))
}

async fn run<F, Fut>(args: &Args, worker: F) -> anyhow::Result<Outcome>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<load::Counts>> + Send + 'static,
{
    load::run(args.connections, args.seconds, worker).await
}

fn report(name: &str, o: &Outcome) {
    println!(
        "  {name:<22} {:>10.0} req/s  ({} ok, {} errors)",
        o.rate(),
        o.requests,
        o.errors
    );
    if let Some(l) = o.latency {
        println!("  {:<22} latency {l}", "");
    }
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
    // A service's read token, and a policy that makes the namespace public.
    let token =
        meridian_benches::read_token(&client, &origin, "bench-reader", &["bench/prod/*"]).await?;
    client
        .put(format!("{origin}/v1/policies/public-bench"))
        .json(&serde_json::json!({"subjects": ["anonymous"], "role": "viewer", "resources": ["bench/prod/*"]}))
        .send()
        .await?
        .error_for_status()?;
    let keys: Arc<Vec<String>> = Arc::new((0..args.keys).map(|i| format!("key{i}")).collect());
    let value = "v".repeat(args.value_bytes);
    let mut last = 0;
    let json_value = serde_json::Value::String(value.clone());
    for k in keys.iter() {
        let path = format!("bench/prod/{k}");
        last = meridian_benches::put(&client, &origin, &path, &json_value).await?;
    }
    let edge = &cluster.edges[0];
    meridian_benches::wait_for_revision(edge, last).await?;

    println!(
        "read throughput on loopback, {} keep-alive connections, {} s each, {} keys of {} B, {} cores",
        args.connections,
        args.seconds,
        args.keys,
        args.value_bytes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let addr = edge.http_addr;
    let mut ratios = Vec::new();
    let mut meridian = None;
    for round in 0..args.rounds.max(1) {
        let mut pair = [None, None];
        for which in [round % 2, 1 - round % 2] {
            let bearer = (which == 1).then(|| token.clone());
            let keys = keys.clone();
            let path = move |i: usize| format!("/v1/kv/bench/prod/{}", keys[i % keys.len()]);
            let o = run(&args, |offset, until| {
                load::get_worker(addr, bearer.clone(), path.clone(), offset, until)
            })
            .await?;
            pair[which] = Some(o);
        }
        let [Some(anonymous), Some(with_token)] = pair else {
            anyhow::bail!("a round did not run");
        };
        println!("round {}", round + 1);
        report("edge GET, no token", &anonymous);
        report("edge GET, read token", &with_token);
        let ratio = with_token.rate() / anonymous.rate();
        println!("  ratio token/no token     {ratio:.2}");
        ratios.push(ratio);
        meridian = Some(with_token);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  median ratio token/no token over {} rounds: {:.2}",
        ratios.len(),
        ratios[ratios.len() / 2]
    );
    let meridian = meridian.ok_or_else(|| anyhow::anyhow!("no round ran"))?;

    match meridian_benches::redis_server::start().await? {
        None => println!(
            "  redis-server not found on PATH; for the side-by-side figure install it: apt-get install -y redis-server"
        ),
        Some((_server, url)) => {
            let c = redis::Client::open(url.as_str())?;
            let mut conn = c.get_multiplexed_async_connection().await?;
            for k in keys.iter() {
                let _: () = redis::cmd("SET")
                    .arg(k)
                    .arg(&value)
                    .query_async(&mut conn)
                    .await?;
            }
            let redis = run(&args, |offset, until| {
                redis_worker(url.clone(), keys.clone(), offset, until)
            })
            .await?;
            report("redis-server GET", &redis);
            println!(
                "  ratio meridian/redis     {:.2}",
                meridian.rate() / redis.rate()
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}
