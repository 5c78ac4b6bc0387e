//! The transport traits: links that move frames, dialled and accepted by URL scheme.
//!
//! A transport knows nothing of operations, cursors or retries: it connects to a URL, accepts
//! connections, and moves whole frames (byte buffers) both ways. Everything else lives in the
//! session and the sync manager and is shared by all transports.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use url::Url;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::Codec;

/// Facts about a link.
#[derive(Clone, Debug)]
pub struct LinkInfo {
    /// The transport's scheme (`mem`, `http`, `ws`, ...).
    pub transport: &'static str,
    /// The peer's address, for logs.
    pub peer: String,
    /// Whether the responder may send requests and notifications on its own (not HTTP).
    pub duplex: bool,
    /// The encoding to send with.
    pub codec: Codec,
}

/// The sending half of a link.
#[async_trait]
pub trait FrameSender: Send + Sync + fmt::Debug {
    /// Sends one frame; it may be queued. Fails with `Closed` once the link is closed.
    async fn send(&self, frame: Bytes) -> Result<()>;

    /// Closes the link; the peer's receiver ends.
    fn close(&self);
}

/// The receiving half of a link.
#[async_trait]
pub trait FrameReceiver: Send + fmt::Debug {
    /// The next frame; `None` once the link is closed. An `Err` reports a frame the transport
    /// refused (for example one over its size limit); the link may still be usable.
    async fn recv(&mut self) -> Option<Result<Bytes>>;
}

/// A receiver fed by a bounded channel: the receiving half most transports give their links
/// (a reader task pushes frames, or transport errors, into the channel's sender).
pub struct ChannelReceiver {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes>>,
    transport: &'static str,
}

impl ChannelReceiver {
    /// A receiver reading `rx`, named after its transport in debug output.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<Bytes>>, transport: &'static str) -> Self {
        ChannelReceiver { rx, transport }
    }
}

impl fmt::Debug for ChannelReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelReceiver({})", self.transport)
    }
}

#[async_trait]
impl FrameReceiver for ChannelReceiver {
    async fn recv(&mut self) -> Option<Result<Bytes>> {
        self.rx.recv().await
    }
}

/// A connection that moves frames both ways.
#[derive(Debug)]
pub struct Link {
    /// Sends frames.
    pub sender: Arc<dyn FrameSender>,
    /// Receives frames.
    pub receiver: Box<dyn FrameReceiver>,
    /// Facts about it.
    pub info: LinkInfo,
}

/// Hands a link accepted by a server mounted elsewhere (HTTP, WebSocket) to a reactor
/// (`move |link| reactor.serve(link)`).
pub type AcceptFn = Arc<dyn Fn(Link) + Send + Sync>;

/// Accepts incoming links.
#[async_trait]
pub trait Acceptor: Send + fmt::Debug {
    /// The next incoming link.
    async fn accept(&mut self) -> Result<Link>;

    /// The URL peers dial to reach this acceptor (with the real port if 0 was asked for).
    fn local_url(&self) -> Url;
}

/// An acceptor fed by a bounded channel of links: what most transports return from `listen`
/// (an accept task pushes each established link into the channel's sender). Dropping it runs
/// the transport's clean-up (stop the accept task, close the endpoint, free the name).
pub struct ChannelAcceptor {
    rx: tokio::sync::mpsc::Receiver<Link>,
    url: Url,
    shown: String,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl ChannelAcceptor {
    /// An acceptor of the links sent into `rx`, listening at `url`.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Link>, url: Url) -> Self {
        ChannelAcceptor {
            shown: url.to_string(),
            rx,
            url,
            on_drop: None,
        }
    }

    /// How errors and debug output name the listener, when the URL holds a secret.
    pub fn shown_as(mut self, shown: impl Into<String>) -> Self {
        self.shown = shown.into();
        self
    }

    /// Runs `f` when the acceptor is dropped.
    pub fn on_drop(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_drop = Some(Box::new(f));
        self
    }
}

impl fmt::Debug for ChannelAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelAcceptor({})", self.shown)
    }
}

impl Drop for ChannelAcceptor {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[async_trait]
impl Acceptor for ChannelAcceptor {
    async fn accept(&mut self) -> Result<Link> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| Error::closed(format!("{} stopped listening", self.shown)))
    }

    fn local_url(&self) -> Url {
        self.url.clone()
    }
}

/// A transport: dials and accepts links for its URL schemes.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The URL schemes it handles.
    fn schemes(&self) -> Vec<&'static str>;

    /// Dials a link.
    async fn connect(&self, url: &Url) -> Result<Link>;

    /// Listens for links. Transports whose server is mounted elsewhere (HTTP, WebSocket on the
    /// node's axum server) refuse.
    async fn listen(&self, url: &Url) -> Result<Box<dyn Acceptor>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the {} transport cannot listen on {url} by itself; it is served by the node",
                url.scheme()
            ),
        ))
    }
}

/// The transports a reactor can use, by scheme.
#[derive(Clone, Debug, Default)]
pub struct TransportRegistry {
    by_scheme: BTreeMap<String, Arc<dyn Transport>>,
}

impl TransportRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        TransportRegistry::default()
    }

    /// Registers a transport for all its schemes.
    pub fn register(&mut self, transport: Arc<dyn Transport>) {
        for s in transport.schemes() {
            self.by_scheme.insert(s.to_owned(), transport.clone());
        }
    }

    /// The registered schemes.
    pub fn schemes(&self) -> Vec<String> {
        self.by_scheme.keys().cloned().collect()
    }

    /// The transport for a URL.
    pub fn for_url(&self, url: &Url) -> Result<&Arc<dyn Transport>> {
        self.by_scheme.get(url.scheme()).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "no transport for {url}: the scheme {:?} is not compiled in or not loaded \
                     (known schemes: {})",
                    url.scheme(),
                    if self.by_scheme.is_empty() {
                        "none".to_owned()
                    } else {
                        self.schemes().join(", ")
                    }
                ),
            )
        })
    }

    /// Dials a URL with the transport for its scheme.
    pub async fn connect(&self, url: &Url) -> Result<Link> {
        self.for_url(url)?.connect(url).await
    }

    /// Listens on a URL with the transport for its scheme.
    pub async fn listen(&self, url: &Url) -> Result<Box<dyn Acceptor>> {
        self.for_url(url)?.listen(url).await
    }
}

/// Parses a remote or listen URL with a clear error.
pub fn parse_url(s: &str) -> Result<Url> {
    Url::parse(s).map_err(|e| Error::invalid(format!("{s:?} is not a valid URL: {e}")))
}

/// `url` with its password, if it has one, shown as `***` (for logs, errors and printed
/// configuration); anything that does not parse as a URL is returned as it is.
pub fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The certificates of the PEM file `ca` as a root store: what a remote's `?ca=<file>` trusts
/// (instead of the system's certificates). Errors name the file and what is wrong with it.
pub fn trusted_roots(ca: &str) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| Error::invalid(format!("?ca={ca}: {why}"));
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).map_err(|e| bad(format!("cannot read it: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(roots)
}

/// A TLS client configuration that trusts only the certificates of the PEM file `ca`.
pub fn trusting_client_config(ca: &str) -> Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(trusted_roots(ca)?)
        .with_no_client_auth())
}

/// An error with its causes, for messages: HTTP and WebSocket client errors say only "error
/// sending request" themselves; their causes say which certificate check failed, or that the
/// connection was refused.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
