//! [`WriteBack`] against a plain in-memory backend as its model: every read answers what the
//! model answers whatever has been handed on, and a crash keeps exactly the state at the last
//! flush (a prefix of whole batches).

use meridian_store::{Backend, MemBackend, Write, WriteBack, WriteBackLimits};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Apply(Vec<(u8, Option<u8>)>),
    Flush,
    Get(u8),
    Prefix(u8),
    Range(u8, u8, usize),
}

/// Keys share prefixes (`k1`, `k12`, …) so that prefix scans and ranges cut through them.
fn key(k: u8) -> Vec<u8> {
    format!("k{}", k % 40).into_bytes()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..40, proptest::option::of(0u8..4)), 0..6)
            .prop_map(Op::Apply),
        1 => Just(Op::Flush),
        2 => (0u8..40).prop_map(Op::Get),
        2 => (0u8..5).prop_map(Op::Prefix),
        3 => (0u8..40, 0u8..40, 0usize..8).prop_map(|(a, b, n)| Op::Range(a, b, n)),
    ]
}

fn everything<B: Backend>(b: &B) -> Vec<(Vec<u8>, Vec<u8>)> {
    b.scan_prefix(b"").unwrap()
}

proptest! {
    #[test]
    fn write_back_reads_what_it_was_given_and_a_crash_keeps_the_last_flush(
        ops in proptest::collection::vec(op(), 1..60),
        max_batches in 1usize..5,
        max_bytes in 4usize..64,
    ) {
        let limits = WriteBackLimits { max_batches, max_bytes };
        let mut wb = WriteBack::new(MemBackend::new(), limits);
        let mut model = MemBackend::new();
        let mut at_flush = Vec::new();
        for op in ops {
            match op {
                Op::Apply(writes) => {
                    let batch: Vec<Write> = writes
                        .iter()
                        .map(|(k, v)| (key(*k), v.map(|v| vec![v])))
                        .collect();
                    wb.apply(batch.clone()).unwrap();
                    model.apply(batch).unwrap();
                    prop_assert!(wb.gathered_batches() < max_batches);
                }
                Op::Flush => {
                    wb.flush().unwrap();
                    at_flush = everything(&model);
                    prop_assert_eq!(wb.gathered_batches(), 0);
                    prop_assert_eq!(everything(wb.inner()), everything(&model));
                }
                Op::Get(k) => prop_assert_eq!(wb.get(&key(k)).unwrap(), model.get(&key(k)).unwrap()),
                Op::Prefix(p) => {
                    let p = format!("k{p}").into_bytes();
                    prop_assert_eq!(wb.scan_prefix(&p).unwrap(), model.scan_prefix(&p).unwrap());
                    let keys: Vec<Vec<u8>> =
                        model.scan_prefix(&p).unwrap().into_iter().map(|(k, _)| k).collect();
                    prop_assert_eq!(wb.scan_prefix_keys(&p).unwrap(), keys.clone());
                    prop_assert_eq!(model.scan_prefix_keys(&p).unwrap(), keys);
                }
                Op::Range(a, b, n) => {
                    let (from, to) = (key(a), key(b));
                    prop_assert_eq!(wb.range(&from, &to, n).unwrap(), model.range(&from, &to, n).unwrap());
                }
            }
        }
        prop_assert_eq!(everything(&wb), everything(&model));
        // What survives a crash is what the last flush made durable: nothing of a later batch.
        prop_assert_eq!(everything(&wb.inner().crash()), at_flush);
    }
}

#[test]
fn batches_are_handed_on_together_once_the_limit_is_reached() {
    let limits = WriteBackLimits {
        max_batches: 3,
        max_bytes: 1 << 20,
    };
    let mut wb = WriteBack::new(MemBackend::new(), limits);
    for i in 0..2u8 {
        wb.apply(vec![(vec![i], Some(vec![i]))]).unwrap();
    }
    assert!(
        everything(wb.inner()).is_empty(),
        "two batches are still gathered"
    );
    assert_eq!(wb.get(&[1]).unwrap(), Some(vec![1]));
    wb.apply(vec![(vec![0], None), (vec![2], Some(vec![2]))])
        .unwrap();
    assert_eq!(wb.gathered_batches(), 0);
    assert_eq!(
        everything(wb.inner()),
        vec![(vec![1], vec![1]), (vec![2], vec![2])],
        "the third batch hands all three on, the later delete of key 0 included"
    );
}

#[test]
fn sled_lists_the_keys_its_prefix_scan_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = meridian_store::SledBackend::open(dir.path()).unwrap();
    b.apply(vec![
        (b"ka1".to_vec(), Some(vec![1; 2000])),
        (b"ka2".to_vec(), Some(vec![2])),
        (b"kb1".to_vec(), Some(vec![3])),
        (b"ka3".to_vec(), Some(vec![4])),
    ])
    .unwrap();
    b.apply(vec![(b"ka2".to_vec(), None)]).unwrap();
    assert_eq!(
        b.scan_prefix_keys(b"ka").unwrap(),
        [b"ka1".to_vec(), b"ka3".to_vec()]
    );
    assert_eq!(b.scan_prefix_keys(b"kc").unwrap(), Vec::<Vec<u8>>::new());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A detached view of a prefix answers, for every read within the prefix, what the
    /// write-back answered when the view was taken, however its gathered writes are handed to
    /// sled afterwards (a history read keeps going while applies move writes on).
    #[test]
    fn a_detached_view_reads_its_prefix_as_it_was_whatever_is_handed_on_after(
        before in proptest::collection::vec(
            proptest::collection::vec((0u8..40, proptest::option::of(0u8..4)), 0..6), 0..20),
        handed_on in 0usize..20,
        prefix in 0u8..5,
        from in 0u8..40,
        to in 0u8..40,
        limit in 0usize..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let sled = meridian_store::SledBackend::open(dir.path()).unwrap();
        let limits = WriteBackLimits { max_batches: 1_000, max_bytes: 1 << 20 };
        let mut wb = WriteBack::new(sled, limits);
        for (i, writes) in before.iter().enumerate() {
            let batch: Vec<Write> =
                writes.iter().map(|(k, v)| (key(*k), v.map(|v| vec![v]))).collect();
            wb.apply(batch).unwrap();
            if i == handed_on {
                wb.write_back().unwrap();
            }
        }
        let p = format!("k{prefix}").into_bytes();
        let view = wb.detached_view(&p);
        let scan = wb.scan_prefix(&p).unwrap();
        let (from, to) = (key(from), key(to));
        let in_prefix = |k: &Vec<u8>| k.starts_with(&p);
        // What a backend answers within the prefix: a range cut to it, and each key's value.
        let reads = |b: &dyn Backend| {
            let range: Vec<_> = b
                .range(&from, &to, usize::MAX)
                .unwrap()
                .into_iter()
                .filter(|(k, _)| in_prefix(k))
                .take(limit)
                .collect();
            let gets: Vec<_> =
                (0..40u8).map(key).filter(in_prefix).map(|k| b.get(&k).unwrap()).collect();
            (range, gets)
        };
        let before = reads(&wb);
        // The gathered writes move to sled; the view answers the same.
        wb.write_back().unwrap();
        prop_assert_eq!(view.scan_prefix(&p).unwrap(), scan);
        prop_assert_eq!(reads(&view), before);
        let mut view = view;
        prop_assert!(view.apply(vec![(p.clone(), None)]).is_err(), "read-only");
    }
}
