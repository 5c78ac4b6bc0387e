//! Binary frame bodies: the first byte picks the kind (high bits) and the message type (low
//! bits), a valid header is put around the rest, and the frame is decoded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline_core::protocol::{Codec, HEADER_LEN, PROTOCOL_VERSION};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    // Kinds 0..=3 are defined, 4 is not; types 0..=7 are defined, 8..=15 are not.
    let kind = (pick >> 4) % 5;
    let ty = pick & 0x0f;
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(b"SY");
    frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    frame.push(kind);
    frame.push(ty);
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&0x5eed_u64.to_le_bytes());
    frame.extend_from_slice(body);
    match Codec::decode(&frame) {
        Ok(env) => {
            assert_eq!(env.id, 0x5eed);
            // Equal as values, not necessarily byte for byte (postcard may accept varints
            // that are not the shortest form).
            let again = Codec::Binary.encode(&env).expect("a decoded frame encodes");
            let back = Codec::decode(&again).expect("its re-encoding decodes");
            assert_eq!(back, env, "binary re-encoding changed the envelope");
        }
        Err(e) => {
            assert_eq!(e.id, Some(0x5eed), "the header was readable");
            assert!(!e.error.message().is_empty());
        }
    }
});
