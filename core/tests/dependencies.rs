//! The core's dependency rule (DESIGN.md, section 2): replication decisions are plain state
//! machines, so nothing in `meridian-core`'s dependency tree may bring a runtime, sockets,
//! consensus, HTTP, Redis or the on-disk store.

use std::process::Command;

#[test]
fn the_core_depends_on_no_runtime_socket_consensus_http_or_disk_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "meridian-core",
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
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(crates.contains(&"meridian-protocol"), "{tree}");
    for forbidden in [
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
    ] {
        assert!(
            !crates.contains(&forbidden),
            "meridian-core depends on {forbidden}:\n{tree}"
        );
    }
}

#[test]
fn the_simulator_runs_the_core_not_the_shells() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "meridian-sim",
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
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(crates.contains(&"meridian-core"), "{tree}");
    for forbidden in [
        "meridian-origin",
        "meridian-edge",
        "meridian-net",
        "tokio",
        "openraft",
        "sled",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "meridian-sim depends on {forbidden}:\n{tree}"
        );
    }
}
