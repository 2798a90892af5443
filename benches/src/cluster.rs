//! A Meridian origin cluster for the harnesses, one process per node: the harness binary is
//! started again with `--serve-origin CONFIG` (each harness accepts that flag), so that the nodes
//! share neither a runtime nor a process with the load, as etcd's nodes don't.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Runs one origin node from `config` until stdin closes (the harness holds it open).
pub async fn serve_origin(config: &std::path::Path) -> anyhow::Result<()> {
    crate::prepare_node_process();
    // The node's log goes to the harness's stderr: warnings only, unless RUST_LOG says more.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let text = std::fs::read_to_string(config)?;
    let config: meridian_origin::OriginConfig = toml::from_str(&text)?;
    let node = meridian_origin::start(config).await?;
    println!("ready http://{}", node.http_addr);
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
    node.shutdown().await;
    Ok(())
}

/// Starts this harness again as one origin node; the child and its HTTP base URL.
pub fn spawn_origin(config: &std::path::Path) -> anyhow::Result<(Child, String)> {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve-origin")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting an origin node")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let base = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("ready ").map(str::to_owned))
        .context("origin node exited before it was ready")?;
    Ok((child, base))
}

/// Waits until every node names the same leader.
pub async fn await_leader(bases: &[String]) -> anyhow::Result<()> {
    let c = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = std::collections::BTreeSet::new();
        for b in bases {
            let leader = match c.get(format!("{b}/v1/status")).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .map(|v| v["leader"].clone()),
                Err(_) => None,
            };
            leaders.insert(leader.filter(|l| l.is_u64()).map(|l| l.to_string()));
        }
        if leaders.len() == 1 && leaders.first().is_some_and(|l| l.is_some()) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no agreed leader within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader `base` names in its `/v1/status`, if any.
pub async fn leader_at(c: &reqwest::Client, base: &str) -> Option<u64> {
    let r = c
        .get(format!("{base}/v1/status"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    r.json::<serde_json::Value>().await.ok()?["leader"].as_u64()
}
