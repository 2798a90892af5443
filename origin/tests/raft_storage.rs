//! The Raft storage passes openraft's own storage test suite, and applying real writes on two
//! state machines (one of them catching up by snapshot) gives identical signed states.

use std::sync::Arc;

use meridian_origin::raft::log_store::LogStore;
use meridian_origin::raft::relay::SharedRelay;
use meridian_origin::raft::state_machine::StateMachine;
use meridian_origin::raft::{NodeId, TypeConfig};
use meridian_protocol::Signer;
use openraft::testing::{StoreBuilder, Suite};

struct SledStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Arc<tempfile::TempDir>> for SledStores {
    async fn build(
        &self,
    ) -> Result<(Arc<tempfile::TempDir>, LogStore, StateMachine), openraft::StorageError<NodeId>>
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = meridian_store::DurableDb::open(dir.path()).expect("sled");
        let log = LogStore::open(&db).expect("log store");
        let sm = StateMachine::open(&db, Signer::from_bytes(&[7; 32]), 1024, SharedRelay::new())
            .expect("state machine");
        Ok((Arc::new(dir), log, sm))
    }
}

#[test]
fn sled_storage_passes_openrafts_suite() {
    if let Err(e) = Suite::test_all(SledStores) {
        panic!("openraft's storage suite failed: {e}");
    }
}

mod writes {
    use std::sync::Arc;

    use meridian_core::apply::{Command, Proposal};
    use meridian_core::history::WriteMeta;
    use meridian_origin::raft::relay::SharedRelay;
    use meridian_origin::raft::state_machine::StateMachine;
    use meridian_origin::raft::{Entry, LogId, Outcome, Request};
    use meridian_protocol::{Address, Revision, Signer};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

    fn open(dir: &tempfile::TempDir) -> StateMachine {
        // Through SledBackend::open, which waits for the previous handle's flusher to let go.
        let db = meridian_store::DurableDb::open(dir.path()).expect("sled");
        StateMachine::open(&db, Signer::from_bytes(&[7; 32]), 1024, SharedRelay::new())
            .expect("state machine")
    }

    fn put_command(key: &str, value: &str, expect_version: Option<u64>) -> Command {
        Command::Put {
            address: Address::parse("app", "prod", key).expect("address"),
            value: Arc::from(value),
            expect_version,
        }
    }

    fn entry(index: u64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Request {
                commands: commands
                    .into_iter()
                    .map(|command| Proposal {
                        command,
                        meta: WriteMeta {
                            // One time for every entry: a revision's provenance (who, when,
                            // why) is signed state, so a batch and single entries must agree.
                            time_ms: 1,
                            actor: "test".into(),
                            reason: None,
                            ..Default::default()
                        },
                    })
                    .collect(),
            }),
        }
    }

    fn put(index: u64, key: &str, value: &str, expect_version: Option<u64>) -> Entry {
        entry(index, vec![put_command(key, value, expect_version)])
    }

    /// The outcome of the only command of an entry's response.
    fn only(r: &meridian_origin::raft::Response) -> &Outcome {
        assert_eq!(r.outcomes.len(), 1, "{r:?}");
        &r.outcomes[0]
    }

    #[tokio::test]
    async fn a_batch_entry_signs_the_same_states_as_one_entry_per_write() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let commands = vec![
            put_command("a", "1", None),
            put_command("a", "2", Some(9)),
            put_command("b", "3", Some(0)),
            Command::Delete {
                address: Address::parse("app", "prod", "a").unwrap(),
                expect_version: None,
            },
        ];
        let mut a = open(&a_dir);
        let out = a.apply(vec![entry(1, commands.clone())]).await.unwrap();
        let outcomes = &out[0].outcomes;
        assert_eq!(outcomes.len(), 4);
        assert!(matches!(&outcomes[0], Outcome::Applied(r) if r.revision == Revision(1)));
        assert!(matches!(
            &outcomes[1],
            Outcome::VersionConflict {
                expected: 9,
                actual: 1,
                ..
            }
        ));
        assert!(matches!(&outcomes[2], Outcome::Applied(r) if r.revision == Revision(2)));
        assert!(matches!(&outcomes[3], Outcome::Applied(r) if r.revision == Revision(3)));
        let mut b = open(&b_dir);
        let singles: Vec<Entry> = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, vec![c]))
            .collect();
        b.apply(singles).await.unwrap();
        let (a, b) = (a.core(), b.core());
        let (a, b) = (a.lock().unwrap(), b.lock().unwrap());
        assert_eq!(a.state().revision(), Revision(3));
        assert_eq!(a.state().head(), b.state().head());
        assert_eq!(a.state().digest(), b.state().digest());
    }

    #[tokio::test]
    async fn writes_apply_identically_survive_a_restart_and_travel_by_snapshot() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(&a_dir);
        let entries = vec![
            put(1, "db.url", "\"x\"", None),
            put(2, "db.url", "\"y\"", Some(7)),
            put(3, "timeout_ms", "200", None),
        ];
        let out = a.apply(entries.clone()).await.unwrap();
        assert!(matches!(only(&out[0]), Outcome::Applied(r) if r.revision == Revision(1)));
        assert!(matches!(
            only(&out[1]),
            Outcome::VersionConflict {
                expected: 7,
                actual: 1,
                ..
            }
        ));
        assert!(matches!(only(&out[2]), Outcome::Applied(r) if r.revision == Revision(2)));
        let digest = a.core().lock().unwrap().state().digest();

        // A refused write is still applied: the log position moves past it, on every node.
        let (applied, _) = a.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));

        // Closed cleanly (flushed, as an origin's shutdown does) and reopened, the state
        // machine resumes where it was and does not apply anything twice.
        a.core().lock().unwrap().state_mut().flush().unwrap();
        drop(a);
        let mut a = open(&a_dir);
        let (applied, _) = a.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        assert_eq!(a.core().lock().unwrap().state().revision(), Revision(2));
        assert_eq!(a.core().lock().unwrap().state().digest(), digest);

        // Another node applying the same entries signs the same state.
        let mut b = open(&b_dir);
        b.apply(entries).await.unwrap();
        assert_eq!(b.core().lock().unwrap().state().digest(), digest);
        assert_eq!(
            b.core().lock().unwrap().state().head(),
            a.core().lock().unwrap().state().head()
        );

        // A third node catches up by snapshot alone.
        let snapshot = a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let c_dir = tempfile::tempdir().unwrap();
        let mut c = open(&c_dir);
        c.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(c.core().lock().unwrap().state().digest(), digest);
        let (applied, _) = c.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        let current = c.get_current_snapshot().await.unwrap().expect("kept");
        assert_eq!(current.meta, snapshot.meta);
    }
}
