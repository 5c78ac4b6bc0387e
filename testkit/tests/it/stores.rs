//! Every store passes the same conformance suite; redb and Redis survive kill -9.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use syncline_core::engine::{Blocking, KvEngine, MemoryKv};
use syncline_core::{DynStore, ErrorKind, MemoryStore, Result};
use syncline_store_redb::RedbStore;
use syncline_store_redis::RedisStore;
use syncline_testkit::crash;
use syncline_testkit::redis_server::RedisServer;
use syncline_testkit::store_suite::{self, StoreHarness};

struct Memory;

#[syncline_core::async_trait]
impl StoreHarness for Memory {
    fn name(&self) -> String {
        "memory".into()
    }
    async fn fresh(&self) -> Result<DynStore> {
        Ok(Arc::new(MemoryStore::new()))
    }
    async fn reopen(&self, store: DynStore) -> Result<DynStore> {
        Ok(store)
    }
}

/// The core engine over its reference key-value store: the contract redb and store plugins
/// implement, checked on its own.
#[derive(Default)]
struct Engine {
    last: parking_lot::Mutex<Option<Arc<MemoryKv>>>,
}

#[syncline_core::async_trait]
impl StoreHarness for Engine {
    fn name(&self) -> String {
        "engine".into()
    }
    async fn fresh(&self) -> Result<DynStore> {
        let kv = Arc::new(MemoryKv::default());
        *self.last.lock() = Some(kv.clone());
        Ok(Arc::new(KvEngine::open(kv, Blocking::Pool).await?))
    }
    async fn reopen(&self, store: DynStore) -> Result<DynStore> {
        drop(store);
        let kv = self.last.lock().clone().expect("reopen follows fresh");
        Ok(Arc::new(KvEngine::open(kv, Blocking::Pool).await?))
    }
}

struct Redb {
    dir: tempfile::TempDir,
    next: std::sync::atomic::AtomicUsize,
}

#[syncline_core::async_trait]
impl StoreHarness for Redb {
    fn name(&self) -> String {
        "redb".into()
    }
    async fn fresh(&self) -> Result<DynStore> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Arc::new(
            RedbStore::open(self.dir.path().join(format!("s{n}.redb"))).await?,
        ))
    }
    async fn reopen(&self, store: DynStore) -> Result<DynStore> {
        let path = format!("{store:?}");
        let path = path
            .split('"')
            .nth(1)
            .expect("the debug form names the path")
            .to_owned();
        drop(store);
        Ok(Arc::new(RedbStore::open(path).await?))
    }
}

struct Redis {
    server: RedisServer,
    next: std::sync::atomic::AtomicUsize,
}

#[syncline_core::async_trait]
impl StoreHarness for Redis {
    fn name(&self) -> String {
        "redis".into()
    }
    async fn fresh(&self) -> Result<DynStore> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Arc::new(
            RedisStore::open(&self.server.url(), &format!("suite-{n}")).await?,
        ))
    }
    async fn reopen(&self, store: DynStore) -> Result<DynStore> {
        let n = self.next.load(std::sync::atomic::Ordering::SeqCst) - 1;
        drop(store);
        Ok(Arc::new(
            RedisStore::open(&self.server.url(), &format!("suite-{n}")).await?,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_suite() {
    store_suite::run(&Memory).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_over_its_reference_key_value_store_passes_the_suite() {
    store_suite::run(&Engine::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_the_suite() {
    let h = Redb {
        dir: tempfile::tempdir().unwrap(),
        next: Default::default(),
    };
    store_suite::run(&h).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_suite() {
    let h = Redis {
        server: RedisServer::start().unwrap(),
        next: Default::default(),
    };
    store_suite::run(&h).await.unwrap();
}

fn child(store: &[String], writer: u64, batches: u64, per: u64) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_syncline-store-child"))
        .args(store)
        .args([writer.to_string(), batches.to_string(), per.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Runs a child, kills it with SIGKILL after `delay`, and returns the batches it acknowledged.
fn run_and_kill(store: &[String], writer: u64, per: u64, delay: Duration) -> BTreeSet<u64> {
    let mut c = child(store, writer, 1_000_000, per);
    let stdout = c.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .filter_map(|l| l.strip_prefix("ack ").and_then(|n| n.parse().ok()))
            .collect::<BTreeSet<u64>>()
    });
    std::thread::sleep(delay);
    c.kill().unwrap(); // SIGKILL on Unix
    c.wait().unwrap();
    reader.join().unwrap()
}

async fn kill9(store: &[String], open: impl AsyncFn() -> DynStore) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let per = 20;
    let mut total_acked = 0;
    let mut total_complete = 0;
    for writer in 0..50u64 {
        let delay = Duration::from_millis(rng.random_range(10..120));
        let acked = run_and_kill(store, writer, per, delay);
        let s = open().await;
        let attempted = acked.last().map_or(1, |b| b + 2);
        let complete = crash::verify(&s, writer, per, &acked, attempted)
            .await
            .unwrap();
        assert!(complete >= acked.len() as u64);
        total_acked += acked.len();
        total_complete += complete;
        drop(s);
    }
    eprintln!(
        "kill -9: 50 children, {total_acked} batches acknowledged, {total_complete} committed, none half applied"
    );
    assert!(total_acked > 50, "the children got to commit something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let args = vec!["redb".to_string(), path.display().to_string()];
    kill9(&args, async || -> DynStore {
        let s: DynStore = Arc::new(RedbStore::open(&path).await.unwrap());
        s
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_kill_9() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let args = vec!["redis".to_string(), url.clone(), "crash".to_string()];
    kill9(&args, async || -> DynStore {
        let s: DynStore = Arc::new(RedisStore::open(&url, "crash").await.unwrap());
        s
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_redis_dataset() {
    let server = RedisServer::start().unwrap();
    let args = vec!["redis".to_string(), server.url(), "shared".to_string()];
    let (per, batches) = (10, 200);
    let mut a = child(&args, 1, batches, per);
    let mut b = child(&args, 2, batches, per);
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let store: DynStore = Arc::new(RedisStore::open(&server.url(), "shared").await.unwrap());
    let all: BTreeSet<u64> = (0..batches).collect();
    for w in [1, 2] {
        assert_eq!(
            crash::verify(&store, w, per, &all, batches).await.unwrap(),
            batches
        );
    }
    assert_eq!(store.head().await.unwrap().0, 2 * batches * per);
    // Another dataset on the same server sees none of it.
    let other = RedisStore::open(&server.url(), "other").await.unwrap();
    assert_eq!(
        syncline_core::OperationStore::head(&other).await.unwrap().0,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_loss_is_transient_and_recovers() {
    let mut server = RedisServer::start().unwrap();
    let store: DynStore = Arc::new(RedisStore::open(&server.url(), "loss").await.unwrap());
    let batch = |n| syncline_core::store::ApplyBatch {
        ops: crash::batch_ops(7, n, 3)
            .into_iter()
            .map(|op| syncline_core::store::IncomingOp {
                op: Arc::new(op),
                source: None,
            })
            .collect(),
        meta: vec![],
    };
    store.apply(batch(0)).await.unwrap();
    server.stop();
    let err = store.apply(batch(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    server.restart().unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if store.apply(batch(2)).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the store reconnects by itself");
}

#[test]
fn redis_urls_and_datasets_are_checked() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(RedisStore::open("nonsense://x", "d"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = rt
        .block_on(RedisStore::open("redis://127.0.0.1:1", "d"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let err = rt
        .block_on(RedisStore::open("redis://127.0.0.1:1", "a{b}"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}
