//! The core's dependency rule (DESIGN.md, section 2): replication decisions are plain state
//! machines, so nothing in `meridian-core`'s dependency tree may bring a runtime, sockets,
//! consensus, HTTP, Redis or the on-disk store; and the simulator runs the core, not the
//! shipped shells around it.

use std::process::Command;

/// The crates in `package`'s normal dependency tree (itself included).
fn dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect()
}

fn assert_free_of(package: &str, needed: &str, forbidden: &[&str]) {
    let crates = dependencies(package);
    assert!(crates.iter().any(|c| c == needed), "{package}: {crates:?}");
    for f in forbidden {
        assert!(
            !crates.iter().any(|c| c == f),
            "{package} depends on {f}: {crates:?}"
        );
    }
}

#[test]
fn the_core_depends_on_no_runtime_socket_consensus_http_or_disk_crate() {
    assert_free_of(
        "meridian-core",
        "meridian-protocol",
        &[
            "tokio",
            "quinn",
            "quinn-proto",
            "axum",
            "hyper",
            "openraft",
            "reqwest",
            "redis",
            "sled",
            "rustix",
            "meridian-net",
            "meridian-origin",
            "meridian-edge",
        ],
    );
}

#[test]
fn the_simulator_runs_the_core_not_the_shells() {
    assert_free_of(
        "meridian-sim",
        "meridian-core",
        &[
            "meridian-origin",
            "meridian-edge",
            "meridian-net",
            "tokio",
            "openraft",
            "sled",
        ],
    );
}
