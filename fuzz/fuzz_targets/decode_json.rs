//! Bytes as JSON frames: `Codec::decode` takes anything whose first non-blank byte is `{` as
//! JSON, so the input is given that start. A frame that decodes encodes again as JSON and
//! decodes to the same envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use syncline_core::protocol::Codec;

fuzz_target!(|data: &[u8]| {
    let frame: std::borrow::Cow<'_, [u8]> = if Codec::detect(data) == Codec::Json {
        data.into()
    } else {
        [b"{", data].concat().into()
    };
    match Codec::decode(&frame) {
        Ok(env) => {
            let again = Codec::Json
                .encode(&env)
                .expect("a decoded JSON frame encodes");
            let back = Codec::decode(&again).expect("its re-encoding decodes");
            assert_eq!(back, env);
        }
        Err(e) => assert!(!e.error.message().is_empty()),
    }
});
