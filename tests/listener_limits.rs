//! Every listener bounds its connections and its patience, and crossing a limit costs the
//! attacker alone: a client that trickles its headers (slowloris) is cut off, and a client that
//! holds as many connections as it may gets its next one closed, while other clients keep being
//! served. Raw TCP clients play the attackers against a real edge.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection (or resets it); what it sent. Fails the test if
/// the connection is still open at the deadline.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server left the connection open");
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether a new client is answered 200 (a refused connection is not).
async fn served(addr: SocketAddr) -> bool {
    let sent = http().get(format!("{}/v1/status", base(addr))).send().await;
    sent.is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_connections_beyond_the_limit_are_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_oc, origin, _ec, edge) = origin_and_edge(dir.path(), |c| {
        c.http.max_connections_per_client = 4;
        c.http.header_read_timeout_ms = 1_000;
    })
    .await;
    let addr = edge.http_addr;

    // Slowloris: a request line and one header, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nhost: edge\r\n")
        .await
        .unwrap();
    assert!(served(addr).await, "others are served meanwhile");
    let answer = until_closed(&mut slow).await;
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "the unfinished request was answered: {answer}"
    );

    // Four watch streams hold this client's four connections; a fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/watch?app=app&env=prod HTTP/1.1\r\nhost: edge\r\naccept: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "a watch stream opens");
        held.push(s);
    }
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /v1/status HTTP/1.1\r\nhost: edge\r\n\r\n")
        .await;
    let answer = until_closed(&mut fifth).await;
    assert!(
        answer.is_empty(),
        "the fifth connection was served: {answer}"
    );

    // One stream ends: its slot is given back and the client is served again.
    drop(held.pop());
    eventually(DEADLINE, "a slot is free again", || async move {
        served(addr).await.then_some(())
    })
    .await;
    eventually(DEADLINE, "refusals are counted", || async move {
        let r = http()
            .get(format!("{}/metrics", base(addr)))
            .send()
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        text.lines()
            .any(|l| l.starts_with("meridian_connections_refused_total{listener=\"api\"}"))
            .then_some(())
    })
    .await;

    drop(held);
    edge.shutdown().await;
    origin.shutdown().await;
}
