//! The two frame encodings: encoding and decoding whole envelopes.

use super::*;

/// A frame that could not be decoded, with the correlation id when the header was readable
/// (so the receiver can answer the request with the error).
#[derive(Debug)]
pub struct DecodeError {
    /// The correlation id, if known.
    pub id: Option<u64>,
    /// The kind of the frame, if known (an error answer is only sent to requests).
    pub is_request: bool,
    /// What was wrong.
    pub error: Error,
}

/// The two frame encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// Header plus postcard body.
    #[default]
    Binary,
    /// A JSON envelope.
    Json,
}

pub(super) fn body_parts(body: &BodyRef<'_>) -> (u8, MessageType) {
    match body {
        BodyRef::Request(r) => (0, r.message_type()),
        BodyRef::Response(r) => (1, r.message_type()),
        BodyRef::Error(_) => (2, MessageType::Unknown),
        BodyRef::Notification(Notification::Poke(_)) => (3, MessageType::Poke),
    }
}

/// A close upper estimate of a body's encoded size, so a frame is allocated once instead of
/// growing by doubling (large frames would otherwise be copied several times).
pub(super) fn size_hint(body: &BodyRef<'_>) -> usize {
    fn updates(u: &[StrandUpdate]) -> usize {
        u.iter()
            .map(|s| {
                64 + s
                    .operations
                    .iter()
                    .map(|o| {
                        112 + o.action.input.as_bytes().len()
                            + o.action.action_type.as_str().len()
                            + o.origin.as_str().len()
                    })
                    .sum::<usize>()
            })
            .sum()
    }
    match body {
        BodyRef::Request(Request::Push(p)) => 32 + updates(&p.strands),
        BodyRef::Request(Request::Pull(p)) => {
            64 + p.push.as_ref().map_or(0, |p| updates(&p.strands))
        }
        BodyRef::Response(Response::Pulled(p)) => 64 + updates(&p.strands),
        BodyRef::Response(Response::Strands(s)) => 32 + s.heads.len() * 128,
        _ => 256,
    }
}

pub(super) fn post<T: Serialize>(out: &mut Vec<u8>, v: &T) -> Result<()> {
    postcard::to_io(v, &mut *out)
        .map(|_| ())
        .map_err(|e| Error::internal(format!("encoding a frame failed: {e}")))
}

pub(super) fn unpost<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    let (v, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| Error::malformed(format!("the {what} body does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::malformed(format!(
            "the {what} body has {} trailing bytes",
            rest.len()
        )));
    }
    Ok(v)
}

impl Codec {
    /// Encodes an envelope.
    pub fn encode(self, env: &Envelope) -> Result<Vec<u8>> {
        self.encode_ref(&env.as_ref())
    }

    /// Encodes a borrowed envelope.
    pub fn encode_ref(self, env: &EnvelopeRef<'_>) -> Result<Vec<u8>> {
        match self {
            Codec::Json => serde_json::to_vec(env)
                .map_err(|e| Error::internal(format!("encoding a JSON frame failed: {e}"))),
            Codec::Binary => {
                let (kind, ty) = body_parts(&env.body);
                let mut out = Vec::with_capacity(HEADER_LEN + size_hint(&env.body));
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&env.v.to_le_bytes());
                out.push(kind);
                out.push(ty as u8);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&env.id.to_le_bytes());
                match env.body {
                    BodyRef::Request(r) => match r {
                        Request::Hello(m) => post(&mut out, m)?,
                        Request::Register(m) => post(&mut out, m)?,
                        Request::Pull(m) => post(&mut out, m)?,
                        Request::Ack(m) => post(&mut out, m)?,
                        Request::Push(m) => post(&mut out, m)?,
                        Request::Directory(m) => post(&mut out, m)?,
                    },
                    BodyRef::Response(r) => match r {
                        Response::Welcome(m) => post(&mut out, m)?,
                        Response::Registered(m) => post(&mut out, m)?,
                        Response::Pulled(m) => post(&mut out, m)?,
                        Response::Acked(m) => post(&mut out, m)?,
                        Response::Pushed(m) => post(&mut out, m)?,
                        Response::Strands(m) => post(&mut out, m)?,
                    },
                    BodyRef::Error(e) => post(&mut out, e)?,
                    BodyRef::Notification(Notification::Poke(p)) => post(&mut out, p)?,
                }
                Ok(out)
            }
        }
    }

    /// The codec a frame was written with: binary frames start with `SY`, JSON ones with `{`.
    pub fn detect(frame: &[u8]) -> Codec {
        if frame.starts_with(MAGIC) {
            Codec::Binary
        } else if frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            Codec::Json
        } else {
            Codec::Binary
        }
    }

    /// Decodes a frame in either encoding.
    pub fn decode(frame: &[u8]) -> Result<Envelope, DecodeError> {
        match Codec::detect(frame) {
            Codec::Binary => decode_binary(frame),
            Codec::Json => decode_json(frame),
        }
    }
}

pub(super) fn decode_json(frame: &[u8]) -> Result<Envelope, DecodeError> {
    #[derive(Deserialize)]
    struct Head {
        v: u16,
        #[serde(default)]
        id: Option<u64>,
        #[serde(default)]
        body: Option<serde::de::IgnoredAny>,
    }
    let head: Head = serde_json::from_slice(frame).map_err(|e| DecodeError {
        id: None,
        is_request: false,
        error: Error::malformed(format!("the JSON frame does not decode: {e}")),
    })?;
    let _ = head.body;
    if head.v != PROTOCOL_VERSION {
        return Err(DecodeError {
            id: head.id,
            is_request: true,
            error: version_error(head.v),
        });
    }
    serde_json::from_slice::<Envelope>(frame).map_err(|e| DecodeError {
        id: head.id,
        is_request: true,
        error: Error::malformed(format!("the JSON frame does not decode: {e}")),
    })
}

pub(super) fn version_error(v: u16) -> Error {
    Error::new(
        ErrorKind::ProtocolVersion,
        format!(
            "the frame uses syncline protocol version {v}; this node speaks version {PROTOCOL_VERSION}"
        ),
    )
}

pub(super) fn decode_binary(frame: &[u8]) -> Result<Envelope, DecodeError> {
    let bad = |id, is_request, error| DecodeError {
        id,
        is_request,
        error,
    };
    if frame.len() < HEADER_LEN {
        return Err(bad(
            None,
            false,
            Error::malformed(format!(
                "a frame of {} bytes is shorter than the {HEADER_LEN}-byte header",
                frame.len()
            )),
        ));
    }
    if &frame[0..2] != MAGIC {
        return Err(bad(
            None,
            false,
            Error::malformed(format!(
                "not a syncline frame: it starts with {:02x}{:02x}, not 'SY'",
                frame[0], frame[1]
            )),
        ));
    }
    let v = u16::from_le_bytes([frame[2], frame[3]]);
    let kind = frame[4];
    let id = u64::from_le_bytes(frame[8..16].try_into().unwrap_or([0; 8]));
    let is_request = kind == 0;
    if v != PROTOCOL_VERSION {
        return Err(bad(Some(id), is_request, version_error(v)));
    }
    let Some(ty) = MessageType::from_u8(frame[5]) else {
        return Err(bad(
            Some(id),
            is_request,
            Error::malformed(format!("unknown message type {}", frame[5])),
        ));
    };
    let b = &frame[HEADER_LEN..];
    let decoded = (|| -> Result<Body> {
        Ok(match (kind, ty) {
            (0, MessageType::Hello) => Body::Request(Request::Hello(unpost(b, "hello")?)),
            (0, MessageType::Register) => Body::Request(Request::Register(unpost(b, "register")?)),
            (0, MessageType::Pull) => Body::Request(Request::Pull(unpost(b, "pull")?)),
            (0, MessageType::Ack) => Body::Request(Request::Ack(unpost(b, "ack")?)),
            (0, MessageType::Push) => Body::Request(Request::Push(unpost(b, "push")?)),
            (0, MessageType::Directory) => {
                Body::Request(Request::Directory(unpost(b, "directory")?))
            }
            (1, MessageType::Hello) => Body::Response(Response::Welcome(unpost(b, "welcome")?)),
            (1, MessageType::Register) => {
                Body::Response(Response::Registered(unpost(b, "registered")?))
            }
            (1, MessageType::Pull) => Body::Response(Response::Pulled(unpost(b, "pulled")?)),
            (1, MessageType::Ack) => Body::Response(Response::Acked(unpost(b, "acked")?)),
            (1, MessageType::Push) => Body::Response(Response::Pushed(unpost(b, "pushed")?)),
            (1, MessageType::Directory) => Body::Response(Response::Strands(unpost(b, "strands")?)),
            (2, _) => Body::Error(unpost(b, "error")?),
            (3, MessageType::Poke) => Body::Notification(Notification::Poke(unpost(b, "poke")?)),
            (k, t) => {
                return Err(Error::malformed(format!(
                    "frame kind {k} with message type {t:?} is not defined"
                )));
            }
        })
    })();
    match decoded {
        Ok(body) => Ok(Envelope { v, id, body }),
        Err(error) => Err(bad(Some(id), is_request, error)),
    }
}
