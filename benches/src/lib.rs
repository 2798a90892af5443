//! Shared helpers for the load harnesses in `src/bin/`: latency summaries and starting the
//! loopback dev topology.

use std::time::Duration;

pub mod cluster;
pub mod load;
pub mod redis_server;

/// What a process that runs Meridian nodes does first, as the `meridian` binary does: turn
/// transparent huge pages off ([`meridian::disable_transparent_huge_pages`]). Only node
/// processes call it, so that etcd, started by a harness itself, runs as the system sets it up.
pub fn prepare_node_process() {
    if let Err(e) = meridian::disable_transparent_huge_pages() {
        eprintln!("warning: transparent huge pages stay on for the nodes: {e}");
    }
}

/// An HTTP client that presents `token` (`Authorization: Bearer`).
pub fn client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// PUTs `value` at `origin`'s `/v1/kv/{path}`; the revision the write committed at.
/// Makes a read token (`viewer` on `resources`) through the origin's API with the admin
/// `client`; its text.
pub async fn read_token(
    client: &reqwest::Client,
    origin: &str,
    name: &str,
    resources: &[&str],
) -> anyhow::Result<std::sync::Arc<str>> {
    let answer: serde_json::Value = client
        .post(format!("{origin}/v1/tokens"))
        .json(&serde_json::json!({"name": name, "role": "viewer", "resources": resources}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(answer["token"].as_str().unwrap_or_default().into())
}

/// Waits (at most 30 s) until `edge` has published `revision`.
pub async fn wait_for_revision(
    edge: &meridian_edge::EdgeHandle,
    revision: u64,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while edge
        .shared
        .reader
        .read()
        .map(|p| p.state.revision().0)
        .unwrap_or(0)
        < revision
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "edge did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}

pub async fn put(
    client: &reqwest::Client,
    origin: &str,
    path: &str,
    value: &serde_json::Value,
) -> anyhow::Result<u64> {
    let r: serde_json::Value = client
        .put(format!("{origin}/v1/kv/{path}"))
        .json(&serde_json::json!({ "value": value }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    r["revision"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no revision in the answer to PUT {path}: {r}"))
}

/// p50, p99 and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
    /// Number of samples.
    pub count: usize,
}

impl Summary {
    /// Summarises samples (sorted in place); `None` when empty.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Some(Self {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
            count: samples.len(),
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n = {})",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.count
        )
    }
}

/// CPU time and bytes written to storage by a set of server processes, read from Linux's
/// `/proc/<pid>/stat` and `/proc/<pid>/io` (every thread of each process is counted). Two
/// readings around a load give what the load cost the servers, independent of how busy the
/// machine was: steadier than throughput for comparing two builds or two systems.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
    /// Bytes the processes caused to be written to storage.
    pub written_bytes: u64,
}

/// The kernel's unit for `/proc/<pid>/stat` times (USER_HZ, 100 on Linux's supported
/// architectures).
const USER_HZ: f64 = 100.0;

impl ProcessUsage {
    /// The usage so far of `pids`; `None` when `/proc` cannot be read (not Linux, or a process
    /// has exited).
    pub fn of(pids: &[u32]) -> Option<Self> {
        let mut total = Self::default();
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces) start at field 3; utime
            // and stime are fields 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            total.cpu_s += (ticks(11)? + ticks(12)?) as f64 / USER_HZ;
            let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
            total.written_bytes += io
                .lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse::<u64>().ok())?;
        }
        Some(total)
    }

    /// What was used between `earlier` and this reading.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            cpu_s: self.cpu_s - earlier.cpu_s,
            written_bytes: self.written_bytes.saturating_sub(earlier.written_bytes),
        }
    }

    /// CPU milliseconds and KiB written per operation, as text.
    pub fn per_op(&self, ops: u64) -> String {
        let ops = ops.max(1) as f64;
        format!(
            "server CPU {:.2} ms/write, disk {:.1} KiB/write",
            self.cpu_s * 1000.0 / ops,
            self.written_bytes as f64 / 1024.0 / ops
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_hundred() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&mut v).unwrap();
        assert_eq!(
            (s.p50, s.p99, s.max),
            (
                Duration::from_millis(51),
                Duration::from_millis(99),
                Duration::from_millis(100)
            )
        );
        assert!(Summary::of(&mut []).is_none());
    }

    #[test]
    fn usage_of_this_process_grows_with_work() {
        let pid = std::process::id();
        let before = ProcessUsage::of(&[pid]).expect("this process's /proc entries");
        // Spin until the meter shows 50 ms of CPU more; a meter that does not move fails at
        // the deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let used = ProcessUsage::of(&[pid]).expect("read again").since(&before);
            if used.cpu_s >= 0.05 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CPU meter stayed at {} s",
                used.cpu_s
            );
        }
        assert_eq!(ProcessUsage::of(&[u32::MAX]), None);
    }
}
