//! The Redis pub/sub transport: reactors reach each other through a `redis-server`.
//!
//! A listening reactor subscribes to `syncline:link:<name>` (`redis://host:port?as=<name>`);
//! a dialling one (`redis://host:port?to=<name>`) subscribes to a reply channel of its own and
//! publishes to the listener's channel. Every message carries a link id, so one listener serves
//! many peers, and both sides send requests on a link.
//!
//! Pub/sub is at-most-once: a message published while a subscriber is not connected is lost,
//! and nothing orders messages of different publishers. This transport adds no delivery
//! guarantee of its own: the sync manager resends unanswered requests, deduplicates by operation
//! id, and moves cursors only on answers, which is what makes lost, duplicated and reordered
//! frames harmless. Keepalives every 10 s keep a link open; a link silent for 60 s is closed on
//! both sides, and a listener that restarted tells unknown links to go away, so the peer says
//! hello again.
//!
//! Message layout: `SL`, version 1, kind (0 frame, 1 close, 2 keepalive), the 16-byte link id,
//! the reply channel (`u16` length and bytes), then the frame.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use syncline_core::protocol::{Codec, FrameHead, FrameKind, MessageType};
use syncline_core::{
    Acceptor, ChannelAcceptor, ChannelReceiver, Entropy, Error, ErrorKind, FrameSender, Link,
    LinkInfo, Result, Transport,
};
use tokio::sync::mpsc;
use url::Url;

const KEEPALIVE: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(60);

const FRAME: u8 = 0;
const CLOSE: u8 = 1;
const PING: u8 = 2;

fn channel_of(name: &str) -> String {
    format!("syncline:link:{name}")
}

fn encode(kind: u8, link: &[u8; 16], reply: &str, frame: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(22 + reply.len() + frame.len());
    m.extend_from_slice(b"SL");
    m.push(1);
    m.push(kind);
    m.extend_from_slice(link);
    m.extend_from_slice(&(reply.len() as u16).to_be_bytes());
    m.extend_from_slice(reply.as_bytes());
    m.extend_from_slice(frame);
    m
}

struct Message {
    kind: u8,
    link: [u8; 16],
    reply: String,
    frame: Bytes,
}

fn decode(raw: &[u8]) -> Option<Message> {
    if raw.len() < 22 || &raw[..2] != b"SL" || raw[2] != 1 {
        return None;
    }
    let kind = raw[3];
    let link: [u8; 16] = raw[4..20].try_into().ok()?;
    let n = u16::from_be_bytes([raw[20], raw[21]]) as usize;
    let reply = std::str::from_utf8(raw.get(22..22 + n)?).ok()?.to_owned();
    Some(Message {
        kind,
        link,
        reply,
        frame: Bytes::copy_from_slice(&raw[22 + n..]),
    })
}

/// Whether `frame` is a hello request, read from its head (the body is not decoded).
fn is_hello(frame: &[u8]) -> bool {
    matches!(
        FrameHead::peek(frame),
        Some(FrameHead {
            kind: FrameKind::Request,
            message: Some(MessageType::Hello),
            ..
        })
    )
}

fn unavailable(what: &str, url: &str, e: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("redis transport {url}: {what}: {e}"),
    )
}

fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.set_query(None);
    u.to_string()
}

/// The `redis://` pub/sub transport.
pub struct RedisTransport {
    publishers: Mutex<HashMap<String, ConnectionManager>>,
    /// Where link ids come from (seeded in simulations).
    entropy: Arc<Entropy>,
}

impl Default for RedisTransport {
    fn default() -> Self {
        RedisTransport::with_entropy(Arc::new(Entropy::from_os()))
    }
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisTransport")
    }
}

impl RedisTransport {
    /// A transport.
    pub fn new() -> Self {
        RedisTransport::default()
    }

    /// A transport whose link ids come from `entropy`.
    pub fn with_entropy(entropy: Arc<Entropy>) -> Self {
        RedisTransport {
            publishers: Mutex::default(),
            entropy,
        }
    }

    async fn publisher(&self, server: &Url) -> Result<(redis::Client, ConnectionManager)> {
        let key = redacted(server);
        let mut base = server.clone();
        base.set_query(None);
        let client = redis::Client::open(base.as_str())
            .map_err(|e| Error::invalid(format!("{key} is not a valid Redis URL: {e}")))?;
        if let Some(c) = self.publishers.lock().get(&key) {
            return Ok((client, c.clone()));
        }
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(|e| unavailable("connecting", &key, e))?;
        self.publishers.lock().insert(key, conn.clone());
        Ok((client, conn))
    }
}

fn param(url: &Url, name: &str) -> Result<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
        .ok_or_else(|| {
            Error::invalid(format!(
                "{}: add ?{name}=<reactor name> to say which channel to use",
                redacted(url)
            ))
        })
}

/// Publishes frames of one link.
struct PubSender {
    conn: ConnectionManager,
    target: String,
    reply: String,
    link: [u8; 16],
    url: String,
    closed: Arc<std::sync::atomic::AtomicBool>,
    on_close: Mutex<Option<mpsc::Sender<()>>>,
}

impl fmt::Debug for PubSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisSender({})", self.target)
    }
}

impl PubSender {
    async fn publish(&self, kind: u8, frame: &[u8]) -> Result<()> {
        let mut c = self.conn.clone();
        let receivers: i64 = c
            .publish(&self.target, encode(kind, &self.link, &self.reply, frame))
            .await
            .map_err(|e| unavailable("publishing", &self.url, e))?;
        if receivers == 0 {
            // Nobody subscribes to the channel: the peer is not running (it stopped or was
            // killed). The message is gone, and so is the link: end it now, so the owner
            // reconnects, rather than let requests wait for their timeouts on a dead link.
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(tx) = self.on_close.lock().take() {
                let _ = tx.try_send(());
            }
            return Err(Error::closed(format!(
                "nobody listens on {} at {} (the peer is not running)",
                self.target, self.url
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl FrameSender for PubSender {
    async fn send(&self, frame: Bytes) -> Result<()> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::closed(format!(
                "the redis link to {} is closed",
                self.target
            )));
        }
        self.publish(FRAME, &frame).await
    }

    fn close(&self) {
        if !self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let (conn, target, reply, link) = (
                self.conn.clone(),
                self.target.clone(),
                self.reply.clone(),
                self.link,
            );
            tokio::spawn(async move {
                let mut c = conn;
                let _: redis::RedisResult<i64> =
                    c.publish(&target, encode(CLOSE, &link, &reply, &[])).await;
            });
            if let Some(tx) = self.on_close.lock().take() {
                let _ = tx.try_send(());
            }
        }
    }
}

/// Frames of one link waiting for its session; beyond it a frame is dropped (pub/sub is
/// at most once: the sender's request times out and is retried) and counted as an
/// `overflow` rejection.
const LINK_FRAMES: usize = 1024;
/// Links one listener serves at once; a hello beyond it is answered with a close.
const MAX_LINKS: usize = 4096;
/// Links waiting to be accepted.
const PENDING_LINKS: usize = 64;

/// Hands a frame to a session's channel without waiting: one task serves every link.
fn hand_over(tx: &mpsc::Sender<Result<Bytes>>, frame: Bytes) -> bool {
    match tx.try_send(Ok(frame)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            syncline_core::telemetry::frame_rejected("overflow");
            tracing::debug!("a redis link's session is {LINK_FRAMES} frames behind; dropped one");
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn schemes(&self) -> Vec<&'static str> {
        vec!["redis"]
    }

    async fn connect(&self, url: &Url) -> Result<Link> {
        let target = channel_of(&param(url, "to")?);
        let shown = redacted(url);
        let (client, publisher) = self.publisher(url).await?;
        let mut id = [0u8; 16];
        self.entropy.fill(&mut id);
        let reply = format!("syncline:reply:{}", hex16(&id));
        let mut sub = client
            .get_async_pubsub()
            .await
            .map_err(|e| unavailable("subscribing", &shown, e))?;
        sub.subscribe(&reply)
            .await
            .map_err(|e| unavailable("subscribing", &shown, e))?;
        let (in_tx, in_rx) = mpsc::channel(LINK_FRAMES);
        let (close_tx, mut close_rx) = mpsc::channel::<()>(1);
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = Arc::new(PubSender {
            conn: publisher,
            target: target.clone(),
            reply: reply.clone(),
            link: id,
            url: shown.clone(),
            closed: closed.clone(),
            on_close: Mutex::new(Some(close_tx)),
        });
        let pinger = sender.clone();
        tokio::spawn(async move {
            let mut stream = sub.into_on_message();
            // The first keepalive waits a period: a ping before the hello reaches a listener
            // that does not know the link yet, and it answers with a close.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
            let mut heard = Instant::now();
            loop {
                tokio::select! {
                    biased;
                    _ = close_rx.recv() => break,
                    m = stream.next() => {
                        let Some(m) = m else { break };
                        let Some(msg) = decode(m.get_payload_bytes()) else { continue };
                        if msg.link != id {
                            continue;
                        }
                        heard = Instant::now();
                        match msg.kind {
                            FRAME
                                if !hand_over(&in_tx, msg.frame) => {
                                    break;
                                }
                            CLOSE => break,
                            _ => {}
                        }
                    }
                    _ = tick.tick() => {
                        if heard.elapsed() > IDLE {
                            tracing::debug!("the redis link was silent for {IDLE:?}; closing it");
                            break;
                        }
                        let _ = pinger.publish(PING, &[]).await;
                    }
                }
            }
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Ok(Link {
            sender,
            receiver: Box::new(ChannelReceiver::new(in_rx, "redis")),
            info: LinkInfo {
                transport: "redis",
                peer: format!("{shown}?to={}", target.trim_start_matches("syncline:link:")),
                duplex: true,
                codec: Codec::Binary,
            },
        })
    }

    async fn listen(&self, url: &Url) -> Result<Box<dyn Acceptor>> {
        let name = param(url, "as")?;
        let channel = channel_of(&name);
        let shown = redacted(url);
        let (client, publisher) = self.publisher(url).await?;
        let mut sub = client
            .get_async_pubsub()
            .await
            .map_err(|e| unavailable("subscribing", &shown, e))?;
        sub.subscribe(&channel)
            .await
            .map_err(|e| unavailable("subscribing", &shown, e))?;
        let (accept_tx, accept_rx) = mpsc::channel(PENDING_LINKS);
        let task = tokio::spawn(listen_loop(
            sub,
            client,
            channel,
            publisher,
            accept_tx,
            shown.clone(),
        ));
        Ok(Box::new(
            ChannelAcceptor::new(accept_rx, url.clone())
                .shown_as(redacted(url))
                .on_drop(move || task.abort()),
        ))
    }
}

fn hex16(b: &[u8; 16]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct ServedLink {
    to_session: mpsc::Sender<Result<Bytes>>,
    sender: Arc<PubSender>,
    heard: Instant,
}

async fn listen_loop(
    sub: redis::aio::PubSub,
    client: redis::Client,
    channel: String,
    publisher: ConnectionManager,
    accept: mpsc::Sender<Link>,
    url: String,
) {
    let mut links: HashMap<[u8; 16], ServedLink> = HashMap::new();
    let mut stream = sub.into_on_message();
    let mut tick = tokio::time::interval(KEEPALIVE);
    loop {
        tokio::select! {
            m = stream.next() => {
                let Some(m) = m else {
                    // The subscription dropped (Redis restarted): subscribe again with backoff.
                    tracing::info!(channel = %channel, "the redis subscription dropped; resubscribing");
                    links.clear();
                    let mut wait = Duration::from_millis(50);
                    loop {
                        if accept.is_closed() {
                            return;
                        }
                        tokio::time::sleep(wait).await;
                        if let Ok(mut s) = client.get_async_pubsub().await
                            && s.subscribe(&channel).await.is_ok() {
                                stream = s.into_on_message();
                                break;
                            }
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                    continue;
                };
                let Some(msg) = decode(m.get_payload_bytes()) else { continue };
                match (msg.kind, links.get_mut(&msg.link)) {
                    (FRAME, Some(l)) => {
                        l.heard = Instant::now();
                        if !hand_over(&l.to_session, msg.frame) {
                            links.remove(&msg.link);
                        }
                    }
                    (FRAME, None) => {
                        let sender = Arc::new(PubSender {
                            conn: publisher.clone(),
                            target: msg.reply.clone(),
                            reply: channel.clone(),
                            link: msg.link,
                            url: url.clone(),
                            closed: Arc::default(),
                            on_close: Mutex::new(None),
                        });
                        if !is_hello(&msg.frame) {
                            // A link this listener does not know (it restarted): tell the peer
                            // to say hello again.
                            let _ = sender.publish(CLOSE, &[]).await;
                            continue;
                        }
                        if links.len() >= MAX_LINKS {
                            tracing::debug!(peer = %msg.reply, "{MAX_LINKS} redis links open; closing a new one");
                            let _ = sender.publish(CLOSE, &[]).await;
                            continue;
                        }
                        let (tx, rx) = mpsc::channel(LINK_FRAMES);
                        let _ = tx.try_send(Ok(msg.frame));
                        let link = Link {
                            sender: sender.clone(),
                            receiver: Box::new(ChannelReceiver::new(rx, "redis")),
                            info: LinkInfo {
                                transport: "redis",
                                peer: msg.reply.clone(),
                                duplex: true,
                                codec: Codec::Binary,
                            },
                        };
                        match accept.try_send(link) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                // The reactor is not accepting fast enough: the peer says
                                // hello again.
                                let _ = sender.publish(CLOSE, &[]).await;
                                continue;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                        links.insert(msg.link, ServedLink { to_session: tx, sender, heard: Instant::now() });
                    }
                    (CLOSE, Some(_)) => {
                        links.remove(&msg.link);
                    }
                    (PING, Some(l)) => {
                        l.heard = Instant::now();
                        let _ = l.sender.publish(PING, &[]).await;
                    }
                    (PING, None) => {
                        let _ = PubSender {
                            conn: publisher.clone(),
                            target: msg.reply.clone(),
                            reply: channel.clone(),
                            link: msg.link,
                            url: url.clone(),
                            closed: Arc::default(),
                            on_close: Mutex::new(None),
                        }
                        .publish(CLOSE, &[])
                        .await;
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                links.retain(|_, l| l.heard.elapsed() < IDLE && !l.to_session.is_closed());
                if accept.is_closed() {
                    return;
                }
            }
        }
    }
}

/// Registers the Redis pub/sub transport (`[transports.redis]`, no settings).
pub fn register(backends: &mut syncline_core::Backends) {
    backends.register_transport(syncline_core::TransportKind::plain(
        "redis",
        &["redis"],
        |_| Ok(Arc::new(RedisTransport::new())),
    ));
}
