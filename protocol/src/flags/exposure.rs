//! Exposure counts for experiments: how often each variant of each flag was served, as a
//! grow-only counter CRDT.
//!
//! Every edge counts its own evaluations ([`ExposureCounter`]) under a `boot` id drawn at
//! start, and reports its cumulative counts, never increments, beside each report to the
//! origin. The origin keeps, per `(edge, boot)` and key, the largest count it has heard
//! ([`ExposureLedger`]): merging by maximum is commutative, associative and idempotent, so
//! lost, repeated and reordered reports neither lose nor double-count an evaluation once any
//! later report arrives, and a restarted edge (a new boot id) starts a new counter rather
//! than resetting the old one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most entries one [`crate::FrameV1::Exposures`] carries; an edge with more rotates through
/// them across reports.
pub const MAX_EXPOSURE_ENTRIES: usize = 2048;
/// Most distinct keys one edge counts (evaluations of further keys are not counted).
pub const MAX_EXPOSURE_KEYS: usize = 100_000;
/// Most `(edge, boot)` sources the origin keeps counts of.
pub const MAX_EXPOSURE_SOURCES: usize = 100_000;

/// What is counted: a variant of a flag of an app/env (`variant` empty when the caller's
/// code default was served: disabled, no default variant, or an error).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExposureKey {
    /// App.
    pub app: String,
    /// Env.
    pub env: String,
    /// Flag key.
    pub flag: String,
    /// Variant served, or empty.
    pub variant: String,
}

/// One cumulative count on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureCount {
    /// What.
    pub key: ExposureKey,
    /// How many since the edge's boot.
    pub count: u64,
}

type Nested = BTreeMap<String, BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>>;

/// One edge's counts since its boot. Lookups borrow the names, so counting an evaluation of
/// a key seen before allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct ExposureCounter {
    counts: Nested,
    keys: usize,
    /// Where the next report starts when there are more keys than one frame carries.
    cursor: Option<ExposureKey>,
}

impl ExposureCounter {
    /// Counts `n` evaluations of `app/env/flag` that served `variant`. Returns false when the
    /// key is new and the counter already holds [`MAX_EXPOSURE_KEYS`].
    pub fn record(&mut self, app: &str, env: &str, flag: &str, variant: &str, n: u64) -> bool {
        if let Some(c) = self
            .counts
            .get_mut(app)
            .and_then(|e| e.get_mut(env))
            .and_then(|f| f.get_mut(flag))
            .and_then(|v| v.get_mut(variant))
        {
            *c = c.saturating_add(n);
            return true;
        }
        if self.keys >= MAX_EXPOSURE_KEYS {
            return false;
        }
        self.keys += 1;
        *self
            .counts
            .entry(app.to_owned())
            .or_default()
            .entry(env.to_owned())
            .or_default()
            .entry(flag.to_owned())
            .or_default()
            .entry(variant.to_owned())
            .or_default() += n;
        true
    }

    /// Every count, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (ExposureKey, u64)> + '_ {
        self.counts.iter().flat_map(|(app, envs)| {
            envs.iter().flat_map(move |(env, flags)| {
                flags.iter().flat_map(move |(flag, variants)| {
                    variants.iter().map(move |(variant, n)| {
                        (
                            ExposureKey {
                                app: app.clone(),
                                env: env.clone(),
                                flag: flag.clone(),
                                variant: variant.clone(),
                            },
                            *n,
                        )
                    })
                })
            })
        })
    }

    /// The cumulative counts for the next report: all of them, or the next
    /// [`MAX_EXPOSURE_ENTRIES`] in key order after the previous report's last (wrapping).
    pub fn report(&mut self) -> Vec<ExposureCount> {
        let after = self.cursor.take();
        let all = || self.iter().map(|(key, count)| ExposureCount { key, count });
        if self.keys <= MAX_EXPOSURE_ENTRIES {
            return all().collect();
        }
        let mut out: Vec<ExposureCount> = all()
            .filter(|c| after.as_ref().is_none_or(|a| c.key > *a))
            .take(MAX_EXPOSURE_ENTRIES)
            .collect();
        if out.len() < MAX_EXPOSURE_ENTRIES {
            let more = MAX_EXPOSURE_ENTRIES - out.len();
            out.extend(all().take(more));
        }
        let last = out.last().map(|c| c.key.clone());
        self.cursor = last;
        out
    }
}

/// The edge a count came from: its id and the boot it was counted in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The edge id.
    pub edge: String,
    /// Its boot id.
    pub boot: u64,
}

/// Counts by source, merged by maximum: the origin's view of every edge's counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureLedger {
    sources: BTreeMap<Source, (String, BTreeMap<ExposureKey, u64>)>,
}

/// Totals of one flag: per variant, and per region and variant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExposureTotals {
    /// Variant → evaluations.
    pub variants: BTreeMap<String, u64>,
    /// Region → variant → evaluations.
    pub regions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every evaluation.
    pub total: u64,
}

impl ExposureLedger {
    /// Merges what `source` (of `region`) reported: each count raised to the larger of the
    /// two. Returns the entries that grew, with their new values (what is worth committing).
    pub fn merge(
        &mut self,
        source: &Source,
        region: &str,
        counts: impl IntoIterator<Item = ExposureCount>,
    ) -> Vec<ExposureCount> {
        if !self.sources.contains_key(source) && self.sources.len() >= MAX_EXPOSURE_SOURCES {
            return Vec::new();
        }
        let (r, known) = self
            .sources
            .entry(source.clone())
            .or_insert_with(|| (region.to_owned(), BTreeMap::new()));
        if r.is_empty() {
            *r = region.to_owned();
        }
        let mut grew = Vec::new();
        for c in counts {
            if !known.contains_key(&c.key) && known.len() >= MAX_EXPOSURE_KEYS {
                continue;
            }
            let n = known.entry(c.key.clone()).or_default();
            if c.count > *n {
                *n = c.count;
                grew.push(c);
            }
        }
        grew
    }

    /// Merges another ledger into this one.
    pub fn merge_ledger(&mut self, other: &ExposureLedger) {
        for (source, (region, counts)) in &other.sources {
            let counts = counts.iter().map(|(key, count)| ExposureCount {
                key: key.clone(),
                count: *count,
            });
            self.merge(source, region, counts);
        }
    }

    /// What `source` is known to have counted of `key`.
    pub fn count(&self, source: &Source, key: &ExposureKey) -> u64 {
        self.sources
            .get(source)
            .and_then(|(_, c)| c.get(key))
            .copied()
            .unwrap_or(0)
    }

    /// The totals of one flag over every source.
    pub fn totals(&self, app: &str, env: &str, flag: &str) -> ExposureTotals {
        let mut t = ExposureTotals::default();
        for (region, counts) in self.sources.values() {
            for (k, n) in counts {
                if k.app == app && k.env == env && k.flag == flag {
                    *t.variants.entry(k.variant.clone()).or_default() += n;
                    *t.regions
                        .entry(region.clone())
                        .or_default()
                        .entry(k.variant.clone())
                        .or_default() += n;
                    t.total += n;
                }
            }
        }
        t
    }

    /// Every key's total over every source.
    pub fn all_totals(&self) -> BTreeMap<ExposureKey, u64> {
        let mut out = BTreeMap::new();
        for (_, counts) in self.sources.values() {
            for (k, n) in counts {
                *out.entry(k.clone()).or_default() += n;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(flag: &str, variant: &str) -> ExposureKey {
        ExposureKey {
            app: "a".into(),
            env: "e".into(),
            flag: flag.into(),
            variant: variant.into(),
        }
    }

    #[test]
    fn a_counter_reports_cumulative_counts_and_rotates_past_one_frame() {
        let mut c = ExposureCounter::default();
        assert!(c.record("a", "e", "f", "on", 2));
        assert!(c.record("a", "e", "f", "on", 1));
        assert_eq!(
            c.report(),
            vec![ExposureCount {
                key: key("f", "on"),
                count: 3
            }]
        );
        for i in 0..(MAX_EXPOSURE_ENTRIES + 10) {
            c.record("a", "e", &format!("g{i:05}"), "x", 1);
        }
        let first = c.report();
        let second = c.report();
        assert_eq!(first.len(), MAX_EXPOSURE_ENTRIES);
        assert_eq!(second.len(), MAX_EXPOSURE_ENTRIES);
        let mut seen: std::collections::BTreeSet<_> = first.iter().map(|c| c.key.clone()).collect();
        seen.extend(second.iter().map(|c| c.key.clone()));
        assert_eq!(
            seen.len(),
            MAX_EXPOSURE_ENTRIES + 11,
            "two reports cover every key"
        );
    }
}
