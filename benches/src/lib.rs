//! Workloads shared by the criterion benches and `syncline bench`.
//!
//! [`one_way`] runs two reactors, submits operations on A from several concurrent writers, and
//! measures until B holds all of them: throughput end to end, and for every operation the time
//! from its commit on A to its commit on B (push-to-applied latency).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use syncline_core::{
    DynStore, Event, OpId, Reactor, ReactorConfig, ReactorId, RemoteConfig, Result, Submission,
    SyncMode, Transport,
};
use tokio::sync::Notify;

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Operations synced.
    pub ops: usize,
    /// From the first submission to the last operation committed on B.
    pub elapsed: Duration,
    /// `ops / elapsed`.
    pub ops_per_sec: f64,
    /// Median push-to-applied latency.
    pub p50: Duration,
    /// 99th percentile push-to-applied latency.
    pub p99: Duration,
    /// Largest push-to-applied latency.
    pub max: Duration,
}

/// Parameters of a one-way run.
#[derive(Clone, Debug)]
pub struct OneWay {
    /// Operations to sync.
    pub ops: usize,
    /// Actions per submission.
    pub per_job: usize,
    /// Concurrent writers on A.
    pub writers: usize,
}

impl Default for OneWay {
    fn default() -> Self {
        OneWay {
            ops: 100_000,
            per_job: 100,
            writers: 16,
        }
    }
}

/// Two reactors to run a workload on: `a` pushes to `b`.
#[derive(Debug)]
pub struct Pair {
    /// The writer.
    pub a: Reactor,
    /// The receiver.
    pub b: Reactor,
}

/// Starts A and B on the given stores and transports; B listens on `listen` (if its transport
/// can listen by itself) and A gets a push remote to `url`.
pub async fn pair(
    stores: (DynStore, DynStore),
    transports: (Arc<dyn Transport>, Arc<dyn Transport>),
    listen: Option<&str>,
    url: &str,
    config: ReactorConfig,
) -> Result<Pair> {
    let a = Reactor::builder(ReactorId::new("bench-a")?)
        .store(stores.0)
        .transport(transports.0)
        .config(config.clone())
        .start()
        .await?;
    let b = Reactor::builder(ReactorId::new("bench-b")?)
        .store(stores.1)
        .transport(transports.1)
        .config(config)
        .start()
        .await?;
    if let Some(l) = listen {
        b.listen(l).await?;
    }
    a.sync()
        .add_remote(RemoteConfig::new("b", url)?.with_mode(SyncMode::Push))
        .await?;
    Ok(Pair { a, b })
}

/// Submits `w.ops` operations on A and waits until B committed all of them.
pub async fn one_way(pair: &Pair, w: &OneWay) -> Result<RunResult> {
    let sent: Arc<Mutex<HashMap<OpId, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(w.ops)));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
    ));
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let s = sent.clone();
    let sub_a = pair.a.bus().on(move |e| {
        if let Event::OperationsWritten(w) = e {
            let now = Instant::now();
            let mut s = s.lock();
            for op in &w.ops {
                s.insert(op.op.id, now);
            }
        }
    });
    let (s, h, r, d, total) = (
        sent.clone(),
        hist.clone(),
        received.clone(),
        done.clone(),
        w.ops,
    );
    let sub_b = pair.b.bus().on(move |e| {
        if let Event::OperationsWritten(w) = e {
            let now = Instant::now();
            {
                let s = s.lock();
                let mut h = h.lock();
                for op in &w.ops {
                    if let Some(t) = s.get(&op.op.id) {
                        let _ = h.record(now.duration_since(*t).as_micros().max(1) as u64);
                    }
                }
            }
            if r.fetch_add(w.ops.len(), Ordering::SeqCst) + w.ops.len() >= total {
                d.notify_one();
            }
        }
    });
    let started = Instant::now();
    let per_writer = w.ops.div_ceil(w.writers.max(1));
    let mut writers = Vec::new();
    for k in 0..w.writers.max(1) {
        let a = pair.a.clone();
        let n = per_writer.min(w.ops.saturating_sub(k * per_writer));
        let per_job = w.per_job;
        writers.push(tokio::spawn(async move {
            let doc = format!("bench/doc-{k}");
            let mut left = n;
            while left > 0 {
                let m = left.min(per_job);
                let sub = Submission::json(
                    &doc,
                    (0..m).map(|i| ("set", serde_json::json!({"path": "/v", "value": i}))),
                )?;
                a.submit(sub).await?;
                left -= m;
            }
            Ok::<_, syncline_core::Error>(())
        }));
    }
    for t in writers {
        t.await
            .map_err(|e| syncline_core::Error::internal(format!("a writer panicked: {e}")))??;
    }
    if received.load(Ordering::SeqCst) < w.ops {
        done.notified().await;
    }
    let elapsed = started.elapsed();
    pair.a.bus().off(sub_a);
    pair.b.bus().off(sub_b);
    let h = hist.lock();
    Ok(RunResult {
        ops: w.ops,
        elapsed,
        ops_per_sec: w.ops as f64 / elapsed.as_secs_f64(),
        p50: Duration::from_micros(h.value_at_quantile(0.5)),
        p99: Duration::from_micros(h.value_at_quantile(0.99)),
        max: Duration::from_micros(h.max()),
    })
}

/// A and B on memory stores over the memory transport.
pub async fn memory_pair(config: ReactorConfig) -> Result<Pair> {
    let net = syncline_transport_memory::MemoryNetwork::new();
    pair(
        (
            Arc::new(syncline_core::MemoryStore::new()),
            Arc::new(syncline_core::MemoryStore::new()),
        ),
        (net.transport("bench-a"), net.transport("bench-b")),
        Some("mem://bench-b"),
        "mem://bench-b",
        config,
    )
    .await
}

/// A and B on redb files in `dir` over the memory transport.
pub async fn redb_pair(dir: &std::path::Path, config: ReactorConfig) -> Result<Pair> {
    let net = syncline_transport_memory::MemoryNetwork::new();
    let a = syncline_store_redb::RedbStore::open(dir.join("a.redb")).await?;
    let b = syncline_store_redb::RedbStore::open(dir.join("b.redb")).await?;
    pair(
        (Arc::new(a), Arc::new(b)),
        (net.transport("bench-a"), net.transport("bench-b")),
        Some("mem://bench-b"),
        "mem://bench-b",
        config,
    )
    .await
}

/// A and B on two datasets of the Redis server(s) at `urls` over the memory transport.
pub async fn redis_pair(urls: (&str, &str), dataset: &str, config: ReactorConfig) -> Result<Pair> {
    let net = syncline_transport_memory::MemoryNetwork::new();
    let a = syncline_store_redis::RedisStore::open(urls.0, &format!("{dataset}-a")).await?;
    let b = syncline_store_redis::RedisStore::open(urls.1, &format!("{dataset}-b")).await?;
    pair(
        (Arc::new(a), Arc::new(b)),
        (net.transport("bench-a"), net.transport("bench-b")),
        Some("mem://bench-b"),
        "mem://bench-b",
        config,
    )
    .await
}

/// Submits `ops / 2` operations on each of A and B (A has a ping-pong remote to B) and waits
/// until both hold all of them.
pub async fn both_ways(pair: &Pair, ops: usize) -> Result<RunResult> {
    let half = ops / 2;
    let started = Instant::now();
    let mut writers = Vec::new();
    for (r, tag) in [(pair.a.clone(), "a"), (pair.b.clone(), "b")] {
        for k in 0..8usize {
            let r = r.clone();
            let n = half / 8 + usize::from(k < half % 8);
            writers.push(tokio::spawn(async move {
                let doc = format!("bench/{tag}-{k}");
                let mut left = n;
                while left > 0 {
                    let m = left.min(100);
                    let sub = Submission::json(
                        &doc,
                        (0..m).map(|i| ("set", serde_json::json!({"path": "/v", "value": i}))),
                    )?;
                    r.submit(sub).await?;
                    left -= m;
                }
                Ok::<_, syncline_core::Error>(())
            }));
        }
    }
    for t in writers {
        t.await
            .map_err(|e| syncline_core::Error::internal(format!("a writer panicked: {e}")))??;
    }
    let total = (half * 2) as u64;
    loop {
        let (ha, hb) = (
            pair.a.store().head().await?.0,
            pair.b.store().head().await?.0,
        );
        if ha >= total && hb >= total {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    Ok(RunResult {
        ops: half * 2,
        elapsed,
        ops_per_sec: (half * 2) as f64 / elapsed.as_secs_f64(),
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        max: Duration::ZERO,
    })
}

/// Submits on A at a steady `rate` (operations per second, in submissions of `per_job`) for
/// `duration` and measures push-to-applied latency on B.
pub async fn steady(
    pair: &Pair,
    rate: u64,
    duration: Duration,
    per_job: usize,
) -> Result<RunResult> {
    let sent: Arc<Mutex<HashMap<OpId, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
    ));
    let received = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let sub_a = pair.a.bus().on(move |e| {
        if let Event::OperationsWritten(w) = e {
            let now = Instant::now();
            let mut s = s.lock();
            for op in &w.ops {
                s.insert(op.op.id, now);
            }
        }
    });
    let (s, h, r) = (sent.clone(), hist.clone(), received.clone());
    let sub_b = pair.b.bus().on(move |e| {
        if let Event::OperationsWritten(w) = e {
            let now = Instant::now();
            let s = s.lock();
            let mut h = h.lock();
            for op in &w.ops {
                if let Some(t) = s.get(&op.op.id) {
                    let _ = h.record(now.duration_since(*t).as_micros().max(1) as u64);
                }
            }
            r.fetch_add(w.ops.len(), Ordering::SeqCst);
        }
    });
    let per_job = per_job.max(1);
    let jobs = (rate as f64 * duration.as_secs_f64() / per_job as f64).ceil() as u64;
    let every = Duration::from_secs_f64(per_job as f64 / rate as f64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for j in 0..jobs {
        tick.tick().await;
        let sub = Submission::json(
            "bench/steady",
            (0..per_job).map(|i| {
                (
                    "set",
                    serde_json::json!({"path": "/v", "value": j as usize + i}),
                )
            }),
        )?;
        pair.a.submit(sub).await?;
    }
    let total = (jobs as usize) * per_job;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::SeqCst) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    pair.a.bus().off(sub_a);
    pair.b.bus().off(sub_b);
    let h = hist.lock();
    Ok(RunResult {
        ops: total,
        elapsed,
        ops_per_sec: total as f64 / elapsed.as_secs_f64(),
        p50: Duration::from_micros(h.value_at_quantile(0.5)),
        p99: Duration::from_micros(h.value_at_quantile(0.99)),
        max: Duration::from_micros(h.max()),
    })
}
