//! The sync protocol: versioned messages and their two encodings.
//!
//! A transport only moves frames. A frame is either binary (a 16-byte header followed by a
//! postcard body) or a JSON envelope; `docs/protocol.md` specifies both so that another
//! implementation can talk to a syncline node.
//!
//! Binary header (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `SY` |
//! | 2..4 | protocol version (`u16`) |
//! | 4 | kind: 0 request, 1 response, 2 error response, 3 notification |
//! | 5 | message type (see [`MessageType`]) |
//! | 6..8 | reserved, zero |
//! | 8..16 | correlation id (`u64`); a response carries its request's id |

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, WireError};
use crate::filter::Filter;
use crate::job::JobStatus;
use crate::types::{
    Action, Branch, DocumentId, DocumentType, JobId, OpHash, OpId, Operation, Ordinal, ReactorId,
    Scope, StrandHead,
};

mod codec;
mod head;

pub use codec::{Codec, DecodeError};
pub use head::{FrameHead, FrameKind};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes of the binary frame header.
pub const HEADER_LEN: usize = 16;
const MAGIC: &[u8; 2] = b"SY";

/// Opens a session: who we are and what we speak.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The caller's reactor id.
    pub reactor_id: ReactorId,
    /// The highest protocol version the caller speaks.
    pub protocol: u16,
    /// A bearer token, if the remote requires one.
    #[serde(default)]
    pub credentials: Option<String>,
    /// Optional features (none are defined yet).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// Accepts a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The answering reactor's id.
    pub reactor_id: ReactorId,
    /// The session id (HTTP clients send it back in a header).
    pub session: String,
    /// The protocol version both sides use.
    pub protocol: u16,
}

/// Registers a pull listener (seed 004's `registerPullResponderListener`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Register {
    /// Which strands the listener gets.
    pub filter: Filter,
    /// The feed position the caller already has.
    pub since: Ordinal,
}

/// The new listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The listener id to pull with.
    pub listener_id: String,
}

/// Pulls the feed after `cursor` (seed 004's `pullStrands`), optionally carrying a push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pull {
    /// The listener.
    pub listener_id: String,
    /// The last feed position the caller applied.
    pub cursor: Ordinal,
    /// Most operations to return.
    pub limit: u32,
    /// A push piggybacked on the pull (seed 000's optimisation).
    #[serde(default)]
    pub push: Option<Push>,
    /// If nothing is there, how long the responder may hold the pull open waiting for new
    /// operations (a long poll, for links where it cannot poke us); 0 answers at once.
    #[serde(default)]
    pub wait_ms: u32,
}

/// Operations after the cursor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pulled {
    /// The operations, grouped by strand.
    pub strands: Vec<StrandUpdate>,
    /// The feed position these cover; the caller's next cursor.
    pub cursor: Ordinal,
    /// The responder's last ordinal.
    pub head: Ordinal,
    /// Whether more is waiting (pull again at once).
    pub has_more: bool,
    /// The result of a piggybacked push.
    #[serde(default)]
    pub push_result: Option<PushResult>,
    /// Refusals of the caller's operations that the responder learned from other reactors
    /// (each names who refused), passed on towards the operations' origins.
    #[serde(default)]
    pub refused: Vec<Refusal>,
}

/// The outcome of a piggybacked push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushResult {
    /// Applied.
    Ok(Pushed),
    /// Refused or failed.
    Err(WireError),
}

/// Acknowledges that the caller applied the feed up to `cursor` (seed 004's
/// `acknowledgeStrands`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The listener.
    pub listener_id: String,
    /// The applied position.
    pub cursor: Ordinal,
    /// Operations of the pulled range the caller refused (it moved its cursor past them).
    #[serde(default)]
    pub refused: Vec<Refusal>,
}

/// A receiver's permanent verdict on one operation it did not apply: why it refused it
/// (permission, clock drift, hash, size). It travels back to the sender, which records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The refused operation.
    pub id: OpId,
    /// The reason.
    pub error: WireError,
    /// The reactor that refused it, when that is not the one reporting it: a relay passes a
    /// refusal on towards the operation's origin.
    #[serde(default)]
    pub by: Option<ReactorId>,
}

/// The acknowledgement was recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Acked {}

/// Pushes a batch (seed 004's `pushUpdates`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    /// The batch's job id.
    pub job_id: JobId,
    /// The operations, grouped by strand.
    pub strands: Vec<StrandUpdate>,
}

/// The batch was applied durably.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pushed {
    /// The batch's job id.
    pub job_id: JobId,
    /// Always `Applied` in version 1 (failures are error responses).
    pub status: JobStatus,
    /// Operations that were new on the receiver.
    pub applied: u32,
    /// Operations the receiver already had.
    pub duplicates: u32,
    /// The receiver's last ordinal after the commit (its revision).
    pub head: Ordinal,
    /// Operations of the batch the receiver refused, each with its reason; every other one
    /// was applied (or was a duplicate).
    #[serde(default)]
    pub refused: Vec<Refusal>,
}

/// Asks which strands the responder has that the caller may see (discovery).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Directory {
    /// Narrows the answer.
    pub filter: Filter,
}

/// The visible strands with their heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Strands {
    /// Strand heads.
    pub heads: Vec<StrandHead>,
}

/// Tells a listening peer that new operations are there (it pulls).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Poke {
    /// The responder's last ordinal.
    pub head: Ordinal,
}

/// The operations of one strand in a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StrandUpdate {
    /// The document.
    pub document_id: DocumentId,
    /// The scope.
    pub scope: Scope,
    /// The branch.
    pub branch: Branch,
    /// The document type.
    pub document_type: DocumentType,
    /// The operations, in the sender's feed order.
    pub operations: Vec<WireOp>,
}

/// An operation without the strand fields its [`StrandUpdate`] carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireOp {
    /// The op id.
    pub id: OpId,
    /// The action.
    pub action: Action,
    /// The content hash.
    pub hash: OpHash,
    /// The creating reactor.
    pub origin: ReactorId,
}

impl StrandUpdate {
    /// Groups operations into updates, one per run of operations of the same strand and type,
    /// keeping their order.
    pub fn group<'a>(ops: impl IntoIterator<Item = &'a Arc<Operation>>) -> Vec<StrandUpdate> {
        let mut out: Vec<StrandUpdate> = Vec::new();
        for op in ops {
            let wire = WireOp {
                id: op.id,
                action: op.action.clone(),
                hash: op.hash,
                origin: op.origin.clone(),
            };
            match out.last_mut() {
                Some(u)
                    if u.document_id == op.document_id
                        && u.scope == op.scope
                        && u.branch == op.branch
                        && u.document_type == op.document_type =>
                {
                    u.operations.push(wire)
                }
                _ => out.push(StrandUpdate {
                    document_id: op.document_id.clone(),
                    scope: op.scope.clone(),
                    branch: op.branch.clone(),
                    document_type: op.document_type.clone(),
                    operations: vec![wire],
                }),
            }
        }
        out
    }

    /// Total operations in a list of updates.
    pub fn count(updates: &[StrandUpdate]) -> usize {
        updates.iter().map(|u| u.operations.len()).sum()
    }

    /// Rebuilds full operations from updates.
    pub fn into_operations(updates: Vec<StrandUpdate>) -> Vec<Operation> {
        let mut out = Vec::with_capacity(StrandUpdate::count(&updates));
        for u in updates {
            for w in u.operations {
                out.push(Operation {
                    id: w.id,
                    document_id: u.document_id.clone(),
                    document_type: u.document_type.clone(),
                    scope: u.scope.clone(),
                    branch: u.branch.clone(),
                    action: w.action,
                    hash: w.hash,
                    origin: w.origin,
                });
            }
        }
        out
    }
}

/// A request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Open a session.
    Hello(Hello),
    /// Register a pull listener.
    Register(Register),
    /// Pull the feed.
    Pull(Pull),
    /// Acknowledge pulled operations.
    Ack(Ack),
    /// Push a batch.
    Push(Push),
    /// Discover strands.
    Directory(Directory),
}

/// A successful response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// To `Hello`.
    Welcome(Welcome),
    /// To `Register`.
    Registered(Registered),
    /// To `Pull`.
    Pulled(Pulled),
    /// To `Ack`.
    Acked(Acked),
    /// To `Push`.
    Pushed(Pushed),
    /// To `Directory`.
    Strands(Strands),
}

/// A one-way message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notification {
    /// New operations are available.
    Poke(Poke),
}

/// What a frame carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A request.
    Request(Request),
    /// A successful response.
    Response(Response),
    /// A failed response.
    Error(WireError),
    /// A notification.
    Notification(Notification),
}

/// A borrowed [`Body`], so a request can be encoded again for a retry without cloning it.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyRef<'a> {
    /// A request.
    Request(&'a Request),
    /// A successful response.
    Response(&'a Response),
    /// A failed response.
    Error(&'a WireError),
    /// A notification.
    Notification(&'a Notification),
}

impl Body {
    /// Borrows the body.
    pub fn as_ref(&self) -> BodyRef<'_> {
        match self {
            Body::Request(r) => BodyRef::Request(r),
            Body::Response(r) => BodyRef::Response(r),
            Body::Error(e) => BodyRef::Error(e),
            Body::Notification(n) => BodyRef::Notification(n),
        }
    }
}

/// A borrowed [`Envelope`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EnvelopeRef<'a> {
    /// Protocol version.
    pub v: u16,
    /// Correlation id.
    pub id: u64,
    /// The message.
    pub body: BodyRef<'a>,
}

impl Envelope {
    /// Borrows the envelope.
    pub fn as_ref(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            v: self.v,
            id: self.id,
            body: self.body.as_ref(),
        }
    }
}

/// A message with its correlation id and protocol version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version.
    pub v: u16,
    /// Correlation id.
    pub id: u64,
    /// The message.
    pub body: Body,
}

/// The message type byte of the binary header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Hello / Welcome.
    Hello = 1,
    /// Register / Registered.
    Register = 2,
    /// Pull / Pulled.
    Pull = 3,
    /// Ack / Acked.
    Ack = 4,
    /// Push / Pushed.
    Push = 5,
    /// Directory / Strands.
    Directory = 6,
    /// Poke.
    Poke = 7,
    /// An error answer to a frame whose type could not be read.
    Unknown = 0,
}

impl MessageType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => MessageType::Unknown,
            1 => MessageType::Hello,
            2 => MessageType::Register,
            3 => MessageType::Pull,
            4 => MessageType::Ack,
            5 => MessageType::Push,
            6 => MessageType::Directory,
            7 => MessageType::Poke,
            _ => return None,
        })
    }

    /// The HTTP route segment (`/v1/sync/{name}`).
    pub fn route(self) -> &'static str {
        match self {
            MessageType::Hello => "hello",
            MessageType::Register => "register",
            MessageType::Pull => "pull",
            MessageType::Ack => "ack",
            MessageType::Push => "push",
            MessageType::Directory => "directory",
            MessageType::Poke => "poke",
            MessageType::Unknown => "unknown",
        }
    }

    /// The type named by an HTTP route segment.
    pub fn from_route(route: &str) -> Option<Self> {
        [
            MessageType::Hello,
            MessageType::Register,
            MessageType::Pull,
            MessageType::Ack,
            MessageType::Push,
            MessageType::Directory,
        ]
        .into_iter()
        .find(|t| t.route() == route)
    }
}

impl Request {
    /// The message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Request::Hello(_) => MessageType::Hello,
            Request::Register(_) => MessageType::Register,
            Request::Pull(_) => MessageType::Pull,
            Request::Ack(_) => MessageType::Ack,
            Request::Push(_) => MessageType::Push,
            Request::Directory(_) => MessageType::Directory,
        }
    }
}

impl Response {
    /// The message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Response::Welcome(_) => MessageType::Hello,
            Response::Registered(_) => MessageType::Register,
            Response::Pulled(_) => MessageType::Pull,
            Response::Acked(_) => MessageType::Ack,
            Response::Pushed(_) => MessageType::Push,
            Response::Strands(_) => MessageType::Directory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::op_for;

    fn sample_push() -> Envelope {
        let ops: Vec<Arc<Operation>> = (0..5)
            .map(|i| Arc::new(op_for(if i < 3 { "a" } else { "b" }, i)))
            .collect();
        Envelope {
            v: PROTOCOL_VERSION,
            id: 42,
            body: Body::Request(Request::Push(Push {
                job_id: JobId::from_random_bytes([3; 16]),
                strands: StrandUpdate::group(&ops),
            })),
        }
    }

    #[test]
    fn both_codecs_round_trip_and_keep_hashes() {
        for codec in [Codec::Binary, Codec::Json] {
            let env = sample_push();
            let bytes = codec.encode(&env).unwrap();
            assert_eq!(Codec::detect(&bytes), codec);
            let back = Codec::decode(&bytes).unwrap();
            assert_eq!(back, env);
            let Body::Request(Request::Push(p)) = back.body else {
                panic!("not a push")
            };
            assert_eq!(p.strands.len(), 2);
            for op in StrandUpdate::into_operations(p.strands) {
                op.verify().unwrap();
            }
        }
    }

    #[test]
    fn every_message_type_round_trips_in_both_codecs() {
        let ops: Vec<Arc<Operation>> = (0..3).map(|i| Arc::new(op_for("d", i))).collect();
        let push = Push {
            job_id: JobId::from_random_bytes([1; 16]),
            strands: StrandUpdate::group(&ops),
        };
        let pushed = Pushed {
            job_id: push.job_id,
            status: JobStatus::Applied,
            applied: 2,
            duplicates: 1,
            head: Ordinal(9),
            refused: vec![Refusal {
                id: ops[2].id,
                error: WireError {
                    kind: "permission_denied".into(),
                    message: "no".into(),
                },
                by: Some(ReactorId::new("c").unwrap()),
            }],
        };
        let filter = Filter::documents(["a/*"]).with_scopes(["global"]);
        let bodies = vec![
            Body::Request(Request::Hello(Hello {
                reactor_id: ReactorId::new("a").unwrap(),
                protocol: 1,
                credentials: None,
                capabilities: vec![],
            })),
            Body::Request(Request::Hello(Hello {
                reactor_id: ReactorId::new("a").unwrap(),
                protocol: 1,
                credentials: Some("token".into()),
                capabilities: vec!["x".into()],
            })),
            Body::Request(Request::Register(Register {
                filter: filter.clone(),
                since: Ordinal(3),
            })),
            Body::Request(Request::Pull(Pull {
                listener_id: "l".into(),
                cursor: Ordinal(1),
                limit: 10,
                push: Some(push.clone()),
                wait_ms: 0,
            })),
            Body::Request(Request::Pull(Pull {
                listener_id: "l".into(),
                cursor: Ordinal(1),
                limit: 10,
                push: None,
                wait_ms: 2_000,
            })),
            Body::Request(Request::Ack(Ack {
                listener_id: "l".into(),
                cursor: Ordinal(4),
                refused: vec![],
            })),
            Body::Request(Request::Push(push.clone())),
            Body::Request(Request::Directory(Directory { filter })),
            Body::Response(Response::Welcome(Welcome {
                reactor_id: ReactorId::new("b").unwrap(),
                session: "s".into(),
                protocol: 1,
            })),
            Body::Response(Response::Registered(Registered {
                listener_id: "l".into(),
            })),
            Body::Response(Response::Pulled(Pulled {
                strands: push.strands.clone(),
                cursor: Ordinal(7),
                head: Ordinal(9),
                has_more: true,
                push_result: Some(PushResult::Ok(pushed.clone())),
                refused: pushed.refused.clone(),
            })),
            Body::Response(Response::Pulled(Pulled {
                strands: vec![],
                cursor: Ordinal(7),
                head: Ordinal(9),
                has_more: false,
                push_result: Some(PushResult::Err(WireError {
                    kind: "timeout".into(),
                    message: "m".into(),
                })),
                refused: vec![],
            })),
            Body::Response(Response::Acked(Acked {})),
            Body::Response(Response::Pushed(pushed)),
            Body::Response(Response::Strands(Strands { heads: vec![] })),
            Body::Error(WireError {
                kind: "not_found".into(),
                message: "gone".into(),
            }),
            Body::Notification(Notification::Poke(Poke { head: Ordinal(2) })),
        ];
        for codec in [Codec::Binary, Codec::Json] {
            for (i, body) in bodies.iter().enumerate() {
                let env = Envelope {
                    v: PROTOCOL_VERSION,
                    id: i as u64,
                    body: body.clone(),
                };
                let bytes = codec.encode(&env).unwrap();
                let back = Codec::decode(&bytes)
                    .unwrap_or_else(|e| panic!("{codec:?} message {i}: {}", e.error));
                assert_eq!(back, env, "{codec:?} message {i}");
            }
        }
    }

    #[test]
    fn unknown_versions_are_refused_with_the_correlation_id() {
        let mut bytes = Codec::Binary.encode(&sample_push()).unwrap();
        bytes[2] = 9;
        let err = Codec::decode(&bytes).unwrap_err();
        assert_eq!(err.id, Some(42));
        assert!(err.is_request);
        assert_eq!(err.error.kind(), ErrorKind::ProtocolVersion);
        assert!(err.error.message().contains("version 9"), "{}", err.error);
        let json = br#"{"v":3,"id":5,"body":{"request":{"ack":{"listener_id":"x","cursor":1}}}}"#;
        let err = Codec::decode(json).unwrap_err();
        assert_eq!(err.id, Some(5));
        assert_eq!(err.error.kind(), ErrorKind::ProtocolVersion);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let good = Codec::Binary.encode(&sample_push()).unwrap();
        for cut in [0, 3, 15, 16, 17, good.len() / 2, good.len() - 1] {
            let err = Codec::decode(&good[..cut]).unwrap_err();
            assert!(matches!(err.error.kind(), ErrorKind::Malformed), "{cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Codec::decode(&trailing).is_err());
        let mut garbage = good.clone();
        for b in garbage[HEADER_LEN..].iter_mut().step_by(3) {
            *b = 0xff;
        }
        assert!(Codec::decode(&garbage).is_err());
        assert!(Codec::decode(b"{not json").is_err());
        assert!(Codec::decode(b"GET / HTTP/1.1\r\n").is_err());
    }
}
