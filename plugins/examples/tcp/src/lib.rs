//! An example transport plugin: plain TCP with length-prefixed frames (`tcp://host:port`).
//!
//! Each frame is a `u32` big-endian length and the bytes. Frames over 64 MiB are refused.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use syncline_plugin_api::{
    FrameLink, FrameListener, Host, PluginError, Received, TransportPlugin, export_plugin,
};

const MAX_FRAME: usize = 64 << 20;

fn addr(url: &str) -> Result<String, PluginError> {
    let rest = url
        .strip_prefix("tcp://")
        .ok_or_else(|| PluginError::invalid(format!("{url} is not a tcp:// URL")))?;
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    if !host_port.contains(':') {
        return Err(PluginError::invalid(format!("{url} names no port")));
    }
    Ok(host_port.to_owned())
}

#[derive(Debug)]
struct ReadState {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One TCP connection.
#[derive(Debug)]
pub struct TcpLink {
    write: Mutex<TcpStream>,
    read: Mutex<ReadState>,
    closed: AtomicBool,
}

impl TcpLink {
    fn new(stream: TcpStream) -> Result<TcpLink, PluginError> {
        let _ = stream.set_nodelay(true);
        let reader = stream
            .try_clone()
            .map_err(|e| PluginError::failed(format!("cloning the socket: {e}")))?;
        Ok(TcpLink {
            write: Mutex::new(stream),
            read: Mutex::new(ReadState {
                stream: reader,
                buf: Vec::new(),
            }),
            closed: AtomicBool::new(false),
        })
    }
}

impl FrameLink for TcpLink {
    fn send(&self, frame: &[u8]) -> Result<(), PluginError> {
        if frame.len() > MAX_FRAME {
            return Err(PluginError::invalid(format!(
                "a frame of {} bytes exceeds {MAX_FRAME}",
                frame.len()
            )));
        }
        let mut w = self
            .write
            .lock()
            .map_err(|_| PluginError::failed("a poisoned lock"))?;
        let mut msg = Vec::with_capacity(4 + frame.len());
        msg.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        msg.extend_from_slice(frame);
        w.write_all(&msg)
            .map_err(|e| PluginError::closed(format!("sending: {e}")))
    }

    fn recv(&self, timeout: Duration) -> Result<Received, PluginError> {
        let mut r = self
            .read
            .lock()
            .map_err(|_| PluginError::failed("a poisoned lock"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if r.buf.len() >= 4 {
                let len = u32::from_be_bytes([r.buf[0], r.buf[1], r.buf[2], r.buf[3]]) as usize;
                if len > MAX_FRAME {
                    return Err(PluginError::closed(format!(
                        "the peer announced a frame of {len} bytes, over {MAX_FRAME}"
                    )));
                }
                if r.buf.len() >= 4 + len {
                    let frame = r.buf[4..4 + len].to_vec();
                    r.buf.drain(..4 + len);
                    return Ok(Received::Frame(frame));
                }
            }
            if self.closed.load(Ordering::SeqCst) {
                return Ok(Received::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Received::Timeout);
            }
            let state = &mut *r;
            let _ = state.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 64 * 1024];
            match state.stream.read(&mut chunk) {
                Ok(0) => return Ok(Received::Closed),
                Ok(n) => state.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(Received::Timeout);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(Received::Closed),
            }
        }
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(w) = self.write.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub struct TcpFrameListener {
    listener: TcpListener,
    url: String,
}

impl FrameListener for TcpFrameListener {
    fn accept(&self, timeout: Duration) -> Result<Option<Box<dyn FrameLink>>, PluginError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| PluginError::failed(format!("configuring a socket: {e}")))?;
                    return Ok(Some(Box::new(TcpLink::new(stream)?)));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(PluginError::failed(format!("accepting: {e}"))),
            }
        }
    }

    fn local_url(&self) -> String {
        self.url.clone()
    }

    fn close(&self) {}
}

/// The plugin.
#[derive(Debug)]
pub struct Plugin;

impl TransportPlugin for Plugin {
    const SCHEME: &'static str = "tcp";

    fn connect(url: &str, _host: &Host) -> Result<Box<dyn FrameLink>, PluginError> {
        let a = addr(url)?;
        let sock = a
            .to_socket_addrs()
            .map_err(|e| PluginError::unavailable(format!("cannot resolve {url}: {e}")))?
            .next()
            .ok_or_else(|| PluginError::unavailable(format!("{url} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
            .map_err(|e| PluginError::unavailable(format!("cannot connect to {url}: {e}")))?;
        Ok(Box::new(TcpLink::new(stream)?))
    }

    fn listen(url: &str, host: &Host) -> Result<Box<dyn FrameListener>, PluginError> {
        let a = addr(url)?;
        let listener = TcpListener::bind(&a)
            .map_err(|e| PluginError::unavailable(format!("cannot listen on {url}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| PluginError::failed(format!("configuring the listener: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| PluginError::failed(format!("no local address: {e}")))?;
        host.log(3, &format!("tcp plugin listening on {local}"));
        Ok(Box::new(TcpFrameListener {
            listener,
            url: format!("tcp://{local}"),
        }))
    }
}

export_plugin!(name = "tcp", transport = Plugin);
