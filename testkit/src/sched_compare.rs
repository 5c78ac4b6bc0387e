//! Fixed interval against adaptive scheduling on simulated workloads.
//!
//! Reactor B pulls from reactor A for ten virtual minutes (paused tokio time, memory transport)
//! while A writes one of three workloads. Counted: pulls B issued, pulls that brought nothing,
//! and for every operation the time from its commit on A to its commit on B.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use syncline_core::{
    Event, FixedInterval, MemoryStore, OpId, PullReport, Reactor, ReactorId, RemoteConfig, Result,
    RetryPolicy, Scheduler, Signal, Submission, SyncMode, TokioClock,
};
use syncline_scheduler::{AdaptiveScheduler, SchedulerConfig, tokio_now};
use syncline_transport_memory::MemoryNetwork;

/// What A writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Bursts of 10 submissions (5 operations each, 200 ms apart) every 20–60 s.
    Bursty,
    /// Nothing.
    Idle,
    /// About one submission of 5 operations a second, pushed to B by A; B's pulls are a safety
    /// net.
    Pushing,
}

/// Which scheduler B uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every 2 s (the original reactor's default).
    Fixed,
    /// `syncline-scheduler` with default settings.
    Adaptive,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Pulls B issued.
    pub pulls: u64,
    /// Pulls that brought nothing.
    pub empty_pulls: u64,
    /// Operations A wrote.
    pub ops: usize,
    /// Median write-to-applied latency.
    pub p50: Option<Duration>,
    /// Mean write-to-applied latency.
    pub mean: Option<Duration>,
    /// Largest write-to-applied latency.
    pub max: Option<Duration>,
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |x: Option<Duration>| {
            x.map_or("—".to_owned(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1000.0)
            })
        };
        write!(
            f,
            "{} pulls, {} empty; latency p50 {} mean {} max {}",
            self.pulls,
            self.empty_pulls,
            d(self.p50),
            d(self.mean),
            d(self.max)
        )
    }
}

/// Counts empty pulls on the way to the real scheduler.
#[derive(Debug)]
struct CountEmpty {
    inner: Arc<dyn Scheduler>,
    empty: AtomicU64,
}

impl Scheduler for CountEmpty {
    fn next_pull(&self, remote: &str, report: &PullReport, jitter: f64) -> Duration {
        if report.ok && report.ops == 0 && !report.has_more {
            self.empty.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.next_pull(remote, report, jitter)
    }
    fn observe(&self, remote: Option<&str>, signal: &Signal) {
        self.inner.observe(remote, signal)
    }
    fn idle(&self, remote: &str) -> bool {
        self.inner.idle(remote)
    }
}

async fn simulate(workload: Workload, kind: Kind, duplex: bool, seed: u64) -> Result<Measured> {
    let net = MemoryNetwork::new();
    let clock = || Arc::new(TokioClock::new(1_700_000_000_000, 0));
    let inner: Arc<dyn Scheduler> = match kind {
        Kind::Fixed => Arc::new(FixedInterval::new(
            Duration::from_secs(2),
            RetryPolicy::default(),
        )),
        Kind::Adaptive => Arc::new(
            AdaptiveScheduler::new(SchedulerConfig::default(), tokio_now())?.without_cpu_sampling(),
        ),
    };
    let counting = Arc::new(CountEmpty {
        inner,
        empty: AtomicU64::new(0),
    });
    let a = Reactor::builder(ReactorId::new("a")?)
        .store(Arc::new(MemoryStore::new()))
        .transport(net.transport("a"))
        .clock(clock())
        .seed(seed)
        .start()
        .await?;
    a.listen("mem://a").await?;
    let b_transport = if duplex {
        net.transport("b")
    } else {
        net.transport("b").non_duplex()
    };
    let b = Reactor::builder(ReactorId::new("b")?)
        .store(Arc::new(MemoryStore::new()))
        .transport(b_transport)
        .clock(clock())
        .scheduler(counting.clone())
        .seed(seed + 1)
        .start()
        .await?;
    b.listen("mem://b").await?;
    b.sync()
        .add_remote(RemoteConfig::new("a", "mem://a")?.with_mode(SyncMode::Pull))
        .await?;
    if workload == Workload::Pushing {
        a.sync()
            .add_remote(RemoteConfig::new("b", "mem://b")?.with_mode(SyncMode::Push))
            .await?;
    }
    let written: Arc<Mutex<HashMap<OpId, tokio::time::Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let w = written.clone();
    a.bus().on(move |e| {
        if let Event::OperationsWritten(ops) = e {
            let now = tokio::time::Instant::now();
            let mut w = w.lock();
            for s in &ops.ops {
                w.insert(s.op.id, now);
            }
        }
    });
    let (w, l) = (written.clone(), latencies.clone());
    b.bus().on(move |e| {
        if let Event::OperationsWritten(ops) = e {
            let now = tokio::time::Instant::now();
            let w = w.lock();
            let mut l = l.lock();
            for s in &ops.ops {
                if let Some(t) = w.get(&s.op.id) {
                    l.push(now - *t);
                }
            }
        }
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let horizon = Duration::from_secs(600);
    let start = tokio::time::Instant::now();
    let write = |n: usize| {
        Submission::json(
            "doc",
            (0..n).map(|i| ("set", serde_json::json!({"path": "/v", "value": i}))),
        )
    };
    match workload {
        Workload::Idle => tokio::time::sleep(horizon).await,
        Workload::Pushing => {
            while start.elapsed() < horizon {
                a.submit(write(5)?).await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(900..1100))).await;
            }
        }
        Workload::Bursty => loop {
            let gap = Duration::from_secs(rng.random_range(20..60));
            tokio::time::sleep(gap).await;
            if start.elapsed() > horizon {
                break;
            }
            for _ in 0..10 {
                a.submit(write(5)?).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    }
    // Let the last writes arrive.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let pulls = b.sync().remote_status("a")?.pulls;
    let mut lat = latencies.lock().clone();
    lat.sort();
    let ops = written.lock().len();
    a.crash().await;
    b.crash().await;
    let mean = (!lat.is_empty()).then(|| lat.iter().sum::<Duration>() / lat.len() as u32);
    Ok(Measured {
        pulls,
        empty_pulls: counting.empty.load(Ordering::Relaxed),
        ops,
        p50: lat.get(lat.len() / 2).copied(),
        mean,
        max: lat.last().copied(),
    })
}

/// Runs one workload with one scheduler, with or without pokes (`duplex`), on its own paused
/// single-threaded runtime.
pub fn run(workload: Workload, kind: Kind, duplex: bool, seed: u64) -> Result<Measured> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| syncline_core::Error::internal(format!("runtime: {e}")))?;
    rt.block_on(simulate(workload, kind, duplex, seed))
}
