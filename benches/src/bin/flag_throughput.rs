//! OFREP at an edge beside edge GET, same run, same edge, same token: single evaluations of a
//! flag with a `fractional` targeting rule (a different subject each request) against GETs of
//! a key, reporting both rates and the ratio (issue 25 asks for ≥ 0.8), alternating which goes
//! first over several rounds; then bulk evaluation of a 100-flag set, one request at a time,
//! with its latency over HTTP (the server's own time is `cargo bench --bench flags`).
//!
//! `cargo run --release -p meridian-benches --bin flag_throughput -- --seconds 5`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use meridian::dev::{DevCluster, DevOptions};
use meridian_benches::Summary;

#[derive(Parser, Clone)]
#[command(about = "OFREP evaluation at an edge beside edge GET, same run")]
struct Args {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load per target.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the GET / OFREP pair, alternating which goes first (the median ratio is
    /// reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bulk evaluations timed one by one.
    #[arg(long, default_value_t = 2000)]
    bulk_requests: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Ask {
    Get,
    Evaluate,
    Bulk,
}

async fn worker(
    addr: std::net::SocketAddr,
    token: Arc<str>,
    ask: Ask,
    offset: usize,
    until: Instant,
    max: usize,
) -> anyhow::Result<(u64, u64, Vec<Duration>)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
    let mut i = offset;
    while Instant::now() < until && (ok + errors) < max as u64 {
        i += 1;
        let auth = format!("Bearer {token}");
        let req = match ask {
            Ask::Get => hyper::Request::get(format!("/v1/kv/bench/prod/key{}", i % 1000))
                .header(hyper::header::HOST, "edge")
                .header(hyper::header::AUTHORIZATION, auth)
                .body(http_body_util::Either::Left(Empty::<Bytes>::new()))?,
            Ask::Evaluate | Ask::Bulk => {
                let path = if ask == Ask::Evaluate {
                    format!(
                        "/v1/flags/bench/prod/ofrep/v1/evaluate/flags/flag-{}",
                        i % 100
                    )
                } else {
                    "/v1/flags/bench/prod/ofrep/v1/evaluate/flags".to_owned()
                };
                let body = format!(
                    r#"{{"context":{{"targetingKey":"user-{i}","country":"CA","plan":"pro"}}}}"#
                );
                hyper::Request::post(path)
                    .header(hyper::header::HOST, "edge")
                    .header(hyper::header::AUTHORIZATION, auth)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Either::Right(Full::new(Bytes::from(body))))?
            }
        };
        let t = Instant::now();
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        lat.push(t.elapsed());
        if status == 200 && !body.is_empty() {
            ok += 1
        } else {
            errors += 1
        }
    }
    Ok((ok, errors, lat))
}

struct Outcome {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Option<Summary>,
}

async fn run(
    addr: std::net::SocketAddr,
    token: &Arc<str>,
    ask: Ask,
    connections: usize,
    seconds: u64,
    max: usize,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(worker(addr, token.clone(), ask, c * 7919, until, max)))
        .collect();
    let (mut requests, mut errors, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (ok, err, l) = t.await??;
        requests += ok;
        errors += err;
        lat.extend(l);
    }
    Ok(Outcome {
        requests,
        errors,
        elapsed: start.elapsed(),
        latency: Summary::of(&mut lat),
    })
}

fn report(name: &str, o: &Outcome) -> f64 {
    let rate = o.requests as f64 / o.elapsed.as_secs_f64();
    println!(
        "  {name:<30} {rate:>10.0} req/s  ({} ok, {} errors)",
        o.requests, o.errors
    );
    if let Some(l) = o.latency {
        println!("  {:<30} latency {l}", "");
    }
    rate
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
    let token =
        meridian_benches::read_token(&client, &origin, "bench-reader", &["bench/prod/*"]).await?;
    let value = serde_json::Value::String("v".repeat(64));
    for i in 0..1000 {
        meridian_benches::put(&client, &origin, &format!("bench/prod/key{i}"), &value).await?;
    }
    let mut flags = serde_json::Map::new();
    for i in 0..100 {
        flags.insert(
            format!("flag-{i}"),
            serde_json::json!({
                "state": "ENABLED",
                "variants": {"control": false, "treatment": true},
                "defaultVariant": "control",
                "targeting": {"if": [
                    {"in": [{"var": "country"}, ["CA", "US", "MX"]]},
                    {"fractional": [["control", 50], ["treatment", 50]]},
                    "control"
                ]}
            }),
        );
    }
    let answer: serde_json::Value = client
        .put(format!("{origin}/v1/flags/bench/prod"))
        .json(&serde_json::json!({ "flags": flags }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let last = answer["revision"].as_u64().unwrap_or(0);
    let edge = &cluster.edges[0];
    meridian_benches::wait_for_revision(edge, last).await?;
    println!(
        "OFREP beside GET at one edge on loopback, {} keep-alive connections, {} s each, read token, {} cores",
        args.connections,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let addr = edge.http_addr;
    let mut ratios = Vec::new();
    for round in 0..args.rounds.max(1) {
        println!("round {}", round + 1);
        let order = if round % 2 == 0 {
            [Ask::Get, Ask::Evaluate]
        } else {
            [Ask::Evaluate, Ask::Get]
        };
        let (mut get, mut eval) = (0.0, 0.0);
        for ask in order {
            let o = run(
                addr,
                &token,
                ask,
                args.connections,
                args.seconds,
                usize::MAX,
            )
            .await?;
            if ask == Ask::Get {
                get = report("edge GET of a key", &o);
            } else {
                eval = report("OFREP evaluation (fractional)", &o);
            }
        }
        println!("  ratio OFREP/GET                {:.2}", eval / get);
        ratios.push(eval / get);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  median ratio OFREP/GET over {} rounds: {:.2}",
        ratios.len(),
        ratios[ratios.len() / 2]
    );
    let bulk = run(addr, &token, Ask::Bulk, 1, 60, args.bulk_requests).await?;
    report("bulk, 100 flags, one at a time", &bulk);
    cluster.shutdown().await;
    Ok(())
}
