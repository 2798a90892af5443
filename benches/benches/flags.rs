//! Flag evaluation as an edge runs it, in process: parse an OFREP request body, evaluate a
//! targeting rule with `fractional` (inside an `if` on the country), and write the OFREP
//! answer; then a bulk evaluation of 100 such flags. Issue 25 asks for < 2 µs p99 for one
//! evaluation and < 200 µs of server time for the bulk one; after criterion's estimates this
//! prints the p99 of 200,000 single evaluations and 5,000 bulk ones timed one by one.
//!
//! `cargo bench -p meridian-benches --bench flags`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use datalogic_rs::bumpalo::Bump;
use meridian_protocol::flags::{EvalContext, FlagDocument, FlagSet, compile_document};
use serde_json::json;

const BODY: &str = r#"{"context":{"targetingKey":"user-4711","email":"ann@example.com","country":"CA","plan":"pro"}}"#;

fn flag_set(flags: usize) -> FlagSet {
    let mut map = serde_json::Map::new();
    for i in 0..flags {
        map.insert(
            format!("flag-{i}"),
            json!({
                "state": "ENABLED",
                "variants": {"control": false, "treatment": true},
                "defaultVariant": "control",
                "targeting": {"if": [
                    {"in": [{"var": "country"}, ["CA", "US", "MX"]]},
                    {"fractional": [["control", 50], ["treatment", 50]]},
                    "control"
                ]},
                "metadata": {"team": "growth"}
            }),
        );
    }
    let document: FlagDocument = serde_json::from_value(json!({ "flags": map })).expect("document");
    compile_document(&document).expect("compiles")
}

fn single(set: &FlagSet, arena: &mut Bump, out: &mut String) {
    arena.reset();
    out.clear();
    let ctx = EvalContext::parse_request(BODY, arena, 1_700_000_000).expect("context");
    ctx.evaluate(set, "flag-0").write_ofrep(out);
}

fn bulk(set: &FlagSet, arena: &mut Bump, out: &mut String) {
    arena.reset();
    out.clear();
    let ctx = EvalContext::parse_request(BODY, arena, 1_700_000_000).expect("context");
    out.push_str("{\"flags\":[");
    for (i, flag) in set.flags.values().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ctx.evaluate_flag(flag).write_ofrep(out);
    }
    out.push_str("]}");
}

fn percentiles(name: &str, n: usize, mut run: impl FnMut()) {
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name}: p50 {:?}, p99 {:?}, p99.9 {:?}",
        at(0.5),
        at(0.99),
        at(0.999)
    );
}

fn main() {
    let one = flag_set(1);
    let hundred = flag_set(100);
    let mut arena = Bump::new();
    let mut out = String::new();
    single(&one, &mut arena, &mut out);
    assert!(out.contains("TARGETING_MATCH"), "{out}");
    bulk(&hundred, &mut arena, &mut out);
    assert_eq!(out.matches("TARGETING_MATCH").count(), 100);

    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    c.bench_function(
        "evaluate one fractional rule (OFREP body in and out)",
        |b| b.iter(|| single(black_box(&one), &mut arena, &mut out)),
    );
    c.bench_function("bulk-evaluate 100 flags (OFREP body in and out)", |b| {
        b.iter(|| bulk(black_box(&hundred), &mut arena, &mut out))
    });
    c.final_summary();

    percentiles("single evaluations", 200_000, || {
        single(&one, &mut arena, &mut out)
    });
    percentiles("bulk evaluations of 100 flags", 5_000, || {
        bulk(&hundred, &mut arena, &mut out)
    });
}
