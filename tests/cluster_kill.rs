//! Three `meridian origin` processes on loopback; the leader is killed with SIGKILL while
//! several clients write. A new leader is elected, writes resume, the killed node restarts from
//! its sled log and catches up, and every write acknowledged at any time is on every node with
//! the revision it was acknowledged with.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// One client: writes unique keys round-robin over `urls` until `stop`, recording each
/// acknowledged write as (key, revision). Refusals and dropped connections are not recorded.
async fn writer(
    id: usize,
    urls: Vec<String>,
    acked: Arc<Mutex<Vec<(String, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let c = reqwest::Client::builder()
        .default_headers(common::auth_headers(&common::TOKEN))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut i = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let key = format!("w{id}-{i}");
        let url = &urls[i % urls.len()];
        i += 1;
        let Ok(r) = c
            .put(format!("{url}/v1/kv/app/prod/{key}"))
            .json(&json!({"value": i}))
            .send()
            .await
        else {
            continue;
        };
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            let revision = v["revision"].as_u64().unwrap();
            acked.lock().unwrap().push((key, revision));
        }
    }
}

/// The leader every node in `urls` agrees on, other than `not`.
async fn agreed_leader(c: &reqwest::Client, urls: &[String], not: Option<u64>) -> u64 {
    eventually(Duration::from_secs(30), "an agreed leader", || async move {
        let mut seen = BTreeSet::new();
        for u in urls {
            seen.insert(status(c, u).await["leader"].as_u64()?);
        }
        let l = *seen.first()?;
        (seen.len() == 1 && Some(l) != not).then_some(l)
    })
    .await
}

/// `url`'s status once it has applied `revision`.
async fn status_at_least(c: &reqwest::Client, url: &str, revision: u64) -> Value {
    eventually(
        Duration::from_secs(30),
        "every node at the newest revision",
        || async move {
            let s = status(c, url).await;
            (s["revision"].as_u64()? >= revision).then_some(s)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_leader_loses_no_acknowledged_write() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 3);
    let mut procs: Vec<(OriginProcess, String)> = paths.iter().map(|p| spawn_origin(p)).collect();
    let urls: Vec<String> = procs.iter().map(|(_, u)| u.clone()).collect();
    let c = http();
    let leader = agreed_leader(&c, &urls, None).await as usize;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|id| tokio::spawn(writer(id, urls.clone(), acked.clone(), stop.clone())))
        .collect();
    let count = || acked.lock().unwrap().len();
    eventually(
        Duration::from_secs(30),
        "100 writes before the kill",
        || async { (count() >= 100).then_some(()) },
    )
    .await;

    // SIGKILL the leader mid-stream.
    let (mut killed, _) = procs.remove(leader - 1);
    killed.kill();
    let before_kill = count();
    let survivors: Vec<String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader - 1)
        .map(|(_, u)| u.clone())
        .collect();
    agreed_leader(&c, &survivors, Some(leader as u64)).await;
    eventually(
        Duration::from_secs(30),
        "writes resume after the kill",
        || async { (count() >= before_kill + 100).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // The killed node restarts from its own sled log and catches up.
    let (restarted, url) = spawn_origin(&paths[leader - 1]);
    procs.push((restarted, url.clone()));
    assert_eq!(url, urls[leader - 1]);

    let acked = acked.lock().unwrap().clone();
    let revisions: BTreeSet<u64> = acked.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        revisions.len(),
        acked.len(),
        "every ack has its own revision"
    );
    for u in &urls {
        for (key, revision) in &acked {
            let (code, v) = get_json(&c, &format!("{u}/v1/kv/app/prod/{key}")).await;
            assert_eq!(code, 200, "{u} lost acknowledged {key}");
            assert_eq!(v["revision"].as_u64(), Some(*revision), "{u} {key}");
        }
    }
    let digests: BTreeSet<String> = {
        let mut out = BTreeSet::new();
        let newest = *revisions.last().unwrap();
        for u in &urls {
            let s = status_at_least(&c, u, newest).await;
            out.insert(format!("{}:{}", s["revision"], s["digest"]));
        }
        out
    };
    assert_eq!(
        digests.len(),
        1,
        "same revision and digest everywhere: {digests:?}"
    );
}

/// The value of the counter `meridian_origin_heads_total{signed_by="…"}` in Prometheus text.
fn heads_signed_by(metrics: &str, by: &str) -> u64 {
    let series = format!("meridian_origin_heads_total{{signed_by=\"{by}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_take_the_leaders_signatures_instead_of_signing_again() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 3);
    let procs: Vec<(OriginProcess, String)> = paths.iter().map(|p| spawn_origin(p)).collect();
    let urls: Vec<String> = procs.iter().map(|(_, u)| u.clone()).collect();
    let c = http();
    let leader = agreed_leader(&c, &urls, None).await as usize;
    let followers: Vec<&String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i + 1 != leader)
        .map(|(_, u)| u)
        .collect();

    // Sequential writes through the leader until both followers have taken offered signatures
    // (each write's entry is offered with the RPC that carries the next one).
    let mut i = 0;
    let newest = eventually(
        Duration::from_secs(60),
        "followers taking offered signatures",
        || {
            i += 1;
            let (c, url, followers) = (c.clone(), urls[leader - 1].clone(), followers.clone());
            async move {
                let v = put(&c, &url, &format!("app/prod/k{i}"), json!(i)).await;
                let revision = v["revision"].as_u64()?;
                let mut all = true;
                for f in followers {
                    all &= heads_signed_by(&metrics_text(&c, f).await, "leader") > 0;
                }
                all.then_some(revision)
            }
        },
    )
    .await;

    // Every node holds each revision's head once, whoever signed it, and all agree.
    let mut digests = BTreeSet::new();
    for u in &urls {
        let s = status_at_least(&c, u, newest).await;
        digests.insert(format!("{}:{}", s["revision"], s["digest"]));
        let m = metrics_text(&c, u).await;
        let heads = heads_signed_by(&m, "leader") + heads_signed_by(&m, "this_node");
        assert_eq!(heads, newest, "{u}: one head per revision");
    }
    assert_eq!(
        digests.len(),
        1,
        "same revision and digest everywhere: {digests:?}"
    );
    let leader_metrics = metrics_text(&c, &urls[leader - 1]).await;
    assert_eq!(
        heads_signed_by(&leader_metrics, "leader"),
        0,
        "the leader is offered nothing; it signs every head"
    );
}

/// A `meridian origin` process turns transparent huge pages off for itself (see
/// `meridian::disable_transparent_huge_pages`): the kernel reports `THP_enabled: 0` for it.
#[cfg(target_os = "linux")]
#[test]
fn an_origin_process_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 1);
    let (node, _url) = spawn_origin(&paths[0]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "THP_enabled of the origin process");
}
