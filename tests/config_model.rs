//! The configuration model through the real HTTP API of a running dev topology (three origin
//! nodes, three edges): hierarchical resolution and defaults, bulk reads, transactions, merge
//! patches and templates, each checked at the origin and at every edge.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

struct Topology {
    c: reqwest::Client,
    origin: String,
    /// A follower origin node: writes there are forwarded to the leader.
    follower: String,
    edges: Vec<String>,
}

impl Topology {
    /// Every edge at (at least) the origin's current revision.
    async fn settle(&self) -> u64 {
        let r = revision(&self.c, &self.origin).await;
        for edge in &self.edges {
            eventually(WAIT, "edge catches up", || async {
                (revision(&self.c, edge).await >= r).then_some(())
            })
            .await;
        }
        r
    }

    /// GET `path` at the origin and at every edge; asserts they all answer the same.
    async fn everywhere(&self, path: &str) -> (u16, Value) {
        let (code, at_origin) = get_json(&self.c, &format!("{}{path}", self.origin)).await;
        for edge in &self.edges {
            let (edge_code, at_edge) = get_json(&self.c, &format!("{edge}{path}")).await;
            assert_eq!(
                (edge_code, &at_edge),
                (code, &at_origin),
                "{edge}{path} answers as the origin does"
            );
        }
        (code, at_origin)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }
}

async fn topology(dir: &std::path::Path) -> (meridian::dev::DevCluster, Topology) {
    let (cluster, _) = cluster(dir, 10_000).await;
    let t = Topology {
        c: http(),
        origin: base(cluster.origin.http_addr),
        follower: cluster
            .more_origins
            .first()
            .map(|o| base(o.http_addr))
            .unwrap_or_else(|| base(cluster.origin.http_addr)),
        edges: cluster.edges.iter().map(|e| base(e.http_addr)).collect(),
    };
    (cluster, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_defaults_and_bulk_reads_agree_at_origin_and_edges() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, t) = topology(dir.path()).await;
    let o = &t.origin;
    for (path, value) in [
        ("_/_/a", json!("global")),
        ("_/_/b", json!("global")),
        ("_/_/c", json!("global")),
        ("_/_/d", json!("global")),
        ("_/prod/b", json!("env")),
        ("_/prod/c", json!("env")),
        ("_/prod/d", json!("env")),
        ("pay/_/c", json!("app")),
        ("pay/_/d", json!("app")),
        ("pay/prod/d", json!({"most": "specific"})),
        ("pay/dev/d", json!("another env")),
        ("shop/prod/d", json!("another app")),
    ] {
        put(&t.c, o, path, value).await;
    }
    let r = t.settle().await;

    let (code, config) = t.everywhere("/v1/config/pay/prod").await;
    assert_eq!(code, 200);
    assert_eq!(config["revision"], r);
    assert_eq!(
        config["config"],
        json!({"a": "global", "b": "env", "c": "app", "d": {"most": "specific"}})
    );
    assert_eq!(
        config["sources"],
        json!({"a": "_/_", "b": "_/prod", "c": "pay/_", "d": "pay/prod"})
    );
    assert_eq!(config["errors"], json!({}));
    // Another environment of the same app falls back differently.
    let (_, staging) = t.everywhere("/v1/config/pay/staging").await;
    assert_eq!(
        staging["config"],
        json!({"a": "global", "b": "global", "c": "app", "d": "app"})
    );

    // A default instead of 404, marked as such; a bad default is a 400 naming it.
    let (code, v) = t.everywhere("/v1/kv/pay/prod/timeout_ms?default=250").await;
    assert_eq!(code, 200);
    assert_eq!(v["value"], 250);
    assert_eq!(v["default"], true);
    assert_eq!(v["version"], 0);
    let (code, v) = t.everywhere("/v1/kv/pay/prod/timeout_ms").await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, v) = t.everywhere("/v1/kv/pay/prod/d?default=1").await;
    assert_eq!(code, 200);
    assert_eq!(v["value"], json!({"most": "specific"}));
    assert!(
        v.get("default").is_none(),
        "a stored value is not a default"
    );
    let (code, v) = t.everywhere("/v1/kv/pay/prod/x?default=%7Bnot").await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );

    // Bulk: an explicit key list says what is missing; a prefix lists what is there.
    let (code, v) = t.everywhere("/v1/kv/_/prod?keys=d,b,nope").await;
    assert_eq!(code, 200);
    let keys: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["b", "d"]);
    assert_eq!(v["missing"], json!(["nope"]));
    let (_, v) = t.everywhere("/v1/kv/_/_?prefix=c").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (code, v) = t.everywhere("/v1/kv/_/_?keys=a&prefix=a").await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );
    let (code, v) = t.everywhere("/v1/kv/_/_?keys=a,Bad%20Key").await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("invalid_key"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_all_or_nothing_and_patches_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, t) = topology(dir.path()).await;
    let o = &t.origin;
    put(&t.c, o, "pay/prod/a", json!(1)).await;
    put(&t.c, o, "pay/prod/b", json!(2)).await;
    let before = t.settle().await;

    // A failing condition: 409 naming it, nothing written, no revision.
    let txn = |version: u64| {
        json!({
            "conditions": [
                {"address": "pay/prod/a", "version": version},
                {"address": "pay/prod/b", "exists": true},
                {"address": "pay/prod/c", "absent": true},
            ],
            "ops": [
                {"op": "put", "address": "pay/prod/a", "value": 10},
                {"op": "delete", "address": "pay/prod/b"},
                {"op": "put", "address": "pay/prod/c", "value": {"new": true}},
            ],
            "reason": "test",
        })
    };
    let (code, v) = t.send(t.c.post(format!("{o}/v1/txn")).json(&txn(7))).await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["code"], "condition_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pay/prod/a"),
        "{v}"
    );
    assert_eq!(revision(&t.c, o).await, before, "no revision");
    let (_, a) = t.everywhere("/v1/kv/pay/prod/a").await;
    assert_eq!(
        (a["value"].clone(), a["version"].clone()),
        (json!(1), json!(1))
    );
    let (code, _) = t.everywhere("/v1/kv/pay/prod/c").await;
    assert_eq!(code, 404);

    // The same transaction with the right version, sent to a follower: one revision.
    let (code, v) = t
        .send(t.c.post(format!("{}/v1/txn", t.follower)).json(&txn(1)))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["revision"], before + 1);
    assert_eq!(v["changed"].as_array().unwrap().len(), 3);
    let r = t.settle().await;
    assert_eq!(r, before + 1);
    let (_, a) = t.everywhere("/v1/kv/pay/prod/a").await;
    assert_eq!(
        (a["value"].clone(), a["revision"].clone()),
        (json!(10), json!(r))
    );
    let (code, _) = t.everywhere("/v1/kv/pay/prod/b").await;
    assert_eq!(code, 404);
    let (_, c) = t.everywhere("/v1/kv/pay/prod/c").await;
    assert_eq!(c["revision"], r);

    // Malformed transactions are 400s naming the problem.
    for (body, code_name) in [
        (json!({"ops": []}), "invalid_command"),
        (
            json!({"ops": [{"op": "put", "address": "pay/prod/x", "value": 1},
                           {"op": "delete", "address": "pay/prod/x"}]}),
            "invalid_command",
        ),
        (
            json!({"conditions": [{"address": "pay/prod/x", "version": 1, "absent": true}],
                   "ops": [{"op": "delete", "address": "pay/prod/x"}]}),
            "invalid_command",
        ),
        (
            json!({"ops": [{"op": "put", "address": "pay/prod", "value": 1}]}),
            "invalid_key",
        ),
        (json!({"ops": [{"op": "rename"}]}), "malformed_json"),
    ] {
        let (code, v) = t.send(t.c.post(format!("{o}/v1/txn")).json(&body)).await;
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (400, Some(code_name)),
            "{body}"
        );
    }
    assert_eq!(revision(&t.c, o).await, r);

    // JSON Merge Patch: null deletes a field, objects merge, arrays are replaced.
    put(
        &t.c,
        o,
        "pay/prod/cfg",
        json!({"pool": {"min": 1, "max": 10}, "hosts": ["a", "b"], "debug": true}),
    )
    .await;
    let (code, v) = t
        .send(t.c.patch(format!("{o}/v1/kv/pay/prod/cfg")).json(&json!({
            "patch": {"pool": {"max": 20}, "hosts": ["c"], "debug": null},
            "expect_version": 1,
        })))
        .await;
    assert_eq!(code, 200, "{v}");
    let expected = json!({"pool": {"min": 1, "max": 20}, "hosts": ["c"]});
    assert_eq!(v["value"], expected);
    assert_eq!(v["version"], 2);
    t.settle().await;
    let (_, v) = t.everywhere("/v1/kv/pay/prod/cfg").await;
    assert_eq!(v["value"], expected);
    // A stale expect_version is refused.
    let (code, v) = t
        .send(t.c.patch(format!("{o}/v1/kv/pay/prod/cfg")).json(&json!({
            "patch": {"x": 1}, "expect_version": 1,
        })))
        .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("version_conflict"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_resolve_at_every_edge_and_report_what_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, t) = topology(dir.path()).await;
    let o = &t.origin;
    put(&t.c, o, "pay/prod/db.host", json!("db.internal")).await;
    put(&t.c, o, "_/_/db.port", json!(5432)).await;
    put(
        &t.c,
        o,
        "pay/prod/db.url",
        json!("postgres://${db.host}:${db.port}/pay"),
    )
    .await;
    put(
        &t.c,
        o,
        "pay/prod/db",
        json!({"url": "${db.url}", "port": "${db.port}"}),
    )
    .await;
    put(&t.c, o, "pay/prod/loop.a", json!("${loop.b}")).await;
    put(&t.c, o, "pay/prod/loop.b", json!("x-${loop.a}")).await;
    put(&t.c, o, "pay/prod/dangling", json!("${nowhere}")).await;
    put(&t.c, o, "pay/prod/literal", json!("$${db.host}")).await;
    t.settle().await;

    let (code, v) = t.everywhere("/v1/kv/pay/prod/db.url").await;
    assert_eq!(code, 200);
    assert_eq!(v["value"], "postgres://db.internal:5432/pay");
    let (_, v) = t.everywhere("/v1/kv/pay/prod/db").await;
    assert_eq!(
        v["value"],
        json!({"url": "postgres://db.internal:5432/pay", "port": 5432}),
        "a whole-string reference keeps the referenced type"
    );
    let (_, v) = t.everywhere("/v1/kv/pay/prod/db.url?raw=true").await;
    assert_eq!(v["value"], "postgres://${db.host}:${db.port}/pay");
    let (_, v) = t.everywhere("/v1/kv/pay/prod/literal").await;
    assert_eq!(v["value"], "${db.host}");

    let (code, v) = t.everywhere("/v1/kv/pay/prod/loop.a").await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (422, Some("unresolved_reference"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loop.a -> loop.b -> loop.a"),
        "{v}"
    );
    let (code, v) = t.everywhere("/v1/kv/pay/prod/dangling").await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (422, Some("unresolved_reference"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("${nowhere}")
    );

    // The resolved config serves what resolves and names what does not, never an empty value.
    let (_, v) = t.everywhere("/v1/config/pay/prod").await;
    assert_eq!(v["config"]["db.url"], "postgres://db.internal:5432/pay");
    for key in ["loop.a", "loop.b", "dangling"] {
        assert!(v["config"].get(key).is_none(), "{key} left out: {v}");
        assert!(v["errors"][key].is_string(), "{key} reported: {v}");
    }
    let (_, raw) = t.everywhere("/v1/config/pay/prod?raw=true").await;
    assert_eq!(raw["config"]["dangling"], "${nowhere}");
    assert_eq!(raw["errors"], json!({}));
}

/// The resident memory of this process (origin nodes and edges run in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_expanding_beyond_the_value_limit_is_refused_without_building_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, t) = topology(dir.path()).await;
    let o = &t.origin;
    // Each level references the next eight times, seven levels over a ~1 MB value: 8^7 MB
    // resolved naively.
    put(&t.c, o, "bomb/prod/l7", json!("x".repeat(1_000_000))).await;
    for level in (0..7).rev() {
        let refs = format!("${{l{}}}", level + 1).repeat(8);
        put(&t.c, o, &format!("bomb/prod/l{level}"), json!(refs)).await;
    }
    put(&t.c, o, "bomb/prod/plain", json!("still served")).await;
    t.settle().await;

    let before_kib = rss_kib();
    for _ in 0..5 {
        let (code, v) = t.everywhere("/v1/kv/bomb/prod/l0").await;
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (422, Some("template_too_large")),
            "{v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("l0 -> l1 -> l2"),
            "the chain is named: {message}"
        );
        assert!(message.contains("1048576"), "the limit is named: {message}");
    }
    // The big value itself is served; the configuration serves the rest and names the rest.
    let (code, v) = t.everywhere("/v1/kv/bomb/prod/l7").await;
    assert_eq!(code, 200);
    assert_eq!(v["value"].as_str().map(str::len), Some(1_000_000));
    let (_, v) = t.everywhere("/v1/config/bomb/prod").await;
    assert_eq!(v["config"]["plain"], "still served");
    for level in 0..7 {
        let key = format!("l{level}");
        assert!(v["config"].get(&key).is_none(), "{key} left out");
        let why = v["errors"][&key].as_str().unwrap_or_default();
        assert!(why.contains("more than"), "{key}: {why}");
    }
    let grown_kib = rss_kib().saturating_sub(before_kib);
    assert!(
        grown_kib < 64 * 1024,
        "reads grew the process by {grown_kib} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_diffs_and_rollbacks_of_a_key_and_an_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, t) = topology(dir.path()).await;
    let o = &t.origin;
    // History names the authenticated token, whatever a client claims.
    let mut people = std::collections::BTreeMap::new();
    for name in ["alice", "bob", "carol"] {
        let body = json!({"name": name, "role": "editor", "resources": ["pay/*/*"]});
        people.insert(name, common::create_token(&t.c, o, body).await);
    }
    let (alice, bob, carol) = (&people["alice"], &people["bob"], &people["carol"]);
    let write = |path: &'static str, value: Value, reason: &'static str| {
        common::http_with(&alice.0)
            .put(format!("{o}/v1/kv/{path}"))
            .header("meridian-actor", "mallory")
            .json(&json!({"value": value, "reason": reason}))
    };
    for i in 1..=5 {
        let (code, _) = t
            .send(write(
                "pay/prod/pool",
                json!({"max": i * 10, "min": 1}),
                "resize",
            ))
            .await;
        assert_eq!(code, 200);
    }
    t.send(write("pay/prod/flag", json!(true), "launch")).await;
    let r_before = t.settle().await;
    t.send(write("pay/prod/new", json!("later"), "added after"))
        .await;
    let (code, _) = t
        .send(
            common::http_with(&bob.0)
                .delete(format!("{o}/v1/kv/pay/prod/flag?reason=rollout%20done")),
        )
        .await;
    assert_eq!(code, 200);

    // History, newest first, page by page, with who, when and why.
    let (code, p1) = get_json(&t.c, &format!("{o}/v1/kv/pay/prod/pool/history?limit=2")).await;
    assert_eq!(code, 200, "{p1}");
    let versions = |p: &Value| {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["version"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&p1), [5, 4]);
    assert_eq!(p1["items"][0]["actor"], format!("alice#{}", alice.1));
    assert_eq!(p1["items"][0]["reason"], "resize");
    assert_eq!(p1["items"][0]["value"], json!({"max": 50, "min": 1}));
    assert!(p1["items"][0]["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let next = p1["next_before"].as_u64().unwrap();
    let (_, p2) = get_json(
        &t.c,
        &format!("{o}/v1/kv/pay/prod/pool/history?limit=2&before={next}"),
    )
    .await;
    assert_eq!(versions(&p2), [3, 2]);
    let (_, p3) = get_json(
        &t.c,
        &format!(
            "{o}/v1/kv/pay/prod/pool/history?limit=2&before={}",
            p2["next_before"]
        ),
    )
    .await;
    assert_eq!(versions(&p3), [1]);
    assert!(p3["next_before"].is_null());
    let (_, flag) = get_json(&t.c, &format!("{o}/v1/kv/pay/prod/flag/history")).await;
    assert_eq!(flag["items"][0]["deleted"], true);
    assert_eq!(flag["items"][0]["actor"], format!("bob#{}", bob.1));
    assert_eq!(flag["items"][0]["reason"], "rollout done");

    // Diff of a key between versions: JSON paths.
    let (code, d) = get_json(&t.c, &format!("{o}/v1/kv/pay/prod/pool/diff?from=1&to=5")).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(
        d["changed"],
        json!([{"path": "/max", "from": 10, "to": 50}])
    );
    assert_eq!(d["added"], json!([]));
    let (code, d) = get_json(&t.c, &format!("{o}/v1/kv/pay/prod/pool/diff?from=9")).await;
    assert_eq!(
        (code, d["error"]["code"].as_str()),
        (404, Some("version_not_found"))
    );

    // Diff of the environment between revisions.
    let (code, d) = get_json(&t.c, &format!("{o}/v1/diff/pay/prod?from={r_before}")).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["added"][0]["key"], "new");
    assert_eq!(d["removed"][0]["key"], "flag");
    assert_eq!(d["changed"], json!([]));

    // Roll the key back to version 2: a new version 6 with version 2's value, at every edge.
    let (code, v) = t
        .send(
            common::http_with(&carol.0)
                .post(format!("{o}/v1/kv/pay/prod/pool/rollback"))
                .json(&json!({"version": 2, "reason": "too big"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["version"], 6);
    assert_eq!(v["value"], json!({"max": 20, "min": 1}));
    t.settle().await;
    let (_, at_edges) = t.everywhere("/v1/kv/pay/prod/pool").await;
    assert_eq!(at_edges["value"], json!({"max": 20, "min": 1}));
    let (_, h) = get_json(&t.c, &format!("{o}/v1/kv/pay/prod/pool/history?limit=1")).await;
    assert_eq!(h["items"][0]["reason"], "rollback to version 2: too big");
    assert_eq!(h["items"][0]["actor"], format!("carol#{}", carol.1));
    let (_, all) = get_json(&t.c, &format!("{o}/v1/kv/pay/prod/pool/history")).await;
    assert_eq!(
        versions(&all),
        [6, 5, 4, 3, 2, 1],
        "history is never rewritten"
    );

    // Roll the whole environment back to before `new` and the delete: one revision.
    let before_rollback = revision(&t.c, o).await;
    let (code, v) = t
        .send(
            t.c.post(format!("{o}/v1/rollback/pay/prod"))
                .json(&json!({"revision": r_before, "reason": "bad release"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["revision"], before_rollback + 1);
    t.settle().await;
    let (_, cfg) = t.everywhere("/v1/kv/pay/prod").await;
    let items: BTreeMap<String, Value> = cfg["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["key"].as_str().unwrap().to_string(), i["value"].clone()))
        .collect();
    assert_eq!(
        items,
        BTreeMap::from([
            ("flag".to_string(), json!(true)),
            ("pool".to_string(), json!({"max": 50, "min": 1})),
        ])
    );
    // A revision from the future is refused.
    let (code, v) = t
        .send(
            t.c.post(format!("{o}/v1/rollback/pay/prod"))
                .json(&json!({"revision": 10_000})),
        )
        .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_retention_is_enforced_by_compaction() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options(dir.path());
    opts.history.max_versions = 3;
    opts.history.compact_interval_s = 1;
    let cluster = meridian::dev::DevCluster::start(&opts).await.unwrap();
    let c = http();
    let o = base(cluster.origin.http_addr);
    for i in 0..10 {
        put(&c, &o, "pay/prod/k", json!(i)).await;
    }
    let url = format!("{o}/v1/kv/pay/prod/k/history");
    let kept = eventually(WAIT, "compaction keeps the last 3 versions", || async {
        let (_, h) = get_json(&c, &url).await;
        let items = h["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 3).then_some(items)
    })
    .await;
    let versions: Vec<u64> = kept
        .iter()
        .map(|i| i["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [10, 9, 8]);
    // A compacted version cannot be diffed against or rolled back to, and says so.
    let (code, v) = get_json(&c, &format!("{o}/v1/kv/pay/prod/k/diff?from=2")).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("version_not_found"))
    );
    let (code, v) = get_json(&c, &format!("{o}/v1/diff/pay/prod?from=2")).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (410, Some("history_compacted"))
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_refuse_invalid_writes_with_the_failing_path_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, t) = topology(dir.path()).await;
    let o = &t.origin;
    put(&t.c, o, "pay/prod/db.pool", json!({"max": 500})).await;
    put(&t.c, o, "pay/prod/db.timeout", json!({"max": 5})).await;
    let schema = json!({
        "type": "object",
        "properties": {"max": {"type": "integer", "maximum": 100}},
        "required": ["max"],
    });
    let url = format!("{o}/v1/schemas/pay/prod/db.");

    // The current value of db.pool violates it: refused, naming the key.
    let (code, v) = t.send(t.c.put(&url).json(&json!({"schema": schema}))).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("current_values_violate")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("db.pool") && !message.contains("db.timeout"),
        "{v}"
    );
    let (code, _) = get_json(&t.c, &url).await;
    assert_eq!(code, 404, "nothing registered");
    // Not a schema at all.
    let (code, v) = t
        .send(t.c.put(&url).json(&json!({"schema": {"type": 12}})))
        .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("invalid_schema"))
    );

    // Forced, it is registered and served back.
    let (code, _) = t
        .send(
            t.c.put(&url)
                .json(&json!({"schema": schema, "force": true})),
        )
        .await;
    assert_eq!(code, 200);
    let (code, v) = get_json(&t.c, &url).await;
    assert_eq!((code, &v["schema"]), (200, &schema));
    let (_, list) = get_json(&t.c, &format!("{o}/v1/schemas/pay/prod")).await;
    assert_eq!(list["items"][0]["prefix"], "db.");

    // Writes under the prefix are validated: 422 with the failing path and rule.
    let r = revision(&t.c, o).await;
    let (code, v) = t
        .send(
            t.c.put(format!("{o}/v1/kv/pay/prod/db.pool"))
                .json(&json!({"value": {"max": 1000}})),
        )
        .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (422, Some("schema_violation")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/max") && message.contains("maximum"),
        "{message}"
    );
    let (code, v) = t
        .send(
            t.c.put(format!("{o}/v1/kv/pay/prod/db.other"))
                .json(&json!({"value": {"min": 1}})),
        )
        .await;
    assert_eq!(code, 422);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("required"),
        "{v}"
    );
    // A patch whose result violates it, and a transaction with one bad value: refused whole.
    let (code, _) = t
        .send(
            t.c.patch(format!("{o}/v1/kv/pay/prod/db.timeout"))
                .json(&json!({"patch": {"max": "soon"}})),
        )
        .await;
    assert_eq!(code, 422);
    let (code, _) = t
        .send(t.c.post(format!("{o}/v1/txn")).json(&json!({"ops": [
            {"op": "put", "address": "pay/prod/other", "value": 1},
            {"op": "put", "address": "pay/prod/db.new", "value": {"max": 101}},
        ]})))
        .await;
    assert_eq!(code, 422);
    assert_eq!(revision(&t.c, o).await, r, "nothing refused was written");
    let (code, _) = get_json(&t.c, &format!("{o}/v1/kv/pay/prod/other")).await;
    assert_eq!(code, 404);

    // Valid writes pass; keys outside the prefix are not checked.
    let (code, _) = t
        .send(
            t.c.put(format!("{o}/v1/kv/pay/prod/db.pool"))
                .json(&json!({"value": {"max": 50}})),
        )
        .await;
    assert_eq!(code, 200);
    put(&t.c, o, "pay/prod/cache", json!("anything")).await;

    // Removed, the schema no longer applies.
    let (code, _) = t.send(t.c.delete(&url)).await;
    assert_eq!(code, 200);
    put(&t.c, o, "pay/prod/db.pool", json!({"max": 1000})).await;
}
