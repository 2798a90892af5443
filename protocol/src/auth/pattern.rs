//! Resource patterns: `app/env/key` where each of app and env is a name, `_` or `*` (any), and
//! the key is exact, a prefix ending in `*` (`db.*`), or `*` (every key).

use serde::{Deserialize, Serialize};

use crate::addr::{MAX_KEY_BYTES, validate_app};

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not three `/`-separated parts, or a part that is neither `*` nor well formed.
    #[error(
        "resource pattern {0:?} must be app/env/key where app and env are a name, `_` or `*` and key is a key, a prefix ending in `*`, or `*`"
    )]
    Malformed(String),
}

/// One part of a pattern that names an app or env.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Name {
    Any,
    Exact(Box<str>),
}

impl Name {
    fn parse(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Self::Any);
        }
        // App and env share one grammar.
        validate_app(s).ok().map(|()| Self::Exact(s.into()))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(n) => **n == *name,
        }
    }

    /// Whether every name this matches, `other` matches too.
    fn within(&self, other: &Self) -> bool {
        match (self, other) {
            (_, Self::Any) => true,
            (Self::Any, Self::Exact(_)) => false,
            (Self::Exact(a), Self::Exact(b)) => a == b,
        }
    }
}

/// The key part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Keys {
    /// `*`: every key.
    Any,
    /// `p*`: every key starting with `p`.
    Prefix(Box<str>),
    /// One key.
    Exact(Box<str>),
}

fn key_chars(s: &str) -> bool {
    s.len() <= MAX_KEY_BYTES
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        })
}

/// A parsed resource pattern such as `payments/prod/db.*`, `_/_/*` or `*/staging/*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    app: Name,
    env: Name,
    keys: Keys,
    text: Box<str>,
}

impl Pattern {
    /// Parses and checks a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let bad = || PatternError::Malformed(text.chars().take(300).collect());
        let mut parts = text.split('/');
        let (Some(app), Some(env), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let app = Name::parse(app).ok_or_else(bad)?;
        let env = Name::parse(env).ok_or_else(bad)?;
        let keys = if key == "*" {
            Keys::Any
        } else if let Some(prefix) = key.strip_suffix('*') {
            if !key_chars(prefix) {
                return Err(bad());
            }
            Keys::Prefix(prefix.into())
        } else {
            if key.is_empty() || !key_chars(key) {
                return Err(bad());
            }
            Keys::Exact(key.into())
        };
        Ok(Self {
            app,
            env,
            keys,
            text: text.into(),
        })
    }

    /// `*/*/*`: every key of every namespace.
    pub fn everything() -> Self {
        Self {
            app: Name::Any,
            env: Name::Any,
            keys: Keys::Any,
            text: "*/*/*".into(),
        }
    }

    /// Whether the pattern covers some key of `app/env`.
    pub fn matches_namespace(&self, app: &str, env: &str) -> bool {
        self.app.matches(app) && self.env.matches(env)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern covers the key `app/env/key`.
    pub fn matches_key(&self, app: &str, env: &str, key: &str) -> bool {
        self.app.matches(app)
            && self.env.matches(env)
            && match &self.keys {
                Keys::Any => true,
                Keys::Prefix(p) => key.starts_with(&**p),
                Keys::Exact(k) => **k == *key,
            }
    }

    /// Whether the pattern covers every key of `app/env` that starts with `prefix`.
    pub fn covers_prefix(&self, app: &str, env: &str, prefix: &str) -> bool {
        self.app.matches(app)
            && self.env.matches(env)
            && match &self.keys {
                Keys::Any => true,
                Keys::Prefix(p) => prefix.starts_with(&**p),
                Keys::Exact(_) => false,
            }
    }

    /// The one app/env the pattern names, if it names both exactly.
    pub fn exact_namespace(&self) -> Option<(&str, &str)> {
        match (&self.app, &self.env) {
            (Name::Exact(a), Name::Exact(e)) => Some((a, e)),
            _ => None,
        }
    }

    /// Whether the pattern covers every key everywhere (`*/*/*`).
    pub fn is_everything(&self) -> bool {
        matches!(
            (&self.app, &self.env, &self.keys),
            (Name::Any, Name::Any, Keys::Any)
        )
    }

    /// Whether every key this pattern covers, `other` covers too (used to refuse granting more
    /// than one holds).
    pub fn within(&self, other: &Self) -> bool {
        self.app.within(&other.app)
            && self.env.within(&other.env)
            && match (&self.keys, &other.keys) {
                (_, Keys::Any) => true,
                (Keys::Any, _) => false,
                (Keys::Prefix(a) | Keys::Exact(a), Keys::Prefix(b)) => a.starts_with(&**b),
                (Keys::Prefix(_), Keys::Exact(_)) => false,
                (Keys::Exact(a), Keys::Exact(b)) => a == b,
            }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let p = Pattern::parse("payments/prod/db.*").unwrap();
        assert!(p.matches_key("payments", "prod", "db.url"));
        assert!(!p.matches_key("payments", "prod", "dbx"));
        assert!(!p.matches_key("payments", "staging", "db.url"));
        assert!(p.covers_prefix("payments", "prod", "db.pool."));
        assert!(!p.covers_prefix("payments", "prod", "d"));
        let all = Pattern::parse("*/*/*").unwrap();
        assert!(all.is_everything());
        assert!(p.within(&all) && !all.within(&p));
        let shared = Pattern::parse("_/_/*").unwrap();
        assert!(shared.matches_key("_", "_", "x") && !shared.matches_key("a", "_", "x"));
        for bad in [
            "", "a/b", "a/b/c/d", "A/b/c", "a/b/", "a/b/c*d/", "a/b/*x", "a/**/c",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
