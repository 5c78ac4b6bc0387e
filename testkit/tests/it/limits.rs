//! Per-peer state has bounds: sessions that never say hello are closed, sessions per peer and
//! in all are capped, listeners are reused on re-registration, capped per peer and in all (the
//! least recently used goes), and expire when unused. Raw client sessions over the memory
//! transport speak to a real reactor.

use std::sync::Arc;
use std::time::Duration;

use syncline_core::protocol::{
    Hello, Notification, PROTOCOL_VERSION, Pull, Register, Request, Response,
};
use syncline_core::session::{Session, SessionHandler, SessionLimits};
use syncline_core::{
    ErrorKind, Filter, MemoryStore, Ordinal, ReactorId, Result, SystemClock, Transport,
};
use syncline_testkit::{fast_config, start_custom};
use syncline_transport_memory::MemoryNetwork;

/// A client that serves nothing (the reactor never calls it here).
struct Quiet;

#[syncline_core::async_trait]
impl SessionHandler for Quiet {
    async fn handle(&self, _session: &Session, _request: Request) -> Result<Response> {
        Err(syncline_core::Error::invalid("this client serves nothing"))
    }

    fn notified(&self, _session: &Session, _notification: Notification) {}
}

async fn open(net: &MemoryNetwork, to: &str) -> Session {
    let url = url::Url::parse(&format!("mem://{to}")).unwrap();
    let link = net.transport("client").connect(&url).await.unwrap();
    Session::start(link, Arc::new(Quiet), SessionLimits::default(), 1)
}

async fn ask(s: &Session, request: Request) -> Result<Response> {
    s.request(&request, Duration::from_secs(5))
        .await
        .map(|r| r.response)
}

async fn hello(s: &Session, who: &str) -> Result<Response> {
    ask(
        s,
        Request::Hello(Hello {
            reactor_id: ReactorId::new(who).unwrap(),
            protocol: PROTOCOL_VERSION,
            credentials: None,
            capabilities: vec![],
        }),
    )
    .await
}

async fn register(s: &Session, glob: &str) -> String {
    match ask(
        s,
        Request::Register(Register {
            filter: Filter::documents([glob]),
            since: Ordinal::ZERO,
        }),
    )
    .await
    .unwrap()
    {
        Response::Registered(r) => r.listener_id,
        other => panic!("expected registered, got {other:?}"),
    }
}

async fn closes_within(s: &Session, d: Duration) -> bool {
    tokio::time::timeout(d, s.closed()).await.is_ok()
}

#[tokio::test]
async fn sessions_say_hello_in_time_and_are_capped() {
    let net = MemoryNetwork::new();
    let mut config = fast_config();
    config.sync.hello_timeout = Duration::from_millis(300);
    config.sync.max_sessions = 3;
    config.sync.max_sessions_per_peer = 2;
    let a = start_custom(
        &net,
        "a",
        Arc::new(MemoryStore::new()),
        config,
        1,
        Arc::new(SystemClock),
        |b| b,
    )
    .await
    .unwrap();

    // Silence is not a session.
    let silent = open(&net, "a").await;
    assert!(
        closes_within(&silent, Duration::from_secs(3)).await,
        "a session that never said hello stayed open"
    );
    // Said hello in time: it stays.
    let p1 = open(&net, "a").await;
    hello(&p1, "p").await.unwrap();
    assert!(!closes_within(&p1, Duration::from_millis(600)).await);

    // A third session of the same peer closes its oldest.
    let p2 = open(&net, "a").await;
    hello(&p2, "p").await.unwrap();
    let p3 = open(&net, "a").await;
    hello(&p3, "p").await.unwrap();
    assert!(
        closes_within(&p1, Duration::from_secs(3)).await,
        "the peer's oldest session stayed open"
    );
    assert!(!p2.is_closed() && !p3.is_closed());

    // Three sessions are open (p2, p3, q): r is refused, clearly.
    let q = open(&net, "a").await;
    hello(&q, "q").await.unwrap();
    let r = open(&net, "a").await;
    let e = hello(&r, "r").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("sync.max_sessions"), "{e}");
    // When one goes, r gets in.
    q.close();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let r = loop {
        let r = open(&net, "a").await;
        if hello(&r, "r").await.is_ok() {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "r never got in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!r.is_closed());
    a.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn listeners_are_reused_capped_and_expire() {
    let net = MemoryNetwork::new();
    let store: syncline_core::DynStore = Arc::new(MemoryStore::new());
    let mut config = fast_config();
    config.sync.max_listeners_per_peer = 2;
    config.sync.max_listeners = 3;
    config.sync.listener_ttl = Duration::from_millis(1500);
    let start = |store: syncline_core::DynStore, config| {
        let net = &net;
        async move {
            start_custom(net, "a", store, config, 1, Arc::new(SystemClock), |b| b)
                .await
                .unwrap()
        }
    };
    let a = start(store.clone(), config.clone()).await;
    let listeners = |a: &syncline_core::Reactor| a.sync().status().listeners;

    let p = open(&net, "a").await;
    hello(&p, "p").await.unwrap();
    let x = register(&p, "x/*").await;
    assert_eq!(
        register(&p, "x/*").await,
        x,
        "re-registering gave a new listener"
    );
    assert_eq!(listeners(&a).len(), 1);
    let y = register(&p, "y/*").await;
    // Use x, so y is the least recently used when z comes.
    let pulled = ask(
        &p,
        Request::Pull(Pull {
            listener_id: x.clone(),
            cursor: Ordinal::ZERO,
            limit: 10,
            wait_ms: 0,
            push: None,
        }),
    )
    .await;
    assert!(matches!(pulled, Ok(Response::Pulled(_))), "{pulled:?}");
    let z = register(&p, "z/*").await;
    let ids: Vec<String> = listeners(&a).into_iter().map(|l| l.id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.contains(&x) && ids.contains(&z) && !ids.contains(&y),
        "{ids:?}"
    );
    // A forgotten listener says so: the peer registers again.
    let e = ask(
        &p,
        Request::Pull(Pull {
            listener_id: y,
            cursor: Ordinal::ZERO,
            limit: 10,
            wait_ms: 0,
            push: None,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Three in all: q's two push out p's least recently used.
    let q = open(&net, "a").await;
    hello(&q, "q").await.unwrap();
    register(&q, "x/*").await;
    register(&q, "y/*").await;
    let all = listeners(&a);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all.iter().filter(|l| l.peer.as_str() == "p").count(), 1);

    // What is forgotten is forgotten in the store too.
    a.shutdown(Duration::from_secs(1)).await;
    let a = start(store.clone(), config.clone()).await;
    assert_eq!(listeners(&a).len(), 3);

    // Unused for the time to live: gone, across a restart as well.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(listeners(&a).is_empty(), "{:?}", listeners(&a));
    a.shutdown(Duration::from_secs(1)).await;
    let a = start(store, config).await;
    assert!(listeners(&a).is_empty());
    a.shutdown(Duration::from_secs(1)).await;
}
