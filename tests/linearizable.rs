//! A concurrent history of puts, deletes and reads from several clients against three
//! `meridian origin` processes, recorded while nodes (the leader first, then a follower, then
//! the new leader) are SIGKILLed and restarted, is checked for linearizability with
//! `meridian-lincheck`, key by key. Writes that got no answer (timeout, reset, 503) count as
//! possibly applied at any later moment; refused connections as never sent.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use meridian_lincheck::{
    CheckError, DEFAULT_BUDGET, Model, Operation, Register, RegisterInput as In,
    RegisterOutput as Out, Return, check_partitioned,
};
use rand::{Rng, RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};
use serde_json::{Value, json};

const KEYS: usize = 4;
const CLIENTS: usize = 6;

/// A call on key `.0`.
type Call = (usize, In<String>);
type Op = Operation<Call, Out<String>>;

/// The register model, one per key (the history is partitioned by key).
struct PerKey;

impl Model for PerKey {
    type State = Option<String>;
    type Input = Call;
    type Output = Out<String>;
    fn init(&self) -> Option<String> {
        None
    }
    fn step(
        &self,
        s: &Option<String>,
        i: &Call,
        o: Option<&Out<String>>,
    ) -> Option<Option<String>> {
        Register::new().step(s, &i.1, o)
    }
}

struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// Operations that got an answer.
    answered: AtomicUsize,
    /// Writes that got no answer.
    unknown: AtomicUsize,
}

impl History {
    fn ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// What one HTTP call answered, as the model sees it; `None` when it surely had no effect.
fn outcome(
    input: &In<String>,
    r: Result<(u16, Value), reqwest::Error>,
) -> Option<Return<Out<String>>> {
    let (code, body) = match r {
        Ok(x) => x,
        // Never reached a node: nothing was sent.
        Err(e) if e.is_connect() => return None,
        Err(_) if matches!(input, In::Get) => return None,
        Err(_) => return Some(Return::Unknown),
    };
    let output = match (input, code) {
        (In::Put(_), 200) => Out::Stored,
        (In::Delete, 200) => Out::Deleted,
        (In::Delete | In::Get, 404) if body["error"]["code"] == "not_found" => Out::NotFound,
        (In::Get, 200) => Out::Value(body["value"].as_str()?.to_owned()),
        // A read that failed changed nothing.
        (In::Get, _) => return None,
        // A write refused without being tried changes nothing either.
        (_, 400..=499) => panic!("{input:?} refused: {code} {body}"),
        // 503 `no_quorum` and the like: it may still commit.
        _ => return Some(Return::Unknown),
    };
    Some(Return::At { ns: 0, output })
}

async fn call(
    c: &reqwest::Client,
    url: &str,
    key: usize,
    input: &In<String>,
) -> Result<(u16, Value), reqwest::Error> {
    let u = format!("{url}/v1/kv/app/prod/k{key}");
    let r = match input {
        In::Put(v) => c.put(&u).json(&json!({ "value": v })).send().await?,
        In::Delete => c.delete(&u).send().await?,
        In::Get => c.get(&u).send().await?,
    };
    let code = r.status().as_u16();
    Ok((code, r.json().await.unwrap_or(Value::Null)))
}

/// One client: random calls on random keys at random nodes until `stop`.
async fn client(id: usize, urls: Vec<String>, h: Arc<History>, stop: Arc<AtomicBool>) {
    let c = reqwest::Client::builder()
        .default_headers(common::auth_headers(&common::TOKEN))
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(id as u64);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = rng.random_range(0..KEYS);
        let input = match rng.random_range(0..20) {
            0..=9 => In::Get,
            10..=16 => {
                n += 1;
                In::Put(format!("c{id}-{n}"))
            }
            _ => In::Delete,
        };
        let url = &urls[rng.next_u32() as usize % urls.len()];
        let call_ns = h.ns();
        let r = call(&c, url, key, &input).await;
        let ret_ns = h.ns();
        let Some(ret) = outcome(&input, r) else {
            continue;
        };
        let ret = match ret {
            Return::At { output, .. } => {
                h.answered.fetch_add(1, Ordering::Relaxed);
                Return::At { ns: ret_ns, output }
            }
            Return::Unknown => {
                h.unknown.fetch_add(1, Ordering::Relaxed);
                Return::Unknown
            }
        };
        h.ops.lock().unwrap().push(Operation {
            call_ns,
            input: (key, input),
            ret,
        });
    }
}

/// The leader every node in `urls` that answers agrees on.
async fn agreed_leader(c: &reqwest::Client, urls: &[String]) -> usize {
    eventually(Duration::from_secs(30), "an agreed leader", || async move {
        let mut seen = BTreeSet::new();
        for u in urls {
            let r = c.get(format!("{u}/v1/status")).send().await.ok()?;
            let s: Value = r.json().await.ok()?;
            seen.insert(s["leader"].as_u64()?);
        }
        (seen.len() == 1).then(|| *seen.first().unwrap() as usize)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_recorded_across_kills_and_restarts_is_linearizable() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_origin_configs(dir.path(), 3);
    let mut procs: Vec<Option<OriginProcess>> = Vec::new();
    let mut urls = Vec::new();
    for p in &paths {
        let (child, url) = spawn_origin(p);
        procs.push(Some(child));
        urls.push(url);
    }
    let c = http();
    agreed_leader(&c, &urls).await;

    let h = Arc::new(History {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
        answered: AtomicUsize::new(0),
        unknown: AtomicUsize::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(id, urls.clone(), h.clone(), stop.clone())))
        .collect();
    let answered = |more: usize| {
        let h = h.clone();
        let target = h.answered.load(Ordering::Relaxed) + more;
        move || {
            let h = h.clone();
            async move { (h.answered.load(Ordering::Relaxed) >= target).then_some(()) }
        }
    };
    eventually(
        Duration::from_secs(30),
        "a first 150 answers",
        answered(150),
    )
    .await;

    // Kill the leader, a follower, then the new leader; each time the others keep answering
    // while it is down, and it restarts from its own sled log.
    let mut killed = Vec::new();
    for round in 0..3 {
        let leader = agreed_leader(&c, &urls).await;
        let victim = if round == 1 { leader % 3 + 1 } else { leader };
        procs[victim - 1].take().unwrap().kill();
        killed.push(victim);
        let survivors: Vec<String> = (1..=3)
            .filter(|&i| i != victim)
            .map(|i| urls[i - 1].clone())
            .collect();
        agreed_leader(&c, &survivors).await;
        eventually(
            Duration::from_secs(30),
            "answers with a node down",
            answered(100),
        )
        .await;
        let (child, url) = spawn_origin(&paths[victim - 1]);
        assert_eq!(url, urls[victim - 1]);
        procs[victim - 1] = Some(child);
        agreed_leader(&c, &urls).await;
        eventually(
            Duration::from_secs(30),
            "answers after the restart",
            answered(100),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }

    // Last, a read of every key at every node, after everything else.
    for key in 0..KEYS {
        for u in &urls {
            let call_ns = h.ns();
            let r = call(&c, u, key, &In::Get).await;
            let ret_ns = h.ns();
            let Some(Return::At { output, .. }) = outcome(&In::Get, r) else {
                panic!("final read of k{key} at {u} failed");
            };
            h.ops.lock().unwrap().push(Operation {
                call_ns,
                input: (key, In::Get),
                ret: Return::At { ns: ret_ns, output },
            });
        }
    }

    let ops = h.ops.lock().unwrap().clone();
    let writes = ops
        .iter()
        .filter(|o| !matches!(o.input.1, In::Get) && matches!(o.ret, Return::At { .. }))
        .count();
    let reads_of_values = ops
        .iter()
        .filter(|o| {
            matches!(
                o.ret,
                Return::At {
                    output: Out::Value(_),
                    ..
                }
            )
        })
        .count();
    eprintln!(
        "history: {} operations ({} answered writes, {} reads of a value, {} writes without an answer), nodes killed: {killed:?}",
        ops.len(),
        writes,
        reads_of_values,
        h.unknown.load(Ordering::Relaxed)
    );
    assert!(
        writes >= 100 && reads_of_values >= 100,
        "too thin a history to say much"
    );
    let checked =
        check_partitioned(&PerKey, &ops, |i| i.0, DEFAULT_BUDGET).unwrap_or_else(|(key, e)| {
            let stuck = match &e {
                CheckError::NotLinearizable { stuck, .. } => Some(&ops[*stuck]),
                _ => None,
            };
            panic!("k{key}: {e}; the operation that could not be placed: {stuck:?}")
        });
    assert_eq!(checked, KEYS);
}
