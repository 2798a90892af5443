//! Secrets against a running dev topology: written sealed at the origin, masked in every read
//! (kv, config, lists, history, diffs, watch) and revealed only to `secret-read` with
//! `?reveal=true`, at the origin and at an edge that a policy allows to serve them (403
//! `secret_unavailable` before); every reveal in the audit log, the edge's included; templates;
//! who may do what; rollbacks, value rotation with a grace period, and data-key rotation.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn put_secret(c: &reqwest::Client, base: &str, path: &str, body: Value) -> (u16, Value) {
    send(c.put(format!("{base}/v1/secrets/{path}")).json(&body)).await
}

async fn audit_actions(c: &reqwest::Client, origin: &str) -> Vec<(String, String, String)> {
    let (code, page) = get_json(c, &format!("{origin}/v1/audit?limit=1000")).await;
    assert_eq!(code, 200);
    page["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").to_owned(),
                r["resource"].as_str().unwrap_or("").to_owned(),
                r["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_sealed_masked_revealed_to_whom_may_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[0].http_addr);
    let marker = format!("hunter2-{}", meridian_net::auth::new_token());

    // Written sealed; the answer shows a fingerprint, never the value.
    let (code, written) = put_secret(
        &admin,
        &o,
        "pay/prod/db.password",
        json!({"value": marker, "rotate_every_s": 3600, "reason": "first"}),
    )
    .await;
    assert_eq!(code, 200, "{written}");
    assert_eq!(written["value"], Value::Null);
    assert_eq!(written["secret"], true);
    let fingerprint = written["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 24);
    assert!(!written.to_string().contains(&marker));
    put(&admin, &o, "pay/prod/db.host", json!("db.internal")).await;
    put(
        &admin,
        &o,
        "pay/prod/dsn",
        json!("postgres://app:${secret:db.password}@${db.host}"),
    )
    .await;
    put(&admin, &o, "pay/prod/leaky", json!("${db.password}")).await;

    let (reader, _) = create_token(
        &admin,
        &o,
        json!({"name": "reader", "role": "viewer", "resources": ["pay/*/*"]}),
    )
    .await;
    let (revealer, _) = create_token(
        &admin,
        &o,
        json!({"name": "revealer", "grants": [{"actions": ["read", "secret-read"], "resources": ["pay/prod/db.*"]}]}),
    )
    .await;
    let (editor, _) = create_token(
        &admin,
        &o,
        json!({"name": "editor", "role": "editor", "resources": ["pay/*/*"]}),
    )
    .await;
    let (writer, _) = create_token(
        &admin,
        &o,
        json!({"name": "writer", "grants": [{"actions": ["secret-write"], "resources": ["pay/prod/*"]}]}),
    )
    .await;
    let (other, _) = create_token(
        &admin,
        &o,
        json!({"name": "other", "role": "admin", "resources": ["shop/*/*"]}),
    )
    .await;
    // Every plain read masks it (for a reader without secret-read: the admin's config read
    // resolves `${secret:…}` below).
    let viewer = http_with(&reader);
    for url in [
        format!("{o}/v1/kv/pay/prod/db.password"),
        format!("{o}/v1/kv/pay/prod"),
        format!("{o}/v1/config/pay/prod"),
        format!("{o}/v1/secrets/pay/prod/db.password"),
        format!("{o}/v1/secrets/pay/prod"),
        format!("{o}/v1/kv/pay/prod/db.password/history"),
    ] {
        let (code, body) = get_json(&viewer, &url).await;
        assert_eq!(code, 200, "{url}: {body}");
        let text = body.to_string();
        assert!(!text.contains(&marker), "{url} shows the value: {text}");
        assert!(
            text.contains(&fingerprint),
            "{url} shows no fingerprint: {text}"
        );
    }
    let (_, one) = get_json(&admin, &format!("{o}/v1/kv/pay/prod/db.password")).await;
    assert_eq!(
        (one["value"].clone(), one["secret"].clone()),
        (Value::Null, json!(true))
    );
    let (_, config) = get_json(&admin, &format!("{o}/v1/config/pay/prod")).await;
    assert_eq!(
        config["config"]["db.password"],
        json!({"secret": true, "fingerprint": fingerprint})
    );
    // `${secret:key}` resolves for a caller who may reveal; `${key}` of a secret never does.
    assert_eq!(
        config["config"]["dsn"],
        json!(format!("postgres://app:{marker}@db.internal"))
    );
    assert!(
        config["errors"]["leaky"]
            .as_str()
            .unwrap()
            .contains("is a secret"),
        "{config}"
    );

    // Revealed on request, and the reveal is in the audit log before the answer came.
    let (code, revealed) = get_json(
        &admin,
        &format!("{o}/v1/secrets/pay/prod/db.password?reveal=true"),
    )
    .await;
    assert_eq!(code, 200, "{revealed}");
    assert_eq!(revealed["value"], json!(marker));
    assert_eq!(revealed["rotate_every_s"], 3600);
    let actions = audit_actions(&admin, &o).await;
    assert!(
        actions
            .iter()
            .any(|(a, r, _)| a == "secret-reveal" && r == "pay/prod/db.password@1"),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|(a, _, _)| a == "secret-write"),
        "{actions:?}"
    );

    // Bad input: a clear error, nothing written.
    let before = revision(&admin, &o).await;
    for (req, status, code) in [
        (
            admin
                .put(format!("{o}/v1/secrets/pay/prod/x"))
                .header("content-type", "application/json")
                .body("{\"value\":"),
            400,
            "malformed_json",
        ),
        (
            admin
                .put(format!("{o}/v1/secrets/pay/prod/x"))
                .json(&json!({"value": 1, "colour": "red"})),
            400,
            "malformed_json",
        ),
        (
            admin
                .put(format!("{o}/v1/secrets/pay/prod/x"))
                .json(&json!({"value": "v".repeat(1_100_000)})),
            413,
            "value_too_large",
        ),
        (
            admin
                .put(format!("{o}/v1/secrets/pay/prod/Bad Key"))
                .json(&json!({"value": 1})),
            400,
            "invalid_key",
        ),
        (
            admin.get(format!(
                "{o}/v1/secrets/pay/prod/db.password?reveal=true&versions=3"
            )),
            400,
            "bad_query",
        ),
        (
            admin.get(format!("{o}/v1/secrets/pay/prod/db.host")),
            404,
            "not_a_secret",
        ),
        (
            admin
                .post(format!("{o}/v1/secrets/pay/prod/db.host/rotate"))
                .json(&json!({"value": 1})),
            404,
            "not_a_secret",
        ),
        (
            admin
                .post(format!("{o}/v1/secret-keys/nothing/here/rotate"))
                .header("content-type", "application/json"),
            404,
            "no_secrets",
        ),
    ] {
        let (got, body) = send(req).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (got, body) = get_json(
        &admin,
        &format!("{edge}/v1/secrets/pay/prod/db.password?versions=0"),
    )
    .await;
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (400, Some("bad_query")),
        "{body}"
    );
    assert_eq!(revision(&admin, &o).await, before, "nothing committed");

    // A schema checks the value in clear; its error does not quote it.
    let (code, body) = send(
        admin
            .put(format!("{o}/v1/schemas/pay/prod/port."))
            .json(&json!({"schema": {"type": "integer"}})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = put_secret(&admin, &o, "pay/prod/port.db", json!({"value": marker})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (422, Some("schema_violation")),
        "{body}"
    );
    assert!(!body.to_string().contains(&marker), "{body}");
    let (code, body) = put_secret(&admin, &o, "pay/prod/port.db", json!({"value": 5432})).await;
    assert_eq!(code, 200, "{body}");

    // Plain writes cannot touch it, nor forge one.
    let (code, body) = send(
        admin
            .put(format!("{o}/v1/kv/pay/prod/db.password"))
            .json(&json!({"value": "plain"})),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("secret_key")),
        "{body}"
    );
    let (code, body) = send(
        admin
            .patch(format!("{o}/v1/kv/pay/prod/db.password"))
            .json(&json!({"patch": {"x": 1}})),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("secret_key")),
        "{body}"
    );
    let (code, body) = send(
        admin
            .put(format!("{o}/v1/kv/pay/prod/forged"))
            .json(&json!({"value": {"$secret": {"value": 1}}})),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("reserved_value")),
        "{body}"
    );

    // At an edge: masked at once, but revealed only once a policy lets the edge serve the
    // namespace's secrets.
    let want = revision(&admin, &o).await;
    eventually(WAIT, "the edge to catch up", || async {
        (revision(&admin, &edge).await >= want).then_some(())
    })
    .await;
    let (code, body) = get_json(&admin, &format!("{edge}/v1/kv/pay/prod/db.password")).await;
    assert_eq!(
        (code, body["fingerprint"].as_str()),
        (200, Some(fingerprint.as_str()))
    );
    let (code, body) = get_json(
        &admin,
        &format!("{edge}/v1/secrets/pay/prod/db.password?reveal=true"),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("secret_unavailable")),
        "{body}"
    );
    // Watch events show the fingerprint, never the value.
    let mut stream = admin
        .get(format!("{edge}/v1/watch?app=pay&env=prod&since=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut seen = String::new();
    while !seen.contains("db.password") {
        let chunk = tokio::time::timeout(WAIT, stream.chunk())
            .await
            .expect("a watch event in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !seen.contains(&marker) && seen.contains(&fingerprint),
        "{seen}"
    );
    drop(stream);
    let (code, body) = send(
        admin
            .put(format!("{o}/v1/policies/edges-pay"))
            .json(&json!({
                "subjects": ["edge:*"], "actions": ["secret-read"], "resources": ["pay/prod/*"]
            })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let at_edge = eventually(WAIT, "the edge to reveal", || async {
        let (code, body) = get_json(
            &admin,
            &format!("{edge}/v1/secrets/pay/prod/db.password?reveal=true"),
        )
        .await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(at_edge["value"], json!(marker));
    let edge_id = meridian::dev::edge_id(meridian::dev::REGIONS[0]);
    eventually(WAIT, "the edge's reveal in the audit log", || async {
        audit_actions(&admin, &o)
            .await
            .iter()
            .any(|(a, r, why)| {
                a == "secret-reveal" && r == "pay/prod/db.password@1" && why.contains(&edge_id)
            })
            .then_some(())
    })
    .await;

    // Who may: read sees the mask, secret-read reveals, nothing else writes.
    let want = revision(&admin, &o).await;
    eventually(WAIT, "the edge to hold the tokens", || async {
        (revision(&admin, &edge).await >= want).then_some(())
    })
    .await;
    let reveal_path = "v1/secrets/pay/prod/db.password";
    for (node, node_base) in [("origin", &o), ("edge", &edge)] {
        for (who, token, masked, reveal) in [
            ("reader", &reader, 200, 403),
            ("revealer", &revealer, 200, 200),
            ("editor", &editor, 200, 403),
            ("writer", &writer, 403, 403),
            ("other", &other, 403, 403),
        ] {
            let c = http_with(token);
            let (code, body) = get_json(&c, &format!("{node_base}/{reveal_path}")).await;
            assert_eq!(code, masked, "{who} masked at {node}: {body}");
            let (code, body) =
                get_json(&c, &format!("{node_base}/{reveal_path}?reveal=true")).await;
            assert_eq!(code, reveal, "{who} reveal at {node}: {body}");
            assert_eq!(
                body["value"] == json!(marker),
                reveal == 200,
                "{who} at {node}"
            );
        }
        // The Rust client reveals with the revealer's token, and is refused with the reader's.
        let client = meridian_client::Client::with_token(node_base, Some(&revealer)).unwrap();
        let got = client.secret("pay", "prod", "db.password").await.unwrap();
        assert_eq!(got.value, json!(marker), "at {node}");
        let client = meridian_client::Client::with_token(node_base, Some(&reader)).unwrap();
        let refused = client
            .secret("pay", "prod", "db.password")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some("forbidden"), "at {node}: {refused}");
        // The template reveals only for whom may.
        let (_, config) = get_json(
            &http_with(&reader),
            &format!("{node_base}/v1/config/pay/prod"),
        )
        .await;
        assert!(!config.to_string().contains(&marker), "{config}");
        assert!(
            config["errors"]["dsn"]
                .as_str()
                .unwrap()
                .contains("secret-read"),
            "{config}"
        );
    }
    for (who, token, expected) in [
        ("editor", &editor, 403),
        ("writer", &writer, 200),
        ("reader", &reader, 403),
    ] {
        let (code, body) = put_secret(
            &http_with(token),
            &o,
            "pay/prod/api.key",
            json!({"value": format!("k-{who}")}),
        )
        .await;
        assert_eq!(code, expected, "{who} writes a secret: {body}");
    }
    // In a transaction, `"secret": true` seals and needs secret-write.
    let txn = json!({"ops": [
        {"op": "put", "address": "pay/prod/txn.secret", "value": {"user": "u", "pass": "p-1"}, "secret": true},
        {"op": "put", "address": "pay/prod/txn.plain", "value": 1}
    ]});
    let (code, body) = send(http_with(&editor).post(format!("{o}/v1/txn")).json(&txn)).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = send(admin.post(format!("{o}/v1/txn")).json(&txn)).await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = get_json(
        &admin,
        &format!("{o}/v1/secrets/pay/prod/txn.secret?reveal=true"),
    )
    .await;
    assert_eq!(body["value"], json!({"user": "u", "pass": "p-1"}));
    let (_, body) = get_json(&admin, &format!("{o}/v1/kv/pay/prod/txn.secret")).await;
    assert_eq!(body["secret"], true, "{body}");

    // Rotation of the value: the previous one is served to whom asks during the grace period.
    let (code, body) = send(
        admin
            .post(format!("{o}/v1/secrets/pay/prod/db.password/rotate"))
            .json(&json!({"value": "second", "grace_s": 600})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, both) = get_json(
        &admin,
        &format!("{o}/v1/secrets/pay/prod/db.password?reveal=true&versions=2"),
    )
    .await;
    assert_eq!(both["value"], json!("second"));
    assert_eq!(both["previous"]["value"], json!(marker), "{both}");
    assert_eq!(both["previous"]["version"], 1);
    assert_eq!(both["rotate_every_s"], 3600, "the policy is kept");
    // History and diffs show fingerprints only; a rollback seals the old value anew.
    let (_, diff) = get_json(
        &admin,
        &format!("{o}/v1/kv/pay/prod/db.password/diff?from=1&to=2"),
    )
    .await;
    assert!(
        !diff.to_string().contains(&marker) && !diff.to_string().contains("second"),
        "{diff}"
    );
    let (code, body) = send(
        admin
            .post(format!("{o}/v1/kv/pay/prod/db.password/rollback"))
            .json(&json!({"version": 1})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, back) = get_json(
        &admin,
        &format!("{o}/v1/secrets/pay/prod/db.password?reveal=true"),
    )
    .await;
    assert_eq!(back["value"], json!(marker));
    assert_eq!(back["version"], 3);
    assert_eq!(
        back["fingerprint"],
        json!(fingerprint),
        "same value, same fingerprint"
    );

    // Data-key rotation re-seals the namespace in one revision; every edge still reveals.
    let before = revision(&admin, &o).await;
    let (code, body) = send(
        admin
            .post(format!("{o}/v1/secret-keys/pay/prod/rotate"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["revision"], before + 1);
    assert_eq!(body["generation"], 2);
    assert_eq!(
        body["secrets"], 4,
        "db.password, api.key, txn.secret, port.db"
    );
    let (_, keys) = get_json(&admin, &format!("{o}/v1/secret-keys")).await;
    assert_eq!(keys["namespaces"][0]["generation"], 2, "{keys}");
    eventually(
        WAIT,
        "the edge to reveal under the new data key",
        || async {
            let (code, body) = get_json(
                &admin,
                &format!(
                    "{edge}/v1/secrets/pay/prod/db.password?reveal=true&min_revision={}",
                    before + 1
                ),
            )
            .await;
            (code == 200 && body["value"] == json!(marker) && body["version"] == 4).then_some(())
        },
    )
    .await;

    // Expiry and rotation schedules: listed as due, and exported as gauges.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (key, body) in [
        (
            "cert",
            json!({"value": "pem", "expires_at_ms": now_ms - 1_000}),
        ),
        ("rotating", json!({"value": "r", "rotate_every_s": 5})),
    ] {
        let (code, b) = put_secret(&admin, &o, &format!("pay/prod/{key}"), body).await;
        assert_eq!(code, 200, "{b}");
    }
    let (_, due) = get_json(&admin, &format!("{o}/v1/secrets/due")).await;
    let listed: Vec<(String, String)> = due["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().into(),
                i["due"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("cert".to_string(), "expired".to_string())],
        "{due}"
    );
    let (_, soon) = get_json(&admin, &format!("{o}/v1/secrets/due?within_s=10")).await;
    assert_eq!(soon["items"].as_array().unwrap().len(), 2, "{soon}");
    let (_, none) = get_json(&http_with(&other), &format!("{o}/v1/secrets/due")).await;
    assert_eq!(none["items"], json!([]), "only what the caller may read");
    eventually(WAIT, "the expired gauge", || async {
        metrics_text(&admin, &o)
            .await
            .lines()
            .any(|l| l == r#"meridian_secrets_expired{app="pay",env="prod"} 1"#)
            .then_some(())
    })
    .await;

    // Deleting a secret through the kv API or a transaction needs secret-write too.
    let (code, body) =
        send(http_with(&editor).delete(format!("{o}/v1/kv/pay/prod/txn.secret"))).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let del = json!({"ops": [{"op": "delete", "address": "pay/prod/txn.secret"}]});
    let (code, body) = send(http_with(&editor).post(format!("{o}/v1/txn")).json(&del)).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) =
        send(http_with(&editor).delete(format!("{o}/v1/kv/pay/prod/txn.plain"))).await;
    assert_eq!(
        code, 200,
        "a plain key stays the editor's to delete: {body}"
    );
    let (code, body) = send(admin.post(format!("{o}/v1/txn")).json(&del)).await;
    assert_eq!(code, 200, "{body}");

    // Deleted through the secrets API; the kv API cannot delete what is not a secret there.
    let (code, body) = send(admin.delete(format!("{o}/v1/secrets/pay/prod/db.host"))).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("not_a_secret")),
        "{body}"
    );
    let (code, _) = send(admin.delete(format!("{o}/v1/secrets/pay/prod/api.key"))).await;
    assert_eq!(code, 200);
    cluster.shutdown().await;
}

/// How many reveals of `resource` at an edge the audit log holds (a record counts several when
/// the edge folded repeated reveals into it).
async fn edge_reveals(c: &reqwest::Client, origin: &str, resource: &str) -> u64 {
    let (code, page) = get_json(c, &format!("{origin}/v1/audit?limit=1000")).await;
    assert_eq!(code, 200);
    page["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            r["action"] == "secret-reveal"
                && r["resource"] == resource
                && r["source"].as_str().is_some_and(|s| s.starts_with("edge "))
        })
        .map(|r| {
            let reason = r["reason"].as_str().unwrap_or("");
            reason
                .split_once(": ")
                .and_then(|(_, n)| n.split(' ').next()?.parse().ok())
                .unwrap_or(1)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reveals_at_an_edge_reach_the_audit_log_across_a_partition_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (origin_config, origin_node, edge_config, edge_node) =
        origin_and_edge(dir.path(), |_| {}).await;
    let admin = http();
    let o = base(origin_node.http_addr);
    let (code, body) = put_secret(&admin, &o, "pay/prod/db.password", json!({"value": "pw"})).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = send(admin.put(format!("{o}/v1/policies/edges")).json(&json!({
        "subjects": ["edge:*"], "actions": ["secret-read"], "resources": ["pay/*/*"]
    })))
    .await;
    assert_eq!(code, 200, "{body}");
    let edge = base(edge_node.http_addr);
    let url = format!("{edge}/v1/secrets/pay/prod/db.password?reveal=true");
    eventually(WAIT, "the edge reveals", || async {
        (get_json(&admin, &url).await.0 == 200).then_some(())
    })
    .await;
    let resource = "pay/prod/db.password@1";
    eventually(WAIT, "the first reveal in the audit log", || async {
        (edge_reveals(&admin, &o, resource).await == 1).then_some(())
    })
    .await;

    // The origin goes away; the edge keeps revealing from its memory, and is restarted.
    origin_node.shutdown().await;
    for _ in 0..3 {
        let (code, body) = get_json(&admin, &url).await;
        assert_eq!((code, body["value"].as_str()), (200, Some("pw")), "{body}");
    }
    edge_node.shutdown().await;
    let edge_node = meridian_edge::start(edge_config).await.unwrap();
    assert!(
        !edge_node.shared.reveals.as_ref().unwrap().is_empty(),
        "the reveals wait on disk"
    );
    // Its QUIC socket lingers while the old connections drain: start again until it binds.
    let origin_node = eventually(WAIT, "the origin restarts on its addresses", || async {
        meridian_origin::start(origin_config.clone()).await.ok()
    })
    .await;
    eventually(WAIT, "the partitioned reveals in the audit log", || async {
        (edge_reveals(&admin, &o, resource).await == 4).then_some(())
    })
    .await;
    eventually(
        WAIT,
        "the edge forgets what the origin recorded",
        || async {
            edge_node
                .shared
                .reveals
                .as_ref()
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    edge_node.shutdown().await;
    origin_node.shutdown().await;
}
