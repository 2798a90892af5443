//! Helpers shared by the end-to-end tests: a dev topology on ephemeral ports, HTTP helpers, and
//! waiting for an outcome with a deadline (never sleep-then-assert).

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use meridian::dev::{DevCluster, DevOptions};
use serde_json::Value;

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn cluster(dir: &std::path::Path, delta_window: u64) -> (DevCluster, DevOptions) {
    init();
    let mut opts = DevOptions::ephemeral(dir.to_owned());
    opts.delta_window = delta_window;
    (
        DevCluster::start(&opts).await.expect("dev cluster starts"),
        opts,
    )
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn put(c: &reqwest::Client, base: &str, path: &str, value: Value) -> Value {
    let r = c
        .put(format!("{base}/v1/kv/{path}"))
        .json(&serde_json::json!({ "value": value }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "PUT {path}");
    r.json().await.unwrap()
}

pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn status(c: &reqwest::Client, base: &str) -> Value {
    get_json(c, &format!("{base}/v1/status")).await.1
}

pub async fn revision(c: &reqwest::Client, base: &str) -> u64 {
    status(c, base).await["revision"].as_u64().unwrap_or(0)
}

/// The Prometheus text a node serves at `/metrics`.
pub async fn metrics_text(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn base(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}
