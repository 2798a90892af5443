//! Property tests: the CRDT laws of the edge cache, and order-independence of signed deltas.

use meridian_protocol::{
    Address, CacheState, Change, Delta, EntryState, Revision, Signer, TrustedKeys, Version,
};
use proptest::prelude::*;

fn address(i: u8) -> Address {
    let apps = ["_", "pay", "web"];
    let envs = ["_", "prod"];
    Address::parse(
        apps[(i % 3) as usize],
        envs[((i / 3) % 2) as usize],
        &format!("k{}", i % 5),
    )
    .unwrap()
}

fn entry_strategy() -> impl Strategy<Value = (Address, EntryState)> {
    (0u8..30, 1u64..20, 1u64..5, proptest::option::of(0u32..4)).prop_map(|(a, rev, ver, v)| {
        (
            address(a),
            EntryState {
                version: Version(ver),
                revision: Revision(rev),
                value: v.map(|v| v.to_string().into()),
            },
        )
    })
}

fn state_strategy() -> impl Strategy<Value = CacheState> {
    proptest::collection::vec(entry_strategy(), 0..12).prop_map(|entries| {
        let mut s = CacheState::new();
        for (a, e) in entries {
            s.merge_entry(&a, e);
        }
        s
    })
}

fn joined(a: &CacheState, b: &CacheState) -> CacheState {
    let mut out = a.clone();
    out.merge(b);
    out
}

/// Produces the signed deltas an origin would emit for a sequence of writes and deletes.
fn history(
    ops: &[(u8, Option<u32>)],
    signer: &Signer,
) -> (Vec<meridian_protocol::SignedDelta>, CacheState) {
    let mut origin = CacheState::new();
    let mut out = Vec::new();
    for (i, (a, v)) in ops.iter().enumerate() {
        let address = address(*a);
        let version = origin
            .get(&address.app, &address.env, &address.key)
            .map_or(Version(1), |e| Version(e.version.0 + 1));
        let delta = Delta {
            revision: Revision(i as u64 + 1),
            changes: vec![Change {
                address,
                version,
                value: v.map(|v| v.to_string().into()),
            }],
        };
        let digest = origin.digest_after(&delta);
        origin.apply_delta(&delta);
        assert_eq!(origin.digest(), digest);
        out.push(signer.sign_delta(delta, digest));
    }
    (out, origin)
}

proptest! {
    #[test]
    fn merge_is_commutative(a in state_strategy(), b in state_strategy()) {
        let ab = joined(&a, &b);
        let ba = joined(&b, &a);
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(ab.digest(), ba.digest());
    }

    #[test]
    fn merge_is_associative(a in state_strategy(), b in state_strategy(), c in state_strategy()) {
        let left = joined(&joined(&a, &b), &c);
        let right = joined(&a, &joined(&b, &c));
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(left.digest(), right.digest());
    }

    #[test]
    fn merge_is_idempotent(a in state_strategy()) {
        let aa = joined(&a, &a);
        prop_assert_eq!(&aa, &a);
        prop_assert_eq!(aa.digest(), a.digest());
    }

    #[test]
    fn any_permutation_with_duplicates_of_signed_deltas_converges(
        ops in proptest::collection::vec((0u8..30, proptest::option::of(0u32..4)), 1..40),
        order in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
        shuffle_seed in any::<u64>(),
    ) {
        let signer = Signer::from_bytes(&[3; 32]);
        let trusted = TrustedKeys::new([signer.verifying_key()]);
        let (deltas, origin) = history(&ops, &signer);

        // Every delta at least once, plus random duplicates, in a seeded shuffled order.
        let mut delivery: Vec<usize> = (0..deltas.len()).collect();
        delivery.extend(order.iter().map(|i| i.index(deltas.len())));
        let mut x = shuffle_seed | 1;
        for i in (1..delivery.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            delivery.swap(i, (x % (i as u64 + 1)) as usize);
        }

        let mut edge = CacheState::new();
        for i in delivery {
            prop_assert!(trusted.verify_delta(&deltas[i]).is_ok());
            edge.apply_delta(&deltas[i].delta);
        }
        prop_assert_eq!(&edge, &origin);
        prop_assert_eq!(edge.digest(), origin.digest());
        let last = deltas.last().unwrap();
        prop_assert_eq!(edge.digest(), last.head.head.digest);
    }
}
