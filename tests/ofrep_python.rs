//! The official OpenFeature Python SDK with its OFREP provider (`openfeature-provider-ofrep`
//! from PyPI), unchanged, evaluates flags at an edge of a running dev topology: base URL
//! `http://EDGE/v1/flags/{app}/{env}`, a read token scoped to that app/env.
//!
//! The SDK lives in a virtualenv that `.ci/run` makes (`.venv-ofrep`, from
//! `tests/ofrep/requirements.txt`); `MERIDIAN_OFREP_PYTHON` may name another interpreter.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MERIDIAN_OFREP_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-ofrep/bin/python");
    assert!(
        venv.exists(),
        "the OFREP test needs the OpenFeature Python SDK: python3 -m venv .venv-ofrep && \
         .venv-ofrep/bin/pip install -r tests/ofrep/requirements.txt (.ci/run does this)"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openfeature_python_sdk_evaluates_at_an_edge() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let document = json!({
        "flags": {
            "new-checkout": {
                "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"ends_with": [{"var": "email"}, "@shop.example"]}, "on",
                                     {"fractional": [["on", 10], ["off", 90]]}]},
                "metadata": {"owner": "checkout"}
            },
            "banner-color": {
                "state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "red",
                "targeting": {"if": [{"sem_ver": [{"var": "app_version"}, ">=", "2.0.0"]}, "blue", null]}
            },
            "max-items": {"state": "ENABLED", "variants": {"few": 10, "many": 100}, "defaultVariant": "many"},
            "old-thing": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
        }
    });
    let r = admin
        .put(format!("{o}/v1/flags/shop/prod"))
        .json(&document)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (token, _) = create_token(
        &admin,
        &o,
        json!({"name": "shop-svc", "role": "viewer", "resources": ["shop/prod/*"]}),
    )
    .await;
    let edge = base(cluster.edges[2].http_addr);
    let svc = http_with(&token);
    eventually(
        Duration::from_secs(20),
        "the edge has the flags",
        || async {
            let r = svc
                .post(format!(
                    "{edge}/v1/flags/shop/prod/ofrep/v1/evaluate/flags/max-items"
                ))
                .header("content-type", "application/json")
                .body("{\"context\":{}}")
                .send()
                .await
                .unwrap();
            (r.status() == 200).then_some(())
        },
    )
    .await;

    let base_url = format!("{edge}/v1/flags/shop/prod");
    let out = tokio::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/ofrep/evaluate.py"
        ))
        .arg(&base_url)
        .arg(&token)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pick = |i: usize, f: &str| got[i][f].clone();
    // Staff match the rule; the metadata arrives.
    assert_eq!(
        (pick(0, "value"), pick(0, "variant"), pick(0, "reason")),
        (json!(true), json!("on"), json!("TARGETING_MATCH"))
    );
    assert_eq!(pick(0, "metadata"), json!({"owner": "checkout"}));
    assert_eq!(
        (pick(1, "value"), pick(1, "reason")),
        (json!("#00f"), json!("TARGETING_MATCH"))
    );
    assert_eq!(
        (pick(2, "value"), pick(2, "reason")),
        (json!("#f00"), json!("DEFAULT"))
    );
    assert_eq!(
        (pick(3, "value"), pick(3, "reason")),
        (json!(100), json!("STATIC"))
    );
    // A disabled flag gives the code default; so does an unknown one, with FLAG_NOT_FOUND;
    // bucketing without a targeting key is TARGETING_KEY_MISSING.
    assert_eq!(pick(4, "value"), json!(false));
    assert_eq!(
        (pick(5, "value"), pick(5, "error")),
        (json!(true), json!("FLAG_NOT_FOUND"))
    );
    assert_eq!(
        (pick(6, "value"), pick(6, "error")),
        (json!(false), json!("TARGETING_KEY_MISSING"))
    );
    drop(cluster);
}
