//! Peer relay in the shipped edge: edges announce where they accept peers, the origin keeps the
//! directory of edges as signed records every edge replicates, an edge that reaches no origin
//! converges through a peer, and a peer that claims another edge's id is refused.

mod common;

use std::time::Duration;

use common::*;
use meridian::dev::{REGIONS, edge_config};
use meridian_edge::config::StaticPeer;
use meridian_protocol::{Frame, FrameV1};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// An edge `id` of `region` beside the dev topology: accepting peers on a loopback port when
/// `listen`, dialing `origin`, knowing `peers`.
async fn extra_edge(
    dir: &std::path::Path,
    id: &str,
    region: &str,
    origin: std::net::SocketAddr,
    listen: bool,
    peers: Vec<StaticPeer>,
) -> meridian_edge::EdgeHandle {
    let pki = meridian_net::tls::ensure_dev_pki(&dir.join("pki"), &[id]).unwrap();
    let mut config = edge_config(dir, &pki, region, "127.0.0.1:0".parse().unwrap(), origin);
    config.edge_id = id.into();
    config.tls = pki.edge(id);
    config.data_dir = dir.join(format!("edge-{id}"));
    config.peer_listen = listen.then(|| "127.0.0.1:0".parse().unwrap());
    config.peers = peers;
    meridian_edge::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_reaches_no_origin_converges_through_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);

    // A relay that accepts peers announces itself; the directory reaches every edge (which
    // knows the two other dev edges already).
    let relay = extra_edge(
        dir.path(),
        "ap-south-2",
        REGIONS[2],
        cluster.origin.quic_addr,
        true,
        Vec::new(),
    )
    .await;
    for e in &cluster.edges {
        let edge = base(e.http_addr);
        eventually(WAIT, "the directory lists the relay", || async {
            let s = status(&c, &edge).await;
            (s["upstreams"]["peers_known"] == 3).then_some(())
        })
        .await;
    }

    // An ap-south edge whose only origin address answers nothing, and which knows the relay.
    let cut_off = extra_edge(
        dir.path(),
        "ap-south-3",
        REGIONS[2],
        dead_udp_addr(),
        false,
        vec![StaticPeer {
            edge_id: "ap-south-2".into(),
            region: REGIONS[2].into(),
            addr: relay.peer_addr.clone().expect("the relay accepts peers"),
        }],
    )
    .await;
    let edge = base(cut_off.http_addr);

    for i in 0..20 {
        put(&c, &origin, &format!("pay/prod/k{i}"), json!(i)).await;
    }
    let newest = revision(&c, &origin).await;
    let got = eventually(
        WAIT,
        "the cut-off edge holds the newest revision",
        || async {
            let (code, v) = get_json(&c, &format!("{edge}/v1/kv/pay/prod/k19")).await;
            (code == 200 && revision(&c, &edge).await >= newest).then_some(v)
        },
    )
    .await;
    assert_eq!(got["value"], 19);
    let s = status(&c, &edge).await;
    let at_relay = status(&c, &base(relay.http_addr)).await;
    if at_relay["revision"] == s["revision"] {
        assert_eq!(s["digest"], at_relay["digest"], "same revision, same state");
    }
    assert_eq!(s["origin_connected"], false);
    // It relays from peers: the directory's as well as its static one.
    let links = s["upstreams"]["links"].as_array().unwrap();
    let relays: Vec<String> = links
        .iter()
        .filter(|l| l["kind"] == "peer" && l["state"] == "connected")
        .filter_map(|l| l["upstream"].as_str()?.split(' ').next().map(str::to_owned))
        .collect();
    assert!(!relays.is_empty(), "a connected peer link: {links:?}");
    assert_eq!(s["rejected"]["bad_signature"], 0);
    // The peer it relays from says it serves a peer.
    let relay_url = cluster
        .edges
        .iter()
        .chain([&relay])
        .find(|e| e.shared.edge_id == relays[0])
        .map(|e| base(e.http_addr))
        .unwrap();
    let r = status(&c, &relay_url).await;
    assert!(r["upstreams"]["peers_served"].as_u64().unwrap() >= 1, "{r}");

    cut_off.shutdown().await;
    relay.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_claims_another_edges_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let pki = meridian::dev::pki(dir.path()).unwrap();
    let target = extra_edge(
        dir.path(),
        "us-east-2",
        REGIONS[0],
        cluster.origin.quic_addr,
        true,
        Vec::new(),
    )
    .await;
    let addr: std::net::SocketAddr = target.peer_addr.clone().unwrap().parse().unwrap();
    // eu-west-1's certificate, speaking as ap-south-1.
    let endpoint = meridian_net::quic::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &pki.edge(&meridian::dev::edge_id(REGIONS[1])),
        Default::default(),
    )
    .unwrap();
    let name = meridian_net::tls::edge_certificate_name("us-east-2");
    let conn = endpoint.connect(addr, &name).unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello: Frame = FrameV1::Hello {
        edge_id: meridian::dev::edge_id(REGIONS[2]),
        region: REGIONS[2].into(),
        revision: meridian_protocol::Revision(0),
        digest: Default::default(),
    }
    .into();
    meridian_net::quic::write_frame(&mut send, &hello)
        .await
        .unwrap();
    let mut decoder = meridian_protocol::FrameDecoder::new(1 << 20);
    let read = tokio::time::timeout(
        WAIT,
        meridian_net::quic::read_frame(&mut recv, &mut decoder),
    )
    .await
    .expect("the edge answers or closes");
    assert!(read.is_err(), "nothing is served to an impostor: {read:?}");
    let reason = conn.closed().await;
    assert!(
        reason.to_string().contains("edge_id does not match"),
        "closed for impersonation: {reason}"
    );
    // A frame other than Hello first is refused as well.
    let conn = endpoint.connect(addr, &name).unwrap().await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let need: Frame = FrameV1::Need {
        from: meridian_protocol::Revision(0),
    }
    .into();
    meridian_net::quic::write_frame(&mut send, &need)
        .await
        .unwrap();
    let reason = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    assert!(reason.to_string().contains("hello first"), "{reason}");
    target.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_records_only_addresses_an_edge_announces_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster(dir.path(), 10_000).await;
    let c = http();
    let origin = base(cluster.origin.http_addr);
    let pki = meridian::dev::pki(dir.path()).unwrap();
    let announces = |c: reqwest::Client, origin: String| async move {
        let (_, page) = get_json(&c, &format!("{origin}/v1/audit?action=edge-announce")).await;
        page["records"].as_array().cloned().unwrap_or_default()
    };
    // The dev edges announced themselves once each.
    let before = announces(c.clone(), origin.clone()).await;
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|r| {
        r["actor"]
            .as_str()
            .unwrap()
            .strip_prefix("edge:")
            .is_some_and(|id| r["resource"] == format!("edge:{id}"))
    }));

    // eu-west-1's certificate: a garbage address is refused, a good one recorded, under the
    // edge id the certificate names.
    let id = meridian::dev::edge_id(REGIONS[1]);
    let endpoint = meridian_net::quic::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &pki.edge(&id),
        Default::default(),
    )
    .unwrap();
    let conn = endpoint
        .connect(
            cluster.origin.quic_addr,
            meridian_net::tls::ORIGIN_SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let frames: Vec<Frame> = vec![
        FrameV1::Hello {
            edge_id: id.clone(),
            region: REGIONS[1].into(),
            revision: meridian_protocol::Revision(0),
            digest: Default::default(),
        }
        .into(),
        FrameV1::PeerAddress {
            addr: "not an address".into(),
        }
        .into(),
        FrameV1::PeerAddress {
            addr: "127.0.0.1:1".into(),
        }
        .into(),
    ];
    for f in &frames {
        meridian_net::quic::write_frame(&mut send, f).await.unwrap();
    }
    let after = eventually(WAIT, "the good address is recorded", || async {
        let a = announces(c.clone(), origin.clone()).await;
        (a.len() == 4).then_some(a)
    })
    .await;
    let newest = after
        .iter()
        .find(|r| !before.contains(r))
        .expect("one new record");
    assert_eq!(newest["resource"], format!("edge:{id}"));
    assert_eq!(newest["actor"], format!("edge:{id}"));
    // What the directory says now, as an edge replicated it: the good address.
    let edge = &cluster.edges[0];
    let addr = eventually(WAIT, "the directory reaches the edge", || async {
        let p = edge.shared.reader.read().unwrap();
        let addr = meridian_protocol::directory::edges(&p.state)
            .into_iter()
            .find(|(e, _)| *e == id)
            .map(|(_, r)| r.addr)?;
        (addr == "127.0.0.1:1").then_some(addr)
    })
    .await;
    assert_eq!(addr, "127.0.0.1:1");
    conn.close(0u32.into(), b"done");
    cluster.shutdown().await;
}

/// A loopback UDP address nothing answers on (bound, then released).
fn dead_udp_addr() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}
