//! The audit log: each kind of action leaves exactly one record naming the authenticated
//! actor; refused mutations are recorded too; `meridian audit verify` detects a record edited
//! in the store; records survive the leader's SIGKILL.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Every record after `after`, oldest first, read at `origin` with the admin token.
async fn records_after(c: &reqwest::Client, origin: &str, after: u64) -> Vec<Value> {
    let (code, page) = get_json(c, &format!("{origin}/v1/audit?cursor={after}&limit=1000")).await;
    assert_eq!(code, 200, "{page}");
    page["records"].as_array().cloned().unwrap_or_default()
}

async fn newest_seq(c: &reqwest::Client, origin: &str) -> u64 {
    let (code, head) = get_json(c, &format!("{origin}/v1/audit/head")).await;
    assert_eq!(code, 200, "{head}");
    head["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_action_leaves_one_record_with_its_actor() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let (alice_token, alice_id) = create_token(
        &admin,
        &o,
        json!({"name": "alice", "role": "editor", "resources": ["pay/*/*"]}),
    )
    .await;
    let (viewer_token, _) = create_token(
        &admin,
        &o,
        json!({"name": "viewer", "role": "viewer", "resources": ["*/*/*"]}),
    )
    .await;
    let alice = http_with(&alice_token);
    let viewer = http_with(&viewer_token);
    let start = newest_seq(&admin, &o).await;
    let before_rollback = revision(&admin, &o).await;

    let send = |r: reqwest::RequestBuilder| async move {
        let r = r.header("x-request-id", "req-42").send().await.unwrap();
        r.status().as_u16()
    };
    assert_eq!(
        send(
            alice
                .put(format!("{o}/v1/kv/pay/prod/a"))
                .json(&json!({"value": 1, "reason": "first"}))
        )
        .await,
        200
    );
    assert_eq!(
        send(
            alice
                .patch(format!("{o}/v1/kv/pay/prod/a"))
                .json(&json!({"patch": {"x": 1}}))
        )
        .await,
        200
    );
    assert_eq!(
        send(
            alice
                .put(format!("{o}/v1/kv/pay/prod/a"))
                .json(&json!({"value": 2, "expect_version": 9}))
        )
        .await,
        409
    );
    assert_eq!(
        send(
            alice
                .post(format!("{o}/v1/kv/pay/prod/a/rollback"))
                .json(&json!({"version": 1}))
        )
        .await,
        200
    );
    assert_eq!(
        send(
            alice
                .post(format!("{o}/v1/txn"))
                .json(&json!({"ops": [{"op": "put", "address": "pay/prod/b", "value": 1}]}))
        )
        .await,
        200
    );
    assert_eq!(
        send(alice.delete(format!("{o}/v1/kv/pay/prod/b"))).await,
        200
    );
    assert_eq!(
        send(
            alice
                .post(format!("{o}/v1/rollback/pay/prod"))
                .json(&json!({"revision": before_rollback}))
        )
        .await,
        200
    );
    assert_eq!(
        send(
            alice
                .put(format!("{o}/v1/schemas/pay/prod/s"))
                .json(&json!({"schema": {"type": "number"}}))
        )
        .await,
        200
    );
    assert_eq!(
        send(alice.delete(format!("{o}/v1/schemas/pay/prod/s"))).await,
        200
    );
    let made = admin
        .post(format!("{o}/v1/tokens"))
        .json(&json!({"name": "temp"}))
        .send()
        .await
        .unwrap();
    let made: Value = made.json().await.unwrap();
    let temp = made["id"].as_str().unwrap().to_owned();
    assert_eq!(
        send(admin.delete(format!("{o}/v1/tokens/{temp}"))).await,
        200
    );
    assert_eq!(
        send(
            admin.put(format!("{o}/v1/policies/p1")).json(
                &json!({"subjects": ["group:ops"], "role": "viewer", "resources": ["*/*/*"]})
            )
        )
        .await,
        200
    );
    assert_eq!(send(admin.delete(format!("{o}/v1/policies/p1"))).await, 200);
    // Refused mutations are recorded; refused and allowed reads are not.
    assert_eq!(
        send(
            viewer
                .put(format!("{o}/v1/kv/pay/prod/a"))
                .json(&json!({"value": 3}))
        )
        .await,
        403
    );
    assert_eq!(
        send(http_anonymous().delete(format!("{o}/v1/kv/pay/prod/a"))).await,
        401
    );
    assert_eq!(send(alice.get(format!("{o}/v1/kv/shop/prod/x"))).await, 403);
    // Allowed, and absent since the environment's rollback.
    assert_eq!(send(alice.get(format!("{o}/v1/kv/pay/prod/a"))).await, 404);

    let alice_actor = format!("alice#{alice_id}");
    let (token_res, policy) = (format!("token:{temp}"), "policy:p1".to_owned());
    let expected: Vec<(&str, &str, &str, &str)> = vec![
        ("alice", "write", "pay/prod/a", "ok"),
        ("alice", "write", "pay/prod/a", "ok"),
        ("alice", "write", "pay/prod/a", "version_conflict"),
        ("alice", "rollback", "pay/prod/a", "ok"),
        ("alice", "txn", "pay/prod/b", "ok"),
        ("alice", "delete", "pay/prod/b", "ok"),
        ("alice", "rollback", "", "ok"),
        ("alice", "schema", "pay/prod/s*", "ok"),
        ("alice", "schema", "pay/prod/s*", "ok"),
        ("admin", "token-create", &token_res, "ok"),
        ("admin", "token-revoke", &token_res, "ok"),
        ("admin", "policy-set", &policy, "ok"),
        ("admin", "policy-delete", &policy, "ok"),
        ("viewer", "put", "/v1/kv/pay/prod/a", "forbidden"),
        (
            "anonymous",
            "delete",
            "/v1/kv/pay/prod/a",
            "unauthenticated",
        ),
    ];
    let actor_is = |who: &str, actor: &str| match who {
        "alice" => actor == alice_actor,
        "admin" => actor.starts_with("bootstrap-admin#"),
        "viewer" => actor.starts_with("viewer#"),
        other => actor == other,
    };
    let got = eventually(WAIT, "the refusals are recorded", || async {
        let records = records_after(&admin, &o, start).await;
        (records.len() >= expected.len()).then_some(records)
    })
    .await;
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (i, (r, (actor, action, resource, outcome))) in got.iter().zip(&expected).enumerate() {
        let what = format!("record {i}: {r}");
        assert!(actor_is(actor, r["actor"].as_str().unwrap()), "{what}");
        assert_eq!(r["action"], *action, "{what}");
        // An environment's rollback is a transaction: it names the first key it restores.
        if !resource.is_empty() {
            assert_eq!(r["resource"], *resource, "{what}");
        }
        assert_eq!(r["outcome"], *outcome, "{what}");
        assert!(r["time_ms"].as_u64().unwrap() > 1_700_000_000_000, "{what}");
        assert!(
            r["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{what}"
        );
        if i != 9 {
            assert_eq!(r["request_id"], "req-42", "{what}");
        }
    }
    assert_eq!(got[0]["reason"], "first");
    // Filters.
    let (_, by_alice) =
        get_json(&admin, &format!("{o}/v1/audit?actor=alice&action=rollback")).await;
    assert_eq!(
        by_alice["records"].as_array().unwrap().len(),
        2,
        "{by_alice}"
    );
    // Reading the log needs audit-read.
    let (code, _) = get_json(&alice, &format!("{o}/v1/audit")).await;
    assert_eq!(code, 403);
    cluster.shutdown().await;
}

/// `meridian audit verify` with the admin token against `url`: (success, stdout, stderr).
async fn verify(url: &str, signing_pub: &std::path::Path) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["audit", "verify", "--signing-pub"])
        .arg(signing_pub)
        .env("MERIDIAN_ORIGIN", url)
        .env("MERIDIAN_ENDPOINT", url)
        .env("MERIDIAN_TOKEN", TOKEN.as_str())
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_edited_in_the_store_is_detected_by_verify() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 1);
    let signing_pub = dir.path().join("pki/signing.pub");
    let c = http();
    let (mut node, url) = spawn_origin(&paths[0]);
    for i in 0..5 {
        eventually(WAIT, "a write", || async {
            let r = c
                .put(format!("{url}/v1/kv/pay/prod/k{i}"))
                .json(&json!({"value": i}))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }
    let (ok, out, err) = verify(&url, &signing_pub).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("head signed by the cluster's key"), "{out}");

    // Stop the node cleanly, then edit record 3 in its store: who made the write.
    let pid = node.pid().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    node.wait();
    let data_dir = dir.path().join("origin-1");
    {
        // The origin's state tree, where the audit records live under `xa` + seq.
        let db = sled::open(&data_dir).unwrap();
        let tree = db.open_tree("state").unwrap();
        let mut key = b"xa".to_vec();
        key.extend_from_slice(&3u64.to_be_bytes());
        let stored = tree.get(&key).unwrap().expect("record 3 is in the store");
        let mut record: Value = serde_json::from_slice(&stored).unwrap();
        record["actor"] = "mallory".into();
        tree.insert(&key, serde_json::to_vec(&record).unwrap())
            .unwrap();
        tree.flush().unwrap();
    }
    let (_node, url) = spawn_origin(&paths[0]);
    let (ok, out, err) = verify(&url, &signing_pub).await;
    assert!(!ok, "{out}");
    assert!(err.contains("record 3 was altered"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_the_leaders_sigkill() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 3);
    let mut nodes: Vec<_> = paths.iter().map(|p| spawn_origin(p)).collect();
    let c = http();
    let urls: Vec<String> = nodes.iter().map(|(_, u)| u.clone()).collect();
    let leader = eventually(WAIT, "a leader committed the bootstrap", || async {
        for (i, u) in urls.iter().enumerate() {
            let s = status(&c, u).await;
            if s["role"] == "leader" && s["revision"].as_u64() >= Some(BOOT) {
                return Some(i);
            }
        }
        None
    })
    .await;
    let r = c
        .put(format!("{}/v1/kv/pay/prod/survivor", urls[leader]))
        .header("x-request-id", "before-the-kill")
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    nodes[leader].0.kill();
    let other = &urls[(leader + 1) % 3];
    let record = eventually(WAIT, "another node answers the audit log", || async {
        let (code, page) = get_json(&c, &format!("{other}/v1/audit?action=write")).await;
        if code != 200 {
            return None;
        }
        page["records"]
            .as_array()?
            .iter()
            .find(|r| r["request_id"] == "before-the-kill")
            .cloned()
    })
    .await;
    assert_eq!(record["resource"], "pay/prod/survivor");
    assert!(
        record["actor"]
            .as_str()
            .unwrap()
            .starts_with("bootstrap-admin#")
    );
    let (ok, out, err) = verify(other, &dir.path().join("pki/signing.pub")).await;
    assert!(ok, "{out}{err}");
}
