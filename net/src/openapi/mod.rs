//! The OpenAPI 3.1 contract of a node's HTTP API: the schemas origin and edge answers share, and
//! [`complete`], which finishes a document generated from the handlers' `#[utoipa::path]`
//! annotations with what the route table already knows — each route's path parameters, its
//! security requirement and the refusals its authorization rule can give (401, 403, 415) — so
//! none of that is written twice by hand. Both node kinds serve the result at
//! `GET /v1/openapi.json`; their tests fail on any route missing from the document or any
//! documented operation with no route.

mod schemas;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::auth::Rule;
pub use schemas::*;

/// The path of the document on every node.
pub const PATH: &str = "/v1/openapi.json";

/// A route's path as OpenAPI writes it: a catch-all `{*rest}` is the parameter `{rest}`.
pub fn spec_path(route: &str) -> String {
    route.replace("{*", "{")
}

/// The description of a path parameter, by name.
fn parameter_description(name: &str) -> &'static str {
    match name {
        "app" => "The application: [a-z0-9][a-z0-9_-]{0,62}, or `_` for every application.",
        "env" => "The environment: [a-z0-9][a-z0-9_-]{0,62}, or `_` for every environment.",
        "key" => "The key: dot-separated [a-z0-9][a-z0-9_-]* segments, at most 256 bytes.",
        "prefix" => "A key prefix.",
        "flag" => "The flag's key.",
        "action" => "`pause`, `resume` or `abort`.",
        "id" => "The id the create answer named.",
        "name" => "The name it was put under.",
        "path" => "The asset's path.",
        _ => "A path parameter.",
    }
}

/// What a route's rule requires, in words, for its description.
fn rule_description(rule: Rule) -> String {
    match rule {
        Rule::Public => "No token is looked at.".to_owned(),
        Rule::Observe => {
            "Public unless the node sets `[auth] public_status = false`; then any valid token."
                .to_owned()
        }
        Rule::Identify => "Any valid token, or none.".to_owned(),
        Rule::Key(a) => format!("Needs `{a}` on the key."),
        Rule::Namespace(a) => format!("Needs `{a}` on every key of the app/env."),
        Rule::Filtered(a) => format!(
            "Needs `{a}` somewhere (in the app/env the path names); only what the token may see \
             is answered."
        ),
        Rule::Everything(a) => format!("Needs `{a}` on `*/*/*`."),
    }
}

/// The layer's refusal `name` in words (as its shared response describes it).
fn refusal_words(name: &str) -> &'static str {
    match name {
        "Unauthenticated" => {
            "`unauthenticated` (a missing, malformed, unknown, revoked or expired token)."
        }
        "Forbidden" => "`forbidden` (the token lacks the grant).",
        "BadRequest" => "a malformed path parameter, query or body.",
        _ => "`unsupported_media_type` (the body is not `application/json`).",
    }
}

/// A unique operation id from the method and the path: `PUT /v1/kv/{app}/{env}/{key}` is
/// `putKvAppEnvKey`.
fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for segment in path.split('/').filter(|s| !s.is_empty() && *s != "v1") {
        for word in segment
            .trim_matches(|c| c == '{' || c == '}')
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let mut chars = word.chars();
            id.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            id.extend(chars);
        }
    }
    id
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Finishes `doc` (generated from the handlers) for the routes of `rules`: path parameters
/// from each path template, security from each rule, and the refusals of the authorization
/// layer (401 for every route that looks at a token, 403 for a rule that checks a grant, 415 for
/// a body that is not JSON, 400 for a bad path parameter). Routes missing from `doc` are left
/// for the caller's test to find.
pub fn complete(doc: utoipa::openapi::OpenApi, rules: &[(Method, &'static str, Rule)]) -> Value {
    let mut doc = serde_json::to_value(doc).expect("an OpenAPI document serializes");
    doc["components"]["securitySchemes"]["bearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "A Meridian token (`mrdn_…`), from `POST /v1/tokens` or the bootstrap file."
    });
    doc["components"]["responses"] = json!({
        "Unauthenticated": error_response(
            "`unauthenticated`: a missing, malformed, unknown, revoked or expired token."
        ),
        "Forbidden": error_response(
            "`forbidden`: the token lacks the grant (the message names the action and resource)."
        ),
        "BadRequest": error_response(
            "A malformed path parameter, query or body; the code names which."
        ),
        "UnsupportedMediaType": error_response(
            "`unsupported_media_type`: the body is not `application/json`."
        ),
    });
    for (method, path, rule) in rules {
        let Some(op) = doc
            .pointer_mut(&format!(
                "/paths/{}/{}",
                spec_path(path).replace('~', "~0").replace('/', "~1"),
                method.as_str().to_ascii_lowercase()
            ))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        complete_operation(op, method, path, *rule);
    }
    doc
}

fn complete_operation(op: &mut Map<String, Value>, method: &Method, path: &str, rule: Rule) {
    // Path parameters, from the template, unless the annotation described them.
    let params = op
        .entry("parameters")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("parameters is an array");
    let named: Vec<String> = params
        .iter()
        .filter(|p| p["in"] == "path")
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let mut has_path_params = false;
    for segment in spec_path(path).split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            has_path_params = true;
            if !named.iter().any(|n| n == name) {
                params.push(json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "description": parameter_description(name),
                    "schema": {"type": "string"}
                }));
            }
        }
    }
    if params.is_empty() {
        op.remove("parameters");
    }
    op.insert(
        "operationId".to_owned(),
        Value::String(operation_id(method, path)),
    );
    // Security: a token, or (where the rule allows it) none.
    op.insert(
        "security".to_owned(),
        match rule {
            Rule::Public => json!([]),
            Rule::Observe | Rule::Identify => json!([{}, {"bearer": []}]),
            _ => json!([{"bearer": []}]),
        },
    );
    let needs = rule_description(rule);
    let description = match op.get("description").and_then(Value::as_str) {
        Some(d) if !d.is_empty() => format!("{d}\n\n{needs}"),
        _ => needs,
    };
    op.insert("description".to_owned(), Value::String(description));
    // The refusals every route of this rule can give.
    let has_body = op.contains_key("requestBody") && *method != Method::GET;
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    // A refusal the annotation already documents (another 403, say) keeps its own entry and
    // says that the layer's refusal shares its status.
    let mut add = |status: StatusCode, name: &str| match responses
        .get_mut(&status.as_u16().to_string())
        .and_then(|r| r.get_mut("description"))
    {
        Some(Value::String(d)) => {
            d.push_str(&format!(" Or the layer's refusal: {}", refusal_words(name)))
        }
        _ => {
            responses.insert(
                status.as_u16().to_string(),
                json!({"$ref": format!("#/components/responses/{name}")}),
            );
        }
    };
    if rule != Rule::Public {
        add(StatusCode::UNAUTHORIZED, "Unauthenticated");
    }
    if matches!(
        rule,
        Rule::Key(_) | Rule::Namespace(_) | Rule::Filtered(_) | Rule::Everything(_)
    ) {
        add(StatusCode::FORBIDDEN, "Forbidden");
    }
    if has_path_params {
        add(StatusCode::BAD_REQUEST, "BadRequest");
    }
    if has_body {
        add(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType");
    }
}

/// The operations `doc` documents, as (method, path), sorted.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    out.push((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Checks a completed document against the route table: every route documented, every
/// documented operation routed, every operation with a summary and a success answer (a
/// WebSocket's 101 counts). The
/// problems, one per line (empty: the two agree).
pub fn check_against(doc: &Value, rules: &[(Method, &'static str, Rule)]) -> Vec<String> {
    let mut problems = Vec::new();
    let routed: Vec<(String, String)> = rules
        .iter()
        .map(|(m, p, _)| (m.as_str().to_owned(), spec_path(p)))
        .collect();
    let documented = operations(doc);
    let mut ids = std::collections::HashSet::new();
    for (m, p) in &documented {
        let id = &doc["paths"][p][m.to_ascii_lowercase()]["operationId"];
        if !ids.insert(id.to_string()) {
            problems.push(format!("{m} {p}: operationId {id} is not unique"));
        }
    }
    for r in &routed {
        if !documented.contains(r) {
            problems.push(format!("{} {} is routed but not documented", r.0, r.1));
        }
    }
    for d in &documented {
        if !routed.contains(d) {
            problems.push(format!("{} {} is documented but not routed", d.0, d.1));
        }
        let op = &doc["paths"][&d.1][d.0.to_ascii_lowercase()];
        if op["summary"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{} {} has no summary", d.0, d.1));
        }
        let ok = op["responses"]
            .as_object()
            .is_some_and(|r| r.keys().any(|s| s.starts_with(['1', '2', '3'])));
        if !ok {
            problems.push(format!("{} {} documents no success answer", d.0, d.1));
        }
    }
    problems
}

/// A node's completed document, built once on first use, and its serialized answer.
pub struct Document {
    build: fn() -> Value,
    value: std::sync::OnceLock<Value>,
    bytes: std::sync::OnceLock<Vec<u8>>,
}

impl Document {
    /// A document `build` makes (generate, then [`complete`]) when first asked for.
    pub const fn new(build: fn() -> Value) -> Self {
        Self {
            build,
            value: std::sync::OnceLock::new(),
            bytes: std::sync::OnceLock::new(),
        }
    }

    /// The document.
    pub fn get(&self) -> &Value {
        self.value.get_or_init(self.build)
    }

    /// The answer to `GET /v1/openapi.json`.
    pub fn serve(&'static self) -> Response {
        let bytes = self
            .bytes
            .get_or_init(|| serde_json::to_vec(self.get()).expect("the document serializes"));
        (
            [(header::CONTENT_TYPE, "application/json")],
            axum::body::Bytes::from_static(bytes),
        )
            .into_response()
    }
}
