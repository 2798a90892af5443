//! Property: any sequence of puts, patches, deletes, transactions and rollbacks (of a key to a
//! version, of an environment to a revision, built exactly as the API builds them) leaves two
//! origin nodes applying the same commands, an edge applying every signed delta, and an edge
//! that joined by snapshot half-way, all with equal state and digests. Refused commands change
//! nothing anywhere.

use std::collections::BTreeMap;

use meridian_core::apply::{Command, Condition, OriginCore, TxnOp};
use meridian_core::history::{self, WriteMeta};
use meridian_protocol::{Address, JsonText, Signer, TrustedKeys};
use meridian_store::{MemBackend, SignedState};
use proptest::prelude::*;

const KEYS: [&str; 4] = ["a", "b", "c.d", "c.e"];

fn at(k: usize) -> Address {
    Address::parse("app", "prod", KEYS[k % KEYS.len()]).expect("address")
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8),
    Patch(usize, u8, bool),
    Delete(usize),
    Txn(Vec<(usize, Option<u8>)>, Option<(usize, u64)>),
    RollbackKey(usize, u64),
    RollbackEnv(u64),
}

fn value(n: u8) -> JsonText {
    format!(r#"{{"n":{n},"tag":"v{}"}}"#, n % 3).into()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0..4usize, any::<u8>(), any::<bool>()).prop_map(|(k, v, drop)| Op::Patch(k, v, drop)),
        (0..4usize).prop_map(Op::Delete),
        (
            prop::collection::vec((0..4usize, prop::option::of(any::<u8>())), 1..4),
            prop::option::of((0..4usize, 0..4u64)),
        )
            .prop_map(|(ops, cond)| Op::Txn(ops, cond)),
        (0..4usize, 1..6u64).prop_map(|(k, v)| Op::RollbackKey(k, v)),
        (0..30u64).prop_map(Op::RollbackEnv),
    ]
}

fn core() -> OriginCore<MemBackend> {
    let state = SignedState::open(MemBackend::new(), 10_000).expect("state");
    OriginCore::new(state, Signer::from_bytes(&[9; 32]))
}

/// The command `op` stands for, read against `c`'s state and history as the API reads them;
/// `None` when the API would refuse before committing (an unknown version or revision).
fn command(c: &OriginCore<MemBackend>, op: &Op) -> Option<Command> {
    let live_version = |a: &Address| {
        c.state()
            .entry(a)
            .filter(|e| !e.is_tombstone())
            .map_or(0, |e| e.version.0)
    };
    Some(match op {
        Op::Put(k, v) => Command::Put {
            address: at(*k),
            value: value(*v),
            expect_version: None,
        },
        Op::Patch(k, v, drop) => Command::Patch {
            address: at(*k),
            patch: if *drop {
                r#"{"tag":null}"#.into()
            } else {
                format!(r#"{{"n":{v},"extra":{{"x":{v}}}}}"#).into()
            },
            expect_version: None,
            max_value_bytes: 1 << 20,
        },
        Op::Delete(k) => Command::Delete {
            address: at(*k),
            expect_version: None,
        },
        Op::Txn(ops, cond) => {
            let mut seen = std::collections::BTreeSet::new();
            Command::Txn {
                conditions: cond
                    .iter()
                    .map(|(k, v)| Condition::VersionEquals(at(*k), *v))
                    .collect(),
                ops: ops
                    .iter()
                    .filter(|(k, _)| seen.insert(k % KEYS.len()))
                    .map(|(k, v)| match v {
                        Some(v) => TxnOp::Put(at(*k), value(*v)),
                        None => TxnOp::Delete(at(*k)),
                    })
                    .collect(),
            }
        }
        Op::RollbackKey(k, v) => {
            let a = at(*k);
            let target = history::at_version(c.state().backend(), &a, *v).ok()??;
            history::key_rollback(&a, &target, live_version(&a))
        }
        Op::RollbackEnv(r) => {
            if *r > c.state().revision().0 {
                return None;
            }
            let target = history::namespace_at(c.state().backend(), "app", "prod", *r).ok()?;
            let current: BTreeMap<String, (u64, JsonText)> = c
                .state()
                .namespace_entries("app", "prod")
                .into_iter()
                .filter_map(|(k, e)| e.value.map(|v| (k, (e.version.0, v))))
                .collect();
            history::env_rollback("app", "prod", &target, &current)
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_holder_ends_with_the_same_state_and_digest(
        ops in prop::collection::vec(op(), 1..40),
        join_at in 0..40usize,
    ) {
        let mut origin = core();
        let mut follower = core();
        let trusted = TrustedKeys::new([Signer::from_bytes(&[9; 32]).verifying_key()]);
        let mut edge = SignedState::open(MemBackend::new(), 10_000).expect("edge");
        let mut late: Option<SignedState<MemBackend>> = None;
        let meta = WriteMeta { time_ms: 1, actor: "prop".into(), reason: None, ..Default::default() };
        for (i, op) in ops.iter().enumerate() {
            if i == join_at {
                // A new edge joins from a snapshot of the origin's state.
                let mut s = SignedState::open(MemBackend::new(), 10_000).expect("late edge");
                if let (Some(head), entries) = origin.state().snapshot() {
                    s.install_snapshot(head, entries).expect("snapshot");
                }
                late = Some(s);
            }
            let Some(cmd) = command(&origin, op) else { continue };
            let before = origin.state().digest();
            let here = origin.apply_unpublished(cmd.clone(), Some(&meta), Vec::new());
            let there = follower.apply_unpublished(cmd, Some(&meta), Vec::new());
            origin.state_mut().publish().expect("publish");
            follower.state_mut().publish().expect("publish");
            match (here, there) {
                (Ok((a, da)), Ok((b, db))) => {
                    prop_assert_eq!(&a, &b);
                    prop_assert_eq!(&da, &db, "both nodes sign the same delta");
                    if let Some(d) = da {
                        trusted.verify_delta(&d).expect("the delta verifies");
                        edge.apply_delta(&d).expect("edge applies");
                        edge.publish().expect("publish");
                        if let Some(s) = late.as_mut() {
                            s.apply_delta(&d).expect("late edge applies");
                            s.publish().expect("publish");
                        }
                    }
                }
                (Err(e), Err(f)) => {
                    prop_assert_eq!(e.to_string(), f.to_string());
                    prop_assert_eq!(origin.state().digest(), before, "a refusal changes nothing");
                }
                (a, b) => prop_assert!(false, "nodes disagree: {:?} vs {:?}", a, b),
            }
        }
        let digest = origin.state().digest();
        prop_assert_eq!(follower.state().digest(), digest);
        prop_assert_eq!(edge.digest(), digest);
        prop_assert_eq!(edge.revision(), origin.state().revision());
        prop_assert_eq!(edge.snapshot(), origin.state().snapshot());
        if let Some(s) = late {
            prop_assert_eq!(s.digest(), digest);
            prop_assert_eq!(s.snapshot(), origin.state().snapshot());
        }
    }
}
