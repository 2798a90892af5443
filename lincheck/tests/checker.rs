//! The checker against hand-made histories, a brute-force reference on small random
//! histories, and histories generated from a sequential run (linearizable by construction).

use meridian_lincheck::{
    CheckError, DEFAULT_BUDGET, Model, Operation, Register, RegisterInput as In,
    RegisterOutput as Out, Return, check, check_partitioned,
};
use proptest::prelude::*;

type Op = Operation<In<u8>, Out<u8>>;
/// An operation on the key `.0` of its input.
type KeyedOp = Operation<(u8, In<u8>), Out<u8>>;

fn op(call_ns: u64, ret_ns: u64, input: In<u8>, output: Out<u8>) -> Op {
    Operation {
        call_ns,
        input,
        ret: Return::At { ns: ret_ns, output },
    }
}

fn unknown(call_ns: u64, input: In<u8>) -> Op {
    Operation {
        call_ns,
        input,
        ret: Return::Unknown,
    }
}

fn linearizable(h: &[Op]) -> bool {
    match check(&Register::new(), h, DEFAULT_BUDGET) {
        Ok(order) => {
            assert_valid_order(h, &order);
            true
        }
        Err(CheckError::NotLinearizable { .. }) => false,
        Err(e) => panic!("{e}"),
    }
}

/// `order` holds every answered operation once, respects real time and replays under the
/// model with the recorded answers.
fn assert_valid_order(h: &[Op], order: &[usize]) {
    let mut seen = vec![false; h.len()];
    for &i in order {
        assert!(!seen[i], "{i} twice in {order:?}");
        seen[i] = true;
    }
    for (i, o) in h.iter().enumerate() {
        if matches!(o.ret, Return::At { .. }) {
            assert!(seen[i], "answered operation {i} missing from {order:?}");
        }
    }
    for (a, &i) in order.iter().enumerate() {
        for &j in &order[a + 1..] {
            if let Return::At { ns, .. } = h[j].ret {
                assert!(ns >= h[i].call_ns, "{j} answered before {i} was called");
            }
        }
    }
    let m = Register::new();
    let mut state = m.init();
    for &i in order {
        let out = match &h[i].ret {
            Return::At { output, .. } => Some(output),
            Return::Unknown => None,
        };
        state = m.step(&state, &h[i].input, out).expect("order replays");
    }
}

#[test]
fn a_sequential_history_is_linearizable() {
    let h = [
        op(0, 1, In::Get, Out::NotFound),
        op(2, 3, In::Put(1), Out::Stored),
        op(4, 5, In::Get, Out::Value(1)),
        op(6, 7, In::Delete, Out::Deleted),
        op(8, 9, In::Delete, Out::NotFound),
        op(10, 11, In::Get, Out::NotFound),
    ];
    assert!(linearizable(&h));
}

#[test]
fn a_stale_read_after_the_write_answered_is_not() {
    let h = [
        op(0, 10, In::Put(1), Out::Stored),
        op(20, 30, In::Put(2), Out::Stored),
        op(40, 50, In::Get, Out::Value(1)),
    ];
    let Err(CheckError::NotLinearizable { longest, stuck }) =
        check(&Register::new(), &h, DEFAULT_BUDGET)
    else {
        panic!("a stale read passed");
    };
    assert_eq!(longest, vec![0, 1]);
    assert_eq!(stuck, 2);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [Out::Value(1), Out::Value(2)] {
        let h = [
            op(0, 10, In::Put(1), Out::Stored),
            op(20, 40, In::Put(2), Out::Stored),
            op(30, 50, In::Get, seen),
        ];
        assert!(linearizable(&h));
    }
}

#[test]
fn two_readers_may_not_see_two_concurrent_writes_in_opposite_orders() {
    // Both writes overlap both pairs of reads; reader A sees 1 then 2, reader B 2 then 1.
    let h = [
        op(0, 100, In::Put(1), Out::Stored),
        op(0, 100, In::Put(2), Out::Stored),
        op(10, 20, In::Get, Out::Value(1)),
        op(30, 40, In::Get, Out::Value(2)),
        op(10, 20, In::Get, Out::Value(2)),
        op(30, 40, In::Get, Out::Value(1)),
    ];
    assert!(!linearizable(&h));
    // One reader alone is fine.
    assert!(linearizable(&h[..4]));
}

#[test]
fn a_value_nobody_wrote_is_not_linearizable() {
    let h = [
        op(0, 10, In::Put(1), Out::Stored),
        op(20, 30, In::Get, Out::Value(7)),
    ];
    assert!(!linearizable(&h));
}

#[test]
fn a_write_without_an_answer_may_land_late_or_never() {
    // The write never answered; a read long after may or may not see it.
    let landed = [
        unknown(0, In::Put(1)),
        op(1_000, 1_010, In::Get, Out::Value(1)),
    ];
    let lost = [
        unknown(0, In::Put(1)),
        op(1_000, 1_010, In::Get, Out::NotFound),
    ];
    assert!(linearizable(&landed));
    assert!(linearizable(&lost));
    // But once seen it cannot be unseen.
    let flicker = [
        unknown(0, In::Put(1)),
        op(1_000, 1_010, In::Get, Out::Value(1)),
        op(1_020, 1_030, In::Get, Out::NotFound),
    ];
    assert!(!linearizable(&flicker));
    // Nor seen before it was called.
    let early = [op(0, 10, In::Get, Out::Value(1)), unknown(20, In::Put(1))];
    assert!(!linearizable(&early));
}

#[test]
fn an_answer_before_its_call_is_refused() {
    let h = [op(10, 5, In::Get, Out::NotFound)];
    assert_eq!(
        check(&Register::new(), &h, DEFAULT_BUDGET),
        Err(CheckError::BadInterval(0))
    );
}

#[test]
fn partitions_are_checked_apart_and_errors_name_the_key_and_history_indexes() {
    // (key, op): key 0 is fine, key 1 reads a stale value.
    let h: Vec<(u8, Op)> = vec![
        (0, op(0, 10, In::Put(1), Out::Stored)),
        (1, op(0, 10, In::Put(1), Out::Stored)),
        (1, op(20, 30, In::Put(2), Out::Stored)),
        (0, op(40, 50, In::Get, Out::Value(1))),
        (1, op(40, 50, In::Get, Out::Value(1))),
    ];
    // Key and value folded into one input so the partition can be read off it.
    let folded: Vec<KeyedOp> = h
        .iter()
        .map(|(k, o)| Operation {
            call_ns: o.call_ns,
            input: (*k, o.input.clone()),
            ret: o.ret.clone(),
        })
        .collect();
    struct Keyed;
    impl Model for Keyed {
        type State = Option<u8>;
        type Input = (u8, In<u8>);
        type Output = Out<u8>;
        fn init(&self) -> Option<u8> {
            None
        }
        fn step(
            &self,
            s: &Option<u8>,
            i: &(u8, In<u8>),
            o: Option<&Out<u8>>,
        ) -> Option<Option<u8>> {
            Register::new().step(s, &i.1, o)
        }
    }
    let err = check_partitioned(&Keyed, &folded, |i| i.0, DEFAULT_BUDGET).unwrap_err();
    assert_eq!(
        err,
        (
            1,
            CheckError::NotLinearizable {
                longest: vec![1, 2],
                stuck: 4
            }
        )
    );
    assert_eq!(
        check_partitioned(&Keyed, &folded[..4], |i| i.0, DEFAULT_BUDGET),
        Ok(2)
    );
}

#[test]
fn the_budget_bounds_the_search() {
    let h: Vec<Op> = (0..20)
        .map(|i| op(0, 100, In::Put(i), Out::Stored))
        .chain([op(200, 210, In::Get, Out::Value(99))])
        .collect();
    assert_eq!(
        check(&Register::new(), &h, 1_000),
        Err(CheckError::Budget(1_000))
    );
}

/// Every order of the operations that respects real time, tried one by one.
fn brute_force(h: &[Op]) -> bool {
    fn go(h: &[Op], placed: &mut Vec<usize>, state: Option<u8>) -> bool {
        let answered_left = h
            .iter()
            .enumerate()
            .any(|(i, o)| !placed.contains(&i) && matches!(o.ret, Return::At { .. }));
        if !answered_left {
            return true;
        }
        let m = Register::new();
        for i in 0..h.len() {
            if placed.contains(&i) {
                continue;
            }
            // `i` may go next only if no unplaced operation answered before `i` was called.
            let blocked = h.iter().enumerate().any(|(j, o)| {
                !placed.contains(&j)
                    && j != i
                    && matches!(o.ret, Return::At { ns, .. } if ns < h[i].call_ns)
            });
            if blocked {
                continue;
            }
            let out = match &h[i].ret {
                Return::At { output, .. } => Some(output),
                Return::Unknown => None,
            };
            if let Some(next) = m.step(&state, &h[i].input, out) {
                placed.push(i);
                if go(h, placed, next) {
                    return true;
                }
                placed.pop();
            }
        }
        false
    }
    go(h, &mut Vec::new(), None)
}

fn arb_input() -> impl Strategy<Value = In<u8>> {
    prop_oneof![(0u8..3).prop_map(In::Put), Just(In::Delete), Just(In::Get)]
}

fn arb_output() -> impl Strategy<Value = Out<u8>> {
    prop_oneof![
        Just(Out::Stored),
        Just(Out::Deleted),
        Just(Out::NotFound),
        (0u8..3).prop_map(Out::Value)
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    (0u64..40, 0u64..20, arb_input(), arb_output(), 0u8..8).prop_map(
        |(call, len, input, output, unknown)| {
            // Outputs that fit the input, mostly; an unanswered write now and then.
            let output = match (&input, output) {
                (In::Put(_), _) => Out::Stored,
                (In::Delete, Out::Value(_) | Out::Stored) => Out::Deleted,
                (In::Get, Out::Stored | Out::Deleted) => Out::NotFound,
                (_, o) => o,
            };
            if unknown == 0 && !matches!(input, In::Get) {
                Operation {
                    call_ns: call,
                    input,
                    ret: Return::Unknown,
                }
            } else {
                Operation {
                    call_ns: call,
                    input,
                    ret: Return::At {
                        ns: call + len,
                        output,
                    },
                }
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// On small histories the checker agrees with trying every order.
    #[test]
    fn agrees_with_brute_force(h in prop::collection::vec(arb_op(), 0..7)) {
        prop_assert_eq!(linearizable(&h), brute_force(&h), "{:?}", h);
    }

    /// A history made by running operations one at a time, each at an instant inside its
    /// call's interval, is linearizable whatever the overlaps.
    #[test]
    fn histories_of_a_sequential_run_are_linearizable(
        steps in prop::collection::vec((arb_input(), 0u64..50, 0u64..50, 0u8..10), 0..300),
    ) {
        let m = Register::new();
        let mut state = m.init();
        let mut h = Vec::new();
        for (n, (input, before, after, unknown)) in steps.into_iter().enumerate() {
            let at = 100 + 10 * n as u64;
            let output = match (&input, &state) {
                (In::Put(_), _) => Out::Stored,
                (In::Delete, Some(_)) => Out::Deleted,
                (In::Delete | In::Get, None) => Out::NotFound,
                (In::Get, Some(v)) => Out::Value(*v),
            };
            state = m.step(&state, &input, Some(&output)).unwrap();
            let ret = if unknown == 0 {
                Return::Unknown
            } else {
                Return::At { ns: at + after, output }
            };
            h.push(Operation { call_ns: at - before, input, ret });
        }
        prop_assert!(linearizable(&h));
    }
}
