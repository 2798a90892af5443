//! Flag sets and evaluation contexts from arbitrary bytes: compiling any document answers a
//! flag set or an error naming a path, never panics; evaluating any context against what
//! compiled answers an OFREP body (JSON) or a context error, never panics, whatever the rules.
//! The input is a flagd document, a newline, and an OFREP request body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_protocol::flags::{Bump, EvalContext, FlagDocument, compile_document};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (document, body) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(document) = serde_json::from_str::<FlagDocument>(document) else {
        return;
    };
    let Ok(set) = compile_document(&document) else {
        return;
    };
    let arena = Bump::new();
    let Ok(ctx) = EvalContext::parse_request(body, &arena, 1_700_000_000) else {
        return;
    };
    let mut out = String::new();
    for flag in set.flags.values() {
        out.clear();
        ctx.evaluate_flag(flag).write_ofrep(&mut out);
        serde_json::from_str::<serde_json::Value>(&out).expect("an OFREP answer is JSON");
    }
});
