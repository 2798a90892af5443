//! The origin's Raft channel is private, and what arrives on it is checked. Each test starts
//! three `meridian origin` processes on loopback and plays an attacker on the same network: a
//! raw HTTP client on the client API, raw TLS clients with no certificate, an edge's
//! certificate or another CA's on the Raft port, and a peer that holds a real origin
//! certificate but sends terms near `u64::MAX`, a snapshot chunk at offset 2^44 and writes no
//! client could make. Every attack is refused, nothing is committed, and the cluster keeps
//! serving.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use meridian_core::apply::{Command, Proposal};
use meridian_core::history::WriteMeta;
use meridian_net::TlsPaths;
use meridian_net::peer::PeerClient;
use meridian_net::tls::{ORIGIN_SERVER_NAME, origin_peer_client_crypto};
use meridian_origin::OriginConfig;
use meridian_origin::raft::{NodeId, Request, TypeConfig};
use meridian_protocol::Address;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, SnapshotMeta, Vote};
use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The origin configs `write_origin_configs` wrote.
fn read_configs(paths: &[std::path::PathBuf]) -> Vec<OriginConfig> {
    paths
        .iter()
        .map(|p| toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// Three origin processes that agree on a leader.
struct Cluster {
    _dir: tempfile::TempDir,
    processes: Vec<OriginProcess>,
    urls: Vec<String>,
    configs: Vec<OriginConfig>,
}

impl Cluster {
    async fn start() -> Self {
        init();
        let dir = tempfile::tempdir().unwrap();
        let paths = write_origin_configs(dir.path(), 3);
        let configs = read_configs(&paths);
        let (processes, urls): (Vec<_>, Vec<_>) = paths.iter().map(|p| spawn_origin(p)).unzip();
        let cluster = Self {
            _dir: dir,
            processes,
            urls,
            configs,
        };
        cluster.leader().await;
        // The bootstrap token's record is committed before the tests count revisions.
        eventually(
            Duration::from_secs(30),
            "the bootstrap revision",
            || async { (cluster.revision().await >= BOOT).then_some(()) },
        )
        .await;
        cluster
    }

    /// The leader and term every node agrees on.
    async fn leader(&self) -> (u64, u64) {
        let c = http();
        eventually(Duration::from_secs(30), "an agreed leader", || {
            let c = c.clone();
            async move {
                let mut seen = BTreeSet::new();
                for u in &self.urls {
                    let (_, v) = get_json(&c, &format!("{u}/v1/cluster")).await;
                    seen.insert((v["leader"].as_u64()?, v["term"].as_u64()?));
                }
                (seen.len() == 1).then(|| *seen.first().unwrap())
            }
        })
        .await
    }

    fn raft_addr(&self, i: usize) -> SocketAddr {
        self.configs[i].raft_listen
    }

    /// A client holding node 1's real origin certificate.
    fn peer(&self) -> PeerClient {
        PeerClient::new(origin_peer_client_crypto(&self.configs[0].tls).unwrap())
    }

    /// Every node's revision, once they agree.
    async fn revision(&self) -> u64 {
        let c = http();
        eventually(Duration::from_secs(10), "equal revisions", || {
            let c = c.clone();
            async move {
                let mut seen = BTreeSet::new();
                for u in &self.urls {
                    seen.insert(revision(&c, u).await);
                }
                (seen.len() == 1).then(|| *seen.first().unwrap())
            }
        })
        .await
    }

    /// A write through node `i`'s client API succeeds (the cluster still serves).
    async fn still_serves(&self, i: usize, key: &str) {
        put(
            &http(),
            &self.urls[i],
            &format!("app/prod/{key}"),
            json!("ok"),
        )
        .await;
    }

    /// Whether `app/prod/{key}` exists, asked linearizably of node 1.
    async fn exists(&self, key: &str) -> bool {
        let (code, _) = get_json(&http(), &format!("{}/v1/kv/app/prod/{key}", self.urls[0])).await;
        assert!(code == 200 || code == 404, "GET {key}: {code}");
        code == 200
    }
}

/// A forwarded write as a follower would send it: one put of `value` at `app/prod/{key}`.
fn forwarded_put(key: &str, value: &str) -> Vec<u8> {
    let proposal = Proposal {
        command: Command::Put {
            address: Address {
                app: "app".into(),
                env: "prod".into(),
                key: key.into(),
            },
            value: value.into(),
            expect_version: None,
        },
        meta: WriteMeta {
            time_ms: 1,
            actor: "attacker".into(),
            reason: None,
            ..Default::default()
        },
    };
    postcard::to_allocvec(&Request {
        commands: vec![proposal],
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_serves_no_raft_or_membership_route() {
    let cluster = Cluster::start().await;
    let before = cluster.revision().await;
    let c = http();
    let write = forwarded_put("planted", "\"by an HTTP client\"");
    for node in &cluster.urls {
        for path in [
            "/raft/write",
            "/raft/append",
            "/raft/vote",
            "/raft/snapshot",
            "/raft/read-index",
            "/v1/cluster/nodes",
        ] {
            let r = c
                .post(format!("{node}{path}"))
                .body(write.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "POST {path} on the client API");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unknown_route", "{path}: {body}");
        }
        let r = c
            .delete(format!("{node}/v1/cluster/nodes/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "DELETE a member on the client API");
    }
    assert!(!cluster.exists("planted").await, "nothing was committed");
    assert_eq!(cluster.revision().await, before);
    let (_, v) = get_json(&c, &format!("{}/v1/cluster", cluster.urls[0])).await;
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3), "{v}");
    cluster.still_serves(1, "after").await;
}

/// Connects to `addr` with `tls` (checking the server for the origin role), sends one request,
/// and answers what came back; an error if the handshake or the exchange failed.
async fn tls_exchange(addr: SocketAddr, tls: rustls::ClientConfig) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(ORIGIN_SERVER_NAME).unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = b"GET /v1/cluster HTTP/1.1\r\nhost: origin\r\nconnection: close\r\n\r\n";
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Asserts that the exchange got no HTTP answer.
fn refused(what: &str, result: Result<String, String>) {
    match result {
        Err(_) => {}
        Ok(answer) => assert!(
            answer.is_empty(),
            "{what} was answered: {}",
            answer.lines().next().unwrap_or_default()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_port_refuses_every_client_without_an_origin_certificate() {
    let cluster = Cluster::start().await;
    let raft = cluster.raft_addr(0);
    let ours = &cluster.configs[0].tls;
    let dir = cluster._dir.path();

    // The positive control: a real origin certificate is served.
    let answer = tls_exchange(raft, origin_peer_client_crypto(ours).unwrap())
        .await
        .expect("an origin certificate is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Plain HTTP on the Raft port.
    let mut tcp = tokio::net::TcpStream::connect(raft).await.unwrap();
    let _ = tcp
        .write_all(b"POST /raft/write HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
        "plain HTTP got an HTTP answer"
    );

    // TLS without a client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ours.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let anonymous = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    refused("no client certificate", tls_exchange(raft, anonymous).await);

    // An edge's certificate, issued by the same CA.
    let pki = meridian::dev::pki(dir).unwrap();
    let edge = pki.edge(&meridian::dev::edge_id("us-east"));
    refused(
        "an edge certificate",
        tls_exchange(raft, origin_peer_client_crypto(&edge).unwrap()).await,
    );

    // An origin certificate from another CA.
    let other = meridian_net::tls::ensure_dev_pki(&dir.join("other-ca"), &[]).unwrap();
    let foreign = TlsPaths {
        ca: ours.ca.clone(),
        ..other.origin.clone()
    };
    refused(
        "another CA's origin certificate",
        tls_exchange(raft, origin_peer_client_crypto(&foreign).unwrap()).await,
    );

    // The same refusals through a full HTTPS client sending a forwarded write.
    for (what, paths) in [("edge", edge), ("foreign", foreign)] {
        let client = PeerClient::new(origin_peer_client_crypto(&paths).unwrap());
        let sent = client
            .post(
                &raft.to_string(),
                "/raft/write",
                forwarded_put("planted", "1"),
                TIMEOUT,
            )
            .await;
        assert!(sent.is_err(), "{what}: a forwarded write was accepted");
    }
    assert!(!cluster.exists("planted").await, "nothing was committed");
    cluster.still_serves(0, "after").await;
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_wrap_terms_allocate_by_offset_or_commit_what_a_client_could_not() {
    let cluster = Cluster::start().await;
    let (leader, term) = cluster.leader().await;
    let before = cluster.revision().await;
    let peer = cluster.peer();
    // Node 2 is attacked (a follower or the leader, it does not matter).
    let target = cluster.raft_addr(1).to_string();
    let send = |path: &'static str, body: Vec<u8>| {
        let (peer, target) = (peer.clone(), target.clone());
        async move {
            let (code, body) = peer
                .request(Method::POST, &target, path, body, TIMEOUT)
                .await
                .expect("the node answers");
            (code.as_u16(), String::from_utf8_lossy(&body).into_owned())
        }
    };

    // A vote in a term near u64::MAX: a node that took it would have to wrap at the next.
    let vote = VoteRequest::<NodeId> {
        vote: Vote::new(u64::MAX - 1, 1),
        last_log_id: None,
    };
    let (code, body) = send("/raft/vote", postcard::to_allocvec(&vote).unwrap()).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("term"), "{body}");

    // AppendEntries claiming a log index at u64::MAX.
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(term, leader), u64::MAX)),
        entries: Vec::new(),
        leader_commit: None,
    };
    let (code, body) = send("/raft/append", postcard::to_allocvec(&append).unwrap()).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("index"), "{body}");

    // A snapshot chunk at offset 2^44: written at its offset it would ask for 16 TiB.
    let pid = cluster.processes[1].pid();
    let rss_before = rss_kib(pid);
    let chunk = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "forged".into(),
        },
        offset: 1 << 44,
        data: vec![0xAB; 4096],
        done: false,
    };
    let (code, body) = send("/raft/snapshot", postcard::to_allocvec(&chunk).unwrap()).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("offset"), "{body}");
    let grown_kib = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown_kib < 64 * 1024, "the node grew by {grown_kib} KiB");

    // Forwarded writes no client could make: a key outside the grammar, a value that is not
    // JSON, a value over the limit.
    let too_large = format!("\"{}\"", "x".repeat(2 << 20));
    for (key, value) in [
        ("../../etc/passwd", "1"),
        ("ok.key", "{not json"),
        ("big", too_large.as_str()),
    ] {
        let (code, body) = send("/raft/write", forwarded_put(key, value)).await;
        assert_eq!(code, 400, "{key}: {body}");
        assert!(body.contains("refused forwarded write"), "{body}");
    }

    // Nothing moved: same term, same leader, same revision; the cluster still serves.
    assert_eq!(cluster.leader().await, (leader, term));
    assert_eq!(cluster.revision().await, before);
    assert!(!cluster.exists("big").await);
    cluster.still_serves(1, "after").await;
    assert_eq!(cluster.revision().await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_folders_are_private_and_an_open_key_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for c in &cluster.configs {
        assert_eq!(mode(&c.data_dir), 0o700, "{}", c.data_dir.display());
        assert_eq!(mode(&c.signing_key), 0o600);
        assert_eq!(mode(&c.tls.key), 0o600);
    }

    // A fourth node whose signing key others may read refuses to start, naming the file.
    let dir = cluster._dir.path();
    let mut config = cluster.configs[2].clone();
    let key = dir.join("open-signing.key");
    std::fs::copy(&config.signing_key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    config.signing_key = key.clone();
    config.data_dir = dir.join("origin-4");
    let path = dir.join("origin-4.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["origin", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "an origin with an open key started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("open-signing.key") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(
        !config.data_dir.exists(),
        "it stopped before touching its data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_starting_one_node_at_a_time_logs_no_error() {
    use std::io::BufRead;
    init();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 3);
    let configs = read_configs(&paths);
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut children = Vec::new();
    for path in &paths {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["origin", "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        children.push(child);
        // The next node starts a little later, as a person or a supervisor would start them.
        let c = http();
        let url = base(configs[children.len() - 1].http_listen);
        eventually(TIMEOUT, "the node listens", || {
            let (c, url) = (c.clone(), url.clone());
            async move { c.get(format!("{url}/v1/cluster")).send().await.ok() }
        })
        .await;
    }
    let c = http();
    for config in &configs {
        let url = base(config.http_listen);
        put(&c, &url, "app/prod/k", json!(1)).await;
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let lines = lines.lock().unwrap();
    let errors: Vec<_> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines at an ordinary start: {errors:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("origin started")),
        "the logs were captured: {lines:#?}"
    );
}
