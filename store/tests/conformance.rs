//! One conformance suite run against both backends (sled on disk and memory), plus a property
//! test of the state against a `BTreeMap` model.

use std::collections::BTreeMap;

use meridian_protocol::{Address, Change, Delta, Revision, SignedDelta, Signer, Version};
use meridian_store::{
    Backend, MemBackend, SignedState, SledBackend, StoreError, WriteBack, WriteBackLimits,
};
use proptest::prelude::*;

fn signer() -> Signer {
    Signer::from_bytes(&[9; 32])
}

/// Signs the next delta writing `(key, value)` pairs (value `None` deletes) on top of `state`.
fn next<B: Backend>(state: &SignedState<B>, writes: &[(&str, Option<&str>)]) -> SignedDelta {
    let changes = writes
        .iter()
        .map(|(k, v)| {
            let address = Address::parse("app", "prod", k).unwrap();
            let version = state
                .entry(&address)
                .map_or(Version(1), |e| Version(e.version.0 + 1));
            Change {
                address,
                version,
                value: v.map(Into::into),
            }
        })
        .collect();
    let delta = Delta {
        revision: state.revision().next(),
        changes,
    };
    let digest = state.digest_after(&delta);
    signer().sign_delta(delta, digest)
}

fn value_of<B: Backend>(state: &SignedState<B>, key: &str) -> Option<String> {
    let p = state.reader();
    let p = p.read().unwrap();
    p.state
        .get_live("app", "prod", key)
        .and_then(|e| e.value.as_deref().map(str::to_owned))
}

fn suite<B: Backend>(open: impl Fn() -> B) {
    let mut s = SignedState::open(open(), 3).unwrap();
    assert_eq!(s.revision(), Revision(0));
    let d1 = next(&s, &[("a", Some("1")), ("b", Some("2"))]);
    s.apply_delta(&d1).unwrap();
    // Not visible to readers before publish.
    assert_eq!(value_of(&s, "a"), None);
    assert_eq!(s.publish().unwrap(), Revision(1));
    assert_eq!(value_of(&s, "a").as_deref(), Some("1"));

    // Out of order and tampered digests are refused and change nothing.
    let mut skip = next(&s, &[("c", Some("3"))]);
    skip.delta.revision = Revision(5);
    assert!(matches!(
        s.apply_delta(&skip),
        Err(StoreError::OutOfOrder { .. })
    ));
    let mut wrong = next(&s, &[("c", Some("3"))]);
    wrong.head.head.digest = d1.head.head.digest;
    assert!(matches!(
        s.apply_delta(&wrong),
        Err(StoreError::DigestMismatch(_))
    ));
    assert_eq!(s.revision(), Revision(1));

    for i in 0..5 {
        let v = i.to_string();
        let d = next(&s, &[("a", Some(&v)), ("b", None)]);
        s.apply_delta(&d).unwrap();
    }
    s.publish().unwrap();
    assert_eq!(s.revision(), Revision(6));
    assert_eq!(value_of(&s, "a").as_deref(), Some("4"));
    assert_eq!(value_of(&s, "b"), None);
    // Window of 3 deltas: 4..=6 kept, older compacted.
    assert_eq!(s.oldest_delta(), Revision(4));
    assert_eq!(s.deltas_after(Revision(3), 10).unwrap().unwrap().len(), 3);
    assert!(s.deltas_after(Revision(2), 10).unwrap().is_none());
    assert_eq!(s.deltas_after(Revision(6), 10).unwrap().unwrap().len(), 0);

    // A snapshot from another state installs whole.
    let mut other = SignedState::open(MemBackend::new(), 3).unwrap();
    for i in 0..8 {
        let v = i.to_string();
        let d = next(&other, &[("x", Some(&v))]);
        other.apply_delta(&d).unwrap();
    }
    other.publish().unwrap();
    let (head, entries) = other.snapshot();
    let mut bad = entries.clone();
    bad.pop();
    assert!(matches!(
        s.install_snapshot(head.unwrap(), bad),
        Err(StoreError::SnapshotMismatch(_))
    ));
    s.install_snapshot(head.unwrap(), entries).unwrap();
    assert_eq!(s.revision(), Revision(8));
    assert_eq!(s.digest(), other.digest());
    assert_eq!(value_of(&s, "a"), None);
    assert_eq!(value_of(&s, "x").as_deref(), Some("7"));
}

#[test]
fn memory_backend_conforms() {
    suite(MemBackend::new);
}

#[test]
fn sled_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    suite(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        SledBackend::open(&dir.path().join(i.to_string())).unwrap()
    });
}

/// Limits small enough that the suite's batches are handed on at different points.
const SMALL_WRITE_BACK: WriteBackLimits = WriteBackLimits {
    max_batches: 3,
    max_bytes: 4096,
};

#[test]
fn write_back_backends_conform() {
    suite(|| WriteBack::new(MemBackend::new(), SMALL_WRITE_BACK));
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    suite(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let sled = SledBackend::open(&dir.path().join(i.to_string())).unwrap();
        WriteBack::new(sled, SMALL_WRITE_BACK)
    });
}

#[test]
fn sled_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let digest;
    {
        let mut s = SignedState::open(SledBackend::open(dir.path()).unwrap(), 100).unwrap();
        for i in 0..20 {
            let v = i.to_string();
            let d = next(&s, &[("k", Some(&v))]);
            s.apply_delta(&d).unwrap();
        }
        s.publish().unwrap();
        digest = s.digest();
    }
    let s = SignedState::open(SledBackend::open(dir.path()).unwrap(), 100).unwrap();
    assert_eq!(s.revision(), Revision(20));
    assert_eq!(s.digest(), digest);
    assert_eq!(s.head().unwrap().head.digest, digest);
    assert_eq!(s.deltas_after(Revision(0), 100).unwrap().unwrap().len(), 20);
}

#[test]
fn a_crash_keeps_the_last_published_revision() {
    let mut s = SignedState::open(MemBackend::new(), 100).unwrap();
    let d = next(&s, &[("k", Some("1"))]);
    s.apply_delta(&d).unwrap();
    s.publish().unwrap();
    let d = next(&s, &[("k", Some("2"))]);
    s.apply_delta(&d).unwrap();
    // Crash before publish: revision 2 was never shown, and it is gone.
    let after = SignedState::open(s.backend().crash(), 100).unwrap();
    assert_eq!(after.revision(), Revision(1));
    assert_eq!(after.digest(), after.head().unwrap().head.digest);
}

#[test]
fn a_batch_is_written_whole_or_not_at_all() {
    let mut s = SignedState::open(MemBackend::new(), 2).unwrap();
    let d = next(&s, &[("k", Some("0"))]);
    s.apply_delta(&d).unwrap();
    s.publish().unwrap();

    s.begin_batch();
    for i in 1..=3 {
        let v = i.to_string();
        let d = next(&s, &[("k", Some(&v)), ("other", Some(&v))]);
        s.apply_delta_with(&d, vec![(b"xmark".to_vec(), Some(v.into_bytes()))])
            .unwrap();
    }
    // Each delta built on the one before, in memory; nothing is stored or shown yet.
    assert_eq!(s.revision(), Revision(4));
    assert_eq!(
        SignedState::open(s.backend().clone(), 2)
            .unwrap()
            .revision(),
        Revision(1)
    );
    assert!(matches!(s.publish(), Err(StoreError::Invalid(_))));
    assert!(matches!(s.flush(), Err(StoreError::Invalid(_))));
    assert_eq!(value_of(&s, "k").as_deref(), Some("0"));

    s.commit_batch(vec![(b"xdone".to_vec(), Some(b"yes".to_vec()))])
        .unwrap();
    assert_eq!(s.publish().unwrap(), Revision(4));
    assert_eq!(value_of(&s, "k").as_deref(), Some("3"));
    let reopened = SignedState::open(s.backend().crash(), 2).unwrap();
    assert_eq!(reopened.revision(), Revision(4));
    assert_eq!(reopened.digest(), s.digest());
    assert_eq!(reopened.head(), s.head());
    // The batch's three deltas are one stored group, kept whole: the window of two is held
    // (at least), and the revision-1 delta before the batch, wholly outside it, is dropped.
    let kept = reopened.deltas_after(Revision(2), 10).unwrap().unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(reopened.oldest_delta(), Revision(2));
    let group = reopened.deltas_after(Revision(1), 10).unwrap().unwrap();
    let revisions: Vec<u64> = group.iter().map(|d| d.delta.revision.0).collect();
    assert_eq!(revisions, [2, 3, 4]);
    assert!(reopened.deltas_after(Revision(0), 10).unwrap().is_none());
    assert_eq!(
        reopened
            .deltas_after(Revision(1), 2)
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    let delta_records = reopened.backend().scan_prefix(b"d").unwrap();
    assert_eq!(delta_records.len(), 1, "one record for the batch's deltas");
    let backend = reopened.backend();
    assert_eq!(backend.get(b"xmark").unwrap(), Some(b"3".to_vec()));
    assert_eq!(backend.get(b"xdone").unwrap(), Some(b"yes".to_vec()));
}

proptest! {
    /// However deltas are grouped into batches, the store ends up holding what applying them
    /// one at a time holds: the same entries, meta and extra records, the same state after a
    /// reopen, and the same deltas for catch-up (each batch's deltas are stored as one group,
    /// so a batch may keep a few more than the window).
    #[test]
    fn batches_store_what_single_deltas_store(
        ops in proptest::collection::vec(
            (proptest::collection::vec((0u8..6, proptest::option::of(0u8..9)), 1..4), any::<bool>()),
            1..40),
        window in 1u64..50,
    ) {
        let mut single = SignedState::open(MemBackend::new(), window).unwrap();
        let mut batched = SignedState::open(MemBackend::new(), window).unwrap();
        batched.begin_batch();
        for (i, (writes, commit_after)) in ops.iter().enumerate() {
            let writes: BTreeMap<String, Option<String>> = writes
                .iter()
                .map(|(k, v)| (format!("k{k}"), v.map(|v| v.to_string())))
                .collect();
            let refs: Vec<(&str, Option<&str>)> =
                writes.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let d = next(&single, &refs);
            let extra = || vec![(b"xapplied".to_vec(), Some(i.to_le_bytes().to_vec()))];
            single.apply_delta_with(&d, extra()).unwrap();
            batched.apply_delta_with(&d, extra()).unwrap();
            if *commit_after {
                batched.commit_batch(Vec::new()).unwrap();
                batched.begin_batch();
            }
        }
        batched.commit_batch(Vec::new()).unwrap();
        let not_deltas = |s: &SignedState<MemBackend>| -> Vec<(Vec<u8>, Vec<u8>)> {
            s.backend().scan_prefix(b"").unwrap().into_iter().filter(|(k, _)| k[0] != b'd').collect()
        };
        prop_assert_eq!(not_deltas(&batched), not_deltas(&single));
        let reopened = SignedState::open(batched.backend().clone(), window).unwrap();
        prop_assert_eq!(reopened.digest(), single.digest());
        prop_assert!(reopened.oldest_delta() <= single.oldest_delta());
        for after in 0..=single.revision().0 {
            let (b, s) = (
                reopened.deltas_after(Revision(after), 100).unwrap(),
                single.deltas_after(Revision(after), 100).unwrap(),
            );
            // A smaller `max` answers a prefix (reads page through more groups than one read).
            if let (Some(all), Some(few)) = (&b, reopened.deltas_after(Revision(after), 3).unwrap()) {
                prop_assert_eq!(&all[..all.len().min(3)], &few[..]);
            }
            match s {
                Some(s) => prop_assert_eq!(b, Some(s)),
                // Compacted in the single store: the batched one may still have it whole.
                None => if let Some(b) = b {
                    let want: Vec<u64> = (after + 1..=single.revision().0).collect();
                    let got: Vec<u64> = b.iter().map(|d| d.delta.revision.0).collect();
                    prop_assert_eq!(got, want);
                },
            }
        }
    }
}

proptest! {
    #[test]
    fn state_matches_a_btreemap_model(
        ops in proptest::collection::vec(
            proptest::collection::vec((0u8..6, proptest::option::of(0u8..9)), 1..4), 1..30)
    ) {
        let mut s = SignedState::open(MemBackend::new(), 1000).unwrap();
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        for batch in ops {
            let mut writes: BTreeMap<String, Option<String>> = BTreeMap::new();
            for (k, v) in batch {
                writes.insert(format!("k{k}"), v.map(|v| v.to_string()));
            }
            let refs: Vec<(&str, Option<&str>)> =
                writes.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let d = next(&s, &refs);
            s.apply_delta(&d).unwrap();
            for (k, v) in writes {
                match v { Some(v) => { model.insert(k, v); } None => { model.remove(&k); } }
            }
            s.publish().unwrap();
        }
        let reopened = SignedState::open(s.backend().crash(), 1000).unwrap();
        for st in [&s, &reopened] {
            let p = st.reader();
            let p = p.read().unwrap();
            let live: BTreeMap<String, String> = p.state.namespace("app", "prod")
                .map(|ns| ns.iter().filter_map(|(k, e)| e.value.as_ref().map(|v| (k.clone(), v.to_string()))).collect())
                .unwrap_or_default();
            prop_assert_eq!(&live, &model);
        }
        prop_assert_eq!(reopened.digest(), s.digest());
    }
}

/// Where the value-lookup tests keep values: `xv` + key + `\0` + version (big-endian).
fn value_key(address: &Address, version: Version) -> Vec<u8> {
    let mut k = b"xv".to_vec();
    k.extend_from_slice(address.key.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.0.to_be_bytes());
    k
}

fn lookup<B: Backend>(
    backend: &B,
    address: &Address,
    version: Version,
) -> Result<Option<Option<meridian_protocol::JsonText>>, StoreError> {
    Ok(backend
        .get(&value_key(address, version))?
        .map(|v| (!v.is_empty()).then(|| String::from_utf8_lossy(&v).into())))
}

/// The value records of `d`, written in its batch (a delete records an empty value).
fn value_records(d: &SignedDelta) -> Vec<meridian_store::Write> {
    d.delta
        .changes
        .iter()
        .map(|c| {
            let v = c.value.as_deref().unwrap_or("").as_bytes().to_vec();
            (value_key(&c.address, c.version), Some(v))
        })
        .collect()
}

/// Six revisions (`a` = `{prefix}{i}` each time, `b` set and deleted in turn) applied to a
/// state that stores everything and, with the records `records` makes in the same batch, to
/// `other`; both published, and both serve the same deltas.
fn apply_to_both<B: Backend, C: Backend>(
    whole: &mut SignedState<B>,
    other: &mut SignedState<C>,
    prefix: &str,
    records: fn(&SignedDelta) -> Vec<meridian_store::Write>,
) {
    for i in 0..6 {
        let v = format!("{prefix}{i}");
        let writes = [("a", Some(v.as_str())), ("b", (i % 2 == 0).then_some("b"))];
        let d = next(whole, &writes);
        whole.apply_delta(&d).unwrap();
        other.apply_delta_with(&d, records(&d)).unwrap();
    }
    whole.publish().unwrap();
    other.publish().unwrap();
    assert_eq!(
        other.deltas_after(Revision(0), 100).unwrap(),
        whole.deltas_after(Revision(0), 100).unwrap()
    );
}

#[test]
fn a_state_that_looks_values_up_serves_what_a_state_that_keeps_them_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut kept = SignedState::open(MemBackend::new(), 100).unwrap();
    let mut looked_up =
        SignedState::open_with_values(SledBackend::open(dir.path()).unwrap(), 100, lookup).unwrap();
    let long = "v".repeat(300);
    apply_to_both(&mut kept, &mut looked_up, &long, value_records);
    // Entries and deltas hold references only: the one stored copy of a value is its record.
    let stored = looked_up.backend().scan_prefix(b"").unwrap();
    let copies = stored
        .iter()
        .filter(|(_, v)| String::from_utf8_lossy(v).contains(&long))
        .count();
    assert_eq!(copies, 6, "one copy per write of a");
    drop(looked_up);

    // Reopened, it loads the same entries (values read back) and digest.
    let reopened =
        SignedState::open_with_values(SledBackend::open(dir.path()).unwrap(), 100, lookup).unwrap();
    assert_eq!(reopened.digest(), kept.digest());
    assert_eq!(value_of(&reopened, "a"), Some(format!("{long}5")));
    assert_eq!(value_of(&reopened, "b"), None);
    assert_eq!(reopened.snapshot(), kept.snapshot());
}

#[test]
fn a_delta_whose_value_is_no_longer_kept_is_not_served() {
    let mut s = SignedState::open_with_values(MemBackend::new(), 100, lookup).unwrap();
    let mut deltas = Vec::new();
    for i in 0..3 {
        let v = i.to_string();
        let d = next(&s, &[("a", Some(&v))]);
        s.apply_delta_with(&d, value_records(&d)).unwrap();
        deltas.push(d);
    }
    s.publish().unwrap();
    // The first version's record goes (as history compaction would drop it): deltas from
    // revision 1 can no longer be rebuilt, so the caller sends a snapshot instead; later ones
    // still are.
    let gone = value_key(&deltas[0].delta.changes[0].address, Version(1));
    s.write_extra(vec![(gone, None)]).unwrap();
    assert_eq!(s.deltas_after(Revision(0), 10).unwrap(), None);
    assert_eq!(
        s.deltas_after(Revision(1), 10).unwrap(),
        Some(deltas[1..].to_vec())
    );

    // A store whose newest value of an entry is missing does not open.
    let newest = value_key(&deltas[2].delta.changes[0].address, Version(3));
    s.write_extra(vec![(newest, None)]).unwrap();
    s.flush().unwrap();
    let backend = s.backend().clone();
    assert!(matches!(
        SignedState::open_with_values(backend, 100, lookup),
        Err(StoreError::Invalid(_))
    ));
}

/// Where the kept-entries test keeps its change records: `xk` + key + `\0` + version
/// (big-endian) → postcard `(revision, value)`, as the origin's history does.
fn change_key(key: &str, version: Version) -> Vec<u8> {
    let mut k = b"xk".to_vec();
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.0.to_be_bytes());
    k
}

fn change_records(d: &SignedDelta) -> Vec<meridian_store::Write> {
    d.delta
        .changes
        .iter()
        .map(|c| {
            let record = (d.delta.revision.0, c.value.as_ref().map(|v| v.to_string()));
            (
                change_key(&c.address.key, c.version),
                Some(postcard::to_allocvec(&record).unwrap()),
            )
        })
        .collect()
}

fn change_at<B: Backend>(
    backend: &B,
    address: &Address,
    version: Version,
) -> Result<Option<Option<meridian_protocol::JsonText>>, StoreError> {
    Ok(backend.get(&change_key(&address.key, version))?.map(|b| {
        postcard::from_bytes::<(u64, Option<String>)>(&b)
            .unwrap()
            .1
            .map(Into::into)
    }))
}

/// The newest change record of each key, as entries.
fn listed_entries<B: Backend>(
    backend: &B,
) -> Result<Vec<(Address, meridian_protocol::EntryState)>, StoreError> {
    let mut out: Vec<(Address, meridian_protocol::EntryState)> = Vec::new();
    for (k, v) in backend.scan_prefix(b"xk")? {
        let (name, version) = k[2..].split_at(k.len() - 2 - 9);
        let address = Address::parse("app", "prod", std::str::from_utf8(name).unwrap()).unwrap();
        let version = Version(u64::from_be_bytes(version[1..].try_into().unwrap()));
        let (revision, value) = postcard::from_bytes::<(u64, Option<String>)>(&v).unwrap();
        let entry = meridian_protocol::EntryState {
            version,
            revision: Revision(revision),
            value: value.map(Into::into),
        };
        match out.last_mut() {
            Some((last, e)) if *last == address => *e = entry,
            _ => out.push((address, entry)),
        }
    }
    Ok(out)
}

/// A lister that forgets the last address: what a store missing a newest record would list.
fn listed_entries_but_one<B: Backend>(
    backend: &B,
) -> Result<Vec<(Address, meridian_protocol::EntryState)>, StoreError> {
    let mut all = listed_entries(backend)?;
    all.pop();
    Ok(all)
}

#[test]
fn a_state_that_lists_its_entries_serves_and_reopens_as_one_that_stores_them() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let sled = SledBackend::open(dir.path()).unwrap();
        SignedState::open_with_kept_entries(sled, 100, change_at, listed_entries)
    };
    let mut stored = SignedState::open(MemBackend::new(), 100).unwrap();
    let mut listed = open().unwrap();
    apply_to_both(&mut stored, &mut listed, "v", change_records);
    let keys: Vec<Vec<u8>> = listed
        .backend()
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        !keys.iter().any(|k| k[0] == b'e'),
        "no entry records: {keys:?}"
    );
    drop(listed);

    // Reopened, it lists the same entries (a deleted key as a tombstone) and digest.
    let reopened = open().unwrap();
    assert_eq!(reopened.digest(), stored.digest());
    assert_eq!(value_of(&reopened, "a").as_deref(), Some("v5"));
    assert_eq!(value_of(&reopened, "b"), None);
    assert_eq!(reopened.snapshot(), stored.snapshot());
    drop(reopened);

    // A listing that misses an address does not hash to the signed digest: refused.
    let sled = SledBackend::open(dir.path()).unwrap();
    assert!(matches!(
        SignedState::open_with_kept_entries(sled, 100, change_at, listed_entries_but_one),
        Err(StoreError::DigestMismatchOnLoad { .. })
    ));
}
