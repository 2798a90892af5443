//! Read-time views of a state, the same on every origin node and edge: hierarchical resolution
//! (`app/env` > `app/_` > `_/env` > `_/_`, DESIGN §3) and `${key}` templates.
//!
//! Templates: a string anywhere inside a JSON value may reference another key of the same
//! environment as `${key}`; the key is looked up through the same hierarchy as the value being
//! read. A string that is exactly one reference becomes the referenced value, whatever its
//! type; a reference inside a longer string is replaced by the referenced string's text, or by
//! the JSON text of any other value. `$${` is a literal `${`. References resolve recursively,
//! at most [`MAX_TEMPLATE_DEPTH`] deep and [`MAX_TEMPLATE_REFERENCES`] in all per read. The
//! resolved value of one key is at most the value limit in bytes (1 MiB by default) and one read
//! expands at most [`MAX_TEMPLATE_READ_BYTES`] in all: the size is counted as references are
//! substituted, so a key referencing another eight times per level, seven levels deep, stops at
//! the second substitution instead of building terabytes. A cycle, a missing key, a malformed
//! reference or an oversize result is an error naming the chain of keys, never an empty string.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::addr::{WILDCARD, validate_key};
use crate::crdt::CacheState;
use crate::model::EntryState;

/// How deep references may nest (a value referencing a value referencing …).
pub const MAX_TEMPLATE_DEPTH: usize = 8;
/// How many references one read may expand in all (a bound on fan-out).
pub const MAX_TEMPLATE_REFERENCES: usize = 10_000;
/// How many bytes one read (of one key or a whole configuration) may substitute in all.
pub const MAX_TEMPLATE_READ_BYTES: usize = 64 << 20;

/// Which level of the hierarchy a resolved key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `app/env` itself.
    AppEnv,
    /// `app/_`: the app's default for every environment.
    App,
    /// `_/env`: the environment's default for every app.
    Env,
    /// `_/_`: the global default.
    Global,
}

impl Level {
    /// Most specific first.
    pub const ALL: [Level; 4] = [Level::AppEnv, Level::App, Level::Env, Level::Global];

    /// The namespace this level names for `(app, env)`.
    pub fn namespace<'a>(self, app: &'a str, env: &'a str) -> (&'a str, &'a str) {
        match self {
            Level::AppEnv => (app, env),
            Level::App => (app, WILDCARD),
            Level::Env => (WILDCARD, env),
            Level::Global => (WILDCARD, WILDCARD),
        }
    }

    /// `app/env`, `app/_`, `_/env` or `_/_`, spelled out for `(app, env)`.
    pub fn label(self, app: &str, env: &str) -> String {
        let (a, e) = self.namespace(app, env);
        format!("{a}/{e}")
    }
}

/// A key as resolved for `(app, env)`: its live entry and the level it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The live entry.
    pub entry: &'a EntryState,
    /// Where it came from.
    pub level: Level,
}

/// The most specific live entry of `key` for `(app, env)`.
pub fn lookup<'a>(state: &'a CacheState, app: &str, env: &str, key: &str) -> Option<Resolved<'a>> {
    Level::ALL.into_iter().find_map(|level| {
        let (a, e) = level.namespace(app, env);
        state
            .get_live(a, e, key)
            .map(|entry| Resolved { entry, level })
    })
}

/// Every live key of `(app, env)` after resolution, sorted by key.
pub fn resolve<'a>(state: &'a CacheState, app: &str, env: &str) -> BTreeMap<&'a str, Resolved<'a>> {
    let mut out = BTreeMap::new();
    // Least specific first, so that more specific levels overwrite.
    for level in Level::ALL.into_iter().rev() {
        let (a, e) = level.namespace(app, env);
        // `_/_` is visited once even when app or env is itself `_`.
        if let Some(ns) = state.namespace(a, e) {
            // Flag records belong to the flag set, not to the configuration.
            let live = ns
                .iter()
                .filter(|(k, e)| !e.is_tombstone() && !crate::addr::is_internal_record(k));
            for (k, entry) in live {
                out.insert(k.as_str(), Resolved { entry, level });
            }
        }
    }
    out
}

/// Why a template did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A referenced key has no value at any level.
    #[error("`${{{missing}}}` (referenced by {}) has no value in this environment", .chain.join(" -> "))]
    Missing {
        /// The keys being resolved, outermost first.
        chain: Vec<String>,
        /// The key that is missing.
        missing: String,
    },
    /// A key references itself, directly or through others.
    #[error("reference cycle: {}", .chain.join(" -> "))]
    Cycle {
        /// The cycle, ending with the key that closes it.
        chain: Vec<String>,
    },
    /// References nest deeper than [`MAX_TEMPLATE_DEPTH`].
    #[error("references nest deeper than {MAX_TEMPLATE_DEPTH}: {}", .chain.join(" -> "))]
    TooDeep {
        /// The chain of keys.
        chain: Vec<String>,
    },
    /// More than [`MAX_TEMPLATE_REFERENCES`] references in one read.
    #[error("more than {MAX_TEMPLATE_REFERENCES} references in one read")]
    TooMany,
    /// A resolved value would exceed the value limit, or the read [`MAX_TEMPLATE_READ_BYTES`].
    #[error("resolving {} gives more than {limit_bytes} bytes", .chain.join(" -> "))]
    TooLarge {
        /// The keys being resolved when the limit was crossed, outermost first.
        chain: Vec<String>,
        /// The limit crossed.
        limit_bytes: usize,
    },
    /// A referenced key the reader may not read.
    #[error("`${{{key}}}` (referenced by {}) is not readable with this token", .chain.join(" -> "))]
    NotReadable {
        /// The keys being resolved, outermost first.
        chain: Vec<String>,
        /// The key the reader may not read.
        key: String,
    },
    /// A `${` without a closing `}`, or a reference that is not a valid key.
    #[error("{key}: malformed reference `{text}`: {why}")]
    Malformed {
        /// The key whose value holds it.
        key: String,
        /// The offending text.
        text: String,
        /// What is wrong.
        why: String,
    },
    /// A reference to a secret that does not resolve for this reader: `${key}` of a secret
    /// (secrets are referenced as `${secret:key}`), `${secret:key}` of a plain value, or of a
    /// secret the reader may not reveal.
    #[error("`${{{key}}}` (referenced by {}) {why}", .chain.join(" -> "))]
    Secret {
        /// The keys being resolved, outermost first.
        chain: Vec<String>,
        /// The reference.
        key: String,
        /// Why it does not resolve.
        why: String,
    },
    /// A stored value is not JSON (cannot happen for values the origin accepted).
    #[error("{0}: stored value is not JSON")]
    NotJson(String),
}

/// Renders templates for reads of `(app, env)`; remembers what it rendered, so a config read
/// renders each key once.
pub struct Renderer<'a> {
    state: &'a CacheState,
    app: &'a str,
    env: &'a str,
    /// Rendered keys with (an upper bound of) their size in bytes of JSON text.
    done: HashMap<String, (Value, usize)>,
    expanded: usize,
    /// Bytes substituted so far in this read.
    expanded_bytes: usize,
    max_value_bytes: usize,
    visible: Option<Visible<'a>>,
    secrets: Option<SecretOpener<'a>>,
}

/// Opens the secret at `(app, env, key)` (its entry given) for a `${secret:key}` reference:
/// its value as JSON text, or why the reader may not have it.
pub type SecretOpener<'a> =
    &'a (dyn Fn(&str, &str, &str, &EntryState) -> Result<String, String> + Sync);

/// How a template names a secret: `${secret:key}`.
pub const SECRET_REFERENCE: &str = "secret:";

/// Whether the reader may read the key `(app, env, key)`; a reference to a key it may not read
/// is an error, so that a template never reveals what the reader's token does not cover.
pub type Visible<'a> = &'a (dyn Fn(&str, &str, &str) -> bool + Sync);

/// The size counted for one value being rendered: its own text plus what was substituted.
struct Budget {
    bytes: usize,
}

impl<'a> Renderer<'a> {
    /// A renderer for reads of `(app, env)`; a resolved value may be at most the default value
    /// limit.
    pub fn new(state: &'a CacheState, app: &'a str, env: &'a str) -> Self {
        Self {
            state,
            app,
            env,
            done: HashMap::new(),
            expanded: 0,
            expanded_bytes: 0,
            max_value_bytes: crate::model::DEFAULT_MAX_VALUE_BYTES,
            visible: None,
            secrets: None,
        }
    }

    /// References resolve only to keys `visible` accepts.
    pub fn with_visibility(mut self, visible: Visible<'a>) -> Self {
        self.visible = Some(visible);
        self
    }

    /// `${secret:key}` references resolve through `opener` (without one they do not resolve).
    pub fn with_secrets(mut self, opener: Option<SecretOpener<'a>>) -> Self {
        self.secrets = opener;
        self
    }

    /// Resolved values may be at most `max_value_bytes`.
    pub fn with_max_value_bytes(mut self, max_value_bytes: usize) -> Self {
        self.max_value_bytes = max_value_bytes;
        self
    }

    /// Counts `bytes` substituted into the value `chain` is resolving.
    fn spend(
        &mut self,
        chain: &[String],
        budget: &mut Budget,
        bytes: usize,
    ) -> Result<(), TemplateError> {
        budget.bytes = budget.bytes.saturating_add(bytes);
        self.expanded_bytes = self.expanded_bytes.saturating_add(bytes);
        let limit_bytes = if budget.bytes > self.max_value_bytes {
            self.max_value_bytes
        } else if self.expanded_bytes > MAX_TEMPLATE_READ_BYTES {
            MAX_TEMPLATE_READ_BYTES
        } else {
            return Ok(());
        };
        Err(TemplateError::TooLarge {
            chain: chain.to_vec(),
            limit_bytes,
        })
    }

    /// The value of `key` (JSON text `text`) with its references resolved: the text itself
    /// when it has none.
    pub fn render<'t>(&mut self, key: &str, text: &'t str) -> Result<Cow<'t, str>, TemplateError> {
        if !text.contains("${") {
            return Ok(Cow::Borrowed(text));
        }
        let mut chain = vec![key.to_string()];
        let (value, _) = self.render_text(&mut chain, text)?;
        Ok(Cow::Owned(value.to_string()))
    }

    /// `text` rendered, with an upper bound of its size.
    fn render_text(
        &mut self,
        chain: &mut Vec<String>,
        text: &str,
    ) -> Result<(Value, usize), TemplateError> {
        let key = chain.last().cloned().unwrap_or_default();
        let mut value: Value =
            serde_json::from_str(text).map_err(|_| TemplateError::NotJson(key))?;
        let mut budget = Budget { bytes: text.len() };
        if text.contains("${") {
            self.render_value(chain, &mut budget, &mut value)?;
        }
        Ok((value, budget.bytes))
    }

    fn render_value(
        &mut self,
        chain: &mut Vec<String>,
        budget: &mut Budget,
        value: &mut Value,
    ) -> Result<(), TemplateError> {
        match value {
            Value::String(s) if s.contains("${") => {
                *value = self.render_string(chain, budget, s)?;
                Ok(())
            }
            Value::Array(items) => items
                .iter_mut()
                .try_for_each(|v| self.render_value(chain, budget, v)),
            Value::Object(map) => map
                .values_mut()
                .try_for_each(|v| self.render_value(chain, budget, v)),
            _ => Ok(()),
        }
    }

    fn render_string(
        &mut self,
        chain: &mut Vec<String>,
        budget: &mut Budget,
        s: &str,
    ) -> Result<Value, TemplateError> {
        let parts = parse(chain.last().map_or("", |k| k.as_str()), s)?;
        if let [Part::Ref(name)] = parts.as_slice() {
            return self.reference(chain, budget, name);
        }
        let mut out = String::with_capacity(s.len());
        for part in parts {
            match part {
                Part::Text(t) => out.push_str(&t),
                Part::Ref(name) => match self.reference(chain, budget, &name)? {
                    Value::String(t) => out.push_str(&t),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(Value::String(out))
    }

    /// The value `name` resolves to; its size is counted against `budget` before it is
    /// copied.
    fn reference(
        &mut self,
        chain: &mut Vec<String>,
        budget: &mut Budget,
        name: &str,
    ) -> Result<Value, TemplateError> {
        self.expanded += 1;
        if self.expanded > MAX_TEMPLATE_REFERENCES {
            return Err(TemplateError::TooMany);
        }
        if chain.iter().any(|k| k == name) {
            let mut chain = chain.clone();
            chain.push(name.to_string());
            return Err(TemplateError::Cycle { chain });
        }
        if let Some((_, bytes)) = self.done.get(name) {
            let bytes = *bytes;
            self.spend(chain, budget, bytes)?;
            return Ok(self
                .done
                .get(name)
                .map(|(v, _)| v.clone())
                .unwrap_or_default());
        }
        if chain.len() > MAX_TEMPLATE_DEPTH {
            let mut chain = chain.clone();
            chain.push(name.to_string());
            return Err(TemplateError::TooDeep { chain });
        }
        let (secret_ref, name) = match name.strip_prefix(SECRET_REFERENCE) {
            Some(key) => (true, key),
            None => (false, name),
        };
        let secret_error = |chain: &[String], why: &str| TemplateError::Secret {
            chain: chain.to_vec(),
            key: if secret_ref {
                format!("{SECRET_REFERENCE}{name}")
            } else {
                name.to_string()
            },
            why: why.to_string(),
        };
        let Some(found) = lookup(self.state, self.app, self.env, name) else {
            return Err(TemplateError::Missing {
                chain: chain.clone(),
                missing: name.to_string(),
            });
        };
        if let Some(visible) = self.visible {
            let (app, env) = found.level.namespace(self.app, self.env);
            if !visible(app, env, name) {
                return Err(TemplateError::NotReadable {
                    chain: chain.clone(),
                    key: name.to_string(),
                });
            }
        }
        let text = found.entry.value.as_deref().unwrap_or("null");
        let sealed = crate::secrets::is_sealed_text(text);
        if sealed != secret_ref {
            return Err(secret_error(
                chain,
                if sealed {
                    "is a secret: reference it as ${secret:key}"
                } else {
                    "is not a secret"
                },
            ));
        }
        if sealed {
            let opener = self
                .secrets
                .ok_or_else(|| secret_error(chain, "is not revealed in this read"))?;
            let (app, env) = found.level.namespace(self.app, self.env);
            let plain =
                opener(app, env, name, found.entry).map_err(|why| secret_error(chain, &why))?;
            let value: Value = serde_json::from_str(&plain)
                .map_err(|_| secret_error(chain, "did not open to JSON"))?;
            self.spend(chain, budget, plain.len())?;
            self.done.insert(
                format!("{SECRET_REFERENCE}{name}"),
                (value.clone(), plain.len()),
            );
            return Ok(value);
        }
        chain.push(name.to_string());
        let rendered = self.render_text(chain, text);
        chain.pop();
        let (rendered, bytes) = rendered?;
        self.spend(chain, budget, bytes)?;
        self.done
            .insert(name.to_string(), (rendered.clone(), bytes));
        Ok(rendered)
    }
}

enum Part {
    Text(String),
    Ref(String),
}

/// Splits a string into literal text and `${key}` references (`$${` is a literal `${`).
fn parse(key: &str, s: &str) -> Result<Vec<Part>, TemplateError> {
    let malformed = |text: &str, why: String| TemplateError::Malformed {
        key: key.to_string(),
        text: text.to_string(),
        why,
    };
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            // `$${`: a literal `${`.
            text.push_str(&rest[..i - 1]);
            text.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        text.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(malformed(&rest[i..], "no closing `}`".into()));
        };
        let name = &after[..end];
        validate_key(name.strip_prefix(SECRET_REFERENCE).unwrap_or(name))
            .map_err(|e| malformed(&rest[i..i + 3 + end], e.to_string()))?;
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text)));
        }
        parts.push(Part::Ref(name.to_string()));
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Address;
    use crate::model::{Revision, Version};

    fn state(entries: &[(&str, &str, &str, &str)]) -> CacheState {
        let mut s = CacheState::new();
        for (i, (app, env, key, value)) in entries.iter().enumerate() {
            let address = Address::parse(app, env, key).unwrap();
            s.merge_entry(
                &address,
                EntryState {
                    version: Version(1),
                    revision: Revision(i as u64 + 1),
                    value: Some((*value).into()),
                },
            );
        }
        s
    }

    fn render(s: &CacheState, key: &str) -> Result<String, TemplateError> {
        let found = lookup(s, "pay", "prod", key).unwrap();
        let text = found.entry.value.as_deref().unwrap();
        Renderer::new(s, "pay", "prod")
            .render(key, text)
            .map(|c| c.into_owned())
    }

    #[test]
    fn the_most_specific_level_wins_and_is_named() {
        let s = state(&[
            ("_", "_", "a", "1"),
            ("_", "_", "b", "1"),
            ("_", "_", "c", "1"),
            ("_", "_", "d", "1"),
            ("_", "prod", "b", "2"),
            ("_", "prod", "c", "2"),
            ("_", "prod", "d", "2"),
            ("pay", "_", "c", "3"),
            ("pay", "_", "d", "3"),
            ("pay", "prod", "d", "4"),
            ("other", "prod", "d", "5"),
            ("pay", "dev", "d", "6"),
        ]);
        let r = resolve(&s, "pay", "prod");
        let got: Vec<_> = r
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    v.entry.value.as_deref().unwrap(),
                    v.level.label("pay", "prod"),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "1", "_/_".to_string()),
                ("b", "2", "_/prod".to_string()),
                ("c", "3", "pay/_".to_string()),
                ("d", "4", "pay/prod".to_string()),
            ]
        );
        assert_eq!(lookup(&s, "pay", "prod", "c").unwrap().level, Level::App);
        assert!(lookup(&s, "pay", "prod", "zz").is_none());
    }

    #[test]
    fn references_resolve_whole_and_inside_strings() {
        let s = state(&[
            ("pay", "prod", "host", "\"db.internal\""),
            ("_", "_", "port", "5432"),
            ("pay", "prod", "pool", "{\"size\":8}"),
            ("pay", "prod", "url", "\"postgres://${host}:${port}/pay\""),
            (
                "pay",
                "prod",
                "cfg",
                "{\"pool\":\"${pool}\",\"url\":\"${url}\",\"lit\":\"$${host}\"}",
            ),
        ]);
        assert_eq!(
            render(&s, "url").unwrap(),
            "\"postgres://db.internal:5432/pay\""
        );
        assert_eq!(
            render(&s, "cfg").unwrap(),
            r#"{"lit":"${host}","pool":{"size":8},"url":"postgres://db.internal:5432/pay"}"#
        );
        // A value without references is returned as stored.
        assert_eq!(render(&s, "pool").unwrap(), "{\"size\":8}");
    }

    #[test]
    fn cycles_missing_keys_depth_and_syntax_are_errors() {
        let s = state(&[
            ("pay", "prod", "a", "\"${b}\""),
            ("pay", "prod", "b", "\"x${a}\""),
            ("pay", "prod", "self", "\"${self}\""),
            ("pay", "prod", "m", "\"${nowhere}\""),
            ("pay", "prod", "open", "\"${host\""),
            ("pay", "prod", "bad", "\"${Not A Key}\""),
        ]);
        assert_eq!(
            render(&s, "a"),
            Err(TemplateError::Cycle {
                chain: vec!["a".into(), "b".into(), "a".into()]
            })
        );
        assert!(matches!(
            render(&s, "self"),
            Err(TemplateError::Cycle { .. })
        ));
        let missing = render(&s, "m").unwrap_err();
        assert_eq!(
            missing,
            TemplateError::Missing {
                chain: vec!["m".into()],
                missing: "nowhere".into()
            }
        );
        assert!(missing.to_string().contains("${nowhere}"), "{missing}");
        assert!(matches!(
            render(&s, "open"),
            Err(TemplateError::Malformed { .. })
        ));
        assert!(matches!(
            render(&s, "bad"),
            Err(TemplateError::Malformed { .. })
        ));

        // A chain longer than the depth limit.
        let mut entries = Vec::new();
        let names: Vec<String> = (0..=MAX_TEMPLATE_DEPTH + 1)
            .map(|i| format!("k{i}"))
            .collect();
        let values: Vec<String> = (0..=MAX_TEMPLATE_DEPTH + 1)
            .map(|i| format!("\"${{k{}}}\"", i + 1))
            .collect();
        for i in 0..=MAX_TEMPLATE_DEPTH + 1 {
            entries.push(("pay", "prod", names[i].as_str(), values[i].as_str()));
        }
        let s = state(&entries);
        assert!(matches!(
            render(&s, "k0"),
            Err(TemplateError::TooDeep { .. })
        ));
        // Exactly at the limit (the last referenced key holds a plain value) is fine.
        let mut entries: Vec<_> = entries[..MAX_TEMPLATE_DEPTH].to_vec();
        entries.push(("pay", "prod", names[MAX_TEMPLATE_DEPTH].as_str(), "1"));
        let s = state(&entries);
        assert_eq!(render(&s, "k0").unwrap(), "1");
    }

    #[test]
    fn resolved_size_is_bounded_as_references_are_substituted() {
        // Eight references per level, seven levels, over a value near the limit: 8^7 times it
        // without a bound. The second substitution at the lowest level already crosses it.
        let big = format!("\"{}\"", "x".repeat(1_000_000));
        let mut entries = vec![("pay", "prod", "l7".to_string(), big)];
        for level in 0..7 {
            let next = format!("l{}", level + 1);
            let refs = format!("\"{}\"", format!("${{{next}}}").repeat(8));
            entries.push(("pay", "prod", format!("l{level}"), refs));
        }
        let refs: Vec<(&str, &str, &str, &str)> = entries
            .iter()
            .map(|(a, e, k, v)| (*a, *e, k.as_str(), v.as_str()))
            .collect();
        let s = state(&refs);
        match render(&s, "l0") {
            Err(TemplateError::TooLarge { chain, limit_bytes }) => {
                assert_eq!(limit_bytes, crate::model::DEFAULT_MAX_VALUE_BYTES);
                assert_eq!(chain, ["l0", "l1", "l2", "l3", "l4", "l5", "l6"]);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // One substitution of the big value fits; whole references to it are counted too.
        assert_eq!(render(&s, "l7").unwrap().len(), 1_000_002);
        let s = state(&[
            ("pay", "prod", "big", refs[0].3),
            ("pay", "prod", "one", "\"${big}\""),
            ("pay", "prod", "two", "[\"${big}\", \"${big}\"]"),
        ]);
        assert_eq!(render(&s, "one").unwrap().len(), 1_000_002);
        assert!(matches!(
            render(&s, "two"),
            Err(TemplateError::TooLarge { .. })
        ));
    }

    #[test]
    fn fan_out_is_bounded() {
        // Each level references the next twice: 2^depth expansions without the memo.
        let refs = "\"${n1}${n1}${n1}${n1}\"";
        let s = state(&[
            ("pay", "prod", "n0", refs),
            ("pay", "prod", "n1", "\"${n2}${n2}${n2}${n2}\""),
            ("pay", "prod", "n2", "\"ab\""),
        ]);
        assert_eq!(render(&s, "n0").unwrap().len(), 2 * 16 + 2);
    }
}
