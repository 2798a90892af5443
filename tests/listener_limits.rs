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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_cannot_hold_streams_beyond_its_control_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (oc, origin, _ec, edge) = origin_and_edge(dir.path(), |_| {}).await;
    let pki = meridian::dev::pki(dir.path()).unwrap();
    // A holder of a real edge certificate opens streams and never finishes them.
    let endpoint = meridian_net::quic::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &pki.edge(&meridian::dev::edge_id("us-east")),
        Default::default(),
    )
    .unwrap();
    let conn = endpoint
        .connect(origin.quic_addr, meridian_net::tls::ORIGIN_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..meridian_net::quic::EDGE_BIDI_STREAMS {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0, 0]).await.unwrap(); // half a length prefix, then nothing
        held.push((send, recv));
    }
    let more_bidi = tokio::time::timeout(Duration::from_secs(1), conn.open_bi()).await;
    assert!(more_bidi.is_err(), "a third stream was granted");
    let uni = tokio::time::timeout(Duration::from_secs(1), conn.open_uni()).await;
    assert!(uni.is_err(), "a unidirectional stream was granted");

    // The real edge is served meanwhile.
    let c = http();
    let origin_url = base(origin.http_addr);
    let r = put(&c, &origin_url, "app/prod/k", serde_json::json!(1)).await;
    let edge_url = base(edge.http_addr);
    eventually(DEADLINE, "the edge applies the write", || {
        let (c, edge_url, want) = (c.clone(), edge_url.clone(), r["revision"].as_u64());
        async move { (Some(revision(&c, &edge_url).await) == want).then_some(()) }
    })
    .await;
    drop(held);
    conn.close(0u32.into(), b"done");
    drop(oc);
    edge.shutdown().await;
    origin.shutdown().await;
}
