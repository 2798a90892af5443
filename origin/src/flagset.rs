//! What the origin checks before a flag set is proposed, and the transaction that stores it.
//!
//! A document (or one flag of it) is accepted only if it passes flagd's published JSON schemas
//! (`schemas/flagd/`, vendored) and [`meridian_protocol::flags::compile_document`] (variants
//! that exist, `$ref`s that resolve, rules within their depth and size bounds), so every edge
//! compiles exactly what was accepted. The write is one transaction conditioned on the version
//! of the set's `_flagset` record it was checked against, so a concurrent change to the shared
//! evaluators makes it fail with 409 rather than store a flag whose `$ref` no longer resolves.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use meridian_protocol::flags::{
    CompileError, FLAGSET_KEY, FlagDocument, compile_document, flag_of_record, record_key,
    validate_flag_key,
};
use meridian_protocol::{Address, EntryState};
use serde_json::Value;

use meridian_core::apply::{Command, Condition, TxnOp};

/// The most flags one app/env may hold (one transaction writes them all).
pub const MAX_FLAGS_PER_SET: usize = 500;

const FLAGS_SCHEMA: &str = include_str!("../schemas/flagd/flags.json");
const TARGETING_SCHEMA: &str = include_str!("../schemas/flagd/targeting.json");
const TARGETING_ID: &str = "https://flagd.dev/schema/v0/targeting.json";

/// Resolves the one reference `flags.json` makes (`./targeting.json`) from the vendored copy.
struct Vendored;

impl jsonschema::Retrieve for Vendored {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.as_str() == TARGETING_ID {
            Ok(serde_json::from_str(TARGETING_SCHEMA)?)
        } else {
            Err(format!("{uri} is not one of flagd's schemas").into())
        }
    }
}

static SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(FLAGS_SCHEMA).expect("vendored flags.json is JSON");
    // Draft 7 ignores `$id` beside the root `$ref`, so the base `./targeting.json` resolves
    // against is given here.
    jsonschema::options()
        .with_base_uri("https://flagd.dev/schema/v0/flags.json")
        .with_retriever(Vendored)
        .build(&schema)
        .expect("vendored flagd schemas compile")
});

/// Why a flag set was refused (422 `invalid_flags`): where, and what is wrong.
pub type Refusal = CompileError;

fn refusal(path: impl Into<String>, message: impl Into<String>) -> Refusal {
    CompileError {
        path: path.into(),
        message: message.into(),
    }
}

/// Checks a whole flagd document: its shape, the bounds and references of its rules, then
/// flagd's schemas.
pub fn check_document(value: &Value) -> Result<FlagDocument, Refusal> {
    let document: FlagDocument = serde_json::from_value(value.clone())
        .map_err(|e| refusal("", format!("not a flagd document: {e}")))?;
    if document.flags.len() > MAX_FLAGS_PER_SET {
        return Err(refusal(
            "/flags",
            format!(
                "{} flags; an app/env holds at most {MAX_FLAGS_PER_SET}",
                document.flags.len()
            ),
        ));
    }
    for key in document.flags.keys() {
        validate_flag_key(key).map_err(|e| refusal("/flags", e.to_string()))?;
    }
    // The bounds first: they also bound what the schema check walks.
    compile_document(&document)?;
    if let Some(e) = SCHEMA.iter_errors(value).next() {
        let e = most_specific(&e);
        let path = e.instance_path().as_str().to_owned();
        return Err(refusal(path, format!("does not match flagd's schema: {e}")));
    }
    Ok(document)
}

/// Of an `anyOf`/`oneOf` failure, the error of the alternative that came closest (fewest
/// errors, then deepest into the document): "`explode` was unexpected" at the rule rather than
/// "matches none of the flag types" at the flag.
fn most_specific<'e>(
    e: &'e jsonschema::ValidationError<'e>,
) -> &'e jsonschema::ValidationError<'e> {
    use jsonschema::error::ValidationErrorKind as K;
    let context = match e.kind() {
        K::AnyOf { context } | K::OneOfNotValid { context } => context,
        _ => return e,
    };
    let depth = |errors: &[jsonschema::ValidationError<'_>]| {
        errors
            .first()
            .map_or(0, |x| x.instance_path().as_str().len())
    };
    context
        .iter()
        .filter(|errors| !errors.is_empty())
        .min_by_key(|errors| (errors.len(), std::cmp::Reverse(depth(errors))))
        .map_or(e, |errors| most_specific(&errors[0]))
}

/// The document a namespace holds now.
pub fn current(namespace: Option<&BTreeMap<String, EntryState>>) -> FlagDocument {
    namespace
        .map(FlagDocument::from_namespace)
        .unwrap_or_default()
}

/// The document with `definition` as flag `key`, checked as a whole.
pub fn with_flag(
    namespace: Option<&BTreeMap<String, EntryState>>,
    key: &str,
    definition: Value,
) -> Result<FlagDocument, Refusal> {
    let mut document = current(namespace);
    document.flags.insert(key.to_owned(), definition);
    let value = serde_json::to_value(&document).map_err(|e| refusal("", e.to_string()))?;
    check_document(&value)
}

fn version_of(namespace: Option<&BTreeMap<String, EntryState>>, key: &str) -> Option<u64> {
    namespace
        .and_then(|n| n.get(key))
        .filter(|e| !e.is_tombstone())
        .map(|e| e.version.0)
}

/// The condition that the set's `_flagset` record is still what the check read.
fn flagset_condition(
    namespace: Option<&BTreeMap<String, EntryState>>,
    app: &str,
    env: &str,
) -> Condition {
    let address = record(app, env, FLAGSET_KEY);
    match version_of(namespace, FLAGSET_KEY) {
        Some(v) => Condition::VersionEquals(address, v),
        None => Condition::Absent(address),
    }
}

fn record(app: &str, env: &str, key: &str) -> Address {
    Address {
        app: app.to_owned(),
        env: env.to_owned(),
        key: key.to_owned(),
    }
}

/// The transaction that makes `app/env` hold exactly `document`: changed flags written,
/// flags it no longer has deleted, the `_flagset` record written or deleted. `None` when the
/// namespace already holds exactly that.
pub fn document_command(
    namespace: Option<&BTreeMap<String, EntryState>>,
    app: &str,
    env: &str,
    document: &FlagDocument,
) -> Option<Command> {
    let live = |key: &str| {
        namespace
            .and_then(|n| n.get(key))
            .and_then(|e| e.value.as_deref())
    };
    let mut ops = Vec::new();
    let set_text = document.flagset_value().map(|v| v.to_string());
    match (&set_text, live(FLAGSET_KEY)) {
        (Some(new), old) if old != Some(new.as_str()) => ops.push(TxnOp::Put(
            record(app, env, FLAGSET_KEY),
            new.as_str().into(),
        )),
        (None, Some(_)) => ops.push(TxnOp::Delete(record(app, env, FLAGSET_KEY))),
        _ => {}
    }
    for (key, definition) in &document.flags {
        let text = definition.to_string();
        let at = record_key(key);
        if live(&at) != Some(text.as_str()) {
            ops.push(TxnOp::Put(record(app, env, &at), text.into()));
        }
    }
    if let Some(ns) = namespace {
        for (key, entry) in ns {
            if let Some(flag) = flag_of_record(key)
                && !entry.is_tombstone()
                && !document.flags.contains_key(flag)
            {
                ops.push(TxnOp::Delete(record(app, env, key)));
            }
        }
    }
    if ops.is_empty() {
        return None;
    }
    Some(Command::Txn {
        conditions: vec![flagset_condition(namespace, app, env)],
        ops,
    })
}

/// The transaction that writes one flag (`expect_version`: 0 for "must not exist yet").
/// `None` when the flag already has exactly that definition.
pub fn flag_command(
    namespace: Option<&BTreeMap<String, EntryState>>,
    app: &str,
    env: &str,
    key: &str,
    definition: &Value,
    expect_version: Option<u64>,
) -> Option<Command> {
    let at = record_key(key);
    let text = definition.to_string();
    let unchanged = namespace
        .and_then(|n| n.get(&at))
        .and_then(|e| e.value.as_deref())
        == Some(text.as_str());
    if unchanged && expect_version.is_none() {
        return None;
    }
    let mut conditions = vec![flagset_condition(namespace, app, env)];
    match expect_version {
        Some(0) => conditions.push(Condition::Absent(record(app, env, &at))),
        Some(v) => conditions.push(Condition::VersionEquals(record(app, env, &at), v)),
        None => {}
    }
    Some(Command::Txn {
        conditions,
        ops: vec![TxnOp::Put(record(app, env, &at), text.into())],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schemas_refuse_what_flagd_refuses() {
        let ok = json!({"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {
            "f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
                  "targeting": {"if": [{"sem_ver": [{"var": "v"}, ">=", "1.0.0"]}, "on", "off"]}}}});
        check_document(&ok).unwrap();
        // Mixed variant types, an unknown operator, a bad metadata value.
        for (bad, path) in [
            (
                json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": true, "b": "x"}, "defaultVariant": "a"}}}),
                "/flags/f",
            ),
            (
                json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": true}, "defaultVariant": "a",
                "targeting": {"explode": [1]}}}}),
                "/flags/f/targeting",
            ),
            (json!({"flags": {}, "metadata": {"x": [1]}}), "/metadata/x"),
        ] {
            let e = check_document(&bad).unwrap_err();
            assert!(e.path.starts_with(path), "{e} (wanted {path})");
        }
    }

    #[test]
    fn a_document_write_touches_only_what_changed() {
        let doc: FlagDocument = serde_json::from_value(json!({"flags": {
            "a": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}}))
        .unwrap();
        let Some(Command::Txn { conditions, ops }) = document_command(None, "app", "prod", &doc)
        else {
            panic!("a first write is a transaction");
        };
        assert_eq!(conditions.len(), 1);
        assert_eq!(ops.len(), 1);
        let mut ns = BTreeMap::new();
        ns.insert(
            "_flag.a".to_owned(),
            EntryState {
                version: meridian_protocol::Version(1),
                revision: meridian_protocol::Revision(3),
                value: Some(doc.flags["a"].to_string().into()),
            },
        );
        ns.insert(
            "_flag.gone".to_owned(),
            EntryState {
                version: meridian_protocol::Version(1),
                revision: meridian_protocol::Revision(3),
                value: Some("{}".into()),
            },
        );
        let Some(Command::Txn { ops, .. }) = document_command(Some(&ns), "app", "prod", &doc)
        else {
            panic!("the stale flag is deleted");
        };
        assert!(matches!(&ops[..], [TxnOp::Delete(a)] if a.key == "_flag.gone"));
        ns.remove("_flag.gone");
        assert!(document_command(Some(&ns), "app", "prod", &doc).is_none());
    }
}
