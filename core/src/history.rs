//! Per-key change history at the origin: every change of every key, with the version and
//! revision it made, its value, and who made it, when and why.
//!
//! Records live in the origin's state backend beside the entries (keys under
//! [`HISTORY_PREFIX`]) and are written in the same atomic batch as the revision that made them,
//! by every Raft node alike: the time, actor and reason come from the committed command, never
//! from the applying node's clock. Retention is bounded (last N versions per key and/or an age),
//! enforced by a compaction command the leader commits periodically; the newest record of a key
//! is always kept. History is never rewritten: a rollback is a new version.
//!
//! Also here: the JSON diff used by the diff endpoints, and the state of a namespace at a past
//! revision, reconstructed from history for environment diffs and rollbacks.

use std::collections::BTreeMap;

use crate::apply::{Command, Condition, TxnOp};
use meridian_protocol::{Address, Change, EntryState, JsonText, Revision, Version};
use meridian_store::{Backend, BackendError, EXTRA_PREFIX, StoreError, Write};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where history records live in the backend: `xh` + app `\0` env `\0` key `\0` + version
/// (big-endian).
pub const HISTORY_PREFIX: [u8; 2] = [EXTRA_PREFIX, b'h'];

/// Longest actor name accepted.
pub const MAX_ACTOR_BYTES: usize = 128;
/// Longest reason accepted.
pub const MAX_REASON_BYTES: usize = 1024;

/// Milliseconds since the Unix epoch on this node's clock (0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Who made a write, when, and why; chosen by the node that accepted it and committed with it
/// (in the key's history and the audit log).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMeta {
    /// Milliseconds since the Unix epoch, on the accepting node's clock.
    pub time_ms: u64,
    /// Who: the authenticated principal (`name#id`).
    pub actor: String,
    /// Why, if given.
    pub reason: Option<String>,
    /// The request's id (`x-request-id`), for the audit log.
    pub request_id: Option<String>,
    /// The client's address, for the audit log.
    pub source: Option<String>,
    /// What the audit log calls the write when the command alone does not say (`rollback`).
    pub action: Option<String>,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The key's version after the change.
    pub version: u64,
    /// The revision the change was part of.
    pub revision: u64,
    /// The value after the change; `None` when deleted.
    pub value: Option<JsonText>,
    /// When (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
}

/// How much history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep at most this many versions per key (at least 1).
    pub max_versions: u32,
    /// Drop versions older than this (milliseconds; `None`: no age limit). The newest version of
    /// a key is kept whatever its age.
    pub max_age_ms: Option<u64>,
}

fn namespace_bytes(k: &mut Vec<u8>, app: &str, env: &str) {
    k.extend_from_slice(&HISTORY_PREFIX);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(env.as_bytes());
    k.push(0);
}

/// The prefix of every record of `(app, env)`.
pub fn namespace_prefix(app: &str, env: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + app.len() + env.len());
    namespace_bytes(&mut k, app, env);
    k
}

/// The prefix of every record of one key.
pub fn key_prefix(a: &Address) -> Vec<u8> {
    let mut k = namespace_prefix(&a.app, &a.env);
    k.extend_from_slice(a.key.as_bytes());
    k.push(0);
    k
}

fn record_key(a: &Address, version: u64) -> Vec<u8> {
    let mut k = key_prefix(a);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The write that drops the record of `a` at `version`.
pub fn forget(a: &Address, version: u64) -> Write {
    (record_key(a, version), None)
}

/// The key name and version of a record key under a namespace prefix.
fn split_key(rest: &[u8]) -> Option<(&str, u64)> {
    if rest.len() < 9 {
        return None;
    }
    let (name, tail) = rest.split_at(rest.len() - 9);
    if tail[0] != 0 {
        return None;
    }
    let mut be = [0u8; 8];
    be.copy_from_slice(&tail[1..]);
    Some((std::str::from_utf8(name).ok()?, u64::from_be_bytes(be)))
}

/// The writes recording `changes`, made by `revision`.
pub fn record_writes(changes: &[Change], revision: Revision, meta: &WriteMeta) -> Vec<Write> {
    changes
        .iter()
        .map(|c| {
            let record = HistoryRecord {
                version: c.version.0,
                revision: revision.0,
                value: c.value.clone(),
                time_ms: meta.time_ms,
                actor: meta.actor.clone(),
                reason: meta.reason.clone(),
            };
            // Encoding a struct of strings and integers cannot fail.
            let bytes = postcard::to_allocvec(&record).unwrap_or_default();
            (record_key(&c.address, c.version.0), Some(bytes))
        })
        .collect()
}

/// Why history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A record did not decode.
    #[error("a history record of {0} is corrupt")]
    Corrupt(String),
}

fn decode(what: &str, bytes: &[u8]) -> Result<HistoryRecord, HistoryError> {
    postcard::from_bytes(bytes).map_err(|_| HistoryError::Corrupt(what.to_string()))
}

/// The revision a stored history record was written at, read from the front of its bytes
/// without decoding the value (a record starts with its version, then its revision).
pub fn record_revision(bytes: &[u8]) -> Result<u64, HistoryError> {
    postcard::take_from_bytes::<(u64, u64)>(bytes)
        .map(|((_version, revision), _rest)| revision)
        .map_err(|_| HistoryError::Corrupt("a record being read for a snapshot".into()))
}

/// The revisions at which each key of `(app, env)` starting with `key_prefix` changed (deletes
/// included), oldest first, as far as history retains them; values are not decoded.
pub fn change_revisions(
    backend: &impl Backend,
    app: &str,
    env: &str,
    key_prefix: &str,
) -> Result<BTreeMap<String, Vec<u64>>, HistoryError> {
    let namespace = namespace_prefix(app, env);
    let mut prefix = namespace.clone();
    prefix.extend_from_slice(key_prefix.as_bytes());
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (k, v) in backend.scan_prefix(&prefix)? {
        let Some((name, _version)) = split_key(&k[namespace.len()..]) else {
            continue;
        };
        let revision = record_revision(&v).map_err(|_| HistoryError::Corrupt(name.into()))?;
        out.entry(name.to_owned()).or_default().push(revision);
    }
    Ok(out)
}

/// The value `a` had at `version`, from its history record: the [`meridian_store::ValueLookup`]
/// of the Raft state machine, whose entries and deltas store references to these records
/// rather than second and third copies of each value. `None` when the record was compacted
/// away (never the newest of a key).
pub fn value_at<B: Backend>(
    backend: &B,
    a: &Address,
    version: Version,
) -> Result<Option<Option<JsonText>>, StoreError> {
    match backend.get(&record_key(a, version.0))? {
        None => Ok(None),
        Some(bytes) => {
            let record = decode("value lookup", &bytes)
                .map_err(|_| StoreError::Invalid("history record"))?;
            Ok(Some(record.value))
        }
    }
}

/// The current entry of every address, from the newest history record of each: the
/// [`meridian_store::EntryLister`] of the Raft state machine, which stores no entry records of
/// its own (compaction always keeps the newest record of a key, deletes included).
pub fn current_entries<B: Backend>(backend: &B) -> Result<Vec<(Address, EntryState)>, StoreError> {
    let records = backend.scan_prefix(&HISTORY_PREFIX)?;
    entries_of_records(records.iter().map(|(k, v)| (&k[..], &v[..])))
}

/// The entry of every address that `records` (raw `(key, value)` pairs in key order, as stored
/// under [`HISTORY_PREFIX`]; pairs under other prefixes are skipped) hold a record of: the
/// newest record of each. What [`current_entries`] lists from the backend, and what a node
/// installing a snapshot lists from the snapshot's records.
pub fn entries_of_records<'a>(
    records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Vec<(Address, EntryState)>, StoreError> {
    let invalid = || StoreError::Invalid("history record key");
    let mut out: Vec<(Address, EntryState)> = Vec::new();
    for (k, v) in records {
        let Some(rest) = k.strip_prefix(&HISTORY_PREFIX[..]) else {
            continue;
        };
        let mut parts = rest.splitn(3, |b| *b == 0);
        let (Some(app), Some(env), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let (name, _) = split_key(tail).ok_or_else(invalid)?;
        let app = std::str::from_utf8(app).map_err(|_| invalid())?;
        let env = std::str::from_utf8(env).map_err(|_| invalid())?;
        let address = Address {
            app: app.to_owned(),
            env: env.to_owned(),
            key: name.to_owned(),
        };
        // A client address, or a token or policy record.
        if !address.is_valid() {
            return Err(invalid());
        }
        let record =
            decode("entry listing", v).map_err(|_| StoreError::Invalid("history record"))?;
        let entry = EntryState {
            version: Version(record.version),
            revision: Revision(record.revision),
            value: record.value,
        };
        // Records come in key order: a key's versions together, oldest first.
        match out.last_mut() {
            Some((last, e)) if *last == address => *e = entry,
            _ => out.push((address, entry)),
        }
    }
    Ok(out)
}

/// A page of one key's history, newest first: versions below `before` (all when `None`), at
/// most `limit`; and the `before` of the next page, if there is one.
pub fn page(
    backend: &impl Backend,
    a: &Address,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<HistoryRecord>, Option<u64>), HistoryError> {
    let from = record_key(a, 0);
    let to = record_key(a, before.unwrap_or(u64::MAX));
    // The backend ranges forward only; a key's history is bounded by retention.
    let all = backend.range(&from, &to, usize::MAX)?;
    let mut records = Vec::with_capacity(limit.min(all.len()));
    for (_, v) in all.iter().rev().take(limit.saturating_add(1)) {
        records.push(decode(&a.to_string(), v)?);
    }
    let next = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|r| r.version)
    } else {
        None
    };
    Ok((records, next))
}

/// The record of version `version` of `a`, if it is retained.
pub fn at_version(
    backend: &impl Backend,
    a: &Address,
    version: u64,
) -> Result<Option<HistoryRecord>, HistoryError> {
    backend
        .get(&record_key(a, version))?
        .map(|v| decode(&a.to_string(), &v))
        .transpose()
}

/// What a namespace held at a past revision, reconstructed from history.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NamespaceAt {
    /// Each key that held a value then, with the record that set it.
    pub live: BTreeMap<String, HistoryRecord>,
    /// Keys whose state then is no longer known (compacted away).
    pub unknown: Vec<String>,
}

/// The live keys of `(app, env)` as of `revision`: for each key, its newest record at or before
/// `revision`. A key whose oldest retained record is newer than `revision` but not its first
/// version is reported as unknown.
pub fn namespace_at(
    backend: &impl Backend,
    app: &str,
    env: &str,
    revision: u64,
) -> Result<NamespaceAt, HistoryError> {
    let prefix = namespace_prefix(app, env);
    let mut out = NamespaceAt::default();
    // Per key: (oldest retained version, its revision, newest record at or before `revision`).
    let mut keys: BTreeMap<String, (u64, u64, Option<HistoryRecord>)> = BTreeMap::new();
    for (k, v) in backend.scan_prefix(&prefix)? {
        let Some((name, version)) = split_key(&k[prefix.len()..]) else {
            continue;
        };
        let record = decode(name, &v)?;
        let slot = keys
            .entry(name.to_string())
            .or_insert((version, record.revision, None));
        if record.revision <= revision {
            slot.2 = Some(record);
        }
    }
    for (name, (oldest_version, oldest_revision, at)) in keys {
        match at {
            Some(r) if r.value.is_some() => {
                out.live.insert(name, r);
            }
            Some(_) => {}
            None if oldest_version > 1 && oldest_revision > revision => out.unknown.push(name),
            None => {}
        }
    }
    Ok(out)
}

/// The command that rolls `a` back to `target` (one of its history records): a put of that
/// value, or a delete if it was a deletion, refused if `a` is no longer at `current_version`
/// (its live version; 0 when absent).
pub fn key_rollback(a: &Address, target: &HistoryRecord, current_version: u64) -> Command {
    match &target.value {
        Some(value) => Command::Put {
            address: a.clone(),
            value: value.clone(),
            expect_version: Some(current_version),
        },
        None => Command::Delete {
            address: a.clone(),
            expect_version: Some(current_version),
        },
    }
}

/// The transaction that brings `(app, env)` from `current` (its live keys: key, version,
/// value) back to `target`: a put for each key whose value differs, a delete for each key
/// not in `target`, each conditioned on the version it was read at. Empty if nothing differs.
pub fn env_rollback(
    app: &str,
    env: &str,
    target: &NamespaceAt,
    current: &BTreeMap<String, (u64, JsonText)>,
) -> Command {
    let at = |k: &str| Address {
        app: app.to_string(),
        env: env.to_string(),
        key: k.to_string(),
    };
    let mut conditions = Vec::new();
    let mut ops = Vec::new();
    for (k, r) in &target.live {
        let (version, value) = match current.get(k) {
            Some((v, text)) => (*v, Some(text.as_ref())),
            None => (0, None),
        };
        if let Some(v) = &r.value
            && value != Some(v.as_ref())
        {
            conditions.push(Condition::VersionEquals(at(k), version));
            ops.push(TxnOp::Put(at(k), v.clone()));
        }
    }
    for (k, (version, _)) in current {
        if !target.live.contains_key(k) {
            conditions.push(Condition::VersionEquals(at(k), *version));
            ops.push(TxnOp::Delete(at(k)));
        }
    }
    Command::Txn { conditions, ops }
}

/// The deletions that bring history within `retention` at `now_ms`, given the key of every
/// history record in key order (`keys`, as a key scan of [`HISTORY_PREFIX`] returns them) and
/// a reader of a record's value. Only the records an age limit has to look at are read (those
/// neither the newest of their key nor beyond `max_versions` already): a compaction applied on
/// every node under the state's lock must not copy every value (at 260,000 records that
/// froze each node for over a second, long enough for an election).
pub fn compaction(
    keys: &[Vec<u8>],
    retention: Retention,
    now_ms: u64,
    mut value_of: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Vec<Write>, HistoryError> {
    let keep = retention.max_versions.max(1) as usize;
    let cutoff = retention.max_age_ms.map(|age| now_ms.saturating_sub(age));
    // Each revision's provenance trims its own records, by the delta window (see
    // `OriginCore::commit_writes`): the deltas still served need them whatever the retention.
    let provenance = key_prefix(&meridian_protocol::provenance::address());
    let mut out = Vec::new();
    // Records of one key are adjacent and in version order; the key part is everything before
    // the version.
    let mut i = 0;
    while i < keys.len() {
        let key_part = &keys[i][..keys[i].len().saturating_sub(8)];
        let mut j = i;
        while j < keys.len() && keys[j].len() == keys[i].len() && keys[j].starts_with(key_part) {
            j += 1;
        }
        let group = &keys[i..j];
        if key_part == provenance.as_slice() {
            i = j.max(i + 1);
            continue;
        }
        let newest = group.len() - 1;
        for (n, k) in group.iter().enumerate() {
            if n == newest {
                break;
            }
            let too_many = newest - n >= keep;
            let too_old = match cutoff {
                Some(cut) if !too_many => match value_of(k).map_err(store_to_history)? {
                    Some(v) => decode("compaction", &v)?.time_ms < cut,
                    None => false,
                },
                _ => false,
            };
            if too_many || too_old {
                out.push((k.clone(), None));
            }
        }
        i = j.max(i + 1);
    }
    Ok(out)
}

fn store_to_history(e: StoreError) -> HistoryError {
    match e {
        StoreError::Backend(b) => HistoryError::Backend(b),
        other => HistoryError::Corrupt(other.to_string()),
    }
}

/// One JSON path that differs between two values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathChange {
    /// A JSON Pointer (RFC 6901); `""` is the whole value.
    pub path: String,
    /// The value before (absent for an added path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The value after (absent for a removed path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// What differs between two JSON values: paths added, removed and changed. Objects are
/// compared member by member; arrays and scalars as whole values.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct JsonDiff {
    /// Paths only in the newer value.
    pub added: Vec<PathChange>,
    /// Paths only in the older value.
    pub removed: Vec<PathChange>,
    /// Paths in both with different values.
    pub changed: Vec<PathChange>,
}

impl JsonDiff {
    /// Whether the values are equal.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The diff from `from` to `to`; `None` stands for "no value" (absent or deleted).
pub fn json_diff(from: Option<&Value>, to: Option<&Value>) -> JsonDiff {
    let mut d = JsonDiff::default();
    diff_at(&mut d, String::new(), from, to);
    d
}

fn diff_at(d: &mut JsonDiff, path: String, from: Option<&Value>, to: Option<&Value>) {
    match (from, to) {
        (None, None) => {}
        (None, Some(t)) => d.added.push(PathChange {
            path,
            from: None,
            to: Some(t.clone()),
        }),
        (Some(f), None) => d.removed.push(PathChange {
            path,
            from: Some(f.clone()),
            to: None,
        }),
        (Some(Value::Object(f)), Some(Value::Object(t))) => {
            for (k, fv) in f {
                diff_at(d, format!("{path}/{}", escape(k)), Some(fv), t.get(k));
            }
            for (k, tv) in t.iter().filter(|(k, _)| !f.contains_key(*k)) {
                diff_at(d, format!("{path}/{}", escape(k)), None, Some(tv));
            }
        }
        (Some(f), Some(t)) if f != t => d.changed.push(PathChange {
            path,
            from: Some(f.clone()),
            to: Some(t.clone()),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::Version;
    use meridian_store::MemBackend;
    use serde_json::json;

    fn at(key: &str) -> Address {
        Address::parse("pay", "prod", key).unwrap()
    }

    fn record(
        b: &mut MemBackend,
        key: &str,
        version: u64,
        revision: u64,
        value: Option<&str>,
        time_ms: u64,
    ) {
        let change = Change {
            address: at(key),
            version: Version(version),
            value: value.map(Into::into),
        };
        let meta = WriteMeta {
            time_ms,
            actor: "ops".into(),
            reason: Some(format!("v{version}")),
            ..Default::default()
        };
        b.apply(record_writes(&[change], Revision(revision), &meta))
            .unwrap();
    }

    #[test]
    fn a_records_revision_is_read_without_decoding_the_rest() {
        let meta = WriteMeta {
            time_ms: 9,
            actor: "a".into(),
            reason: Some("why".into()),
            ..Default::default()
        };
        let change = Change {
            address: at("k"),
            version: Version(300),
            value: Some(std::sync::Arc::from("{\"big\": 1}")),
        };
        let writes = record_writes(&[change], Revision(70_000), &meta);
        let bytes = writes[0].1.as_ref().expect("a record");
        assert_eq!(record_revision(bytes).unwrap(), 70_000);
        assert_eq!(decode("k", bytes).unwrap().revision, 70_000);
        assert!(record_revision(&[0xff]).is_err());
    }

    #[test]
    fn pages_go_newest_first_and_end() {
        let mut b = MemBackend::new();
        for v in 1..=5 {
            record(&mut b, "k", v, v * 10, Some(&v.to_string()), v);
        }
        // A neighbour whose name extends this key's must not leak in.
        record(&mut b, "k2", 1, 60, Some("x"), 6);
        let (p1, next) = page(&b, &at("k"), None, 2).unwrap();
        assert_eq!(p1.iter().map(|r| r.version).collect::<Vec<_>>(), [5, 4]);
        assert_eq!(next, Some(4));
        let (p2, next) = page(&b, &at("k"), next, 2).unwrap();
        assert_eq!(p2.iter().map(|r| r.version).collect::<Vec<_>>(), [3, 2]);
        let (p3, next) = page(&b, &at("k"), next, 2).unwrap();
        assert_eq!(p3.iter().map(|r| r.version).collect::<Vec<_>>(), [1]);
        assert_eq!(next, None);
        assert_eq!(p1[0].reason.as_deref(), Some("v5"));
        assert_eq!(at_version(&b, &at("k"), 3).unwrap().unwrap().revision, 30);
    }

    #[test]
    fn change_revisions_list_each_keys_changes_under_a_prefix() {
        let mut b = MemBackend::new();
        record(&mut b, "db.url", 1, 3, Some("1"), 1);
        record(&mut b, "db.url", 2, 8, None, 2);
        record(&mut b, "db.pool", 1, 5, Some("1"), 1);
        record(&mut b, "web", 1, 9, Some("1"), 1);
        let all = change_revisions(&b, "pay", "prod", "").unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all["db.url"], [3, 8]);
        let db = change_revisions(&b, "pay", "prod", "db.").unwrap();
        assert_eq!(db.keys().collect::<Vec<_>>(), ["db.pool", "db.url"]);
        assert!(change_revisions(&b, "pay", "dev", "").unwrap().is_empty());
    }

    /// Versions 1-5 of "k" (written at t = 1-5 s) and one version of `single` at t = 1 ms.
    fn five_versions_and_one(single: &str) -> MemBackend {
        let mut b = MemBackend::new();
        for v in 1..=5 {
            record(&mut b, "k", v, v, Some("1"), v * 1000);
        }
        record(&mut b, single, 1, 9, Some("1"), 1);
        b
    }

    fn compact(b: &MemBackend, retention: Retention, now_ms: u64) -> Vec<Write> {
        let keys = b.scan_prefix_keys(&HISTORY_PREFIX).unwrap();
        compaction(&keys, retention, now_ms, |k| Ok(b.get(k)?)).unwrap()
    }

    #[test]
    fn compaction_reads_only_the_records_an_age_limit_must_look_at() {
        let b = five_versions_and_one("single");
        let keys = b.scan_prefix_keys(&HISTORY_PREFIX).unwrap();
        let mut read = Vec::new();
        let keep3_young = Retention {
            max_versions: 3,
            max_age_ms: Some(100_000),
        };
        let out = compaction(&keys, keep3_young, 10_000, |k| {
            read.push(split_key(&k[namespace_prefix("pay", "prod").len()..]).map(|(_, v)| v));
            Ok(b.get(k)?)
        })
        .unwrap();
        assert_eq!(out.len(), 2);
        // Versions 1 and 2 go by count, 5 is the newest, "single" has one record: only 3
        // and 4 are read.
        assert_eq!(read, [Some(3), Some(4)]);
    }

    #[test]
    fn compaction_keeps_the_newest_versions_and_drops_old_ones() {
        let mut b = five_versions_and_one("old");
        let keep3 = Retention {
            max_versions: 3,
            max_age_ms: None,
        };
        b.apply(compact(&b, keep3, 10_000)).unwrap();
        let (left, _) = page(&b, &at("k"), None, 10).unwrap();
        assert_eq!(
            left.iter().map(|r| r.version).collect::<Vec<_>>(),
            [5, 4, 3]
        );
        // By age: versions older than 1.5 s at t = 5 s go, the newest stays however old.
        let young = Retention {
            max_versions: 100,
            max_age_ms: Some(1_500),
        };
        b.apply(compact(&b, young, 5_000)).unwrap();
        let (left, _) = page(&b, &at("k"), None, 10).unwrap();
        assert_eq!(left.iter().map(|r| r.version).collect::<Vec<_>>(), [5, 4]);
        assert_eq!(page(&b, &at("old"), None, 10).unwrap().0.len(), 1);
    }

    #[test]
    fn a_namespace_is_reconstructed_at_a_past_revision() {
        let mut b = MemBackend::new();
        record(&mut b, "a", 1, 1, Some("1"), 0);
        record(&mut b, "b", 1, 2, Some("2"), 0);
        record(&mut b, "a", 2, 3, Some("3"), 0);
        record(&mut b, "b", 2, 4, None, 0);
        record(&mut b, "c", 1, 5, Some("5"), 0);
        let at2 = namespace_at(&b, "pay", "prod", 2).unwrap();
        let values: Vec<_> = at2
            .live
            .iter()
            .map(|(k, r)| (k.as_str(), r.value.as_deref().unwrap()))
            .collect();
        assert_eq!(values, [("a", "1"), ("b", "2")]);
        let at4 = namespace_at(&b, "pay", "prod", 4).unwrap();
        assert_eq!(at4.live.keys().collect::<Vec<_>>(), ["a"]);
        // Compacting away version 1 of `a` makes its state at revision 2 unknown.
        b.apply(vec![(record_key(&at("a"), 1), None)]).unwrap();
        let at2 = namespace_at(&b, "pay", "prod", 2).unwrap();
        assert_eq!(at2.unknown, ["a"]);
    }

    #[test]
    fn json_diff_names_paths_added_removed_and_changed() {
        let from = json!({"pool": {"min": 1, "max": 10}, "hosts": ["a"], "debug": true, "a/b": 1});
        let to = json!({"pool": {"min": 1, "max": 20}, "hosts": ["a", "b"], "tls": {"on": true}, "a/b": 1});
        let d = json_diff(Some(&from), Some(&to));
        let paths = |v: &Vec<PathChange>| v.iter().map(|c| c.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&d.added), ["/tls"]);
        assert_eq!(paths(&d.removed), ["/debug"]);
        assert_eq!(paths(&d.changed), ["/hosts", "/pool/max"]);
        assert_eq!(d.changed[1].from, Some(json!(10)));
        assert!(json_diff(Some(&from), Some(&from)).is_empty());
        assert_eq!(paths(&json_diff(None, Some(&to)).added), [""]);
        assert_eq!(paths(&json_diff(Some(&json!(1)), None).removed), [""]);
    }
}
