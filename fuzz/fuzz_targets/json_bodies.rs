//! The JSON bodies of put, patch, transaction and schema requests, turned into commands by the
//! same functions the handlers use, checked as a forwarded write is (`admission::check`) and
//! applied to an origin core that already holds values and a schema. Whatever the bytes, each
//! step answers a clear error or applies exactly one whole revision whose signed head verifies;
//! nothing panics, and a refused command changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_origin::http::kv::{patch_command, put_command, txn_body_command};
use meridian_core::apply::{Command, OriginCore, Proposal};
use meridian_core::history::WriteMeta;
use meridian_origin::http::schemas::put_schema_command;
use meridian_protocol::{Address, Signer, TrustedKeys};
use meridian_store::{MemBackend, SignedState};

const MAX_VALUE_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let signer = Signer::from_bytes(&[7; 32]);
    let trusted = TrustedKeys::new([signer.verifying_key()]);
    let mut core = OriginCore::new(
        SignedState::open(MemBackend::new(), 16).expect("memory state"),
        Signer::from_bytes(&[7; 32]),
    );
    let at = |k: &str| Address::parse("app", "prod", k).expect("address");
    for (k, v) in [
        ("a", r#"{"x":1,"y":[1,2]}"#),
        ("b", "2"),
        ("n.c", r#"{"x":3}"#),
    ] {
        let put = Command::Put {
            address: at(k),
            value: v.into(),
            expect_version: None,
        };
        core.apply(put).expect("seed");
    }
    let schema = br#"{"schema":{"type":"object","properties":{"x":{"type":"integer"}}}}"#;
    let (command, _, _) = put_schema_command("app", "prod", "n.", schema).expect("schema");
    core.apply(command).expect("seed schema");

    // Requests separated by 0xFF; the first byte of each says which body it is.
    for request in data.split(|b| *b == 0xFF) {
        let Some((&kind, body)) = request.split_first() else {
            continue;
        };
        let key = ["a", "b", "n.c", "new"][(kind >> 4) as usize % 4];
        let built = match kind % 4 {
            0 => put_command(at(key), body, MAX_VALUE_BYTES),
            1 => patch_command(at(key), body, MAX_VALUE_BYTES),
            2 => txn_body_command(body, MAX_VALUE_BYTES).map(|t| (t.command, t.reason)),
            _ => put_schema_command("app", "prod", "n.", body).map(|(c, r, _)| (c, r)),
        };
        let Ok((command, reason)) = built else {
            continue;
        };
        let proposal = Proposal {
            command,
            meta: WriteMeta {
                time_ms: 1,
                actor: "fuzz".into(),
                reason,
                ..Default::default()
            },
        };
        if meridian_origin::admission::check(&proposal, MAX_VALUE_BYTES).is_err() {
            continue;
        }
        let before = (core.state().revision(), core.state().digest());
        match core.apply(proposal.command) {
            Ok((_, Some(delta))) => {
                assert_eq!(delta.delta.revision, before.0.next());
                assert_eq!(core.state().revision(), delta.delta.revision);
                assert_eq!(core.state().digest(), delta.head.head.digest);
                trusted
                    .verify_delta(&delta)
                    .expect("a signed delta verifies");
            }
            Ok((_, None)) | Err(_) => {
                assert_eq!((core.state().revision(), core.state().digest()), before);
            }
        }
    }
});
