//! The WebSocket transport: `ws://` remotes, upgraded at `GET /v1/sync/ws`.
//!
//! One connection carries frames both ways (binary messages; JSON frames as text messages), so
//! both reactors call each other on it. Message size is limited well below the library default
//! (16 MiB unless configured); a peer that sends a larger message gets the connection closed
//! with code 1009 ("message too big"), and the next connection works. Both sides send a ping
//! every `ping_interval`; a connection silent for three intervals is closed, and the sync
//! manager reconnects with backoff.
//!
//! Browsers let any page open a WebSocket to any address and say which page did in the
//! `Origin` header, so an upgrade that carries an `Origin` not listed in
//! `[transports.websocket] allowed_origins` (none by default) is refused with 403: a page the
//! operator happens to open cannot talk to the node's sync endpoint. Reactors and other
//! non-browser clients send no `Origin`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use syncline_core::protocol::Codec;
use syncline_core::{
    AcceptFn, ChannelReceiver, Error, ErrorKind, FrameSender, Link, LinkInfo, Result, Transport,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;
use url::Url;

/// Limits and keepalive.
#[derive(Clone, Copy, Debug)]
pub struct WsOptions {
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// Time between pings.
    pub ping_interval: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            max_message_bytes: 16 << 20,
            ping_interval: Duration::from_secs(15),
        }
    }
}

/// A TLS connector that trusts only the certificates in the PEM file `ca`.
fn trusting(ca: &str) -> Result<Arc<rustls::ClientConfig>> {
    Ok(Arc::new(syncline_core::transport::trusting_client_config(
        ca,
    )?))
}

/// `[transports.websocket]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsSettings {
    /// Origins (`https://app.example.com`) whose web pages may open `/v1/sync/ws`; an upgrade
    /// with another `Origin` header is refused with 403.
    pub allowed_origins: Vec<String>,
    /// A PEM file of the certificates `wss://` remotes are verified against, instead of the
    /// system's (a remote's own `?ca=` still wins).
    pub ca: Option<String>,
}

impl syncline_core::Settings for WsSettings {
    fn check(&self, key: &str) -> std::result::Result<(), syncline_core::ConfigError> {
        for (i, o) in self.allowed_origins.iter().enumerate() {
            let ok = Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
            }) && !o.trim_end_matches('/').ends_with('/');
            if !ok {
                return Err(syncline_core::ConfigError::new(
                    format!("{key}.allowed_origins[{i}]"),
                    format!(
                        "{o:?} is not an origin: expected scheme://host[:port], e.g. https://app.example.com"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl WsSettings {
    /// The origins as a browser sends them (no trailing `/`, lower case).
    pub fn origins(&self) -> Arc<[String]> {
        // As a browser serialises an origin: lower case, punycode, no default port.
        self.allowed_origins
            .iter()
            .map(|o| match Url::parse(o) {
                Ok(u) => u.origin().ascii_serialization(),
                Err(_) => o.trim_end_matches('/').to_ascii_lowercase(),
            })
            .collect()
    }
}

/// What a link moves, independent of the WebSocket library on each side.
enum Msg {
    Frame(Bytes),
    Ping,
    /// Close, with a status code and reason when there is one to give (1009: a message over
    /// the limit).
    Close(Option<(u16, String)>),
}

enum In {
    Frame(Bytes),
    Alive,
    Closed,
}

struct Sender {
    tx: mpsc::Sender<Msg>,
    peer: String,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WsSender({})", self.peer)
    }
}

#[async_trait]
impl FrameSender for Sender {
    async fn send(&self, frame: Bytes) -> Result<()> {
        self.tx
            .send(Msg::Frame(frame))
            .await
            .map_err(|_| Error::closed(format!("the WebSocket to {} is closed", self.peer)))
    }

    fn close(&self) {
        let _ = self.tx.try_send(Msg::Close(None));
    }
}

/// How one WebSocket library's messages and errors map to a link's.
struct Adapter<M, E> {
    to_msg: fn(Msg) -> M,
    from_msg: fn(M) -> In,
    classify: fn(&E) -> Error,
}

/// Builds a link over a split WebSocket: a writer task (frames and pings) and a reader task
/// (frames, liveness, close).
fn link<S, R, M, E>(
    sink: S,
    stream: R,
    adapter: Adapter<M, E>,
    options: WsOptions,
    peer: String,
    codec: Codec,
) -> Link
where
    S: Sink<M> + Send + Unpin + 'static,
    R: Stream<Item = std::result::Result<M, E>> + Send + Unpin + 'static,
    M: Send + 'static,
    E: Send + 'static,
{
    let Adapter {
        to_msg,
        from_msg,
        classify,
    } = adapter;
    let (out_tx, mut out_rx) = mpsc::channel::<Msg>(256);
    let (in_tx, in_rx) = mpsc::channel::<Result<Bytes>>(256);
    let mut sink = sink;
    let pinger = out_tx.clone();
    let ping_every = options.ping_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ping_every);
        tick.tick().await;
        loop {
            let msg = tokio::select! {
                biased;
                m = out_rx.recv() => m,
                _ = tick.tick() => Some(Msg::Ping),
            };
            let Some(msg) = msg else {
                let _ = sink.send(to_msg(Msg::Close(None))).await;
                return;
            };
            let close = matches!(msg, Msg::Close(_));
            if sink.send(to_msg(msg)).await.is_err() || close {
                let _ = sink.close().await;
                return;
            }
        }
    });
    let mut stream = stream;
    let idle = ping_every * 3;
    tokio::spawn(async move {
        let mut close = None;
        loop {
            let next = tokio::time::timeout(idle, stream.next()).await;
            let item = match next {
                Err(_) => {
                    tracing::debug!("the WebSocket was silent for {idle:?}; closing it");
                    break;
                }
                Ok(None) => break,
                Ok(Some(item)) => item,
            };
            match item {
                Ok(m) => match from_msg(m) {
                    In::Frame(f) => {
                        if in_tx.send(Ok(f)).await.is_err() {
                            break;
                        }
                    }
                    In::Alive => {}
                    In::Closed => break,
                },
                Err(e) => {
                    let e = classify(&e);
                    if e.kind() == ErrorKind::TooLarge {
                        // Say why, with the status a WebSocket client understands.
                        close = Some((1009, e.message().to_owned()));
                    }
                    let _ = in_tx.send(Err(e)).await;
                    break;
                }
            }
        }
        let _ = pinger.try_send(Msg::Close(close));
    });
    Link {
        sender: Arc::new(Sender {
            tx: out_tx,
            peer: peer.clone(),
        }),
        receiver: Box::new(ChannelReceiver::new(in_rx, "ws")),
        info: LinkInfo {
            transport: "ws",
            peer,
            duplex: true,
            codec,
        },
    }
}

/// A close reason cut to what a close frame holds (123 bytes of UTF-8).
fn close_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn is_json(frame: &Bytes) -> bool {
    Codec::detect(frame) == Codec::Json
}

// ---- server (axum) -------------------------------------------------------------------------

fn axum_out(m: Msg) -> ws::Message {
    match m {
        Msg::Frame(f) if is_json(&f) => match String::from_utf8(f.to_vec()) {
            Ok(s) => ws::Message::Text(s.into()),
            Err(e) => ws::Message::Binary(Bytes::from(e.into_bytes())),
        },
        Msg::Frame(f) => ws::Message::Binary(f),
        Msg::Ping => ws::Message::Ping(Bytes::new()),
        Msg::Close(None) => ws::Message::Close(None),
        Msg::Close(Some((code, reason))) => ws::Message::Close(Some(ws::CloseFrame {
            code,
            reason: close_reason(reason).into(),
        })),
    }
}

fn axum_in(m: ws::Message) -> In {
    match m {
        ws::Message::Binary(b) => In::Frame(b),
        ws::Message::Text(t) => In::Frame(Bytes::copy_from_slice(t.as_bytes())),
        ws::Message::Ping(_) | ws::Message::Pong(_) => In::Alive,
        ws::Message::Close(_) => In::Closed,
    }
}

fn axum_err(e: &axum::Error) -> Error {
    let text = e.to_string();
    if text.contains("too long") || text.contains("too big") || text.contains("Message too") {
        Error::new(
            ErrorKind::TooLarge,
            format!("WebSocket message refused: {text}"),
        )
    } else {
        Error::new(ErrorKind::Closed, format!("WebSocket error: {text}"))
    }
}

/// The route `GET /v1/sync/ws`, handing each connection's link to `accept`; upgrades from web
/// pages of origins other than `allowed_origins` ([`WsSettings::origins`]) are refused.
pub fn router(accept: AcceptFn, options: WsOptions, allowed_origins: Arc<[String]>) -> Router {
    Router::new().route(
        "/v1/sync/ws",
        get(
            move |upgrade: WebSocketUpgrade,
                  headers: axum::http::HeaderMap,
                  ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>| {
                let accept = accept.clone();
                let allowed = allowed_origins.clone();
                async move {
                    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
                        let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
                        if !allowed.contains(&origin) {
                            tracing::debug!(peer = %addr, "a WebSocket upgrade from a web page of another origin was refused");
                            return forbidden_origin();
                        }
                    }
                    upgrade
                        .max_message_size(options.max_message_bytes)
                        .max_frame_size(options.max_message_bytes)
                        .on_upgrade(move |socket: WebSocket| async move {
                            let (sink, stream) = socket.split();
                            accept(link(
                                sink,
                                stream,
                                Adapter {
                                    to_msg: axum_out,
                                    from_msg: axum_in,
                                    classify: axum_err,
                                },
                                options,
                                addr.to_string(),
                                Codec::Binary,
                            ));
                        })
                }
            },
        ),
    )
}

fn forbidden_origin() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::FORBIDDEN,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        "{\"error\":{\"kind\":\"permission_denied\",\"message\":\"this origin may not open the \
         sync WebSocket; list it in [transports.websocket] allowed_origins\"}}",
    )
        .into_response()
}

// ---- client (tokio-tungstenite) ------------------------------------------------------------

fn tung_out(m: Msg) -> tungstenite::Message {
    match m {
        Msg::Frame(f) if is_json(&f) => match String::from_utf8(f.to_vec()) {
            Ok(s) => tungstenite::Message::Text(s.into()),
            Err(e) => tungstenite::Message::Binary(Bytes::from(e.into_bytes())),
        },
        Msg::Frame(f) => tungstenite::Message::Binary(f),
        Msg::Ping => tungstenite::Message::Ping(Bytes::new()),
        Msg::Close(None) => tungstenite::Message::Close(None),
        Msg::Close(Some((code, reason))) => {
            tungstenite::Message::Close(Some(tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: close_reason(reason).into(),
            }))
        }
    }
}

fn tung_in(m: tungstenite::Message) -> In {
    match m {
        tungstenite::Message::Binary(b) => In::Frame(b),
        tungstenite::Message::Text(t) => In::Frame(Bytes::copy_from_slice(t.as_bytes())),
        tungstenite::Message::Ping(_)
        | tungstenite::Message::Pong(_)
        | tungstenite::Message::Frame(_) => In::Alive,
        tungstenite::Message::Close(_) => In::Closed,
    }
}

fn tung_err(e: &tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Capacity(c) => Error::new(
            ErrorKind::TooLarge,
            format!("WebSocket message refused: {c}"),
        ),
        tungstenite::Error::Protocol(p) => {
            Error::new(ErrorKind::Closed, format!("the WebSocket closed: {p}"))
        }
        other => Error::new(ErrorKind::Closed, format!("WebSocket error: {other}")),
    }
}

/// The `ws://` transport (client side).
#[derive(Debug, Clone, Default)]
pub struct WsTransport {
    options: WsOptions,
    /// How `wss://` servers are verified when a remote names no `?ca=` (none: the system's
    /// certificates).
    default_tls: Option<Arc<rustls::ClientConfig>>,
}

impl WsTransport {
    /// A transport with these limits.
    pub fn new(options: WsOptions) -> Self {
        WsTransport {
            options,
            default_tls: None,
        }
    }

    /// Verifies `wss://` servers against the certificates of the PEM file `ca` only (unless a
    /// remote names its own `?ca=`).
    pub fn trusting_by_default(mut self, ca: &str) -> Result<Self> {
        self.default_tls = Some(trusting(ca)?);
        Ok(self)
    }
}

#[async_trait]
impl Transport for WsTransport {
    fn schemes(&self) -> Vec<&'static str> {
        vec!["ws", "wss"]
    }

    async fn connect(&self, url: &Url) -> Result<Link> {
        let mut target = url.clone();
        if target.path().is_empty() || target.path() == "/" {
            target.set_path("/v1/sync/ws");
        }
        // `wss://`: the system's trusted certificates, or only those of `?ca=<PEM file>`.
        let connector = match url.query_pairs().find(|(k, _)| k == "ca") {
            Some((_, ca)) if url.scheme() == "wss" => Some(trusting(&ca)?),
            Some(_) => {
                return Err(Error::invalid(format!(
                    "{}: ?ca= needs a wss:// URL",
                    syncline_core::transport::redacted_url(url.as_str())
                )));
            }
            None => self.default_tls.clone(),
        }
        .map(tokio_tungstenite::Connector::Rustls);
        target.set_query(None);
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(self.options.max_message_bytes))
            .max_frame_size(Some(self.options.max_message_bytes));
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            target.as_str(),
            Some(config),
            true,
            connector,
        )
        .await
        .map_err(|e| {
            let kind = match &e {
                tungstenite::Error::Io(_) => ErrorKind::Unavailable,
                tungstenite::Error::Http(r) if r.status().as_u16() == 404 => ErrorKind::Unavailable,
                _ => ErrorKind::Unavailable,
            };
            Error::new(
                kind,
                format!(
                    "cannot open a WebSocket to {target}: {}",
                    syncline_core::transport::with_causes(&e)
                ),
            )
        })?;
        let (sink, stream) = socket.split();
        Ok(link(
            sink,
            stream,
            Adapter {
                to_msg: tung_out,
                from_msg: tung_in,
                classify: tung_err,
            },
            self.options,
            target.to_string(),
            Codec::Binary,
        ))
    }
}

impl WsOptions {
    /// The options for a node: messages up to its frame size.
    pub fn for_node(node: &syncline_core::NodeContext) -> Self {
        WsOptions {
            max_message_bytes: node.max_frame_bytes,
            ..WsOptions::default()
        }
    }
}

/// Registers the WebSocket transport (`[transports.websocket]`: [`WsSettings`]); its server
/// side is [`router`], mounted on the node's HTTP server.
pub fn register(backends: &mut syncline_core::Backends) {
    backends.register_transport(syncline_core::TransportKind::backend(
        "websocket",
        &["ws", "wss"],
        |node, _store, settings: WsSettings| {
            let t = WsTransport::new(WsOptions::for_node(&node));
            let built = match &settings.ca {
                Some(ca) => t.trusting_by_default(ca),
                None => Ok(t),
            };
            futures::future::ready(built.map(|t| Arc::new(t) as Arc<dyn Transport>))
        },
    ));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn upgrades_from_pages_of_other_origins_are_refused() {
        let accept: AcceptFn = Arc::new(|link: Link| drop(link));
        let settings = WsSettings {
            allowed_origins: vec!["https://App.example.com/".into()],
            ..WsSettings::default()
        };
        let app = router(accept, WsOptions::default(), settings.origins());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, service).await.unwrap();
        });
        let open = |origin: Option<&'static str>| async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = format!("ws://{addr}/v1/sync/ws")
                .into_client_request()
                .unwrap();
            if let Some(o) = origin {
                req.headers_mut().insert("origin", o.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(open(None).await, 101, "a reactor sends no Origin");
        assert_eq!(open(Some("https://app.example.com")).await, 101);
        assert_eq!(open(Some("https://evil.example")).await, 403);
        assert_eq!(open(Some("http://127.0.0.1:8080")).await, 403);
        let bad = WsSettings {
            allowed_origins: vec!["https://a.example/path".into()],
            ..WsSettings::default()
        };
        let e = syncline_core::Settings::check(&bad, "transports.websocket").unwrap_err();
        assert!(e.to_string().contains("allowed_origins[0]"), "{e}");
    }

    #[tokio::test]
    async fn a_message_over_the_limit_closes_with_1009() {
        let accept: AcceptFn = Arc::new(|link: Link| {
            // Keep the link alive until the socket closes.
            tokio::spawn(async move {
                let mut receiver = link.receiver;
                while receiver.recv().await.is_some() {}
                drop(link.sender);
            });
        });
        let app = router(
            accept,
            WsOptions {
                max_message_bytes: 1024,
                ..Default::default()
            },
            Arc::from([]),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, service).await.unwrap();
        });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sync/ws"))
            .await
            .unwrap();
        ws.send(tungstenite::Message::Binary(Bytes::from(vec![0u8; 4096])))
            .await
            .unwrap();
        let close = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                if let Ok(tungstenite::Message::Close(frame)) = m {
                    return frame;
                }
            }
            None
        })
        .await
        .unwrap()
        .expect("a close frame with a status");
        assert_eq!(u16::from(close.code), 1009, "{close:?}");
        assert!(!close.reason.is_empty());
    }
}
