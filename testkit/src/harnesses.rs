//! Transport harnesses: start reactors serving memory, HTTP, WebSocket, QUIC or Redis pub/sub
//! on loopback, for the transport suite and other tests.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use syncline_core::transport::parse_url;
use syncline_core::{DynStore, Error, ErrorKind, Reactor, ReactorConfig, Result, Transport};
use syncline_transport_http::{HttpTransport, Server, ServerOptions};
use syncline_transport_memory::MemoryNetwork;
use syncline_transport_quic::{QuicOptions, QuicTransport};
use syncline_transport_redis::RedisTransport;
use syncline_transport_websocket::{WsOptions, WsTransport};

use crate::redis_server::RedisServer;
use crate::transport_suite::{Capabilities, Node, TransportHarness};
pub use syncline_conformance::listening::{ListeningHarness, build, free_tcp, listening, retrying};

fn free_udp() -> Result<u16> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::internal(format!("no free port: {e}")))
}

/// Binds a TCP listener at `addr`, retrying while a crashed server still holds it.
async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    retrying(|| tokio::net::TcpListener::bind(addr))
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {addr}: {e}"),
            )
        })
}

fn socket_addr(url: &str) -> Result<SocketAddr> {
    let u = parse_url(url)?;
    let host = u
        .host_str()
        .ok_or_else(|| Error::invalid(format!("{url} has no host")))?;
    format!("{host}:{}", u.port().unwrap_or(80))
        .parse()
        .map_err(|e| Error::invalid(format!("{url}: {e}")))
}

fn accept(reactor: &Reactor) -> syncline_core::AcceptFn {
    let r = reactor.clone();
    Arc::new(move |link| {
        r.serve(link);
    })
}

/// `mem://` on one memory network.
#[derive(Debug, Default)]
pub struct MemoryHarness {
    net: MemoryNetwork,
}

#[syncline_core::async_trait]
impl TransportHarness for MemoryHarness {
    fn name(&self) -> String {
        "memory".into()
    }
    async fn fresh_url(&self, name: &str) -> Result<String> {
        Ok(format!("mem://{name}"))
    }
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node> {
        let reactor = build(name, store, config, self.net.transport(name)).await?;
        listening(reactor, url).await
    }
    fn dialer(&self) -> Arc<dyn Transport> {
        self.net.transport("raw-client")
    }
}

/// `http://` on loopback, served by the HTTP transport's axum routes.
#[derive(Debug, Default)]
pub struct HttpHarness;

#[syncline_core::async_trait]
impl TransportHarness for HttpHarness {
    fn name(&self) -> String {
        "http".into()
    }
    async fn fresh_url(&self, _name: &str) -> Result<String> {
        Ok(format!("http://127.0.0.1:{}", free_tcp()?))
    }
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node> {
        let options = ServerOptions {
            max_body_bytes: config.sync.max_frame_bytes,
            ..ServerOptions::default()
        };
        let transport = Arc::new(HttpTransport::new(config.sync.request_timeout)?);
        let reactor = build(name, store, config, transport).await?;
        let listener = bind_tcp(socket_addr(url)?).await?;
        let server = Server::serve(
            listener,
            syncline_transport_http::router(accept(&reactor), options),
        )?;
        Ok(Node {
            reactor,
            url: url.to_owned(),
            guard: Box::new(server),
        })
    }
    fn dialer(&self) -> Arc<dyn Transport> {
        Arc::new(HttpTransport::new(Duration::from_secs(10)).expect("an HTTP client"))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default().duplex(false)
    }
}

/// `ws://` on loopback, upgraded by the WebSocket transport's axum route.
#[derive(Debug, Default)]
pub struct WsHarness;

#[syncline_core::async_trait]
impl TransportHarness for WsHarness {
    fn name(&self) -> String {
        "websocket".into()
    }
    async fn fresh_url(&self, _name: &str) -> Result<String> {
        Ok(format!("ws://127.0.0.1:{}", free_tcp()?))
    }
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node> {
        let options = WsOptions {
            max_message_bytes: config.sync.max_frame_bytes,
            ..WsOptions::default()
        };
        let reactor = build(name, store, config, Arc::new(WsTransport::new(options))).await?;
        let listener = bind_tcp(socket_addr(url)?).await?;
        let server = Server::serve(
            listener,
            syncline_transport_websocket::router(accept(&reactor), options, Arc::from([])),
        )?;
        Ok(Node {
            reactor,
            url: url.to_owned(),
            guard: Box::new(server),
        })
    }
    fn dialer(&self) -> Arc<dyn Transport> {
        Arc::new(WsTransport::new(WsOptions::default()))
    }
}

/// `quic://` on loopback with one test certificate that every node presents and trusts.
#[derive(Debug)]
pub struct QuicHarness {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl QuicHarness {
    /// Writes a self-signed certificate for the nodes.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| Error::internal(format!("temp dir: {e}")))?;
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .map_err(|e| Error::internal(format!("certificate: {e}")))?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem())
            .and_then(|_| std::fs::write(&key, ck.signing_key.serialize_pem()))
            .map_err(|e| Error::internal(format!("writing the certificate: {e}")))?;
        Ok(QuicHarness {
            _dir: dir,
            cert,
            key,
        })
    }

    fn options(&self, max: usize) -> QuicOptions {
        QuicOptions {
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            ca: Some(self.cert.clone()),
            max_frame_bytes: max,
            ..QuicOptions::default()
        }
    }
}

#[syncline_core::async_trait]
impl TransportHarness for QuicHarness {
    fn name(&self) -> String {
        "quic".into()
    }
    async fn fresh_url(&self, _name: &str) -> Result<String> {
        Ok(format!("quic://127.0.0.1:{}", free_udp()?))
    }
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node> {
        let transport = Arc::new(QuicTransport::new(
            self.options(config.sync.max_frame_bytes),
        ));
        let reactor = build(name, store, config, transport).await?;
        listening(reactor, url).await
    }
    fn dialer(&self) -> Arc<dyn Transport> {
        Arc::new(QuicTransport::new(self.options(32 << 20)))
    }
}

/// `redis://` pub/sub through a `redis-server` the harness starts.
#[derive(Debug)]
pub struct RedisHarness {
    server: RedisServer,
}

impl RedisHarness {
    /// Starts a `redis-server` for the nodes.
    pub fn new() -> Result<Self> {
        Ok(RedisHarness {
            server: RedisServer::start()?,
        })
    }
}

#[syncline_core::async_trait]
impl TransportHarness for RedisHarness {
    fn name(&self) -> String {
        "redis".into()
    }
    async fn fresh_url(&self, name: &str) -> Result<String> {
        Ok(format!("{}?to={name}", self.server.url()))
    }
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node> {
        let reactor = build(name, store, config, Arc::new(RedisTransport::new())).await?;
        let target = parse_url(url)?
            .query_pairs()
            .find(|(k, _)| k == "to")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| name.to_owned());
        reactor
            .listen(&format!("{}?as={target}", self.server.url()))
            .await?;
        Ok(Node {
            reactor,
            url: url.to_owned(),
            guard: Box::new(()),
        })
    }
    fn dialer(&self) -> Arc<dyn Transport> {
        Arc::new(RedisTransport::new())
    }
}
