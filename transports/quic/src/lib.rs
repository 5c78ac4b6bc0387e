//! The QUIC transport: `quic://host:port` remotes, with quinn and rustls (TLS 1.3).
//!
//! Each request travels on its own bidirectional stream, and its response comes back on the
//! same stream, so a slow request never holds up another; notifications go on their own
//! unidirectional streams. Both sides may open streams, so both reactors call each other on
//! one connection. A frame is a stream's whole content, read up to the frame limit; a request
//! over the limit is answered on its stream with a `too_large` error and the connection stays.
//!
//! Certificates come from PEM files (`cert`, `key`); without them the listener makes a
//! self-signed certificate for `localhost`, `127.0.0.1` and `::1` (local use). Clients trust a
//! CA file (`ca`, or `?ca=` in the URL), or, for local use only, anything (`insecure`, or
//! `?insecure=true`).

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use syncline_core::limits::ConnectionCounter;
use syncline_core::protocol::{
    Body, Codec, Envelope, FrameHead, FrameKind, HEADER_LEN, PROTOCOL_VERSION,
};
use syncline_core::{
    Acceptor, ChannelAcceptor, Error, ErrorKind, FrameReceiver, FrameSender, Link, LinkInfo,
    Result, Transport, WireError,
};
use tokio::sync::mpsc;
use url::Url;

mod options;
pub use options::{QuicOptions, register};

const ALPN: &[u8] = b"syncline/1";

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, e: impl fmt::Display) -> Error {
    Error::invalid(format!("QUIC TLS setup: {what}: {e}"))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(&format!("reading {}", path.display()), e))?
        .collect();
    let certs = certs.map_err(|e| tls_err(&format!("parsing {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(tls_err(
            &format!("{}", path.display()),
            "the file holds no PEM certificate",
        ));
    }
    Ok(certs)
}

/// A certificate verifier that accepts any server certificate but still checks handshake
/// signatures (for `insecure` local use).
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn transport_config(o: &QuicOptions) -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(o.keep_alive));
    t.max_idle_timeout(Some(
        o.idle_timeout
            .try_into()
            .map_err(|e| Error::invalid(format!("QUIC idle timeout: {e}")))?,
    ));
    t.max_concurrent_bidi_streams(1024u32.into());
    t.max_concurrent_uni_streams(256u32.into());
    Ok(Arc::new(t))
}

fn client_config(
    o: &QuicOptions,
    ca: Option<&Path>,
    insecure: bool,
) -> Result<quinn::ClientConfig> {
    let provider = crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("protocol versions", e))?;
    let mut tls = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let Some(ca) = ca else {
            return Err(Error::invalid(
                "a quic:// remote needs a CA file to trust (quic.ca in the config or ?ca=PATH \
                 in the URL), or insecure=true for local use",
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| tls_err(&format!("adding {} to the trust store", ca.display()), e))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| tls_err("client config", e))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport_config(o)?);
    Ok(c)
}

/// A self-signed certificate for local use, with its PEM text.
pub fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String)> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(|e| tls_err("generating a self-signed certificate", e))?;
    let pem = ck.cert.pem();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    Ok((vec![cert], key, pem))
}

fn server_config(o: &QuicOptions) -> Result<(quinn::ServerConfig, Option<String>)> {
    let (certs, key, pem) = match (&o.cert, &o.key) {
        (Some(c), Some(k)) => {
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| tls_err(&format!("reading the key {}", k.display()), e))?;
            (load_certs(c)?, key, None)
        }
        (None, None) => {
            let (c, k, pem) = self_signed()?;
            (c, k, Some(pem))
        }
        _ => {
            return Err(Error::invalid(
                "QUIC needs both cert and key (or neither, for a self-signed certificate)",
            ));
        }
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("the certificate and key", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| tls_err("server config", e))?;
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(quic));
    s.transport_config(transport_config(o)?);
    Ok((s, pem))
}

/// The endpoint configuration, with stateless-reset tokens derived from `reset_key` when one
/// is given (see [`QuicOptions::reset_key`]).
fn endpoint_config(reset_key: Option<&[u8; 32]>) -> quinn::EndpointConfig {
    match reset_key {
        Some(k) => {
            quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k)))
        }
        None => quinn::EndpointConfig::default(),
    }
}

// ---- the link ------------------------------------------------------------------------------

struct Shared {
    conn: Connection,
    /// Send halves of requests received, waiting for their responses, by correlation id.
    responders: Mutex<HashMap<u64, SendStream>>,
    inbound: mpsc::Sender<Result<Bytes>>,
    max: usize,
    peer: String,
}

fn error_frame(id: u64, e: &Error, codec: Codec) -> Option<Bytes> {
    codec
        .encode(&Envelope {
            v: PROTOCOL_VERSION,
            id,
            body: Body::Error(WireError::from(e)),
        })
        .ok()
        .map(Bytes::from)
}

fn closed(e: impl fmt::Display, peer: &str) -> Error {
    Error::new(
        ErrorKind::Closed,
        format!("the QUIC connection to {peer} failed: {e}"),
    )
}

impl Shared {
    /// Reads one frame from a stream: its header first (so an oversize request can still be
    /// answered by id), then the rest up to the limit.
    async fn read_frame(
        &self,
        recv: &mut RecvStream,
    ) -> std::result::Result<Bytes, (Option<FrameHead>, Error)> {
        // A binary frame's header first, so that an oversize request can still be answered by
        // id (a JSON frame shorter than a header is read whole below).
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match recv.read(&mut head[got..]).await {
                Ok(Some(n)) => got += n,
                Ok(None) => break,
                Err(e) => return Err((None, closed(e, &self.peer))),
            }
        }
        if got == 0 {
            return Err((None, Error::malformed("a stream ended before a frame")));
        }
        let peeked = FrameHead::peek(&head[..got]);
        let rest = self.max.saturating_sub(got);
        let body = if got < HEADER_LEN {
            Vec::new()
        } else {
            match recv.read_to_end(rest).await {
                Ok(body) => body,
                Err(quinn::ReadToEndError::TooLong) => {
                    return Err((
                        peeked,
                        Error::new(
                            ErrorKind::TooLarge,
                            format!("a frame exceeds the limit of {} bytes", self.max),
                        ),
                    ));
                }
                Err(e) => return Err((peeked, closed(e, &self.peer))),
            }
        };
        let mut frame = Vec::with_capacity(got + body.len());
        frame.extend_from_slice(&head[..got]);
        frame.extend_from_slice(&body);
        Ok(Bytes::from(frame))
    }

    async fn serve_bi(self: Arc<Self>, mut send: SendStream, mut recv: RecvStream) {
        match self.read_frame(&mut recv).await {
            Ok(frame) => {
                match FrameHead::peek(&frame) {
                    Some(h) if h.kind == FrameKind::Request => {
                        self.responders.lock().insert(h.id, send);
                    }
                    // Not a request (or not a frame, which the session answers with id 0 on
                    // a stream of its own): nothing will answer on this stream.
                    _ => {
                        let _ = send.finish();
                    }
                }
                let _ = self.inbound.send(Ok(frame)).await;
            }
            Err((head, e)) => {
                // Answered here (the frame never reaches the session): by id when the header
                // was read, else with id 0, so that a raw client still learns what was wrong.
                let (id, codec) = head.map_or((0, Codec::Binary), |h| (h.id, h.codec));
                if let Some(f) = error_frame(id, &e, codec) {
                    let _ = send.write_all(&f).await;
                }
                let _ = send.finish();
            }
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                bi = self.conn.accept_bi() => match bi {
                    Ok((send, recv)) => {
                        tokio::spawn(self.clone().serve_bi(send, recv));
                    }
                    Err(_) => break,
                },
                uni = self.conn.accept_uni() => match uni {
                    Ok(mut recv) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            if let Ok(frame) = me.read_frame(&mut recv).await {
                                let _ = me.inbound.send(Ok(frame)).await;
                            }
                        });
                    }
                    Err(_) => break,
                },
            }
        }
        // Dropping the last inbound sender ends the receiver.
    }
}

struct QuicSender(Arc<Shared>);

impl fmt::Debug for QuicSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuicSender({})", self.0.peer)
    }
}

#[async_trait]
impl FrameSender for QuicSender {
    async fn send(&self, frame: Bytes) -> Result<()> {
        let s = &self.0;
        if let Some(reason) = s.conn.close_reason() {
            return Err(closed(reason, &s.peer));
        }
        match FrameHead::peek(&frame).map(|h| (h.kind, h.id)) {
            // A request: its own stream; the response comes back on it.
            Some((FrameKind::Request, _)) | None => {
                let (mut send, mut recv) =
                    s.conn.open_bi().await.map_err(|e| closed(e, &s.peer))?;
                send.write_all(&frame)
                    .await
                    .map_err(|e| closed(e, &s.peer))?;
                send.finish().map_err(|e| closed(e, &s.peer))?;
                let me = s.clone();
                tokio::spawn(async move {
                    match me.read_frame(&mut recv).await {
                        Ok(answer) => {
                            let _ = me.inbound.send(Ok(answer)).await;
                        }
                        Err((_, e)) => tracing::debug!(error = %e, "no answer on a QUIC stream"),
                    }
                });
            }
            // A response: on its request's stream.
            Some((FrameKind::Response | FrameKind::Error, id)) => {
                let stream = s.responders.lock().remove(&id);
                let mut send = match stream {
                    Some(st) => st,
                    None => s.conn.open_uni().await.map_err(|e| closed(e, &s.peer))?,
                };
                send.write_all(&frame)
                    .await
                    .map_err(|e| closed(e, &s.peer))?;
                let _ = send.finish();
            }
            // A notification: its own one-way stream.
            Some((FrameKind::Notification, _)) => {
                let mut send = s.conn.open_uni().await.map_err(|e| closed(e, &s.peer))?;
                send.write_all(&frame)
                    .await
                    .map_err(|e| closed(e, &s.peer))?;
                let _ = send.finish();
            }
        }
        Ok(())
    }

    fn close(&self) {
        self.0.conn.close(0u32.into(), b"closed");
    }
}

/// Frames received on the connection's streams; ends when the connection closes (the peer
/// closed it, reset it after a restart, or it went idle), even though streams that were
/// being read may still hold a sender.
struct QuicReceiver {
    frames: mpsc::Receiver<Result<Bytes>>,
    conn: Connection,
}

impl fmt::Debug for QuicReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QuicReceiver")
    }
}

#[async_trait]
impl FrameReceiver for QuicReceiver {
    async fn recv(&mut self) -> Option<Result<Bytes>> {
        tokio::select! {
            biased;
            frame = self.frames.recv() => frame,
            reason = self.conn.closed() => {
                tracing::debug!(peer = %self.conn.remote_address(), %reason, "QUIC connection closed");
                None
            }
        }
    }
}

fn link(conn: Connection, max: usize) -> Link {
    let (tx, rx) = mpsc::channel(1024);
    let peer = conn.remote_address().to_string();
    let receiver = QuicReceiver {
        frames: rx,
        conn: conn.clone(),
    };
    let shared = Arc::new(Shared {
        conn,
        responders: Mutex::new(HashMap::new()),
        inbound: tx,
        max,
        peer: peer.clone(),
    });
    tokio::spawn(shared.clone().accept_loop());
    Link {
        sender: Arc::new(QuicSender(shared)),
        receiver: Box::new(receiver),
        info: LinkInfo {
            transport: "quic",
            peer: format!("quic://{peer}"),
            duplex: true,
            codec: Codec::Binary,
        },
    }
}

// ---- the transport -------------------------------------------------------------------------

/// The `quic://` transport.
pub struct QuicTransport {
    options: QuicOptions,
    client: Mutex<Option<Endpoint>>,
    self_signed_pem: Mutex<Option<String>>,
}

impl fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicTransport")
            .field("options", &self.options)
            .finish()
    }
}

impl QuicTransport {
    /// A transport with these options.
    pub fn new(options: QuicOptions) -> Self {
        QuicTransport {
            options,
            client: Mutex::new(None),
            self_signed_pem: Mutex::new(None),
        }
    }

    /// The PEM of the self-signed certificate the last listener made, if it made one (give it
    /// to clients as their `ca`).
    pub fn self_signed_pem(&self) -> Option<String> {
        self.self_signed_pem.lock().clone()
    }

    fn client_endpoint(&self, target: &SocketAddr) -> Result<Endpoint> {
        let mut slot = self.client.lock();
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let bind: SocketAddr = if target.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|e| Error::internal(format!("{e}")))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|e| Error::internal(format!("{e}")))?
        };
        let e = Endpoint::client(bind).map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot open a UDP socket: {e}"),
            )
        })?;
        *slot = Some(e.clone());
        Ok(e)
    }
}

fn addr_of(url: &Url) -> Result<SocketAddr> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::invalid(format!("{url} names no host")))?;
    let port = url
        .port()
        .ok_or_else(|| Error::invalid(format!("{url} names no port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot resolve {url}: {e}")))?
        .next()
        .ok_or_else(|| Error::new(ErrorKind::Unavailable, format!("{url} resolves to nothing")))
}

#[async_trait]
impl Transport for QuicTransport {
    fn schemes(&self) -> Vec<&'static str> {
        vec!["quic"]
    }

    async fn connect(&self, url: &Url) -> Result<Link> {
        let addr = addr_of(url)?;
        let mut ca = self.options.ca.clone();
        let mut insecure = self.options.insecure;
        let mut server_name = url
            .host_str()
            .unwrap_or("localhost")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "ca" => ca = Some(PathBuf::from(v.as_ref())),
                "insecure" => insecure = v == "true" || v == "1",
                "server_name" => server_name = v.into_owned(),
                other => {
                    return Err(Error::invalid(format!(
                        "{url}: unknown option {other:?}; use ca, insecure or server_name"
                    )));
                }
            }
        }
        let config = client_config(&self.options, ca.as_deref(), insecure)?;
        let endpoint = self.client_endpoint(&addr)?;
        let connecting = endpoint
            .connect_with(config, addr, &server_name)
            .map_err(|e| Error::invalid(format!("cannot connect to {url}: {e}")))?;
        let conn = connecting.await.map_err(|e| {
            let kind = match &e {
                quinn::ConnectionError::TransportError(_)
                | quinn::ConnectionError::ConnectionClosed(_) => ErrorKind::Unavailable,
                _ => ErrorKind::Unavailable,
            };
            Error::new(kind, format!("cannot connect to {url}: {e}"))
        })?;
        Ok(link(conn, self.options.max_frame_bytes))
    }

    async fn listen(&self, url: &Url) -> Result<Box<dyn Acceptor>> {
        let addr = addr_of(url)?;
        let (config, pem) = server_config(&self.options)?;
        if let (Some(path), Some(pem)) = (&self.options.write_self_signed, &pem) {
            std::fs::write(path, pem).map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "cannot write the self-signed certificate to {}: {e}",
                        path.display()
                    ),
                )
            })?;
        }
        *self.self_signed_pem.lock() = pem;
        let cannot = |e: std::io::Error| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {url}: {e}"),
            )
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(cannot)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::internal("QUIC needs a tokio runtime"))?;
        let endpoint = Endpoint::new(
            endpoint_config(self.options.reset_key.as_ref()),
            Some(config),
            socket,
            runtime,
        )
        .map_err(cannot)?;
        let local = endpoint
            .local_addr()
            .map_err(|e| Error::internal(format!("no local address: {e}")))?;
        let mut public = url.clone();
        let _ = public.set_port(Some(local.port()));
        let (tx, links) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(
            endpoint.clone(),
            tx,
            ConnectionCounter::new("quic", self.options.connections),
            self.options.max_frame_bytes,
            self.options.handshake_timeout,
        ));
        Ok(Box::new(ChannelAcceptor::new(links, public).on_drop(
            move || {
                task.abort();
                endpoint.close(0u32.into(), b"stopped");
            },
        )))
    }
}

/// Accepts connections under the caps, each handshake in its own task with a deadline; the
/// established links go to the acceptor. A connection keeps its place under the caps until
/// it closes.
async fn accept_loop(
    endpoint: Endpoint,
    links: mpsc::Sender<Link>,
    counter: ConnectionCounter,
    max: usize,
    handshake_timeout: Duration,
) {
    while let Some(incoming) = endpoint.accept().await {
        let from = incoming.remote_address();
        let admission = match counter.admit(from.ip()) {
            Ok(a) => a,
            Err(refused) => {
                tracing::debug!(peer = %from, "{}; refused", refused.message);
                incoming.refuse();
                continue;
            }
        };
        let links = links.clone();
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(handshake_timeout, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %from, error = %e, "a QUIC handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %from, "a QUIC handshake did not complete in time");
                    return;
                }
            };
            if links.send(link(conn.clone(), max)).await.is_err() {
                conn.close(0u32.into(), b"stopped");
                return;
            }
            conn.closed().await;
            drop(admission);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use syncline_core::limits::ConnectionLimits;

    #[tokio::test]
    async fn connections_over_the_caps_are_refused_and_places_come_back() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = QuicTransport::new(QuicOptions {
            connections: ConnectionLimits {
                max_connections: 4,
                max_connections_per_address: 2,
            },
            ..Default::default()
        });
        let mut acceptor = server
            .listen(&Url::parse("quic://127.0.0.1:0").unwrap())
            .await
            .unwrap();
        let url = {
            let mut u = acceptor.local_url();
            u.set_query(Some("insecure=true"));
            u
        };
        let client = QuicTransport::new(QuicOptions::default());
        let first = client.connect(&url).await.unwrap();
        let second = client.connect(&url).await.unwrap();
        let held = [
            acceptor.accept().await.unwrap(),
            acceptor.accept().await.unwrap(),
        ];
        let Err(e) = client.connect(&url).await else {
            panic!("a third connection from one address was accepted");
        };
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        // One goes: its place comes back.
        first.sender.close();
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match client.connect(&url).await {
                Ok(_again) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no place came back: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop((second, held));
    }
}
