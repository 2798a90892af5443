//! The replicator driven with a fake clock and no I/O.

use super::*;
use meridian_protocol::{Address, Change, Delta, EntryState, Signer, Version};
use meridian_store::MemBackend;

const ORIGIN_LINK: LinkId = LinkId::ORIGIN;
const PEER_LINK_0: LinkId = LinkId::peer(0);
const PEER_LINK_1: LinkId = LinkId::peer(1);
const ORIGIN_0: UpstreamId = UpstreamId::Origin(0);

fn signer() -> Signer {
    Signer::from_bytes(&[4; 32])
}

/// Signed deltas 1..=n as an origin would produce them.
fn history(n: u64) -> Vec<SignedDelta> {
    let mut origin = meridian_protocol::CacheState::new();
    (1..=n)
        .map(|r| {
            let delta = Delta {
                revision: Revision(r),
                changes: vec![Change {
                    address: Address::parse("a", "p", &format!("k{}", r % 3)).unwrap(),
                    version: Version(r),
                    value: Some(r.to_string().into()),
                }],
            };
            let d = signer().sign_delta(delta.clone(), origin.digest_after(&delta));
            origin.apply_delta(&delta);
            d
        })
        .collect()
}

/// The default tuning, but saying `Hello` the moment a link connects (most tests are
/// about what follows; the hello delay has its own test).
fn config() -> ReplicatorConfig {
    ReplicatorConfig {
        hello_delay_ms: 0,
        ..ReplicatorConfig::default()
    }
}

fn replicator(now: Instant) -> Replicator<MemBackend> {
    let state = SignedState::open(MemBackend::new(), 100).unwrap();
    Replicator::new(
        config(),
        TrustedKeys::new([signer().verifying_key()]),
        state,
        now,
    )
}

/// A replicator with an empty store, `peer_count` peers and `peer_links` peer links.
fn with_peers(now: Instant, peer_count: usize, peer_links: usize) -> Replicator<MemBackend> {
    let state = SignedState::open(MemBackend::new(), 100).unwrap();
    let config = ReplicatorConfig {
        peer_count,
        peer_links,
        ..config()
    };
    Replicator::new(
        config,
        TrustedKeys::new([signer().verifying_key()]),
        state,
        now,
    )
}

/// Three peers over `peer_links` links, no origin, and peer link 1 has just relayed
/// `delta`.
fn relaying(now: Instant, peer_links: usize, delta: &SignedDelta) -> Replicator<MemBackend> {
    let mut r = with_peers(now, 3, peer_links);
    r.handle_timeout(now);
    r.handle_connected(now, PEER_LINK_0);
    r.handle_frame(now, PEER_LINK_0, FrameV1::Delta(delta.clone()).into());
    r.flush(now);
    outputs(&mut r);
    r
}

/// Asserts that `out` asks `link` for everything after `from`.
fn assert_needs(out: &[Output], link: LinkId, from: Revision) {
    let frame = FrameV1::Need { from }.into();
    assert!(out.contains(&Output::Send { link, frame }), "{out:?}");
}

/// Asserts that `out` dials `upstream` for `link`.
fn assert_dials(out: &[Output], link: LinkId, upstream: UpstreamId) {
    assert!(out.contains(&Output::Connect { link, upstream }), "{out:?}");
}

/// Whether the pending outputs dial anything (heartbeats and the like are dropped).
fn dials(r: &mut Replicator<MemBackend>) -> bool {
    outputs(r)
        .iter()
        .any(|o| matches!(o, Output::Connect { .. }))
}

fn outputs(r: &mut Replicator<MemBackend>) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn connected(now: Instant) -> Replicator<MemBackend> {
    let mut r = replicator(now);
    r.handle_timeout(now);
    assert_eq!(
        outputs(&mut r),
        vec![Output::Connect {
            link: ORIGIN_LINK,
            upstream: ORIGIN_0
        }]
    );
    r.handle_connected(now, ORIGIN_LINK);
    let out = outputs(&mut r);
    assert!(matches!(
        &out[..],
        [Output::Send {
            link: ORIGIN_LINK,
            frame: Frame::V1(FrameV1::Hello {
                revision: Revision(0),
                ..
            })
        }]
    ));
    r
}

#[test]
fn staleness_counts_from_what_is_published_not_from_heads_merely_heard() {
    let t0 = Instant::now();
    let d = history(3);
    let mut r = connected(t0);
    assert_eq!(r.current_as_of(), None);
    // A head newer than anything published is heard: the edge is not fresh for it.
    let t1 = t0 + Duration::from_millis(100);
    r.handle_frame(t1, ORIGIN_LINK, FrameV1::Head(d[2].head).into());
    r.flush(t1);
    assert_eq!(r.current_as_of(), None, "heard of 3, holds 0");
    // Deltas 1 and 2 are applied and published: still behind the head heard.
    let t2 = t1 + Duration::from_millis(100);
    for delta in &d[..2] {
        r.handle_frame(t2, ORIGIN_LINK, FrameV1::Delta(delta.clone()).into());
    }
    r.flush(t2);
    assert_eq!(r.current_as_of(), None, "holds 2 of 3");
    // Delta 3 applied but not yet published: still not fresh.
    let t3 = t2 + Duration::from_millis(100);
    r.handle_frame(t3, ORIGIN_LINK, FrameV1::Delta(d[2].clone()).into());
    assert_eq!(r.current_as_of(), None, "applied but not published");
    // Published: current as of the moment the newest head was last heard (with delta 3,
    // at t3), not from the flush.
    r.flush(t3 + Duration::from_millis(50));
    assert_eq!(r.current_as_of(), Some(t3));
    // The same head heard again later confirms it.
    let t4 = t3 + Duration::from_millis(100);
    r.handle_frame(t4, ORIGIN_LINK, FrameV1::Head(d[2].head).into());
    assert_eq!(r.current_as_of(), Some(t4));
}

#[test]
fn out_of_order_deltas_are_buffered_then_applied_in_order_and_acked_after_flush() {
    let now = Instant::now();
    let mut r = connected(now);
    let h = history(5);
    for i in [4, 2, 3, 1, 0, 0] {
        r.handle_frame(now, ORIGIN_LINK, FrameV1::Delta(h[i].clone()).into());
    }
    assert_eq!(r.state().revision(), Revision(5));
    assert_eq!(r.stats().deltas_applied, 5);
    assert_eq!(r.stats().duplicates, 1);
    assert!(
        outputs(&mut r).is_empty(),
        "no ack before the revisions are durable"
    );
    assert_eq!(r.flush(now), Revision(5));
    assert_eq!(
        outputs(&mut r),
        vec![Output::Send {
            link: ORIGIN_LINK,
            frame: FrameV1::Ack {
                revision: Revision(5)
            }
            .into()
        }]
    );
    assert_eq!(r.state().digest(), h[4].head.head.digest);
}

#[test]
fn a_full_disk_applies_and_asks_nothing_and_room_asks_for_what_came_meanwhile() {
    let now = Instant::now();
    let mut r = connected(now);
    let h = history(3);
    r.handle_frame(now, ORIGIN_LINK, FrameV1::Delta(h[0].clone()).into());
    r.flush(now);
    outputs(&mut r);
    r.handle_storage(now, true);
    assert!(r.storage_full());
    r.handle_frame(now, ORIGIN_LINK, FrameV1::Delta(h[1].clone()).into());
    r.handle_frame(now, ORIGIN_LINK, FrameV1::Delta(h[2].clone()).into());
    assert_eq!(r.state().revision(), Revision(1), "nothing applied");
    assert_eq!(r.stats().dropped_disk_full, 2);
    // Heads are still heard: the edge knows it is behind.
    r.handle_frame(now, ORIGIN_LINK, FrameV1::Head(h[2].head).into());
    assert_eq!(r.newest_known(), Revision(3));
    assert_eq!(r.flush(now), Revision(1));
    // No stall re-asks while full (past the stall timeout, within the silence timeout):
    // what arrives would only be dropped.
    let later = now + Duration::from_millis(1_200);
    r.handle_timeout(later);
    let out = outputs(&mut r);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Send {
                frame: Frame::V1(FrameV1::Need { .. }),
                ..
            }
        )),
        "{out:?}"
    );
    r.handle_storage(later, false);
    assert_needs(&outputs(&mut r), ORIGIN_LINK, Revision(1));
    r.handle_frame(later, ORIGIN_LINK, FrameV1::Delta(h[1].clone()).into());
    r.handle_frame(later, ORIGIN_LINK, FrameV1::Delta(h[2].clone()).into());
    assert_eq!(r.flush(later), Revision(3));
}

#[test]
fn a_stall_behind_a_known_head_asks_again() {
    let now = Instant::now();
    let mut r = connected(now);
    let h = history(3);
    r.handle_frame(now, ORIGIN_LINK, FrameV1::Delta(h[0].clone()).into());
    r.handle_frame(now, ORIGIN_LINK, FrameV1::Head(h[2].head).into());
    assert_eq!(r.newest_known(), Revision(3));
    let due = r.poll_timeout().unwrap();
    assert!(due <= now + Duration::from_millis(1_000));
    let later = now + Duration::from_millis(1_000);
    r.handle_timeout(later);
    let out = outputs(&mut r);
    assert_needs(&out, ORIGIN_LINK, Revision(1));
    assert!(r.lag(later) >= Duration::from_millis(1_000));
}

#[test]
fn an_origin_connection_that_never_answers_gets_a_fresh_dial_beside_it() {
    let t0 = Instant::now();
    let mut r = connected(t0);
    let timeout = Duration::from_millis(ReplicatorConfig::default().connect_timeout_ms);
    assert!(r.poll_timeout().unwrap() <= t0 + timeout);
    r.handle_timeout(t0 + timeout - Duration::from_millis(1));
    assert!(!dials(&mut r), "too early");
    // Silent for the connect timeout: a second dial, the connection stays up.
    r.handle_timeout(t0 + timeout);
    let out = outputs(&mut r);
    assert_eq!(
        out,
        vec![Output::Connect {
            link: ORIGIN_LINK,
            upstream: ORIGIN_0
        }]
    );
    assert!(r.is_connected());
    r.handle_timeout(t0 + timeout + Duration::from_millis(100));
    assert!(
        outputs(&mut r).is_empty(),
        "one fresh dial per silent connection"
    );
    // The old connection answers first: the dial is abandoned, the link is kept.
    let h = history(1);
    let at = t0 + timeout + Duration::from_millis(200);
    r.handle_frame(at, ORIGIN_LINK, FrameV1::Head(h[0].head).into());
    assert!(outputs(&mut r).contains(&Output::AbandonDials { link: ORIGIN_LINK }));
    // An origin link that answered is never probed again, whatever the silence.
    r.handle_timeout(at + Duration::from_millis(1_400));
    let out = outputs(&mut r);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Connect { .. })),
        "{out:?}"
    );
}

#[test]
fn a_fresh_dial_that_completes_first_replaces_the_silent_connection() {
    let t0 = Instant::now();
    let mut r = connected(t0);
    let timeout = Duration::from_millis(ReplicatorConfig::default().connect_timeout_ms);
    r.handle_timeout(t0 + timeout);
    assert_dials(&outputs(&mut r), ORIGIN_LINK, ORIGIN_0);
    // The new dial completes: the link starts over with a Hello on the new connection
    // and waits its own connect timeout before dialing again.
    let t1 = t0 + timeout + Duration::from_millis(300);
    r.handle_connected(t1, ORIGIN_LINK);
    let out = outputs(&mut r);
    assert!(
        matches!(
            &out[..],
            [Output::Send {
                link: ORIGIN_LINK,
                frame: Frame::V1(FrameV1::Hello { .. })
            }]
        ),
        "{out:?}"
    );
    r.handle_timeout(t1 + timeout - Duration::from_millis(1));
    assert!(!dials(&mut r));
    r.handle_timeout(t1 + timeout);
    assert_dials(&outputs(&mut r), ORIGIN_LINK, ORIGIN_0);
}

#[test]
fn silence_drops_the_link_and_reconnects_with_bounded_backoff() {
    let t0 = Instant::now();
    let mut r = connected(t0);
    let t1 = t0 + Duration::from_millis(3_000);
    r.handle_timeout(t1);
    assert!(outputs(&mut r).contains(&Output::Disconnect { link: ORIGIN_LINK }));
    assert!(!r.is_connected());
    // Backoff doubles from 50 ms to the 2 s cap across failed dials.
    let mut now = t1;
    let mut delays = Vec::new();
    for _ in 0..8 {
        let at = r.poll_timeout().unwrap();
        delays.push(at.duration_since(now).as_millis());
        now = at;
        r.handle_timeout(now);
        assert!(matches!(outputs(&mut r)[..], [Output::Connect { .. }]));
        r.handle_disconnected(now, ORIGIN_LINK);
    }
    assert_eq!(delays, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
    r.handle_connected(now, ORIGIN_LINK);
    r.handle_disconnected(now, ORIGIN_LINK);
    assert_eq!(
        r.poll_timeout().unwrap().duration_since(now).as_millis(),
        50,
        "reset on success"
    );
}

#[test]
fn hello_waits_out_the_hello_delay_and_nothing_goes_before_it() {
    let t0 = Instant::now();
    let state = SignedState::open(MemBackend::new(), 100).unwrap();
    let mut r = Replicator::new(
        ReplicatorConfig::default(),
        TrustedKeys::new([signer().verifying_key()]),
        state,
        t0,
    );
    r.handle_timeout(t0);
    assert_dials(&outputs(&mut r), ORIGIN_LINK, ORIGIN_0);
    r.handle_connected(t0, ORIGIN_LINK);
    // Nothing leaves before the delay: a Hello sent now could overtake the handshake's
    // last flight and be dropped by the upstream.
    assert!(outputs(&mut r).is_empty());
    assert!(!r.link_connected(ORIGIN_LINK));
    let delay = Duration::from_millis(ReplicatorConfig::default().hello_delay_ms);
    assert_eq!(r.poll_timeout(), Some(t0 + delay));
    r.handle_timeout(t0 + delay / 2);
    assert!(outputs(&mut r).is_empty());
    r.handle_timeout(t0 + delay);
    let out = outputs(&mut r);
    assert!(
        matches!(
            &out[..],
            [Output::Send {
                link: ORIGIN_LINK,
                frame: Frame::V1(FrameV1::Hello { .. })
            }]
        ),
        "{out:?}"
    );
    assert!(r.link_connected(ORIGIN_LINK));

    // An upstream that speaks first settles the link at once: Hello goes before anything
    // the frame causes.
    let mut r = replicator(t0);
    r.config.hello_delay_ms = 50;
    r.handle_timeout(t0);
    outputs(&mut r);
    r.handle_connected(t0, ORIGIN_LINK);
    let head = history(1)[0].head;
    r.handle_frame(t0, ORIGIN_LINK, FrameV1::Head(head).into());
    let out = outputs(&mut r);
    assert!(
        matches!(
            out.first(),
            Some(Output::Send {
                link: ORIGIN_LINK,
                frame: Frame::V1(FrameV1::Hello { .. })
            })
        ),
        "{out:?}"
    );
    assert!(r.link_connected(ORIGIN_LINK));
}

#[test]
fn heartbeats_go_out_on_schedule() {
    let now = Instant::now();
    let mut r = connected(now);
    let due = r.poll_timeout().unwrap();
    assert_eq!(due, now + Duration::from_millis(500));
    r.handle_frame(
        due,
        ORIGIN_LINK,
        FrameV1::Heartbeat {
            revision: Revision(0),
        }
        .into(),
    );
    r.handle_timeout(due);
    // On the origin link, a drift report goes with each heartbeat.
    assert_eq!(
        outputs(&mut r),
        vec![
            Output::Send {
                link: ORIGIN_LINK,
                frame: FrameV1::Heartbeat {
                    revision: Revision(0)
                }
                .into()
            },
            Output::Send {
                link: ORIGIN_LINK,
                frame: FrameV1::Report {
                    revision: Revision(0),
                    digest: r.digest(),
                    lag_ms: 0,
                }
                .into()
            }
        ]
    );
}

/// The entries of the state `h` leads to.
fn entries_after(h: &[SignedDelta]) -> Vec<(Address, EntryState)> {
    let mut full = meridian_protocol::CacheState::new();
    for d in h {
        full.apply_delta(&d.delta);
    }
    full.iter().map(|(a, e)| (a, e.clone())).collect()
}

#[test]
fn a_snapshot_arriving_for_longer_than_the_stall_timeout_is_not_asked_for_again() {
    let start = Instant::now();
    let mut r = connected(start);
    let h = history(4);
    let entries = entries_after(&h);
    r.handle_frame(
        start,
        ORIGIN_LINK,
        FrameV1::SnapshotBegin {
            head: h[3].head,
            entries: entries.len() as u64,
        }
        .into(),
    );
    outputs(&mut r);
    // One chunk every 600 ms, for three stall timeouts (1 s) in all; heartbeats from the
    // origin keep the link from going silent.
    let mut now = start;
    for (seq, entry) in entries.iter().enumerate() {
        now += Duration::from_millis(600);
        r.handle_frame(now, ORIGIN_LINK, FrameV1::Head(h[3].head).into());
        r.handle_timeout(now);
        r.handle_frame(
            now,
            ORIGIN_LINK,
            FrameV1::SnapshotChunk {
                seq: seq as u32,
                entries: vec![entry.clone()],
            }
            .into(),
        );
        let out = outputs(&mut r);
        assert!(
            !out.iter().any(|o| matches!(
                o,
                Output::Send {
                    frame: Frame::V1(FrameV1::Need { .. }),
                    ..
                }
            )),
            "asked again while chunks arrive: {out:?}"
        );
    }
    r.handle_frame(
        now,
        ORIGIN_LINK,
        FrameV1::SnapshotEnd {
            chunks: entries.len() as u32,
        }
        .into(),
    );
    assert_eq!(r.state().revision(), Revision(4));
    assert_eq!(r.stats().snapshots_installed, 1);
}

#[test]
fn a_snapshot_with_a_missing_chunk_is_refused() {
    let now = Instant::now();
    let mut r = connected(now);
    let h = history(4);
    let entries = entries_after(&h);
    r.handle_frame(
        now,
        ORIGIN_LINK,
        FrameV1::SnapshotBegin {
            head: h[3].head,
            entries: entries.len() as u64,
        }
        .into(),
    );
    r.handle_frame(
        now,
        ORIGIN_LINK,
        FrameV1::SnapshotChunk {
            seq: 1,
            entries: entries.clone(),
        }
        .into(),
    );
    r.handle_frame(now, ORIGIN_LINK, FrameV1::SnapshotEnd { chunks: 1 }.into());
    assert_eq!(r.state().revision(), Revision(0));
    assert!(r.stats().rejected_unexpected >= 1);
    r.handle_frame(
        now,
        ORIGIN_LINK,
        FrameV1::SnapshotBegin {
            head: h[3].head,
            entries: entries.len() as u64,
        }
        .into(),
    );
    r.handle_frame(
        now,
        ORIGIN_LINK,
        FrameV1::SnapshotChunk { seq: 0, entries }.into(),
    );
    r.handle_frame(now, ORIGIN_LINK, FrameV1::SnapshotEnd { chunks: 1 }.into());
    assert_eq!(r.state().revision(), Revision(4));
    assert_eq!(r.stats().snapshots_installed, 1);
}

#[test]
fn a_snapshot_larger_than_its_byte_bound_is_dropped_while_it_arrives() {
    let now = Instant::now();
    let state = SignedState::open(MemBackend::new(), 100).unwrap();
    let mut r = Replicator::new(
        ReplicatorConfig {
            max_snapshot_bytes: 8,
            ..config()
        },
        TrustedKeys::new([signer().verifying_key()]),
        state,
        now,
    );
    r.handle_timeout(now);
    r.handle_connected(now, ORIGIN_LINK);
    outputs(&mut r);
    let h = history(4);
    let entries = entries_after(&h);
    assert!(entries.len() > 1);
    let begin = FrameV1::SnapshotBegin {
        head: h[3].head,
        entries: entries.len() as u64,
    };
    r.handle_frame(now, ORIGIN_LINK, begin.into());
    r.handle_frame(
        now,
        ORIGIN_LINK,
        FrameV1::SnapshotChunk { seq: 0, entries }.into(),
    );
    r.handle_frame(now, ORIGIN_LINK, FrameV1::SnapshotEnd { chunks: 1 }.into());
    assert_eq!(r.state().revision(), Revision(0), "nothing installed");
    assert_eq!(r.stats().snapshots_installed, 0);
    assert!(r.stats().rejected_unexpected >= 1);
}

#[test]
fn the_peer_link_stays_warm_switches_over_with_need_and_leaves_stale_peers() {
    let now = Instant::now();
    let mut r = with_peers(now, 3, 1);
    r.handle_timeout(now);
    // Both the origin and the first peer are dialed at once.
    let out = outputs(&mut r);
    assert_dials(&out, ORIGIN_LINK, ORIGIN_0);
    assert_dials(&out, PEER_LINK_0, UpstreamId::Peer(0));
    // A peer connected while the origin link has not answered yet is left delivering;
    // once the origin answers, the peer is told to stand by: heads only, no deltas.
    r.handle_connected(now, ORIGIN_LINK);
    r.handle_connected(now, PEER_LINK_0);
    let standby = Output::Send {
        link: PEER_LINK_0,
        frame: FrameV1::Standby.into(),
    };
    assert!(!outputs(&mut r).contains(&standby));
    let hb = FrameV1::Heartbeat {
        revision: Revision(0),
    };
    r.handle_frame(now, ORIGIN_LINK, hb.clone().into());
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert!(out.contains(&standby), "{out:?}");
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert!(!out.contains(&standby), "said once: {out:?}");
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Disconnect { link: PEER_LINK_0 }
                | Output::Connect {
                    link: PEER_LINK_0,
                    ..
                }
        )),
        "the warm link is kept: {out:?}"
    );

    // The origin link drops: the peer is asked to deliver, without dialing anything.
    r.handle_disconnected(now, ORIGIN_LINK);
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert_needs(&out, PEER_LINK_0, Revision(0));

    // The peer says it has not heard the origin for 5 s: move to the next peer.
    r.handle_frame(
        now,
        PEER_LINK_0,
        FrameV1::Freshness {
            staleness_ms: 5_000,
            holds: Revision(0),
        }
        .into(),
    );
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert!(
        out.contains(&Output::Disconnect { link: PEER_LINK_0 }),
        "{out:?}"
    );
    assert_dials(&out, PEER_LINK_0, UpstreamId::Peer(1));

    // That peer's link then goes silent and drops; its old report must not condemn the
    // next peer the moment it connects.
    r.handle_connected(now, PEER_LINK_0);
    r.handle_frame(
        now,
        PEER_LINK_0,
        FrameV1::Freshness {
            staleness_ms: 1_400,
            holds: Revision(0),
        }
        .into(),
    );
    r.handle_disconnected(now, PEER_LINK_0);
    let later = now + Duration::from_millis(200);
    r.handle_timeout(later);
    outputs(&mut r);
    r.handle_connected(later, PEER_LINK_0);
    r.handle_timeout(later);
    let out = outputs(&mut r);
    assert!(
        !out.contains(&Output::Disconnect { link: PEER_LINK_0 }),
        "{out:?}"
    );

    // A fresh peer relays a delta; when the origin comes back the peer stands by again.
    r.handle_connected(now, PEER_LINK_0);
    let out = outputs(&mut r);
    assert!(!out.contains(&standby), "origin is down: {out:?}");
    r.handle_frame(
        now,
        PEER_LINK_0,
        FrameV1::Freshness {
            staleness_ms: 20,
            holds: Revision(1),
        }
        .into(),
    );
    r.handle_frame(
        now,
        PEER_LINK_0,
        FrameV1::Delta(history(1)[0].clone()).into(),
    );
    assert_eq!(r.state().revision(), Revision(1));
    outputs(&mut r);
    r.handle_connected(now, ORIGIN_LINK);
    r.handle_frame(now, ORIGIN_LINK, hb.into());
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert!(out.contains(&standby), "{out:?}");
    assert!(
        !out.contains(&Output::Disconnect { link: PEER_LINK_0 }),
        "{out:?}"
    );
}

#[test]
fn confirmations_relayed_by_peers_age_with_the_peers_own_knowledge() {
    // Edges that have all lost the origin keep sending one another the same heads; those
    // must not keep any of them fresh (strict namespaces would never refuse).
    let t0 = Instant::now();
    let mut r = with_peers(t0, 3, 1);
    r.handle_timeout(t0);
    r.handle_connected(t0, PEER_LINK_0);
    let d = history(1);
    // A peer that last heard the origin 5 s before it reported.
    let stale = FrameV1::Freshness {
        staleness_ms: 5_000,
        holds: Revision(1),
    };
    r.handle_frame(t0, PEER_LINK_0, stale.into());
    r.handle_frame(t0, PEER_LINK_0, FrameV1::Delta(d[0].clone()).into());
    r.flush(t0);
    assert_eq!(r.state().revision(), Revision(1));
    let t1 = t0 + Duration::from_secs(10);
    r.handle_frame(t1, PEER_LINK_0, FrameV1::Head(d[0].head).into());
    r.handle_frame(
        t1,
        PEER_LINK_0,
        FrameV1::Freshness {
            staleness_ms: 15_000,
            holds: Revision(1),
        }
        .into(),
    );
    let as_of = r.current_as_of().expect("confirmed as of some moment");
    assert!(
        as_of <= t0,
        "no fresher than the peer knew: {:?}",
        as_of - t0
    );
    // A peer that is current confirms it as of its own report.
    let t2 = t1 + Duration::from_secs(1);
    r.handle_frame(
        t2,
        PEER_LINK_0,
        FrameV1::Freshness {
            staleness_ms: 100,
            holds: Revision(1),
        }
        .into(),
    );
    assert_eq!(r.current_as_of(), Some(t2 - Duration::from_millis(100)));
}

#[test]
fn an_origin_link_that_goes_quiet_wakes_the_standby_peers_until_it_speaks_again() {
    // A one-way partition: the origin connection stays up (not yet silent long enough to
    // drop) but its heads and deltas stop, and no newer head is known to start the stall
    // timer. The standby peer must be asked to deliver within the origin quiet time.
    let now = Instant::now();
    let mut r = with_peers(now, 3, 1);
    r.handle_timeout(now);
    r.handle_connected(now, ORIGIN_LINK);
    r.handle_connected(now, PEER_LINK_0);
    let deltas = history(2);
    r.handle_frame(now, ORIGIN_LINK, FrameV1::Delta(deltas[0].clone()).into());
    r.flush(now);
    r.handle_timeout(now);
    let standby = Output::Send {
        link: PEER_LINK_0,
        frame: FrameV1::Standby.into(),
    };
    assert!(outputs(&mut r).contains(&standby));
    let quiet = Duration::from_millis(ReplicatorConfig::default().origin_quiet_ms);
    assert_eq!(r.poll_timeout().map(|t| t <= now + quiet), Some(true));

    // Just before the quiet time nothing changes; at it, the peer is asked to deliver.
    let almost = now + quiet - Duration::from_millis(1);
    r.handle_timeout(almost);
    let out = outputs(&mut r);
    assert!(!out.iter().any(|o| matches!(
        o,
        Output::Send {
            link: PEER_LINK_0,
            frame: Frame::V1(FrameV1::Need { .. })
        }
    )));
    r.handle_timeout(now + quiet);
    assert_needs(&outputs(&mut r), PEER_LINK_0, Revision(1));
    // No busy loop once the peers are awake.
    assert!(r.poll_timeout().is_some_and(|t| t > now + quiet));

    // The peer relays revision 2; then the origin speaks again and the peer stands by.
    let later = now + quiet + Duration::from_millis(100);
    r.handle_frame(later, PEER_LINK_0, FrameV1::Delta(deltas[1].clone()).into());
    r.flush(later);
    assert_eq!(r.state().revision(), Revision(2));
    outputs(&mut r);
    r.handle_frame(later, ORIGIN_LINK, FrameV1::Head(deltas[1].head).into());
    r.handle_timeout(later);
    assert!(outputs(&mut r).contains(&standby));
}

#[test]
fn a_relay_that_keeps_delivering_is_kept_whatever_it_reports() {
    let now = Instant::now();
    let mut r = with_peers(now, 3, 2);
    r.handle_timeout(now);
    r.handle_connected(now, PEER_LINK_0);
    outputs(&mut r);
    let h = history(2);
    // Its report trails what it delivers: it claims 2 s staleness and to hold revision 0,
    // yet revision 1 arrives from it.
    r.handle_frame(
        now,
        PEER_LINK_0,
        FrameV1::Freshness {
            staleness_ms: 2_000,
            holds: Revision(0),
        }
        .into(),
    );
    r.handle_frame(now, PEER_LINK_0, FrameV1::Delta(h[0].clone()).into());
    r.flush(now);
    let soon = now + Duration::from_millis(500);
    r.handle_timeout(soon);
    assert!(!outputs(&mut r).contains(&Output::Disconnect { link: PEER_LINK_0 }));
    // Once it has delivered nothing for longer than the limit, it is left.
    let later = now + Duration::from_millis(1_600);
    r.handle_frame(
        later,
        PEER_LINK_0,
        FrameV1::Freshness {
            staleness_ms: 3_000,
            holds: Revision(1),
        }
        .into(),
    );
    r.handle_timeout(later);
    assert!(outputs(&mut r).contains(&Output::Disconnect { link: PEER_LINK_0 }));
}

#[test]
fn two_peer_links_interleave_the_peers_and_both_switch_over() {
    let now = Instant::now();
    let mut r = with_peers(now, 4, 2);
    assert_eq!(r.link_count(), 3);
    r.handle_timeout(now);
    let out = outputs(&mut r);
    for (link, upstream) in [
        (ORIGIN_LINK, ORIGIN_0),
        (PEER_LINK_0, UpstreamId::Peer(0)),
        (PEER_LINK_1, UpstreamId::Peer(1)),
    ] {
        assert!(out.contains(&Output::Connect { link, upstream }), "{out:?}");
    }
    // A failed dial moves each link to its next share of the peers, never the other's.
    r.handle_disconnected(now, PEER_LINK_0);
    r.handle_disconnected(now, PEER_LINK_1);
    let later = now + Duration::from_secs(2);
    r.handle_timeout(later);
    let out = outputs(&mut r);
    for (link, upstream) in [
        (PEER_LINK_0, UpstreamId::Peer(2)),
        (PEER_LINK_1, UpstreamId::Peer(3)),
    ] {
        assert!(out.contains(&Output::Connect { link, upstream }), "{out:?}");
    }
    r.handle_connected(later, ORIGIN_LINK);
    r.handle_frame(
        later,
        ORIGIN_LINK,
        FrameV1::Heartbeat {
            revision: Revision(0),
        }
        .into(),
    );
    r.handle_connected(later, PEER_LINK_0);
    r.handle_connected(later, PEER_LINK_1);
    let out = outputs(&mut r);
    for link in [PEER_LINK_0, PEER_LINK_1] {
        assert!(
            out.contains(&Output::Send {
                link,
                frame: FrameV1::Standby.into()
            }),
            "{out:?}"
        );
    }
    r.handle_disconnected(later, ORIGIN_LINK);
    r.handle_timeout(later);
    let out = outputs(&mut r);
    for link in [PEER_LINK_0, PEER_LINK_1] {
        assert_needs(&out, link, Revision(0));
    }
}

#[test]
fn a_peer_that_dials_us_holding_more_is_dialed_back() {
    let now = Instant::now();
    let mut r = with_peers(now, 3, 2);
    r.handle_timeout(now);
    outputs(&mut r);
    // Nothing newer: no offer.
    r.handle_peer_holds(now, UpstreamId::Peer(4), Revision(0));
    r.handle_timeout(now);
    assert!(outputs(&mut r).is_empty());
    // Peer 4 is outside the rotation (peers 0..=2), yet it is dialed when it offers
    // more than the edge holds, on a link that was still searching.
    r.handle_peer_holds(now, UpstreamId::Peer(4), Revision(2));
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert!(
        out.contains(&Output::Disconnect { link: PEER_LINK_0 }),
        "{out:?}"
    );
    assert_dials(&out, PEER_LINK_0, UpstreamId::Peer(4));
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Connect {
                link: PEER_LINK_1,
                ..
            }
        )),
        "one link is enough: {out:?}"
    );
    // An offer from the peer a link is already on changes nothing.
    r.handle_peer_holds(now, UpstreamId::Peer(4), Revision(3));
    r.handle_timeout(now);
    assert!(outputs(&mut r).is_empty());
}

#[test]
fn offers_leave_a_delivering_origin_or_relay_alone_and_expire() {
    let now = Instant::now();
    let h = history(1);
    // The origin delivers: offers are ignored (standby peers stay standby).
    let mut r = with_peers(now, 3, 2);
    r.handle_timeout(now);
    r.handle_connected(now, ORIGIN_LINK);
    r.handle_frame(
        now,
        ORIGIN_LINK,
        FrameV1::Heartbeat {
            revision: Revision(0),
        }
        .into(),
    );
    outputs(&mut r);
    r.handle_peer_holds(now, UpstreamId::Peer(3), Revision(1));
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Connect {
                upstream: UpstreamId::Peer(3),
                ..
            }
        )),
        "{out:?}"
    );

    // No origin; peer link 0's relay is delivering, so peer link 1 is the one redirected.
    let mut r = relaying(now, 2, &h[0]);
    r.handle_peer_holds(now, UpstreamId::Peer(3), Revision(5));
    r.handle_timeout(now);
    let out = outputs(&mut r);
    assert_dials(&out, PEER_LINK_1, UpstreamId::Peer(3));
    assert!(
        !out.contains(&Output::Disconnect { link: PEER_LINK_0 }),
        "{out:?}"
    );

    // An offer not taken within the staleness limit is dropped.
    let mut r = relaying(now, 1, &h[0]);
    r.handle_peer_holds(now, UpstreamId::Peer(3), Revision(5));
    r.handle_timeout(now);
    assert!(
        !outputs(&mut r)
            .iter()
            .any(|o| matches!(o, Output::Connect { .. }))
    );
    let later = now + Duration::from_millis(1_600);
    r.handle_frame(
        later,
        PEER_LINK_0,
        FrameV1::Heartbeat {
            revision: Revision(1),
        }
        .into(),
    );
    r.handle_timeout(later);
    let out = outputs(&mut r);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Connect {
                upstream: UpstreamId::Peer(3),
                ..
            }
        )),
        "{out:?}"
    );
}

#[test]
fn peer_links_never_dial_the_same_peer_at_once() {
    let now = Instant::now();
    // Three peers over two links: the rotations overlap, so link 1, searching, skips the
    // peer link 2 is connected to.
    let mut r = with_peers(now, 3, 2);
    r.handle_timeout(now);
    outputs(&mut r);
    r.handle_connected(now, PEER_LINK_1);
    let mut at = now;
    let mut dialed = Vec::new();
    for _ in 0..12 {
        at += Duration::from_millis(600);
        let hb = FrameV1::Heartbeat {
            revision: Revision(0),
        };
        r.handle_frame(at, PEER_LINK_1, hb.into());
        r.handle_timeout(at);
        for o in outputs(&mut r) {
            if let Output::Connect {
                link: PEER_LINK_0,
                upstream,
            } = o
            {
                dialed.push(upstream);
            }
        }
    }
    assert_eq!(dialed.len(), 12, "{dialed:?}");
    assert!(
        !dialed.contains(&UpstreamId::Peer(1)),
        "peer link 1 is on peer 1: {dialed:?}"
    );
}
