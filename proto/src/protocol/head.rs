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

impl FrameHead {
    /// The kind of the error frame `frame` whose head this is, read from the error's first
    /// field (its message is skipped, not decoded); a kind this build does not know reads as
    /// `internal`. `None` if the frame is not an error frame.
    pub fn error_kind(&self, frame: &[u8]) -> Option<ErrorKind> {
        if self.kind != FrameKind::Error {
            return None;
        }
        let name = match self.codec {
            Codec::Binary => {
                let (name, _) = postcard::take_from_bytes::<&str>(&frame[HEADER_LEN..]).ok()?;
                name.to_owned()
            }
            Codec::Json => {
                #[derive(Deserialize)]
                struct Kind {
                    kind: String,
                }
                #[derive(Deserialize)]
                struct Body {
                    error: Kind,
                }
                #[derive(Deserialize)]
                struct Head {
                    body: Body,
                }
                serde_json::from_slice::<Head>(frame).ok()?.body.error.kind
            }
        };
        Some(ErrorKind::parse(&name).unwrap_or(ErrorKind::Internal))
    }

    /// The id and message type of a request frame, read from its head; or, for a frame that is
    /// not a request the head can name, the id to answer (0 if unknown) and why it cannot be
    /// served (only then is the frame decoded, to say precisely what is wrong with it).
    pub fn request(frame: &[u8]) -> std::result::Result<(u64, MessageType), (u64, Error)> {
        match FrameHead::peek(frame) {
            Some(FrameHead {
                kind: FrameKind::Request,
                message: Some(m),
                id,
                ..
            }) => Ok((id, m)),
            _ => Err(match Codec::decode(frame) {
                Ok(env) => (env.id, Error::invalid("only requests can be sent here")),
                Err(de) => (de.id.unwrap_or(0), de.error),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_frame(codec: Codec, kind: &str) -> Vec<u8> {
        codec
            .encode(&Envelope {
                v: PROTOCOL_VERSION,
                id: 7,
                body: Body::Error(WireError {
                    kind: kind.into(),
                    message: "a \"quoted\" reason, in a message that is not read".into(),
                }),
            })
            .unwrap()
    }

    #[test]
    fn an_error_frame_tells_its_kind_without_its_message() {
        for codec in [Codec::Binary, Codec::Json] {
            for kind in [
                ErrorKind::HashMismatch,
                ErrorKind::Unauthenticated,
                ErrorKind::Backpressure,
                ErrorKind::Unsupported,
            ] {
                let frame = error_frame(codec, kind.as_str());
                assert_eq!(
                    FrameHead::peek(&frame).unwrap().error_kind(&frame),
                    Some(kind),
                    "{codec:?}"
                );
            }
            // A kind from a newer peer reads as internal, as a decoded one does.
            let frame = error_frame(codec, "from_the_future");
            assert_eq!(
                FrameHead::peek(&frame).unwrap().error_kind(&frame),
                Some(ErrorKind::Internal)
            );
            // Not an error: no kind.
            let ack = codec
                .encode(&Envelope {
                    v: PROTOCOL_VERSION,
                    id: 1,
                    body: Body::Request(Request::Ack(Ack {
                        listener_id: "l".into(),
                        cursor: Ordinal(1),
                        refused: Vec::new(),
                    })),
                })
                .unwrap();
            assert_eq!(
                FrameHead::peek(&ack).unwrap().error_kind(&ack),
                None,
                "{codec:?}"
            );
            assert_eq!(
                FrameHead::request(&ack).unwrap(),
                (1, MessageType::Ack),
                "{codec:?}"
            );
            // An error frame is not a request: refused with its id, as invalid input.
            let (id, e) = FrameHead::request(&error_frame(codec, "timeout")).unwrap_err();
            assert_eq!((id, e.kind()), (7, ErrorKind::InvalidInput), "{codec:?}");
        }
        assert_eq!(FrameHead::peek(b"SY"), None);
        let (id, e) = FrameHead::request(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert_eq!((id, e.kind()), (0, ErrorKind::Malformed));
    }
}
