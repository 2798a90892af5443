//! Applied-config drift, end to end against a dev topology of three origin nodes and three
//! edges: a `meridian-client` watch reports by itself the revision its service applied, other
//! services report through the edge's endpoint, the edges pass the reports on to the origin, and
//! `GET /v1/drift/{app}/{env}` (asked of a node the edges are not connected to, which merges
//! every member's reports) and `meridian drift` list each instance, flagging those running an
//! older, an unapproved (break-glass) or an unknown revision, and those gone silent. Callers
//! without a token or without read on the namespace are refused, and bad reports get 400.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meridian::dev::DevCluster;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn change(c: &reqwest::Client, o: &str, value: &str) -> u64 {
    let body = json!({"reason": format!("database {value}"), "ops": [
        {"op": "put", "address": "pay/prod/db.url", "value": value}]});
    let (code, v) = send(c.post(format!("{o}/v1/changes")).json(&body)).await;
    assert_eq!(code, 201, "{v}");
    v["id"].as_u64().unwrap()
}

async fn step(c: &reqwest::Client, o: &str, id: u64, step: &str, body: Value) -> Value {
    let (code, v) = send(c.post(format!("{o}/v1/changes/{id}/{step}")).json(&body)).await;
    assert_eq!(code, 200, "{step}: {v}");
    v
}

async fn report(c: &reqwest::Client, at: &str, instance: &str, revision: u64) -> (u16, Value) {
    send(
        c.post(format!("{at}/v1/applied/pay/prod"))
            .json(&json!({"instance": instance, "revision": revision})),
    )
    .await
}

/// The first revision at least `at_least` the watching service took.
async fn took(seen: &mut tokio::sync::mpsc::UnboundedReceiver<u64>, at_least: u64) -> u64 {
    tokio::time::timeout(WAIT, async {
        while let Some(r) = seen.recv().await {
            if r >= at_least {
                return r;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the watch delivers the revision")
}

/// Waits until the drift view asked of `o` shows `instance` at `revision` with `flags`.
async fn wait_row(c: &reqwest::Client, o: &str, instance: &str, revision: u64, flags: Value) {
    let what = format!("{instance} at {revision} flagged {flags}");
    eventually(WAIT, &what, || {
        let (c, url, flags) = (c.clone(), format!("{o}/v1/drift/pay/prod"), flags.clone());
        async move {
            let (code, v) = get_json(&c, &url).await;
            assert_eq!(code, 200, "{v}");
            v["rows"]
                .as_array()?
                .iter()
                .any(|r| {
                    r["instance"] == instance && r["revision"] == revision && r["flags"] == flags
                })
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_flags_outdated_unapproved_unknown_and_silent_instances() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.origin_nodes = 3;
    let cluster = DevCluster::start(&opts).await.expect("dev cluster starts");
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let other_node = base(cluster.more_origins[0].http_addr);
    let edges: Vec<String> = cluster.edges.iter().map(|e| base(e.http_addr)).collect();

    let mut tokens = Vec::new();
    for body in [
        json!({"name": "alice", "role": "editor", "resources": ["pay/*/*"]}),
        json!({"name": "bob", "grants": [
            {"role": "editor", "resources": ["pay/*/*"]},
            {"actions": ["approve"], "resources": ["pay/prod/*"]}]}),
        json!({"name": "ops", "grants": [
            {"role": "editor", "resources": ["pay/*/*"]},
            {"actions": ["break-glass"], "resources": ["pay/prod/*"]}]}),
        json!({"name": "checkout", "role": "viewer", "resources": ["pay/prod/*"]}),
        json!({"name": "shop", "role": "viewer", "resources": ["shop/prod/*"]}),
    ] {
        tokens.push(create_token(&admin, &o, body).await.0);
    }
    let [alice, bob, ops, svc, shop] = tokens
        .iter()
        .map(|t| http_with(t))
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();

    // Written before the protection: not flagged later.
    put(&alice, &o, "pay/prod/web.port", json!(8080)).await;
    let first = put(&alice, &o, "pay/prod/db.url", json!("postgres://db1")).await["revision"]
        .as_u64()
        .unwrap();
    let (code, v) = send(
        admin
            .put(format!("{o}/v1/protections/db"))
            .json(&json!({"resources": ["pay/prod/db.*"], "approvals": 1})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let id = change(&alice, &o, "postgres://db2").await;
    step(&bob, &o, id, "approve", json!({})).await;
    let approved = step(&alice, &o, id, "apply", json!({})).await["applied"]["revision"]
        .as_u64()
        .unwrap();

    // pod-a: a service watching through the first edge with the Rust client, which reports
    // each revision once the service has taken it.
    let client = meridian_client::Client::with_token(&edges[0], Some(&tokens[3]))
        .unwrap()
        .with_instance(Some("pod-a"));
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        let mut watch = std::pin::pin!(client.watch("pay", "prod", "", Some("0".into())));
        while let Some(event) = watch.next().await {
            let revision = match event.expect("watch event") {
                meridian_client::WatchEvent::Change { revision, .. }
                | meridian_client::WatchEvent::Resync { revision, .. } => revision,
            };
            let _ = seen_tx.send(revision);
        }
    });
    let a_at = took(&mut seen, approved).await;

    // pod-b reports by hand through the second edge, still on the first database; pod-c
    // through the third claims a revision the origin never made.
    let (code, v) = report(&svc, &edges[1], "pod-b", first).await;
    assert_eq!((code, &v["instance"]), (202, &json!("pod-b")), "{v}");
    let (code, v) = report(&svc, &edges[2], "pod-c", 1_000_000).await;
    assert_eq!(code, 202, "{v}");

    wait_row(&admin, &other_node, "pod-a", a_at, json!([])).await;
    wait_row(&admin, &other_node, "pod-b", first, json!(["outdated"])).await;
    wait_row(&admin, &other_node, "pod-c", 1_000_000, json!(["ahead"])).await;
    let (_, v) = get_json(&admin, &format!("{other_node}/v1/drift/pay/prod")).await;
    assert_eq!(
        (&v["instances"], &v["flagged"], &v["current_revision"]),
        (&json!(3), &json!(2), &json!(approved)),
        "{v}"
    );
    let pod_a = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == "pod-a")
        .unwrap();
    assert_eq!(
        pod_a["via"],
        cluster.edges[0].shared.edge_id.as_str(),
        "{v}"
    );
    assert_eq!(
        pod_a["reporter"].as_str().unwrap().split('#').next(),
        Some("checkout")
    );

    // Break glass: pod-a takes a value no one approved.
    let id = change(&ops, &o, "postgres://db3").await;
    let glass =
        step(&ops, &o, id, "apply", json!({"break_glass": true})).await["applied"]["revision"]
            .as_u64()
            .unwrap();
    let a_at = took(&mut seen, glass).await;
    assert_eq!(a_at, glass);
    wait_row(&admin, &other_node, "pod-a", glass, json!(["unapproved"])).await;
    // The same view from the node the edges report to.
    wait_row(&admin, &o, "pod-a", glass, json!(["unapproved"])).await;

    // `meridian drift` says the same and exits non-zero.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["drift", "pay", "prod", "--output", "table"])
        .env("MERIDIAN_ENDPOINT", &edges[0])
        .env("MERIDIAN_ORIGIN", &other_node)
        .env("MERIDIAN_TOKEN", TOKEN.as_str())
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("the meridian binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("pod-a") && l.contains("unapproved")),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 instance(s) flagged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An instance that stops reporting goes silent (here: any silence at all).
    eventually(WAIT, "pod-b silent", || {
        let (c, url) = (
            admin.clone(),
            format!("{o}/v1/drift/pay/prod?silent_after_ms=0"),
        );
        async move {
            let (_, v) = get_json(&c, &url).await;
            v["rows"]
                .as_array()?
                .iter()
                .any(|r| r["instance"] == "pod-b" && r["flags"] == json!(["outdated", "silent"]))
                .then_some(())
        }
    })
    .await;

    // Refusals, at the edge and at the origin: no token, no read on the namespace, bad
    // reports; the drift view needs read on the namespace too.
    for at in [edges[0].as_str(), o.as_str()] {
        let (code, v) = report(&http_anonymous(), at, "pod-z", 1).await;
        assert_eq!(code, 401, "{at}: {v}");
        let (code, v) = report(&shop, at, "pod-z", 1).await;
        assert_eq!(code, 403, "{at}: {v}");
        for bad in [
            json!({"instance": "a b", "revision": 1}),
            json!({"instance": "pod-z"}),
            json!({"instance": "pod-z", "revision": 1, "extra": true}),
            json!({"instance": "x".repeat(129), "revision": 1}),
        ] {
            let (code, v) = send(svc.post(format!("{at}/v1/applied/pay/prod")).json(&bad)).await;
            assert_eq!(
                (code, v["error"]["code"].as_str()),
                (400, Some("invalid_report")),
                "{at}: {bad}: {v}"
            );
        }
        let (code, v) = send(
            svc.post(format!("{at}/v1/applied/pay/prod"))
                .header("content-type", "application/json")
                .body(vec![b' '; 5000]),
        )
        .await;
        assert_eq!(code, 413, "{at}: {v}");
    }
    for bad in ["silent_after_ms=soon", "other=1"] {
        let (code, v) = get_json(&admin, &format!("{o}/v1/drift/pay/prod?{bad}")).await;
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (400, Some("bad_query")),
            "{v}"
        );
    }
    let (code, v) = get_json(&admin, &format!("{o}/v1/drift/Pay!/prod")).await;
    assert_eq!(code, 400, "{v}");
    for c in [&http_anonymous(), &shop] {
        let (code, v) = get_json(c, &format!("{o}/v1/drift/pay/prod")).await;
        assert!(code == 401 || code == 403, "{code} {v}");
    }
    // A service reporting straight to an origin node is listed too.
    let (code, v) = report(&svc, &o, "pod-d", glass).await;
    assert_eq!(code, 202, "{v}");
    wait_row(&admin, &other_node, "pod-d", glass, json!(["unapproved"])).await;
    watcher.abort();
}
