//! JSON Schemas registered for an address prefix: every write of a value under `app/env/prefix`
//! must validate against each schema whose prefix it starts with.
//!
//! Schemas are part of the replicated state: they are registered by a committed command, kept
//! in the origin's backend (keys under [`SCHEMA_PREFIX`], carried in Raft snapshots), and every
//! node validates every write identically while applying it. Validation uses the `jsonschema`
//! crate (no remote references: its network features are off).

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_protocol::{Address, JsonText};
use meridian_store::{Backend, BackendError, EXTRA_PREFIX, Write};
use serde_json::Value;

/// Where schemas live in the backend: `xs` + app `\0` env `\0` prefix.
pub const SCHEMA_PREFIX: [u8; 2] = [EXTRA_PREFIX, b's'];

/// Largest schema accepted, in bytes of JSON text.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// A value that a schema refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key prefix of the schema that refused it.
    pub prefix: String,
    /// Where in the value (a JSON Pointer; `""` is the whole value).
    pub path: String,
    /// The schema rule that failed (a JSON Pointer into the schema, ending in the keyword).
    pub rule: String,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(
            f,
            "at {path}: {} (rule {} of the schema for prefix {:?})",
            self.message, self.rule, self.prefix
        )
    }
}

/// Compiles a schema, or says why it is not one.
pub fn compile(schema: &str) -> Result<jsonschema::Validator, String> {
    if schema.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema is {} bytes; the limit is {MAX_SCHEMA_BYTES}",
            schema.len()
        ));
    }
    let value: Value =
        serde_json::from_str(schema).map_err(|e| format!("the schema is not JSON: {e}"))?;
    jsonschema::validator_for(&value).map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// The first violation of `value` against `validator`, if any.
fn first_violation(
    validator: &jsonschema::Validator,
    prefix: &str,
    value: &Value,
) -> Option<Violation> {
    validator.iter_errors(value).next().map(|e| Violation {
        prefix: prefix.to_string(),
        path: e.instance_path().as_str().to_string(),
        rule: e.schema_path().as_str().to_string(),
        message: e.to_string(),
    })
}

fn schema_key(app: &str, env: &str, prefix: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + app.len() + env.len() + prefix.len());
    k.extend_from_slice(&SCHEMA_PREFIX);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(env.as_bytes());
    k.push(0);
    k.extend_from_slice(prefix.as_bytes());
    k
}

fn parse_key(k: &[u8]) -> Option<(String, String, String)> {
    let rest = k.strip_prefix(&SCHEMA_PREFIX)?;
    let mut parts = rest.splitn(3, |b| *b == 0);
    let app = std::str::from_utf8(parts.next()?).ok()?;
    let env = std::str::from_utf8(parts.next()?).ok()?;
    let prefix = std::str::from_utf8(parts.next()?).ok()?;
    Some((app.into(), env.into(), prefix.into()))
}

/// One registered schema.
#[derive(Clone)]
pub struct Registered {
    /// The schema as registered.
    pub text: JsonText,
    validator: Arc<jsonschema::Validator>,
}

/// Why the registry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A stored schema no longer compiles or its key is corrupt.
    #[error("stored schema {0} is unusable: {1}")]
    Corrupt(String, String),
}

/// Every registered schema, compiled, by `(app, env)` then prefix.
#[derive(Clone, Default)]
pub struct Registry {
    by_namespace: BTreeMap<(String, String), BTreeMap<String, Registered>>,
}

impl Registry {
    /// Loads and compiles every stored schema.
    pub fn load(backend: &impl Backend) -> Result<Self, SchemaError> {
        let mut r = Self::default();
        for (k, v) in backend.scan_prefix(&SCHEMA_PREFIX)? {
            let (app, env, prefix) =
                parse_key(&k).ok_or_else(|| SchemaError::Corrupt(hex_key(&k), "bad key".into()))?;
            let text = String::from_utf8(v).map_err(|_| {
                SchemaError::Corrupt(format!("{app}/{env}/{prefix}"), "not UTF-8".into())
            })?;
            let validator = compile(&text)
                .map_err(|e| SchemaError::Corrupt(format!("{app}/{env}/{prefix}"), e))?;
            r.insert(&app, &env, &prefix, text.into(), validator);
        }
        Ok(r)
    }

    fn insert(
        &mut self,
        app: &str,
        env: &str,
        prefix: &str,
        text: JsonText,
        validator: jsonschema::Validator,
    ) {
        self.by_namespace
            .entry((app.to_string(), env.to_string()))
            .or_default()
            .insert(
                prefix.to_string(),
                Registered {
                    text,
                    validator: Arc::new(validator),
                },
            );
    }

    /// The schema registered for exactly this prefix.
    pub fn get(&self, app: &str, env: &str, prefix: &str) -> Option<&Registered> {
        self.by_namespace
            .get(&(app.to_string(), env.to_string()))?
            .get(prefix)
    }

    /// Every schema of `(app, env)`, by prefix.
    pub fn namespace(&self, app: &str, env: &str) -> impl Iterator<Item = (&String, &Registered)> {
        self.by_namespace
            .get(&(app.to_string(), env.to_string()))
            .into_iter()
            .flatten()
    }

    /// Checks `value` (JSON text) written at `a` against every schema whose prefix `a.key`
    /// starts with.
    pub fn check(&self, a: &Address, value: &str) -> Result<(), Violation> {
        if a.is_internal() || meridian_protocol::secrets::is_sealed_text(value) {
            // Flag records are checked against flagd's schemas when they are written, and a
            // secret's value before it is sealed.
            return Ok(());
        }
        let Some(schemas) = self.by_namespace.get(&(a.app.clone(), a.env.clone())) else {
            return Ok(());
        };
        let mut parsed: Option<Value> = None;
        for (prefix, s) in schemas
            .iter()
            .filter(|(p, _)| a.key.starts_with(p.as_str()))
        {
            let v = match &parsed {
                Some(v) => v,
                None => parsed.insert(serde_json::from_str(value).map_err(|e| Violation {
                    prefix: prefix.clone(),
                    path: String::new(),
                    rule: String::new(),
                    message: format!("the value is not JSON: {e}"),
                })?),
            };
            if let Some(v) = first_violation(&s.validator, prefix, v) {
                return Err(v);
            }
        }
        Ok(())
    }

    /// Registers (or replaces) a schema: the writes that store it, and the registry updated.
    pub fn put(
        &mut self,
        app: &str,
        env: &str,
        prefix: &str,
        text: JsonText,
        validator: jsonschema::Validator,
    ) -> Write {
        let w = (schema_key(app, env, prefix), Some(text.as_bytes().to_vec()));
        self.insert(app, env, prefix, text, validator);
        w
    }

    /// Removes a schema; `None` if there was none.
    pub fn remove(&mut self, app: &str, env: &str, prefix: &str) -> Option<Write> {
        let ns = self
            .by_namespace
            .get_mut(&(app.to_string(), env.to_string()))?;
        ns.remove(prefix)?;
        Some((schema_key(app, env, prefix), None))
    }
}

/// Which of `entries` (key, JSON text) `validator` refuses, with why.
pub fn violations<'a>(
    validator: &jsonschema::Validator,
    prefix: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, Violation)> {
    // Flag records and data keys are not configuration, and a secret's value was checked
    // before it was sealed.
    entries
        .filter(|(k, text)| {
            k.starts_with(prefix)
                && !meridian_protocol::addr::is_internal_record(k)
                && !meridian_protocol::secrets::is_sealed_text(text)
        })
        .filter_map(|(k, text)| {
            let value: Value = serde_json::from_str(text).ok()?;
            first_violation(validator, prefix, &value).map(|v| (k.to_string(), v))
        })
        .collect()
}

fn hex_key(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_store::MemBackend;

    const POOL: &str = r#"{"type":"object","properties":{"max":{"type":"integer","maximum":100}},"required":["max"]}"#;

    #[test]
    fn writes_under_a_prefix_are_checked_and_violations_name_path_and_rule() {
        let mut b = MemBackend::new();
        let mut r = Registry::default();
        let w = r.put("pay", "prod", "db.", POOL.into(), compile(POOL).unwrap());
        b.apply(vec![w]).unwrap();
        let at = |k: &str| Address::parse("pay", "prod", k).unwrap();
        assert!(r.check(&at("db.pool"), r#"{"max":10}"#).is_ok());
        let v = r.check(&at("db.pool"), r#"{"max":1000}"#).unwrap_err();
        assert_eq!(v.path, "/max");
        assert!(v.rule.ends_with("/maximum"), "{v:?}");
        let v = r.check(&at("db.pool"), r#"{"min":1}"#).unwrap_err();
        assert!(v.rule.ends_with("/required"), "{v:?}");
        // Outside the prefix, or in another namespace: not checked.
        assert!(r.check(&at("cache.size"), "1").is_ok());
        assert!(
            r.check(&Address::parse("pay", "dev", "db.pool").unwrap(), "1")
                .is_ok()
        );
        // Reloaded from the backend, the registry checks the same.
        let again = Registry::load(&b).unwrap();
        assert!(again.check(&at("db.x"), "1").is_err());
        assert!(compile(r#"{"type": 12}"#).is_err());
        assert!(compile("not json").is_err());
    }
}
