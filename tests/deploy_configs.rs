//! The commented configs in `deploy/regions/` parse into the typed configs and validate, so the
//! documentation cannot drift from the code.

use meridian_edge::EdgeConfig;
use meridian_origin::OriginConfig;

fn read(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/regions")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn origin_configs_describe_one_three_node_cluster() {
    for (i, name) in ["origin.toml", "origin-2.toml", "origin-3.toml"]
        .iter()
        .enumerate()
    {
        let c: OriginConfig = toml::from_str(&read(name)).unwrap();
        c.validate().unwrap();
        let id = i as u64 + 1;
        assert_eq!(c.raft.id, id, "{name}");
        assert_eq!(c.http_listen.port(), 7069 + id as u16, "{name}");
        assert_eq!(c.raft_listen.port(), 7169 + id as u16, "{name}");
        assert_eq!(c.raft.members.len(), 3, "{name}");
        // Members reach each other on the private Raft channel, never on the client API.
        assert_eq!(
            c.raft.advertise.as_deref(),
            Some(c.raft_listen.to_string().as_str()),
            "{name}"
        );
        let member = c.raft.members.iter().find(|m| m.id == id).unwrap();
        assert_eq!(member.addr, c.raft_listen.to_string(), "{name}");
    }
}

#[test]
fn region_configs_parse_and_validate() {
    for (region, port) in [("us-east", 7081), ("eu-west", 7082), ("ap-south", 7083)] {
        let c: EdgeConfig = toml::from_str(&read(&format!("{region}.toml"))).unwrap();
        c.validate().unwrap();
        assert_eq!(c.region, region);
        assert_eq!(c.http_listen.port(), port);
    }
}

#[test]
fn validation_names_the_key_and_the_limit() {
    let mut c: EdgeConfig = toml::from_str(&read("us-east.toml")).unwrap();
    c.heartbeat_interval_ms = 1;
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "heartbeat_interval_ms");
    assert!(e.to_string().contains("between 10 and 60000"), "{e}");
    let mut c: EdgeConfig = toml::from_str(&read("us-east.toml")).unwrap();
    assert_eq!(c.strict.len(), 1);
    assert!(c.strict[0].matches("payments", "prod") && !c.strict[0].matches("payments", "dev"));
    c.strict[0].namespace = "payments".into();
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "strict.namespace");
    assert!(e.to_string().contains("app/env"), "{e}");
    c.strict[0].namespace = "*/prod".into();
    c.strict[0].max_staleness_ms = 0;
    assert_eq!(c.validate().unwrap_err().key, "strict.max_staleness_ms");
    c.strict[0].max_staleness_ms = 5;
    c.watch.subscriber_buffer_events = c.watch.ring_events + 1;
    assert_eq!(
        c.validate().unwrap_err().key,
        "watch.subscriber_buffer_events"
    );
    // Peer relay: the announced address, static peers, the number of links.
    let fresh = || toml::from_str::<EdgeConfig>(&read("us-east.toml")).unwrap();
    assert!(fresh().peer_listen.is_some(), "the example accepts peers");
    let mut c = fresh();
    c.peer_advertise = Some("no-port".into());
    assert_eq!(c.validate().unwrap_err().key, "peer_advertise");
    let mut c = fresh();
    c.peers = vec![meridian_edge::config::StaticPeer {
        edge_id: "eu-west-1".into(),
        region: "eu-west".into(),
        addr: "eu-west-1.internal:0".into(),
    }];
    assert_eq!(c.validate().unwrap_err().key, "peers.addr");
    c.peers[0].addr = "eu-west-1.internal:7482".into();
    c.peers[0].edge_id = c.edge_id.clone();
    assert_eq!(c.validate().unwrap_err().key, "peers.edge_id");
    let mut c = fresh();
    c.peer_links = 9;
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "peer_links");
    assert!(e.to_string().contains("at most 8"), "{e}");
    let bad = read("origin.toml").replace("node_id", "nodeid");
    assert!(
        toml::from_str::<OriginConfig>(&bad).is_err(),
        "unknown keys are refused"
    );
}

#[path = "deploy_configs/packaging.rs"]
mod packaging;
