//! The server side: `POST /v1/sync/{hello,…}` routes that turn each HTTP session into a link.

use super::*;

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
