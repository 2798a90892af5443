//! Helpers shared by the end-to-end tests: a dev topology on ephemeral ports, HTTP helpers, and
//! waiting for an outcome with a deadline (never sleep-then-assert).

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian::dev::{DevCluster, DevOptions, origin_cluster_configs, pki};
use serde_json::Value;

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The revisions an origin has committed when it is up: the bootstrap admin token's record.
pub const BOOT: u64 = 1;

/// The revisions a dev topology ([`cluster`]) has committed when it is up: the admin token's
/// record and the directory records of its three edges, which accept peers.
pub const DEV_BOOT: u64 = BOOT + 3;

/// The admin token of every dev topology this test process starts (see [`options`]).
pub static TOKEN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(meridian_net::auth::new_token);

/// Dev options on ephemeral ports whose admin token is [`TOKEN`], already written to
/// `dir/admin.token` for the origins to bootstrap with.
pub fn options(dir: &Path) -> DevOptions {
    let mut opts = DevOptions::ephemeral(dir.to_owned());
    opts.admin_token = TOKEN.clone();
    let token = meridian::dev::ensure_admin_token(&opts).expect("admin token file");
    assert_eq!(token, *TOKEN, "{} holds another token", dir.display());
    opts
}

pub async fn cluster(dir: &std::path::Path, delta_window: u64) -> (DevCluster, DevOptions) {
    init();
    let mut opts = options(dir);
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

/// A client that presents the admin token [`TOKEN`].
pub fn http() -> reqwest::Client {
    http_with(&TOKEN)
}

/// A client that presents `token`.
pub fn http_with(token: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(auth_headers(token))
        .build()
        .unwrap()
}

/// `Authorization: Bearer <token>`, for clients built with other options.
pub fn auth_headers(token: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

/// A client that presents no token.
pub fn http_anonymous() -> reqwest::Client {
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

/// Which of the origin nodes at `addrs` says it leads (the first that does).
pub async fn leader_index(c: &reqwest::Client, addrs: &[std::net::SocketAddr]) -> usize {
    for (i, addr) in addrs.iter().enumerate() {
        if status(c, &base(*addr)).await["role"] == "leader" {
            return i;
        }
    }
    panic!("no node of {addrs:?} says it leads");
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

/// Writes the configs of an `n`-node origin cluster on ephemeral loopback ports into `dir`
/// (`origin-1.toml`, ...), with its PKI; their paths, node 1 first.
pub fn write_origin_configs(dir: &Path, n: usize) -> Vec<PathBuf> {
    let pki = pki(dir).unwrap();
    let mut opts = options(dir);
    opts.origin_nodes = n;
    let mut paths = Vec::new();
    for (i, config) in origin_cluster_configs(&opts, &pki).iter().enumerate() {
        let path = dir.join(format!("origin-{}.toml", i + 1));
        std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
        paths.push(path);
    }
    paths
}

/// A `meridian origin` or `meridian edge` process, killed when dropped (also when a test
/// panics, so that no node outlives its test).
pub struct NodeProcess(Child);

/// An origin node's process.
pub type OriginProcess = NodeProcess;

impl NodeProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) {
        let _ = self.0.wait();
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the process `meridian ROLE --config FILE` (`origin` or `edge`); its HTTP base URL
/// once it listens (it prints `ROLE: HTTP <url> …`).
pub fn spawn_node(role: &str, config: &Path) -> (NodeProcess, String) {
    // What it says on stderr goes beside its config, to say why if it does not start.
    let log = config.with_extension("stderr");
    let stderr = std::fs::File::create(&log).expect("stderr file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([role, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn meridian {role}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let process = NodeProcess(child);
    let prefix = format!("{role}: HTTP ");
    // Log lines may come first.
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix(&prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            panic!(
                "meridian {role} --config {} did not print its address; it said: {}",
                config.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    (process, url)
}

/// Starts `meridian origin --config FILE`; its HTTP base URL once it listens.
pub fn spawn_origin(config: &Path) -> (OriginProcess, String) {
    spawn_node("origin", config)
}

/// A one-node origin (its config kept, so it can be restarted on the same ports) and one
/// eu-west edge of it, the edge's config changed by `tweak` before it starts.
pub async fn origin_and_edge(
    dir: &Path,
    tweak: impl FnOnce(&mut meridian_edge::EdgeConfig),
) -> (
    meridian_origin::OriginConfig,
    meridian_origin::OriginHandle,
    meridian_edge::EdgeConfig,
    meridian_edge::EdgeHandle,
) {
    init();
    let opts = options(dir);
    let pki = pki(dir).unwrap();
    let origin_config = origin_cluster_configs(&opts, &pki).remove(0);
    let origin = meridian_origin::start(origin_config.clone()).await.unwrap();
    let mut config = meridian::dev::edge_config(
        dir,
        &pki,
        meridian::dev::REGIONS[1],
        "127.0.0.1:0".parse().unwrap(),
        origin.quic_addr,
    );
    tweak(&mut config);
    config.validate().unwrap();
    let edge = meridian_edge::start(config.clone()).await.unwrap();
    meridian::dev::wait_for_token(std::slice::from_ref(&edge), &TOKEN)
        .await
        .unwrap();
    (origin_config, origin, config, edge)
}

/// Makes a token through `origin`'s API with the admin client `c`: `body` is the
/// `POST /v1/tokens` body (`{"name", "role", "resources", ...}`); its text and id.
pub async fn create_token(c: &reqwest::Client, origin: &str, body: Value) -> (String, String) {
    let r = c
        .post(format!("{origin}/v1/tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "POST /v1/tokens {body}");
    let v: Value = r.json().await.unwrap();
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}
