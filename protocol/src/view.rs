//! Read-time views of a state, the same on every origin node and edge: hierarchical resolution
//! (`app/env` > `app/_` > `_/env` > `_/_`, DESIGN §3) and `${key}` templates.
//!
//! Templates: a string anywhere inside a JSON value may reference another key of the same
//! environment as `${key}`; the key is looked up through the same hierarchy as the value being
//! read. A string that is exactly one reference becomes the referenced value, whatever its
//! type; a reference inside a longer string is replaced by the referenced string's text, or by
//! the JSON text of any other value. `$${` is a literal `${`. References resolve recursively,
//! at most [`MAX_TEMPLATE_DEPTH`] deep and [`MAX_TEMPLATE_REFERENCES`] in all per read; a
//! cycle, a missing key, or a malformed reference is an error naming the chain of keys, never
//! an empty string.

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
            for (k, entry) in ns.iter().filter(|(_, e)| !e.is_tombstone()) {
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
    done: HashMap<String, Value>,
    expanded: usize,
}

impl<'a> Renderer<'a> {
    /// A renderer for reads of `(app, env)`.
    pub fn new(state: &'a CacheState, app: &'a str, env: &'a str) -> Self {
        Self {
            state,
            app,
            env,
            done: HashMap::new(),
            expanded: 0,
        }
    }

    /// The value of `key` (JSON text `text`) with its references resolved: the text itself
    /// when it has none.
    pub fn render<'t>(&mut self, key: &str, text: &'t str) -> Result<Cow<'t, str>, TemplateError> {
        if !text.contains("${") {
            return Ok(Cow::Borrowed(text));
        }
        let mut chain = vec![key.to_string()];
        let value = self.render_text(&mut chain, text)?;
        Ok(Cow::Owned(value.to_string()))
    }

    fn render_text(&mut self, chain: &mut Vec<String>, text: &str) -> Result<Value, TemplateError> {
        let key = chain.last().cloned().unwrap_or_default();
        let mut value: Value =
            serde_json::from_str(text).map_err(|_| TemplateError::NotJson(key))?;
        if text.contains("${") {
            self.render_value(chain, &mut value)?;
        }
        Ok(value)
    }

    fn render_value(
        &mut self,
        chain: &mut Vec<String>,
        value: &mut Value,
    ) -> Result<(), TemplateError> {
        match value {
            Value::String(s) if s.contains("${") => {
                *value = self.render_string(chain, s)?;
                Ok(())
            }
            Value::Array(items) => items
                .iter_mut()
                .try_for_each(|v| self.render_value(chain, v)),
            Value::Object(map) => map
                .values_mut()
                .try_for_each(|v| self.render_value(chain, v)),
            _ => Ok(()),
        }
    }

    fn render_string(&mut self, chain: &mut Vec<String>, s: &str) -> Result<Value, TemplateError> {
        let parts = parse(chain.last().map_or("", |k| k.as_str()), s)?;
        if let [Part::Ref(name)] = parts.as_slice() {
            return self.reference(chain, name);
        }
        let mut out = String::with_capacity(s.len());
        for part in parts {
            match part {
                Part::Text(t) => out.push_str(&t),
                Part::Ref(name) => match self.reference(chain, &name)? {
                    Value::String(t) => out.push_str(&t),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(Value::String(out))
    }

    fn reference(&mut self, chain: &mut Vec<String>, name: &str) -> Result<Value, TemplateError> {
        self.expanded += 1;
        if self.expanded > MAX_TEMPLATE_REFERENCES {
            return Err(TemplateError::TooMany);
        }
        if chain.iter().any(|k| k == name) {
            let mut chain = chain.clone();
            chain.push(name.to_string());
            return Err(TemplateError::Cycle { chain });
        }
        if let Some(v) = self.done.get(name) {
            return Ok(v.clone());
        }
        if chain.len() > MAX_TEMPLATE_DEPTH {
            let mut chain = chain.clone();
            chain.push(name.to_string());
            return Err(TemplateError::TooDeep { chain });
        }
        let Some(found) = lookup(self.state, self.app, self.env, name) else {
            return Err(TemplateError::Missing {
                chain: chain.clone(),
                missing: name.to_string(),
            });
        };
        let text = found.entry.value.as_deref().unwrap_or("null");
        chain.push(name.to_string());
        let rendered = self.render_text(chain, text);
        chain.pop();
        let rendered = rendered?;
        self.done.insert(name.to_string(), rendered.clone());
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
        validate_key(name).map_err(|e| malformed(&rest[i..i + 3 + end], e.to_string()))?;
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
