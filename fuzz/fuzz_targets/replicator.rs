//! The edge's replicator fed any sequence of frames on any link, in any order, duplicated,
//! corrupted, cut short: real signed deltas and snapshots of an origin core (the material a
//! well-behaved origin would send) mixed with frames decoded from raw bytes. Whatever comes,
//! it never panics, never holds a revision the origin did not sign, and the state it holds at
//! revision R always has the digest the origin signed for R; snapshot reassembly included.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use meridian_core::replicator::{LinkId, Replicator, ReplicatorConfig};
use meridian_core::apply::{Command, OriginCore};
use meridian_core::distributor::snapshot_frames;
use meridian_protocol::frame::decode_one;
use meridian_protocol::{Address, Digest, FrameV1, Revision, SignedDelta, Signer};
use meridian_protocol::{SignedHead, TrustedKeys};
use meridian_store::{MemBackend, SignedState};

#[path = "input.rs"]
mod input;
use input::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let signer = Signer::from_bytes(&[7; 32]);
    let mut origin = OriginCore::new(
        SignedState::open(MemBackend::new(), 16).expect("memory state"),
        Signer::from_bytes(&[7; 32]),
    );
    let mut deltas: Vec<SignedDelta> = Vec::new();
    let mut digests: Vec<Digest> = vec![origin.state().digest()];
    let config = ReplicatorConfig {
        origin_count: 1,
        peer_count: 2,
        peer_links: 2,
        max_pending_deltas: 32,
        max_snapshot_entries: 64,
        ..ReplicatorConfig::default()
    };
    let trusted = TrustedKeys::new([signer.verifying_key()]);
    let mut now = Instant::now();
    let state = SignedState::open(MemBackend::new(), 16).expect("memory state");
    let mut rep = Replicator::new(config, trusted, state, now);
    let links = rep.link_count();
    while let Some(op) = input.byte() {
        let link = match input.byte().map_or(0, |b| b as usize % links) {
            0 => LinkId::ORIGIN,
            j => LinkId::peer(j as u16 - 1),
        };
        match op % 12 {
            // The origin commits a write.
            0 | 1 => {
                let key = input.byte().unwrap_or(0) % 8;
                let value = input.byte().unwrap_or(0);
                let command = Command::Put {
                    address: Address::parse("app", "prod", &format!("k{key}")).expect("key"),
                    value: value.to_string().into(),
                    expect_version: None,
                };
                if let Ok((_, Some(delta))) = origin.apply(command) {
                    deltas.push(delta);
                    digests.push(origin.state().digest());
                }
            }
            // A delta the origin signed, any of them.
            2 | 3 => {
                if let Some(d) = pick(&deltas, input.byte()) {
                    rep.handle_frame(now, link, FrameV1::Delta(d.clone()).into());
                }
            }
            // A delta with one byte of its value or digest changed.
            4 => {
                if let Some(d) = pick(&deltas, input.byte()) {
                    let mut d = d.clone();
                    let flip = input.byte().unwrap_or(1);
                    if let Some(c) = d.delta.changes.first_mut() {
                        c.value = Some(format!("{}{flip}", flip ^ 1).into());
                    } else {
                        d.head.head.revision = Revision(d.head.head.revision.0 ^ flip as u64);
                    }
                    rep.handle_frame(now, link, FrameV1::Delta(d).into());
                }
            }
            // The origin's current state as a snapshot, chunked as the input says, with a
            // frame left out, repeated or moved as it says.
            5 => {
                let (head, entries) = origin.state().snapshot();
                if let Some(head) = head {
                    let per_chunk = input.byte().unwrap_or(1) as usize % 5 + 1;
                    let mut frames = snapshot_frames(head, entries, per_chunk, 1 << 20);
                    match input.byte().unwrap_or(0) % 4 {
                        0 if frames.len() > 2 => {
                            let i = input.byte().unwrap_or(1) as usize % frames.len();
                            frames.remove(i);
                        }
                        1 => {
                            let i = input.byte().unwrap_or(0) as usize % frames.len();
                            frames.insert(i, frames[i].clone());
                        }
                        2 if frames.len() > 2 => {
                            let i = input.byte().unwrap_or(0) as usize % frames.len();
                            let f = frames.remove(i);
                            frames.push(f);
                        }
                        _ => {}
                    }
                    for f in frames {
                        rep.handle_frame(now, link, f);
                    }
                }
            }
            // A head, the newest or an old one.
            6 => {
                if let Some(d) = pick(&deltas, input.byte()) {
                    rep.handle_frame(now, link, FrameV1::Head(d.head).into());
                }
            }
            // Whatever the bytes decode to.
            7 => {
                let len = input.byte().unwrap_or(0) as usize;
                let raw = input.bytes(len).to_vec();
                match decode_one(&raw, 64 * 1024) {
                    Ok(frame) => rep.handle_frame(now, link, frame),
                    Err(_) => rep.handle_malformed(now, link),
                }
            }
            8 => {
                rep.flush(now);
            }
            9 => {
                now += Duration::from_millis(input.byte().unwrap_or(0) as u64 * 20);
                rep.handle_timeout(now);
            }
            10 => rep.handle_connected(now, link),
            _ => {
                if input.byte().unwrap_or(0) % 2 == 0 {
                    rep.handle_disconnected(now, link);
                } else {
                    rep.handle_storage(now, !rep.storage_full());
                }
            }
        }
        while rep.poll_output().is_some() {}
        let held = rep.state().revision();
        assert!(
            held.0 as usize <= deltas.len(),
            "holds {held:?} the origin never signed"
        );
        assert_eq!(
            rep.digest(),
            digests[held.0 as usize],
            "the state at {held:?} is not the one the origin signed"
        );
        if let Some(head) = rep.state().head() {
            assert_eq!(head.head.revision, held);
            assert_heads_match(&head, &deltas);
        }
    }
    rep.flush(now);
});

fn pick(deltas: &[SignedDelta], b: Option<u8>) -> Option<&SignedDelta> {
    if deltas.is_empty() {
        return None;
    }
    // Mostly the newest few, sometimes any.
    let b = b.unwrap_or(0) as usize;
    let i = if b < 128 {
        deltas.len().saturating_sub(1 + b % 4)
    } else {
        b % deltas.len()
    };
    deltas.get(i)
}

/// A held head is one the origin signed.
fn assert_heads_match(head: &SignedHead, deltas: &[SignedDelta]) {
    let i = head.head.revision.0 as usize;
    if i == 0 {
        return;
    }
    assert_eq!(Some(head), deltas.get(i - 1).map(|d| &d.head));
}
