//! The exposure counter CRDT's laws: whatever subset of an edge's reports arrives, in whatever
//! order and however often, the origin never counts more than was served; once any report
//! sent after the last evaluation arrives, it counts exactly what was served; and merging
//! ledgers is commutative and idempotent.

use meridian_protocol::flags::exposure::{ExposureCounter, ExposureLedger, Source};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_of_cumulative_reports_counts_each_evaluation_once(
        rounds in proptest::collection::vec(
            (proptest::collection::vec((0u8..3, 0u8..2, 1u64..4), 0..5), any::<bool>(), 0usize..3),
            1..30,
        ),
        final_delivered in any::<bool>(),
    ) {
        let source = Source { edge: "edge-1".into(), boot: 7 };
        let mut counter = ExposureCounter::default();
        let mut served = std::collections::BTreeMap::new();
        let mut ledger = ExposureLedger::default();
        let mut held_back = Vec::new();
        for (evaluations, delivered, repeat) in rounds {
            for (flag, variant, n) in evaluations {
                let (f, v) = (format!("f{flag}"), format!("v{variant}"));
                counter.record("a", "e", &f, &v, n);
                *served.entry((f, v)).or_insert(0u64) += n;
            }
            let report = counter.report();
            if delivered {
                for _ in 0..=repeat {
                    ledger.merge(&source, "r", report.clone());
                }
            } else {
                held_back.push(report);
            }
            // Late, reordered deliveries of older reports change nothing.
            if repeat == 2 && let Some(old) = held_back.first() {
                ledger.merge(&source, "r", old.clone());
            }
        }
        for ((f, v), n) in &served {
            let key = meridian_protocol::flags::exposure::ExposureKey {
                app: "a".into(), env: "e".into(), flag: f.clone(), variant: v.clone(),
            };
            prop_assert!(ledger.count(&source, &key) <= *n);
        }
        if final_delivered {
            ledger.merge(&source, "r", counter.report());
            for ((f, v), n) in &served {
                let t = ledger.totals("a", "e", f);
                prop_assert_eq!(t.variants.get(v).copied().unwrap_or(0), *n);
            }
        }
    }

    #[test]
    fn merging_ledgers_is_commutative_and_idempotent(
        a in proptest::collection::vec((0u64..3, 0u8..3, 0u64..50), 0..20),
        b in proptest::collection::vec((0u64..3, 0u8..3, 0u64..50), 0..20),
    ) {
        let build = |items: &[(u64, u8, u64)]| {
            let mut l = ExposureLedger::default();
            for (boot, flag, n) in items {
                let source = Source { edge: "e".into(), boot: *boot };
                let key = meridian_protocol::flags::exposure::ExposureKey {
                    app: "a".into(), env: "e".into(), flag: format!("f{flag}"), variant: "v".into(),
                };
                l.merge(&source, "r", [meridian_protocol::flags::exposure::ExposureCount { key, count: *n }]);
            }
            l
        };
        let (la, lb) = (build(&a), build(&b));
        let mut ab = la.clone();
        ab.merge_ledger(&lb);
        let mut ba = lb.clone();
        ba.merge_ledger(&la);
        prop_assert_eq!(ab.all_totals(), ba.all_totals());
        let mut again = ab.clone();
        again.merge_ledger(&lb);
        again.merge_ledger(&la);
        prop_assert_eq!(again.all_totals(), ab.all_totals());
    }
}
