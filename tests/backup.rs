//! Backup and restore: `meridian backup` takes a consistent, signed snapshot while writes go
//! on; `meridian restore` puts it into an empty data folder, and the node started on it holds
//! the same revision, digest, history, audit chain and change requests, and goes on from there
//! (new writes, a chain that still verifies). A backup is refused where a state exists, and a
//! backup signed by another cluster's key is refused.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn cli(origin: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("MERIDIAN_ENDPOINT", origin)
        .env("MERIDIAN_ORIGIN", origin)
        .env("MERIDIAN_TOKEN", TOKEN.as_str())
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("the meridian binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What must survive a restore: status (revision, digest), a key's history, the audit log,
/// the change requests.
async fn observe(c: &reqwest::Client, o: &str) -> [Value; 4] {
    let (_, status) = get_json(c, &format!("{o}/v1/status")).await;
    let (_, history) = get_json(c, &format!("{o}/v1/kv/app/prod/k/history?limit=100")).await;
    let (_, audit) = get_json(c, &format!("{o}/v1/audit?limit=1000")).await;
    let (_, changes) = get_json(c, &format!("{o}/v1/changes")).await;
    [
        json!({"revision": status["revision"], "digest": status["digest"]}),
        history,
        audit["records"].clone(),
        changes,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_holds_the_same_state_history_and_audit_chain_and_goes_on() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let pki = meridian::dev::pki(dir.path()).unwrap();
    let config = meridian::dev::origin_cluster_configs(&opts, &pki).remove(0);
    let node = meridian_origin::start(config.clone()).await.unwrap();
    let o = base(node.http_addr);
    let c = http();
    eventually(WAIT, "the bootstrap token's record", || {
        let (c, o) = (c.clone(), o.clone());
        async move { (revision(&c, &o).await >= BOOT).then_some(()) }
    })
    .await;
    for v in 1..=3 {
        put(&c, &o, "app/prod/k", json!(v)).await;
    }
    let r = c
        .put(format!("{o}/v1/schemas/app/prod/k"))
        .json(&json!({"schema": {"type": "integer"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{o}/v1/changes"))
        .json(&json!({"reason": "later", "ops": [{"op": "put", "address": "app/prod/k", "value": 4}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Writes go on while the backup is taken.
    let writer = {
        let (c, o) = (c.clone(), o.clone());
        tokio::spawn(async move {
            for i in 0..50 {
                put(&c, &o, &format!("app/prod/w{i}"), json!(i)).await;
            }
        })
    };
    let file = dir.path().join("cluster.backup");
    let (ok, out, err) = cli(&o, &["backup", "--out", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("backup of revision"), "{out}");
    writer.await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "a backup holds secrets' ciphertext and tokens' hashes"
    );

    // The backup is at some revision among the concurrent writes; restore compares against a
    // second one taken once they are done.
    let (ok, _, err) = cli(&o, &["backup", "--out", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let before = observe(&c, &o).await;
    node.shutdown().await;

    // Restored into an empty folder, with the same key; then refused where a state exists.
    let mut restored = config.clone();
    restored.data_dir = dir.path().join("restored");
    let restored_toml = dir.path().join("restored.toml");
    std::fs::write(&restored_toml, toml::to_string(&restored).unwrap()).unwrap();
    let args = [
        "restore",
        file.to_str().unwrap(),
        "--config",
        restored_toml.to_str().unwrap(),
    ];
    let (ok, out, err) = cli(&o, &args).await;
    assert!(ok, "{out} {err}");
    let (ok, _, err) = cli(&o, &args).await;
    assert!(!ok && err.contains("already holds"), "{err}");

    let node = meridian_origin::start(restored.clone()).await.unwrap();
    let o = base(node.http_addr);
    eventually(WAIT, "the restored node serves", || {
        let (c, o) = (c.clone(), o.clone());
        async move {
            let (code, _) = get_json(&c, &format!("{o}/v1/kv/app/prod/k")).await;
            (code == 200).then_some(())
        }
    })
    .await;
    let after = observe(&c, &o).await;
    assert_eq!(
        before, after,
        "the same state, history, audit records and changes"
    );

    // It goes on: a new revision, new audit records chained to the old ones.
    let revision_before = before[0]["revision"].as_u64().unwrap();
    let written = put(&c, &o, "app/prod/after", json!(true)).await;
    assert_eq!(
        written["revision"].as_u64().unwrap(),
        revision_before + 1,
        "{written}"
    );
    let (ok, out, err) = cli(&o, &["audit", "verify"]).await;
    assert!(ok, "the chain verifies across the restore: {out} {err}");
    let (_, audit) = get_json(&c, &format!("{o}/v1/audit?limit=1000")).await;
    let records = audit["records"].as_array().unwrap();
    assert!(
        records.len() > before[2].as_array().unwrap().len(),
        "{audit}"
    );
    node.shutdown().await;

    // A backup of another cluster (another signing key) is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other_pki = meridian::dev::pki(other_dir.path()).unwrap();
    let mut other =
        meridian::dev::origin_cluster_configs(&options(other_dir.path()), &other_pki).remove(0);
    other.data_dir = other_dir.path().join("restored");
    let other_toml = other_dir.path().join("other.toml");
    std::fs::write(&other_toml, toml::to_string(&other).unwrap()).unwrap();
    let (ok, _, err) = cli(
        &o,
        &[
            "restore",
            file.to_str().unwrap(),
            "--config",
            other_toml.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok && err.contains("refused"), "{err}");
}
