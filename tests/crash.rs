//! An edge process killed with SIGKILL in the middle of a large catch-up restarts with a whole
//! revision whose digest matches a signed head, never lower than one it served, and converges.

mod common;

use std::time::{Duration, Instant};

use common::*;
use meridian::dev::{REGIONS, edge_config, origin_config, pki};
use meridian_protocol::{Revision, TrustedKeys};
use meridian_store::{SignedState, SledBackend};
use serde_json::json;

const REVISIONS: u64 = 300;
const VALUE_BYTES: usize = 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_catch_up_leaves_a_whole_signed_revision() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path()).unwrap();
    let opts = common::options(dir.path());
    // One revision in flight at a time makes the catch-up a long series of small durable steps,
    // so the kill reliably lands in the middle of it.
    let mut origin_cfg = origin_config(&opts, &pki);
    origin_cfg.max_inflight_deltas = 1;
    let origin = meridian_origin::start(origin_cfg).await.unwrap();
    let c = http();
    let origin_url = base(origin.http_addr);
    let filler = "x".repeat(VALUE_BYTES);
    for i in 0..REVISIONS {
        put(
            &c,
            &origin_url,
            &format!("big/prod/k{}", i % 50),
            json!(format!("{i}{filler}")),
        )
        .await;
    }

    let config = edge_config(
        dir.path(),
        &pki,
        REGIONS[1],
        "127.0.0.1:0".parse().unwrap(),
        origin.quic_addr,
    );
    let data_dir = config.data_dir.clone();
    let config_path = dir.path().join("edge.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    let (mut child, url) = spawn_node("edge", &config_path);
    let started = Instant::now();
    let served = eventually(Duration::from_secs(60), "catch-up under way", || async {
        let r = revision(&c, &url).await;
        (r >= 20).then_some(r)
    })
    .await;
    child.kill();
    eprintln!(
        "killed at served revision {served} of {REVISIONS} after {:?}",
        started.elapsed()
    );
    assert!(
        served < REVISIONS,
        "the kill landed before catch-up finished"
    );

    let trusted =
        TrustedKeys::new([meridian_net::tls::load_verifying_key(&pki.signing_pub).unwrap()]);
    let revision_on_disk = {
        let state = SignedState::open(SledBackend::open(&data_dir).unwrap(), 1000)
            .expect("the store opens and its digest matches its head");
        let head = state.head().expect("a signed head is stored");
        trusted
            .verify_head(&head)
            .expect("the stored head is signed by the origin");
        assert_eq!(head.head.revision, state.revision());
        assert_eq!(head.head.digest, state.digest());
        assert!(
            state.revision() >= Revision(served),
            "never below what was served"
        );
        state.revision().0
    };

    let (mut child, url) = spawn_node("edge", &config_path);
    let first = revision(&c, &url).await;
    assert!(first >= revision_on_disk);
    eventually(
        Duration::from_secs(60),
        "restarted edge converges",
        || async { (revision(&c, &url).await == REVISIONS + BOOT).then_some(()) },
    )
    .await;
    assert_eq!(
        status(&c, &url).await["digest"],
        status(&c, &origin_url).await["digest"]
    );
    child.kill();
    origin.shutdown().await;
}
