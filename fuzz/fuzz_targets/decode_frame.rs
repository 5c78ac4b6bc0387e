//! `Codec::decode` on arbitrary bytes. A frame that decodes must encode again with the codec it
//! was read with and decode to the same envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline_core::protocol::Codec;

fuzz_target!(|data: &[u8]| {
    match Codec::decode(data) {
        Ok(env) => {
            let codec = Codec::detect(data);
            match codec.encode(&env) {
                Ok(again) => {
                    let back = Codec::decode(&again).unwrap_or_else(|e| {
                        panic!("{codec:?} re-encoding does not decode: {}", e.error)
                    });
                    assert_eq!(back, env, "{codec:?} re-encoding changed the envelope");
                }
                // Neither codec may refuse what it decoded itself (JSON could refuse an action
                // input that is not JSON text, but only a binary frame can carry one).
                Err(e) => panic!("{codec:?} cannot encode what it decoded: {e}"),
            }
        }
        Err(e) => assert!(!e.error.message().is_empty(), "an error without a message"),
    }
});
