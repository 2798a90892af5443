//! Feature flags against a running dev topology: a flagd document written at the origin,
//! checked (422 naming the path, nothing committed), read back, evaluated over OFREP at every
//! edge and at the origin; one-flag writes, history, rollback and delete reaching the edges;
//! bulk evaluation with ETag and 304; bad contexts; who may write, evaluate, and use the bare
//! `/ofrep/v1/...` routes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn document() -> Value {
    json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{"$ref": "staff"}, "on", {"fractional": [["on", 50], ["off", 50]]}]},
                "metadata": {"owner": "checkout"}
            },
            "banner-color": {
                "state": "ENABLED",
                "variants": {"red": "#f00", "blue": "#00f"},
                "defaultVariant": "red",
                "targeting": {"if": [{"sem_ver": [{"var": "app_version"}, ">=", "2.0.0"]}, "blue", null]}
            },
            "old-thing": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
        },
        "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@shop.example"]}},
        "metadata": {"flagSetId": "shop-prod"}
    })
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

fn ofrep_one(base: &str, flag: &str) -> String {
    format!("{base}/v1/flags/shop/prod/ofrep/v1/evaluate/flags/{flag}")
}

/// A dev topology holding [`document`] in `shop/prod`; its admin client and origin URL.
async fn with_document(
    dir: &std::path::Path,
) -> (meridian::dev::DevCluster, reqwest::Client, String) {
    let (cluster, _) = cluster(dir, 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod"))
        .json(&document())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (cluster, admin, o)
}

/// Waits until `base` evaluates `flag` for `context` with `want(body)`.
async fn until_evaluates(
    c: &reqwest::Client,
    base: &str,
    flag: &str,
    context: Value,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let body = json!({ "context": context }).to_string();
    eventually(WAIT, &format!("{base} evaluates {flag}"), || async {
        let (_, v, _) = post(c, &ofrep_one(base, flag), &body).await;
        want(&v).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_checked_replicated_and_evaluated_at_every_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    put(&admin, &o, "shop/prod/db.pool", json!(5)).await;

    // The whole document in, the same document out.
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod"))
        .json(&document())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let written: Value = r.json().await.unwrap();
    assert_eq!(written["flags"], 3);
    let (status, stored) = get_json(&admin, &format!("{o}/v1/flags/shop/prod")).await;
    assert_eq!(status, 200);
    let mut expected = document();
    expected.as_object_mut().unwrap().remove("$schema");
    assert_eq!(stored, expected);
    // Writing the same document again commits nothing.
    let before = revision(&admin, &o).await;
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod"))
        .json(&document())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(revision(&admin, &o).await, before);

    // Flag records are not configuration keys.
    let (_, list) = get_json(&admin, &format!("{o}/v1/kv/shop/prod")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let (_, config) = get_json(&admin, &format!("{o}/v1/config/shop/prod")).await;
    assert_eq!(config["config"], json!({"db.pool": 5}));

    // Every edge evaluates every flag with flagd's semantics.
    let mut bases: Vec<String> = cluster.edges.iter().map(|e| base(e.http_addr)).collect();
    bases.push(o.clone());
    for b in &bases {
        let v = until_evaluates(
            &admin,
            b,
            "new-checkout",
            json!({"targetingKey": "u1", "email": "a@shop.example"}),
            |v| v["reason"] == "TARGETING_MATCH",
        )
        .await;
        assert_eq!(
            v,
            json!({"key": "new-checkout", "reason": "TARGETING_MATCH", "variant": "on", "value": true,
            "metadata": {"owner": "checkout", "flagSetId": "shop-prod"}})
        );
        let body = json!({"context": {"app_version": "v1.9"}}).to_string();
        let (status, v, _) = post(&admin, &ofrep_one(b, "banner-color"), &body).await;
        assert_eq!(
            (status, &v["reason"], &v["value"]),
            (200, &json!("DEFAULT"), &json!("#f00"))
        );
        let (_, v, _) = post(&admin, &ofrep_one(b, "old-thing"), "{\"context\":{}}").await;
        assert_eq!(v["reason"], "DISABLED");
        assert!(v.get("value").is_none(), "{v}");
        // Bucketing needs a targeting key.
        let (status, v, _) = post(&admin, &ofrep_one(b, "new-checkout"), "{\"context\":{}}").await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (400, Some("TARGETING_KEY_MISSING"))
        );
        let (status, v, _) = post(&admin, &ofrep_one(b, "nope"), "{\"context\":{}}").await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (404, Some("FLAG_NOT_FOUND"))
        );
    }

    // The same subject lands in the same bucket at every edge.
    let mut seen = Vec::new();
    for b in &bases {
        let body = json!({"context": {"targetingKey": "user-4711"}}).to_string();
        let (_, v, _) = post(&admin, &ofrep_one(b, "new-checkout"), &body).await;
        seen.push(v["variant"].clone());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");

    // Bulk evaluation: every flag, an ETag, 304 while nothing changes.
    let edge = &bases[0];
    let bulk = format!("{edge}/v1/flags/shop/prod/ofrep/v1/evaluate/flags");
    let ctx = json!({"context": {"targetingKey": "u9", "app_version": "2.1.0"}}).to_string();
    let (status, v, headers) = post(&admin, &bulk, &ctx).await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["banner-color", "new-checkout", "old-thing"]);
    assert_eq!(v["metadata"], json!({"flagSetId": "shop-prod"}));
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let r = admin
        .post(&bulk)
        .header("content-type", "application/json")
        .header("if-none-match", &etag)
        .body(ctx.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // One flag changed at the origin: history, new bulk answer, rollback, delete.
    let mut blue = document()["flags"]["banner-color"].clone();
    blue["defaultVariant"] = json!("blue");
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod/banner-color"))
        .json(&blue)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let put: Value = r.json().await.unwrap();
    assert_eq!(put["version"], 2);
    let r = admin
        .get(format!("{o}/v1/flags/shop/prod/banner-color"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["meridian-version"], "2");
    assert_eq!(r.json::<Value>().await.unwrap(), blue);
    until_evaluates(&admin, edge, "banner-color", json!({}), |v| {
        v["value"] == "#00f"
    })
    .await;
    let r = admin
        .post(&bulk)
        .header("content-type", "application/json")
        .header("if-none-match", &etag)
        .body(ctx.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the set changed, so the ETag did");
    let (_, history) = get_json(
        &admin,
        &format!("{o}/v1/flags/shop/prod/banner-color/history"),
    )
    .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 2, "{history}");
    let r = admin
        .post(format!("{o}/v1/flags/shop/prod/banner-color/rollback"))
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until_evaluates(&admin, edge, "banner-color", json!({}), |v| {
        v["value"] == "#f00"
    })
    .await;
    let r = admin
        .delete(format!("{o}/v1/flags/shop/prod/banner-color"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until_evaluates(&admin, edge, "banner-color", json!({}), |v| {
        v["errorCode"] == "FLAG_NOT_FOUND"
    })
    .await;
    let r = admin
        .delete(format!("{o}/v1/flags/shop/prod/banner-color"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_bad_contexts_get_clear_errors_and_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, admin, o) = with_document(dir.path()).await;
    let before = revision(&admin, &o).await;

    let flag = |f: Value| json!({"flags": {"f": f}});
    let mut deep = json!("on");
    for _ in 0..40 {
        deep = json!({"if": [true, deep, null]});
    }
    for (body, path) in [
        (
            flag(json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "gone"})),
            "/flags/f/defaultVariant",
        ),
        (
            flag(
                json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
            "targeting": {"if": [{"$ref": "missing"}, "on", null]}}),
            ),
            "/flags/f/targeting/if/0/$ref",
        ),
        (
            flag(
                json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
            "targeting": {"if": [true, "off", null]}}),
            ),
            "/flags/f/targeting/if/1",
        ),
        (
            flag(
                json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "targeting": deep}),
            ),
            "/flags/f/targeting",
        ),
        (
            flag(
                json!({"state": "ENABLED", "variants": {"on": true, "x": "text"}, "defaultVariant": "on"}),
            ),
            "/flags/f",
        ),
        (
            json!({"flags": {"f": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
            "targeting": {"explode": [1]}}}}),
            "/flags/f/targeting",
        ),
    ] {
        let r = admin
            .put(format!("{o}/v1/flags/shop/prod"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_flags");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("at {path}")),
            "{message} (wanted {path})"
        );
    }
    // One flag that names an evaluator the set does not have.
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod/x"))
        .json(
            &json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
            "targeting": {"if": [{"$ref": "nobody"}, "on", null]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    for (path, code) in [
        ("/v1/flags/shop/prod/bad%20key", "invalid_flag"),
        ("/v1/flags/Shop/prod/x", "invalid_key"),
    ] {
        let r = admin
            .put(format!("{o}{path}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "{path}");
    }
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod"))
        .header("content-type", "application/json")
        .body("{\"flags\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(revision(&admin, &o).await, before, "nothing was committed");

    // Contexts: not an object, a bad targeting key, not JSON, too large.
    let url = ofrep_one(&o, "new-checkout");
    for body in [
        "{\"context\": [1]}",
        "{\"context\": {\"targetingKey\": 7}}",
        "{nope",
        "[]",
    ] {
        let (status, v, _) = post(&admin, &url, body).await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (400, Some("INVALID_CONTEXT")),
            "{body}"
        );
    }
    let big = json!({"context": {"targetingKey": "u", "blob": "x".repeat(70 * 1024)}}).to_string();
    let (status, v, _) = post(&admin, &url, &big).await;
    assert_eq!(
        (status, v["errorCode"].as_str()),
        (413, Some("INVALID_CONTEXT"))
    );
    // The node goes on answering.
    let (status, _, _) = post(&admin, &url, "{\"context\":{\"targetingKey\":\"u\"}}").await;
    assert_eq!(status, 200);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_write_evaluate_and_use_the_bare_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, admin, o) = with_document(dir.path()).await;
    let (svc, _) = create_token(
        &admin,
        &o,
        json!({"name": "shop-svc", "role": "viewer", "resources": ["shop/prod/*"]}),
    )
    .await;
    let (wide, _) = create_token(
        &admin,
        &o,
        json!({"name": "reader", "role": "viewer", "resources": ["*/*/*"]}),
    )
    .await;
    let (other, _) = create_token(
        &admin,
        &o,
        json!({"name": "pay-svc", "role": "viewer", "resources": ["pay/prod/*"]}),
    )
    .await;
    let edge = base(cluster.edges[0].http_addr);
    let ctx = "{\"context\":{\"targetingKey\":\"u1\",\"email\":\"x@shop.example\"}}";

    // The scoped service token evaluates at the edge, by the full and by the bare route.
    let svc = http_with(&svc);
    until_evaluates(
        &svc,
        &edge,
        "new-checkout",
        json!({"targetingKey": "u1", "email": "x@shop.example"}),
        |v| v["variant"] == "on",
    )
    .await;
    let (status, v, _) = post(
        &svc,
        &format!("{edge}/ofrep/v1/evaluate/flags/new-checkout"),
        ctx,
    )
    .await;
    assert_eq!((status, &v["variant"]), (200, &json!("on")), "{v}");
    let (status, v, _) = post(&svc, &format!("{edge}/ofrep/v1/evaluate/flags"), ctx).await;
    assert_eq!(
        (status, v["flags"].as_array().map(Vec::len)),
        (200, Some(3))
    );
    // ... and may not change flags.
    let r = svc
        .put(format!("{o}/v1/flags/shop/prod"))
        .json(&document())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A token of another namespace, no token, a token for everything on the bare route.
    let (status, _, _) = post(&http_with(&other), &ofrep_one(&edge, "new-checkout"), ctx).await;
    assert_eq!(status, 403);
    let (status, _, _) = post(&http_anonymous(), &ofrep_one(&edge, "new-checkout"), ctx).await;
    assert_eq!(status, 401);
    let (status, _, _) = post(
        &http_anonymous(),
        &format!("{edge}/ofrep/v1/evaluate/flags"),
        ctx,
    )
    .await;
    assert_eq!(status, 401);
    let (status, v, _) = post(
        &http_with(&wide),
        &format!("{edge}/ofrep/v1/evaluate/flags/new-checkout"),
        ctx,
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("ambiguous_namespace"))
    );
    // The edge is read-only for flags too.
    let r = admin
        .put(format!("{edge}/v1/flags/shop/prod"))
        .json(&document())
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 404 | 405), "{}", r.status());
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_count_every_evaluation_once_per_variant_and_region() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, admin, o) = with_document(dir.path()).await;
    let staff = "{\"context\":{\"targetingKey\":\"u\",\"email\":\"s@shop.example\"}}";
    let guest = "{\"context\":{\"targetingKey\":\"u\",\"app_version\":\"1.0\"}}";
    let mut expected_regions = serde_json::Map::new();
    for (i, e) in cluster.edges.iter().enumerate() {
        let b = base(e.http_addr);
        until_evaluates(
            &admin,
            &b,
            "new-checkout",
            json!({"targetingKey": "u", "email": "s@shop.example"}),
            |v| v["variant"] == "on",
        )
        .await;
        // The wait above evaluated once; `i` more single evaluations, and two bulk ones.
        for _ in 0..i {
            let (status, _, _) = post(&admin, &ofrep_one(&b, "new-checkout"), staff).await;
            assert_eq!(status, 200);
        }
        for _ in 0..2 {
            let bulk = format!("{b}/v1/flags/shop/prod/ofrep/v1/evaluate/flags");
            let (status, _, _) = post(&admin, &bulk, guest).await;
            assert_eq!(status, 200);
        }
        let region = meridian::dev::REGIONS[i].to_owned();
        expected_regions.insert(region, json!({"on": 1 + i as u64}));
    }
    let url = format!("{o}/v1/flags/shop/prod/new-checkout/exposures");
    // Staff evaluations counted "on"; guest bulk evaluations bucket by targeting key "u".
    let (_, guest_answer, _) = post(&admin, &ofrep_one(&o, "new-checkout"), guest).await;
    let guest_variant = guest_answer["variant"].as_str().unwrap().to_owned();
    let total_single: u64 = (1..=cluster.edges.len() as u64).sum();
    let guests = 2 * cluster.edges.len() as u64;
    let got = eventually(
        WAIT,
        "every evaluation is counted at the origin",
        || async {
            let (_, v) = get_json(&admin, &url).await;
            (v["total"] == total_single + guests).then_some(v)
        },
    )
    .await;
    let mut variants = serde_json::Map::new();
    variants.insert("on".into(), json!(total_single));
    *variants.entry(guest_variant.clone()).or_insert(json!(0)) = json!(
        variants
            .get(&guest_variant)
            .and_then(Value::as_u64)
            .unwrap_or(0)
            + guests
    );
    assert_eq!(got["variants"], Value::Object(variants), "{got}");
    for (region, counts) in &expected_regions {
        let on = counts["on"].as_u64().unwrap() + if guest_variant == "on" { 2 } else { 0 };
        assert_eq!(got["regions"][region]["on"], on, "{got}");
    }
    // Every node answers the same totals (they are committed through Raft; this cluster
    // has one node: the rollout test below runs three).
    for other in &cluster.more_origins {
        let (_, v) = get_json(
            &admin,
            &format!(
                "{}/v1/flags/shop/prod/new-checkout/exposures",
                base(other.http_addr)
            ),
        )
        .await;
        assert_eq!(v["total"], got["total"]);
    }
    drop(cluster);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_advance_on_the_leader_survive_failover_and_abort_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    init();
    let mut opts = options(dir.path());
    opts.origin_nodes = 3;
    let cluster = meridian::dev::DevCluster::start(&opts).await.unwrap();
    let admin = http();
    let meridian::dev::DevCluster {
        origin,
        more_origins,
        edges,
        ..
    } = cluster;
    let mut origins: Vec<Option<meridian_origin::OriginHandle>> = std::iter::once(origin)
        .chain(more_origins)
        .map(Some)
        .collect();
    let bases: Vec<String> = origins
        .iter()
        .map(|o| base(o.as_ref().unwrap().http_addr))
        .collect();
    let o = bases[0].clone();
    let edge = base(edges[1].http_addr);
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod"))
        .json(&document())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A scheduled change takes effect at its time, and is then gone.
    let mut blue = document()["flags"]["banner-color"].clone();
    blue["defaultVariant"] = json!("blue");
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod/banner-color/schedule"))
        .json(&json!({"at_ms": now_ms() + 500, "definition": blue, "reason": "launch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until_evaluates(&admin, &edge, "banner-color", json!({}), |v| {
        v["value"] == "#00f"
    })
    .await;
    let (status, _) = get_json(
        &admin,
        &format!("{o}/v1/flags/shop/prod/banner-color/schedule"),
    )
    .await;
    assert_eq!(status, 404);
    // A scheduled definition that does not check is refused at once.
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod/banner-color/schedule"))
        .json(&json!({"at_ms": now_ms(), "definition": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // A rollout: 0% on for a second, 50% for two, then everyone.
    let rollout = format!("{o}/v1/flags/shop/prod/new-checkout/rollout");
    let plan = json!({"steps": [
        {"weights": {"on": 0, "off": 100}, "hold_s": 1},
        {"weights": {"on": 50, "off": 50}, "hold_s": 2},
        {"weights": {"on": 100, "off": 0}, "hold_s": 0}
    ], "reason": "gradual launch"});
    let r = admin.post(&rollout).json(&plan).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let started: Value = r.json().await.unwrap();
    assert_eq!(
        (&started["state"], &started["step"]),
        (&json!("running"), &json!(0))
    );
    let r = admin.post(&rollout).json(&plan).send().await.unwrap();
    assert_eq!(r.status(), 409, "one rollout at a time");
    until_evaluates(
        &admin,
        &edge,
        "new-checkout",
        json!({"targetingKey": "u1", "email": "a@shop.example"}),
        |v| v["variant"] == "off",
    )
    .await;

    // The leader goes away mid-rollout; the new leader carries it on.
    let (_, s) = get_json(&admin, &format!("{o}/v1/status")).await;
    let leader = s["leader"].as_u64().unwrap() as usize;
    origins[leader - 1].take().unwrap().shutdown().await;
    let survivor = bases[if leader == 1 { 1 } else { 0 }].clone();
    let done = eventually(
        Duration::from_secs(30),
        "the rollout finishes under the new leader",
        || async {
            let (_, v) = get_json(
                &admin,
                &format!("{survivor}/v1/flags/shop/prod/new-checkout/rollout"),
            )
            .await;
            (v["state"] == "done").then_some(v)
        },
    )
    .await;
    assert_eq!(done["step"], 2);
    for i in 0..20 {
        until_evaluates(
            &admin,
            &edge,
            "new-checkout",
            json!({"targetingKey": format!("user-{i}")}),
            |v| v["variant"] == "on",
        )
        .await;
    }

    // Abort puts the definition from before back, in one revision.
    let r = admin
        .post(format!(
            "{survivor}/v1/flags/shop/prod/new-checkout/rollout/abort"
        ))
        .json(&json!({"reason": "enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let aborted: Value = r.json().await.unwrap();
    assert_eq!(aborted["state"], "aborted");
    let (_, history) = get_json(
        &admin,
        &format!("{survivor}/v1/flags/shop/prod/new-checkout/history"),
    )
    .await;
    assert_eq!(
        history["items"][0]["revision"], aborted["revision"],
        "{history}"
    );
    let (_, now) = get_json(
        &admin,
        &format!("{survivor}/v1/flags/shop/prod/new-checkout"),
    )
    .await;
    assert_eq!(now, document()["flags"]["new-checkout"]);
    let r = admin
        .post(format!(
            "{survivor}/v1/flags/shop/prod/new-checkout/rollout/abort"
        ))
        .json(&json!({"reason": "enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // A plan naming a variant the flag lacks.
    let bad = json!({"steps": [{"weights": {"maybe": 1}, "hold_s": 1}]});
    let r = admin
        .post(format!(
            "{survivor}/v1/flags/shop/prod/new-checkout/rollout"
        ))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_rollout");

    for o in origins.into_iter().flatten() {
        o.shutdown().await;
    }
    drop(edges);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_join_transactions_with_keys_and_diff_between_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, admin, o) = with_document(dir.path()).await;
    let blue = {
        let mut f = document()["flags"]["banner-color"].clone();
        f["defaultVariant"] = json!("blue");
        f
    };
    // A key and a flag change in one revision; a flag deleted in the same transaction.
    let r = admin
        .post(format!("{o}/v1/txn"))
        .json(&json!({"ops": [
            {"op": "put", "address": "shop/prod/theme.name", "value": "ocean"},
            {"op": "put_flag", "address": "shop/prod/banner-color", "definition": blue},
            {"op": "delete_flag", "address": "shop/prod/old-thing"}
        ], "reason": "launch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    let revision = t["revision"].clone();
    let (_, flag) = get_json(&admin, &format!("{o}/v1/flags/shop/prod/banner-color")).await;
    assert_eq!(flag, blue);
    let (_, history) = get_json(
        &admin,
        &format!("{o}/v1/flags/shop/prod/banner-color/history"),
    )
    .await;
    assert_eq!(history["items"][0]["revision"], revision);
    let (status, _) = get_json(&admin, &format!("{o}/v1/flags/shop/prod/old-thing")).await;
    assert_eq!(status, 404);
    let (_, diff) = get_json(
        &admin,
        &format!("{o}/v1/flags/shop/prod/banner-color/diff?from=1"),
    )
    .await;
    assert_eq!(
        diff["changed"],
        json!([{"from": "red", "path": "/defaultVariant", "to": "blue"}]),
        "{diff}"
    );

    // A transaction whose flag does not check commits nothing, its key included.
    let before = revision.as_u64().unwrap();
    let r = admin
        .post(format!("{o}/v1/txn"))
        .json(&json!({"ops": [
            {"op": "put", "address": "shop/prod/theme.name", "value": "forest"},
            {"op": "put_flag", "address": "shop/prod/x", "definition":
                {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let (_, theme) = get_json(&admin, &format!("{o}/v1/kv/shop/prod/theme.name")).await;
    assert_eq!(
        (theme["value"].clone(), theme["revision"].as_u64()),
        (json!("ocean"), Some(before))
    );
    // Flags in a transaction need the flag action.
    let (writer, _) = create_token(
        &admin,
        &o,
        json!({"name": "w", "role": "viewer", "resources": ["shop/prod/*"]}),
    )
    .await;
    let r = http_with(&writer)
        .post(format!("{o}/v1/txn"))
        .json(&json!({"ops": [{"op": "delete_flag", "address": "shop/prod/new-checkout"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    drop(cluster);
}
