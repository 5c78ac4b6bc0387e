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
mod server;

pub use server::{Server, ServerOptions, router};

const BINARY: &str = "application/octet-stream";
const JSON: &str = "application/json";

/// Installs the process-wide TLS crypto provider (ring) once.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ---- client --------------------------------------------------------------------------------

/// The `http://`/`https://` transport (client side). An `https://` remote verifies the server
/// against the system's trusted certificates, or only against those in `?ca=<PEM file>`.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    codec: Codec,
    timeout: Duration,
    /// Clients trusting one CA file each, by path (one connection pool per CA).
    trusting: Arc<Mutex<std::collections::BTreeMap<String, reqwest::Client>>>,
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
        let client = client_builder(timeout)
            .build()
            .map_err(|e| Error::internal(format!("building the HTTP client failed: {e}")))?;
        Ok(HttpTransport {
            client,
            codec,
            timeout,
            trusting: Arc::default(),
        })
    }

    /// The client that trusts only the certificates in the PEM file `ca`.
    fn trusting(&self, ca: &str) -> Result<reqwest::Client> {
        if let Some(c) = self.trusting.lock().get(ca) {
            return Ok(c.clone());
        }
        let tls = syncline_core::transport::trusting_client_config(ca)?;
        let client = client_builder(self.timeout)
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| Error::internal(format!("building the HTTP client failed: {e}")))?;
        self.trusting.lock().insert(ca.to_owned(), client.clone());
        Ok(client)
    }
}

fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    // No total timeout here: the session times each request out itself, and a long poll
    // legitimately takes longer than a plain request.
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(32)
        .tcp_nodelay(true)
}

struct ClientLink {
    base: Url,
    /// The base as messages show it (no password).
    shown: String,
    client: reqwest::Client,
    codec: Codec,
    session: Mutex<Option<String>>,
    inbox: Mutex<Option<mpsc::Sender<Result<Bytes>>>>,
    closed: AtomicBool,
}

impl fmt::Debug for ClientLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpLink({})", self.shown)
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
                link.shown
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
            .map_err(|e| Error::invalid(format!("bad URL {}: {e}", link.shown)))?;
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
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        // The server limits our rate: backpressure, retried after a backoff
                        // like any failed request (never a verdict on an operation).
                        let after = resp
                            .headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_owned();
                        if let Some(id) = id {
                            link.fail(
                                id,
                                &Error::new(
                                    ErrorKind::Backpressure,
                                    format!(
                                        "{} limits our requests (429); it asks us to wait {after} s",
                                        link.shown
                                    ),
                                ),
                            )
                            .await;
                        }
                        return;
                    }
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
                                            link.shown
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
                    let err = Error::new(
                        kind,
                        format!(
                            "{} did not answer: {}",
                            link.shown,
                            syncline_core::transport::with_causes(&e)
                        ),
                    );
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
                    "{}: codec={v} is not known; use json or binary",
                    syncline_core::transport::redacted_url(url.as_str())
                )));
            }
            None => self.codec,
        };
        let client = match url.query_pairs().find(|(k, _)| k == "ca") {
            Some((_, ca)) if url.scheme() == "https" => self.trusting(&ca)?,
            Some(_) => {
                return Err(Error::invalid(format!(
                    "{}: ?ca= needs an https:// URL",
                    syncline_core::transport::redacted_url(url.as_str())
                )));
            }
            None => self.client.clone(),
        };
        base.set_query(None);
        let (tx, rx) = mpsc::channel(ANSWERS);
        let link = Arc::new(ClientLink {
            shown: syncline_core::transport::redacted_url(base.as_str()),
            base: base.clone(),
            client,
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
                peer: syncline_core::transport::redacted_url(base.as_str()),
                duplex: false,
                codec,
            },
        })
    }
}

// ---- server --------------------------------------------------------------------------------

/// Hands accepted links to the reactor (`reactor.serve(link)`).
pub use syncline_core::AcceptFn as Accept;

/// `[transports.http]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// A PEM file of the certificates `https://` remotes are verified against, instead of the
    /// system's (a remote's own `?ca=` still wins).
    pub ca: Option<String>,
}

impl syncline_core::Settings for HttpSettings {}

impl HttpTransport {
    /// Verifies `https://` servers against the certificates of the PEM file `ca` only (unless
    /// a remote names its own `?ca=`).
    pub fn trusting_by_default(mut self, ca: &str) -> Result<Self> {
        self.client = self.trusting(ca)?;
        Ok(self)
    }
}

/// Registers the HTTP transport (`[transports.http]`: [`HttpSettings`]); its server side is
/// [`router`], mounted on the node's HTTP server.
pub fn register(backends: &mut syncline_core::Backends) {
    let schemes = &["http", "https"];
    backends.register_transport(syncline_core::TransportKind::backend(
        "http",
        schemes,
        |node, _store, settings: HttpSettings| {
            let built = HttpTransport::new(node.request_timeout).and_then(|t| match &settings.ca {
                Some(ca) => t.trusting_by_default(ca),
                None => Ok(t),
            });
            futures::future::ready(built.map(|t| Arc::new(t) as Arc<dyn Transport>))
        },
    ));
}
