//! Criterion micro-benchmarks of the hot paths: applying a signed delta, verifying a signature,
//! an in-memory read lookup, and the origin's Raft state machine applying a batch of writes to
//! sled on disk (what every origin node does per committed entry).

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

/// One committed Raft entry of `WRITES_PER_ENTRY` puts of 1 KiB values to new keys, applied by
/// the origin's state machine over sled in a temporary folder (not flushed: apply does not
/// flush; the log does).
fn origin_apply(c: &mut Criterion) {
    use std::sync::Arc;

    use meridian_core::apply::{Command, Proposal};
    use meridian_core::history::WriteMeta;
    use meridian_origin::raft::relay::SharedRelay;
    use meridian_origin::raft::state_machine::StateMachine;
    use meridian_origin::raft::{Entry, Request};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    const WRITES_PER_ENTRY: usize = 32;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = meridian_store::DurableDb::open(dir.path()).expect("sled");
    let mut sm = StateMachine::open(
        &db,
        Signer::from_bytes(&[7; 32]),
        10_000,
        SharedRelay::new(),
    )
    .expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let value: Arc<str> = Arc::from(format!("\"{}\"", "x".repeat(1022)));
    let mut index = 0u64;
    let mut key = 0u64;
    let mut group = c.benchmark_group("origin_state_machine");
    group.throughput(criterion::Throughput::Elements(WRITES_PER_ENTRY as u64));
    group.bench_function("apply_entry_of_32_puts_1kib_sled", |b| {
        b.iter_batched(
            || {
                index += 1;
                let commands = (0..WRITES_PER_ENTRY)
                    .map(|_| {
                        key += 1;
                        Proposal {
                            command: Command::Put {
                                address: Address::parse("bench", "prod", &format!("k{key}"))
                                    .expect("valid"),
                                value: value.clone(),
                                expect_version: None,
                            },
                            meta: WriteMeta {
                                time_ms: 1,
                                actor: "bench".into(),
                                reason: None,
                                ..Default::default()
                            },
                        }
                    })
                    .collect();
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
                    payload: EntryPayload::Normal(Request { commands }),
                }
            },
            |entry| runtime.block_on(sm.apply([entry])).expect("apply"),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group! {
    name = origin;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    targets = origin_apply
}

criterion_group! {
    name = core;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(core, origin);
