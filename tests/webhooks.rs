//! Webhooks end to end: a subscription on a dev topology, a real HTTP receiver on loopback
//! that refuses its first delivery; every covered write arrives (at least once, retried after
//! the refusal), signed as Standard Webhooks describe, carrying the actor, the reason and the
//! version before; uncovered writes send nothing; the delivery log shows the failure and the
//! deliveries.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Received {
    /// (webhook-id, timestamp, signature, body) of every request.
    requests: Vec<(String, String, String, String)>,
}

async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let got = Arc::new(Mutex::new(Received::default()));
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut got = state.lock().unwrap();
                got.requests.push((
                    h("webhook-id"),
                    h("webhook-timestamp"),
                    h("webhook-signature"),
                    body,
                ));
                // The very first delivery is refused: it must come again.
                if got.requests.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covered_writes_are_delivered_signed_retried_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let o = base(cluster.origin.http_addr);
    let admin = http();
    let (url, got) = receiver().await;
    let r = admin
        .post(format!("{o}/v1/webhooks"))
        .json(&json!({"url": url, "events": ["config.changed"], "resources": ["pay/prod/*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sub: Value = r.json().await.unwrap();
    let secret =
        meridian_origin::webhooks::WebhookSecret::parse(sub["secret"].as_str().unwrap()).unwrap();
    let id = sub["id"].as_u64().unwrap();
    let (_, listed) = get_json(&admin, &format!("{o}/v1/webhooks")).await;
    assert!(
        !listed.to_string().contains("whsec_"),
        "secrets are shown once: {listed}"
    );

    put(&admin, &o, "pay/staging/k", json!(0)).await;
    for i in 0..5 {
        let r = admin
            .put(format!("{o}/v1/kv/pay/prod/k{i}"))
            .json(&json!({"value": i, "reason": format!("step {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let requests = eventually(WAIT, "five events delivered", || {
        let got = got.clone();
        async move {
            let g = got.lock().unwrap();
            let ids: std::collections::BTreeSet<&str> =
                g.requests.iter().skip(1).map(|r| r.0.as_str()).collect();
            (ids.len() == 5).then(|| g.requests.clone())
        }
    })
    .await;
    // The refused one came again under the same id.
    assert!(
        requests[1..].iter().any(|r| r.0 == requests[0].0),
        "retried"
    );
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (event, ts, signature, body) in &requests {
        meridian_origin::webhooks::verify(
            &secret,
            event,
            ts,
            signature,
            body.as_bytes(),
            now_s,
            300,
        )
        .unwrap_or_else(|e| panic!("{event}: {e}"));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "config.changed");
        assert_eq!(v["data"]["app"], "pay");
        assert_eq!(v["data"]["env"], "prod", "staging is not covered: {v}");
        assert!(
            v["data"]["actor"]
                .as_str()
                .unwrap()
                .starts_with("bootstrap-admin"),
            "{v}"
        );
        assert!(
            v["data"]["reason"].as_str().unwrap().starts_with("step"),
            "{v}"
        );
        assert_eq!(v["data"]["previous_version"], 0, "{v}");
    }
    let (_, log) = get_json(&admin, &format!("{o}/v1/webhooks/{id}/deliveries")).await;
    let outcomes: Vec<&str> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "failed").count(),
        1,
        "{log}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "delivered").count(),
        5,
        "{log}"
    );
    assert_eq!(log["queued"], 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_survives_the_leader_and_every_event_arrives() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options(dir.path());
    opts.origin_nodes = 3;
    let meridian::dev::DevCluster {
        origin,
        more_origins,
        edges,
        ..
    } = meridian::dev::DevCluster::start(&opts)
        .await
        .expect("dev cluster");
    let admin = http();
    let nodes: Vec<_> = std::iter::once(origin).chain(more_origins).collect();
    let o = base(nodes[0].http_addr);

    // A receiver that refuses everything until told to accept.
    let accepting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let delivered = Arc::new(Mutex::new(std::collections::BTreeSet::<String>::new()));
    let (acc, del) = (accepting.clone(), delivered.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let (acc, del) = (acc.clone(), del.clone());
            async move {
                if !acc.load(std::sync::atomic::Ordering::SeqCst) {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let id = headers.get("webhook-id").and_then(|v| v.to_str().ok());
                del.lock()
                    .unwrap()
                    .insert(id.unwrap_or_default().to_owned());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = admin
        .post(format!("{o}/v1/webhooks"))
        .json(&json!({"url": url, "events": ["config.changed"], "resources": ["pay/*/*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_u64().unwrap();

    for i in 0..20 {
        put(&admin, &o, &format!("pay/prod/k{i}"), json!(i)).await;
    }
    // The backlog: every event refused at least once.
    eventually(WAIT, "every event attempted and refused", || {
        let (c, url) = (admin.clone(), format!("{o}/v1/webhooks/{id}/deliveries"));
        async move {
            let (_, log) = get_json(&c, &url).await;
            let failed: std::collections::BTreeSet<String> = log["deliveries"]
                .as_array()?
                .iter()
                .map(|d| d["event"].as_str().unwrap_or_default().to_owned())
                .collect();
            (failed.len() == 20 && log["queued"] == 20).then_some(())
        }
    })
    .await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.http_addr).collect();
    let leader = leader_index(&admin, &addrs).await;
    let mut nodes = nodes;
    nodes.remove(leader).shutdown().await;
    accepting.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(
        Duration::from_secs(60),
        "every event delivered by the new leader",
        || {
            let delivered = delivered.clone();
            async move { (delivered.lock().unwrap().len() == 20).then_some(()) }
        },
    )
    .await;
    let survivor = base(nodes[0].http_addr);
    let (_, log) = get_json(&admin, &format!("{survivor}/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(log["queued"], 0, "{log}");
    for e in edges {
        e.shutdown().await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_and_rules_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let o = base(cluster.origin.http_addr);
    let admin = http();
    for (path, body, code) in [
        (
            "/v1/webhooks",
            json!({"url": "ftp://x/y", "events": ["config.changed"], "resources": ["a/b/*"]}),
            "invalid_webhook",
        ),
        (
            "/v1/webhooks",
            json!({"url": "http://x/y", "events": ["nope"], "resources": ["a/b/*"]}),
            "invalid_webhook",
        ),
        (
            "/v1/webhooks",
            json!({"url": "http://x/y", "events": ["config.changed"], "resources": ["a/b/*"], "secret": "short"}),
            "invalid_webhook",
        ),
        (
            "/v1/webhooks",
            json!({"url": "http://x/y"}),
            "malformed_json",
        ),
    ] {
        let (status, v) = {
            let r = admin
                .post(format!("{o}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        };
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    for body in [
        json!({"resources": [], "approvals": 1}),
        json!({"resources": ["a/b/*"], "approvals": 0}),
        json!({"resources": ["bad"], "approvals": 1}),
    ] {
        let r = admin
            .put(format!("{o}/v1/protections/prod"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    // Not an admin: refused before anything is read.
    let r = http_anonymous()
        .get(format!("{o}/v1/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http_anonymous()
        .get(format!("{o}/v1/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
