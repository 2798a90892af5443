//! A rogue origin, speaking real QUIC with a valid certificate, feeds a real edge deltas that
//! are forged, tampered, signed by a stranger, truncated or garbage. Each is refused and
//! counted, and the edge keeps serving its last good revision.

mod common;

use std::time::Duration;

use common::*;
use meridian::dev::{REGIONS, edge_config, pki};
use meridian_net::quic::{read_frame, send_uni, server_endpoint};
use meridian_protocol::frame::encode;
use meridian_protocol::{
    Address, Change, Delta, Digest, Frame, FrameDecoder, FrameV1, Hash32, Revision, Signer, Version,
};

const WAIT: Duration = Duration::from_secs(20);

fn delta(revision: u64, value: &str) -> Delta {
    let mut changes = vec![Change {
        address: Address::parse("app", "prod", "flag").unwrap(),
        version: Version(revision),
        value: Some(value.into()),
    }];
    if revision == 1 {
        // Readers without a token may read app/prod (this origin issues no tokens).
        changes.insert(
            0,
            Change {
                address: Address::system("policies", "public").unwrap(),
                version: Version(1),
                value: Some(
                    r#"{"subjects":["anonymous"],"role":"viewer","resources":["app/prod/*"]}"#
                        .into(),
                ),
            },
        );
    }
    Delta {
        revision: Revision(revision),
        changes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_garbage_deltas_are_rejected_and_counted() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path()).unwrap();
    let real = Signer::new(meridian_net::tls::load_signing_key(&pki.signing_key).unwrap());
    let stranger = Signer::from_bytes(&[42; 32]);
    let rogue = server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &pki.origin,
        Default::default(),
    )
    .unwrap();
    let config = edge_config(
        dir.path(),
        &pki,
        REGIONS[0],
        "127.0.0.1:0".parse().unwrap(),
        rogue.local_addr().unwrap(),
    );
    let edge = meridian_edge::start(config).await.unwrap();
    let c = http_anonymous();
    let url = base(edge.http_addr);

    let conn = rogue.accept().await.unwrap().await.unwrap();
    let (_send, mut recv) = conn.accept_bi().await.unwrap();
    let hello = read_frame(&mut recv, &mut FrameDecoder::new(1 << 20))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        hello,
        Frame::V1(FrameV1::Hello {
            revision: Revision(0),
            ..
        })
    ));

    // Revision 1, honestly signed, is applied.
    let mut state = meridian_protocol::CacheState::new();
    let d1 = delta(1, "\"on\"");
    let good1 = real.sign_delta(d1.clone(), state.digest_after(&d1));
    state.apply_delta(&d1);
    send_uni(&conn, &[FrameV1::Delta(good1).into()], 0)
        .await
        .unwrap();
    eventually(WAIT, "revision 1", || async {
        (revision(&c, &url).await == 1).then_some(())
    })
    .await;

    let d2 = delta(2, "\"off\"");
    let honest2 = real.sign_delta(d2.clone(), state.digest_after(&d2));

    let mut bad_signature = honest2.clone();
    let mut sig = bad_signature.head.signature.to_bytes();
    sig[0] ^= 1;
    bad_signature.head.signature = ed25519_dalek::Signature::from_bytes(&sig);
    let wrong_digest = real.sign_delta(d2.clone(), Digest(Hash32([7; 32])));
    let unknown_key = stranger.sign_delta(d2.clone(), state.digest_after(&d2));
    let mut tampered = honest2.clone();
    tampered.delta.changes[0].value = Some("\"evil\"".into());

    for forged in [bad_signature, wrong_digest, unknown_key, tampered] {
        send_uni(&conn, &[FrameV1::Delta(forged).into()], 0)
            .await
            .unwrap();
    }
    let whole = encode(&FrameV1::Delta(honest2.clone()).into()).unwrap();
    let mut garbage = vec![0, 0, 0, 16];
    garbage.extend_from_slice(&[0xff; 16]);
    for bytes in [
        whole[..whole.len() / 2].to_vec(),
        garbage,
        vec![0xff, 0xff, 0xff, 0xff, 1],
    ] {
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.finish().unwrap();
    }

    let stats = eventually(WAIT, "all seven rejections counted", || async {
        let s = edge.shared.stats();
        (s.rejected_total() >= 7).then_some(s)
    })
    .await;
    assert_eq!(stats.rejected_bad_signature, 1);
    assert_eq!(stats.rejected_digest_mismatch, 1);
    assert_eq!(stats.rejected_unknown_key, 1);
    assert_eq!(stats.rejected_delta_mismatch, 1);
    assert_eq!(
        stats.rejected_malformed, 3,
        "truncated, garbage and oversize frames"
    );
    assert_eq!(stats.deltas_applied, 1);

    // Still serving the last good revision.
    let (code, v) = get_json(&c, &format!("{url}/v1/kv/app/prod/flag")).await;
    assert_eq!(
        (code, v["value"].clone(), v["revision"].clone()),
        (200, "on".into(), 1.into())
    );
    let metrics = common::metrics_text(&c, &url).await;
    assert!(
        metrics.contains("meridian_edge_rejected_total"),
        "{metrics}"
    );

    // And the honest revision 2 still goes through afterwards.
    send_uni(&conn, &[FrameV1::Delta(honest2).into()], 0)
        .await
        .unwrap();
    eventually(WAIT, "revision 2", || async {
        (revision(&c, &url).await == 2).then_some(())
    })
    .await;
    let (_, v) = get_json(&c, &format!("{url}/v1/kv/app/prod/flag")).await;
    assert_eq!(v["value"], "off");
    edge.shutdown().await;
}
