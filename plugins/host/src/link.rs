//! A syncline transport over blocking framed links (a transport plugin, or a plugin's Rust
//! type used directly).
//!
//! Each link gets a reader thread that waits for frames with a short timeout (so it notices when
//! the link is dropped) and hands them to the session; sends run on tokio's blocking pool.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use syncline_core::protocol::Codec;
use syncline_core::{
    Acceptor, ChannelReceiver, Error, ErrorKind, FrameSender, Link, LinkInfo, Result, Transport,
};
use syncline_plugin_api::{
    ERR_CLOSED, ERR_INVALID, ERR_PANIC, ERR_TIMEOUT, ERR_UNAVAILABLE, FrameLink, FrameListener,
    Host, PluginError, Received, TransportPlugin,
};
use tokio::sync::mpsc;
use url::Url;

const POLL: Duration = Duration::from_millis(200);

/// Blocking connect and listen, by URL.
pub trait BlockingTransport: Send + Sync + 'static {
    /// The scheme.
    fn scheme(&self) -> String;
    /// Dials.
    fn connect(&self, url: &str) -> std::result::Result<Box<dyn FrameLink>, PluginError>;
    /// Listens.
    fn listen(&self, url: &str) -> std::result::Result<Box<dyn FrameListener>, PluginError>;
}

/// A transport plugin's Rust type used directly, without the C boundary.
#[derive(Debug, Default)]
pub struct Native<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Native<T> {
    /// The plugin type `T`.
    pub fn new() -> Self {
        Native(std::marker::PhantomData)
    }
}

impl<T: TransportPlugin + 'static> BlockingTransport for Native<T> {
    fn scheme(&self) -> String {
        T::SCHEME.to_owned()
    }
    fn connect(&self, url: &str) -> std::result::Result<Box<dyn FrameLink>, PluginError> {
        T::connect(url, &Host::detached())
    }
    fn listen(&self, url: &str) -> std::result::Result<Box<dyn FrameListener>, PluginError> {
        T::listen(url, &Host::detached())
    }
}

fn to_error(scheme: &str, what: &str, e: PluginError) -> Error {
    let kind = match e.code {
        ERR_INVALID => ErrorKind::InvalidInput,
        ERR_CLOSED => ErrorKind::Closed,
        ERR_TIMEOUT => ErrorKind::Timeout,
        ERR_UNAVAILABLE => ErrorKind::Unavailable,
        ERR_PANIC => ErrorKind::Internal,
        _ => ErrorKind::Unavailable,
    };
    Error::new(
        kind,
        format!("{scheme} plugin transport: {what}: {}", e.message),
    )
}

/// The core transport over a blocking one.
pub struct LinkTransport<B> {
    inner: Arc<B>,
    scheme: &'static str,
}

impl<B: BlockingTransport> fmt::Debug for LinkTransport<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkTransport({})", self.scheme)
    }
}

impl<B: BlockingTransport> LinkTransport<B> {
    /// Wraps a blocking transport.
    pub fn new(inner: B) -> Self {
        // The scheme lives as long as the process, like the plugin that defines it.
        let scheme: &'static str = Box::leak(inner.scheme().into_boxed_str());
        LinkTransport {
            inner: Arc::new(inner),
            scheme,
        }
    }
}

struct Shared {
    link: Box<dyn FrameLink>,
    closed: AtomicBool,
}

struct Sender {
    shared: Arc<Shared>,
    scheme: &'static str,
    peer: String,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Sender({})", self.scheme, self.peer)
    }
}

#[async_trait]
impl FrameSender for Sender {
    async fn send(&self, frame: Bytes) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::closed(format!(
                "the link to {} is closed",
                self.peer
            )));
        }
        let shared = self.shared.clone();
        let scheme = self.scheme;
        tokio::task::spawn_blocking(move || shared.link.send(&frame))
            .await
            .map_err(|e| Error::internal(format!("a plugin send panicked: {e}")))?
            .map_err(|e| to_error(scheme, "send", e))
    }

    fn close(&self) {
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            self.shared.link.shutdown();
        }
    }
}

fn wrap(link: Box<dyn FrameLink>, scheme: &'static str, peer: String) -> Link {
    let shared = Arc::new(Shared {
        link,
        closed: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel(256);
    let reader = shared.clone();
    std::thread::Builder::new()
        .name(format!("syncline-{scheme}-recv"))
        .spawn(move || {
            loop {
                if tx.is_closed() || reader.closed.load(Ordering::SeqCst) {
                    break;
                }
                match reader.link.recv(POLL) {
                    Ok(Received::Frame(f)) => {
                        if tx.blocking_send(Ok(Bytes::from(f))).is_err() {
                            break;
                        }
                    }
                    Ok(Received::Timeout) => {}
                    Ok(Received::Closed) => break,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(to_error(scheme, "recv", e)));
                        break;
                    }
                }
            }
            reader.closed.store(true, Ordering::SeqCst);
            reader.link.shutdown();
        })
        .ok();
    Link {
        sender: Arc::new(Sender {
            shared,
            scheme,
            peer: peer.clone(),
        }),
        receiver: Box::new(ChannelReceiver::new(rx, scheme)),
        info: LinkInfo {
            transport: scheme,
            peer,
            duplex: true,
            codec: Codec::Binary,
        },
    }
}

#[async_trait]
impl<B: BlockingTransport> Transport for LinkTransport<B> {
    fn schemes(&self) -> Vec<&'static str> {
        vec![self.scheme]
    }

    async fn connect(&self, url: &Url) -> Result<Link> {
        let inner = self.inner.clone();
        let u = url.to_string();
        let scheme = self.scheme;
        let link = tokio::task::spawn_blocking(move || inner.connect(&u))
            .await
            .map_err(|e| Error::internal(format!("a plugin connect panicked: {e}")))?
            .map_err(|e| to_error(scheme, &format!("connecting to {url}"), e))?;
        Ok(wrap(link, scheme, url.to_string()))
    }

    async fn listen(&self, url: &Url) -> Result<Box<dyn Acceptor>> {
        let inner = self.inner.clone();
        let u = url.to_string();
        let scheme = self.scheme;
        let listener = tokio::task::spawn_blocking(move || inner.listen(&u))
            .await
            .map_err(|e| Error::internal(format!("a plugin listen panicked: {e}")))?
            .map_err(|e| to_error(scheme, &format!("listening on {url}"), e))?;
        let local = Url::parse(&listener.local_url()).unwrap_or_else(|_| url.clone());
        let (tx, rx) = mpsc::channel(64);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let peer = local.to_string();
        std::thread::Builder::new()
            .name(format!("syncline-{scheme}-accept"))
            .spawn(move || {
                while !stopped.load(Ordering::SeqCst) && !tx.is_closed() {
                    match listener.accept(POLL) {
                        Ok(Some(link)) => {
                            if tx
                                .blocking_send(Ok(wrap(link, scheme, peer.clone())))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx.blocking_send(Err(to_error(scheme, "accept", e)));
                            std::thread::sleep(POLL);
                        }
                    }
                }
                listener.close();
            })
            .map_err(|e| Error::internal(format!("spawning the accept thread: {e}")))?;
        Ok(Box::new(PluginAcceptor {
            rx,
            url: local,
            stop,
        }))
    }
}

struct PluginAcceptor {
    rx: mpsc::Receiver<Result<Link>>,
    url: Url,
    stop: Arc<AtomicBool>,
}

impl fmt::Debug for PluginAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginAcceptor({})", self.url)
    }
}

impl Drop for PluginAcceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Acceptor for PluginAcceptor {
    async fn accept(&mut self) -> Result<Link> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(Error::closed(format!("{} stopped listening", self.url))),
        }
    }

    fn local_url(&self) -> Url {
        self.url.clone()
    }
}
