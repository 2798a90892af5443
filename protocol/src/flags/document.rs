//! The flagd document of one app/env and the records it is stored as.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::EntryState;

/// The key prefix of a flag's record: `_flag.<flag key>`.
pub const FLAG_PREFIX: &str = "_flag.";
/// The key of the record that holds a flag set's `$evaluators` and `metadata`.
pub const FLAGSET_KEY: &str = "_flagset";
/// The longest flag key, in bytes.
pub const MAX_FLAG_KEY_BYTES: usize = 128;

/// A flag key outside the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flag key {0:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*, at most 128 bytes")]
pub struct InvalidFlagKey(pub String);

/// Checks a flag key: ASCII letters of either case, digits, `_`, `.` and `-`, starting with a
/// letter or digit, at most [`MAX_FLAG_KEY_BYTES`] (flagd's examples, `myBoolFlag` or
/// `new-welcome-banner`, all fit).
pub fn validate_flag_key(key: &str) -> Result<(), InvalidFlagKey> {
    let bytes = key.as_bytes();
    let ok = match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_FLAG_KEY_BYTES
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(InvalidFlagKey(key.to_owned()))
    }
}

/// The record key of flag `flag`.
pub fn record_key(flag: &str) -> String {
    format!("{FLAG_PREFIX}{flag}")
}

/// The flag a record key holds, if it is a flag record.
pub fn flag_of_record(key: &str) -> Option<&str> {
    key.strip_prefix(FLAG_PREFIX)
        .filter(|flag| validate_flag_key(flag).is_ok())
}

/// Whether `key` is one of a flag set's records: a flag, the set's evaluators and metadata,
/// or a flag's rollout or scheduled change ([`super::rollout`]).
pub fn is_flag_record(key: &str) -> bool {
    key == FLAGSET_KEY
        || flag_of_record(key).is_some()
        || [
            super::rollout::ROLLOUT_PREFIX,
            super::rollout::SCHEDULE_PREFIX,
        ]
        .iter()
        .any(|p| {
            key.strip_prefix(p)
                .is_some_and(|f| validate_flag_key(f).is_ok())
        })
}

/// A flagd flag definition document, as flagd reads it from a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagDocument {
    /// Flags by key; each value is a flagd flag (`state`, `variants`, `defaultVariant`,
    /// `targeting`, `metadata`).
    pub flags: BTreeMap<String, Value>,
    /// Shared rules that targeting refers to with `{"$ref": "name"}`.
    #[serde(rename = "$evaluators", default, skip_serializing_if = "Map::is_empty")]
    pub evaluators: Map<String, Value>,
    /// Flag-set metadata, merged under each flag's own metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl FlagDocument {
    /// The value of the `_flagset` record, or `None` when the set has neither evaluators nor
    /// metadata (the record is then absent or deleted).
    pub fn flagset_value(&self) -> Option<Value> {
        if self.evaluators.is_empty() && self.metadata.is_empty() {
            return None;
        }
        let mut set = Map::new();
        if !self.evaluators.is_empty() {
            set.insert("$evaluators".into(), Value::Object(self.evaluators.clone()));
        }
        if !self.metadata.is_empty() {
            set.insert("metadata".into(), Value::Object(self.metadata.clone()));
        }
        Some(Value::Object(set))
    }

    /// The document held by the live records of a namespace (unparsable records are skipped:
    /// the origin validated every one before it committed it).
    pub fn from_namespace(namespace: &BTreeMap<String, EntryState>) -> Self {
        let mut document = Self::default();
        // Client keys start with a letter or digit; every record of the set starts with `_`.
        for (key, entry) in namespace.range("_".to_owned()..) {
            if !key.starts_with('_') {
                break;
            }
            let Some(text) = &entry.value else { continue };
            if key == FLAGSET_KEY {
                if let Ok(Value::Object(mut set)) = serde_json::from_str::<Value>(text) {
                    if let Some(Value::Object(e)) = set.remove("$evaluators") {
                        document.evaluators = e;
                    }
                    if let Some(Value::Object(m)) = set.remove("metadata") {
                        document.metadata = m;
                    }
                }
            } else if let Some(flag) = flag_of_record(key)
                && let Ok(value) = serde_json::from_str::<Value>(text)
            {
                document.flags.insert(flag.to_owned(), value);
            }
        }
        document
    }

    /// Whether the namespace holds any flag record, live or deleted.
    pub fn has_records(namespace: &BTreeMap<String, EntryState>) -> bool {
        namespace
            .range(FLAG_PREFIX.to_owned()..)
            .next()
            .is_some_and(|(k, _)| is_flag_record(k))
            || namespace.contains_key(FLAGSET_KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_keys_follow_the_grammar() {
        for ok in [
            "myBoolFlag",
            "new-welcome-banner",
            "a",
            "v2.checkout_flow",
            "9lives",
        ] {
            assert!(validate_flag_key(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_FLAG_KEY_BYTES + 1);
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "ä", long.as_str()] {
            assert!(validate_flag_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_are_recognised_and_never_client_keys() {
        assert_eq!(record_key("myFlag"), "_flag.myFlag");
        assert_eq!(flag_of_record("_flag.myFlag"), Some("myFlag"));
        assert_eq!(flag_of_record("_flag."), None);
        assert_eq!(flag_of_record("flag.x"), None);
        assert!(is_flag_record(FLAGSET_KEY));
        assert!(crate::addr::validate_key("_flag.x").is_err());
        assert!(crate::addr::validate_key(FLAGSET_KEY).is_err());
    }

    #[test]
    fn a_document_round_trips_through_its_records() {
        let document: FlagDocument = serde_json::from_value(serde_json::json!({
            "flags": {"b": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}},
            "$evaluators": {"rule": {"==": [1, 1]}},
            "metadata": {"team": "web"}
        }))
        .unwrap();
        let mut namespace = BTreeMap::new();
        let entry = |v: Value| EntryState {
            version: crate::Version(1),
            revision: crate::Revision(1),
            value: Some(v.to_string().into()),
        };
        namespace.insert("a.key".to_owned(), entry(Value::Bool(true)));
        namespace.insert(
            FLAGSET_KEY.to_owned(),
            entry(document.flagset_value().unwrap()),
        );
        for (k, v) in &document.flags {
            namespace.insert(record_key(k), entry(v.clone()));
        }
        assert!(FlagDocument::has_records(&namespace));
        assert_eq!(FlagDocument::from_namespace(&namespace), document);
    }
}
