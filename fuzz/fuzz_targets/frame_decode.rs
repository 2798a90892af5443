//! Bytes from the network become frames only through `FrameDecoder`: whatever arrives, in
//! whatever pieces, it answers frames or an error, never panics, never allocates beyond the
//! frame limit, and a frame it decodes encodes back to what it read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_protocol::FrameDecoder;
use meridian_protocol::frame::decode_one;

/// A small limit, so that the limit paths are reached too.
const MAX_FRAME_BYTES: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte says where to cut the rest into two pushes.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    decoder.push(&rest[..cut]);
    let mut frames = Vec::new();
    let mut failed = false;
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        decoder.push(&rest[cut..]);
        while let Ok(Some(frame)) = decoder.next_frame() {
            frames.push(frame);
        }
    }
    for frame in frames {
        let bytes = postcard::to_allocvec(&frame).expect("a decoded frame encodes");
        assert!(bytes.len() <= MAX_FRAME_BYTES);
    }
    let _ = decode_one(rest, MAX_FRAME_BYTES);
});
