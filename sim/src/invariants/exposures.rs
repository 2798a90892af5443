//! Exposure counts: after the final heal, the origin's totals equal the evaluations the edges
//! served, neither lost nor counted twice. For every edge boot still running at the end the
//! origin's count of every key equals what that boot served; for a boot that crashed, the
//! counts it served after its last report that reached the origin are gone with it (they were
//! only in its memory), so the origin's count may be lower, never higher.

use std::collections::{BTreeMap, BTreeSet};

use meridian_protocol::flags::exposure::{ExposureKey, ExposureLedger, Source};

/// Checks the origin's `ledger` against what each boot `evaluated`; `live` are the boots
/// running at the end.
pub fn check(
    evaluated: &BTreeMap<Source, BTreeMap<ExposureKey, u64>>,
    ledger: &ExposureLedger,
    live: &BTreeSet<Source>,
) -> Result<(), String> {
    for (source, keys) in evaluated {
        for (key, served) in keys {
            let counted = ledger.count(source, key);
            if counted > *served {
                return Err(format!(
                    "{}#{} {}/{}/{} {:?}: counted {counted}, served {served} (counted twice)",
                    source.edge, source.boot, key.app, key.env, key.flag, key.variant
                ));
            }
            if live.contains(source) && counted < *served {
                return Err(format!(
                    "{}#{} {}/{}/{} {:?}: counted {counted}, served {served} (lost)",
                    source.edge, source.boot, key.app, key.env, key.flag, key.variant
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_protocol::flags::exposure::ExposureCount;

    use super::*;

    #[test]
    fn lost_and_doubled_counts_are_caught() {
        let source = Source {
            edge: "edge-1".into(),
            boot: 1,
        };
        let key = ExposureKey {
            app: "a".into(),
            env: "e".into(),
            flag: "f".into(),
            variant: "v".into(),
        };
        let evaluated = BTreeMap::from([(source.clone(), BTreeMap::from([(key.clone(), 5)]))]);
        let live = BTreeSet::from([source.clone()]);
        let ledger_with = |n| {
            let mut l = ExposureLedger::default();
            l.merge(
                &source,
                "r",
                [ExposureCount {
                    key: key.clone(),
                    count: n,
                }],
            );
            l
        };
        assert!(check(&evaluated, &ledger_with(5), &live).is_ok());
        assert!(
            check(&evaluated, &ledger_with(4), &live)
                .unwrap_err()
                .contains("lost")
        );
        assert!(
            check(&evaluated, &ledger_with(6), &live)
                .unwrap_err()
                .contains("twice")
        );
        // A crashed boot may have lost its last counts, never doubled them.
        assert!(check(&evaluated, &ledger_with(4), &BTreeSet::new()).is_ok());
        assert!(check(&evaluated, &ledger_with(6), &BTreeSet::new()).is_err());
    }
}
