//! The read answers every origin node and edge gives from its local state (DESIGN §4 and the
//! configuration model): single keys with templates resolved and an optional default, bulk
//! reads by prefix or by a list of keys, and the resolved configuration of an environment with
//! the level each key came from. The HTTP handlers only pick the state and stamp headers.

use axum::http::StatusCode;
use meridian_protocol::addr::is_internal_record;
use meridian_protocol::addr::{validate_app, validate_env, validate_key, validate_key_prefix};
use meridian_protocol::view::{Renderer, SecretOpener, TemplateError, Visible, resolve};
use meridian_protocol::{Address, CacheState, EntryState};
use serde::Deserialize;

use crate::http::ApiError;

/// What a reader may see: the keys it may read, and how `${secret:key}` references open for
/// it (none: they do not resolve).
#[derive(Clone, Copy)]
pub struct Access<'a> {
    /// Whether the reader may read a key.
    pub visible: Visible<'a>,
    /// Opens secrets for `${secret:key}` references.
    pub secrets: Option<SecretOpener<'a>>,
}

/// Most keys one bulk read may name.
pub const MAX_BULK_KEYS: usize = 1_000;
/// Keys one page of a prefix list holds unless `limit` says otherwise.
pub const DEFAULT_LIST_LIMIT: usize = 1_000;
/// Most keys one page of a prefix list may hold.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Query of `GET /v1/kv/{app}/{env}/{key}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryQuery {
    /// Answer the stored value without resolving `${key}` references.
    #[serde(default)]
    pub raw: bool,
    /// JSON answered (marked `"default": true`) when the key has no value.
    #[serde(default)]
    pub default: Option<String>,
    /// Read-your-writes: answer only once this revision is applied.
    #[serde(default)]
    pub min_revision: Option<u64>,
    /// How long an edge may wait for `min_revision` (default 0, at most [`MAX_WAIT_MS`]).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Query of `GET /v1/kv/{app}/{env}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this.
    #[serde(default)]
    pub prefix: String,
    /// Only these keys, comma-separated (instead of a prefix).
    #[serde(default)]
    pub keys: Option<String>,
    /// Most keys in this page of a prefix list ([`DEFAULT_LIST_LIMIT`], at most
    /// [`MAX_LIST_LIMIT`]).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Where this page starts: the `next_cursor` of the page before.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Do not resolve references.
    #[serde(default)]
    pub raw: bool,
    /// Read-your-writes: answer only once this revision is applied.
    #[serde(default)]
    pub min_revision: Option<u64>,
    /// How long an edge may wait for `min_revision` (default 0, at most [`MAX_WAIT_MS`]).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Query of `GET /v1/config/{app}/{env}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigQuery {
    /// Do not resolve references.
    #[serde(default)]
    pub raw: bool,
    /// Read-your-writes: answer only once this revision is applied.
    #[serde(default)]
    pub min_revision: Option<u64>,
    /// How long an edge may wait for `min_revision` (default 0, at most [`MAX_WAIT_MS`]).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Longest `wait_ms` a read may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;

/// `min_revision` and `wait_ms` of a read, validated: `wait_ms` needs `min_revision` and is at
/// most [`MAX_WAIT_MS`].
pub fn min_revision(
    min_revision: Option<u64>,
    wait_ms: Option<u64>,
) -> Result<Option<(u64, u64)>, ApiError> {
    match (min_revision, wait_ms) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "wait_ms needs min_revision",
        )),
        (Some(_), Some(w)) if w > MAX_WAIT_MS => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("wait_ms must be at most {MAX_WAIT_MS}, got {w}"),
        )),
        (Some(r), w) => Ok(Some((r, w.unwrap_or(0)))),
    }
}

/// 504 `revision_not_reached`: the node is at `have`, the read wanted `want`.
pub fn revision_not_reached(have: u64, want: u64, waited_ms: u64) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "revision_not_reached",
        format!("at revision {have}, not yet {want} (waited {waited_ms} ms); retry or wait longer"),
    )
}

/// Validates a namespace path.
pub fn namespace(app: &str, env: &str) -> Result<(), ApiError> {
    validate_app(app)?;
    validate_env(env)?;
    Ok(())
}

fn push_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// 422 for a template that does not resolve: `template_too_large` when the result would
/// exceed its limit, `unresolved_reference` otherwise; the message names the chain of keys.
pub fn template_error(e: &TemplateError) -> ApiError {
    let code = match e {
        TemplateError::TooLarge { .. } => "template_too_large",
        _ => "unresolved_reference",
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
}

fn write_item(buf: &mut Vec<u8>, a: &Address, value: &str, entry: &EntryState) {
    buf.extend_from_slice(b"{\"app\":");
    push_str(buf, &a.app);
    buf.extend_from_slice(b",\"env\":");
    push_str(buf, &a.env);
    buf.extend_from_slice(b",\"key\":");
    push_str(buf, &a.key);
    buf.extend_from_slice(b",\"value\":");
    meridian_protocol::secrets::write_masked(buf, value);
    buf.extend_from_slice(b",\"version\":");
    buf.extend_from_slice(entry.version.0.to_string().as_bytes());
    buf.extend_from_slice(b",\"revision\":");
    buf.extend_from_slice(entry.revision.0.to_string().as_bytes());
    buf.push(b'}');
}

/// `GET /v1/kv/{app}/{env}/{key}`: the live entry with references resolved (unless raw), or
/// the default, or 404 `not_found`; 422 `unresolved_reference` when a reference does not
/// resolve.
pub fn entry(
    state: &CacheState,
    a: &Address,
    q: &EntryQuery,
    access: Access<'_>,
) -> Result<Vec<u8>, ApiError> {
    let visible = access.visible;
    let mut buf = Vec::with_capacity(128);
    match state.get_live(&a.app, &a.env, &a.key) {
        Some(entry) => {
            let text = entry.value.as_deref().unwrap_or("null");
            if q.raw {
                write_item(&mut buf, a, text, entry);
            } else {
                let rendered = Renderer::new(state, &a.app, &a.env)
                    .with_visibility(visible)
                    .with_secrets(access.secrets)
                    .render(&a.key, text)
                    .map_err(|e| template_error(&e))?;
                write_item(&mut buf, a, &rendered, entry);
            }
        }
        None => {
            let Some(default) = &q.default else {
                return Err(ApiError::not_found(a));
            };
            let value: serde_json::Value = serde_json::from_str(default).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("default is not JSON: {e}"),
                )
            })?;
            let entry = EntryState {
                version: meridian_protocol::Version(0),
                revision: state.revision(),
                value: None,
            };
            write_item(&mut buf, a, &value.to_string(), &entry);
            buf.pop();
            buf.extend_from_slice(b",\"default\":true}");
        }
    }
    Ok(buf)
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

/// `GET /v1/kv/{app}/{env}?prefix=p[&limit=N][&cursor=c]` or `?keys=a,b`: `{"revision",
/// "items", "missing", "errors", "next_cursor"}`. A prefix list is paged: at most `limit` keys
/// (items and errors together) in key order, and `next_cursor` (else `null`) is where the next
/// page starts. `missing` lists named keys without a value; `errors` maps each key whose
/// references do not resolve to why (it is left out of `items`).
pub fn list(
    state: &CacheState,
    app: &str,
    env: &str,
    q: &ListQuery,
    access: Access<'_>,
) -> Result<Vec<u8>, ApiError> {
    let visible = access.visible;
    namespace(app, env)?;
    let named: Option<Vec<&str>> = match &q.keys {
        Some(keys) => {
            if !q.prefix.is_empty() {
                return Err(bad_query("give either prefix or keys, not both"));
            }
            if q.limit.is_some() || q.cursor.is_some() {
                return Err(bad_query(
                    "limit and cursor page a prefix list; keys names them all at once",
                ));
            }
            let mut list: Vec<&str> = keys.split(',').filter(|k| !k.is_empty()).collect();
            if list.len() > MAX_BULK_KEYS {
                return Err(bad_query(format!(
                    "{} keys named; at most {MAX_BULK_KEYS}",
                    list.len()
                )));
            }
            for k in &list {
                validate_key(k)?;
            }
            list.sort_unstable();
            list.dedup();
            Some(list)
        }
        None => {
            validate_key_prefix(&q.prefix)?;
            None
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(bad_query(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}"
        )));
    }
    if let Some(c) = &q.cursor
        && !c.starts_with(&q.prefix)
    {
        return Err(bad_query(format!(
            "cursor {c:?} is not from a list of prefix {:?}",
            q.prefix
        )));
    }
    let ns = state.namespace(app, env);
    let mut next_cursor = None;
    let entries: Vec<(&str, Option<&EntryState>)> = match &named {
        Some(keys) => keys
            .iter()
            .map(|k| {
                let live = ns.and_then(|n| n.get(*k)).filter(|e| !e.is_tombstone());
                // What the reader may not read is as good as absent.
                (*k, live.filter(|_| visible(app, env, k)))
            })
            .collect(),
        None => {
            use std::ops::Bound;
            let from = match &q.cursor {
                Some(c) => Bound::Excluded(c.clone()),
                None => Bound::Included(q.prefix.clone()),
            };
            let mut live = ns
                .into_iter()
                .flat_map(|n| {
                    n.range((from.clone(), Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(&q.prefix))
                })
                .filter(|(k, e)| {
                    !e.is_tombstone() && !is_internal_record(k) && visible(app, env, k)
                })
                .map(|(k, e)| (k.as_str(), Some(e)));
            let page: Vec<_> = live.by_ref().take(limit).collect();
            if live.next().is_some() {
                next_cursor = page.last().map(|(k, _)| *k);
            }
            page
        }
    };
    let mut renderer = Renderer::new(state, app, env)
        .with_visibility(visible)
        .with_secrets(access.secrets);
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"revision\":");
    buf.extend_from_slice(state.revision().0.to_string().as_bytes());
    buf.extend_from_slice(b",\"items\":[");
    let mut missing = Vec::new();
    let mut errors = Vec::new();
    let mut first = true;
    for (key, entry) in entries {
        let Some(entry) = entry else {
            missing.push(key);
            continue;
        };
        let value = match value_of(&mut renderer, q.raw, key, entry) {
            Ok(v) => v,
            Err(e) => {
                errors.push((key, e.to_string()));
                continue;
            }
        };
        if !first {
            buf.push(b',');
        }
        first = false;
        let a = Address {
            app: app.into(),
            env: env.into(),
            key: key.into(),
        };
        write_item(&mut buf, &a, &value, entry);
    }
    buf.extend_from_slice(b"],\"missing\":");
    buf.extend_from_slice(
        serde_json::to_string(&missing)
            .unwrap_or_default()
            .as_bytes(),
    );
    write_errors(&mut buf, &errors);
    buf.extend_from_slice(b",\"next_cursor\":");
    match next_cursor {
        Some(c) => push_str(&mut buf, c),
        None => buf.extend_from_slice(b"null"),
    }
    buf.push(b'}');
    Ok(buf)
}

/// An entry's value as answered: stored text when `raw`, references resolved otherwise.
fn value_of<'t>(
    renderer: &mut Renderer<'_>,
    raw: bool,
    key: &str,
    entry: &'t EntryState,
) -> Result<std::borrow::Cow<'t, str>, TemplateError> {
    let text = entry.value.as_deref().unwrap_or("null");
    if raw {
        Ok(std::borrow::Cow::Borrowed(text))
    } else {
        renderer.render(key, text)
    }
}

fn write_errors(buf: &mut Vec<u8>, errors: &[(&str, String)]) {
    buf.extend_from_slice(b",\"errors\":{");
    for (i, (k, why)) in errors.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_str(buf, k);
        buf.push(b':');
        push_str(buf, why);
    }
    buf.push(b'}');
}

/// `GET /v1/config/{app}/{env}`: `{"app", "env", "revision", "config": {key: value},
/// "sources": {key: "app/_"}, "errors": {key: why}}`, resolved `app/env` > `app/_` > `_/env` >
/// `_/_`, with references resolved unless raw. A key whose references do not resolve is left
/// out of `config` and named in `errors`.
pub fn config(
    state: &CacheState,
    app: &str,
    env: &str,
    q: &ConfigQuery,
    access: Access<'_>,
) -> Result<Vec<u8>, ApiError> {
    let visible = access.visible;
    namespace(app, env)?;
    let mut resolved = resolve(state, app, env);
    resolved.retain(|key, r| {
        let (a, e) = r.level.namespace(app, env);
        visible(a, e, key)
    });
    let mut renderer = Renderer::new(state, app, env)
        .with_visibility(visible)
        .with_secrets(access.secrets);
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"app\":");
    push_str(&mut buf, app);
    buf.extend_from_slice(b",\"env\":");
    push_str(&mut buf, env);
    buf.extend_from_slice(format!(",\"revision\":{},\"config\":{{", state.revision()).as_bytes());
    let mut errors = Vec::new();
    let mut first = true;
    for (key, r) in &resolved {
        let value = match value_of(&mut renderer, q.raw, key, r.entry) {
            Ok(v) => v,
            Err(e) => {
                errors.push((*key, e.to_string()));
                continue;
            }
        };
        if !first {
            buf.push(b',');
        }
        first = false;
        push_str(&mut buf, key);
        buf.push(b':');
        match meridian_protocol::secrets::MaskedSecret::of(&value) {
            Some(m) => {
                let _ = serde_json::to_writer(&mut buf, &m);
            }
            None => buf.extend_from_slice(value.as_bytes()),
        }
    }
    buf.extend_from_slice(b"},\"sources\":{");
    for (i, (key, r)) in resolved.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_str(&mut buf, key);
        buf.push(b':');
        push_str(&mut buf, &r.level.label(app, env));
    }
    buf.push(b'}');
    write_errors(&mut buf, &errors);
    buf.push(b'}');
    Ok(buf)
}
