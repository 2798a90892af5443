//! Applied-config drift: which revision each service instance of an app/env runs, and whether
//! that is the current, an approved revision.
//!
//! This module owns the table of instance reports this node has heard (from edges, beside
//! their reports, and from services reporting to it directly), bounded in instances and in
//! time (an instance silent for a day is forgotten), and the
//! assessment of each instance against the signed history: `outdated` when a key it watches
//! (in its app/env or a level it inherits from) changed after the revision it runs; `unapproved`
//! when a protected key's value at that revision was written without an approved change
//! request (break-glass, or a write made while the key was not yet reviewed: values written
//! before their protection rule took its current form are not flagged); `ahead` when it claims a
//! revision this origin never made; `silent` when it has not reported for a while. The
//! assessment is pure; `crate::http::applied` gathers its facts.

use std::collections::{BTreeMap, BTreeSet};

use meridian_protocol::Address;
use meridian_protocol::applied::AppliedReport;
use meridian_protocol::auth::ProtectionRecord;
use serde::{Deserialize, Serialize};

/// Most instances remembered by one node; beyond it the longest-silent ones are forgotten.
pub const MAX_INSTANCES: usize = 100_000;
/// Default silence beyond which an instance is flagged (a watching client reports every 30 s).
pub const DEFAULT_SILENT_AFTER_MS: u64 = 120_000;
/// Silence after which an instance is forgotten (a replaced pod does not stay listed forever).
pub const FORGET_AFTER_MS: u64 = 24 * 3_600_000;

/// A report as heard, with the node that passed it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    /// The report.
    #[serde(flatten)]
    pub report: AppliedReport,
    /// The edge id (or `origin:<node>`) it came through.
    pub via: String,
}

type InstanceKey = (String, String, String);
/// Per key, the revisions at which it changed, oldest first.
pub type KeyChanges = BTreeMap<String, Vec<u64>>;

/// Every instance report this node has heard, the latest per instance.
#[derive(Debug, Default)]
pub struct AppliedTable {
    by_instance: BTreeMap<InstanceKey, Heard>,
    /// `(at_ms, instance)`, for forgetting the longest-silent first.
    by_age: BTreeSet<(u64, InstanceKey)>,
}

impl AppliedTable {
    /// Notes `report`, unless the instance's report held is newer.
    pub fn insert(&mut self, report: AppliedReport, via: String) {
        let key = (
            report.app.clone(),
            report.env.clone(),
            report.instance.clone(),
        );
        if let Some(old) = self.by_instance.get(&key) {
            if old.report.at_ms > report.at_ms {
                return;
            }
            self.by_age.remove(&(old.report.at_ms, key.clone()));
        }
        let cutoff = report.at_ms.saturating_sub(FORGET_AFTER_MS);
        self.by_age.insert((report.at_ms, key.clone()));
        self.by_instance.insert(key, Heard { report, via });
        while self.by_age.first().is_some_and(|(at, _)| *at < cutoff) {
            if let Some((_, forgotten)) = self.by_age.pop_first() {
                self.by_instance.remove(&forgotten);
            }
        }
        while self.by_instance.len() > MAX_INSTANCES {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_instance.remove(&oldest);
        }
    }

    /// The instances of `app/env`.
    pub fn of(&self, app: &str, env: &str) -> Vec<Heard> {
        let from = (app.to_owned(), env.to_owned(), String::new());
        self.by_instance
            .range(from..)
            .take_while(|((a, e, _), _)| a == app && e == env)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// How many instances are held.
    pub fn len(&self) -> usize {
        self.by_instance.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_instance.is_empty()
    }
}

/// Keeps, for each instance, the latest report among what several nodes heard.
pub fn merge(heard: impl IntoIterator<Item = Heard>) -> Vec<Heard> {
    let mut out: BTreeMap<String, Heard> = BTreeMap::new();
    for h in heard {
        match out.get(&h.report.instance) {
            Some(old) if old.report.at_ms >= h.report.at_ms => {}
            _ => {
                out.insert(h.report.instance.clone(), h);
            }
        }
    }
    out.into_values().collect()
}

/// What the origin knows that an assessment needs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The origin's revision.
    pub head: u64,
    /// For the app/env and each level it inherits from (`(app, env)` of the level), the
    /// revisions at which each key changed, oldest first.
    pub changes: Vec<((String, String), KeyChanges)>,
    /// The protection rules in force, each with the revision that gave it its current form.
    pub rules: Vec<(ProtectionRecord, u64)>,
    /// The revisions made by change requests applied with their approvals.
    pub approved: BTreeSet<u64>,
}

/// One instance, assessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The instance's name.
    pub instance: String,
    /// The revision it runs.
    pub revision: u64,
    /// The key prefix it watches.
    pub prefix: String,
    /// The newest revision that changed what it watches.
    pub current_revision: u64,
    /// Who reported it.
    pub reporter: String,
    /// The edge (or origin node) it reported through.
    pub via: String,
    /// Milliseconds since it last reported.
    pub last_report_ms: u64,
    /// `outdated`, `unapproved`, `ahead`, `silent`.
    pub flags: Vec<&'static str>,
}

impl Facts {
    /// The newest revision that changed a key starting with `prefix` (0: none did).
    pub fn current_revision(&self, prefix: &str) -> u64 {
        self.changes
            .iter()
            .flat_map(|(_, keys)| {
                keys.range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
            })
            .filter_map(|(_, revs)| revs.last().copied())
            .max()
            .unwrap_or(0)
    }

    /// Whether some protected key starting with `prefix` holds, at `revision`, a value
    /// written under its rule without an approved change.
    fn unapproved_at(&self, prefix: &str, revision: u64) -> bool {
        self.changes.iter().any(|((app, env), keys)| {
            keys.range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .any(|(key, revs)| {
                    let Some(written) = revs.iter().rev().find(|r| **r <= revision) else {
                        return false;
                    };
                    let Ok(address) = Address::parse(app, env, key) else {
                        return false;
                    };
                    !self.approved.contains(written)
                        && self
                            .rules
                            .iter()
                            .any(|(rule, since)| *since < *written && rule.covers(&address))
                })
        })
    }
}

/// Assesses each instance; `now_ms` on the same clock as the reports' `at_ms`.
pub fn assess(heard: &[Heard], facts: &Facts, now_ms: u64, silent_after_ms: u64) -> Vec<Row> {
    // Instances mostly share a few (prefix, revision) pairs: each is looked up once.
    let mut seen: BTreeMap<(&str, u64), (u64, bool)> = BTreeMap::new();
    heard
        .iter()
        .map(|h| {
            let r = &h.report;
            let (current, unapproved) = *seen.entry((&r.prefix, r.revision)).or_insert_with(|| {
                (
                    facts.current_revision(&r.prefix),
                    facts.unapproved_at(&r.prefix, r.revision),
                )
            });
            let last_report_ms = now_ms.saturating_sub(r.at_ms);
            let mut flags = Vec::new();
            if r.revision > facts.head {
                flags.push("ahead");
            } else if r.revision < current {
                flags.push("outdated");
            }
            if unapproved {
                flags.push("unapproved");
            }
            if last_report_ms > silent_after_ms {
                flags.push("silent");
            }
            Row {
                instance: r.instance.clone(),
                revision: r.revision,
                prefix: r.prefix.clone(),
                current_revision: current,
                reporter: r.reporter.clone(),
                via: h.via.clone(),
                last_report_ms,
                flags,
            }
        })
        .collect()
}

/// The levels `app/env` reads from, most specific first (`app/env`, `app/_`, `_/env`,
/// `_/_`), without repeats.
pub fn levels(app: &str, env: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (a, e) in [(app, env), (app, "_"), ("_", env), ("_", "_")] {
        if !out.iter().any(|(x, y)| x == a && y == e) {
            out.push((a.to_owned(), e.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(instance: &str, revision: u64, at_ms: u64) -> Heard {
        Heard {
            report: AppliedReport {
                app: "pay".into(),
                env: "prod".into(),
                prefix: String::new(),
                instance: instance.into(),
                revision,
                reporter: "svc#1".into(),
                at_ms,
            },
            via: "edge-a".into(),
        }
    }

    fn facts() -> Facts {
        let keys = |pairs: &[(&str, &[u64])]| {
            pairs
                .iter()
                .map(|(k, r)| (k.to_string(), r.to_vec()))
                .collect::<BTreeMap<_, _>>()
        };
        Facts {
            head: 20,
            changes: vec![
                (
                    ("pay".into(), "prod".into()),
                    // db.url: approved at 10, break-glass at 15, approved again at 17; web:
                    // plain writes, unprotected.
                    keys(&[("db.url", &[2, 10, 15, 17]), ("web.port", &[3, 12])]),
                ),
                (("pay".into(), "_".into()), keys(&[("shared", &[18])])),
            ],
            // The rule took its form at revision 5: db.url's value of revision 2 predates it.
            rules: vec![(
                serde_json::from_str(r#"{"resources":["pay/prod/db.*"],"approvals":1}"#).unwrap(),
                5,
            )],
            approved: [10, 17].into(),
        }
    }

    fn flags_of(instance: &str, revision: u64, prefix: &str) -> Vec<&'static str> {
        let mut h = heard(instance, revision, 1_000);
        h.report.prefix = prefix.into();
        assess(&[h], &facts(), 1_500, 10_000).remove(0).flags
    }

    #[test]
    fn each_instance_is_flagged_against_history() {
        // Current, approved (db.url of revision 17).
        assert!(flags_of("a", 18, "").is_empty());
        assert!(flags_of("a", 20, "").is_empty());
        // Behind an inherited level's change.
        assert_eq!(flags_of("b", 12, ""), ["outdated"]);
        // Behind, but only on keys it does not watch.
        assert!(flags_of("b", 12, "web.").is_empty());
        // Running the break-glass value.
        assert_eq!(flags_of("c", 15, "db."), ["outdated", "unapproved"]);
        assert_eq!(flags_of("c", 16, ""), ["outdated", "unapproved"]);
        // A value written before the rule took its form is not flagged.
        assert_eq!(flags_of("d", 4, "db."), ["outdated"]);
        // A revision the origin never made.
        assert_eq!(flags_of("e", 21, "web."), ["ahead"]);
        let silent = assess(&[heard("f", 20, 0)], &facts(), 20_000, 10_000);
        assert_eq!(silent[0].flags, ["silent"]);
        assert_eq!(silent[0].current_revision, 18);
        assert_eq!(silent[0].last_report_ms, 20_000);
    }

    #[test]
    fn the_table_keeps_each_instances_latest_and_forgets_the_longest_silent() {
        let mut t = AppliedTable::default();
        t.insert(heard("a", 5, 10).report, "e1".into());
        t.insert(heard("a", 4, 9).report, "e2".into());
        assert_eq!(t.of("pay", "prod")[0].report.revision, 5);
        t.insert(heard("a", 6, 11).report, "e2".into());
        assert_eq!(t.of("pay", "prod")[0].via, "e2");
        assert!(t.of("pay", "dev").is_empty());
        for i in 0..MAX_INSTANCES as u64 {
            t.insert(heard(&format!("i{i}"), 1, 100 + i).report, "e".into());
        }
        assert_eq!(t.len(), MAX_INSTANCES);
        // "a" (heard at 11) was the longest silent.
        assert!(t.of("pay", "prod").iter().all(|h| h.report.instance != "a"));
        // A report a day after the others: they are forgotten.
        t.insert(heard("late", 1, 200 + FORGET_AFTER_MS).report, "e".into());
        assert_eq!(
            t.len(),
            MAX_INSTANCES - 100 + 1,
            "i0..i99, heard more than a day before it, are forgotten"
        );
    }

    #[test]
    fn merging_keeps_the_latest_report_of_each_instance() {
        let merged = merge([heard("a", 1, 5), heard("b", 2, 5), heard("a", 3, 9)]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].report.revision, 3);
    }

    #[test]
    fn levels_do_not_repeat() {
        assert_eq!(levels("pay", "prod").len(), 4);
        assert_eq!(
            levels("_", "prod"),
            [("_".into(), "prod".into()), ("_".into(), "_".into())]
        );
        assert_eq!(levels("_", "_").len(), 1);
    }
}
