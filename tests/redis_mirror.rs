//! The Redis mirror against a real `redis-server` on loopback: it matches the edge after
//! writes (keys, values, versions, revisions, deletions), publishes every change, and rebuilds
//! itself after Redis loses its data (FLUSHALL), after Redis restarts, and after the edge
//! restarts having missed changes.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meridian::dev::REGIONS;
use meridian_edge::mirror::RedisMirrorConfig;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A `redis-server` without persistence on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    meridian::dev::free_port(std::net::IpAddr::from([127, 0, 0, 1]))
}

async fn connection(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()
}

/// Every mirror key in Redis with its JSON, and the marker.
async fn mirror(url: &str) -> Option<(BTreeMap<String, Value>, Option<String>)> {
    let mut con = connection(url).await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("config:*")
        .query_async(&mut con)
        .await
        .ok()?;
    let mut out = BTreeMap::new();
    for k in keys {
        let v: String = redis::cmd("GET").arg(&k).query_async(&mut con).await.ok()?;
        out.insert(k, serde_json::from_str(&v).ok()?);
    }
    let marker: Option<String> = redis::cmd("GET")
        .arg(format!(
            "meridian:mirror:{}",
            meridian::dev::edge_id(REGIONS[1])
        ))
        .query_async(&mut con)
        .await
        .ok()?;
    Some((out, marker))
}

/// What the mirror must hold for the edge's published state.
fn expected(edge: &meridian_edge::EdgeHandle) -> (BTreeMap<String, Value>, Option<String>) {
    let p = edge.shared.reader.read().unwrap();
    let mut out = BTreeMap::new();
    // Everything but the token and policy records.
    for (a, e) in p.state.iter().filter(|(a, _)| !a.is_system()) {
        if let Some(v) = e.value.as_deref() {
            out.insert(
                format!("config:{}:{}:{}", a.app, a.env, a.key),
                json!({"value": serde_json::from_str::<Value>(v).unwrap(),
                       "version": e.version.0, "revision": e.revision.0}),
            );
        }
    }
    (out, Some(p.state.revision().0.to_string()))
}

/// Waits until the edge holds the origin's newest revision and Redis mirrors exactly that.
async fn matches(redis_url: &str, origin: &str, edge: &meridian_edge::EdgeHandle, what: &str) {
    let newest = revision(&http(), origin).await;
    eventually(WAIT, what, || async {
        if edge.shared.reader.read().unwrap().state.revision().0 < newest {
            return None;
        }
        let want = expected(edge);
        let have = mirror(redis_url).await?;
        (have == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mirror_matches_the_edge_and_rebuilds_after_data_loss_and_restarts() {
    init();
    let mut redis_server = RedisServer::start(free_port());
    let url = redis_server.url();
    eventually(WAIT, "redis-server answers", || async {
        connection(&url).await.map(|_| ())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let (_, origin_node, config, edge) = origin_and_edge(dir.path(), |config| {
        config.redis = Some(RedisMirrorConfig {
            url: url.clone(),
            check_interval_ms: 100,
        });
    })
    .await;
    let origin = base(origin_node.http_addr);
    let c = http();
    eventually(WAIT, "origin elected", || async {
        let r = c
            .put(format!("{origin}/v1/kv/pay/prod/a"))
            .json(&json!({"value": {"pool": 1}}))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    matches(&url, &origin, &edge, "the mirror holds the first write").await;

    // Every change from now on is published on its key's channel.
    let mut pubsub = redis::Client::open(url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.psubscribe("config:updates:*").await.unwrap();
    let mut messages = pubsub.into_on_message();

    put(&c, &origin, "pay/prod/b", json!("x")).await;
    put(&c, &origin, "web/prod/c", json!(3)).await;
    let r = c
        .delete(format!("{origin}/v1/kv/pay/prod/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    matches(
        &url,
        &origin,
        &edge,
        "the mirror matches the edge after writes",
    )
    .await;
    let (have, _) = mirror(&url).await.unwrap();
    assert!(
        !have.contains_key("config:pay:prod:b"),
        "deleted keys leave"
    );
    assert_eq!(have["config:web:prod:c"]["value"], json!(3));

    let mut published = Vec::new();
    while published.len() < 3 {
        let msg = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("a published change in time")
            .expect("subscribed");
        let body: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        published.push((msg.get_channel_name().to_owned(), body["deleted"].clone()));
    }
    assert_eq!(
        published,
        [
            ("config:updates:pay:prod:b".to_string(), json!(false)),
            ("config:updates:web:prod:c".to_string(), json!(false)),
            ("config:updates:pay:prod:b".to_string(), json!(true)),
        ]
    );

    // Redis loses its data: the mirror notices the missing marker and rebuilds.
    let mut con = connection(&url).await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    matches(&url, &origin, &edge, "the mirror is rebuilt after FLUSHALL").await;

    // Redis restarts (empty, no persistence) and the edge goes on writing meanwhile.
    redis_server.stop();
    put(&c, &origin, "pay/prod/d", json!(true)).await;
    let mut redis_server = RedisServer::start(redis_server.port);
    matches(
        &url,
        &origin,
        &edge,
        "the mirror is rebuilt after a Redis restart",
    )
    .await;

    // The edge restarts having missed changes, a deletion among them.
    edge.shutdown().await;
    put(&c, &origin, "pay/prod/e", json!(5)).await;
    let r = c
        .delete(format!("{origin}/v1/kv/web/prod/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let newest = revision(&c, &origin).await;
    let edge = meridian_edge::start(config).await.unwrap();
    eventually(WAIT, "the edge catches up", || async {
        (edge.shared.reader.read().unwrap().state.revision().0 >= newest).then_some(())
    })
    .await;
    matches(
        &url,
        &origin,
        &edge,
        "the mirror follows the restarted edge",
    )
    .await;
    let (have, marker) = mirror(&url).await.unwrap();
    assert!(!have.contains_key("config:web:prod:c"));
    assert_eq!(marker, Some(newest.to_string()));
    let stats = *edge.shared.mirror.lock().unwrap();
    assert!(stats.rebuilds + stats.revisions_applied > 0, "{stats:?}");
    edge.shutdown().await;
    origin_node.shutdown().await;
    redis_server.stop();
}
