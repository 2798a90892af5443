//! `meridian-client` evaluates flags in process from the flag set an edge sent, keeps it
//! current as flags change at the origin, and serves the OpenFeature Rust SDK as a provider.

mod common;

use std::time::Duration;

use common::*;
use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_evaluation_follows_the_origin_and_serves_openfeature() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let admin = http();
    let o = base(cluster.origin.http_addr);
    let document = json!({"flags": {
        "beta": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                 "targeting": {"if": [{"starts_with": [{"var": "email"}, "qa-"]}, "on", null]},
                 "metadata": {"team": "web"}},
        "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "low"},
        "theme": {"state": "ENABLED", "variants": {"dark": {"bg": "#000"}}, "defaultVariant": "dark"},
        "split": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
                  "targeting": {"fractional": [["a", 50], ["b", 50]]}}
    }});
    let r = admin
        .put(format!("{o}/v1/flags/web/prod"))
        .json(&document)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (token, _) = create_token(
        &admin,
        &o,
        json!({"name": "web", "role": "viewer", "resources": ["web/prod/*"]}),
    )
    .await;
    let edge = base(cluster.edges[1].http_addr);
    let client = meridian_client::Client::with_token(&edge, Some(&token)).unwrap();
    let flags = eventually(WAIT, "the edge has the flags", || async {
        let f = client.flags("web", "prod").await.ok()?;
        f.set().flags.contains_key("beta").then_some(f)
    })
    .await;

    let e = flags.evaluate("beta", &json!({"email": "qa-7@x"}));
    assert_eq!(
        (e.value, e.variant.as_deref(), e.reason),
        (Some(json!(true)), Some("on"), "TARGETING_MATCH")
    );
    // The same bucket as the edge computes for the same subject.
    let local = flags.evaluate("split", &json!({"targetingKey": "user-9"}));
    let r = reqwest::Client::new()
        .post(format!(
            "{edge}/v1/flags/web/prod/ofrep/v1/evaluate/flags/split"
        ))
        .bearer_auth(&token)
        .json(&json!({"context": {"targetingKey": "user-9"}}))
        .send()
        .await
        .unwrap();
    let remote: serde_json::Value = r.json().await.unwrap();
    assert_eq!(local.variant.as_deref(), remote["variant"].as_str());

    // A change at the origin reaches the local copy through the watch.
    let r = admin
        .put(format!("{o}/v1/flags/web/prod/limit"))
        .json(&json!({"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "high"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(WAIT, "the local copy follows", || async {
        (flags.evaluate("limit", &json!({})).value == Some(json!(100))).then_some(())
    })
    .await;

    // Through the OpenFeature SDK.
    let mut api = open_feature::OpenFeature::singleton_mut().await;
    api.set_provider(meridian_client::openfeature::MeridianProvider::new(
        flags.clone(),
    ))
    .await;
    let of = api.create_client();
    drop(api);
    let qa = EvaluationContext::default()
        .with_targeting_key("u1")
        .with_custom_field("email", "qa-1@x");
    let d = of.get_bool_details("beta", Some(&qa), None).await.unwrap();
    assert_eq!(
        (d.value, d.variant.as_deref(), d.reason),
        (true, Some("on"), Some(EvaluationReason::TargetingMatch))
    );
    assert!(d.flag_metadata.values.contains_key("team"));
    assert_eq!(of.get_int_value("limit", None, None).await.unwrap(), 100);
    let theme = of
        .get_struct_value::<open_feature::StructValue>("theme", None, None)
        .await
        .unwrap();
    assert!(theme.fields.contains_key("bg"));
    let e = of.get_bool_value("nope", None, None).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    let e = of.get_string_value("limit", None, None).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::TypeMismatch);
    let e = of.get_string_value("split", None, None).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::TargetingKeyMissing);
    drop(cluster);
}
