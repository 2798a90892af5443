//! Criterion micro-benchmarks of the hot paths: applying a signed delta, verifying a signature,
//! and an in-memory read lookup.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meridian_protocol::{
    Address, CacheState, Change, Delta, Revision, SignedDelta, Signer, TrustedKeys, Version,
};
use meridian_store::{MemBackend, SignedState};

const KEYS: u64 = 100_000;

fn populated() -> (SignedState<MemBackend>, Signer) {
    let signer = Signer::from_bytes(&[1; 32]);
    let mut state = SignedState::open(MemBackend::new(), 1_000).expect("open");
    let changes = (0..KEYS)
        .map(|i| Change {
            address: Address::parse("app", "prod", &format!("key{i}")).expect("valid"),
            version: Version(1),
            value: Some(format!("\"{}\"", "v".repeat(64)).into()),
        })
        .collect();
    let delta = Delta {
        revision: Revision(1),
        changes,
    };
    let signed = signer.sign_delta(delta.clone(), state.digest_after(&delta));
    state.apply_delta(&signed).expect("apply");
    state.publish().expect("publish");
    (state, signer)
}

fn next_delta(state: &SignedState<MemBackend>, signer: &Signer, i: u64) -> SignedDelta {
    let address = Address::parse("app", "prod", &format!("key{}", i % KEYS)).expect("valid");
    let version = state
        .entry(&address)
        .map_or(Version(1), |e| Version(e.version.0 + 1));
    let delta = Delta {
        revision: state.revision().next(),
        changes: vec![Change {
            address,
            version,
            value: Some(i.to_string().into()),
        }],
    };
    signer.sign_delta(delta.clone(), state.digest_after(&delta))
}

fn benches(c: &mut Criterion) {
    let (state, signer) = populated();
    let state = std::cell::RefCell::new(state);
    let trusted = TrustedKeys::new([signer.verifying_key()]);

    let sample = next_delta(&state.borrow(), &signer, 7);
    c.bench_function("verify_delta_signature", |b| {
        b.iter(|| trusted.verify_delta(black_box(&sample)).expect("valid"))
    });

    let mut i = 0u64;
    c.bench_function("apply_delta_1_key_over_100k_keys", |b| {
        b.iter_batched(
            || {
                i += 1;
                next_delta(&state.borrow(), &signer, i)
            },
            |d| {
                let mut s = state.borrow_mut();
                s.apply_delta(&d).expect("apply");
                s.publish().expect("publish");
            },
            criterion::BatchSize::PerIteration,
        )
    });

    let reader = state.borrow().reader();
    let guard = reader.read().expect("lock");
    let cache: &CacheState = &guard.state;
    let keys: Vec<String> = (0..1024).map(|i| format!("key{}", i * 97 % KEYS)).collect();
    let mut k = 0usize;
    c.bench_function("read_lookup_100k_keys", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            black_box(cache.get_live("app", "prod", &keys[k]))
        })
    });
    drop(guard);

    c.bench_function("read_lookup_with_lock_100k_keys", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            let g = reader.read().expect("lock");
            black_box(g.state.get_live("app", "prod", &keys[k]).map(|e| e.version))
        })
    });
}

criterion_group! {
    name = core;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(core);
