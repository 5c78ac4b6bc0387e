//! syncline's shared test harness.
//!
//! - [`history`]: the checker that reports lost, duplicated and diverged operations.
//! - [`sim`]: the deterministic simulation of several reactors over the fault-injecting memory
//!   transport, with crashes and restarts.
//! - helpers to start reactors on a memory network and to wait for convergence.

pub mod history;
pub mod sim;

pub use syncline_conformance::{
    fast_config, read_all, store_suite, submit_increments, transport_suite, wait_for_count,
};

use std::sync::Arc;
use std::time::Duration;

use syncline_core::{
    Clock, DynStore, MemoryStore, Reactor, ReactorConfig, ReactorId, Result, RetryPolicy,
    SystemClock,
};
use syncline_transport_memory::MemoryNetwork;

/// Installs a test log subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Starts a reactor named `name` on `net`, listening on `mem://<name>`.
pub async fn start_on(
    net: &MemoryNetwork,
    name: &str,
    store: DynStore,
    config: ReactorConfig,
    seed: u64,
) -> Result<Reactor> {
    start_with_clock(net, name, store, config, seed, Arc::new(SystemClock)).await
}

/// Like [`start_on`] with an injected clock.
pub async fn start_with_clock(
    net: &MemoryNetwork,
    name: &str,
    store: DynStore,
    config: ReactorConfig,
    seed: u64,
    clock: Arc<dyn Clock>,
) -> Result<Reactor> {
    start_custom(net, name, store, config, seed, clock, |b| b).await
}

/// Like [`start_with_clock`], with a last say over the builder (permissions, another transport).
pub async fn start_custom(
    net: &MemoryNetwork,
    name: &str,
    store: DynStore,
    config: ReactorConfig,
    seed: u64,
    clock: Arc<dyn Clock>,
    customize: impl FnOnce(syncline_core::ReactorBuilder) -> syncline_core::ReactorBuilder,
) -> Result<Reactor> {
    let builder = Reactor::builder(ReactorId::new(name)?)
        .store(store)
        .transport(net.transport(name));
    let reactor = customize(builder)
        .config(config)
        .seed(seed)
        .clock(clock)
        .scheduler(Arc::new(syncline_core::FixedInterval::new(
            Duration::from_millis(200),
            RetryPolicy {
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(1),
                multiplier: 2.0,
                max_attempts: None,
            },
        )))
        .start()
        .await?;
    reactor.listen(&format!("mem://{name}")).await?;
    Ok(reactor)
}

/// Starts reactor `name` on `net` with a fresh memory store, holding its peers to `rules`.
pub async fn start_with_rules(
    net: &MemoryNetwork,
    name: &str,
    seed: u64,
    rules: Vec<syncline_core::PeerRule>,
) -> Result<Reactor> {
    let rules = Arc::new(syncline_core::RulePermissions::new(rules)?);
    start_custom(
        net,
        name,
        Arc::new(MemoryStore::new()),
        fast_config(),
        seed,
        Arc::new(SystemClock),
        |b| b.permissions(rules),
    )
    .await
}

/// Starts a reactor with a fresh memory store.
pub async fn start_memory(net: &MemoryNetwork, name: &str, seed: u64) -> Result<Reactor> {
    start_on(net, name, Arc::new(MemoryStore::new()), fast_config(), seed).await
}

/// A transport wrapper that counts the frames each link sends, by kind and message type
/// (read from the binary header), for tests that check what went over the wire.
pub mod counting {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use syncline_core::protocol::{FrameHead, FrameKind};
    use syncline_core::transport::{FrameSender, Link, Transport};
    use syncline_core::{Acceptor, Result};

    /// Frames sent (binary or JSON), by `(kind, message type)` numbered as in the binary header
    /// (read with `FrameHead::peek`).
    pub type Counts = Arc<Mutex<BTreeMap<(u8, u8), u64>>>;

    /// Wraps a transport; every link it dials or accepts counts what it sends.
    #[derive(Debug)]
    pub struct Counting {
        inner: Arc<dyn Transport>,
        /// The counts.
        pub counts: Counts,
    }

    impl Counting {
        /// Wraps `inner`.
        pub fn new(inner: Arc<dyn Transport>) -> Arc<Self> {
            Arc::new(Counting {
                inner,
                counts: Counts::default(),
            })
        }

        /// Requests of message type `ty` sent (kind 0).
        pub fn requests(&self, ty: u8) -> u64 {
            self.counts.lock().get(&(0, ty)).copied().unwrap_or(0)
        }
    }

    struct CountingSender {
        inner: Arc<dyn FrameSender>,
        counts: Counts,
    }

    impl fmt::Debug for CountingSender {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("CountingSender")
        }
    }

    #[syncline_core::async_trait]
    impl FrameSender for CountingSender {
        async fn send(&self, frame: bytes::Bytes) -> Result<()> {
            if let Some(head) = FrameHead::peek(&frame) {
                let kind = match head.kind {
                    FrameKind::Request => 0,
                    FrameKind::Response => 1,
                    FrameKind::Error => 2,
                    FrameKind::Notification => 3,
                };
                let message = head.message.map_or(u8::MAX, |m| m as u8);
                *self.counts.lock().entry((kind, message)).or_default() += 1;
            }
            self.inner.send(frame).await
        }

        fn close(&self) {
            self.inner.close()
        }
    }

    fn wrap(link: Link, counts: &Counts) -> Link {
        Link {
            sender: Arc::new(CountingSender {
                inner: link.sender,
                counts: counts.clone(),
            }),
            receiver: link.receiver,
            info: link.info,
        }
    }

    #[syncline_core::async_trait]
    impl Transport for Counting {
        fn schemes(&self) -> Vec<&'static str> {
            self.inner.schemes()
        }

        async fn connect(&self, url: &url::Url) -> Result<Link> {
            Ok(wrap(self.inner.connect(url).await?, &self.counts))
        }

        async fn listen(&self, url: &url::Url) -> Result<Box<dyn Acceptor>> {
            Ok(Box::new(CountingAcceptor {
                inner: self.inner.listen(url).await?,
                counts: self.counts.clone(),
            }))
        }
    }

    #[derive(Debug)]
    struct CountingAcceptor {
        inner: Box<dyn Acceptor>,
        counts: Counts,
    }

    #[syncline_core::async_trait]
    impl Acceptor for CountingAcceptor {
        async fn accept(&mut self) -> Result<Link> {
            Ok(wrap(self.inner.accept().await?, &self.counts))
        }

        fn local_url(&self) -> url::Url {
            self.inner.local_url()
        }
    }
}

/// A real `redis-server` on a free loopback port (it lives in the Redis store crate, which
/// `syncline bench` shares).
pub mod redis_server {
    pub use syncline_store_redis::server::RedisServer;
}

/// What the crash tests write and check.
pub mod crash {
    use std::collections::{BTreeMap, BTreeSet};

    use syncline_core::sync::{Direction, SyncState};
    use syncline_core::testing::op_at;
    use syncline_core::{DynStore, Operation, Ordinal, RemoteName, Result};

    /// The operations of batch `b` of `writer`: ids and times derive from both.
    pub fn batch_ops(writer: u64, b: u64, per: u64) -> Vec<Operation> {
        (0..per)
            .map(|j| {
                let n = writer * 1_000_000 + b * 1_000 + j;
                op_at(&format!("w{writer}"), n, 1_700_000_000_000 + n, "child")
            })
            .collect()
    }

    /// Checks a store after a writer was killed: every acknowledged batch is complete, no batch
    /// is partial, the writer's cursor (written with each batch) names exactly the batches
    /// present, and ordinals have no gaps. Returns the number of complete batches.
    pub async fn verify(
        store: &DynStore,
        writer: u64,
        per: u64,
        acked: &BTreeSet<u64>,
        attempted: u64,
    ) -> Result<u64> {
        let all = crate::read_all(store).await?;
        for (i, s) in all.iter().enumerate() {
            assert_eq!(
                s.ordinal,
                Ordinal(i as u64 + 1),
                "ordinals have a gap or repeat"
            );
        }
        let mut present: BTreeMap<u64, u64> = BTreeMap::new();
        let ids: BTreeSet<_> = all.iter().map(|s| s.op.id).collect();
        for b in 0..attempted {
            let n = batch_ops(writer, b, per)
                .iter()
                .filter(|o| ids.contains(&o.id))
                .count() as u64;
            assert!(
                n == 0 || n == per,
                "writer {writer} batch {b} is half applied: {n} of {per} operations"
            );
            if n == per {
                present.insert(b, n);
            }
        }
        for b in acked {
            assert!(
                present.contains_key(b),
                "writer {writer} batch {b} was acknowledged but is missing"
            );
        }
        let complete = present.len() as u64;
        assert_eq!(
            present.keys().copied().collect::<Vec<_>>(),
            (0..complete).collect::<Vec<_>>(),
            "writer {writer}: batches are applied in order"
        );
        let cursor = SyncState::new(store.clone())
            .cursor(&RemoteName::new(format!("w{writer}"))?, Direction::Inbox)
            .await?;
        assert_eq!(
            cursor,
            Ordinal(complete),
            "writer {writer}: the cursor committed with the batches names exactly them"
        );
        Ok(complete)
    }
}
pub mod harnesses;
pub mod sched_compare;

/// The shared library of an example plugin (`kvfile`, `tcp`, `testing`), built next to the
/// running test (`./scripts/test` builds them first).
pub fn plugin_library(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("a target directory")
        .to_path_buf();
    let file = format!(
        "{}syncline_plugin_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = dir.join(&file);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p syncline-plugin-{name}` (./scripts/test does)",
        path.display()
    );
    path
}
