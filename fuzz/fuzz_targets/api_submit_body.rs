//! The application API's body parsing: `POST /v1/documents/{doc}/actions` bodies
//! (`syncline::api::SubmitBody` and `into_submission`), and remote configurations
//! (`syncline_core::RemoteConfig` and `validate`), from arbitrary bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<syncline::api::SubmitBody>(data) {
        match body.into_submission("fuzz/doc") {
            Ok(s) => assert_eq!(s.strand.document_id.as_str(), "fuzz/doc"),
            Err(e) => assert!(!e.message().is_empty()),
        }
    }
    if let Ok(remote) = serde_json::from_slice::<syncline_core::RemoteConfig>(data) {
        if let Err(e) = remote.validate() {
            assert!(!e.message().is_empty());
        }
    }
});
