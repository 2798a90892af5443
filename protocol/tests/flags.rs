//! flagd semantics of flag evaluation: reasons, error codes, operators, `$ref`, the write-time
//! checks, and `fractional` bucketing against a reference MurmurHash3.

use datalogic_rs::bumpalo::Bump;
use meridian_protocol::flags::{
    CompileError, ErrorCode, EvalContext, FlagDocument, FlagSet, Outcome, Reason, compile_document,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn set(document: Value) -> FlagSet {
    let document: FlagDocument = serde_json::from_value(document).unwrap();
    compile_document(&document).unwrap()
}

fn refused(document: Value) -> CompileError {
    let document: FlagDocument = serde_json::from_value(document).unwrap();
    compile_document(&document).unwrap_err()
}

/// (variant, reason or error code, value) of one evaluation.
fn eval(set: &FlagSet, key: &str, context: Value) -> (Option<String>, String, Option<Value>) {
    let arena = Bump::new();
    let body = json!({ "context": context }).to_string();
    let ctx = EvalContext::parse_request(&body, &arena, 1_700_000_000).unwrap();
    let r = ctx.evaluate(set, key);
    let value = r.value().cloned();
    match r.outcome {
        Outcome::Resolved { variant, reason } => (
            variant.map(str::to_owned),
            reason.as_str().to_owned(),
            value,
        ),
        Outcome::Failed { code, .. } => (None, code.as_str().to_owned(), None),
    }
}

fn demo() -> FlagSet {
    set(json!({
        "flags": {
            "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"},
            "off-flag": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
            "color": {
                "state": "ENABLED",
                "variants": {"red": "#f00", "blue": "#00f", "green": "#0f0"},
                "defaultVariant": "red",
                "targeting": {"if": [
                    {"ends_with": [{"var": "email"}, "@example.com"]}, "blue",
                    {"starts_with": [{"var": "email"}, "qa-"]}, "green",
                    null
                ]},
                "metadata": {"owner": "web"}
            },
            "bool-result": {
                "state": "ENABLED",
                "variants": {"true": "yes", "false": "no"},
                "defaultVariant": "false",
                "targeting": {"==": [{"var": "tier"}, "gold"]}
            },
            "versioned": {
                "state": "ENABLED",
                "variants": {"new": true, "old": false},
                "defaultVariant": "old",
                "targeting": {"if": [{"sem_ver": [{"var": "version"}, ">=", "2.1.0"]}, "new", "old"]}
            },
            "by-ref": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{"$ref": "staff"}, "on", null]}
            },
            "self-named": {
                "state": "ENABLED",
                "variants": {"self-named": 1, "other": 2},
                "defaultVariant": "other",
                "targeting": {"var": "$flagd.flagKey"}
            },
            "after-launch": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{">=": [{"var": "$flagd.timestamp"}, 1_600_000_000]}, "on", "off"]}
            },
            "split": {
                "state": "ENABLED",
                "variants": {"a": "A", "b": "B"},
                "defaultVariant": "a",
                "targeting": {"fractional": [["a", 50], ["b", 50]]}
            },
            "code-default": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": null},
            "wrong-type": {
                "state": "ENABLED",
                "variants": {"a": 1},
                "defaultVariant": "a",
                "targeting": {"+": [1, 2]}
            },
            "dynamic-name": {
                "state": "ENABLED",
                "variants": {"a": 1},
                "defaultVariant": "a",
                "targeting": {"var": "pick"}
            }
        },
        "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@corp.example"]}},
        "metadata": {"owner": "platform", "flagSetId": "shop"}
    }))
}

#[test]
fn reasons_follow_flagd() {
    let s = demo();
    let v = |k: &str, c: Value| eval(&s, k, c);
    assert_eq!(
        v("static", json!({})),
        (Some("off".into()), "STATIC".into(), Some(json!(false)))
    );
    assert_eq!(v("off-flag", json!({})), (None, "DISABLED".into(), None));
    assert_eq!(
        v("color", json!({"email": "ann@example.com"})),
        (
            Some("blue".into()),
            "TARGETING_MATCH".into(),
            Some(json!("#00f"))
        )
    );
    assert_eq!(
        v("color", json!({"email": "qa-1@x.io"})).0.as_deref(),
        Some("green")
    );
    assert_eq!(
        v("color", json!({"email": "bob@else.org"})),
        (Some("red".into()), "DEFAULT".into(), Some(json!("#f00")))
    );
    assert_eq!(
        v("bool-result", json!({"tier": "gold"})).2,
        Some(json!("yes"))
    );
    assert_eq!(
        v("bool-result", json!({"tier": "tin"})).2,
        Some(json!("no"))
    );
    assert_eq!(
        v("versioned", json!({"version": "v2.1.3"})).0.as_deref(),
        Some("new")
    );
    assert_eq!(
        v("versioned", json!({"version": "2.0"})).0.as_deref(),
        Some("old")
    );
    assert_eq!(
        v("by-ref", json!({"email": "a@corp.example"})).0.as_deref(),
        Some("on")
    );
    assert_eq!(v("by-ref", json!({"email": "a@else"})).1, "DEFAULT");
    assert_eq!(v("self-named", json!({})).0.as_deref(), Some("self-named"));
    assert_eq!(v("after-launch", json!({})).0.as_deref(), Some("on"));
    assert_eq!(v("code-default", json!({})), (None, "DEFAULT".into(), None));
}

#[test]
fn failures_have_openfeature_codes() {
    let s = demo();
    assert_eq!(eval(&s, "nope", json!({})).1, "FLAG_NOT_FOUND");
    assert_eq!(eval(&s, "split", json!({})).1, "TARGETING_KEY_MISSING");
    assert_eq!(eval(&s, "wrong-type", json!({})).1, "GENERAL");
    assert_eq!(
        eval(&s, "dynamic-name", json!({"pick": "zzz"})).1,
        "GENERAL"
    );
    assert_eq!(
        eval(&s, "dynamic-name", json!({"pick": "a"})).1,
        "TARGETING_MATCH"
    );

    let arena = Bump::new();
    for bad in [
        "[1]",
        r#"{"context": 3}"#,
        r#"{"context": {"targetingKey": 5}}"#,
        "{nope",
    ] {
        assert!(EvalContext::parse_request(bad, &arena, 0).is_err(), "{bad}");
    }
    // A caller may not forge `$flagd`.
    let body = r#"{"context": {"$flagd": {"flagKey": "other"}}}"#;
    let ctx = EvalContext::parse_request(body, &arena, 0).unwrap();
    let r = ctx.evaluate(&s, "self-named");
    assert_eq!(
        r.outcome,
        Outcome::Resolved {
            variant: Some("self-named"),
            reason: Reason::TargetingMatch
        }
    );
    assert_eq!(ErrorCode::InvalidContext.as_str(), "INVALID_CONTEXT");
}

#[test]
fn flag_metadata_overrides_set_metadata_in_the_ofrep_body() {
    let s = demo();
    let arena = Bump::new();
    let ctx =
        EvalContext::parse_request(r#"{"context":{"email":"a@example.com"}}"#, &arena, 0).unwrap();
    let mut out = String::new();
    ctx.evaluate(&s, "color").write_ofrep(&mut out);
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        body,
        json!({"key": "color", "reason": "TARGETING_MATCH", "variant": "blue", "value": "#00f",
               "metadata": {"owner": "web", "flagSetId": "shop"}})
    );
    out.clear();
    ctx.evaluate(&s, "missing").write_ofrep(&mut out);
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["errorCode"], "FLAG_NOT_FOUND");
}

#[test]
fn bad_definitions_are_refused_naming_the_path() {
    let flag = |f: Value| json!({"flags": {"f": f}});
    let e = refused(flag(
        json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}),
    ));
    assert_eq!(e.path, "/flags/f/defaultVariant");
    let e = refused(flag(
        json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
        "targeting": {"if": [true, "a", "zzz"]}}),
    ));
    assert_eq!(e.path, "/flags/f/targeting/if/2");
    let e = refused(flag(
        json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
        "targeting": {"fractional": [["a", 1], ["q", 1]]}}),
    ));
    assert_eq!(e.path, "/flags/f/targeting/fractional/1/0");
    let e = refused(flag(
        json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
        "targeting": {"if": [{"$ref": "gone"}, "a", null]}}),
    ));
    assert_eq!(e.path, "/flags/f/targeting/if/0/$ref");
    let e = refused(flag(json!({"state": "ON", "variants": {"a": 1}})));
    assert_eq!(e.path, "/flags/f/state");

    // Too deep, directly and through a chain of evaluators.
    let mut deep = json!("a");
    for _ in 0..40 {
        deep = json!({"if": [true, deep, null]});
    }
    let e = refused(flag(
        json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": deep}),
    ));
    assert!(e.message.contains("deeper"), "{e}");
    let mut evaluators = serde_json::Map::new();
    evaluators.insert("r0".into(), json!(true));
    for i in 1..40 {
        evaluators.insert(
            format!("r{i}"),
            json!({"!": [{"$ref": format!("r{}", i - 1)}]}),
        );
    }
    let e = refused(
        json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
        "targeting": {"if": [{"$ref": "r39"}, "a", null]}}}, "$evaluators": evaluators}),
    );
    assert!(e.message.contains("deeper"), "{e}");
    // A self-referencing evaluator ends at the depth bound rather than looping.
    let e = refused(json!({"flags": {}, "$evaluators": {"loop": {"!": [{"$ref": "loop"}]}}}));
    assert!(e.message.contains("deeper"), "{e}");
    // Too many parts: wide rather than deep.
    let wide: Vec<Value> = (0..5000).map(|i| json!(i)).collect();
    let e = refused(flag(
        json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
        "targeting": {"if": [{"in": [{"var": "x"}, wide]}, "a", null]}}),
    ));
    assert!(e.message.contains("parts"), "{e}");
}

/// flagd's `fractional` (v2): MurmurHash3 x86 32-bit, seed 0, of flag key + targeting key;
/// bucket = (hash × total weight) >> 32 over integer weights, negative weights as 0.
fn reference_bucket(flag: &str, targeting_key: &str, weights: &[(String, i64)]) -> Option<String> {
    let key = format!("{flag}{targeting_key}");
    let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(key.as_bytes()), 0).unwrap();
    let total: u64 = weights.iter().map(|(_, w)| (*w).max(0) as u64).sum();
    if total == 0 {
        return None;
    }
    let bucket = (u64::from(hash) * total) >> 32;
    let mut end = 0;
    for (name, w) in weights {
        end += (*w).max(0) as u64;
        if bucket < end {
            return Some(name.clone());
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fractional_matches_the_reference_bucketing(
        targeting_key in "[a-zA-Z0-9@._-]{1,40}",
        weights in proptest::collection::vec(-5i64..100, 1..6),
    ) {
        let named: Vec<(String, i64)> =
            weights.iter().enumerate().map(|(i, w)| (format!("v{i}"), *w)).collect();
        prop_assume!(named.iter().any(|(_, w)| *w > 0));
        let buckets: Vec<Value> = named.iter().map(|(n, w)| json!([n, w])).collect();
        let variants: serde_json::Map<String, Value> =
            named.iter().map(|(n, _)| (n.clone(), json!(n))).collect();
        let s = set(json!({"flags": {"exp": {
            "state": "ENABLED", "variants": variants, "defaultVariant": "v0",
            "targeting": {"fractional": buckets}
        }}}));
        let (variant, reason, _) = eval(&s, "exp", json!({"targetingKey": targeting_key}));
        prop_assert_eq!(reason, "TARGETING_MATCH");
        prop_assert_eq!(variant, reference_bucket("exp", &targeting_key, &named));
    }
}

#[test]
fn fractional_with_an_explicit_key_and_even_split() {
    let s = set(json!({"flags": {"exp": {
        "state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a",
        "targeting": {"fractional": [{"var": "email"}, ["a", 50], ["b", 50]]}
    }}}));
    let mut counts = [0u32; 2];
    for i in 0..2000 {
        let email = format!("user{i}@example.com");
        let (v, reason, _) = eval(&s, "exp", json!({"email": email}));
        assert_eq!(reason, "TARGETING_MATCH");
        let want = reference_bucket("", &email, &[("a".into(), 50), ("b".into(), 50)]);
        assert_eq!(v, want, "{email}");
        counts[usize::from(v.as_deref() == Some("b"))] += 1;
    }
    // A fair split of 2,000 subjects lands well inside 45-55%.
    assert!((900..=1100).contains(&counts[0]), "{counts:?}");
}
