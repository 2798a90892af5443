//! Golden-byte tests: the wire encoding of `Frame` is pinned. A change here breaks mixed-version
//! clusters, so it must be a new `Frame` variant, never an edit of an existing one.

use meridian_protocol::frame::{FrameDecoder, encode};
use meridian_protocol::{
    Address, Change, Delta, Digest, Frame, FrameV1, Hash32, Revision, Signer, Version,
};

fn hello() -> Frame {
    Frame::V1(FrameV1::Hello {
        edge_id: "e1".into(),
        region: "us-east".into(),
        revision: Revision(300),
        digest: Digest(Hash32([0xab; 32])),
    })
}

fn delta() -> Frame {
    let signer = Signer::from_bytes(&[1; 32]);
    let delta = Delta {
        revision: Revision(2),
        changes: vec![Change {
            address: Address::parse("pay", "prod", "db.url").unwrap(),
            version: Version(1),
            value: Some("\"x\"".into()),
        }],
    };
    Frame::V1(FrameV1::Delta(
        signer.sign_delta(delta, Digest(Hash32([0x11; 32]))),
    ))
}

#[test]
fn hello_bytes_are_pinned() {
    let bytes = encode(&hello()).unwrap();
    assert_eq!(hex::encode(&bytes), GOLDEN_HELLO);
}

#[test]
fn delta_bytes_are_pinned() {
    let bytes = encode(&delta()).unwrap();
    assert_eq!(hex::encode(&bytes), GOLDEN_DELTA);
}

#[test]
fn heartbeat_and_ack_bytes_are_pinned() {
    let hb = encode(&Frame::V1(FrameV1::Heartbeat {
        revision: Revision(1),
    }))
    .unwrap();
    let ack = encode(&Frame::V1(FrameV1::Ack {
        revision: Revision(128),
    }))
    .unwrap();
    assert_eq!(hex::encode(hb), "00000003000801");
    assert_eq!(hex::encode(ack), "0000000400068001");
    let standby = encode(&Frame::V1(FrameV1::Standby)).unwrap();
    assert_eq!(hex::encode(standby), "00000002000a");
}

#[test]
fn decoder_round_trips_split_input_and_rejects_garbage() {
    let mut bytes = encode(&hello()).unwrap();
    bytes.extend(encode(&delta()).unwrap());
    let mut d = FrameDecoder::new(1 << 20);
    let mut got = Vec::new();
    for chunk in bytes.chunks(7) {
        d.push(chunk);
        while let Some(f) = d.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, vec![hello(), delta()]);
    d.finish().unwrap();

    let mut big = FrameDecoder::new(16);
    big.push(&[0, 0, 1, 0]);
    assert!(matches!(
        big.next_frame(),
        Err(meridian_protocol::FrameError::TooLarge { .. })
    ));

    let mut junk = FrameDecoder::new(1024);
    junk.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    assert!(matches!(
        junk.next_frame(),
        Err(meridian_protocol::FrameError::Malformed(_))
    ));

    let mut cut = FrameDecoder::new(1024);
    cut.push(&encode(&hello()).unwrap()[..10]);
    assert!(cut.next_frame().unwrap().is_none());
    assert!(matches!(
        cut.finish(),
        Err(meridian_protocol::FrameError::Truncated(10))
    ));
}

/// Length 47; `V1` (0), `Hello` (0), "e1", "us-east", varint 300, then the 32 digest bytes.
const GOLDEN_HELLO: &str = "0000002f00000265310775732d65617374ac02abababababababababababababababababababababababababababababababab";
/// `V1`, `Delta`, the signed head (revision 2, digest, delta hash, key id, signature), then
/// the delta itself (revision 2, one change to pay/prod/db.url, version 1, value `"x"`).
const GOLDEN_DELTA: &str = "000000a300020211111111111111111111111111111111111111111111111111111111111111113b458c44155cf2cc54b3b19a173dbbb64db7c3d2792e8a17a2ef1f1262660e0283561adb398fd87f8db772d950f51e5727bab7d14c0943eb16fac024caed54af4fc734bd0acc106c02dcc07124111c8bdc7728fce42fd0179f0d54a40c158ac582f0e4e747601f0a0201037061790470726f640664622e75726c010103227822";
