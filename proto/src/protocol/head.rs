//! Frame heads: a frame's encoding, kind, message type and id, read without decoding it.

use super::*;

/// What a frame is, without decoding its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A request (answered by a response or an error with the same id).
    Request,
    /// A successful response.
    Response,
    /// A failed response.
    Error,
    /// A one-way message.
    Notification,
}

/// A frame's encoding, kind and correlation id, read from the binary header or the JSON
/// envelope's top level (the message itself is skipped, not decoded). `None` if the frame is
/// neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// The frame's encoding.
    pub codec: Codec,
    /// Request, response, error or notification.
    pub kind: FrameKind,
    /// The message type (`Unknown` for errors; `None` if the frame names none known).
    pub message: Option<MessageType>,
    /// The correlation id.
    pub id: u64,
}

impl FrameHead {
    /// Reads the head of `frame` (see [`FrameHead`]).
    pub fn peek(frame: &[u8]) -> Option<FrameHead> {
        match Codec::detect(frame) {
            Codec::Binary => {
                if frame.len() < HEADER_LEN || &frame[0..2] != MAGIC {
                    return None;
                }
                let kind = match frame[4] {
                    0 => FrameKind::Request,
                    1 => FrameKind::Response,
                    2 => FrameKind::Error,
                    3 => FrameKind::Notification,
                    _ => return None,
                };
                let id = u64::from_le_bytes(frame[8..16].try_into().ok()?);
                Some(FrameHead {
                    codec: Codec::Binary,
                    kind,
                    message: MessageType::from_u8(frame[5]),
                    id,
                })
            }
            Codec::Json => {
                use serde::de::IgnoredAny;
                /// A message's name, its content skipped.
                #[derive(Deserialize)]
                #[serde(rename_all = "snake_case")]
                enum Named {
                    Hello(IgnoredAny),
                    Welcome(IgnoredAny),
                    Register(IgnoredAny),
                    Registered(IgnoredAny),
                    Pull(IgnoredAny),
                    Pulled(IgnoredAny),
                    Ack(IgnoredAny),
                    Acked(IgnoredAny),
                    Push(IgnoredAny),
                    Pushed(IgnoredAny),
                    Directory(IgnoredAny),
                    Strands(IgnoredAny),
                    Poke(IgnoredAny),
                    #[serde(other)]
                    Other,
                }
                impl Named {
                    fn message_type(&self) -> Option<MessageType> {
                        Some(match self {
                            Named::Hello(_) | Named::Welcome(_) => MessageType::Hello,
                            Named::Register(_) | Named::Registered(_) => MessageType::Register,
                            Named::Pull(_) | Named::Pulled(_) => MessageType::Pull,
                            Named::Ack(_) | Named::Acked(_) => MessageType::Ack,
                            Named::Push(_) | Named::Pushed(_) => MessageType::Push,
                            Named::Directory(_) | Named::Strands(_) => MessageType::Directory,
                            Named::Poke(_) => MessageType::Poke,
                            Named::Other => return None,
                        })
                    }
                }
                #[derive(Deserialize)]
                #[serde(rename_all = "snake_case")]
                enum Kind {
                    Request(Named),
                    Response(Named),
                    Error(IgnoredAny),
                    Notification(Named),
                }
                #[derive(Deserialize)]
                struct Head {
                    #[serde(default)]
                    id: u64,
                    body: Kind,
                }
                let head: Head = serde_json::from_slice(frame).ok()?;
                let (kind, message) = match head.body {
                    Kind::Request(n) => (FrameKind::Request, n.message_type()),
                    Kind::Response(n) => (FrameKind::Response, n.message_type()),
                    Kind::Error(_) => (FrameKind::Error, Some(MessageType::Unknown)),
                    Kind::Notification(n) => (FrameKind::Notification, n.message_type()),
                };
                Some(FrameHead {
                    codec: Codec::Json,
                    kind,
                    message,
                    id: head.id,
                })
            }
        }
    }
}
