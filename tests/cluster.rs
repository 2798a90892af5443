//! A three-node origin cluster on loopback: a leader is elected, writes sent to any node are
//! committed (followers forward them), reads are linearizable on every node, losing the leader
//! loses no acknowledged write, and a node cut off from its quorum refuses writes with 503
//! `no_quorum` instead of losing them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{base, eventually, get_json, http, init, put, status};
use meridian::dev::{origin_config, pki};
use meridian_origin::config::{Member, RaftConfig};
use meridian_origin::{OriginConfig, OriginHandle};
use reqwest::Method;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

fn free_addr() -> SocketAddr {
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    SocketAddr::new(ip, meridian::dev::free_port(ip))
}

struct Node {
    id: u64,
    http: String,
    handle: Option<OriginHandle>,
}

fn configs(dir: &std::path::Path, request_timeout_ms: u64) -> Vec<OriginConfig> {
    configs_of(dir, request_timeout_ms, 3)
}

/// Configs for `n` nodes that all list the same `n` members (the first three start the
/// cluster; a later one joins through the admin API).
fn configs_of(dir: &std::path::Path, request_timeout_ms: u64, n: usize) -> Vec<OriginConfig> {
    let opts = common::options(dir);
    let pki = pki(dir).expect("pki");
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let raft_addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let members: Vec<Member> = raft_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Member {
            id: i as u64 + 1,
            addr: a.to_string(),
        })
        .collect();
    (0..n)
        .map(|i| {
            let mut c = origin_config(&opts, &pki);
            c.node_id = format!("origin-{}", i + 1);
            c.http_listen = addrs[i];
            c.raft_listen = raft_addrs[i];
            c.data_dir = dir.join(format!("origin-{}", i + 1));
            c.raft = RaftConfig {
                id: i as u64 + 1,
                members: members.clone(),
                request_timeout_ms,
                ..RaftConfig::default()
            };
            c
        })
        .collect()
}

async fn start(dir: &std::path::Path, request_timeout_ms: u64) -> Vec<Node> {
    start_nodes(configs(dir, request_timeout_ms)).await
}

/// Starts an origin node for each config, in order.
async fn start_nodes(configs: impl IntoIterator<Item = OriginConfig>) -> Vec<Node> {
    init();
    let mut nodes = Vec::new();
    for c in configs {
        let id = c.raft.id;
        let handle = meridian_origin::node::start(c)
            .await
            .expect("origin starts");
        nodes.push(Node {
            id,
            http: base(handle.http_addr),
            handle: Some(handle),
        });
    }
    nodes
}

/// The `/v1/status` of the node at `url` once it reports `revision`.
async fn status_at(c: &reqwest::Client, url: &str, revision: &Value, what: &str) -> Value {
    eventually(Duration::from_secs(30), what, || async move {
        let s = status(c, url).await;
        (&s["revision"] == revision).then_some(s)
    })
    .await
}

/// The ids of the nodes (only the voters, if `voters`) in a `/v1/cluster` answer.
fn node_ids(cluster: &Value, voters: bool) -> Vec<u64> {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !voters || n["voter"] == json!(true))
        .map(|n| n["id"].as_u64().unwrap())
        .collect()
}

/// Waits until one of the running `nodes` says it leads and the others agree; its index.
async fn leader(nodes: &[Node]) -> usize {
    let c = http();
    eventually(
        Duration::from_secs(20),
        "a leader every running node agrees on",
        || {
            let c = c.clone();
            async move {
                let mut leaders = Vec::new();
                for n in nodes.iter().filter(|n| n.handle.is_some()) {
                    leaders.push(status(&c, &n.http).await["leader"].as_u64());
                }
                let first = leaders.first().copied().flatten()?;
                if !leaders.iter().all(|l| *l == Some(first)) {
                    return None;
                }
                nodes
                    .iter()
                    .position(|n| n.id == first && n.handle.is_some())
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_leader_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start(dir.path(), 5_000).await;
    let c = http();
    let first = leader(&nodes).await;
    let follower = (first + 1) % 3;

    // Writes through a follower are forwarded to the leader and acknowledged after commit.
    let mut acked = Vec::new();
    for i in 0..20 {
        let answer = put(
            &c,
            &nodes[follower].http,
            &format!("app/prod/k{i}"),
            json!(i),
        )
        .await;
        acked.push((format!("k{i}"), answer["revision"].as_u64().unwrap()));
    }
    // Every node reads its own writes back (linearizable reads).
    for n in &nodes {
        let (code, v) = get_json(&c, &format!("{}/v1/kv/app/prod/k19", n.http)).await;
        assert_eq!(
            (code, v["value"].clone()),
            (200, json!(19)),
            "node {}",
            n.id
        );
    }

    // The leader goes away; the other two elect a new one and keep accepting writes.
    nodes[first].handle.take().unwrap().shutdown().await;
    let second = leader(&nodes).await;
    assert_ne!(second, first);
    let survivor = nodes
        .iter()
        .position(|n| n.handle.is_some() && n.id != nodes[second].id)
        .unwrap();
    let after = put(
        &c,
        &nodes[survivor].http,
        "app/prod/after",
        json!("failover"),
    )
    .await;
    assert!(after["revision"].as_u64().unwrap() > acked.last().unwrap().1);

    // Nothing acknowledged before the failover is missing on either survivor, and both hold
    // the same signed state.
    for n in nodes.iter().filter(|n| n.handle.is_some()) {
        for (i, (key, revision)) in acked.iter().enumerate() {
            let (code, v) = get_json(&c, &format!("{}/v1/kv/app/prod/{key}", n.http)).await;
            assert_eq!(code, 200, "node {} lost {key}", n.id);
            assert_eq!(v["value"], json!(i));
            assert_eq!(v["revision"].as_u64(), Some(*revision));
        }
    }
    let digests: Vec<Value> = {
        let mut out = Vec::new();
        for n in nodes.iter().filter(|n| n.handle.is_some()) {
            let s = status(&c, &n.http).await;
            out.push(json!([s["revision"], s["digest"]]));
        }
        out
    };
    assert_eq!(digests[0], digests[1]);
    for n in nodes.iter_mut() {
        if let Some(h) = n.handle.take() {
            h.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_quorum_refuses_writes_with_no_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start(dir.path(), 1_500).await;
    let c = http();
    let first = leader(&nodes).await;
    put(&c, &nodes[first].http, "app/prod/before", json!(1)).await;

    // Two of three stop: the one left has no quorum, whatever it was.
    let left = (first + 1) % 3;
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != left {
            n.handle.take().unwrap().shutdown().await;
        }
    }
    let r = c
        .put(format!("{}/v1/kv/app/prod/lost", nodes[left].http))
        .json(&json!({"value": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_quorum", "{body}");
    let (code, body) = get_json(&c, &format!("{}/v1/kv/app/prod/before", nodes[left].http)).await;
    assert_eq!(code, 503, "a linearizable read needs a quorum too: {body}");
    nodes[left].handle.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_and_leave_through_the_admin_api() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let all = configs_of(dir.path(), 5_000, 4);
    let mut nodes = start_nodes(all.iter().take(3).cloned()).await;
    let c = http();
    let first = leader(&nodes).await;
    for i in 0..10 {
        put(&c, &nodes[first].http, &format!("app/prod/k{i}"), json!(i)).await;
    }

    // Membership changes are made on the private Raft channel, with an origin certificate.
    let admin = meridian_net::peer::PeerClient::new(
        meridian_net::tls::origin_peer_client_crypto(&all[0].tls).unwrap(),
    );
    let raft_addr = |i: usize| all[i].raft_listen.to_string();
    let change = |method: Method, node: usize, path: String, body: Value| {
        let (admin, addr) = (admin.clone(), raft_addr(node));
        async move {
            let (code, body) = admin
                .request(method, &addr, &path, body.to_string().into_bytes(), TIMEOUT)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (code.as_u16(), body)
        }
    };
    // The client API does not serve them.
    let r = c
        .post(format!("{}/v1/cluster/nodes", nodes[first].http))
        .body(json!({"id": 4, "addr": raft_addr(3)}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "membership changes are not on the client API"
    );

    // Node 4 starts knowing the members but does not initialize a cluster of its own; asked
    // through a follower, the change is redirected to the leader.
    let joining = all[3].clone();
    let addr = raft_addr(3);
    let handle = meridian_origin::node::start(joining)
        .await
        .expect("node 4 starts");
    nodes.push(Node {
        id: 4,
        http: base(handle.http_addr),
        handle: Some(handle),
    });
    let follower = (first + 1) % 3;
    let (code, body) = change(
        Method::POST,
        follower,
        "/v1/cluster/nodes".into(),
        json!({"id": 4, "addr": addr}),
    )
    .await;
    assert_eq!(code, 307, "a follower redirects to the leader: {body}");
    let (code, body) = change(
        Method::POST,
        first,
        "/v1/cluster/nodes".into(),
        json!({"id": 4, "addr": addr}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(node_ids(&body, true), vec![1, 2, 3, 4], "{body}");
    // The new voter holds everything written before it joined.
    let (code, v) = get_json(&c, &format!("{}/v1/kv/app/prod/k9", nodes[3].http)).await;
    assert_eq!((code, v["value"].clone()), (200, json!(9)));

    // A node that is not a member is refused clearly; a member is removed.
    let (code, _) = change(
        Method::DELETE,
        first,
        "/v1/cluster/nodes/9".into(),
        Value::Null,
    )
    .await;
    assert_eq!(code, 404);
    let gone = nodes[(first + 2) % 3].id;
    let (code, body) = change(
        Method::DELETE,
        first,
        format!("/v1/cluster/nodes/{gone}"),
        Value::Null,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let ids = node_ids(&body, false);
    assert!(!ids.contains(&gone) && ids.len() == 3, "{body}");
    put(
        &c,
        &nodes[first].http,
        "app/prod/after",
        json!("three voters"),
    )
    .await;
    for n in nodes.iter_mut() {
        if let Some(h) = n.handle.take() {
            h.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edges_fail_over_to_another_origin_node_from_their_own_revision() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options(dir.path());
    opts.origin_nodes = 3;
    let meridian::dev::DevCluster {
        origin,
        more_origins,
        edges,
        ..
    } = meridian::dev::DevCluster::start(&opts)
        .await
        .expect("dev cluster");
    let c = http();
    let first = base(origin.http_addr);
    for i in 0..20 {
        put(&c, &first, &format!("app/prod/k{i}"), json!(i)).await;
    }
    let edge_urls: Vec<String> = edges.iter().map(|e| base(e.http_addr)).collect();
    for url in &edge_urls {
        eventually(Duration::from_secs(20), "edges at revision 20", || {
            let c = c.clone();
            async move { (common::revision(&c, url).await == common::DEV_BOOT + 20).then_some(()) }
        })
        .await;
    }

    // Each edge is connected to a different node (edge r dials node r first), and any node
    // lists all three: it merges what the others heard over the Raft channel.
    for o in std::iter::once(&origin).chain(&more_origins) {
        let url = format!("{}/v1/edges", base(o.http_addr));
        let listed = eventually(Duration::from_secs(20), "every edge listed", || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let (_, v) = get_json(&c, &url).await;
                let ids: std::collections::BTreeSet<String> = v["edges"]
                    .as_array()?
                    .iter()
                    .filter_map(|e| e["edge_id"].as_str().map(str::to_owned))
                    .collect();
                (ids.len() == 3).then_some(v)
            }
        })
        .await;
        assert_eq!(listed["unreachable_nodes"], json!([]), "{listed}");
    }

    // Node 1 goes away (every edge knows all three nodes; us-east dialed node 1 first).
    origin.shutdown().await;
    let survivor = base(more_origins[0].http_addr);
    for i in 20..30 {
        put(&c, &survivor, &format!("app/prod/k{i}"), json!(i)).await;
    }
    for url in &edge_urls {
        eventually(Duration::from_secs(20), "edges at revision 30", || {
            let c = c.clone();
            async move { (common::revision(&c, url).await == common::DEV_BOOT + 30).then_some(()) }
        })
        .await;
        let (code, v) = get_json(&c, &format!("{url}/v1/kv/app/prod/k29")).await;
        assert_eq!((code, v["value"].clone()), (200, json!(29)));
    }
    // They continued with deltas from their own revision: no edge needed a snapshot.
    for e in &edges {
        let stats = e.shared.stats();
        assert_eq!(
            stats.snapshots_installed, 0,
            "{}: {stats:?}",
            e.shared.edge_id
        );
        assert!(
            stats.deltas_applied >= 30,
            "{}: {stats:?}",
            e.shared.edge_id
        );
    }
    for e in edges {
        e.shutdown().await;
    }
    for o in more_origins {
        o.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_compacted_entries_catches_up_by_snapshot_and_serves_edges() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut configs = configs(dir.path(), 5_000);
    for c in &mut configs {
        // Snapshot often and keep little log behind it, so a node away for 300 writes can only
        // come back through a snapshot.
        c.raft.snapshot_after_logs = 50;
        c.raft.logs_kept_after_snapshot = 10;
    }
    let mut nodes = start_nodes(configs.iter().cloned()).await;
    let c = http();
    let first = leader(&nodes).await;
    let away = (first + 1) % 3;
    put(&c, &nodes[first].http, "app/prod/early", json!(0)).await;
    let had = eventually(
        Duration::from_secs(10),
        "the node applied the early write",
        || {
            let c = c.clone();
            let url = nodes[away].http.clone();
            async move {
                let s = get_json(&c, &format!("{url}/v1/cluster")).await.1;
                s["last_applied_index"].as_u64().filter(|i| *i >= 2)
            }
        },
    )
    .await;
    nodes[away].handle.take().unwrap().shutdown().await;
    for i in 0..300 {
        put(
            &c,
            &nodes[first].http,
            &format!("app/prod/k{}", i % 40),
            json!(i),
        )
        .await;
    }
    // A schema registered while the node is away must reach it too (it validates writes).
    let schema_url = |base: &str| format!("{base}/v1/schemas/app/prod/k");
    let r = c
        .put(schema_url(&nodes[first].http))
        .json(&json!({"schema": {"type": "integer"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    put(&c, &nodes[first].http, "app/prod/k1", json!(1)).await;
    let newest = status(&c, &nodes[first].http).await;
    let leader_view = get_json(&c, &format!("{}/v1/cluster", nodes[first].http))
        .await
        .1;
    assert!(
        leader_view["purged_index"].as_u64().unwrap_or(0) > had,
        "the leader purged log the node never had: {leader_view}"
    );

    // Back in place, from its own data folder.
    let handle = meridian_origin::node::start(configs[away].clone())
        .await
        .expect("restarts");
    nodes[away].handle = Some(handle);
    let url = nodes[away].http.clone();
    let caught_up = status_at(&c, &url, &newest["revision"], "the node catches up").await;
    assert_eq!(caught_up["digest"], newest["digest"]);
    // The snapshot carried the history and the schemas.
    let history = |base: String| {
        let c = c.clone();
        async move {
            get_json(&c, &format!("{base}/v1/kv/app/prod/k7/history?limit=1000"))
                .await
                .1
        }
    };
    let here = history(url.clone()).await;
    assert_eq!(here["items"].as_array().map(Vec::len), Some(8), "{here}");
    assert_eq!(here, history(nodes[first].http.clone()).await);
    let (code, schema) = get_json(&c, &schema_url(&url)).await;
    assert_eq!(
        (code, &schema["schema"]),
        (200, &json!({"type": "integer"}))
    );

    // An edge that knows only this node replicates from it to the same signed state.
    let opts = common::options(dir.path());
    let pki = pki(dir.path()).unwrap();
    let quic = nodes[away].handle.as_ref().unwrap().quic_addr;
    let edge = meridian_edge::start(meridian::dev::edge_config(
        dir.path(),
        &pki,
        "eu-west",
        opts.edge_http[1],
        quic,
    ))
    .await
    .expect("edge starts");
    let edge_url = base(edge.http_addr);
    let edge_status = status_at(&c, &edge_url, &newest["revision"], "the edge converges").await;
    assert_eq!(edge_status["digest"], newest["digest"]);
    edge.shutdown().await;
    for n in nodes.iter_mut() {
        if let Some(h) = n.handle.take() {
            h.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_at_every_node_share_entries_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start(dir.path(), 10_000).await;
    let c = http();
    let first = leader(&nodes).await;
    let log_index = |s: &Value| s["last_log_index"].as_u64().unwrap_or(0);
    let url = format!("{}/v1/cluster", nodes[first].http);
    let before = log_index(&get_json(&c, &url).await.1);

    // 50 writes at each node at once, every tenth one conditional on a version its key does
    // not have: followers forward theirs, and the leader commits them with its own.
    let mut sent = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for i in 0..50 {
            let (c, base) = (c.clone(), node.http.clone());
            let key = format!("n{n}.k{i}");
            let conflict = i % 10 == 0;
            sent.push(tokio::spawn(async move {
                let mut body = json!({ "value": i });
                if conflict {
                    body["expect_version"] = json!(7);
                }
                let r = c
                    .put(format!("{base}/v1/kv/app/prod/{key}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let code = r.status().as_u16();
                (key, i, conflict, code, r.json::<Value>().await.unwrap())
            }));
        }
    }
    let mut revisions = std::collections::BTreeSet::new();
    let mut written = Vec::new();
    for s in sent {
        let (key, i, conflict, code, answer) = s.await.unwrap();
        if conflict {
            assert_eq!(code, 409, "{key}: {answer}");
            continue;
        }
        assert_eq!(code, 200, "{key}: {answer}");
        assert_eq!(answer["version"], json!(1), "{key}: {answer}");
        let revision = answer["revision"].as_u64().unwrap();
        assert!(
            revisions.insert(revision),
            "revision {revision} answered twice"
        );
        written.push((key, i, revision));
    }
    assert_eq!(written.len(), 135);

    // Each answer was the writer's own: the key holds that value at that revision.
    for (key, i, revision) in &written {
        let (code, v) = get_json(&c, &format!("{}/v1/kv/app/prod/{key}", nodes[first].http)).await;
        assert_eq!(code, 200, "{key}");
        assert_eq!(
            (&v["value"], v["revision"].as_u64()),
            (&json!(i), Some(*revision))
        );
    }
    // Writes that met in the queues shared Raft entries (150 writes, far fewer entries).
    let entries = log_index(&get_json(&c, &url).await.1) - before;
    assert!(entries < 75, "150 concurrent writes took {entries} entries");
    for n in nodes.iter_mut() {
        if let Some(h) = n.handle.take() {
            h.shutdown().await;
        }
    }
}
