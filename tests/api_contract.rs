//! The API contract: the OpenAPI documents of origin and edge are valid OpenAPI 3.1, the copies
//! committed under docs/openapi/ are current, each node serves its own at `/v1/openapi.json`, and
//! the examples of docs/API.md, run in order against a dev topology, answer what the page says
//! with bodies that match the documents' schemas. So neither the page nor the documents can
//! drift from the code.
//!
//! `MERIDIAN_BLESS=1 cargo test --test api_contract` rewrites docs/openapi/*.json;
//! `MERIDIAN_SHOW=1` prints every example's actual answer (for writing the page).

mod common;
#[path = "api_contract/examples.rs"]
mod examples;

use std::path::Path;

use common::*;
use serde_json::Value;

fn origin_spec() -> &'static Value {
    meridian_origin::http::openapi::spec()
}

fn edge_spec() -> &'static Value {
    meridian_edge::openapi::spec()
}

/// Both documents validate against the OpenAPI 3.1 schema (the OpenAPI Initiative's
/// `https://spec.openapis.org/oas/3.1/schema/2022-10-07`), and every `$ref` in them resolves.
#[test]
fn both_documents_are_valid_openapi_3_1() {
    let meta: Value =
        serde_json::from_str(include_str!("openapi/oas-3.1-schema.json")).expect("meta-schema");
    let validator = jsonschema::validator_for(&meta).expect("the meta-schema compiles");
    for (name, doc) in [("origin", origin_spec()), ("edge", edge_spec())] {
        let errors: Vec<String> = validator
            .iter_errors(doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {}", errors.join("\n"));
        let mut refs = Vec::new();
        collect_refs(doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some(), "{name}: {r} resolves");
        }
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// docs/openapi/{origin,edge}.json are what the code generates (for readers and generators
/// that do not run a node).
#[test]
fn the_committed_documents_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi");
    for (name, doc) in [("origin", origin_spec()), ("edge", edge_spec())] {
        let path = root.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(doc).unwrap() + "\n";
        if std::env::var_os("MERIDIAN_BLESS").is_some() {
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is not current: run `MERIDIAN_BLESS=1 cargo test --test api_contract` and commit it",
            path.display()
        );
    }
}

/// Each node serves its document; docs/API.md's examples answer what the page says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_documented_examples_answer_what_the_page_says() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _opts) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let edges: Vec<String> = cluster.edges.iter().map(|e| base(e.http_addr)).collect();
    let c = http();
    for (url, spec) in [
        (format!("{origin}/v1/openapi.json"), origin_spec()),
        (format!("{}/v1/openapi.json", edges[0]), edge_spec()),
    ] {
        let (status, served) = get_json(&c, &url).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(&served, spec, "{url} serves the generated document");
    }
    assert_page_answers(&origin, &edges, "docs/API.md", [], 30).await;
    cluster.shutdown().await;
}

/// Runs the examples of the page at `rel` (shell variables `vars`) against the topology at
/// `origin` and `edges`; fails naming every example that answers otherwise, or when fewer
/// than `at_least` ran.
async fn assert_page_answers<const N: usize>(
    origin: &str,
    edges: &[String],
    rel: &str,
    vars: [(&str, String); N],
    at_least: usize,
) {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut run = examples::Runner::new(origin.to_owned(), edges.to_vec(), vars);
    let report = run.run_page(&page, origin_spec(), edge_spec()).await;
    assert!(
        report.failures.is_empty(),
        "{} of {} examples of {rel} differ from the code:\n\n{}",
        report.failures.len(),
        report.ran,
        report.failures.join("\n\n")
    );
    assert!(
        report.ran >= at_least,
        "only {} examples of {rel} ran",
        report.ran
    );
}

/// The README's five-minute walk-through answers what it says, on a fresh dev topology.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_walk_through_answers_what_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _opts) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let edges: Vec<String> = cluster.edges.iter().map(|e| base(e.http_addr)).collect();
    let vars = [
        ("A", format!("Authorization: Bearer {}", *TOKEN)),
        ("J", "Content-Type: application/json".to_owned()),
    ];
    assert_page_answers(&origin, &edges, "README.md", vars, 12).await;
    cluster.shutdown().await;
}

/// The routes this contract adds, attacked: `/v1/namespaces` needs a token and names only what
/// the token may read; the UI's asset route serves no file outside its table; the document is
/// public like status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_filter_by_grant_and_the_ui_serves_only_its_assets() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _opts) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let c = http();
    for path in [
        "payments/prod/a",
        "payments/prod/b",
        "billing/prod/a",
        "_/_/timeout",
    ] {
        put(&c, &origin, path, serde_json::json!(1)).await;
    }
    let url = format!("{origin}/v1/namespaces");
    let anonymous = http_anonymous().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let forged = http_with("mrdn_forged").get(&url).send().await.unwrap();
    assert_eq!(forged.status(), 401);
    let (viewer, _) = create_token(
        &c,
        &origin,
        serde_json::json!({"name": "pay-viewer", "role": "viewer", "resources": ["payments/prod/a"]}),
    )
    .await;
    let (status, seen) = get_json(&http_with(&viewer), &url).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        seen["namespaces"],
        serde_json::json!([{"app": "payments", "env": "prod", "keys": 1}]),
        "only the key it may read, and no system namespace"
    );
    let (_, all) = get_json(&c, &url).await;
    assert_eq!(all["namespaces"].as_array().unwrap().len(), 3, "{all}");
    for attack in [
        "/ui/%2e%2e/Cargo.toml",
        "/ui/../Cargo.toml",
        "/ui/js/..%2f..%2fCargo.toml",
        "/ui/vendor/json-schema/README.md",
    ] {
        let r = http_anonymous()
            .get(format!("{origin}{attack}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{attack}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("[workspace]"), "{attack} served a file");
    }
    let page = http_anonymous()
        .get(format!("{origin}/ui"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let doc = http_anonymous()
        .get(format!("{origin}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), 200);
    cluster.shutdown().await;
}
