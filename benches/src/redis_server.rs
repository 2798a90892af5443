//! A throwaway `redis-server` for the side-by-side harnesses: no persistence, a free loopback
//! port, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The running server; killed when dropped.
pub struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn ping(url: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut c).await
}

/// Starts `redis-server` and waits until it answers; `None` when it is not installed.
pub async fn start() -> anyhow::Result<Option<(Redis, String)>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = match Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "60000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => Redis(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("starting redis-server"),
    };
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ping(&url).await.is_ok() {
            return Ok(Some((child, url)));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "redis-server did not answer within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
