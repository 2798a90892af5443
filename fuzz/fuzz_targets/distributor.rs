//! The origin's distributor fed any sequence of frames from any number of edges (Hello, Ack,
//! Need, Report, Standby with any revision, including u64::MAX, and whatever raw bytes
//! decode to), between commits, heartbeats and disconnects. It never panics, every delta
//! stream it sends is a run of consecutive revisions the origin signed, and no connection is
//! sent two snapshots within the snapshot interval.

#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use meridian_core::apply::{Command, OriginCore};
use meridian_core::distributor::{ConnId, Distributor, DistributorConfig, Transmit};
use meridian_protocol::frame::decode_one;
use meridian_protocol::{Address, Digest, Frame, FrameV1, Revision, Signer};
use meridian_store::{MemBackend, SignedState};

#[path = "input.rs"]
mod input;
use input::Input;

/// A revision: small, near the head, or extreme.
fn revision(input: &mut Input<'_>, head: u64) -> Revision {
    let b = input.byte().unwrap_or(0);
    Revision(match b % 4 {
        0 => (b / 4) as u64,
        1 => head.saturating_sub((b / 4) as u64),
        2 => head.saturating_add((b / 4) as u64),
        _ => u64::MAX - (b / 4) as u64,
    })
}

const INTERVAL_MS: u64 = 1_000;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut origin = OriginCore::new(
        SignedState::open(MemBackend::new(), 8).expect("memory state"),
        Signer::from_bytes(&[7; 32]),
    );
    let mut d = Distributor::new(DistributorConfig {
        max_inflight_deltas: 16,
        max_deltas_per_stream: 4,
        snapshot_chunk_entries: 3,
        snapshot_min_interval_ms: INTERVAL_MS,
        ..DistributorConfig::default()
    });
    let start = Instant::now();
    let mut now = start;
    let mut last_snapshot: BTreeMap<ConnId, Instant> = BTreeMap::new();
    while let Some(op) = input.byte() {
        let conn = ConnId::new(input.byte().map_or(0, |b| u64::from(b % 4)));
        let head = origin.state().revision().0;
        match op % 10 {
            0 | 1 => {
                let key = input.byte().unwrap_or(0) % 8;
                let command = Command::Put {
                    address: Address::parse("app", "prod", &format!("k{key}")).expect("key"),
                    value: input.byte().unwrap_or(0).to_string().into(),
                    expect_version: None,
                };
                if origin.apply(command).is_ok() {
                    d.handle_commit(now, origin.state());
                }
            }
            // A connection id reused is a new connection (as a reconnecting edge is): the
            // interval holds per connection.
            2 => {
                d.handle_connect(now, conn);
                last_snapshot.remove(&conn);
            }
            3 => {
                d.handle_disconnect(conn);
                last_snapshot.remove(&conn);
            }
            4 => {
                let revision = revision(&mut input, head);
                let hello = FrameV1::Hello {
                    edge_id: "e".into(),
                    region: "r".into(),
                    revision,
                    digest: Digest::default(),
                };
                d.handle_frame(now, conn, hello.into(), origin.state());
            }
            5 => {
                let revision = revision(&mut input, head);
                d.handle_frame(now, conn, FrameV1::Ack { revision }.into(), origin.state());
            }
            6 => {
                let from = revision(&mut input, head);
                d.handle_frame(now, conn, FrameV1::Need { from }.into(), origin.state());
            }
            7 => {
                let frame: Frame = match input.byte().unwrap_or(0) % 2 {
                    0 => FrameV1::Standby.into(),
                    _ => FrameV1::Report {
                        revision: revision(&mut input, head),
                        digest: Digest::default(),
                        lag_ms: u64::MAX,
                    }
                    .into(),
                };
                d.handle_frame(now, conn, frame, origin.state());
            }
            8 => {
                let len = input.byte().unwrap_or(0) as usize;
                let raw = input.bytes(len).to_vec();
                if let Ok(frame) = decode_one(&raw, 64 * 1024) {
                    d.handle_frame(now, conn, frame, origin.state());
                }
            }
            _ => {
                now += Duration::from_millis(input.byte().unwrap_or(0) as u64 * 10);
                d.handle_timeout(now, origin.state());
            }
        }
        let head = origin.state().revision().0;
        while let Some((conn, t)) = d.poll_transmit() {
            let Transmit::Stream(frames) = t else {
                continue;
            };
            match frames.first() {
                Some(Frame::V1(FrameV1::SnapshotBegin { head: h, .. })) => {
                    assert!(h.head.revision.0 <= head);
                    if let Some(at) = last_snapshot.insert(conn, now) {
                        assert!(
                            now.duration_since(at) >= Duration::from_millis(INTERVAL_MS),
                            "two snapshots to {conn} within the interval"
                        );
                    }
                }
                _ => {
                    let revisions: Vec<u64> = frames
                        .iter()
                        .map(|f| match f {
                            Frame::V1(FrameV1::Delta(d)) => d.delta.revision.0,
                            other => panic!("a delta stream carries {other:?}"),
                        })
                        .collect();
                    assert!(
                        revisions.windows(2).all(|w| w[1] == w[0] + 1),
                        "{revisions:?}"
                    );
                    assert!(revisions.iter().all(|r| (1..=head).contains(r)));
                }
            }
        }
    }
});
