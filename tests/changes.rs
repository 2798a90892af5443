//! Protected environments and change requests, end to end against a dev topology with several
//! identities: a direct write to a protected key is refused and points to change requests;
//! a change shows its diff and schema check, is approved by others than its author (per rule,
//! the database team for `db.*`), applies as one revision served by the edges, goes stale when
//! what was reviewed changes, is refreshed, applied by break-glass (audited as such), and a
//! scheduled change is applied by the leader, by a new leader after failover.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Tokens: alice edits `pay/*`; bob edits and approves `pay/prod/*`; carol (the database
/// team) reads `pay/prod/*` and approves `pay/prod/db.*` only; ops may break glass on
/// `pay/prod/*`.
async fn identities(admin: &reqwest::Client, o: &str) -> [reqwest::Client; 4] {
    let mut out = Vec::new();
    for body in [
        json!({"name": "alice", "role": "editor", "resources": ["pay/*/*"]}),
        json!({"name": "bob", "grants": [
            {"role": "editor", "resources": ["pay/*/*"]},
            {"actions": ["approve"], "resources": ["pay/prod/*"]}]}),
        json!({"name": "carol", "grants": [
            {"role": "viewer", "resources": ["pay/prod/*"]},
            {"actions": ["approve"], "resources": ["pay/prod/db.*"]}]}),
        json!({"name": "ops", "grants": [
            {"role": "editor", "resources": ["pay/*/*"]},
            {"actions": ["break-glass"], "resources": ["pay/prod/*"]}]}),
    ] {
        let (token, _) = create_token(admin, o, body).await;
        out.push(http_with(&token));
    }
    out.try_into().unwrap()
}

async fn protect(admin: &reqwest::Client, o: &str, name: &str, resources: Value, n: u32) {
    let (code, v) = send(
        admin
            .put(format!("{o}/v1/protections/{name}"))
            .json(&json!({"resources": resources, "approvals": n})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
}

async fn create(c: &reqwest::Client, o: &str, body: Value) -> Value {
    let (code, v) = send(c.post(format!("{o}/v1/changes")).json(&body)).await;
    assert_eq!(code, 201, "{v}");
    v
}

async fn post(c: &reqwest::Client, o: &str, id: u64, step: &str, body: Value) -> (u16, Value) {
    send(c.post(format!("{o}/v1/changes/{id}/{step}")).json(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_environment_changes_only_through_approved_change_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[2].http_addr);
    let [alice, bob, carol, ops] = identities(&admin, &o).await;
    put(&alice, &o, "pay/prod/timeout", json!(30)).await;
    let (code, v) = send(
        admin
            .put(format!("{o}/v1/schemas/pay/prod/timeout"))
            .json(&json!({"schema": {"type": "integer", "maximum": 120}})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    protect(&admin, &o, "prod", json!(["pay/prod/*"]), 1).await;
    protect(&admin, &o, "db", json!(["pay/prod/db.*"]), 2).await;

    // A direct write to a protected key: 403 naming the rule and the way.
    let (code, v) = send(
        alice
            .put(format!("{o}/v1/kv/pay/prod/timeout"))
            .json(&json!({"value": 60})),
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (403, Some("approval_required")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("prod") && message.contains("/v1/changes"),
        "{message}"
    );
    // Unprotected environments are written as before.
    put(&alice, &o, "pay/staging/timeout", json!(60)).await;

    // The change: its diff against the current state and its schema check.
    let change = create(
        &alice,
        &o,
        json!({"reason": "longer timeout, new database", "ops": [
            {"op": "put", "address": "pay/prod/timeout", "value": 600},
            {"op": "put", "address": "pay/prod/db.url", "value": "postgres://db2"}]}),
    )
    .await;
    let id = change["id"].as_u64().unwrap();
    assert_eq!(change["status"], "pending", "{change}");
    let diff = change["diff"].as_array().unwrap();
    let timeout = diff.iter().find(|d| d["key"] == "timeout").unwrap();
    assert_eq!(
        (
            &timeout["current"],
            &timeout["proposed"],
            &timeout["reviewed_version"]
        ),
        (&json!(30), &json!(600), &json!(1)),
        "{change}"
    );
    assert_eq!(change["schema"]["ok"], false, "600 > 120: {change}");
    // The author cannot approve; a reader of the keys without approve cannot either.
    let (code, v) = post(&alice, &o, id, "approve", json!({})).await;
    assert_eq!(code, 403, "{v}");
    // Fix the value: cancel and propose again within the schema.
    let (code, v) = post(&alice, &o, id, "cancel", json!({})).await;
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("cancelled")),
        "{v}"
    );
    let change = create(
        &alice,
        &o,
        json!({"reason": "longer timeout, new database", "ops": [
            {"op": "put", "address": "pay/prod/timeout", "value": 90},
            {"op": "put", "address": "pay/prod/db.url", "value": "postgres://db2"}]}),
    )
    .await;
    let id = change["id"].as_u64().unwrap();
    assert_eq!(change["schema"]["ok"], true, "{change}");

    // Bob counts for both rules; `db` needs a second approver: the database team.
    let (code, v) = post(&bob, &o, id, "approve", json!({"comment": "fine"})).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("pending")), "{v}");
    let (code, v) = post(&alice, &o, id, "apply", json!({})).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (403, Some("approval_required")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("\"db\""),
        "{v}"
    );
    let (code, v) = post(
        &carol,
        &o,
        id,
        "comments",
        json!({"text": "checked the pool size"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = post(&carol, &o, id, "approve", json!({})).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("approved")), "{v}");
    let before = revision(&admin, &o).await;
    let (code, v) = post(&alice, &o, id, "apply", json!({})).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("applied")), "{v}");
    let applied = v["applied"]["revision"].as_u64().unwrap();
    assert_eq!(applied, before + 1, "both keys in one revision: {v}");
    eventually(WAIT, "the edge serves the approved value", || {
        let (c, url) = (admin.clone(), format!("{edge}/v1/kv/pay/prod/timeout"));
        async move {
            let (code, v) = get_json(&c, &url).await;
            (code == 200 && v["value"] == json!(90)).then_some(())
        }
    })
    .await;
    let (code, v) = post(&alice, &o, id, "apply", json!({})).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("change_closed")),
        "{v}"
    );

    // Two changes to the same key: the second goes stale when the first applies.
    let body = |value| json!({"reason": "tune", "ops": [{"op": "put", "address": "pay/prod/timeout", "value": value}]});
    let first = create(&alice, &o, body(100)).await["id"].as_u64().unwrap();
    let second = create(&alice, &o, body(110)).await["id"].as_u64().unwrap();
    for id in [first, second] {
        let (code, v) = post(&bob, &o, id, "approve", json!({})).await;
        assert_eq!((code, v["status"].as_str()), (200, Some("approved")), "{v}");
    }
    let (code, v) = post(&alice, &o, first, "apply", json!({})).await;
    assert_eq!(code, 200, "{v}");
    let at = revision(&admin, &o).await;
    let (code, v) = post(&alice, &o, second, "apply", json!({})).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("stale_change")),
        "{v}"
    );
    assert_eq!(revision(&admin, &o).await, at, "nothing half-committed");
    // Refreshed against the new version, it needs approving again.
    let (code, v) = post(&bob, &o, second, "refresh", json!({})).await;
    assert_eq!(code, 403, "only the author refreshes: {v}");
    let (code, v) = post(&alice, &o, second, "refresh", json!({})).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("pending")), "{v}");

    // Break-glass: only with the action, then applied without approvals and flagged.
    let (code, v) = post(&alice, &o, second, "apply", json!({"break_glass": true})).await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = post(&ops, &o, second, "apply", json!({"break_glass": true})).await;
    assert_eq!(
        (code, v["applied"]["break_glass"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    let (_, value) = get_json(&admin, &format!("{o}/v1/kv/pay/prod/timeout")).await;
    assert_eq!(value["value"], json!(110));

    // The list, by status; and every step in the audit log under its actor.
    let (code, v) = get_json(&admin, &format!("{o}/v1/changes?status=applied")).await;
    assert_eq!(code, 200, "{v}");
    let ids: Vec<u64> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![id, first, second], "{v}");
    let (code, audit) = get_json(&admin, &format!("{o}/v1/audit?limit=1000")).await;
    assert_eq!(code, 200, "{audit}");
    let records = audit["records"].as_array().unwrap();
    let seen = |action: &str, actor: &str, outcome: &str| {
        records.iter().any(|r| {
            r["action"] == action
                && r["actor"].as_str().unwrap_or("").starts_with(actor)
                && r["outcome"] == outcome
        })
    };
    assert!(seen("change-create", "alice", "ok"), "{audit}");
    assert!(seen("change-approve", "carol", "ok"), "{audit}");
    assert!(seen("change-apply", "alice", "ok"), "{audit}");
    assert!(seen("change-apply", "alice", "stale_change"), "{audit}");
    assert!(seen("change-apply-break-glass", "ops", "ok"), "{audit}");
    assert!(seen("write", "alice", "approval_required"), "{audit}");
    assert!(seen("protection-set", "bootstrap-admin", "ok"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_change_is_applied_by_a_new_leader_after_failover() {
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
    let [alice, bob, _, _] = identities(&admin, &o).await;
    protect(&admin, &o, "prod", json!(["pay/prod/*"]), 1).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Far enough ahead to take the leader down first.
    let change = create(
        &alice,
        &o,
        json!({"reason": "at night", "apply_at": now_ms + 4_000, "ops": [
            {"op": "put", "address": "pay/prod/mode", "value": "night"}]}),
    )
    .await;
    let id = change["id"].as_u64().unwrap();
    let (code, v) = post(&bob, &o, id, "approve", json!({})).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (code, v) = post(&alice, &o, id, "apply", json!({})).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("change_scheduled")),
        "{v}"
    );

    let addrs: Vec<_> = nodes.iter().map(|n| n.http_addr).collect();
    let leader = leader_index(&admin, &addrs).await;
    let mut nodes = nodes;
    nodes.remove(leader).shutdown().await;
    let survivor = base(nodes[0].http_addr);
    let applied = eventually(WAIT, "the new leader applies the scheduled change", || {
        let (c, url) = (admin.clone(), format!("{survivor}/v1/changes/{id}"));
        async move {
            let (code, v) = get_json(&c, &url).await;
            (code == 200 && v["status"] == "applied").then_some(v)
        }
    })
    .await;
    assert_eq!(applied["applied"]["by"], "scheduler", "{applied}");
    assert!(
        applied["applied"]["at_ms"].as_u64().unwrap() >= now_ms + 4_000,
        "not before its time: {applied}"
    );
    let (_, value) = get_json(&admin, &format!("{survivor}/v1/kv/pay/prod/mode")).await;
    assert_eq!(value["value"], "night");
    for e in edges {
        e.shutdown().await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}
