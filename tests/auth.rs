//! Authentication and authorization against a running dev topology: every route of the origin
//! and the edge called by a caller without a token, a viewer, an editor scoped to one app, an
//! admin, a revoked token and an expired token, each answer checked (2xx, 401 or 403) and
//! nothing committed on a refusal; filtered reads; revocation at an edge; the refusals an
//! attacker who reaches a port meets.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// What a caller must get: `O` a 2xx answer, `U` 401, `F` 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exp {
    O,
    U,
    F,
}
use Exp::{F, O, U};

/// The callers with their own tokens, in the order of a case's expectations.
const WHO: [&str; 4] = ["none", "viewer", "editor", "admin"];

struct Case {
    method: Method,
    /// `{who}` is replaced by the caller's name, so that allowed writes do not collide.
    path: &'static str,
    body: Option<Value>,
    /// For none, viewer, editor (of app `pay` only), admin.
    expect: [Exp; 4],
    /// For the revoked and the expired token: 401, but on public routes, which look at no
    /// token.
    bad_tokens: Exp,
}

fn case(method: Method, path: &'static str, body: Option<Value>, expect: [Exp; 4]) -> Case {
    let public = expect == [O; 4] && !path.contains("whoami");
    Case {
        method,
        path,
        body,
        expect,
        bad_tokens: if public { O } else { U },
    }
}

fn code(status: u16) -> Exp {
    match status {
        200..=299 => O,
        401 => U,
        403 => F,
        other => panic!("unexpected status {other}"),
    }
}

struct Callers {
    clients: BTreeMap<&'static str, reqwest::Client>,
    tokens: BTreeMap<&'static str, String>,
}

async fn call(
    c: &reqwest::Client,
    method: Method,
    url: &str,
    body: &Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

async fn setup(
    dir: &std::path::Path,
) -> (
    meridian::dev::DevCluster,
    String,
    Callers,
    BTreeMap<&'static str, String>,
) {
    let (cluster, _) = cluster(dir, 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    put(&admin, &o, "pay/prod/a", json!({"n": 1})).await;
    put(&admin, &o, "shop/prod/b", json!(2)).await;
    let r = admin
        .put(format!("{o}/v1/schemas/pay/prod/cfg"))
        .json(&json!({"schema": {"type": "object"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (viewer, _) = create_token(
        &admin,
        &o,
        json!({"name": "viewer", "role": "viewer", "resources": ["*/*/*"]}),
    )
    .await;
    let (editor, _) = create_token(
        &admin,
        &o,
        json!({"name": "editor", "role": "editor", "resources": ["pay/*/*"]}),
    )
    .await;
    let (admin2, _) = create_token(
        &admin,
        &o,
        json!({"name": "admin", "role": "admin", "resources": ["*/*/*"]}),
    )
    .await;
    let (revoked, revoked_id) = create_token(
        &admin,
        &o,
        json!({"name": "revoked", "role": "admin", "resources": ["*/*/*"]}),
    )
    .await;
    let r = admin
        .delete(format!("{o}/v1/tokens/{revoked_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (expired, _) = create_token(
        &admin,
        &o,
        json!({"name": "expired", "role": "admin", "resources": ["*/*/*"], "expires_in_s": 1}),
    )
    .await;
    let expired_client = http_with(&expired);
    eventually(WAIT, "the expired token to expire", || async {
        let (s, _) = get_json(&expired_client, &format!("{o}/v1/whoami")).await;
        (s == 401).then_some(())
    })
    .await;
    // Per caller: a namespace to roll back, and a token to revoke.
    let mut victims = BTreeMap::new();
    for who in WHO {
        put(&admin, &o, &format!("pay/{who}/x"), json!(1)).await;
    }
    let before_rollback = revision(&admin, &o).await;
    for who in WHO {
        put(&admin, &o, &format!("pay/{who}/x"), json!(2)).await;
        let (_, id) = create_token(&admin, &o, json!({"name": format!("victim-{who}")})).await;
        victims.insert(who, id);
    }
    victims.insert("rollback_to", before_rollback.to_string());
    let clients = BTreeMap::from([
        ("none", http_anonymous()),
        ("viewer", http_with(&viewer)),
        ("editor", http_with(&editor)),
        ("admin", http_with(&admin2)),
        ("revoked", http_with(&revoked)),
        ("expired", expired_client),
    ]);
    let tokens = BTreeMap::from([
        ("viewer", viewer),
        ("editor", editor),
        ("admin", admin2),
        ("revoked", revoked),
        ("expired", expired),
    ]);
    (cluster, o, Callers { clients, tokens }, victims)
}

fn origin_cases() -> Vec<Case> {
    let p = Some(json!({"value": {"v": 1}}));
    vec![
        case(Method::GET, "/v1/kv/pay/prod/a", None, [U, O, O, O]),
        case(Method::GET, "/v1/kv/shop/prod/b", None, [U, O, F, O]),
        case(
            Method::PUT,
            "/v1/kv/pay/prod/p-{who}",
            p.clone(),
            [U, F, O, O],
        ),
        case(
            Method::PUT,
            "/v1/kv/shop/prod/p-{who}",
            p.clone(),
            [U, F, F, O],
        ),
        case(
            Method::PATCH,
            "/v1/kv/pay/prod/p-{who}",
            Some(json!({"patch": {"w": 2}})),
            [U, F, O, O],
        ),
        case(Method::GET, "/v1/kv/pay/prod/a/history", None, [U, O, O, O]),
        case(
            Method::GET,
            "/v1/kv/pay/prod/a/diff?from=1",
            None,
            [U, O, O, O],
        ),
        case(
            Method::GET,
            "/v1/kv/shop/prod/b/diff?from=1",
            None,
            [U, O, F, O],
        ),
        case(
            Method::POST,
            "/v1/kv/pay/prod/p-{who}/rollback",
            Some(json!({"version": 1})),
            [U, F, O, O],
        ),
        case(
            Method::DELETE,
            "/v1/kv/pay/prod/p-{who}",
            None,
            [U, F, O, O],
        ),
        case(Method::GET, "/v1/kv/pay/prod", None, [U, O, O, O]),
        case(Method::GET, "/v1/kv/shop/prod", None, [U, O, F, O]),
        case(Method::GET, "/v1/diff/pay/prod?from=1", None, [U, O, O, O]),
        case(
            Method::POST,
            "/v1/rollback/pay/{who}",
            Some(json!({"revision": "{rollback_to}"})),
            [U, F, O, O],
        ),
        case(Method::GET, "/v1/schemas/pay/prod/cfg", None, [U, O, O, O]),
        case(Method::GET, "/v1/schemas/pay/prod", None, [U, O, O, O]),
        case(
            Method::PUT,
            "/v1/schemas/pay/{who}/s",
            Some(json!({"schema": {"type": "number"}})),
            [U, F, O, O],
        ),
        case(
            Method::DELETE,
            "/v1/schemas/pay/{who}/s",
            None,
            [U, F, O, O],
        ),
        case(
            Method::PUT,
            "/v1/schemas/shop/{who}/s",
            Some(json!({"schema": {}})),
            [U, F, F, O],
        ),
        case(Method::GET, "/v1/config/pay/prod", None, [U, O, O, O]),
        case(Method::GET, "/v1/config/shop/prod", None, [U, O, F, O]),
        case(
            Method::POST,
            "/v1/txn",
            Some(json!({"ops": [{"op": "put", "address": "pay/prod/t-{who}", "value": 1}]})),
            [U, F, O, O],
        ),
        case(
            Method::POST,
            "/v1/txn",
            Some(
                json!({"ops": [{"op": "put", "address": "pay/prod/u-{who}", "value": 1}, {"op": "put", "address": "shop/prod/u-{who}", "value": 1}]}),
            ),
            [U, F, F, O],
        ),
        case(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "made-by-{who}"})),
            [U, F, F, O],
        ),
        case(Method::GET, "/v1/tokens", None, [U, F, F, O]),
        case(Method::DELETE, "/v1/tokens/{victim}", None, [U, F, F, O]),
        case(
            Method::PUT,
            "/v1/policies/p-{who}",
            Some(json!({"subjects": ["group:ops"], "role": "viewer", "resources": ["pay/*/*"]})),
            [U, F, F, O],
        ),
        case(Method::GET, "/v1/policies/p-{who}", None, [U, F, F, O]),
        case(Method::GET, "/v1/policies", None, [U, F, F, O]),
        case(Method::DELETE, "/v1/policies/p-{who}", None, [U, F, F, O]),
        case(Method::GET, "/v1/audit", None, [U, F, F, O]),
        case(Method::GET, "/v1/audit/head", None, [U, F, F, O]),
        case(Method::GET, "/v1/whoami", None, [O, O, O, O]),
        case(Method::GET, "/v1/status", None, [O, O, O, O]),
        case(Method::GET, "/v1/cluster", None, [O, O, O, O]),
        case(Method::GET, "/v1/edges", None, [O, O, O, O]),
        case(Method::GET, "/metrics", None, [O, O, O, O]),
    ]
}

fn fill(text: &str, who: &str, victims: &BTreeMap<&str, String>) -> String {
    text.replace("{who}", who)
        .replace(
            "{victim}",
            victims.get(who).map_or("0000000000000000", String::as_str),
        )
        .replace("\"{rollback_to}\"", &victims["rollback_to"])
        .replace("{rollback_to}", &victims["rollback_to"])
}

async fn run_matrix(
    base_url: &str,
    origin: &str,
    callers: &Callers,
    victims: &BTreeMap<&str, String>,
    cases: &[Case],
) {
    let admin = http();
    let mut refused = 0;
    for case in cases {
        let callers_exp = WHO
            .iter()
            .zip(case.expect)
            .chain([(&"revoked", case.bad_tokens), (&"expired", case.bad_tokens)]);
        for (who, want) in callers_exp {
            let url = format!("{base_url}{}", fill(case.path, who, victims));
            let body = case.body.as_ref().map(|b| {
                serde_json::from_str::<Value>(&fill(&b.to_string(), who, victims)).unwrap()
            });
            let before = revision(&admin, origin).await;
            let (status, answer, headers) =
                call(&callers.clients[who], case.method.clone(), &url, &body).await;
            assert_eq!(
                code(status),
                want,
                "{} {url} as {who}: {status} {answer}",
                case.method
            );
            if want != O {
                refused += 1;
                let expected = if want == U {
                    "unauthenticated"
                } else {
                    "forbidden"
                };
                assert_eq!(
                    answer["error"]["code"], expected,
                    "{} {url} as {who}",
                    case.method
                );
                if want == U {
                    assert!(
                        headers
                            .get("www-authenticate")
                            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
                        "{} {url} as {who}: a 401 names the scheme",
                        case.method
                    );
                } else {
                    // A 403 names the action and the resource.
                    assert!(
                        answer["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains(" may not "),
                        "{answer}"
                    );
                }
                assert_eq!(
                    revision(&admin, origin).await,
                    before,
                    "{} {url} as {who} was refused yet committed",
                    case.method
                );
            }
        }
    }
    assert!(
        refused >= cases.len(),
        "the matrix refuses {refused} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_origin_and_edge_answers_each_kind_of_caller() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, o, callers, victims) = setup(dir.path()).await;
    run_matrix(&o, &o, &callers, &victims, &origin_cases()).await;

    // The edge decides locally from the replicated tokens and policies.
    let admin = http();
    let edge = base(cluster.edges[1].http_addr);
    let newest = revision(&admin, &o).await;
    eventually(WAIT, "the edge has every token", || async {
        (revision(&admin, &edge).await >= newest).then_some(())
    })
    .await;
    let edge_cases = vec![
        case(Method::GET, "/v1/kv/pay/prod/a", None, [U, O, O, O]),
        case(Method::GET, "/v1/kv/shop/prod/b", None, [U, O, F, O]),
        case(Method::GET, "/v1/kv/pay/prod", None, [U, O, O, O]),
        case(Method::GET, "/v1/kv/shop/prod", None, [U, O, F, O]),
        case(Method::GET, "/v1/config/pay/prod", None, [U, O, O, O]),
        case(Method::GET, "/v1/config/shop/prod", None, [U, O, F, O]),
        case(Method::GET, "/v1/whoami", None, [O, O, O, O]),
        case(Method::GET, "/v1/status", None, [O, O, O, O]),
        case(Method::GET, "/metrics", None, [O, O, O, O]),
    ];
    run_matrix(&edge, &o, &callers, &victims, &edge_cases).await;
    // Watches: the stream opens for those who may read, and is refused before it opens.
    for (who, want) in WHO
        .iter()
        .zip([U, O, O, O])
        .chain([(&"revoked", U), (&"expired", U)])
    {
        let r = callers.clients[who]
            .get(format!("{edge}/v1/watch?app=pay&env=prod"))
            .send()
            .await
            .unwrap();
        assert_eq!(code(r.status().as_u16()), want, "watch as {who}");
    }
    let r = callers.clients["editor"]
        .get(format!("{edge}/v1/watch?app=shop&env=prod"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the editor of pay watching shop");
    // The same over WebSocket: the upgrade happens only for those who may read.
    for (who, want) in WHO
        .iter()
        .zip([U, O, O, O])
        .chain([(&"revoked", U), (&"expired", U)])
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!(
            "ws{}/v1/watch/ws?app=pay&env=prod",
            edge.trim_start_matches("http")
        )
        .into_client_request()
        .unwrap();
        if let Some(token) = callers.tokens.get(who) {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let got = match tokio_tungstenite::connect_async(request).await {
            Ok(_) => O,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => code(r.status().as_u16()),
            Err(e) => panic!("websocket as {who}: {e}"),
        };
        assert_eq!(got, want, "websocket watch as {who}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_keep_only_what_the_token_may_read_and_revocation_reaches_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[2].http_addr);
    put(&admin, &o, "web/prod/public.banner", json!("hi")).await;
    put(&admin, &o, "web/prod/public.leak", json!("${secret.key}")).await;
    put(&admin, &o, "web/prod/secret.key", json!("s3cr3t")).await;
    put(&admin, &o, "web/_/public.default", json!(1)).await;
    put(&admin, &o, "web/_/hidden", json!(2)).await;
    let (token, id) = create_token(
        &admin,
        &o,
        json!({"name": "svc", "role": "viewer", "resources": ["web/prod/public.*", "web/_/public.*"]}),
    )
    .await;
    let svc = http_with(&token);
    let newest = revision(&admin, &o).await;
    eventually(WAIT, "the edge has the token", || async {
        (revision(&admin, &edge).await >= newest).then_some(())
    })
    .await;
    for at in [&o, &edge] {
        let (code, list) = get_json(&svc, &format!("{at}/v1/kv/web/prod")).await;
        assert_eq!(code, 200, "{list}");
        let keys: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["public.banner"],
            "{at}: the leak's template fails, the secret is hidden"
        );
        assert!(
            list["errors"].to_string().contains("not readable"),
            "{list}"
        );
        let (_, named) = get_json(
            &svc,
            &format!("{at}/v1/kv/web/prod?keys=public.banner,secret.key"),
        )
        .await;
        assert_eq!(named["missing"], json!(["secret.key"]), "{named}");
        let (code, cfg) = get_json(&svc, &format!("{at}/v1/config/web/prod")).await;
        assert_eq!(code, 200);
        assert_eq!(cfg["config"]["public.banner"], "hi");
        assert_eq!(cfg["config"]["public.default"], 1);
        assert!(
            cfg["config"].get("secret.key").is_none() && cfg["config"].get("hidden").is_none(),
            "{cfg}"
        );
        let (code, leak) = get_json(&svc, &format!("{at}/v1/kv/web/prod/public.leak")).await;
        assert_eq!(
            (code, leak["error"]["code"].as_str()),
            (422, Some("unresolved_reference")),
            "{leak}"
        );
        assert!(!leak.to_string().contains("s3cr3t"));
        let (code, _) = get_json(&svc, &format!("{at}/v1/kv/web/prod/secret.key")).await;
        assert_eq!(code, 403);
    }

    // A watch sends only readable keys, and ends when the token is revoked.
    let mut stream = svc
        .get(format!("{edge}/v1/watch?app=web&env=prod&since=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(WAIT, stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&first).to_string();
    assert!(
        text.contains("public.banner") && !text.contains("s3cr3t"),
        "{text}"
    );

    let revoked_at = std::time::Instant::now();
    let r = admin
        .delete(format!("{o}/v1/tokens/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for e in &cluster.edges {
        let url = format!("{}/v1/kv/web/prod/public.banner", base(e.http_addr));
        eventually(
            Duration::from_secs(5),
            "the revoked token is refused at the edge",
            || async { (get_json(&svc, &url).await.0 == 401).then_some(()) },
        )
        .await;
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    // The open stream ends.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked token's watch ended");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_at_the_port_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let before = revision(&admin, &o).await;
    let anon = http_anonymous();
    // Forged, malformed and foreign-scheme credentials.
    let forged = format!("mrdn_{}", "ab".repeat(32));
    for auth in [
        format!("Bearer {forged}"),
        "Bearer not-a-token".into(),
        format!("Basic {}", "YWRtaW46YWRtaW4="),
        "Bearer".into(),
    ] {
        let r = anon
            .put(format!("{o}/v1/kv/pay/prod/x"))
            .header("authorization", auth.as_str())
            .json(&json!({"value": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    // A cross-site form post carrying a valid token is still refused: JSON only.
    let r = admin
        .put(format!("{o}/v1/kv/pay/prod/x"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("value=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type");
    // Without a token, the same post is told it needs one first.
    let r = anon
        .put(format!("{o}/v1/kv/pay/prod/x"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("value=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = admin
        .post(format!("{o}/v1/tokens"))
        .header("content-type", "text/plain")
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // A client-supplied actor is ignored: history names the token.
    let r = admin
        .put(format!("{o}/v1/kv/pay/prod/who"))
        .header("meridian-actor", "somebody-else")
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, h) = get_json(&admin, &format!("{o}/v1/kv/pay/prod/who/history")).await;
    assert!(
        h["items"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("bootstrap-admin#"),
        "{h}"
    );
    assert_eq!(
        revision(&admin, &o).await,
        before + 1,
        "only the authenticated write committed"
    );
    // The admin routes answer bad input with 400 naming the problem, and commit nothing.
    let before = revision(&admin, &o).await;
    for (method, path, body, code) in [
        (
            "POST",
            "/v1/tokens",
            json!({"name": ""}),
            "invalid_token_request",
        ),
        (
            "POST",
            "/v1/tokens",
            json!({"name": "x", "role": "root", "resources": ["*/*/*"]}),
            "malformed_json",
        ),
        (
            "POST",
            "/v1/tokens",
            json!({"name": "x", "role": "viewer", "resources": ["a/b"]}),
            "malformed_json",
        ),
        (
            "POST",
            "/v1/tokens",
            json!({"name": "x", "role": "viewer"}),
            "invalid_token_request",
        ),
        (
            "POST",
            "/v1/tokens",
            json!({"name": "x", "expires_in_s": 0}),
            "invalid_token_request",
        ),
        (
            "PUT",
            "/v1/policies/p",
            json!({"subjects": ["user:x"], "role": "viewer", "resources": ["*/*/*"]}),
            "invalid_policy",
        ),
        (
            "PUT",
            "/v1/policies/p",
            json!({"subjects": [], "role": "viewer", "resources": ["*/*/*"]}),
            "invalid_policy",
        ),
        (
            "PUT",
            "/v1/policies/Bad.Name",
            json!({"subjects": ["anonymous"], "role": "viewer", "resources": ["*/*/*"]}),
            "invalid_policy",
        ),
        (
            "DELETE",
            "/v1/tokens/not-an-id",
            Value::Null,
            "invalid_token_id",
        ),
        ("GET", "/v1/audit?limit=0", Value::Null, "bad_query"),
        ("GET", "/v1/audit?since=yesterday", Value::Null, "bad_query"),
    ] {
        let mut req = admin.request(method.parse().unwrap(), format!("{o}{path}"));
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400, "{method} {path} {body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
    }
    assert_eq!(revision(&admin, &o).await, before, "nothing was committed");
    // System records cannot be addressed as configuration.
    let (code, _) = get_json(&admin, &format!("{o}/v1/kv/_meridian/tokens")).await;
    assert_eq!(code, 400);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_list_says_when_each_token_was_last_used() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let pki = meridian::dev::pki(dir.path()).unwrap();
    let mut config = meridian::dev::origin_cluster_configs(&opts, &pki).remove(0);
    config.auth.last_used_interval_ms = 100;
    let origin = meridian_origin::start(config).await.unwrap();
    let edge = meridian_edge::start(meridian::dev::edge_config(
        dir.path(),
        &pki,
        meridian::dev::REGIONS[0],
        "127.0.0.1:0".parse().unwrap(),
        origin.quic_addr,
    ))
    .await
    .unwrap();
    meridian::dev::wait_for_token(std::slice::from_ref(&edge), &TOKEN)
        .await
        .unwrap();
    let (o, e) = (base(origin.http_addr), base(edge.http_addr));
    let admin = http();
    let viewer = json!({"name": "svc", "role": "viewer", "resources": ["*/*/*"]});
    let (at_origin, origin_id) = create_token(&admin, &o, viewer.clone()).await;
    let (at_edge, edge_id) = create_token(&admin, &o, viewer).await;
    let newest = revision(&admin, &o).await;
    eventually(WAIT, "the edge has both tokens", || async {
        (revision(&admin, &e).await >= newest).then_some(())
    })
    .await;
    let last_used = |id: String| {
        let (admin, o) = (admin.clone(), o.clone());
        async move {
            let (_, v) = get_json(&admin, &format!("{o}/v1/tokens")).await;
            let token = v["tokens"]
                .as_array()?
                .iter()
                .find(|t| t["id"] == id.as_str())?
                .clone();
            Some(token["last_used_ms"].clone())
        }
    };
    assert_eq!(
        last_used(origin_id.clone()).await,
        Some(Value::Null),
        "never used yet"
    );
    let before = meridian_net::auth::now_ms();
    // One token reads at the origin, the other only at the edge, which reports its use.
    let (code, _) = get_json(&http_with(&at_origin), &format!("{o}/v1/whoami")).await;
    assert_eq!(code, 200);
    let (code, _) = get_json(&http_with(&at_edge), &format!("{e}/v1/whoami")).await;
    assert_eq!(code, 200);
    for id in [origin_id, edge_id] {
        let used = eventually(WAIT, "the use is committed", || {
            let id = id.clone();
            async move { last_used(id).await?.as_u64() }
        })
        .await;
        assert!(used >= before, "{id}: {used} >= {before}");
    }
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_can_be_restricted_to_token_holders() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let pki = meridian::dev::pki(dir.path()).unwrap();
    let mut config = meridian::dev::origin_cluster_configs(&opts, &pki).remove(0);
    config.auth.public_status = false;
    let origin = meridian_origin::start(config).await.unwrap();
    let mut config = meridian::dev::edge_config(
        dir.path(),
        &pki,
        meridian::dev::REGIONS[0],
        "127.0.0.1:0".parse().unwrap(),
        origin.quic_addr,
    );
    config.auth.public_status = false;
    let edge = meridian_edge::start(config).await.unwrap();
    meridian::dev::wait_for_token(std::slice::from_ref(&edge), &TOKEN)
        .await
        .unwrap();
    for at in [base(origin.http_addr), base(edge.http_addr)] {
        for path in ["/v1/status", "/metrics"] {
            let url = format!("{at}{path}");
            let r = http_anonymous().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 401, "{url} without a token");
            assert!(r.headers().contains_key("www-authenticate"));
            let r = http().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url} with a token");
        }
    }
    edge.shutdown().await;
    origin.shutdown().await;
}
