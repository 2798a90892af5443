//! End-to-end replication over real QUIC on loopback into real sled stores: origin → three
//! regional edges, catch-up by deltas and by snapshot, and the HTTP error contract.

mod common;

use std::time::Duration;

use common::*;
use meridian::dev::{REGIONS, edge_config};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_deletes_and_lists_reach_all_three_edges() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let edges: Vec<String> = cluster.edges.iter().map(|e| base(e.http_addr)).collect();

    let a = put(&c, &origin, "pay/prod/db.url", json!("postgres://a")).await;
    put(&c, &origin, "pay/prod/db.pool", json!({"max": 10})).await;
    put(&c, &origin, "pay/prod/other", json!(true)).await;
    let written = put(&c, &origin, "pay/prod/db.url", json!("postgres://b")).await;
    assert_eq!(a["version"], 1);
    assert_eq!(written["version"], 2);
    assert_eq!(written["revision"], DEV_BOOT + 4);

    for edge in &edges {
        let got = eventually(WAIT, "value at edge", || async {
            let (code, v) = get_json(&c, &format!("{edge}/v1/kv/pay/prod/db.url")).await;
            (code == 200 && v["revision"] == DEV_BOOT + 4).then_some(v)
        })
        .await;
        assert_eq!(
            got, written,
            "edge {edge} serves the origin's value and revision"
        );
        let r = c
            .get(format!("{edge}/v1/kv/pay/prod/db.url"))
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("meridian-staleness-ms"));
        assert_eq!(r.headers()["meridian-revision"], (DEV_BOOT + 4).to_string());
    }

    let deleted: serde_json::Value = c
        .delete(format!("{origin}/v1/kv/pay/prod/other"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted["revision"], DEV_BOOT + 5);
    let (code, _) = get_json(&c, &format!("{origin}/v1/kv/pay/prod/other")).await;
    assert_eq!(code, 404);

    let origin_list = get_json(&c, &format!("{origin}/v1/kv/pay/prod?prefix=db."))
        .await
        .1;
    assert_eq!(origin_list["items"].as_array().unwrap().len(), 2);
    for edge in &edges {
        eventually(WAIT, "delete at edge", || async {
            let (code, _) = get_json(&c, &format!("{edge}/v1/kv/pay/prod/other")).await;
            (code == 404 && revision(&c, edge).await == DEV_BOOT + 5).then_some(())
        })
        .await;
        let list = get_json(&c, &format!("{edge}/v1/kv/pay/prod?prefix=db."))
            .await
            .1;
        assert_eq!(list, origin_list, "edge {edge} lists what the origin lists");
        let all = get_json(&c, &format!("{edge}/v1/kv/pay/prod")).await.1;
        assert_eq!(
            all["items"].as_array().unwrap().len(),
            2,
            "tombstones are not listed"
        );
    }

    let o = status(&c, &origin).await;
    for edge in &edges {
        assert_eq!(status(&c, edge).await["digest"], o["digest"]);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_config_prefers_the_most_specific_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    put(&c, &origin, "_/_/timeout", json!(1)).await;
    put(&c, &origin, "_/_/retries", json!(1)).await;
    put(&c, &origin, "_/_/color", json!("grey")).await;
    put(&c, &origin, "_/prod/timeout", json!(2)).await;
    put(&c, &origin, "_/prod/retries", json!(2)).await;
    put(&c, &origin, "web/_/timeout", json!(3)).await;
    put(&c, &origin, "web/prod/timeout", json!(4)).await;
    put(&c, &origin, "web/dev/timeout", json!(5)).await;
    let edge = base(cluster.edges[1].http_addr);
    let cfg = eventually(WAIT, "config at edge", || async {
        let (code, v) = get_json(&c, &format!("{edge}/v1/config/web/prod")).await;
        (code == 200 && v["revision"] == DEV_BOOT + 8).then_some(v)
    })
    .await;
    assert_eq!(
        cfg["config"],
        json!({"color": "grey", "retries": 2, "timeout": 4})
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_edge_catches_up_with_deltas_and_stays_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, opts) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    for i in 0..5 {
        put(&c, &origin, &format!("app/prod/k{i}"), json!(i)).await;
    }
    let eu = base(cluster.edges[1].http_addr);
    eventually(WAIT, "eu-west at 5", || async {
        (revision(&c, &eu).await == DEV_BOOT + 5).then_some(())
    })
    .await;

    let stopped = cluster.edges.remove(1);
    stopped.shutdown().await;
    for i in 0..50 {
        put(&c, &origin, &format!("app/prod/k{}", i % 7), json!(i)).await;
    }

    let config = edge_config(
        &opts.data_dir,
        &cluster.pki,
        REGIONS[1],
        "127.0.0.1:0".parse().unwrap(),
        cluster.origin.quic_addr,
    );
    let restarted = meridian_edge::start(config).await.unwrap();
    let eu = base(restarted.http_addr);
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(WAIT, "eu-west catches up to 55", || async {
        let r = revision(&c, &eu).await;
        seen.lock().unwrap().push(r);
        (r == DEV_BOOT + 55).then_some(())
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(
        seen[0] >= 5,
        "after restart the edge serves at least what it served before: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "revisions never go down: {seen:?}"
    );
    // The stats are copied out just after the revision is published: wait for them.
    let stats = eventually(WAIT, "stats show the catch-up", || async {
        let s = restarted.shared.stats();
        (s.deltas_applied >= 50 || s.snapshots_installed > 0).then_some(s)
    })
    .await;
    assert_eq!(
        stats.deltas_applied, 50,
        "caught up with exactly the 50 missing deltas"
    );
    assert_eq!(stats.snapshots_installed, 0, "no snapshot was needed");
    assert_eq!(
        status(&c, &eu).await["digest"],
        status(&c, &origin).await["digest"]
    );
    restarted.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_behind_the_delta_window_converges_through_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, opts) = cluster(dir.path(), 10).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    put(&c, &origin, "app/prod/gone", json!("x")).await;
    let ap = base(cluster.edges[2].http_addr);
    eventually(WAIT, "ap-south at 1", || async {
        (revision(&c, &ap).await == DEV_BOOT + 1).then_some(())
    })
    .await;
    let stopped = cluster.edges.remove(2);
    stopped.shutdown().await;

    c.delete(format!("{origin}/v1/kv/app/prod/gone"))
        .send()
        .await
        .unwrap();
    for i in 0..40 {
        put(
            &c,
            &origin,
            &format!("app/prod/k{}", i % 13),
            json!({"i": i}),
        )
        .await;
    }
    let mut config = edge_config(
        &opts.data_dir,
        &cluster.pki,
        REGIONS[2],
        "127.0.0.1:0".parse().unwrap(),
        cluster.origin.quic_addr,
    );
    // From the origin only: its peers keep a longer delta window and would send deltas.
    config.peer_links = 0;
    let restarted = meridian_edge::start(config).await.unwrap();
    let ap = base(restarted.http_addr);
    eventually(WAIT, "ap-south converges", || async {
        (revision(&c, &ap).await == DEV_BOOT + 42).then_some(())
    })
    .await;
    assert_eq!(restarted.shared.stats().snapshots_installed, 1);
    assert_eq!(
        status(&c, &ap).await["digest"],
        status(&c, &origin).await["digest"]
    );
    let (code, _) = get_json(&c, &format!("{ap}/v1/kv/app/prod/gone")).await;
    assert_eq!(code, 404, "the snapshot carried the delete");
    let (code, v) = get_json(&c, &format!("{ap}/v1/kv/app/prod/k0")).await;
    assert_eq!((code, v["value"].clone()), (200, json!({"i": 39})));
    restarted.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[0].http_addr);

    async fn check(r: reqwest::Response, status: u16, code: &str) {
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    for bad in [
        "Pay/prod/k",
        "pay/prod/a..b",
        "pay/pr%20od/k",
        "pay/prod/.k",
    ] {
        check(
            c.put(format!("{origin}/v1/kv/{bad}"))
                .header("content-type", "application/json")
                .body(r#"{"value":1}"#)
                .send()
                .await
                .unwrap(),
            400,
            "invalid_key",
        )
        .await;
        check(
            c.get(format!("{origin}/v1/kv/{bad}")).send().await.unwrap(),
            400,
            "invalid_key",
        )
        .await;
        check(
            c.get(format!("{edge}/v1/kv/{bad}")).send().await.unwrap(),
            400,
            "invalid_key",
        )
        .await;
    }
    check(
        c.put(format!("{origin}/v1/kv/pay/prod/k"))
            .header("content-type", "application/json")
            .body("{\"value\": ")
            .send()
            .await
            .unwrap(),
        400,
        "malformed_json",
    )
    .await;
    check(
        c.put(format!("{origin}/v1/kv/pay/prod/k"))
            .header("content-type", "application/json")
            .body("{\"valu\": 1}")
            .send()
            .await
            .unwrap(),
        400,
        "malformed_json",
    )
    .await;
    let big = "x".repeat(1024 * 1024 + 1);
    check(
        c.put(format!("{origin}/v1/kv/pay/prod/k"))
            .json(&json!({"value": big}))
            .send()
            .await
            .unwrap(),
        413,
        "value_too_large",
    )
    .await;
    let huge = "x".repeat(2 * 1024 * 1024);
    // The server stops reading an oversize body and closes that connection, so this request
    // gets a client of its own rather than poisoning the shared keep-alive pool.
    check(
        http()
            .put(format!("{origin}/v1/kv/pay/prod/k"))
            .json(&json!({"value": huge}))
            .send()
            .await
            .unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    check(
        c.get(format!("{origin}/v2/nothing")).send().await.unwrap(),
        404,
        "unknown_route",
    )
    .await;
    check(
        c.get(format!("{edge}/nothing")).send().await.unwrap(),
        404,
        "unknown_route",
    )
    .await;
    check(
        c.put(format!("{edge}/v1/kv/pay/prod/k"))
            .header("content-type", "application/json")
            .body(r#"{"value":1}"#)
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    check(
        c.get(format!("{origin}/v1/kv/pay/prod/missing"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    check(
        c.delete(format!("{origin}/v1/kv/pay/prod/missing"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    put(&c, &origin, "pay/prod/k", json!(1)).await;
    let conflict = c
        .put(format!("{origin}/v1/kv/pay/prod/k"))
        .json(&json!({"value": 2, "expect_version": 7}))
        .send()
        .await
        .unwrap();
    check(conflict, 409, "version_conflict").await;
    // Nothing refused was committed.
    assert_eq!(revision(&c, &origin).await, DEV_BOOT + 1);
    let metrics = common::metrics_text(&c, &origin).await;
    assert!(
        metrics.contains("meridian_origin_rejected_requests_total"),
        "{metrics}"
    );
    cluster.shutdown().await;
}
