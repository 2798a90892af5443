//! A node whose disk fills up, on a real (small) tmpfs: an origin node refuses writes with 507
//! and the cluster goes on with the others; an edge serves what it has, applies nothing, says
//! `disk_full`, and catches up by itself when space returns.
//!
//! Mounting a tmpfs needs root or passwordless sudo; without either these tests fail saying so.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use meridian_origin::OriginConfig;
use serde_json::{Value, json};

/// A tmpfs of `size_mib` MiB mounted on a fresh folder, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size_mib: u64) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).output().expect("run id");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        // Owned by whoever runs the test, also when mounted through sudo.
        let options = format!(
            "size={size_mib}m,mode=0700,uid={},gid={}",
            id("-u"),
            id("-g")
        );
        let mount = |sudo: bool| {
            let mut c = if sudo {
                let mut c = Command::new("sudo");
                c.args(["-n", "mount"]);
                c
            } else {
                Command::new("mount")
            };
            c.args(["-t", "tmpfs", "-o", &options])
                .arg("tmpfs")
                .arg(at)
                .output()
                .expect("run mount")
        };
        // As root, or else through passwordless sudo (a CI runner's usual setup).
        let mut out = mount(false);
        if !out.status.success() {
            out = mount(true);
        }
        assert!(
            out.status.success(),
            "this test mounts a {size_mib} MiB tmpfs on {} and needs root for it (CI runs as \
             root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir: at.into() }
    }

    /// Writes a filler file until the filesystem is full (ENOSPC).
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0xA5u8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
                break;
            }
        }
        let free = meridian_store::space::free_bytes(&self.dir).unwrap();
        assert!(free < 1 << 20, "{free} bytes still free");
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg("-l").arg(&self.dir).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("sudo")
                .args(["-n", "umount", "-l"])
                .arg(&self.dir)
                .status();
        }
    }
}

const RESERVE_BYTES: u64 = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_a_full_disk_serves_what_it_has_and_catches_up_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("edge-disk"), 48);
    let edge_data = tmpfs.dir.join("data");
    let (_oc, origin, _ec, edge) = origin_and_edge(dir.path(), |c| {
        c.data_dir = edge_data.clone();
        c.storage.min_free_bytes = RESERVE_BYTES;
    })
    .await;
    let c = http();
    let origin_url = base(origin.http_addr);
    let edge_url = base(edge.http_addr);
    let key = |edge: &str| format!("{edge}/v1/kv/app/prod/colour");
    put(&c, &origin_url, "app/prod/colour", json!("blue")).await;
    eventually(Duration::from_secs(20), "the edge serves blue", || async {
        let (code, v) = get_json(&c, &key(&edge_url)).await;
        (code == 200 && v["value"] == "blue").then_some(())
    })
    .await;

    tmpfs.fill();
    let st = eventually(
        Duration::from_secs(10),
        "the edge reports disk_full",
        || async {
            let st = status(&c, &edge_url).await;
            (st["disk_full"] == true).then_some(st)
        },
    )
    .await;
    let held = st["revision"].as_u64().unwrap();
    put(&c, &origin_url, "app/prod/colour", json!("green")).await;
    let written = revision(&c, &origin_url).await;
    assert!(written > held);
    // The edge hears the new head but applies nothing it cannot persist: it keeps serving
    // blue from what it has, and says it is behind.
    let st = eventually(
        Duration::from_secs(10),
        "the edge hears the new head",
        || async {
            let st = status(&c, &edge_url).await;
            (st["newest_known_revision"].as_u64() >= Some(written)).then_some(st)
        },
    )
    .await;
    assert_eq!(st["revision"].as_u64(), Some(held), "{st}");
    assert_eq!(st["disk_full"], true);
    let (code, v) = get_json(&c, &key(&edge_url)).await;
    assert_eq!((code, v["value"].clone()), (200, json!("blue")));
    let metrics = metrics_text(&c, &edge_url).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meridian_edge_disk_full{") && l.ends_with(" 1")),
        "{metrics}"
    );

    tmpfs.free();
    eventually(
        Duration::from_secs(20),
        "the edge catches up by itself",
        || async {
            let (code, v) = get_json(&c, &key(&edge_url)).await;
            (code == 200 && v["value"] == "green").then_some(())
        },
    )
    .await;
    let st = status(&c, &edge_url).await;
    assert_eq!(st["disk_full"], false, "{st}");
    assert!(st["revision"].as_u64() >= Some(written));
    assert_eq!(st["store_errors"], 0, "{st}");
    edge.shutdown().await;
    origin.shutdown().await;
}

/// A write at node `base`: its status and JSON body.
async fn try_put(c: &reqwest::Client, base: &str, key: &str, value: Value) -> (u16, Value) {
    let r = c
        .put(format!("{base}/v1/kv/{key}"))
        .json(&json!({ "value": value }))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match r {
        Ok(r) => {
            let code = r.status().as_u16();
            (code, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!(e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_node_with_a_full_disk_refuses_writes_with_507_and_the_others_go_on() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("node1-disk"), 96);
    let paths = write_origin_configs(dir.path(), 3);
    let mut first: OriginConfig =
        toml::from_str(&std::fs::read_to_string(&paths[0]).unwrap()).unwrap();
    first.data_dir = tmpfs.dir.join("data");
    first.storage.min_free_bytes = RESERVE_BYTES;
    std::fs::write(&paths[0], toml::to_string(&first).unwrap()).unwrap();
    let nodes: Vec<_> = paths.iter().map(|p| spawn_origin(p)).collect();
    let urls: Vec<String> = nodes.iter().map(|(_, u)| u.clone()).collect();
    let c = http();
    eventually(
        Duration::from_secs(30),
        "the cluster takes writes",
        || async {
            (try_put(&c, &urls[0], "app/prod/before", json!(1)).await.0 == 200).then_some(())
        },
    )
    .await;

    // Node 1 initialized the cluster; let it be the leader, the harder case: it must hand over.
    let leader_before = status(&c, &urls[0]).await["leader"].as_u64();
    eprintln!("leader before the disk filled: {leader_before:?}");
    tmpfs.fill();
    let (code, body) = try_put(&c, &urls[0], "app/prod/refused", json!(2)).await;
    assert_eq!(code, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("storage.min_free_bytes")),
        "{body}"
    );
    eventually(
        Duration::from_secs(10),
        "node 1 reports disk_full",
        || async { (status(&c, &urls[0]).await["disk_full"] == true).then_some(()) },
    )
    .await;

    // Whichever node led, the other two commit and serve writes.
    eventually(
        Duration::from_secs(30),
        "node 2 commits a write",
        || async {
            (try_put(&c, &urls[1], "app/prod/after", json!(3)).await.0 == 200).then_some(())
        },
    )
    .await;
    let (code, v) = get_json(&c, &format!("{}/v1/kv/app/prod/after", urls[2])).await;
    assert_eq!((code, v["value"].clone()), (200, json!(3)), "{v}");
    let (code, v) = try_put(&c, &urls[2], "app/prod/after", json!(4)).await;
    assert_eq!(code, 200, "{v}");
    // The refused write was never committed, and node 1 still refuses.
    let (code, _) = get_json(&c, &format!("{}/v1/kv/app/prod/refused", urls[1])).await;
    assert_eq!(code, 404);
    let (code, body) = try_put(&c, &urls[0], "app/prod/refused", json!(5)).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (507, json!("insufficient_storage"))
    );
    eventually(
        Duration::from_secs(10),
        "node 1 exports meridian_disk_full 1",
        || async {
            let metrics = metrics_text(&c, &urls[0]).await;
            metrics
                .lines()
                .any(|l| l == "meridian_disk_full 1")
                .then_some(())
        },
    )
    .await;
    drop(nodes);
}
