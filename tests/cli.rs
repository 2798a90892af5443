//! The `meridian` client commands end to end: the real binary against a running dev topology,
//! writes at the origin, reads at an edge, JSON and table output, and errors that exit
//! non-zero with the API's code.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Runs `meridian ARGS` with the endpoints given; (exit success, stdout, stderr).
async fn meridian(reads: &str, writes: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("MERIDIAN_ENDPOINT", reads)
        .env("MERIDIAN_ORIGIN", writes)
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

async fn json_of(reads: &str, writes: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let (ok, out, err) = meridian(reads, writes, &all).await;
    assert!(ok, "meridian {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_config_schema_and_txn_commands_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, _) = cluster(dir.path(), 10_000).await;
    let origin = base(_cluster.origin.http_addr);
    let edge = base(_cluster.edges[2].http_addr);
    let (o, e) = (origin.as_str(), edge.as_str());

    // Writes go to the origin; a bare word is a string, JSON stays JSON.
    let put = json_of(
        e,
        o,
        &[
            "kv",
            "put",
            "pay/prod/db.host",
            "db.internal",
            "--reason",
            "setup",
        ],
    )
    .await;
    assert_eq!(put["value"], "db.internal");
    json_of(e, o, &["kv", "put", "pay/prod/db.pool", r#"{"max": 10}"#]).await;
    json_of(e, o, &["kv", "put", "pay/prod/db.pool", r#"{"max": 20}"#]).await;
    json_of(
        e,
        o,
        &["kv", "put", "pay/prod/db.url", "postgres://${db.host}/pay"],
    )
    .await;
    json_of(e, o, &["kv", "put", "_/prod/log.level", "\"info\""]).await;
    let newest = revision(&http(), o).await;

    // Reads go to the edge: wait until it has everything, then read there.
    eventually(WAIT, "the edge catches up", || async {
        (revision(&http(), e).await >= newest).then_some(())
    })
    .await;
    let got = json_of(e, o, &["kv", "get", "pay/prod/db.url"]).await;
    assert_eq!(got["value"], "postgres://db.internal/pay");
    let raw = json_of(e, o, &["kv", "get", "pay/prod/db.url", "--raw"]).await;
    assert_eq!(raw["value"], "postgres://${db.host}/pay");
    let dflt = json_of(e, o, &["kv", "get", "pay/prod/missing", "--default", "42"]).await;
    assert_eq!(
        (dflt["value"].clone(), dflt["default"].clone()),
        (json!(42), json!(true))
    );
    let list = json_of(e, o, &["kv", "list", "pay/prod", "--prefix", "db."]).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // Table output is for people: headers and aligned values.
    let (ok, table, _) = meridian(e, o, &["config", "show", "pay", "prod"]).await;
    assert!(ok);
    assert!(table.starts_with("KEY"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("log.level") && l.contains("info") && l.ends_with("_/prod")),
        "{table}"
    );
    assert!(table.contains("postgres://db.internal/pay"), "{table}");

    // History, diff and rollback at the origin.
    let history = json_of(e, o, &["kv", "history", "pay/prod/db.pool"]).await;
    assert_eq!(history["items"][0]["version"], 2);
    assert!(
        history["items"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("bootstrap-admin#")
    );
    let diff = json_of(
        e,
        o,
        &["kv", "diff", "pay/prod/db.pool", "--from", "1", "--to", "2"],
    )
    .await;
    assert_eq!(
        diff["changed"],
        json!([{"path": "/max", "from": 10, "to": 20}])
    );
    let (ok, table, _) = meridian(e, o, &["kv", "diff", "pay/prod/db.pool", "--from", "1"]).await;
    assert!(
        ok && table
            .lines()
            .any(|l| l.starts_with('~') && l.contains("/max")),
        "{table}"
    );
    let rolled = json_of(
        e,
        o,
        &[
            "kv",
            "rollback",
            "pay/prod/db.pool",
            "--version",
            "1",
            "--reason",
            "oops",
        ],
    )
    .await;
    assert_eq!(rolled["value"], json!({"max": 10}));
    let env_diff = json_of(
        e,
        o,
        &["kv", "diff", "pay/prod", "--from", &newest.to_string()],
    )
    .await;
    assert_eq!(env_diff["changed"][0]["key"], "db.pool");

    // Schemas from a file.
    let schema_file = dir.path().join("pool.schema.json");
    std::fs::write(&schema_file, r#"{"type": "object", "required": ["max"]}"#).unwrap();
    let file = schema_file.to_str().unwrap();
    let (ok, _, err) = meridian(e, o, &["schema", "put", "pay/prod/db.pool", file]).await;
    assert!(ok, "{err}");
    let shown = json_of(e, o, &["schema", "get", "pay/prod/db.pool"]).await;
    assert_eq!(shown["schema"]["required"], json!(["max"]));
    let (ok, _, err) = meridian(e, o, &["kv", "put", "pay/prod/db.pool", r#"{"min": 1}"#]).await;
    assert!(!ok, "a write the schema refuses fails");
    assert!(err.contains("schema_violation"), "{err}");

    // A transaction from a file; a failing one exits non-zero with the condition.
    let txn_file = dir.path().join("txn.json");
    std::fs::write(
        &txn_file,
        json!({
            "conditions": [{"address": "pay/prod/db.host", "version": 1}],
            "ops": [
                {"op": "put", "address": "pay/prod/db.host", "value": "db2.internal"},
                {"op": "delete", "address": "_/prod/log.level"},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let txn = txn_file.to_str().unwrap();
    let done = json_of(e, o, &["txn", txn]).await;
    assert_eq!(done["changed"].as_array().unwrap().len(), 2);
    let (ok, _, err) = meridian(e, o, &["txn", txn]).await;
    assert!(!ok && err.contains("condition_failed"), "{err}");

    // Delete, then a read of it fails with the API's code.
    let (ok, _, err) = meridian(
        e,
        o,
        &["kv", "delete", "pay/prod/db.url", "--reason", "gone"],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = meridian(o, o, &["kv", "get", "pay/prod/db.url"]).await;
    assert!(
        !ok && err.contains("404") && err.contains("not_found"),
        "{err}"
    );
    let (ok, _, err) = meridian(o, o, &["kv", "get", "not-an-address"]).await;
    assert!(!ok && err.contains("app/env/key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_full_state_then_each_change_as_json_lines() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[0].http_addr);
    let r = put(&c, &origin, "pay/prod/a", json!(1)).await["revision"]
        .as_u64()
        .unwrap();
    eventually(WAIT, "edge at r", || async {
        (revision(&c, &edge).await >= r).then_some(())
    })
    .await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["watch", "--endpoint", &edge, "pay", "prod", "--since", "0"])
        .env("MERIDIAN_TOKEN", TOKEN.as_str())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the meridian binary runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("still running");
        serde_json::from_str(&line).unwrap()
    };
    let first = next().await;
    assert_eq!(first["event"], "resync");
    assert_eq!(
        first["entries"],
        json!([{"key": "a", "value": 1, "version": 1}])
    );
    put(&c, &origin, "pay/prod/b", json!({"on": true})).await;
    let change = next().await;
    assert_eq!(
        (
            &change["event"],
            &change["key"],
            &change["value"],
            &change["deleted"]
        ),
        (
            &json!("change"),
            &json!("b"),
            &json!({"on": true}),
            &json!(false)
        )
    );
    child.kill().await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_policy_commands_manage_access() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[0].http_addr);
    let (o, e) = (origin.as_str(), edge.as_str());

    // A bootstrap token file for a new cluster, private, never overwritten.
    let file = dir.path().join("new.token");
    let file_arg = file.to_str().unwrap();
    let (ok, _, err) = meridian(e, o, &["token", "generate", "--file", file_arg]).await;
    assert!(ok, "{err}");
    meridian_net::auth::read_bootstrap_token(&file).expect("a private token file");
    let (ok, _, _) = meridian(e, o, &["token", "generate", "--file", file_arg]).await;
    assert!(!ok, "an existing file is kept");

    let made = json_of(
        e,
        o,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--role",
            "editor",
            "--resource",
            "pay/*/*",
        ],
    )
    .await;
    let (token, id) = (
        made["token"].as_str().unwrap(),
        made["id"].as_str().unwrap(),
    );
    assert!(token.starts_with("mrdn_"));
    let listed = json_of(e, o, &["token", "list"]).await;
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id && t.get("hash").is_none()),
        "{listed}"
    );
    // The new token writes under pay and nowhere else.
    let as_ci = |args: &'static [&'static str]| {
        let token = token.to_owned();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
                .args(args)
                .env("MERIDIAN_ENDPOINT", e)
                .env("MERIDIAN_ORIGIN", o)
                .env("MERIDIAN_TOKEN", token)
                .env("RUST_LOG", "error")
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    assert!(as_ci(&["kv", "put", "pay/prod/x", "1"]).await.0);
    let (ok, err) = as_ci(&["kv", "put", "shop/prod/x", "1"]).await;
    assert!(!ok && err.contains("403 Forbidden forbidden"), "{err}");
    let who = json_of(e, o, &["token", "whoami"]).await;
    assert!(
        who["actor"]
            .as_str()
            .unwrap()
            .starts_with("bootstrap-admin#"),
        "{who}"
    );

    // A policy gives the token's group more.
    let policy = json_of(
        e,
        o,
        &[
            "policy",
            "put",
            "shop-ed",
            "--subject",
            &format!("token:{id}"),
            "--role",
            "editor",
            "--resource",
            "shop/*/*",
        ],
    )
    .await;
    assert_eq!(policy["version"], 1, "{policy}");
    assert!(as_ci(&["kv", "put", "shop/prod/x", "1"]).await.0);
    let policies = json_of(e, o, &["policy", "list"]).await;
    assert_eq!(policies["policies"][0]["name"], "shop-ed", "{policies}");
    assert!(meridian(e, o, &["policy", "delete", "shop-ed"]).await.0);
    assert!(!as_ci(&["kv", "put", "shop/prod/x", "2"]).await.0);

    // Revoked: refused.
    assert!(meridian(e, o, &["token", "revoke", id]).await.0);
    let (ok, err) = as_ci(&["kv", "put", "pay/prod/x", "2"]).await;
    assert!(!ok && err.contains("401"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_commands_write_evaluate_and_roll_out() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[0].http_addr);
    let (o, e) = (origin.as_str(), edge.as_str());
    let file = dir.path().join("flags.json");
    std::fs::write(
        &file,
        json!({"flags": {
            "beta": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                     "targeting": {"if": [{"ends_with": [{"var": "email"}, "@corp.example"]}, "on", null]}},
            "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "low"}
        }})
        .to_string(),
    )
    .unwrap();
    let put = json_of(
        e,
        o,
        &["flag", "put", "web/prod", "--file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(put["flags"], 2);
    let (ok, out, err) = meridian(e, o, &["flag", "list", "web/prod"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("beta") && out.contains("limit") && out.contains("yes"),
        "{out}"
    );

    // Evaluation at the edge, once it has the flags.
    let ctx = r#"{"targetingKey":"u1","email":"a@corp.example"}"#;
    let v = eventually(WAIT, "the edge evaluates beta", || async {
        let (ok, out, _) = meridian(
            e,
            o,
            &[
                "flag",
                "eval",
                "web/prod/beta",
                "--context",
                ctx,
                "--output",
                "json",
            ],
        )
        .await;
        ok.then(|| serde_json::from_str::<Value>(&out).unwrap())
    })
    .await;
    assert_eq!(
        (&v["value"], &v["reason"]),
        (&json!(true), &json!("TARGETING_MATCH"))
    );
    let all = json_of(e, o, &["flag", "eval", "web/prod", "--context", ctx]).await;
    assert_eq!(all["flags"].as_array().unwrap().len(), 2);
    let (ok, _, err) = meridian(e, o, &["flag", "eval", "web/prod/nope"]).await;
    assert!(!ok && err.contains("404"), "{err}");

    // One flag, its history, a rollout shown and aborted, a delete.
    let one = dir.path().join("limit.json");
    std::fs::write(
        &one,
        json!({"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "high"})
            .to_string(),
    )
    .unwrap();
    let v = json_of(
        e,
        o,
        &[
            "flag",
            "put",
            "web/prod/limit",
            "--file",
            one.to_str().unwrap(),
            "--reason",
            "more",
        ],
    )
    .await;
    assert_eq!(v["version"], 2);
    let (ok, out, err) = meridian(e, o, &["flag", "history", "web/prod/limit"]).await;
    assert!(ok && out.contains("more"), "{out}{err}");
    let (ok, out, err) = meridian(
        e,
        o,
        &[
            "flag",
            "rollout",
            "web/prod/beta",
            "--step",
            "on=10,off=90:600",
            "--step",
            "on=100,off=0:0",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("beta: running, step 1 of 2 (off 90, on 10), next step in"),
        "{out}"
    );
    let (ok, out, err) = meridian(e, o, &["flag", "rollout", "web/prod/beta", "--pause"]).await;
    assert!(ok && out.contains("paused"), "{out}{err}");
    let (ok, out, err) = meridian(e, o, &["flag", "rollout", "web/prod/beta", "--abort"]).await;
    assert!(ok && out.contains("aborted"), "{out}{err}");
    let (ok, _, err) = meridian(
        e,
        o,
        &["flag", "rollout", "web/prod/beta", "--step", "maybe=1:0"],
    )
    .await;
    assert!(!ok && err.contains("invalid_rollout"), "{err}");
    let (ok, _, err) = meridian(e, o, &["flag", "delete", "web/prod/limit"]).await;
    assert!(ok, "{err}");
    let doc = json_of(e, o, &["flag", "get", "web/prod"]).await;
    assert!(doc["flags"].get("limit").is_none(), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_commands_never_print_a_value_but_reveal() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let (o, o2) = (origin.as_str(), origin.as_str());
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cr3t-from-file\n").unwrap();
    let (ok, out, err) = meridian(
        o,
        o2,
        &[
            "secret",
            "put",
            "pay/prod/db.password",
            "--file",
            file.to_str().unwrap(),
            "--rotate-every-s",
            "3600",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("fingerprint") && !out.contains("s3cr3t"),
        "{out}"
    );
    for args in [
        vec!["secret", "get", "pay/prod/db.password"],
        vec!["secret", "list", "pay/prod"],
        vec!["kv", "get", "pay/prod/db.password"],
        vec!["kv", "list", "pay/prod"],
        vec!["kv", "history", "pay/prod/db.password"],
        vec!["config", "show", "pay", "prod"],
    ] {
        let (ok, out, err) = meridian(o, o2, &args).await;
        assert!(ok, "{args:?}: {err}");
        assert!(!out.contains("s3cr3t"), "{args:?} printed the value: {out}");
        assert!(
            out.contains("secret") || out.contains("3600"),
            "{args:?}: {out}"
        );
    }
    let (ok, out, err) = meridian(o, o2, &["secret", "reveal", "pay/prod/db.password"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "s3cr3t-from-file\n");
    let (ok, _, err) = meridian(
        o,
        o2,
        &[
            "secret",
            "rotate",
            "pay/prod/db.password",
            "new-one",
            "--grace-s",
            "60",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = meridian(
        o,
        o2,
        &["secret", "reveal", "pay/prod/db.password", "--previous"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "new-one\ns3cr3t-from-file\n");
    let rotated = json_of(o, o2, &["secret", "rotate-key", "pay/prod"]).await;
    assert_eq!(rotated["generation"], 2);
    let kek = meridian::dev::kek_path(dir.path());
    let rewrapped = json_of(
        o,
        o2,
        &[
            "secret",
            "rotate-key",
            "--kek",
            "--kek-file",
            kek.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(rewrapped["kek"], "kek-2");
    let (ok, out, err) = meridian(o, o2, &["secret", "reveal", "pay/prod/db.password"]).await;
    assert!(ok && out == "new-one\n", "{out} {err}");
    let due = json_of(o, o2, &["secret", "due", "--within-s", "7200"]).await;
    assert_eq!(due["items"][0]["key"], "db.password", "{due}");
    let fresh = dir.path().join("fresh-kek.json");
    let (ok, out, err) = meridian(o, o2, &["secret", "init-keys", fresh.to_str().unwrap()]).await;
    assert!(ok && out.contains("kek-1"), "{out} {err}");
    let (ok, _, err) = meridian(o, o2, &["secret", "init-keys", fresh.to_str().unwrap()]).await;
    assert!(!ok && err.contains("already exists"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_carry_an_environment_between_formats_and_propose_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let o = origin.as_str();
    let admin = http();
    put(&admin, o, "pay/prod/db.url", json!("postgres://db1")).await;
    put(&admin, o, "pay/prod/pool", json!({"max": 10})).await;
    put(&admin, o, "pay/prod/greeting", json!("hello ${db.url}")).await;
    let r = admin
        .put(format!("{o}/v1/secrets/pay/prod/db.password"))
        .json(&json!({"value": "hunter2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Exported raw (references unresolved), the secret masked unless revealed.
    for format in ["json", "yaml", "env", "properties"] {
        let (ok, out, err) = meridian(o, o, &["export", "pay", "prod", "--format", format]).await;
        assert!(ok, "{err}");
        assert!(
            !out.contains("hunter2"),
            "{format}: a masked export holds the secret: {out}"
        );
        assert!(out.contains("${db.url}"), "{format}: {out}");
    }
    let (ok, out, err) = meridian(o, o, &["export", "pay", "prod", "--reveal"]).await;
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["db.password"], json!({"$secret": "hunter2"}), "{out}");
    assert_eq!(doc["pool"], json!({"max": 10}), "{out}");

    // Into another environment from YAML: a dry run changes nothing; --apply is one revision.
    let yaml = dir.path().join("prod.yaml");
    let (ok, _, err) = meridian(
        o,
        o,
        &[
            "export",
            "pay",
            "prod",
            "--reveal",
            "--out",
            yaml.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let before = revision(&admin, o).await;
    let (ok, out, err) = meridian(
        o,
        o,
        &["import", yaml.to_str().unwrap(), "--to", "pay/staging"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("dry run: 4 change(s)"), "{out}");
    assert_eq!(
        revision(&admin, o).await,
        before,
        "a dry run commits nothing"
    );
    let (ok, out, err) = meridian(
        o,
        o,
        &[
            "import",
            yaml.to_str().unwrap(),
            "--to",
            "pay/staging",
            "--apply",
            "--reason",
            "copy",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("revision {}", before + 1)), "{out}");
    let (_, pool) = get_json(&admin, &format!("{o}/v1/kv/pay/staging/pool")).await;
    assert_eq!(pool["value"], json!({"max": 10}));
    let (_, secret) = get_json(
        &admin,
        &format!("{o}/v1/secrets/pay/staging/db.password?reveal=true"),
    )
    .await;
    assert_eq!(secret["value"], "hunter2", "imported as a secret: {secret}");
    // Imported again: only the secret, which cannot be compared without revealing it.
    let (ok, out, _) = meridian(
        o,
        o,
        &["import", yaml.to_str().unwrap(), "--to", "pay/staging"],
    )
    .await;
    assert!(
        ok && out.contains("dry run: 1 change(s)") && out.contains("db.password"),
        "{out}"
    );

    // Encrypted to an age recipient: the file (0600) holds the secret only sealed; it opens on
    // import with the identity, and never without it.
    let key = age::x25519::Identity::generate();
    let identity = dir.path().join("key.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&identity, format!("{}\n", key.to_string().expose_secret())).unwrap();
    }
    let sealed = dir.path().join("sealed.env");
    let (ok, _, err) = meridian(
        o,
        o,
        &[
            "export",
            "pay",
            "prod",
            "--encrypt-to",
            &key.to_public().to_string(),
            "--out",
            sealed.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&sealed).unwrap();
    assert!(
        !text.contains("hunter2") && text.contains("DB__PASSWORD=\"ENC[age,"),
        "{text}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sealed).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let sealed = sealed.to_str().unwrap();
    let (ok, _, err) = meridian(o, o, &["import", sealed, "--to", "pay/dev", "--apply"]).await;
    assert!(!ok && err.contains("--identity"), "{err}");
    let wrong = dir.path().join("wrong.txt");
    {
        use age::secrecy::ExposeSecret;
        let other = age::x25519::Identity::generate();
        std::fs::write(&wrong, other.to_string().expose_secret()).unwrap();
    }
    // The wrong identity stops before anything is sent; the right one imports.
    for (key, opens) in [(&wrong, false), (&identity, true)] {
        let args = [
            "import",
            sealed,
            "--to",
            "pay/dev",
            "--apply",
            "--identity",
            key.to_str().unwrap(),
        ];
        let (ok, _, err) = meridian(o, o, &args).await;
        assert_eq!(ok, opens, "{err}");
        assert!(opens || err.contains("password"), "{err}");
    }
    let (_, secret) = get_json(
        &admin,
        &format!("{o}/v1/secrets/pay/dev/db.password?reveal=true"),
    )
    .await;
    assert_eq!(secret["value"], "hunter2", "imported as a secret: {secret}");
    // Encrypting needs the secret read like revealing does: a viewer gets 403.
    let (viewer, _) = create_token(
        &admin,
        o,
        json!({"name": "viewer", "role": "viewer", "resources": ["pay/*/*"]}),
    )
    .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "export",
            "pay",
            "prod",
            "--encrypt-to",
            &key.to_public().to_string(),
        ])
        .env("MERIDIAN_ENDPOINT", o)
        .env("MERIDIAN_ORIGIN", o)
        .env("MERIDIAN_TOKEN", &viewer)
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("403"), "{err}");

    // A .env file with one change, into a protected environment: proposed as a change.
    let r = admin
        .put(format!("{o}/v1/protections/prod"))
        .json(&json!({"resources": ["pay/prod/*"], "approvals": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env_file = dir.path().join(".env");
    std::fs::write(&env_file, "POOL='{\"max\": 20}'\n").unwrap();
    let path = env_file.to_str().unwrap();
    let (ok, out, err) = meridian(o, o, &["import", path, "--to", "pay/prod", "--apply"]).await;
    assert!(!ok && err.contains("approval_required"), "{out} {err}");
    let (ok, out, err) = meridian(
        o,
        o,
        &[
            "import",
            path,
            "--to",
            "pay/prod",
            "--change",
            "--reason",
            "bigger pool",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("proposed as change 1 (pending)"), "{out}");
    let (_, change) = get_json(&admin, &format!("{o}/v1/changes/1")).await;
    assert_eq!(
        change["diff"][0]["proposed"],
        json!({"max": 20}),
        "{change}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_and_protection_commands_take_a_change_through_review() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let o = origin.as_str();
    let admin = http();
    let set = json_of(
        o,
        o,
        &[
            "protection",
            "set",
            "prod",
            "--resource",
            "pay/prod/*",
            "--approvals",
            "1",
        ],
    )
    .await;
    assert!(set["revision"].as_u64().is_some(), "{set}");
    let (ok, out, err) = meridian(o, o, &["protection", "list"]).await;
    assert!(ok && out.contains("pay/prod/*"), "{out} {err}");
    let (ok, _, err) = meridian(o, o, &["kv", "put", "pay/prod/mode", "fast"]).await;
    assert!(!ok && err.contains("approval_required"), "{err}");

    let txn = dir.path().join("txn.json");
    std::fs::write(
        &txn,
        r#"{"ops": [{"op": "put", "address": "pay/prod/mode", "value": "fast"}]}"#,
    )
    .unwrap();
    let created = json_of(
        o,
        o,
        &[
            "change",
            "create",
            "--file",
            txn.to_str().unwrap(),
            "--reason",
            "go fast",
        ],
    )
    .await;
    assert_eq!(created["status"], "pending", "{created}");
    let id = created["id"].to_string();
    let (ok, out, err) = meridian(o, o, &["change", "list", "--status", "pending"]).await;
    assert!(ok && out.contains("go fast"), "{out} {err}");

    // The admin wrote it, so another identity approves.
    let (reviewer, _) = create_token(
        &admin,
        o,
        json!({"name": "rev", "grants": [{"actions": ["read", "approve"], "resources": ["pay/prod/*"]}]}),
    )
    .await;
    let approve = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "change",
            "approve",
            &id,
            "--comment",
            "ok",
            "--output",
            "json",
        ])
        .env("MERIDIAN_ENDPOINT", o)
        .env("MERIDIAN_ORIGIN", o)
        .env("MERIDIAN_TOKEN", &reviewer)
        .output()
        .await
        .unwrap();
    assert!(approve.status.success(), "{approve:?}");
    let approved: Value = serde_json::from_slice(&approve.stdout).unwrap();
    assert_eq!(approved["status"], "approved", "{approved}");
    let shown = json_of(o, o, &["change", "show", &id]).await;
    assert_eq!(shown["approvals"][0]["comment"], "ok", "{shown}");
    let applied = json_of(o, o, &["change", "apply", &id]).await;
    assert_eq!(applied["status"], "applied", "{applied}");
    let (_, mode) = get_json(&admin, &format!("{o}/v1/kv/pay/prod/mode")).await;
    assert_eq!(mode["value"], "fast");
    let (ok, _, err) = meridian(o, o, &["change", "cancel", &id]).await;
    assert!(!ok && err.contains("change_closed"), "{err}");
}
