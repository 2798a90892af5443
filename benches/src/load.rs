//! HTTP load for the side-by-side harnesses: keep-alive connections on loopback, each sending
//! requests one after another until a deadline, counted and timed one by one.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::Summary;

/// Successes, failures and each request's latency, of one connection.
pub type Counts = (u64, u64, Vec<Duration>);

/// What one target did over a run.
pub struct Outcome {
    /// Requests answered 200 with a body.
    pub requests: u64,
    /// Others.
    pub errors: u64,
    /// How long the run took.
    pub elapsed: Duration,
    /// Latency of every request.
    pub latency: Option<Summary>,
}

impl Outcome {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `worker(offset, until)` on `connections` tasks for `seconds` and adds up what they did.
pub async fn run<F, Fut>(connections: usize, seconds: u64, worker: F) -> anyhow::Result<Outcome>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<Counts>> + Send + 'static,
{
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(worker(c * 7919, until)))
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

/// One keep-alive connection to `addr` sending `GET path(i)` (i counting up from `offset`)
/// with `token` as a bearer token, until `until`.
pub async fn get_worker(
    addr: std::net::SocketAddr,
    token: Option<Arc<str>>,
    path: impl Fn(usize) -> String,
    offset: usize,
    until: Instant,
) -> anyhow::Result<Counts> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
    let mut i = offset;
    while Instant::now() < until {
        i += 1;
        let mut req = hyper::Request::get(path(i)).header(hyper::header::HOST, "edge");
        if let Some(t) = &token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new())?;
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
