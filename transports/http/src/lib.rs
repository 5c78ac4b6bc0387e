//! The HTTP transport: `http://` and `https://` remotes.
//!
//! HTTP is request/response, so only the client sends requests (seed 004's Connect/Reactor
//! pattern): it pushes, registers, pulls and acknowledges; pushes ride on pulls when the remote
//! is ping-pong (seed 000's optimisation, done by the sync manager for non-duplex links).
//!
//! Routes (served by [`router`], mounted by the node next to its application API):
//!
//! | route | request |
//! |---|---|
//! | `POST /v1/sync/hello` | `Hello`; the answer's `session` goes in the `syncline-session` header of every later request |
//! | `POST /v1/sync/register` | `Register` (seed 004's registerPullResponderListener) |
//! | `POST /v1/sync/pull` | `Pull` (pullStrands), optionally carrying a push |
//! | `POST /v1/sync/ack` | `Ack` (acknowledgeStrands) |
//! | `POST /v1/sync/push` | `Push` (pushUpdates) |
//! | `POST /v1/sync/directory` | `Directory` |
//!
//! The body is one frame: binary (`application/octet-stream`) or JSON (`application/json`),
//! answered in the same encoding. Errors come back as error frames with the status of their
//! kind ([`ErrorKind::http_status`], the application API's table too). Bodies over the limit
//! get 413.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use bytes::Bytes;
use parking_lot::Mutex;
use syncline_core::protocol::{
    Body as MessageBody, Codec, Envelope, FrameHead, FrameKind, MessageType, PROTOCOL_VERSION,
};
use syncline_core::telemetry;
use syncline_core::{
    ChannelReceiver, Error, ErrorKind, FrameSender, Link, LinkInfo, Result, Transport, WireError,
};
use tokio::sync::{mpsc, oneshot};
use url::Url;

/// The header carrying the session id.
pub const SESSION_HEADER: &str = "syncline-session";
const BINARY: &str = "application/octet-stream";
const JSON: &str = "application/json";

/// Installs the process-wide TLS crypto provider (ring) once.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ---- client --------------------------------------------------------------------------------

/// The `http://`/`https://` transport (client side).
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    codec: Codec,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("codec", &self.codec)
            .finish()
    }
}

impl HttpTransport {
    /// A transport sending binary frames, with `timeout` per request.
    pub fn new(timeout: Duration) -> Result<Self> {
        HttpTransport::with_codec(timeout, Codec::Binary)
    }

    /// A transport sending frames in `codec`.
    pub fn with_codec(timeout: Duration, codec: Codec) -> Result<Self> {
        install_crypto();
        // No total timeout here: the session times each request out itself, and a long poll
        // legitimately takes longer than a plain request.
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::internal(format!("building the HTTP client failed: {e}")))?;
        Ok(HttpTransport { client, codec })
    }
}

struct ClientLink {
    base: Url,
    client: reqwest::Client,
    codec: Codec,
    session: Mutex<Option<String>>,
    inbox: Mutex<Option<mpsc::Sender<Result<Bytes>>>>,
    closed: AtomicBool,
}

impl fmt::Debug for ClientLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpLink({})", self.base)
    }
}

impl ClientLink {
    async fn deliver(&self, frame: Result<Bytes>) {
        let tx = self.inbox.lock().clone();
        if let Some(tx) = tx {
            let _ = tx.send(frame).await;
        }
    }

    fn shut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.inbox.lock().take();
    }

    /// Answers request `id` with an error, as if the server had (so the waiting request does
    /// not wait for its timeout).
    async fn fail(&self, id: u64, e: &Error) {
        let env = Envelope {
            v: PROTOCOL_VERSION,
            id,
            body: MessageBody::Error(WireError::from(e)),
        };
        if let Ok(frame) = self.codec.encode(&env) {
            self.deliver(Ok(Bytes::from(frame))).await;
        }
    }
}

/// The route and correlation id of a request frame (its head only; the message is not
/// decoded).
fn route_of(frame: &[u8]) -> Option<(MessageType, u64)> {
    match FrameHead::peek(frame) {
        Some(FrameHead {
            kind: FrameKind::Request,
            message: Some(m),
            id,
            ..
        }) if m != MessageType::Unknown && m != MessageType::Poke => Some((m, id)),
        _ => None,
    }
}

/// Whether a frame with this head is a welcome.
fn is_welcome(head: Option<FrameHead>) -> bool {
    matches!(
        head,
        Some(FrameHead {
            kind: FrameKind::Response,
            message: Some(MessageType::Hello),
            ..
        })
    )
}

struct ClientSender(Arc<ClientLink>);

impl fmt::Debug for ClientSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait]
impl FrameSender for ClientSender {
    async fn send(&self, frame: Bytes) -> Result<()> {
        let link = self.0.clone();
        if link.closed.load(Ordering::SeqCst) {
            return Err(Error::closed(format!(
                "the HTTP link to {} is closed",
                link.base
            )));
        }
        // Frames that do not decode still go out (to the generic route) so that the server,
        // not the client, judges them, as with every other transport.
        let (path, id) = match route_of(&frame) {
            Some((ty, id)) => (format!("v1/sync/{}", ty.route()), Some(id)),
            None if FrameHead::peek(&frame).is_some_and(|h| h.kind != FrameKind::Request) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "HTTP carries requests only; the server cannot be sent responses",
                ));
            }
            None => ("v1/sync".to_owned(), None),
        };
        let url = link
            .base
            .join(&path)
            .map_err(|e| Error::invalid(format!("bad URL {}: {e}", link.base)))?;
        let mut req = link.client.post(url).header(
            header::CONTENT_TYPE,
            if Codec::detect(&frame) == Codec::Json {
                JSON
            } else {
                BINARY
            },
        );
        if let Some(s) = link.session.lock().clone() {
            req = req.header(SESSION_HEADER, s);
        }
        let req = req.body(frame);
        tokio::spawn(async move {
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let token = resp
                        .headers()
                        .get(SESSION_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match resp.bytes().await {
                        Ok(body) => {
                            let welcome = is_welcome(FrameHead::peek(&body));
                            if welcome && let Some(token) = token {
                                *link.session.lock() = Some(token);
                            }
                            let forgot = status == StatusCode::UNAUTHORIZED
                                && link.session.lock().is_some()
                                && !welcome;
                            if forgot {
                                // The server no longer knows our session (it restarted): a
                                // transient condition, not a refusal of the request. The
                                // request fails as closed (retried, never dead-lettered) and
                                // closing the link makes the owner say hello again.
                                if let Some(id) = id {
                                    link.fail(
                                        id,
                                        &Error::closed(format!(
                                            "{} no longer knows our session (it restarted); \
                                             saying hello again",
                                            link.base
                                        )),
                                    )
                                    .await;
                                }
                                link.shut();
                            } else {
                                link.deliver(Ok(body)).await;
                            }
                        }
                        Err(e) => {
                            if let Some(id) = id {
                                link.fail(
                                    id,
                                    &Error::new(
                                        ErrorKind::Unavailable,
                                        format!("reading the response failed: {e}"),
                                    ),
                                )
                                .await;
                            }
                        }
                    }
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Unavailable
                    };
                    let err = Error::new(kind, format!("{} did not answer: {e}", link.base));
                    if let Some(id) = id {
                        link.fail(id, &err).await;
                    }
                    if e.is_connect() {
                        // Nothing listens there any more: end the link so the owner
                        // reconnects with backoff instead of retrying on a dead session.
                        link.shut();
                    }
                }
            }
        });
        Ok(())
    }

    fn close(&self) {
        self.0.shut();
    }
}

/// Requests of one server session waiting for the reactor to read them (a request beyond it
/// is answered 503).
const INBOUND_FRAMES: usize = 256;
/// Answers of one client link waiting for its session to read them.
const ANSWERS: usize = 1024;

#[async_trait]
impl Transport for HttpTransport {
    fn schemes(&self) -> Vec<&'static str> {
        vec!["http", "https"]
    }

    async fn connect(&self, url: &Url) -> Result<Link> {
        let mut base = url.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let codec = match url.query_pairs().find(|(k, _)| k == "codec") {
            Some((_, v)) if v == "json" => Codec::Json,
            Some((_, v)) if v == "binary" => Codec::Binary,
            Some((_, v)) => {
                return Err(Error::invalid(format!(
                    "{url}: codec={v} is not known; use json or binary"
                )));
            }
            None => self.codec,
        };
        base.set_query(None);
        let (tx, rx) = mpsc::channel(ANSWERS);
        let link = Arc::new(ClientLink {
            base: base.clone(),
            client: self.client.clone(),
            codec,
            session: Mutex::new(None),
            inbox: Mutex::new(Some(tx)),
            closed: AtomicBool::new(false),
        });
        Ok(Link {
            sender: Arc::new(ClientSender(link)),
            receiver: Box::new(ChannelReceiver::new(rx, "http")),
            info: LinkInfo {
                transport: "http",
                peer: base.to_string(),
                duplex: false,
                codec,
            },
        })
    }
}

// ---- server --------------------------------------------------------------------------------

/// Hands accepted links to the reactor (`reactor.serve(link)`).
pub use syncline_core::AcceptFn as Accept;

/// Server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest wait for the reactor's answer.
    pub request_timeout: Duration,
    /// Sessions unused for this long are dropped.
    pub session_idle: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: 32 << 20,
            request_timeout: Duration::from_secs(60),
            session_idle: Duration::from_secs(300),
        }
    }
}

struct Virtual {
    to_session: mpsc::Sender<Result<Bytes>>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>,
    last_used: Mutex<Instant>,
    /// The reactor closed the session (a limit, shutdown): requests on it are told to say
    /// hello again, and the janitor forgets it.
    closed: Arc<AtomicBool>,
}

struct ServerState {
    accept: Accept,
    options: ServerOptions,
    sessions: Mutex<HashMap<String, Arc<Virtual>>>,
    /// Draws the session tokens: unguessable, so one client cannot use another's session.
    tokens: Mutex<rand::rngs::StdRng>,
}

impl ServerState {
    /// A new HTTP session token (128 random bits, hex).
    fn new_token(&self) -> String {
        use rand::Rng;
        format!("{:032x}", self.tokens.lock().random::<u128>())
    }
}

struct VirtualSender {
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>,
    closed: Arc<AtomicBool>,
}

impl fmt::Debug for VirtualSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpServerSender")
    }
}

#[async_trait]
impl FrameSender for VirtualSender {
    async fn send(&self, frame: Bytes) -> Result<()> {
        // Responses find the HTTP request waiting for them; anything else (a notification)
        // has nowhere to go over HTTP and is dropped.
        if let Some(head) = FrameHead::peek(&frame)
            && let Some(tx) = self.waiting.lock().remove(&head.id)
        {
            let _ = tx.send(frame);
        }
        Ok(())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.waiting.lock().clear();
    }
}

/// The status of an error answer: the table the application API uses too.
fn status_of(kind: &str) -> StatusCode {
    ErrorKind::parse(kind).map_or(StatusCode::INTERNAL_SERVER_ERROR, status_of_kind)
}

fn status_of_kind(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn frame_response(codec: Codec, status: StatusCode, frame: Vec<u8>) -> HttpResponse {
    let mut r = (status, frame).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if codec == Codec::Json { JSON } else { BINARY }),
    );
    r
}

fn error_response(codec: Codec, id: u64, e: &Error) -> HttpResponse {
    let wire = WireError::from(e);
    let status = status_of(&wire.kind);
    let env = Envelope {
        v: PROTOCOL_VERSION,
        id,
        body: MessageBody::Error(wire),
    };
    match codec.encode(&env) {
        Ok(frame) => frame_response(codec, status, frame),
        Err(_) => status.into_response(),
    }
}

fn codec_of(headers: &HeaderMap) -> Codec {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) if ct.starts_with(JSON) => Codec::Json,
        _ => Codec::Binary,
    }
}

/// Whether reading a body failed because it was over the limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

async fn handle(
    state: Arc<ServerState>,
    route: Option<String>,
    peer: String,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    let codec = codec_of(&headers);
    let max = state.options.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(e) if !is_length_limit(&e) => {
            // The body stalled (the server's body timeout) or the connection broke.
            return error_response(
                codec,
                0,
                &Error::new(
                    ErrorKind::Timeout,
                    "the request body stopped arriving before it was complete",
                ),
            );
        }
        Err(_) => {
            telemetry::frame_rejected("too_large");
            return error_response(
                codec,
                0,
                &Error::new(
                    ErrorKind::TooLarge,
                    format!("the request body exceeds the limit of {max} bytes"),
                ),
            );
        }
    };
    // The head says what the request is; the session decodes the message (once).
    let (id, message) = match FrameHead::request(&bytes) {
        Ok(request) => request,
        Err((id, error)) => {
            telemetry::frame_rejected(if error.kind() == ErrorKind::ProtocolVersion {
                "protocol_version"
            } else {
                "malformed"
            });
            return error_response(codec, id, &error);
        }
    };
    if let Some(route) = &route
        && MessageType::from_route(route) != Some(message)
    {
        telemetry::frame_rejected("malformed");
        return error_response(
            codec,
            id,
            &Error::invalid(format!(
                "a {} request was posted to /v1/sync/{route}",
                message.route()
            )),
        );
    }
    let virt = if message == MessageType::Hello {
        let (to_session, from_http) = mpsc::channel(INBOUND_FRAMES);
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let link = Link {
            sender: Arc::new(VirtualSender {
                waiting: waiting.clone(),
                closed: closed.clone(),
            }),
            receiver: Box::new(ChannelReceiver::new(from_http, "http")),
            info: LinkInfo {
                transport: "http",
                peer,
                duplex: false,
                codec,
            },
        };
        (state.accept)(link);
        Arc::new(Virtual {
            to_session,
            waiting,
            last_used: Mutex::new(Instant::now()),
            closed,
        })
    } else {
        let session = headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let known = state
            .sessions
            .lock()
            .get(session)
            .filter(|v| !v.closed.load(Ordering::SeqCst))
            .cloned();
        match known {
            Some(v) => v,
            None => {
                return error_response(
                    codec,
                    id,
                    &Error::new(
                        ErrorKind::Unauthenticated,
                        format!(
                            "unknown session {session:?} (missing {SESSION_HEADER} header, or \
                             the server restarted); send hello first"
                        ),
                    ),
                );
            }
        }
    };
    *virt.last_used.lock() = Instant::now();
    let (tx, rx) = oneshot::channel();
    virt.waiting.lock().insert(id, tx);
    match virt.to_session.try_send(Ok(bytes)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            virt.waiting.lock().remove(&id);
            return error_response(
                codec,
                id,
                &Error::new(
                    ErrorKind::Backpressure,
                    format!(
                        "{INBOUND_FRAMES} requests of this session already wait to be served; \
                         try again later"
                    ),
                ),
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return error_response(codec, id, &Error::closed("the session closed"));
        }
    }
    let answer = match tokio::time::timeout(state.options.request_timeout, rx).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(_)) => return error_response(codec, id, &Error::closed("the session closed")),
        Err(_) => {
            virt.waiting.lock().remove(&id);
            return error_response(
                codec,
                id,
                &Error::new(ErrorKind::Timeout, "the reactor did not answer in time"),
            );
        }
    };
    // Only heads are read: a welcome opens the HTTP session (under a token of the server's
    // own, sent as a header), an error's kind gives the status.
    let head = FrameHead::peek(&answer);
    let mut response = frame_response(
        codec,
        match head {
            Some(h) if h.kind == FrameKind::Error => h
                .error_kind(&answer)
                .map_or(StatusCode::INTERNAL_SERVER_ERROR, status_of_kind),
            _ => StatusCode::OK,
        },
        answer.to_vec(),
    );
    if message == MessageType::Hello && is_welcome(head) {
        let token = state.new_token();
        if let Ok(v) = HeaderValue::from_str(&token) {
            response.headers_mut().insert(SESSION_HEADER, v);
            state.sessions.lock().insert(token, virt);
        }
    }
    response
}

/// The sync routes, handing each new session's link to `accept`.
pub fn router(accept: Accept, options: ServerOptions) -> Router {
    let state = Arc::new(ServerState {
        accept,
        options,
        sessions: Mutex::new(HashMap::new()),
        tokens: Mutex::new(rand::SeedableRng::from_os_rng()),
    });
    let janitor = Arc::downgrade(&state);
    tokio::spawn(async move {
        loop {
            let Some(idle) = janitor.upgrade().map(|s| s.options.session_idle) else {
                return;
            };
            tokio::time::sleep(
                (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(10)),
            )
            .await;
            let Some(state) = janitor.upgrade() else {
                return;
            };
            state.sessions.lock().retain(|_, v| {
                !v.closed.load(Ordering::SeqCst) && v.last_used.lock().elapsed() < idle
            });
        }
    });
    let typed = {
        let state = state.clone();
        move |Path(route): Path<String>,
              ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
              headers: HeaderMap,
              body: Body| {
            let state = state.clone();
            async move { handle(state, Some(route), addr.to_string(), headers, body).await }
        }
    };
    let generic = {
        let state = state.clone();
        move |ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
              headers: HeaderMap,
              body: Body| {
            let state = state.clone();
            async move { handle(state, None, addr.to_string(), headers, body).await }
        }
    };
    Router::new()
        .route("/v1/sync/{route}", post(typed))
        .route("/v1/sync", post(generic))
        .layer(DefaultBodyLimit::disable())
}

/// A running HTTP server (for tests and tools; the node runs its own).
#[derive(Debug)]
pub struct Server {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Serves `router` on `addr` (port 0 picks a free port).
    pub async fn start(addr: std::net::SocketAddr, router: Router) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {addr}: {e}"),
            )
        })?;
        Server::serve(listener, router)
    }

    /// Serves `router` on a bound listener.
    pub fn serve(listener: tokio::net::TcpListener, router: Router) -> Result<Self> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::internal(format!("no local address: {e}")))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                tracing::warn!(error = %e, "the HTTP server stopped");
            }
        });
        Ok(Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `<scheme>://<addr>`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, lets open requests finish (at most `grace`), then stops.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl ServerOptions {
    /// The options for a node: bodies up to its frame size.
    pub fn for_node(node: &syncline_core::NodeContext) -> Self {
        ServerOptions {
            max_body_bytes: node.max_frame_bytes,
            ..ServerOptions::default()
        }
    }
}

/// Registers the HTTP transport (`[transports.http]`, no settings); its server side is
/// [`router`], mounted on the node's HTTP server.
pub fn register(backends: &mut syncline_core::Backends) {
    let schemes = &["http", "https"];
    backends.register_transport(syncline_core::TransportKind::plain(
        "http",
        schemes,
        |node| Ok(Arc::new(HttpTransport::new(node.request_timeout)?)),
    ));
}
