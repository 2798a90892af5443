//! Push and consistency at the edge, through real HTTP on a running topology: watch streams
//! (SSE and WebSocket) deliver every change in revision order and resume exactly, `since=0`
//! starts with the full state, `min_revision` waits then answers or times out with 504, strict
//! namespaces answer 503 while the edge is cut from the origin and recover after, the
//! Rust client resumes its watch across an edge restart while serving its cache, and each change
//! event says who made it, why, and the version it replaced.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{Stream, StreamExt};
use meridian::dev::{REGIONS, edge_config};
use meridian_client::{Client, ReadOptions, WatchEvent};
use meridian_edge::config::StrictNamespace;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// The next `n` events of a watch, failing after `WAIT`.
async fn take<S>(s: &mut S, n: usize) -> Vec<WatchEvent>
where
    S: Stream<Item = Result<WatchEvent, meridian_client::ClientError>> + Unpin,
{
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("watch failed: {e}"),
            Ok(None) => panic!("watch ended after {out:?}"),
            Err(_) => panic!("timed out waiting for watch events; got {out:?}"),
        }
    }
    out
}

/// `(revision, key, value)` of change events.
fn changes(events: &[WatchEvent]) -> Vec<(u64, String, Option<Value>)> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Change {
                revision,
                key,
                value,
                ..
            } => (*revision, key.clone(), value.clone()),
            other => panic!("expected a change, got {other:?}"),
        })
        .collect()
}

/// Reads raw SSE events from `url` (with `Last-Event-ID` if given) until `n` have come.
async fn raw_sse(url: &str, last_event_id: Option<&str>, n: usize) -> Vec<(String, String)> {
    let c = http();
    let mut req = c.get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let mut r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut parser = meridian_client::sse::SseParser::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(WAIT, r.chunk())
            .await
            .expect("an SSE chunk in time")
            .unwrap()
            .expect("the stream stays open");
        for e in parser.feed(&chunk) {
            out.push((e.id.unwrap_or_default(), e.data));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_delivers_every_change_in_order_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[1].http_addr);
    put(&c, &origin, "pay/prod/seed", json!("before")).await;
    let start = put(&c, &origin, "pay/prod/db.url", json!("a")).await["revision"]
        .as_u64()
        .unwrap();
    eventually(WAIT, "edge has the seed", || async {
        (revision(&c, &edge).await >= start).then_some(())
    })
    .await;

    let client = Client::with_token(&edge, Some(&TOKEN)).unwrap();
    let mut all = Box::pin(client.watch("pay", "prod", "", Some(start.to_string())));
    let mut db = Box::pin(client.watch("pay", "prod", "db.", Some(start.to_string())));

    // 20 changes: puts, a delete, a transaction of two, and writes elsewhere in between.
    let mut expected = Vec::new();
    for i in 0..16 {
        let key = if i % 2 == 0 { "db.pool" } else { "cache.ttl" };
        let r = put(&c, &origin, &format!("pay/prod/{key}"), json!(i)).await["revision"]
            .as_u64()
            .unwrap();
        expected.push((r, key.to_string(), Some(json!(i))));
        put(&c, &origin, "other/prod/db.pool", json!(i)).await;
    }
    let r = c
        .delete(format!("{origin}/v1/kv/pay/prod/db.url"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deleted_at = r.json::<Value>().await.unwrap()["revision"]
        .as_u64()
        .unwrap();
    expected.push((deleted_at, "db.url".into(), None));
    let txn = json!({"ops": [
        {"op": "put", "address": "pay/prod/db.user", "value": "svc"},
        {"op": "put", "address": "pay/prod/cache.size", "value": 10},
    ]});
    let r = c
        .post(format!("{origin}/v1/txn"))
        .json(&txn)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let txn_at = r.json::<Value>().await.unwrap()["revision"]
        .as_u64()
        .unwrap();
    let txn_changes = [
        (txn_at, "cache.size".to_string(), Some(json!(10))),
        (txn_at, "db.user".to_string(), Some(json!("svc"))),
    ];

    let got = take(&mut all, expected.len() + 2).await;
    let mut got_changes = changes(&got);
    let mut last_two = got_changes.split_off(expected.len());
    assert_eq!(got_changes, expected, "every change, in revision order");
    last_two.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        last_two, txn_changes,
        "both changes of the transaction's one revision"
    );
    expected.extend(changes(&got[expected.len()..]));
    let only_db: Vec<_> = expected
        .iter()
        .filter(|(_, k, _)| k.starts_with("db."))
        .cloned()
        .collect();
    assert_eq!(changes(&take(&mut db, only_db.len()).await), only_db);

    // Resuming after the 10th event (raw SSE, Last-Event-ID) gives exactly the rest.
    let url = format!("{edge}/v1/watch?app=pay&env=prod");
    let resumed = raw_sse(&url, Some(got[9].id()), expected.len() - 10).await;
    let rest: Vec<String> = got[10..].iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(
        resumed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        rest
    );
    // The transaction's two changes have distinct positions; resuming between them works.
    let between = raw_sse(&url, Some(got[got.len() - 2].id()), 1).await;
    assert_eq!(between[0].0, got[got.len() - 1].id());
    let WatchEvent::Change { key: last_key, .. } = &got[got.len() - 1] else {
        panic!("a change")
    };
    assert!(between[0].1.contains(last_key.as_str()), "{between:?}");

    // The same over WebSocket.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!(
        "ws{}/v1/watch/ws?app=pay&env=prod&since={}",
        edge.trim_start_matches("http"),
        got[9].id()
    )
    .into_client_request()
    .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", *TOKEN).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket upgrade");
    let mut ws_ids = Vec::new();
    while ws_ids.len() < rest.len() {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a websocket message in time")
            .expect("open")
            .expect("no error");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["event"], "change");
            ws_ids.push(v["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ws_ids, rest);

    // since=0 starts with the full state of what is watched.
    let full = raw_sse(&format!("{url}&prefix=db.&since=0"), None, 1).await;
    let state: Value = serde_json::from_str(&full[0].1).unwrap();
    assert_eq!(full[0].0, state["revision"].to_string());
    let keys: Vec<&str> = state["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["db.pool", "db.user"],
        "live db.* keys, db.url deleted"
    );

    // Bad requests are refused with a JSON error.
    let (code, body) = get_json(&c, &format!("{edge}/v1/watch?app=pay")).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );
    let (code, body) = get_json(&c, &format!("{url}&since=x")).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("bad_since"))
    );
    drop(all);
    drop(db);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_events_say_who_changed_a_key_why_and_from_which_version() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[0].http_addr);
    let (token, id) = create_token(
        &http(),
        &origin,
        json!({"name": "alice", "role": "editor", "resources": ["pay/*/*"]}),
    )
    .await;
    let alice = http_with(&token);
    let start = revision(&http(), &origin).await;
    let c = Client::with_token(&edge, Some(&TOKEN)).unwrap();
    let mut watch = Box::pin(c.watch("pay", "prod", "", Some(start.to_string())));
    // The third revision writes no provenance (the same actor and reason as the second's):
    // the edge knows it from the one before.
    for (value, reason) in [
        (json!(1), Some("first pool")),
        (json!(2), None),
        (json!(3), None),
    ] {
        let mut body = json!({"value": value});
        if let Some(r) = reason {
            body["reason"] = r.into();
        }
        let r = alice
            .put(format!("{origin}/v1/kv/pay/prod/pool"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The Rust client's events, then the raw ones.
    let got = take(&mut watch, 3).await;
    let actor = format!("alice#{id}");
    for (e, (version, reason)) in got
        .iter()
        .zip([(1, Some("first pool")), (2, None), (3, None)])
    {
        let WatchEvent::Change {
            version: v,
            actor: a,
            reason: r,
            ..
        } = e
        else {
            panic!("expected a change, got {e:?}");
        };
        assert_eq!(
            (*v, a.as_deref(), r.as_deref()),
            (version, Some(actor.as_str()), reason)
        );
    }
    let raw = raw_sse(
        &format!("{edge}/v1/watch?app=pay&env=prod&since={start}"),
        None,
        2,
    )
    .await;
    let second: Value = serde_json::from_str(&raw[1].1).unwrap();
    assert_eq!(
        (
            &second["version"],
            &second["previous_version"],
            &second["actor"],
            &second["reason"]
        ),
        (&json!(2), &json!(1), &json!(actor), &Value::Null),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_revision_waits_for_the_write_then_answers_or_times_out_with_504() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[2].http_addr);
    let r = put(&c, &origin, "pay/prod/flag", json!(false)).await["revision"]
        .as_u64()
        .unwrap();
    eventually(WAIT, "edge at r", || async {
        (revision(&c, &edge).await >= r).then_some(())
    })
    .await;

    // A read that asks for the next revision waits for it...
    let url = format!(
        "{edge}/v1/kv/pay/prod/flag?min_revision={}&wait_ms=10000",
        r + 1
    );
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { get_json(&c, &url).await }
    });
    let written = put(&c, &origin, "pay/prod/flag", json!(true)).await;
    assert_eq!(written["revision"].as_u64(), Some(r + 1));
    let (code, body) = waiting.await.unwrap();
    assert_eq!((code, &body["value"]), (200, &json!(true)), "{body}");

    // ...and one for a revision nobody wrote gives up with 504 and the edge's revision.
    let resp = c
        .get(format!(
            "{edge}/v1/config/pay/prod?min_revision={}&wait_ms=200",
            r + 1000
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.headers()["meridian-revision"].to_str().unwrap(),
        (r + 1).to_string()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "revision_not_reached");
    // The origin answers at once: it is linearizable.
    let (code, body) = get_json(
        &c,
        &format!("{origin}/v1/kv/pay/prod/flag?min_revision={}", r + 1),
    )
    .await;
    assert_eq!((code, &body["value"]), (200, &json!(true)));
    let (code, body) = get_json(
        &c,
        &format!("{origin}/v1/kv/pay/prod/flag?min_revision={}", r + 9),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (504, Some("revision_not_reached"))
    );
    let (code, _) = get_json(&c, &format!("{edge}/v1/kv/pay/prod/flag?wait_ms=5")).await;
    assert_eq!(code, 400, "wait_ms without min_revision");

    // The client does the same.
    let client = Client::with_token(&edge, Some(&TOKEN)).unwrap();
    let got = client
        .get_with(
            "pay",
            "prod",
            "flag",
            ReadOptions {
                min_revision: Some(r + 1),
                wait_ms: Some(1000),
            },
        )
        .await
        .unwrap();
    assert_eq!((got.value.value, got.revision > r), (json!(true), true));
    let err = client
        .config(
            "pay",
            "prod",
            ReadOptions {
                min_revision: Some(r + 1000),
                wait_ms: Some(50),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("revision_not_reached"));
    cluster.shutdown().await;
}

/// A one-node origin on fixed ports (so it can be restarted) and one edge with a strict
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_namespaces_answer_503_while_cut_from_the_origin_and_recover_after() {
    let dir = tempfile::tempdir().unwrap();
    let (origin_config, origin_node, _, edge_node) = origin_and_edge(dir.path(), |config| {
        config.strict = vec![StrictNamespace {
            namespace: "pay/*".into(),
            max_staleness_ms: 1_500,
        }];
        config.watch.heartbeat_ms = 200;
    })
    .await;
    let origin = base(origin_node.http_addr);
    let edge = base(edge_node.http_addr);
    let c = http();
    let (code, _) = eventually(WAIT, "origin elected", || async {
        let r = c
            .put(format!("{origin}/v1/kv/pay/prod/k"))
            .json(&json!({"value": 1}))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some((200, ()))
    })
    .await;
    assert_eq!(code, 200);
    put(&c, &origin, "web/prod/k", json!(2)).await;
    let strict_url = format!("{edge}/v1/kv/pay/prod/k");
    let relaxed_url = format!("{edge}/v1/kv/web/prod/k");
    eventually(WAIT, "both served while connected", || async {
        let a = get_json(&c, &strict_url).await.0;
        let b = get_json(&c, &relaxed_url).await.0;
        (a == 200 && b == 200).then_some(())
    })
    .await;

    // Cut: the origin goes away. The strict namespace turns 503 `stale`; the other keeps
    // serving its last value, with its staleness in the header.
    origin_node.shutdown().await;
    let body = eventually(WAIT, "strict namespace refuses stale reads", || async {
        let (code, body) = get_json(&c, &strict_url).await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "stale", "{body}");
    let r = c.get(&relaxed_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let staleness: u64 = r.headers()["meridian-staleness-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(staleness > 1_500, "{staleness}");
    assert_eq!(r.json::<Value>().await.unwrap()["value"], json!(2));
    let (code, _) = get_json(&c, &format!("{edge}/v1/config/pay/prod")).await;
    assert_eq!(code, 503, "config reads of a strict namespace too");

    // Watch streams stay up through the cut, kept alive by heartbeats while idle.
    let mut idle = c
        .get(format!("{edge}/v1/watch?app=pay&env=prod"))
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(WAIT, idle.chunk())
        .await
        .expect("a heartbeat in time")
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..], b": heartbeat\n\n");
    drop(idle);

    // Heal: the origin comes back on the same address; the strict namespace serves again.
    let origin_node = meridian_origin::start(origin_config).await.unwrap();
    eventually(WAIT, "strict namespace serves after the heal", || async {
        (get_json(&c, &strict_url).await.0 == 200).then_some(())
    })
    .await;
    edge_node.shutdown().await;
    origin_node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_resumes_its_watch_across_an_edge_restart_and_serves_its_cache_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, opts) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let first = put(&c, &origin, "pay/prod/a", json!(0)).await["revision"]
        .as_u64()
        .unwrap();
    let stopped = cluster.edges.remove(1);
    let edge_addr = stopped.http_addr;
    let edge = base(edge_addr);
    eventually(WAIT, "edge at first", || async {
        (revision(&c, &edge).await >= first).then_some(())
    })
    .await;
    let client = Client::with_token(&edge, Some(&TOKEN)).unwrap();
    let before = client.get("pay", "prod", "a").await.unwrap();
    assert!(!before.from_cache);
    let mut watch = Box::pin(client.watch("pay", "prod", "", Some(first.to_string())));
    for i in 1..=3 {
        put(&c, &origin, "pay/prod/a", json!(i)).await;
    }
    let seen = take(&mut watch, 3).await;

    // The edge stops: reads come from the client's cache, marked so.
    stopped.shutdown().await;
    let cached = client.get("pay", "prod", "a").await.unwrap();
    assert!(cached.from_cache);
    for i in 4..=6 {
        put(&c, &origin, "pay/prod/a", json!(i)).await;
    }
    // It restarts on the same address; the watch picks up exactly where it was.
    let restarted = meridian_edge::start(edge_config(
        &opts.data_dir,
        &cluster.pki,
        REGIONS[1],
        edge_addr,
        cluster.origin.quic_addr,
    ))
    .await
    .unwrap();
    let after = take(&mut watch, 3).await;
    let values: Vec<_> = changes(&seen)
        .into_iter()
        .chain(changes(&after))
        .map(|(_, _, v)| v.unwrap())
        .collect();
    assert_eq!(values, (1..=6).map(|i| json!(i)).collect::<Vec<_>>());
    let fresh = client.get("pay", "prod", "a").await.unwrap();
    assert!(!fresh.from_cache);
    assert_eq!(fresh.value.value, json!(6));
    drop(watch);
    restarted.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_view_flags_a_lagging_edge_and_one_whose_digest_disagrees() {
    use meridian_protocol::{Digest, FrameV1, Hash32, Revision};
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let r = put(&c, &origin, "pay/prod/a", json!(1)).await["revision"]
        .as_u64()
        .unwrap();
    let edges_url = format!("{origin}/v1/edges?lag_threshold_ms=1000");
    let view = eventually(WAIT, "three edges in sync", || async {
        let (_, v) = get_json(&c, &edges_url).await;
        let rows = v["edges"].as_array()?;
        (rows.len() == 3
            && rows
                .iter()
                .all(|e| e["revision"] == json!(r) && e["digest_match"] == json!(true)))
        .then_some(v)
    })
    .await;
    assert_eq!(view["flagged"], 0, "{view}");

    // An edge stops while writes go on: it is kept, disconnected, and flagged lagging once
    // it has been silent past the threshold.
    let stopped = cluster.edges.remove(2);
    let stopped_id = stopped.shared.edge_id.clone();
    stopped.shutdown().await;
    put(&c, &origin, "pay/prod/a", json!(2)).await;
    let row = eventually(WAIT, "the stopped edge lags", || async {
        let (_, v) = get_json(&c, &edges_url).await;
        let row = v["edges"]
            .as_array()?
            .iter()
            .find(|e| e["edge_id"] == json!(stopped_id))?
            .clone();
        (row["flags"] == json!(["lagging", "disconnected"])).then_some(row)
    })
    .await;
    assert_eq!(row["behind_revisions"], 1);

    // An edge speaks only for itself: a valid edge certificate claiming another edge's id is
    // cut off.
    let connect = |tls: meridian_net::TlsPaths| async move {
        let endpoint = meridian_net::quic::client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            Default::default(),
        )
        .unwrap();
        endpoint
            .connect(
                cluster.origin.quic_addr,
                meridian_net::tls::ORIGIN_SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap()
    };
    let impostor = connect(cluster.pki.edge(&stopped_id)).await;
    let (mut send, _recv) = impostor.open_bi().await.unwrap();
    let claim = FrameV1::Hello {
        edge_id: "someone-else".into(),
        region: "eu-west".into(),
        revision: Revision(r),
        digest: Digest(Hash32([7; 32])),
    };
    meridian_net::quic::write_frame(&mut send, &claim.into())
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, impostor.closed()).await.unwrap();
    assert!(
        closed
            .to_string()
            .contains("does not match the certificate"),
        "{closed}"
    );

    // An edge that reports a digest the origin never signed at that revision (a wrong or
    // corrupted store) is flagged diverged. It speaks real QUIC with its own valid certificate.
    let pki = meridian_net::tls::ensure_dev_pki(&cluster.pki.dir, &["forged-store"]).unwrap();
    let conn = connect(pki.edge("forged-store")).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let hello = FrameV1::Hello {
        edge_id: "forged-store".into(),
        region: "eu-west".into(),
        revision: Revision(r),
        digest: Digest(Hash32([7; 32])),
    };
    meridian_net::quic::write_frame(&mut send, &hello.into())
        .await
        .unwrap();
    let row = eventually(WAIT, "the diverged edge is flagged", || async {
        let (_, v) = get_json(&c, &edges_url).await;
        v["edges"]
            .as_array()?
            .iter()
            .find(|e| e["edge_id"] == "forged-store")
            .cloned()
    })
    .await;
    assert_eq!(row["digest_match"], false, "{row}");
    assert!(
        row["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("diverged")),
        "{row}"
    );
    // The healthy edges stay unflagged, and the gauges say the same.
    let (_, v) = get_json(&c, &edges_url).await;
    assert_eq!(v["flagged"], 2, "{v}");
    let metrics = metrics_text(&c, &origin).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meridian_origin_edge_diverged{edge=\"forged-store\"} 1")),
        "{metrics}"
    );
    // `meridian edges` shows the same and exits non-zero while edges are flagged.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["edges", "--endpoint", &origin, "--output", "json"])
        .args(["--lag-threshold-ms", "1000"])
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "flagged edges fail the command");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["flagged"], 2, "{listed}");
    assert_eq!(
        listed["edges"].as_array().map(Vec::len),
        Some(4),
        "{listed}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 edge(s) flagged"));
    conn.close(0u32.into(), b"done");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_app_env_gets_the_changes_of_the_levels_it_inherits_from() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[1].http_addr);
    let start = put(&c, &origin, "pay/prod/seed", json!(0)).await["revision"]
        .as_u64()
        .unwrap();
    eventually(WAIT, "edge has the seed", || async {
        (revision(&c, &edge).await >= start).then_some(())
    })
    .await;
    let url = format!("{edge}/v1/watch?app=pay&env=prod&prefix=db.&since={start}");
    let watching = tokio::spawn(async move { raw_sse(&url, None, 4).await });
    // Writes that change pay/prod's resolved configuration, and two that do not.
    for (ns, v) in [
        ("_/_", 1),
        ("web/prod", 2),
        ("_/prod", 3),
        ("pay/dev", 4),
        ("pay/_", 5),
        ("pay/prod", 6),
    ] {
        put(&c, &origin, &format!("{ns}/db.pool"), json!(v)).await;
    }
    let got: Vec<(String, i64)> = watching
        .await
        .unwrap()
        .iter()
        .map(|(_, data)| {
            let v: Value = serde_json::from_str(data).unwrap();
            (
                v["level"].as_str().unwrap().to_owned(),
                v["value"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected = [("_/_", 1), ("_/prod", 3), ("pay/_", 5), ("pay/prod", 6)];
    assert_eq!(
        got,
        expected.map(|(l, v)| (l.to_owned(), v)),
        "each inherited change once, with its level; nothing from web/prod or pay/dev"
    );
    // The full state (since=0) lists every level, least specific first, so that folding it in
    // order gives the resolved configuration.
    let url = format!("{edge}/v1/watch?app=pay&env=prod&prefix=db.&since=0");
    let resync = raw_sse(&url, None, 1).await;
    let state: Value = serde_json::from_str(&resync[0].1).unwrap();
    let levels: Vec<&str> = state["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["_/_", "_/prod", "pay/_", "pay/prod"], "{state}");
    // inherit=false: only what is stored under pay/prod.
    let url = format!("{edge}/v1/watch?app=pay&env=prod&prefix=db.&since=0&inherit=false");
    let own = raw_sse(&url, None, 1).await;
    let state: Value = serde_json::from_str(&own[0].1).unwrap();
    assert_eq!(state["entries"].as_array().unwrap().len(), 1, "{state}");
}
