//! Protected environments: rules, stored as `_meridian/protections/<name>`, that make every
//! write to the keys they cover go through a change request approved by others than its
//! author (four eyes). Whether an approver may count for a rule is the `approve` action on
//! the keys the rule covers, so "`payments/prod/db.*` needs the database team" is a rule on
//! that pattern plus a policy granting `approve` there to `group:dba`.

use serde::{Deserialize, Serialize};

use super::pattern::Pattern;
use super::policy::{MAX_DESCRIPTION_BYTES, MAX_RESOURCES, PolicyError};
use crate::Address;

/// Most approvals a rule may require.
pub const MAX_APPROVALS: u32 = 10;

/// A protection rule as stored (the value of `_meridian/protections/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectionRecord {
    /// The keys it protects (`payments/prod/*`, `payments/prod/db.*`).
    pub resources: Vec<Pattern>,
    /// How many approvals a change to them needs, never counting its author.
    pub approvals: u32,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ProtectionRecord {
    /// Checks the record's bounds.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.resources.is_empty() || self.resources.len() > MAX_RESOURCES {
            return Err(PolicyError::Text(
                "a protection needs 1 to 64 resource patterns",
            ));
        }
        if self.approvals == 0 || self.approvals > MAX_APPROVALS {
            return Err(PolicyError::Text("approvals must be between 1 and 10"));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
        {
            return Err(PolicyError::Text("description is longer than 512 bytes"));
        }
        Ok(())
    }

    /// Whether the rule protects `address`.
    pub fn covers(&self, address: &Address) -> bool {
        self.resources
            .iter()
            .any(|p| p.matches_key(&address.app, &address.env, &address.key))
    }
}

/// The protection rules of a state, by name (records that do not parse or validate are
/// skipped: they were refused when written).
pub fn protections<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, ProtectionRecord)> {
    records
        .into_iter()
        .filter_map(|(name, text)| {
            let record: ProtectionRecord = serde_json::from_str(text).ok()?;
            record.validate().ok()?;
            Some((name.to_owned(), record))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_covers_the_keys_of_its_patterns_only() {
        let rule: ProtectionRecord = serde_json::from_str(
            r#"{"resources":["payments/prod/db.*","_/prod/*"],"approvals":2}"#,
        )
        .unwrap();
        rule.validate().unwrap();
        let a = |app, env, key| Address::parse(app, env, key).unwrap();
        assert!(rule.covers(&a("payments", "prod", "db.url")));
        assert!(rule.covers(&a("_", "prod", "anything")));
        assert!(!rule.covers(&a("payments", "prod", "timeout")));
        assert!(!rule.covers(&a("payments", "staging", "db.url")));
    }

    #[test]
    fn bounds_are_checked() {
        for bad in [
            r#"{"resources":[],"approvals":1}"#,
            r#"{"resources":["a/b/*"],"approvals":0}"#,
            r#"{"resources":["a/b/*"],"approvals":11}"#,
        ] {
            let rule: ProtectionRecord = serde_json::from_str(bad).unwrap();
            assert!(rule.validate().is_err(), "{bad}");
        }
        assert!(
            serde_json::from_str::<ProtectionRecord>(
                r#"{"resources":["a/b/*"],"approvals":1,"x":1}"#
            )
            .is_err()
        );
    }
}
