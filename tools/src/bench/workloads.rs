//! The workloads of `syncline bench`, also used by the criterion benches and examples in
//! `benches/`. Each runs on a [`Pair`] of reactors, A and B:
//!
//! - [`one_way`]: concurrent writers submit on A, which pushes to B; throughput end to end, and
//!   for every operation the time from its commit on A to its commit on B (push-to-applied
//!   latency);
//! - [`both_ways`]: half the operations on each, A ping-pong with B;
//! - [`steady`]: a fixed rate on A for a while; push-to-applied latency;
//! - [`catch_up`]: a backlog written on A while B is away, then B connects and pulls it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use syncline_core::events::Subscription;
use syncline_core::{
    DynStore, Error, ErrorKind, Event, OpId, Reactor, ReactorConfig, ReactorId, RemoteConfig,
    Result, Submission, SyncMode, Transport,
};
use tokio::sync::Notify;

/// The longest any workload waits for B.
const LIMIT: Duration = Duration::from_secs(600);

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Operations synced.
    pub ops: usize,
    /// From the first submission (or the connection, for catch-up) to the last operation
    /// committed on B.
    pub elapsed: Duration,
    /// `ops / elapsed`.
    pub ops_per_sec: f64,
    /// Median push-to-applied latency (zero where not measured).
    pub p50: Duration,
    /// 99th percentile push-to-applied latency.
    pub p99: Duration,
    /// Largest push-to-applied latency.
    pub max: Duration,
}

impl RunResult {
    fn throughput(ops: usize, elapsed: Duration) -> RunResult {
        RunResult {
            ops,
            elapsed,
            ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            max: Duration::ZERO,
        }
    }
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

/// Two reactors to run a workload on.
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

/// Watches A's and B's commits: when each operation was committed on A, and how long it took
/// to be committed on B.
struct Probe {
    hist: Arc<Mutex<Histogram<u64>>>,
    received: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
    subs: (Subscription, Subscription),
}

impl Probe {
    fn attach(pair: &Pair) -> Probe {
        let sent: Arc<Mutex<HashMap<OpId, Instant>>> = Arc::default();
        let hist = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        ));
        let received = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(Notify::new());
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
        let (h, r, n) = (hist.clone(), received.clone(), arrived.clone());
        let sub_b = pair.b.bus().on(move |e| {
            if let Event::OperationsWritten(w) = e {
                let now = Instant::now();
                {
                    let s = sent.lock();
                    let mut h = h.lock();
                    for op in &w.ops {
                        if let Some(t) = s.get(&op.op.id) {
                            let _ = h.record(now.duration_since(*t).as_micros().max(1) as u64);
                        }
                    }
                }
                r.fetch_add(w.ops.len(), Ordering::SeqCst);
                n.notify_one();
            }
        });
        Probe {
            hist,
            received,
            arrived,
            subs: (sub_a, sub_b),
        }
    }

    /// Waits until B committed `total` operations, at most [`LIMIT`].
    async fn wait_for(&self, total: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while self.received.load(Ordering::SeqCst) < total {
            if tokio::time::timeout_at(deadline, self.arrived.notified())
                .await
                .is_err()
            {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "B received {} of {total} operations in {} s",
                        self.received.load(Ordering::SeqCst),
                        LIMIT.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn finish(self, pair: &Pair, ops: usize, elapsed: Duration) -> RunResult {
        pair.a.bus().off(self.subs.0);
        pair.b.bus().off(self.subs.1);
        let h = self.hist.lock();
        RunResult {
            p50: Duration::from_micros(h.value_at_quantile(0.5)),
            p99: Duration::from_micros(h.value_at_quantile(0.99)),
            max: Duration::from_micros(h.max()),
            ..RunResult::throughput(ops, elapsed)
        }
    }
}

/// Submits `w.ops` operations on A (which must push to B) and waits until B committed all of
/// them.
pub async fn one_way(pair: &Pair, w: &OneWay) -> Result<RunResult> {
    let probe = Probe::attach(pair);
    let started = Instant::now();
    write_on(&pair.a, "bench/doc", w.ops, w.per_job, w.writers).await?;
    probe.wait_for(w.ops).await?;
    Ok(probe.finish(pair, w.ops, started.elapsed()))
}

/// Submits `ops / 2` operations on each of A and B (A has a ping-pong remote to B) and waits
/// until both hold all of them.
pub async fn both_ways(pair: &Pair, ops: usize) -> Result<RunResult> {
    let half = ops / 2;
    let started = Instant::now();
    tokio::try_join!(
        write_on(&pair.a, "bench/a", half, 100, 8),
        write_on(&pair.b, "bench/b", half, 100, 8)
    )?;
    let total = (half * 2) as u64;
    wait_for_head(&pair.a, total).await?;
    wait_for_head(&pair.b, total).await?;
    Ok(RunResult::throughput(half * 2, started.elapsed()))
}

/// Submits on A (which must push to B) at a steady `rate` (operations per second, in
/// submissions of `per_job`) for `duration` and measures push-to-applied latency on B.
pub async fn steady(
    pair: &Pair,
    rate: u64,
    duration: Duration,
    per_job: usize,
) -> Result<RunResult> {
    let probe = Probe::attach(pair);
    let per_job = per_job.max(1);
    let rate = rate.max(1);
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
    probe.wait_for(total).await?;
    Ok(probe.finish(pair, total, started.elapsed()))
}

/// Writes `ops` operations on A while B is away (no remote between them), then B connects to A
/// at `url_of_a` (ping-pong, so B pulls) and the time until B holds all of them is measured: how
/// fast a node that was offline catches up.
pub async fn catch_up(pair: &Pair, ops: usize, url_of_a: &str) -> Result<RunResult> {
    write_on(&pair.a, "bench/backlog", ops, 100, 16).await?;
    let started = Instant::now();
    pair.b
        .sync()
        .add_remote(RemoteConfig::new("a", url_of_a)?.with_mode(SyncMode::PingPong))
        .await?;
    wait_for_head(&pair.b, ops as u64).await?;
    Ok(RunResult::throughput(ops, started.elapsed()))
}

/// Waits until `reactor`'s store holds `total` operations, at most [`LIMIT`].
async fn wait_for_head(reactor: &Reactor, total: u64) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let head = reactor.store().head().await?.0;
        if head >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{} holds {head} of {total} operations after {} s",
                    reactor.id(),
                    LIMIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_micros(250)).await;
    }
}

/// Submits `ops` `set` operations on `reactor` from `writers` concurrent writers, `per_job` per
/// submission, each writer on its own document `<prefix>-<k>`.
pub async fn write_on(
    reactor: &Reactor,
    prefix: &str,
    ops: usize,
    per_job: usize,
    writers: usize,
) -> Result<()> {
    let writers = writers.max(1);
    let per_writer = ops.div_ceil(writers);
    let mut tasks = Vec::new();
    for k in 0..writers {
        let r = reactor.clone();
        let n = per_writer.min(ops.saturating_sub(k * per_writer));
        let doc = format!("{prefix}-{k}");
        let per_job = per_job.max(1);
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let m = left.min(per_job);
                let sub = Submission::json(
                    &doc,
                    (0..m).map(|i| ("set", serde_json::json!({"path": "/v", "value": i}))),
                )?;
                r.submit(sub).await?;
                left -= m;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| Error::internal(format!("a writer panicked: {e}")))??;
    }
    Ok(())
}
