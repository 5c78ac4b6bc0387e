//! Property tests of the wire decoders (`docs/testing.md`, "Fuzzing"): whatever the bytes,
//! `Codec::decode` returns an envelope or an error with a message and never panics, and every
//! message built from generated values survives both codecs unchanged. The coverage-guided
//! fuzz targets in `fuzz/` explore the same decoders for longer on nightly.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;
use syncline_core::clock::Hlc;
use syncline_core::protocol::{
    Ack, Acked, Body, Codec, Directory, Envelope, HEADER_LEN, Hello, Notification,
    PROTOCOL_VERSION, Poke, Pull, Pulled, Push, PushResult, Pushed, Refusal, Register, Registered,
    Request, Response, StrandUpdate, Strands, Welcome,
};
use syncline_core::testing::op_at;
use syncline_core::types::{
    Action, ActionId, ActionType, Branch, DocumentId, DocumentType, JobId, OpHash, OpId, Operation,
    Ordinal, Payload, ReactorId, Scope, SortKey, StrandHead, StrandId,
};
use syncline_core::{Filter, JobStatus, WireError};

/// Cases per property: enough to find shallow bugs, small enough for a debug build to finish
/// the whole file in a few seconds. `PROPTEST_CASES` overrides it for a longer run.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(CASES),
        // Failures are reported with their minimal input; no files are written next to the test.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decodes and checks the one property every input must have: no panic (the harness catches
/// one and fails the case), and an error that says something.
fn decode_checked(frame: &[u8]) -> Option<Envelope> {
    match Codec::decode(frame) {
        Ok(env) => Some(env),
        Err(e) => {
            assert!(
                !e.error.message().is_empty(),
                "empty error message for {frame:02x?}"
            );
            None
        }
    }
}

/// A decoded envelope encodes again with the codec it was read with and decodes to itself.
/// (JSON could refuse an action input that is not JSON text, but only a binary frame can carry
/// one, and binary encoding refuses nothing.)
fn reencode_checked(frame: &[u8], env: &Envelope) {
    let codec = Codec::detect(frame);
    let again = codec
        .encode(env)
        .unwrap_or_else(|e| panic!("{codec:?} cannot encode what it decoded: {e}"));
    let back = Codec::decode(&again)
        .unwrap_or_else(|e| panic!("{codec:?} re-encoding does not decode: {}", e.error));
    assert_eq!(&back, env, "{codec:?} re-encoding changed the envelope");
}

fn header(kind: u8, ty: u8, id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(b"SY");
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(kind);
    out.push(ty);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&id.to_le_bytes());
    assert_eq!(out.len(), HEADER_LEN);
    out
}

// ---------------------------------------------------------------------------------------------
// Generators of valid values.

fn name() -> impl Strategy<Value = String> {
    // `.` and `..` are not names (ids must not be path segments of that kind).
    "[A-Za-z0-9_.:@-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn doc_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(/[a-z0-9_.-]{1,6}){0,2}".prop_filter("no . or .. segment", |s| {
        s.split('/').all(|g| g != "." && g != "..")
    })
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, backslashes and control characters.
    ".{0,24}"
}

fn reactor_id() -> impl Strategy<Value = ReactorId> {
    name().prop_map(|s| ReactorId::new(s).unwrap())
}

fn ordinal() -> impl Strategy<Value = Ordinal> {
    any::<u64>().prop_map(Ordinal)
}

fn hlc() -> impl Strategy<Value = Hlc> {
    (any::<u64>(), any::<u32>()).prop_map(|(millis, counter)| Hlc { millis, counter })
}

fn op_id() -> impl Strategy<Value = OpId> {
    any::<[u8; 16]>().prop_map(OpId::from_bytes)
}

fn job_id() -> impl Strategy<Value = JobId> {
    any::<[u8; 16]>().prop_map(JobId::from_bytes)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e9f64..1.0e9).prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn filter() -> impl Strategy<Value = Filter> {
    (
        vec("[a-z*/]{1,8}", 0..3),
        vec(name(), 0..2),
        vec(name(), 0..2),
        vec(name(), 0..2),
    )
        .prop_map(|(docs, types, scopes, branches)| {
            Filter::documents(docs)
                .with_document_types(types)
                .with_scopes(scopes)
                .with_branches(branches)
        })
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (name(), text()).prop_map(|(kind, message)| WireError { kind, message })
}

fn refusal() -> impl Strategy<Value = Refusal> {
    (op_id(), wire_error(), proptest::option::of(reactor_id()))
        .prop_map(|(id, error, by)| Refusal { id, error, by })
}

/// A sealed operation with generated strand, action type, input, time and origin.
fn operation() -> impl Strategy<Value = Operation> {
    (
        any::<[u8; 16]>(),
        doc_name(),
        (name(), name(), name(), name()),
        json_value(),
        hlc(),
        name(),
    )
        .prop_map(
            |(id, doc, (ty, scope, branch, action), input, timestamp, origin)| {
                Operation {
                    id: OpId::from_random_bytes(id),
                    document_id: DocumentId::new(doc).unwrap(),
                    document_type: DocumentType::new(ty).unwrap(),
                    scope: Scope::new(scope).unwrap(),
                    branch: Branch::new(branch).unwrap(),
                    action: Action {
                        id: ActionId::from_random_bytes(id),
                        action_type: ActionType::new(action).unwrap(),
                        input: Payload::from_value(&input),
                        timestamp,
                    },
                    hash: OpHash([0; 32]),
                    origin: ReactorId::new(origin).unwrap(),
                }
                .seal()
            },
        )
}

/// A few operations, some from the test helpers (same strand, so they group), some generated.
fn operations() -> impl Strategy<Value = Vec<Arc<Operation>>> {
    let helper = (
        prop_oneof![Just("a"), Just("b"), Just("drive/x")],
        any::<u64>(),
        any::<u64>(),
        name(),
    )
        .prop_map(|(doc, n, millis, origin)| op_at(doc, n, millis, &origin));
    vec(prop_oneof![helper, operation()], 0..5)
        .prop_map(|ops| ops.into_iter().map(Arc::new).collect())
}

fn strands() -> impl Strategy<Value = Vec<StrandUpdate>> {
    operations().prop_map(|ops| StrandUpdate::group(&ops))
}

fn push() -> impl Strategy<Value = Push> {
    (job_id(), strands()).prop_map(|(job_id, strands)| Push { job_id, strands })
}

fn pushed() -> impl Strategy<Value = Pushed> {
    (
        job_id(),
        prop_oneof![
            Just(JobStatus::Unknown),
            Just(JobStatus::TransportPending),
            Just(JobStatus::ExecutionPending),
            Just(JobStatus::Applied),
            Just(JobStatus::Error),
        ],
        any::<u32>(),
        any::<u32>(),
        ordinal(),
        vec(refusal(), 0..3),
    )
        .prop_map(
            |(job_id, status, applied, duplicates, head, refused)| Pushed {
                job_id,
                status,
                applied,
                duplicates,
                head,
                refused,
            },
        )
}

fn strand_head() -> impl Strategy<Value = StrandHead> {
    (
        doc_name(),
        name(),
        name(),
        name(),
        any::<u64>(),
        hlc(),
        op_id(),
        ordinal(),
    )
        .prop_map(
            |(doc, scope, branch, ty, revision, timestamp, op_id, last_ordinal)| StrandHead {
                strand: StrandId::parse(&doc, Some(&scope), Some(&branch)).unwrap(),
                document_type: DocumentType::new(ty).unwrap(),
                revision,
                last: SortKey {
                    timestamp,
                    id: op_id,
                },
                last_ordinal,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            reactor_id(),
            any::<u16>(),
            proptest::option::of(text()),
            vec(text(), 0..3)
        )
            .prop_map(|(reactor_id, protocol, credentials, capabilities)| {
                Request::Hello(Hello {
                    reactor_id,
                    protocol,
                    credentials,
                    capabilities,
                })
            }),
        (filter(), ordinal())
            .prop_map(|(filter, since)| Request::Register(Register { filter, since })),
        (
            text(),
            ordinal(),
            any::<u32>(),
            proptest::option::of(push()),
            any::<u32>()
        )
            .prop_map(|(listener_id, cursor, limit, push, wait_ms)| {
                Request::Pull(Pull {
                    listener_id,
                    cursor,
                    limit,
                    push,
                    wait_ms,
                })
            }),
        (text(), ordinal(), vec(refusal(), 0..3)).prop_map(|(listener_id, cursor, refused)| {
            Request::Ack(Ack {
                listener_id,
                cursor,
                refused,
            })
        }),
        push().prop_map(Request::Push),
        filter().prop_map(|filter| Request::Directory(Directory { filter })),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let push_result = prop_oneof![
        pushed().prop_map(PushResult::Ok),
        wire_error().prop_map(PushResult::Err),
    ];
    prop_oneof![
        (reactor_id(), text(), any::<u16>()).prop_map(|(reactor_id, session, protocol)| {
            Response::Welcome(Welcome {
                reactor_id,
                session,
                protocol,
            })
        }),
        text().prop_map(|listener_id| Response::Registered(Registered { listener_id })),
        (
            strands(),
            ordinal(),
            ordinal(),
            any::<bool>(),
            proptest::option::of(push_result),
            vec(refusal(), 0..3)
        )
            .prop_map(|(strands, cursor, head, has_more, push_result, refused)| {
                Response::Pulled(Pulled {
                    strands,
                    cursor,
                    head,
                    has_more,
                    push_result,
                    refused,
                })
            }),
        Just(Response::Acked(Acked {})),
        pushed().prop_map(Response::Pushed),
        vec(strand_head(), 0..3).prop_map(|heads| Response::Strands(Strands { heads })),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let body = prop_oneof![
        3 => request().prop_map(Body::Request),
        3 => response().prop_map(Body::Response),
        1 => wire_error().prop_map(Body::Error),
        1 => ordinal().prop_map(|head| Body::Notification(Notification::Poke(Poke { head }))),
    ];
    (any::<u64>(), body).prop_map(|(id, body)| Envelope {
        v: PROTOCOL_VERSION,
        id,
        body,
    })
}

/// Tokens a JSON frame is made of, so that generated text gets past the first characters.
fn json_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("{"),
            Just("}"),
            Just("["),
            Just("]"),
            Just(":"),
            Just(","),
            Just("\"v\":2"),
            Just("\"v\":"),
            Just("\"id\":"),
            Just("\"body\":"),
            Just("\"request\""),
            Just("\"response\""),
            Just("\"error\""),
            Just("\"notification\""),
            Just("\"push\""),
            Just("\"pull\""),
            Just("\"hello\""),
            Just("\"strands\""),
            Just("\"operations\""),
            Just("\"input\""),
            Just("\"hash\""),
            Just("null"),
            Just("true"),
            Just("2"),
            Just("-1"),
            Just("1e400"),
            Just("18446744073709551616"),
            Just("\"\\ud800\""),
        ]
        .prop_map(str::to_owned),
        any::<u64>().prop_map(|n| n.to_string()),
        text().prop_map(|s| format!("{s:?}")),
        "[ -~]{0,4}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config())]

    /// (a) Arbitrary bytes never panic; a failure carries a message.
    #[test]
    fn arbitrary_bytes_never_panic(frame in vec(any::<u8>(), 0..512)) {
        if let Some(env) = decode_checked(&frame) {
            reencode_checked(&frame, &env);
        }
    }

    /// (b) A valid header in front of arbitrary bytes, for every kind and message type byte
    /// (the defined ones and the first undefined one), never panics.
    #[test]
    fn valid_header_arbitrary_body_never_panics(
        id in any::<u64>(),
        body in vec(any::<u8>(), 0..384),
        extra_ty in any::<u8>(),
    ) {
        for kind in 0..=4u8 {
            for ty in (0..=8u8).chain([extra_ty]) {
                let mut frame = header(kind, ty, id);
                frame.extend_from_slice(&body);
                match Codec::decode(&frame) {
                    Ok(env) => {
                        prop_assert_eq!(env.id, id);
                        reencode_checked(&frame, &env);
                    }
                    Err(e) => {
                        prop_assert!(!e.error.message().is_empty());
                        // The header was readable, so the id is known for the answer.
                        prop_assert_eq!(e.id, Some(id));
                    }
                }
            }
        }
    }

    /// (b') Valid frames with bytes overwritten, cut or appended never panic: the generated
    /// bodies reach much deeper into the decoders than random bytes do.
    #[test]
    fn damaged_valid_frames_never_panic(
        env in envelope(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        tail in vec(any::<u8>(), 0..8),
    ) {
        for codec in [Codec::Binary, Codec::Json] {
            let good = codec.encode(&env).unwrap();
            let mut frame = good.clone();
            for (at, b) in &edits {
                let i = at.index(frame.len());
                frame[i] = *b;
            }
            if let Some(env) = decode_checked(&frame) {
                reencode_checked(&frame, &env);
            }
            let cut = cut.index(good.len() + 1);
            let _ = decode_checked(&good[..cut]);
            let mut longer = good[..cut].to_vec();
            longer.extend_from_slice(&tail);
            if let Some(env) = decode_checked(&longer) {
                reencode_checked(&longer, &env);
            }
        }
    }

    /// (c) JSON-ish text starting with `{` never panics.
    #[test]
    fn json_ish_text_never_panics(
        tokens in vec(json_token(), 0..48),
        printable in "\\{[ -~]{0,200}",
    ) {
        let frame = format!("{{{}", tokens.concat());
        if let Some(env) = decode_checked(frame.as_bytes()) {
            reencode_checked(frame.as_bytes(), &env);
        }
        if let Some(env) = decode_checked(printable.as_bytes()) {
            reencode_checked(printable.as_bytes(), &env);
        }
    }

    /// (d) Envelopes built from generated values encode with both codecs and decode back equal.
    #[test]
    fn generated_envelopes_round_trip(env in envelope()) {
        for codec in [Codec::Binary, Codec::Json] {
            let bytes = codec.encode(&env).unwrap();
            prop_assert_eq!(Codec::detect(&bytes), codec);
            let back = Codec::decode(&bytes).map_err(|e| {
                TestCaseError::fail(format!("{codec:?}: {}", e.error))
            })?;
            prop_assert_eq!(&back, &env, "{:?}", codec);
            // Hashes survive: every carried operation still verifies.
            let strands = match back.body {
                Body::Request(Request::Push(p)) => p.strands,
                Body::Request(Request::Pull(Pull { push: Some(p), .. })) => p.strands,
                Body::Response(Response::Pulled(p)) => p.strands,
                _ => vec![],
            };
            for op in StrandUpdate::into_operations(strands) {
                prop_assert!(op.verify().is_ok(), "{:?}", op);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: the corners the generators reach only by luck.

#[test]
fn short_and_header_only_frames_are_errors() {
    for len in 0..HEADER_LEN {
        let frame = &header(0, 1, 7)[..len];
        assert!(decode_checked(frame).is_none(), "{len} bytes");
    }
    for kind in 0..=4u8 {
        for ty in 0..=255u8 {
            let _ = decode_checked(&header(kind, ty, 7));
        }
    }
    // A header whose only body is the Acked unit struct is a complete frame.
    assert!(decode_checked(&header(1, 4, 7)).is_some());
}

#[test]
fn huge_length_prefixes_are_errors_not_allocations() {
    // postcard varints for u64::MAX and u32::MAX as sequence and byte-string lengths.
    let huge: &[&[u8]] = &[
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
    ];
    for kind in 0..=3u8 {
        for ty in 0..=7u8 {
            for prefix in huge {
                let mut frame = header(kind, ty, 1);
                frame.extend_from_slice(prefix);
                // Every body but Poke's starts with a length; Poke's is a `u64` ordinal.
                let poke = (kind, ty) == (3, 7);
                assert_eq!(
                    decode_checked(&frame).is_some(),
                    poke,
                    "{kind} {ty} {prefix:02x?}"
                );
                // The same length in the second field (after a one-byte string or zero).
                let mut frame = header(kind, ty, 1);
                frame.push(1);
                frame.push(b'a');
                frame.extend_from_slice(prefix);
                let _ = decode_checked(&frame);
            }
        }
    }
}

#[test]
fn deeply_nested_json_is_an_error() {
    for depth in [64, 200, 10_000] {
        let frame = format!(
            "{{\"v\":2,\"id\":1,\"body\":{}{}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(decode_checked(frame.as_bytes()).is_none(), "depth {depth}");
        let frame = format!(
            "{{\"v\":2,\"id\":1,\"body\":{{\"request\":{{\"push\":{{\"job_id\":\"{}\",\"strands\":[{{\"document_id\":\"d\",\"scope\":\"global\",\"branch\":\"main\",\"document_type\":\"json\",\"operations\":[{{\"action\":{{\"input\":{}{}",
            JobId::from_bytes([1; 16]),
            "[".repeat(depth),
            "]".repeat(depth),
        );
        assert!(
            decode_checked(frame.as_bytes()).is_none(),
            "input depth {depth}"
        );
    }
}
