//! A session: requests, responses and notifications over one link.
//!
//! Either side may send requests (the protocol is symmetric); responses find their request by
//! correlation id. Incoming requests run concurrently up to a bound, each answered on the same
//! link. Frames that are too large or do not decode are answered with an error and the session
//! goes on; a peer that stops answering is detected by consecutive timeouts and the session is
//! closed, so the owner reconnects.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::AbortHandle;

use crate::error::{Error, ErrorKind, Result, WireError};
use crate::protocol::{
    Body, BodyRef, Codec, EnvelopeRef, FrameHead, FrameKind, Notification, PROTOCOL_VERSION,
    Request, Response,
};
use crate::telemetry;
use crate::transport::{FrameReceiver, Link, LinkInfo};
use crate::types::ReactorId;

/// After this many request timeouts in a row the peer is considered gone.
const TIMEOUTS_BEFORE_CLOSE: u32 = 3;

/// A response with the sizes of both frames.
#[derive(Debug)]
pub struct Reply {
    /// The response.
    pub response: Response,
    /// Bytes of the request frame.
    pub request_bytes: usize,
    /// Bytes of the response frame.
    pub response_bytes: usize,
}

/// Serves a session's incoming requests and notifications.
#[async_trait]
pub trait SessionHandler: Send + Sync + 'static {
    /// Answers a request.
    async fn handle(&self, session: &Session, request: Request) -> Result<Response>;

    /// Takes a notification.
    fn notified(&self, session: &Session, notification: Notification);

    /// The session closed.
    fn closed(&self, _session: &Session) {}
}

/// Limits applied to a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Most requests from the peer served at once.
    pub max_concurrent_requests: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_frame_bytes: 32 << 20,
            max_concurrent_requests: 64,
        }
    }
}

/// Per-session state the responder keeps: the listeners registered on it and whether a poke is
/// outstanding.
#[derive(Debug, Default)]
pub(crate) struct ResponderState {
    pub(crate) listeners: Vec<String>,
    pub(crate) poke_pending: bool,
}

/// Where a request's response goes: the response and the size of its frame.
type Pending = oneshot::Sender<Result<(Response, usize)>>;

struct Inner {
    id: u64,
    sender: Arc<dyn crate::transport::FrameSender>,
    info: LinkInfo,
    limits: SessionLimits,
    /// Ordered, so that closing fails waiting requests in a deterministic order.
    pending: Mutex<BTreeMap<u64, Pending>>,
    next_id: AtomicU64,
    closed: watch::Sender<bool>,
    peer: OnceLock<ReactorId>,
    peer_known: tokio::sync::Notify,
    timeouts_in_a_row: AtomicU32,
    /// The encoding the peer last spoke (JSON or binary): our requests and notifications use
    /// it, and every response uses its request's.
    codec: AtomicU8,
    reader: Mutex<Option<AbortHandle>>,
    pub(crate) responder: Mutex<ResponderState>,
}

/// One session over a link. Cheap to clone.
#[derive(Clone)]
pub struct Session(Arc<Inner>);

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.0.id)
            .field("transport", &self.0.info.transport)
            .field("peer", &self.0.peer.get())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Session {
    /// Starts a session on a link: spawns the reader that dispatches incoming frames. `id`
    /// names it in logs and tells it apart from the owner's other sessions.
    pub fn start(
        link: Link,
        handler: Arc<dyn SessionHandler>,
        limits: SessionLimits,
        id: u64,
    ) -> Session {
        let codec = codec_byte(link.info.codec);
        let session = Session(Arc::new(Inner {
            id,
            sender: link.sender,
            info: link.info,
            limits,
            pending: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            closed: watch::channel(false).0,
            peer: OnceLock::new(),
            peer_known: tokio::sync::Notify::new(),
            timeouts_in_a_row: AtomicU32::new(0),
            codec: AtomicU8::new(codec),
            reader: Mutex::new(None),
            responder: Mutex::new(ResponderState::default()),
        }));
        let s = session.clone();
        let task = tokio::spawn(async move { s.read_loop(link.receiver, handler).await });
        *session.0.reader.lock() = Some(task.abort_handle());
        if session.is_closed() {
            task.abort();
        }
        session
    }

    /// A process-unique id for this session.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Facts about the link.
    pub fn info(&self) -> &LinkInfo {
        &self.0.info
    }

    /// The peer's reactor id, once the handshake named it.
    pub fn peer(&self) -> Option<&ReactorId> {
        self.0.peer.get()
    }

    /// Waits until the handshake named the peer, at most `timeout`.
    pub async fn wait_peer(&self, timeout: Duration) -> Option<ReactorId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.0.peer_known.notified();
            if let Some(p) = self.peer() {
                return Some(p.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.peer().cloned();
            }
        }
    }

    /// Records the peer's reactor id (once).
    pub fn set_peer(&self, peer: ReactorId) -> Result<()> {
        let stored = self.0.peer.get_or_init(|| peer.clone());
        self.0.peer_known.notify_waiters();
        if *stored != peer {
            return Err(Error::invalid(format!(
                "this session belongs to reactor {stored}, not {peer}"
            )));
        }
        Ok(())
    }

    pub(crate) fn responder_state(&self) -> parking_lot::MutexGuard<'_, ResponderState> {
        self.0.responder.lock()
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        *self.0.closed.borrow()
    }

    /// Waits until the session is closed.
    pub async fn closed(&self) {
        let mut rx = self.0.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Closes the session: fails pending requests, closes the link, stops the reader.
    pub fn close(&self) {
        if self.0.closed.send_replace(true) {
            return;
        }
        self.0.sender.close();
        let pending: Vec<_> = std::mem::take(&mut *self.0.pending.lock())
            .into_iter()
            .collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(Error::closed("the session closed")));
        }
        if let Some(reader) = self.0.reader.lock().take() {
            reader.abort();
        }
    }

    /// The encoding the peer speaks.
    fn codec(&self) -> Codec {
        if self.0.codec.load(Ordering::Relaxed) == codec_byte(Codec::Json) {
            Codec::Json
        } else {
            Codec::Binary
        }
    }

    async fn send_envelope(&self, env: EnvelopeRef<'_>) -> Result<usize> {
        self.send_in(env, self.codec()).await
    }

    async fn send_in(&self, env: EnvelopeRef<'_>, codec: Codec) -> Result<usize> {
        let frame = codec.encode_ref(&env)?;
        let len = frame.len();
        if len > self.0.limits.max_frame_bytes {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a frame of {len} bytes exceeds the limit of {} bytes",
                    self.0.limits.max_frame_bytes
                ),
            ));
        }
        self.0.sender.send(Bytes::from(frame)).await?;
        telemetry::frame_bytes("out", len);
        Ok(len)
    }

    /// Sends a request and waits for its response, at most `timeout`.
    pub async fn request(&self, request: &Request, timeout: Duration) -> Result<Reply> {
        if self.is_closed() {
            return Err(Error::closed("the session is closed"));
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0.pending.lock().insert(id, tx);
        let env = EnvelopeRef {
            v: PROTOCOL_VERSION,
            id,
            body: BodyRef::Request(request),
        };
        let size = match self.send_envelope(env).await {
            Ok(n) => n,
            Err(e) => {
                self.0.pending.lock().remove(&id);
                return Err(e);
            }
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => {
                self.0.timeouts_in_a_row.store(0, Ordering::Relaxed);
                result.map(|(response, response_bytes)| Reply {
                    response,
                    request_bytes: size,
                    response_bytes,
                })
            }
            Ok(Err(_)) => Err(Error::closed("the session closed before the response")),
            Err(_) => {
                self.0.pending.lock().remove(&id);
                let n = self.0.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TIMEOUTS_BEFORE_CLOSE {
                    tracing::info!(
                        transport = self.0.info.transport,
                        peer = %self.0.info.peer,
                        "{n} requests in a row timed out; closing the session"
                    );
                    self.close();
                }
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no response from {} within {} ms; the outcome is unknown",
                        self.0.info.peer,
                        timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// Sends a notification.
    pub async fn notify(&self, notification: Notification) -> Result<()> {
        self.send_envelope(EnvelopeRef {
            v: PROTOCOL_VERSION,
            id: 0,
            body: BodyRef::Notification(&notification),
        })
        .await
        .map(|_| ())
    }

    async fn respond(&self, id: u64, result: Result<Response>, codec: Codec) {
        let body = match result {
            Ok(r) => Body::Response(r),
            Err(e) => Body::Error(WireError::from(&e)),
        };
        let env = EnvelopeRef {
            v: PROTOCOL_VERSION,
            id,
            body: body.as_ref(),
        };
        match self.send_in(env, codec).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::TooLarge => {
                // Answer with the error instead, so the requester does not wait for a timeout.
                let wire = WireError::from(&e);
                let env = EnvelopeRef {
                    v: PROTOCOL_VERSION,
                    id,
                    body: BodyRef::Error(&wire),
                };
                let _ = self.send_in(env, codec).await;
            }
            Err(e) => tracing::debug!(error = %e, "could not send a response"),
        }
    }

    fn complete(&self, id: u64, result: Result<(Response, usize)>) {
        if let Some(tx) = self.0.pending.lock().remove(&id) {
            let _ = tx.send(result);
        }
    }

    async fn reject(
        &self,
        id: Option<u64>,
        is_request: bool,
        error: Error,
        reason: &'static str,
        codec: Codec,
    ) {
        telemetry::frame_rejected(reason);
        tracing::debug!(peer = %self.0.info.peer, error = %error, "rejected a frame");
        match id {
            Some(id) if is_request => self.respond(id, Err(error), codec).await,
            Some(id) => self.complete(id, Err(error)),
            // Nothing to correlate: answer with id 0 anyway, so a peer learns what was wrong
            // (a syncline session ignores responses nobody waits for).
            None => self.respond(0, Err(error), codec).await,
        }
    }

    async fn read_loop(
        self,
        mut receiver: Box<dyn FrameReceiver>,
        handler: Arc<dyn SessionHandler>,
    ) {
        let permits = Arc::new(Semaphore::new(self.0.limits.max_concurrent_requests.max(1)));
        while let Some(frame) = receiver.recv().await {
            let frame = match frame {
                Ok(f) => {
                    telemetry::frame_bytes("in", f.len());
                    f
                }
                Err(e) => {
                    telemetry::frame_rejected("transport");
                    tracing::debug!(error = %e, "the transport refused a frame");
                    continue;
                }
            };
            // Answer in the encoding the peer used; our own frames follow the peer's last.
            let codec = Codec::detect(&frame);
            self.0.codec.store(codec_byte(codec), Ordering::Relaxed);
            if frame.len() > self.0.limits.max_frame_bytes {
                let head = FrameHead::peek(&frame);
                let err = Error::new(
                    ErrorKind::TooLarge,
                    format!(
                        "a frame of {} bytes exceeds the limit of {} bytes",
                        frame.len(),
                        self.0.limits.max_frame_bytes
                    ),
                );
                self.reject(
                    head.map(|h| h.id),
                    head.is_some_and(|h| h.kind == FrameKind::Request),
                    err,
                    "too_large",
                    codec,
                )
                .await;
                continue;
            }
            let env = match Codec::decode(&frame) {
                Ok(env) => env,
                Err(de) => {
                    let reason = if de.error.kind() == ErrorKind::ProtocolVersion {
                        "protocol_version"
                    } else {
                        "malformed"
                    };
                    self.reject(de.id, de.is_request, de.error, reason, codec)
                        .await;
                    continue;
                }
            };
            match env.body {
                Body::Request(request) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let session = self.clone();
                    let handler = handler.clone();
                    let id = env.id;
                    tokio::spawn(async move {
                        let result = handler.handle(&session, request).await;
                        session.respond(id, result, codec).await;
                        drop(permit);
                    });
                }
                Body::Response(response) => self.complete(env.id, Ok((response, frame.len()))),
                Body::Error(error) => self.complete(env.id, Err(error.into())),
                Body::Notification(n) => handler.notified(&self, n),
            }
        }
        self.close();
        handler.closed(&self);
    }
}

/// A codec as a byte, for the atomic.
fn codec_byte(codec: Codec) -> u8 {
    match codec {
        Codec::Binary => 0,
        Codec::Json => 1,
    }
}
