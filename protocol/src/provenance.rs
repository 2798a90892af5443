//! Provenance: who made a revision, when and why, carried inside the revision itself.
//!
//! The system entry `_meridian/revisions/last` holds the actor and reason of the newest
//! revision: a revision the origin commits from a request by someone else, or for another
//! reason, also writes it. Being one of the revision's changes, it is covered by the delta hash
//! the origin signs, reaches every edge with the revision (through the origin or a peer, which
//! cannot forge it), and lets an edge's watch say who changed a key and why without asking the
//! origin: a revision that does not write it has the provenance of the one before. So a stream
//! of writes by one service costs one extra change, not one per write.

use serde::{Deserialize, Serialize};

use crate::auth::SYSTEM_APP;
use crate::{Address, Delta};

/// The env of [`SYSTEM_APP`] that holds the entry.
pub const PROVENANCE_ENV: &str = "revisions";
/// The entry's key.
pub const PROVENANCE_KEY: &str = "last";
/// The most bytes the entry's change may take (actor, reason escaped, time, address).
pub const MAX_PROVENANCE_BYTES: usize = 4 * 1024;

/// Who made a revision and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The authenticated principal (`name#id`).
    pub actor: String,
    /// Why, if the request said.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The entry's address.
pub fn address() -> Address {
    Address {
        app: SYSTEM_APP.to_owned(),
        env: PROVENANCE_ENV.to_owned(),
        key: PROVENANCE_KEY.to_owned(),
    }
}

/// Whether `a` is the entry.
pub fn is_provenance(a: &Address) -> bool {
    a.app == SYSTEM_APP && a.env == PROVENANCE_ENV && a.key == PROVENANCE_KEY
}

impl Provenance {
    /// The entry's value (JSON text).
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The provenance `delta` writes, if it writes one that parses (else its revision has the
/// provenance of the one before).
pub fn of_delta(delta: &Delta) -> Option<Provenance> {
    delta
        .changes
        .iter()
        .find(|c| is_provenance(&c.address))
        .and_then(|c| c.value.as_deref())
        .and_then(parse)
}

/// The provenance an entry's value holds.
pub fn parse(value: &str) -> Option<Provenance> {
    serde_json::from_str(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, Revision, Version};

    #[test]
    fn a_delta_carries_its_provenance_as_one_of_its_changes() {
        let p = Provenance {
            actor: "alice#1".into(),
            reason: Some("bigger \"pool\"".into()),
        };
        let delta = Delta {
            revision: Revision(3),
            changes: vec![
                Change {
                    address: address(),
                    version: Version(2),
                    value: Some(p.to_json().into()),
                },
                Change {
                    address: Address::parse("pay", "prod", "pool").unwrap(),
                    version: Version(1),
                    value: Some("1".into()),
                },
            ],
        };
        assert_eq!(of_delta(&delta), Some(p.clone()));
        assert!(crate::auth::is_system_namespace(SYSTEM_APP, PROVENANCE_ENV));
        let none = Delta {
            changes: delta.changes[1..].to_vec(),
            ..delta
        };
        assert_eq!(of_delta(&none), None);
        let max = Provenance {
            actor: "a".repeat(128),
            reason: Some("\"".repeat(1024)),
        };
        assert!(
            crate::frame::change_bytes(&address(), max.to_json().len()) <= MAX_PROVENANCE_BYTES
        );
    }
}
