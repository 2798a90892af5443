//! Shared helpers for the load harnesses in `src/bin/`: latency summaries and starting the
//! loopback dev topology.

use std::time::Duration;

pub mod cluster;
pub mod redis_server;

/// PUTs `value` at `origin`'s `/v1/kv/{path}`; the revision the write committed at.
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
}
