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

/// A TCP stream that holds its place under the caps for as long as it lives (through a
/// WebSocket upgrade too).
struct Counted {
    stream: TcpStream,
    _admitted: Admission,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
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

/// The running server.
#[derive(Debug)]
pub struct HttpServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `app` on `listener` under `limits`.
    pub fn serve(listener: TcpListener, app: Router, limits: ServerLimits) -> Self {
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
                let io = TokioIo::new(Counted {
                    stream,
                    _admitted: admitted,
                });
                let app = app.clone();
                let stall = limits.header_timeout;
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(addr));
                        // A body must keep arriving: a pause longer than the header timeout
                        // fails the request.
                        let req = req.map(|body| {
                            axum::body::Body::new(tower_http::timeout::TimeoutBody::new(
                                stall, body,
                            ))
                        });
                        app.clone().oneshot(req)
                    },
                );
                let conn = builder.serve_connection(io, service).with_upgrades();
                let mut stopping = stopping_rx.clone();
                tokio::spawn(async move {
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        ended = conn.as_mut() => ended,
                        _ = stopping.changed() => {
                            // Finish the request in progress, then close.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(peer = %addr, error = %e, "an HTTP connection ended");
                    }
                    drop(stopping);
                });
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
