//! Tests of the simulator itself: a healthy run passes and replays to the same trace, the
//! peer relay carries a region cut off from the origin, and deliberately broken replicators
//! are caught by the matching invariant.

use meridian_sim::network::{Fault, Target};
use meridian_sim::{Broken, SimOptions, run};

fn small(seed: u64) -> SimOptions {
    SimOptions {
        seed,
        edges_per_region: 2,
        duration_s: 60,
        write_rate_per_s: 10.0,
        faults: false,
        ..SimOptions::default()
    }
}

#[test]
fn a_healthy_run_passes_and_replays_exactly() {
    let a = run(small(7)).unwrap();
    assert!(a.passed(), "{}", a.summary());
    assert!(a.newest_revision > 300, "the workload committed revisions");
    assert!(a.invariant_checks.signatures > 0 && a.invariant_checks.slo > 0);
    let b = run(small(7)).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash, "same seed, same trace");
    let c = run(small(8)).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash, "another seed, another trace");
}

#[test]
fn the_shared_verification_memo_changes_cost_not_outcomes() {
    let mut opts = small(11);
    opts.duration_s = 20;
    opts.faults = true;
    let with = run(opts.clone()).unwrap();
    opts.verify_memo = false;
    let without = run(opts).unwrap();
    assert_eq!(with.trace_hash, without.trace_hash);
    assert_eq!(with.invariant_checks, without.invariant_checks);
    assert!(with.invariant_checks.signatures > 0);
}

#[test]
fn a_region_cut_off_from_the_origin_converges_through_a_peer_region() {
    let mut opts = small(3);
    // ap-south loses the origin for 30 s while eu-west still reaches both.
    opts.script = vec![(
        10.0,
        30.0,
        Fault::Partition {
            from: Target::Region(2),
            to: Target::Origin,
            one_way: false,
        },
    )];
    let report = run(opts).unwrap();
    assert!(report.passed(), "{}", report.summary());
    let ap = &report.commit_to_apply["ap-south"];
    assert!(
        ap.max_ms < 5_000.0,
        "every revision reached ap-south within the SLO: {ap:?}"
    );
    assert!(
        ap.max_ms > 300.0,
        "the partition did delay ap-south: {ap:?}"
    );
}

#[test]
fn the_origin_leader_dies_and_every_edge_carries_on_from_another_node() {
    let mut opts = small(4);
    // Node 0 leads the three-node origin and every edge starts on it; it is down for 8 s.
    opts.script = vec![(10.0, 8.0, Fault::Crash(0))];
    let report = run(opts.clone()).unwrap();
    assert!(report.passed(), "{}", report.summary());
    assert!(
        report
            .faults_timeline
            .iter()
            .any(|l| l.contains("elected leader")),
        "{:?}",
        report.faults_timeline
    );
    assert_eq!(
        report.writes_refused, 0,
        "writes made during the election waited for it and committed"
    );
    // The edges did not wait 8 s for node 0 (the other nodes hold every revision, so the SLO
    // would catch that): each revision reached eu-west within a reconnect.
    let three = report.commit_to_apply["eu-west"].max_ms;
    // A lone origin node cannot commit while it is down.
    opts.origin_nodes = 1;
    let alone = run(opts).unwrap();
    assert!(alone.passed(), "{}", alone.summary());
    assert!(
        alone.writes_refused > 0,
        "a lone origin refuses writes while down"
    );
    assert!(three < 4_000.0, "eu-west waited {three} ms for a revision");
}

#[test]
fn an_edge_that_skips_signature_checks_is_caught() {
    let mut opts = small(5);
    opts.broken = Some(Broken::SkipsSignatureChecks);
    let report = run(opts).unwrap();
    assert!(!report.passed());
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.invariant == "signatures"),
        "{}",
        report.summary()
    );
    assert!(
        report.violations[0]
            .reproduce
            .starts_with("meridian sim --seed 5")
    );
}

#[test]
fn an_edge_that_restarts_from_a_stale_state_is_caught() {
    let mut opts = small(6);
    opts.broken = Some(Broken::AppliesStaleState);
    let report = run(opts).unwrap();
    assert!(
        report.violations.iter().any(|v| v.invariant == "monotonic"),
        "{}",
        report.summary()
    );
}

#[test]
fn every_node_of_a_large_run_has_an_address_of_its_own() {
    // At 100 edges per region node numbers pass 255; an address scheme that kept only the low
    // byte gave two origin nodes the addresses of two edges, which then never received a
    // revision. The world refuses to start with two nodes at one address (the runs at this
    // size are in CI's simulator sweep, on a release build).
    let opts = SimOptions {
        edges_per_region: 100,
        ..SimOptions::default()
    };
    assert!(meridian_sim::world::World::new(opts).is_ok());
}
