//! The transport conformance suite: memory, HTTP, WebSocket, QUIC and Redis pub/sub (and
//! plugin transports) must all pass it.
//!
//! A [`TransportHarness`] starts reactors that serve the transport and dial it; the checks are
//! `pub async fn`s taking the harness.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use syncline_core::protocol::{
    Body, Codec, Directory, Envelope, HEADER_LEN, Hello, PROTOCOL_VERSION, Request, Response,
};
use syncline_core::{
    DynStore, ErrorKind, Filter, Link, MemoryStore, Ordinal, Reactor, ReactorConfig, RemoteConfig,
    Result, RetryPolicy, StrandId, SyncMode, Transport,
};

use crate::{read_all, submit_increments, wait_for_count};

/// A reactor serving a transport, with whatever keeps its server running.
pub struct Node {
    /// The reactor.
    pub reactor: Reactor,
    /// The URL peers dial.
    pub url: String,
    /// Dropping it stops the server.
    pub guard: Box<dyn Any + Send>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("reactor", self.reactor.id())
            .field("url", &self.url)
            .finish()
    }
}

impl Node {
    /// Stops the reactor and its server at once, as a crash would.
    pub async fn crash(self) {
        self.reactor.crash().await;
        drop(self.guard);
    }
}

/// What a transport can do, which decides the checks that apply to it. Built from
/// `Capabilities::default()` (everything) with the builder methods, so that a capability added
/// later defaults to "can" for harnesses written before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The server can send requests to the client on the client's connection (every
    /// transport here but HTTP, whose server only answers).
    pub duplex: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities { duplex: true }
    }
}

impl Capabilities {
    /// Sets [`Capabilities::duplex`].
    pub fn duplex(mut self, yes: bool) -> Self {
        self.duplex = yes;
        self
    }
}

/// Starts reactors on one transport.
#[syncline_core::async_trait]
pub trait TransportHarness: Send + Sync {
    /// The transport's name.
    fn name(&self) -> String;

    /// An address nothing serves yet, for `start_at`.
    async fn fresh_url(&self, name: &str) -> Result<String>;

    /// Starts reactor `name` on `store`, serving at `url` (from `fresh_url`, or one a crashed
    /// node used) and able to dial the transport.
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node>;

    /// A transport for dialling raw links.
    fn dialer(&self) -> Arc<dyn Transport>;

    /// What the transport can do; the checks that need more are skipped for it.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Starts a reactor at a fresh address.
    async fn start(&self, name: &str, store: DynStore, config: ReactorConfig) -> Result<Node> {
        let url = self.fresh_url(name).await?;
        self.start_at(name, &url, store, config).await
    }
}

/// The configuration the suite's reactors use: timeouts fit for real sockets on a busy machine.
pub fn suite_config() -> ReactorConfig {
    let mut c = crate::fast_config();
    c.sync.request_timeout = Duration::from_secs(3);
    c.sync.retry = RetryPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(500),
        multiplier: 2.0,
        max_attempts: None,
    };
    c
}

const WAIT: Duration = Duration::from_secs(60);

fn remote(name: &str, url: &str, mode: SyncMode) -> Result<RemoteConfig> {
    Ok(RemoteConfig::new(name, url)?.with_mode(mode))
}

async fn no_duplicates(r: &Reactor) -> Result<usize> {
    let all = read_all(r.store()).await?;
    let ids: HashSet<_> = all.iter().map(|s| s.op.id).collect();
    assert_eq!(ids.len(), all.len(), "{} stores an operation twice", r.id());
    Ok(all.len())
}

async fn same_views(a: &Reactor, b: &Reactor, docs: &[&str]) -> Result<()> {
    for d in docs {
        let s = StrandId::parse(d, None, None)?;
        assert_eq!(
            a.document(&s).await?.state,
            b.document(&s).await?.state,
            "{d} differs between {} and {}",
            a.id(),
            b.id()
        );
    }
    Ok(())
}

/// Two reactors sync 10k operations both ways in `mode`.
pub async fn two_reactors_both_ways(h: &dyn TransportHarness, mode: SyncMode) -> Result<()> {
    let a = h
        .start("a", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let b = h
        .start("b", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    submit_increments(&a.reactor, "from-a", 5_000, 100).await?;
    submit_increments(&b.reactor, "from-b", 5_000, 100).await?;
    match mode {
        SyncMode::PingPong => {
            a.reactor
                .sync()
                .add_remote(remote("b", &b.url, mode)?)
                .await?;
        }
        _ => {
            a.reactor
                .sync()
                .add_remote(remote("b", &b.url, mode)?)
                .await?;
            b.reactor
                .sync()
                .add_remote(remote("a", &a.url, mode)?)
                .await?;
        }
    }
    wait_for_count(&[&a.reactor, &b.reactor], 10_000, WAIT)
        .await
        .map_err(|e| syncline_core::Error::internal(format!("{} {mode:?}: {e}", h.name())))?;
    a.reactor.sync().wait_for_sync("b", WAIT).await?;
    same_views(&a.reactor, &b.reactor, &["from-a", "from-b"]).await?;
    assert_eq!(no_duplicates(&a.reactor).await?, 10_000);
    assert_eq!(no_duplicates(&b.reactor).await?, 10_000);
    assert!(a.reactor.sync().dead_letters().await?.is_empty());
    a.crash().await;
    b.crash().await;
    Ok(())
}

/// Three reactors in a line converge.
pub async fn three_reactors(h: &dyn TransportHarness) -> Result<()> {
    let a = h
        .start("a", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let b = h
        .start("b", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let c = h
        .start("c", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    a.reactor
        .sync()
        .add_remote(remote("b", &b.url, SyncMode::PingPong)?)
        .await?;
    c.reactor
        .sync()
        .add_remote(remote("b", &b.url, SyncMode::PingPong)?)
        .await?;
    for (r, d) in [(&a, "x"), (&b, "y"), (&c, "z")] {
        submit_increments(&r.reactor, d, 1_000, 50).await?;
    }
    wait_for_count(&[&a.reactor, &b.reactor, &c.reactor], 3_000, WAIT).await?;
    same_views(&a.reactor, &c.reactor, &["x", "y", "z"]).await?;
    for n in [a, b, c] {
        assert_eq!(no_duplicates(&n.reactor).await?, 3_000);
        n.crash().await;
    }
    Ok(())
}

/// The server restarts mid-sync: the client resumes from its cursor, nothing is lost or
/// applied twice.
pub async fn server_restarts_mid_sync(h: &dyn TransportHarness) -> Result<()> {
    let a = h
        .start("a", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let b_store: DynStore = Arc::new(MemoryStore::new());
    let b = h.start("b", b_store.clone(), suite_config()).await?;
    let b_url = b.url.clone();
    submit_increments(&a.reactor, "doc", 10_000, 100).await?;
    let mut config = remote("b", &b_url, SyncMode::Push)?;
    config.filter = Filter::all();
    a.reactor.sync().add_remote(config).await?;
    // Let part of it through, then kill the server with batches in flight.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b_store.head().await? < Ordinal(1_000) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: nothing arrived",
            h.name()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    b.crash().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = h
        .start_at("b", &b_url, b_store.clone(), suite_config())
        .await?;
    a.reactor.sync().wait_for_sync("b", WAIT).await?;
    assert_eq!(no_duplicates(&b.reactor).await?, 10_000, "{}", h.name());
    same_views(&a.reactor, &b.reactor, &["doc"]).await?;
    assert!(a.reactor.sync().dead_letters().await?.is_empty());
    a.crash().await;
    b.crash().await;
    Ok(())
}

/// A remote nobody serves backs off (visible in its status) and syncs once it appears.
pub async fn unreachable_peer_backs_off_and_recovers(h: &dyn TransportHarness) -> Result<()> {
    let a = h
        .start("a", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let b_url = h.fresh_url("b").await?;
    submit_increments(&a.reactor, "doc", 100, 50).await?;
    a.reactor
        .sync()
        .add_remote(remote("b", &b_url, SyncMode::PingPong)?)
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = a.reactor.sync().remote_status("b")?;
        if let syncline_core::ConnectionState::Backoff { attempt, .. } = s.connection
            && attempt >= 3
        {
            assert!(s.last_failure.is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no backoff seen: {s:?}",
            h.name()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = h
        .start_at("b", &b_url, Arc::new(MemoryStore::new()), suite_config())
        .await?;
    a.reactor.sync().wait_for_sync("b", WAIT).await?;
    assert_eq!(b.reactor.store().head().await?, Ordinal(100));
    assert_eq!(
        a.reactor.sync().remote_status("b")?.connection,
        syncline_core::ConnectionState::Connected
    );
    a.crash().await;
    b.crash().await;
    Ok(())
}

fn frame(id: u64, request: Request) -> Bytes {
    Bytes::from(
        Codec::Binary
            .encode(&Envelope {
                v: PROTOCOL_VERSION,
                id,
                body: Body::Request(request),
            })
            .expect("encodes"),
    )
}

/// Waits for the next frame on a raw link: `Ok(Some(env))`, `Ok(None)` if the link closed, or
/// the transport's error.
async fn next(link: &mut Link) -> Result<Option<Envelope>> {
    match tokio::time::timeout(Duration::from_secs(10), link.receiver.recv()).await {
        Err(_) => panic!("no answer within 10 s"),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(e),
        Ok(Some(Ok(bytes))) => {
            Ok(Some(Codec::decode(&bytes).unwrap_or_else(|e| {
                panic!("the answer does not decode: {}", e.error)
            })))
        }
    }
}

async fn hello(link: &mut Link, id: u64) -> Result<()> {
    link.sender
        .send(frame(
            id,
            Request::Hello(Hello {
                reactor_id: syncline_core::ReactorId::new("raw-client")?,
                protocol: PROTOCOL_VERSION,
                credentials: None,
                capabilities: vec![],
            }),
        ))
        .await?;
    match next(link).await? {
        Some(Envelope {
            body: Body::Response(Response::Welcome(_)),
            id: got,
            ..
        }) => {
            assert_eq!(got, id);
            Ok(())
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn expect_error(env: Option<Envelope>, id: Option<u64>, kind: &str, what: &str) {
    match env {
        Some(Envelope {
            body: Body::Error(e),
            id: got,
            ..
        }) => {
            assert_eq!(e.kind, kind, "{what}: {}", e.message);
            assert!(!e.message.is_empty());
            if let Some(id) = id {
                assert_eq!(got, id, "{what}: the error answers the request");
            }
        }
        other => panic!("{what}: expected a {kind} error, got {other:?}"),
    }
}

/// A dialled link that stays quiet for a moment before its hello is still welcomed (a
/// keepalive of the transport must not end a link its listener does not know yet).
pub async fn a_quiet_link_is_welcomed(h: &dyn TransportHarness) -> Result<()> {
    let b = h
        .start("b", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let url = syncline_core::transport::parse_url(&b.url)?;
    let mut link = h.dialer().connect(&url).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    hello(&mut link, 1).await?;
    link.sender.close();
    b.crash().await;
    Ok(())
}

/// Malformed frames, frames of an unknown protocol version and oversize frames each get a
/// clear error, and the connection (or the next one) keeps working.
pub async fn bad_frames_get_clear_errors(h: &dyn TransportHarness) -> Result<()> {
    let max = 256 * 1024;
    let mut config = suite_config();
    config.sync.max_frame_bytes = max;
    config.sync.max_action_bytes = max / 4;
    let b = h.start("b", Arc::new(MemoryStore::new()), config).await?;
    let url = syncline_core::transport::parse_url(&b.url)?;
    let dialer = h.dialer();
    let mut link = dialer.connect(&url).await?;
    hello(&mut link, 1).await?;

    // Noise with no header at all.
    link.sender
        .send(Bytes::from_static(
            b"this is not a syncline frame, just noise",
        ))
        .await?;
    expect_error(next(&mut link).await?, None, "malformed", "noise");

    // A valid header with a broken body.
    let mut broken = frame(
        7,
        Request::Directory(Directory {
            filter: Filter::all(),
        }),
    )
    .to_vec();
    broken.truncate(HEADER_LEN);
    broken.extend_from_slice(&[0xff; 40]);
    link.sender.send(Bytes::from(broken)).await?;
    expect_error(next(&mut link).await?, Some(7), "malformed", "broken body");

    // An unknown protocol version.
    let mut future = frame(
        8,
        Request::Directory(Directory {
            filter: Filter::all(),
        }),
    )
    .to_vec();
    future[2] = 9;
    link.sender.send(Bytes::from(future)).await?;
    let env = next(&mut link).await?;
    if let Some(Envelope {
        body: Body::Error(e),
        ..
    }) = &env
    {
        assert!(e.message.contains("version 9"), "{}", e.message);
    }
    expect_error(env, Some(8), "protocol_version", "version 9");

    // Still working.
    link.sender
        .send(frame(
            9,
            Request::Directory(Directory {
                filter: Filter::all(),
            }),
        ))
        .await?;
    match next(&mut link).await? {
        Some(Envelope {
            body: Body::Response(Response::Strands(_)),
            id: 9,
            ..
        }) => {}
        other => panic!("expected strands after the bad frames, got {other:?}"),
    }

    // Oversize: an error naming the limit, or (WebSocket) the connection closed with "message
    // too big"; either way a new connection works.
    let mut big = frame(
        10,
        Request::Directory(Directory {
            filter: Filter::all(),
        }),
    )
    .to_vec();
    big.resize(max + 1024, 0);
    let sent = link.sender.send(Bytes::from(big)).await;
    let mut usable = sent.is_ok();
    if sent.is_ok() {
        match next(&mut link).await {
            Ok(Some(Envelope {
                body: Body::Error(e),
                ..
            })) => {
                assert_eq!(e.kind, "too_large", "{}", e.message);
            }
            Ok(None) => usable = false,
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::TooLarge | ErrorKind::Closed),
                    "{e}"
                );
                usable = false;
            }
            Ok(Some(other)) => panic!("expected a too_large error, got {other:?}"),
        }
    }
    if !usable {
        link = dialer.connect(&url).await?;
        hello(&mut link, 11).await?;
    }
    link.sender
        .send(frame(
            12,
            Request::Directory(Directory {
                filter: Filter::all(),
            }),
        ))
        .await?;
    match next(&mut link).await? {
        Some(Envelope {
            body: Body::Response(Response::Strands(_)),
            id: 12,
            ..
        }) => {}
        other => panic!("expected strands after the oversize frame, got {other:?}"),
    }
    link.sender.close();
    b.crash().await;
    Ok(())
}

/// Both reactors push on the one connection the client opened: the server's remote for the
/// client is `peer://<client>`, and nobody pulls.
pub async fn both_sides_push_on_one_connection(h: &dyn TransportHarness) -> Result<()> {
    let a = h
        .start("a", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let b = h
        .start("b", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    submit_increments(&a.reactor, "from-a", 2_000, 100).await?;
    submit_increments(&b.reactor, "from-b", 2_000, 100).await?;
    a.reactor
        .sync()
        .add_remote(remote("b", &b.url, SyncMode::Push)?)
        .await?;
    b.reactor
        .sync()
        .add_remote(remote("a", "peer://a", SyncMode::Push)?)
        .await?;
    if let Err(e) = wait_for_count(&[&a.reactor, &b.reactor], 4_000, WAIT).await {
        return Err(syncline_core::Error::internal(format!(
            "{}: {e}\na: {:#?}\nb: {:#?}",
            h.name(),
            a.reactor.sync().status(),
            b.reactor.sync().status()
        )));
    }
    b.reactor.sync().wait_for_sync("a", WAIT).await?;
    same_views(&a.reactor, &b.reactor, &["from-a", "from-b"]).await?;
    let status = b.reactor.sync().remote_status("a")?;
    assert_eq!(status.peer.as_ref().map(|p| p.as_str()), Some("a"));
    a.crash().await;
    b.crash().await;
    Ok(())
}

/// Operations from a few bytes up to the per-action limit sync both ways although a batch of
/// them by count would be many times the frame limit: every batch (push, pull response,
/// piggybacked push) is cut to fit in bytes. One action over the limit is refused at
/// submission, naming the limit.
pub async fn large_operations_sync(h: &dyn TransportHarness) -> Result<()> {
    let mut config = suite_config();
    config.sync.max_frame_bytes = 1 << 20;
    config.sync.max_action_bytes = 256 << 10;
    let a = h
        .start("a", Arc::new(MemoryStore::new()), config.clone())
        .await?;
    let b = h
        .start("b", Arc::new(MemoryStore::new()), config.clone())
        .await?;
    // Input sizes from tiny to just under the limit (the JSON around the string is < 64 bytes).
    let sizes: Vec<usize> = [0, 1, 100, 10_000, 100_000]
        .into_iter()
        .chain(std::iter::repeat_n((256 << 10) - 64, 12))
        .collect();
    for (r, doc) in [(&a.reactor, "big-a"), (&b.reactor, "big-b")] {
        for (i, n) in sizes.iter().enumerate() {
            let sub = syncline_core::Submission::json(
                doc,
                [(
                    "set",
                    serde_json::json!({"path": format!("/k{i}"), "value": "x".repeat(*n)}),
                )],
            )?;
            r.submit(sub).await?;
        }
        let too_big = syncline_core::Submission::json(
            doc,
            [(
                "set",
                serde_json::json!({"path": "/big", "value": "x".repeat(256 << 10)}),
            )],
        )?;
        let err = r
            .submit(too_big)
            .await
            .expect_err("an action over the limit is refused");
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
        assert!(err.message().contains("sync.max_action_bytes"), "{err}");
    }
    a.reactor
        .sync()
        .add_remote(remote("b", &b.url, SyncMode::PingPong)?)
        .await?;
    let total = 2 * sizes.len();
    wait_for_count(&[&a.reactor, &b.reactor], total as u64, WAIT)
        .await
        .map_err(|e| syncline_core::Error::internal(format!("{}: {e}", h.name())))?;
    a.reactor.sync().wait_for_sync("b", WAIT).await?;
    same_views(&a.reactor, &b.reactor, &["big-a", "big-b"]).await?;
    assert_eq!(no_duplicates(&a.reactor).await?, total);
    assert_eq!(no_duplicates(&b.reactor).await?, total);
    assert!(a.reactor.sync().dead_letters().await?.is_empty());
    a.crash().await;
    b.crash().await;
    Ok(())
}

/// Reads the next frame and checks its encoding.
async fn next_in(link: &mut Link, codec: Codec, what: &str) -> Result<Envelope> {
    let got = tokio::time::timeout(Duration::from_secs(10), link.receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
        .unwrap_or_else(|| panic!("{what}: the link closed"))?;
    assert_eq!(
        Codec::detect(&got),
        codec,
        "{what}: answered in the other encoding: {:?}",
        String::from_utf8_lossy(&got[..got.len().min(80)])
    );
    Ok(Codec::decode(&got).unwrap_or_else(|e| panic!("{what}: {}", e.error)))
}

/// A peer speaking JSON frames is answered in JSON, request by request (a binary request on
/// the same link gets a binary answer), errors included.
pub async fn json_frames_are_answered_in_json(h: &dyn TransportHarness) -> Result<()> {
    let b = h
        .start("b", Arc::new(MemoryStore::new()), suite_config())
        .await?;
    let url = syncline_core::transport::parse_url(&b.url)?;
    let mut link = h.dialer().connect(&url).await?;
    let json = |id: u64, request: Request| {
        Bytes::from(
            Codec::Json
                .encode(&Envelope {
                    v: PROTOCOL_VERSION,
                    id,
                    body: Body::Request(request),
                })
                .expect("encodes"),
        )
    };
    let hello_request = Request::Hello(Hello {
        reactor_id: syncline_core::ReactorId::new("json-client")?,
        protocol: PROTOCOL_VERSION,
        credentials: None,
        capabilities: vec![],
    });
    link.sender.send(json(1, hello_request)).await?;
    let env = next_in(&mut link, Codec::Json, "hello").await?;
    assert!(
        matches!(env.body, Body::Response(Response::Welcome(_))) && env.id == 1,
        "{env:?}"
    );
    let register = Request::Register(syncline_core::protocol::Register {
        filter: Filter::all(),
        since: Ordinal::ZERO,
    });
    link.sender.send(json(2, register)).await?;
    let env = next_in(&mut link, Codec::Json, "register").await?;
    let Body::Response(Response::Registered(registered)) = env.body else {
        panic!("register: {env:?}");
    };
    link.sender
        .send(json(
            3,
            Request::Pull(syncline_core::protocol::Pull {
                listener_id: registered.listener_id,
                cursor: Ordinal::ZERO,
                limit: 10,
                push: None,
                wait_ms: 0,
            }),
        ))
        .await?;
    let env = next_in(&mut link, Codec::Json, "pull").await?;
    assert!(
        matches!(env.body, Body::Response(Response::Pulled(_))),
        "{env:?}"
    );
    // The same link, a binary request: a binary answer.
    link.sender
        .send(frame(
            4,
            Request::Directory(Directory {
                filter: Filter::all(),
            }),
        ))
        .await?;
    let env = next_in(&mut link, Codec::Binary, "binary directory").await?;
    assert!(
        matches!(env.body, Body::Response(Response::Strands(_))),
        "{env:?}"
    );
    // A JSON request the node cannot read: a JSON error with its id.
    link.sender
        .send(Bytes::from_static(
            br#"{"v":2,"id":5,"body":{"request":{"directory":{"filter":7}}}}"#,
        ))
        .await?;
    let env = next_in(&mut link, Codec::Json, "broken JSON request").await?;
    let Body::Error(e) = &env.body else {
        panic!("broken JSON request: {env:?}");
    };
    assert_eq!((e.kind.as_str(), env.id), ("malformed", 5), "{e:?}");
    link.sender.close();
    b.crash().await;
    Ok(())
}

/// Runs every check.
pub async fn run(h: &dyn TransportHarness) -> Result<()> {
    for mode in [SyncMode::Push, SyncMode::Pull, SyncMode::PingPong] {
        two_reactors_both_ways(h, mode).await?;
    }
    three_reactors(h).await?;
    large_operations_sync(h).await?;
    if h.capabilities().duplex {
        both_sides_push_on_one_connection(h).await?;
    }
    server_restarts_mid_sync(h).await?;
    unreachable_peer_backs_off_and_recovers(h).await?;
    a_quiet_link_is_welcomed(h).await?;
    bad_frames_get_clear_errors(h).await?;
    json_frames_are_answered_in_json(h).await?;
    Ok(())
}
