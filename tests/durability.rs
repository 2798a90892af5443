//! "Acknowledged only after commit" and "durable before readers see it" hold across power
//! loss, not only across a killed process: between a write being sent and its acknowledgement,
//! the origin `fdatasync`s its database file; between that write and the moment an edge first
//! serves it, the edge `fdatasync`s its own. Watched from outside with strace on real
//! processes (sled's own flush only calls `sync_file_range`, which a power loss can undo).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use meridian::dev::{REGIONS, edge_config, pki};
use meridian_origin::OriginConfig;
use serde_json::json;

/// `meridian ROLE --config FILE` under `strace -f -ttt -y -e trace=fdatasync`, logging to
/// `log`; the traced process and strace are both killed when dropped.
struct Traced {
    strace: Child,
    log: PathBuf,
}

impl Traced {
    fn spawn(role: &str, config: &Path, log: &Path) -> (Self, String) {
        let mut strace = Command::new("strace")
            .args(["-f", "-ttt", "-y", "-e", "trace=fdatasync", "-o"])
            .arg(log)
            .arg(env!("CARGO_BIN_EXE_meridian"))
            .args([role, "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace runs (CI installs it)");
        let stdout = strace.stdout.take().expect("piped");
        let traced = Self {
            strace,
            log: log.into(),
        };
        let prefix = format!("{role}: HTTP ");
        let url = std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix(&prefix)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("meridian {role} prints its address"));
        (traced, url)
    }

    /// Completion times (seconds since the epoch) of every successful `fdatasync` of a file
    /// named `db` (sled's data file) the process made so far.
    fn db_syncs(&self) -> Vec<f64> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("fdatasync") && l.ends_with("= 0"))
            .filter(|l| l.contains("/db>") || l.contains("resumed"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // The traced process is strace's child; killing strace alone would detach it.
        let children = format!(
            "/proc/{}/task/{}/children",
            self.strace.id(),
            self.strace.id()
        );
        for pid in std::fs::read_to_string(children)
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_fdatasynced_before_it_is_acknowledged_and_before_an_edge_serves_it() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 1);
    let origin_config: OriginConfig =
        toml::from_str(&std::fs::read_to_string(&paths[0]).unwrap()).unwrap();
    let (origin, origin_url) = Traced::spawn("origin", &paths[0], &dir.path().join("origin.st"));

    let pki = pki(dir.path()).unwrap();
    let edge_cfg = edge_config(
        dir.path(),
        &pki,
        REGIONS[1],
        "127.0.0.1:0".parse().unwrap(),
        origin_config.quic_listen,
    );
    let edge_path = dir.path().join("edge.toml");
    std::fs::write(&edge_path, toml::to_string(&edge_cfg).unwrap()).unwrap();
    let (edge, edge_url) = Traced::spawn("edge", &edge_path, &dir.path().join("edge.st"));
    let c = http();
    eventually(Duration::from_secs(30), "the edge connects", || async {
        (status(&c, &edge_url).await["origin_connected"] == true).then_some(())
    })
    .await;

    for i in 0..3 {
        let sent = now_s();
        put(&c, &origin_url, "app/prod/durable", json!(i)).await;
        let acked = now_s();
        let synced = origin.db_syncs();
        assert!(
            synced.iter().any(|t| (sent..=acked).contains(t)),
            "write {i}: no fdatasync of the origin's database between sending ({sent}) and the \
             acknowledgement ({acked}); syncs at {synced:?}"
        );
        let served = eventually(Duration::from_secs(20), "the edge serves it", || async {
            let (code, v) = get_json(&c, &format!("{edge_url}/v1/kv/app/prod/durable")).await;
            (code == 200 && v["value"] == i).then(now_s)
        })
        .await;
        let synced = edge.db_syncs();
        assert!(
            synced.iter().any(|t| (sent..=served).contains(t)),
            "write {i}: no fdatasync of the edge's database between the write ({sent}) and the \
             edge first serving it ({served}); syncs at {synced:?}"
        );
    }
}
