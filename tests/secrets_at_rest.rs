//! Secrets at rest and under key rotation, against a running dev topology (three origin
//! nodes, three edges mirroring into a real `redis-server`):
//! - a marker secret written, rotated, rolled back and re-sealed under a new data key is found
//!   in no file under any node's data folder and not in Redis's dump, while a plain control
//!   value is found in each (so the scan does see values at rest);
//! - rotating the key-encryption key under a steady write load loses no write, rewraps every
//!   data key, and every edge still reveals every secret afterwards.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` that saves its dump uncompressed into `dir` when told to `SAVE`.
fn redis(port: u16, dir: &Path) -> RedisServer {
    RedisServer(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--rdbcompression", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)"),
    )
}

async fn redis_cmd(url: &str, args: &[&str]) -> Option<redis::Value> {
    let mut con = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut con).await.ok()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether any file under `dir` holds `needle`.
fn found_in(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files(dir)
        .into_iter()
        .filter(|f| {
            std::fs::read(f).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn allow_edges(admin: &reqwest::Client, o: &str) {
    let (code, body) = send(admin.put(format!("{o}/v1/policies/edges")).json(&json!({
        "subjects": ["edge:*"], "actions": ["secret-read"], "resources": ["*/*/*"]
    })))
    .await;
    assert_eq!(code, 200, "{body}");
}

async fn reveal(c: &reqwest::Client, node: &str, path: &str) -> Option<Value> {
    let (code, body) = get_json(c, &format!("{node}/v1/secrets/{path}?reveal=true")).await;
    (code == 200).then(|| body["value"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_plaintext_secret_on_any_disk_or_in_redis() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let redis_dir = tempfile::tempdir().unwrap();
    let port = meridian::dev::free_port(std::net::IpAddr::from([127, 0, 0, 1]));
    let _redis = redis(port, redis_dir.path());
    let url = format!("redis://127.0.0.1:{port}/");
    eventually(WAIT, "redis-server answers", || async {
        redis_cmd(&url, &["PING"]).await.map(|_| ())
    })
    .await;
    let mut opts = options(dir.path());
    opts.origin_nodes = 3;
    opts.redis_url = Some(url.clone());
    let cluster = meridian::dev::DevCluster::start(&opts).await.unwrap();
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let marker = format!("MARKER-{}", meridian_net::auth::new_token());
    let control = format!("CONTROL-{}", meridian_net::auth::new_token());
    allow_edges(&admin, &o).await;

    put(&admin, &o, "pay/prod/control", json!(control)).await;
    let secret = |v: Value| json!({"value": v});
    for (path, value) in [
        ("pay/prod/db.password", json!(marker)),
        (
            "pay/prod/nested",
            json!({"user": "app", "password": marker}),
        ),
        ("web/prod/token", json!(format!("Bearer {marker}"))),
    ] {
        let (code, body) = send(
            admin
                .put(format!("{o}/v1/secrets/{path}"))
                .json(&secret(value)),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }
    let txn =
        json!({"ops": [{"op": "put", "address": "web/prod/txn", "value": marker, "secret": true}]});
    assert_eq!(
        send(admin.post(format!("{o}/v1/txn")).json(&txn)).await.0,
        200
    );
    let rotated = json!({"value": "other", "grace_s": 600});
    let url_rotate = format!("{o}/v1/secrets/pay/prod/db.password/rotate");
    assert_eq!(send(admin.post(&url_rotate).json(&rotated)).await.0, 200);
    let rollback = format!("{o}/v1/kv/pay/prod/db.password/rollback");
    assert_eq!(
        send(admin.post(&rollback).json(&json!({"version": 1})))
            .await
            .0,
        200
    );
    let rotate_key = admin
        .post(format!("{o}/v1/secret-keys/pay/prod/rotate"))
        .header("content-type", "application/json");
    assert_eq!(send(rotate_key).await.0, 200);
    put(&admin, &o, "pay/prod/dsn", json!("x:${secret:db.password}")).await;

    // Every edge reveals (so it holds the keys, and logged the reveals), and serves the
    // template to the admin.
    for e in &cluster.edges {
        let edge = base(e.http_addr);
        eventually(WAIT, "the edge reveals every secret", || async {
            let a = reveal(&admin, &edge, "pay/prod/db.password").await?;
            let b = reveal(&admin, &edge, "web/prod/txn").await?;
            (a == json!(marker) && b == json!(marker)).then_some(())
        })
        .await;
        let (_, dsn) = get_json(&admin, &format!("{edge}/v1/kv/pay/prod/dsn")).await;
        assert_eq!(dsn["value"], json!(format!("x:{marker}")));
    }
    // Redis mirrors the ciphertext; the dump is written.
    eventually(WAIT, "redis mirrors the secret", || async {
        match redis_cmd(&url, &["GET", "config:pay:prod:db.password"]).await? {
            redis::Value::BulkString(b) => {
                String::from_utf8(b).ok()?.contains("$secret").then_some(())
            }
            _ => None,
        }
    })
    .await;
    redis_cmd(&url, &["SAVE"]).await.expect("SAVE");
    cluster.shutdown().await;

    let mut nodes = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("origin") || name.starts_with("edge")) {
            continue;
        }
        nodes += 1;
        let d = entry.path();
        assert!(
            !found_in(&d, control.as_bytes()).is_empty(),
            "the scan sees values at rest in {name}"
        );
        let leaks = found_in(&d, marker.as_bytes());
        assert!(
            leaks.is_empty(),
            "plaintext secret on disk in {name}: {leaks:?}"
        );
    }
    assert_eq!(nodes, 6, "three origin nodes and three edges");
    assert!(
        !found_in(redis_dir.path(), control.as_bytes()).is_empty(),
        "the dump holds values"
    );
    assert!(
        found_in(redis_dir.path(), marker.as_bytes()).is_empty(),
        "plaintext secret in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kek_rotation_under_writes_loses_nothing_and_every_edge_still_reveals() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    allow_edges(&admin, &o).await;
    let namespaces = ["a/prod", "b/prod", "c/prod", "d/dev"];
    for ns in namespaces {
        let (code, body) = send(
            admin
                .put(format!("{o}/v1/secrets/{ns}/s0"))
                .json(&json!({"value": format!("{ns}-0")})),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }

    // A steady load of secret and plain writes while the key-encryption key is rotated.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (admin, o, stop) = (admin.clone(), o.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 40 {
                let ns = namespaces[i as usize % namespaces.len()];
                let (code, body) = send(
                    admin
                        .put(format!("{o}/v1/secrets/{ns}/s{i}"))
                        .json(&json!({"value": format!("{ns}-{i}")})),
                )
                .await;
                assert_eq!(code, 200, "secret write {i} during the rotation: {body}");
                put(&admin, &o, &format!("{ns}/plain{i}"), json!(i)).await;
                acked.push((ns, i));
                i += 1;
            }
            acked
        })
    };
    let kek = meridian::dev::kek_path(dir.path());
    assert_eq!(
        meridian_origin::secrets::kek_file::add_key(&kek).unwrap(),
        "kek-2"
    );
    let (code, body) = send(
        admin
            .post(format!("{o}/v1/secret-keys/rotate"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["kek"], "kek-2");
    assert_eq!(body["rewrapped"], namespaces.len(), "{body}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap();

    let (_, keys) = get_json(&admin, &format!("{o}/v1/secret-keys")).await;
    for ns in keys["namespaces"].as_array().unwrap() {
        for k in ns["keys"].as_array().unwrap() {
            assert_eq!(k["kek"], "kek-2", "every data key rewrapped: {keys}");
        }
    }
    // Nothing lost, and every edge reveals every secret, the old and the new.
    let newest = revision(&admin, &o).await;
    for e in &cluster.edges {
        let edge = base(e.http_addr);
        eventually(WAIT, "the edge catches up", || async {
            (revision(&admin, &edge).await >= newest).then_some(())
        })
        .await;
        for (ns, i) in acked
            .iter()
            .copied()
            .chain(namespaces.iter().map(|ns| (*ns, 0)))
        {
            let got = eventually(WAIT, "the edge reveals", || async {
                reveal(&admin, &edge, &format!("{ns}/s{i}")).await
            })
            .await;
            assert_eq!(got, json!(format!("{ns}-{i}")));
            if i > 0 {
                let (_, plain) = get_json(&admin, &format!("{edge}/v1/kv/{ns}/plain{i}")).await;
                assert_eq!(plain["value"], json!(i));
            }
        }
    }
    cluster.shutdown().await;
}
