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
        s.write_all(&authed("GET /v1/watch?app=app&env=prod HTTP/1.1\r\nhost: edge\r\naccept: text/event-stream\r\n\r\n"))
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

/// Sends `request` on a new connection and reads the answer until the server closes or the
/// answer's body is complete (`connection: close` is asked for).
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    until_closed(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlives_its_deadline_gets_503_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_oc, origin, _ec, edge) = origin_and_edge(dir.path(), |c| {
        c.http.request_timeout_ms = 500;
    })
    .await;
    let addr = edge.http_addr;
    // A read waiting for a revision no write will reach, longer than the deadline.
    let waiting = tokio::spawn(exchange(
        addr,
        authed(
            "GET /v1/kv/app/prod/k?min_revision=1000000&wait_ms=60000 HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n",
        ),
    ));
    assert!(served(addr).await, "others are served meanwhile");
    let answer = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiting read is answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(answer.contains("http.request_timeout_ms"), "{answer}");

    // A write whose body trickles in a byte at a time, at an origin node with the same
    // deadline: 503, nothing committed, others served.
    let other = tempfile::tempdir().unwrap();
    let opts = common::options(other.path());
    let pki = meridian::dev::pki(other.path()).unwrap();
    let mut config = meridian::dev::origin_cluster_configs(&opts, &pki).remove(0);
    config.http.request_timeout_ms = 500;
    let strict = meridian_origin::start(config).await.unwrap();
    let mut trickle = TcpStream::connect(strict.http_addr).await.unwrap();
    trickle
        .write_all(&authed("PUT /v1/kv/app/prod/trickled HTTP/1.1\r\nhost: origin\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{"))
        .await
        .unwrap();
    let answer = tokio::time::timeout(DEADLINE, async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // One more byte of the body now and then, never enough to finish it.
            let _ = trickle.write_all(b" ").await;
            tokio::select! {
                n = trickle.read(&mut buf) => {
                    let n = n.unwrap_or(0);
                    if n == 0 { break; }
                    got.extend_from_slice(&buf[..n]);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .expect("the trickled write is answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(served(strict.http_addr).await);
    let (code, _) = get_json(
        &http(),
        &format!("{}/v1/kv/app/prod/trickled", base(strict.http_addr)),
    )
    .await;
    assert_eq!(code, 404, "nothing committed");
    strict.shutdown().await;

    // A watch stream is timed only until it starts: it outlives the deadline.
    let mut watch = TcpStream::connect(addr).await.unwrap();
    watch
        .write_all(&authed(
            "GET /v1/watch?app=app&env=prod HTTP/1.1\r\nhost: edge\r\n\r\n",
        ))
        .await
        .unwrap();
    let mut head = [0u8; 12];
    watch.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    put(
        &http(),
        &base(origin.http_addr),
        "app/prod/after",
        serde_json::json!(1),
    )
    .await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&got).contains("\"after\"") {
            let n = watch.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the change arrives on the stream");
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_beyond_the_limit_per_client_get_429_while_others_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (_oc, origin, _ec, edge) = origin_and_edge(dir.path(), |c| {
        c.watch.max_subscribers_per_client = 3;
        c.watch.max_subscribers = 5;
    })
    .await;
    let url = format!("{}/v1/watch?app=app&env=prod", base(edge.http_addr));
    let c = http();
    let open = || async {
        c.get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let r = open().await;
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let r = open().await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_watches", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("watch.max_subscribers_per_client"),
        "{body}"
    );
    // Reads are still served, and a stream given back frees its place.
    assert!(served(edge.http_addr).await);
    drop(held.pop());
    eventually(DEADLINE, "the freed place is taken", || async {
        let r = open().await;
        (r.status() == 200).then_some(r)
    })
    .await;
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_lists_are_paged_by_limit_and_cursor_and_the_cli_follows_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_oc, origin, _ec, edge) = origin_and_edge(dir.path(), |_| {}).await;
    let c = http();
    let origin_url = base(origin.http_addr);
    let txn = serde_json::json!({"ops": (0..25)
        .map(|i| serde_json::json!({"op": "put", "address": format!("app/prod/k{i:02}"), "value": i}))
        .collect::<Vec<_>>()});
    let r = c
        .post(format!("{origin_url}/v1/txn"))
        .json(&txn)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    put(&c, &origin_url, "app/prod/other", serde_json::json!(0)).await;
    let edge_url = base(edge.http_addr);
    let written = revision(&c, &origin_url).await;
    eventually(DEADLINE, "the edge has them", || async {
        (revision(&c, &edge_url).await >= written).then_some(())
    })
    .await;
    for node in [&origin_url, &edge_url] {
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut url = format!("{node}/v1/kv/app/prod?prefix=k&limit=10");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let (code, page) = get_json(&c, &url).await;
            assert_eq!(code, 200, "{page}");
            pages += 1;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 10);
            keys.extend(items.iter().map(|i| i["key"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 3, "{node}");
        let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        assert_eq!(keys, expected, "{node}");
        // Limits out of range and cursors from another prefix are refused.
        for bad in [
            "prefix=k&limit=0",
            "prefix=k&limit=10001",
            "prefix=k&cursor=other",
            "keys=k01&limit=5",
        ] {
            let (code, body) = get_json(&c, &format!("{node}/v1/kv/app/prod?{bad}")).await;
            assert_eq!(
                (code, body["error"]["code"].as_str()),
                (400, Some("bad_query")),
                "{bad}"
            );
        }
    }
    let (code, body) = get_json(
        &c,
        &format!(
            "{edge_url}/v1/kv/app/prod?keys={}",
            (0..1001)
                .map(|i| format!("x{i}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1000")
    );
    // The CLI fetches every page.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "kv",
            "list",
            "app/prod",
            "--prefix",
            "k",
            "--page-size",
            "10",
        ])
        .args(["--output", "json", "--endpoint", &edge_url])
        .env("MERIDIAN_TOKEN", TOKEN.as_str())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 25, "{listed}");
    assert_eq!(listed["next_cursor"], serde_json::Value::Null);
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_beyond_the_limit_per_client_are_refused_while_edges_are_served() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let opts = common::options(dir.path());
    let pki = meridian::dev::pki(dir.path()).unwrap();
    let mut config = meridian::dev::origin_cluster_configs(&opts, &pki).remove(0);
    config.quic.max_connections_per_client = 2;
    let origin = meridian_origin::start(config).await.unwrap();
    // The attacker holds a real edge certificate and dials from 127.0.0.2.
    let attacker = meridian_net::quic::client_endpoint(
        "127.0.0.2:0".parse().unwrap(),
        &pki.edge(&meridian::dev::edge_id("us-east")),
        Default::default(),
    )
    .unwrap();
    let dial = || async {
        let connecting = attacker
            .connect(origin.quic_addr, meridian_net::tls::ORIGIN_SERVER_NAME)
            .unwrap();
        tokio::time::timeout(DEADLINE, connecting)
            .await
            .expect("the handshake ends one way or the other")
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(dial().await.expect("within the limit"));
    }
    assert!(dial().await.is_err(), "a third connection was accepted");

    // An edge from another address connects and replicates meanwhile.
    let edge = meridian_edge::start(meridian::dev::edge_config(
        dir.path(),
        &pki,
        meridian::dev::REGIONS[1],
        "127.0.0.1:0".parse().unwrap(),
        origin.quic_addr,
    ))
    .await
    .unwrap();
    let c = http();
    let r = put(
        &c,
        &base(origin.http_addr),
        "app/prod/k",
        serde_json::json!(1),
    )
    .await;
    let edge_url = base(edge.http_addr);
    eventually(DEADLINE, "the edge applies the write", || {
        let (c, edge_url, want) = (c.clone(), edge_url.clone(), r["revision"].as_u64());
        async move { (Some(revision(&c, &edge_url).await) == want).then_some(()) }
    })
    .await;
    // A connection given back frees its place.
    held.pop().unwrap().close(0u32.into(), b"done");
    eventually(DEADLINE, "the freed place is taken", || async {
        dial().await.ok()
    })
    .await;
    edge.shutdown().await;
    origin.shutdown().await;
}

/// `request` with the admin token's `authorization` header after its request line.
fn authed(request: &str) -> Vec<u8> {
    let (line, rest) = request.split_once("\r\n").unwrap();
    format!("{line}\r\nauthorization: Bearer {}\r\n{rest}", *TOKEN).into_bytes()
}
