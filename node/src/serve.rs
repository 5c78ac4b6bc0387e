//! The node's HTTP server (API, metrics, and the HTTP and WebSocket sync endpoints): hyper's
//! HTTP/1 connections under limits the node sets, where `axum::serve` sets none.
//!
//! - **Slow or idle clients**: a connection must send a request's headers within
//!   `listen.header_timeout`, and an idle keep-alive connection is closed after it (hyper's
//!   header read timeout starts whenever the connection waits for a request); a request body
//!   that pauses for longer fails the request.
//! - **Open connections**: at most `listen.max_connections` in all and
//!   `listen.max_connections_per_address` from one IP address, WebSockets included for as long
//!   as they stay open. A connection beyond a cap is answered `503` with a JSON error and closed
//!   at once, so one client cannot take every file descriptor and the API stays reachable for
//!   others.
//! - **File descriptors**: at start the soft `RLIMIT_NOFILE` is raised to the hard limit, and
//!   `max_connections` is lowered (with a warning) to leave [`FD_RESERVE`] descriptors for the
//!   store, the QUIC socket and outgoing connections.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use syncline_core::limits::{Admission, ConnectionCounter, ConnectionLimits};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// File descriptors kept free of HTTP connections.
pub const FD_RESERVE: u64 = 64;

/// The server's limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Time for a request's headers, and longest idle keep-alive.
    pub header_timeout: Duration,
    /// Open connections.
    pub connections: ConnectionLimits,
}

impl ServerLimits {
    /// Lowers the caps to what the process's open-file limit allows (after raising the soft
    /// limit as far as the hard one), with a warning when it had to; one address gets at most
    /// half of them.
    pub fn fit_to_fd_limit(mut self) -> Self {
        let c = &mut self.connections;
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
                return self;
            }
        };
        let room = usize::try_from(limit.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
        if c.max_connections > room {
            tracing::warn!(
                open_file_limit = limit,
                "listen.max_connections lowered from {} to {room}, to stay under the open-file \
                 limit ({limit}) with {FD_RESERVE} descriptors to spare; raise `ulimit -n` to \
                 allow more",
                c.max_connections
            );
            c.max_connections = room;
        }
        let per_address = (c.max_connections / 2).max(1);
        if c.max_connections_per_address > per_address {
            tracing::warn!(
                "listen.max_connections_per_address lowered from {} to {per_address}, half of \
                 listen.max_connections, so one address cannot take every connection",
                c.max_connections_per_address
            );
            c.max_connections_per_address = per_address;
        }
        self
    }
}

/// A stream (TCP, or TLS over TCP) that holds its place under the caps for as long as it lives
/// (through a WebSocket upgrade too).
struct Counted<S> {
    stream: S,
    _admitted: Admission,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Answers a connection over a cap with `503` and closes it.
async fn refuse(mut stream: TcpStream, why: String) {
    let body = serde_json::json!({"error": {"kind": "unavailable", "message": why}}).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves one connection until it ends or the server stops (then finishing the request in
/// progress).
async fn connection<S>(
    io: Counted<S>,
    builder: hyper::server::conn::http1::Builder,
    app: Router,
    addr: std::net::SocketAddr,
    stall: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(addr));
            // A body must keep arriving: a pause longer than the header timeout fails the request.
            let req = req.map(|body| {
                axum::body::Body::new(tower_http::timeout::TimeoutBody::new(stall, body))
            });
            app.clone().oneshot(req)
        });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stopping.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(peer = %addr, error = %e, "an HTTP connection ended");
    }
    drop(stopping);
}

/// A certificate chain and key from PEM files (`listen.tls`), read again on SIGHUP and when
/// either file changes (checked every [`TLS_CHECK`]); a reload that fails keeps the old pair
/// and says why.
pub struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    config: parking_lot::RwLock<std::sync::Arc<rustls::ServerConfig>>,
    stamps: parking_lot::Mutex<Option<(std::time::SystemTime, std::time::SystemTime)>>,
}

/// How often `listen.tls`'s files are looked at for changes.
pub const TLS_CHECK: Duration = Duration::from_secs(5);

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsFiles({})", self.cert.display())
    }
}

impl TlsFiles {
    /// Reads the pair; an error names the file and what is wrong with it.
    pub fn load(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> anyhow::Result<std::sync::Arc<Self>> {
        let config = Self::read(cert, key)?;
        let files = TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: parking_lot::RwLock::new(std::sync::Arc::new(config)),
            stamps: parking_lot::Mutex::new(None),
        };
        *files.stamps.lock() = files.stamps_now();
        Ok(std::sync::Arc::new(files))
    }

    fn read(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
        use anyhow::Context;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .with_context(|| {
                format!(
                    "listen.tls.cert: cannot read a PEM certificate chain from {}",
                    cert.display()
                )
            })?;
        if certs.is_empty() {
            anyhow::bail!("listen.tls.cert: {} holds no certificate", cert.display());
        }
        let key_der = PrivateKeyDer::from_pem_file(key).with_context(|| {
            format!(
                "listen.tls.key: cannot read a PEM private key from {}",
                key.display()
            )
        })?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .with_context(|| {
                format!(
                    "listen.tls: the key in {} does not fit the certificate in {}",
                    key.display(),
                    cert.display()
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    fn stamps_now(&self) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&self.cert)?, m(&self.key)?))
    }

    /// The acceptor for the next connection (the pair as last loaded).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.read().clone())
    }

    /// Reads the files again; keeps the old pair if they do not load.
    pub fn reload(&self, why: &str) {
        match Self::read(&self.cert, &self.key) {
            Ok(c) => {
                *self.config.write() = std::sync::Arc::new(c);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded ({why})");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate not reloaded ({why}); the old one stays")
            }
        }
        *self.stamps.lock() = self.stamps_now();
    }

    /// Reloads on SIGHUP and when a file changes, until the task is aborted.
    pub fn watch(self: std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(TLS_CHECK);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                tokio::select! {
                    () = hangup => self.reload("SIGHUP"),
                    _ = tick.tick() => {
                        let now = self.stamps_now();
                        if now.is_some() && now != *self.stamps.lock() {
                            self.reload("the files changed");
                        }
                    }
                }
            }
        })
    }
}

/// The running server.
#[derive(Debug)]
pub struct HttpServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `app` on `listener` under `limits`, over TLS when `tls` is given.
    pub fn serve(
        listener: TcpListener,
        app: Router,
        limits: ServerLimits,
        tls: Option<std::sync::Arc<TlsFiles>>,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let counter = ConnectionCounter::new("http", limits.connections);
            let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let mut accept_errors = 0u64;
            loop {
                let (stream, addr) = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors, most likely: say so now and then, and
                            // give connections time to close.
                            accept_errors += 1;
                            if accept_errors.is_power_of_two() {
                                tracing::warn!(error = %e, errors = accept_errors, "accepting an HTTP connection failed");
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let admitted = match counter.admit(addr.ip()) {
                    Ok(a) => a,
                    Err(refused) => {
                        tracing::debug!(peer = %addr, "{}; refused", refused.message);
                        tokio::spawn(refuse(stream, refused.message));
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let builder = builder.clone();
                let stopping = stopping_rx.clone();
                let stall = limits.header_timeout;
                match &tls {
                    None => {
                        let io = Counted {
                            stream,
                            _admitted: admitted,
                        };
                        tokio::spawn(connection(io, builder, app, addr, stall, stopping));
                    }
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        tokio::spawn(async move {
                            // The handshake gets as long as a request's headers would.
                            match tokio::time::timeout(stall, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    let io = Counted {
                                        stream,
                                        _admitted: admitted,
                                    };
                                    connection(io, builder, app, addr, stall, stopping).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(peer = %addr, error = %e, "a TLS handshake failed");
                                }
                                Err(_) => {
                                    tracing::debug!(peer = %addr, "a TLS handshake took too long");
                                }
                            }
                        });
                    }
                }
            }
            drop(listener);
            drop(stopping_rx);
            let _ = stopping_tx.send(true);
            // Every connection task holds a receiver: this returns when the last one ended.
            stopping_tx.closed().await;
        });
        HttpServer { stop, task }
    }

    /// Stops accepting and lets open requests finish, at most `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            abort.abort();
        }
    }
}
