//! The adaptive pull scheduler.
//!
//! [`controller::Controller`] is pure: measurements in, the next interval out, time and
//! randomness passed in. [`AdaptiveScheduler`] is the driver: it implements the core's
//! `Scheduler` trait, so the sync manager's pullers ask it how long to wait and report every
//! pull, push and commit to it; it reads the time from an injected clock, samples the process
//! CPU, and exports every input and the chosen interval as metrics.

pub mod controller;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;
use parking_lot::Mutex;
use syncline_core::{PullReport, Scheduler, Signal};

pub use controller::{Controller, Decision, Inputs, Reason, SchedulerConfig};

/// Where the scheduler reads the time: a monotonic duration since any fixed point.
pub type Now = Arc<dyn Fn() -> Duration + Send + Sync>;

/// A clock following tokio's time (which tests pause and advance).
pub fn tokio_now() -> Now {
    let start = tokio::time::Instant::now();
    Arc::new(move || start.elapsed())
}

/// Samples this process's CPU use from `/proc/self/stat` (Linux); `None` elsewhere.
#[derive(Debug, Default)]
struct CpuSampler {
    last: Option<(Duration, f64)>,
}

fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

impl CpuSampler {
    fn sample(&mut self, now: Duration) -> Option<f64> {
        let cpu = process_cpu_seconds()?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);

        match self.last {
            Some((t, c)) if now > t + Duration::from_millis(500) => {
                let ratio = (cpu - c) / (now - t).as_secs_f64() / cores;
                self.last = Some((now, cpu));
                Some(ratio.clamp(0.0, 1.0))
            }
            Some(_) => None,
            None => {
                self.last = Some((now, cpu));
                None
            }
        }
    }
}

/// The adaptive scheduler (the default of `syncline node`).
pub struct AdaptiveScheduler {
    controller: Mutex<Controller>,
    cpu: Mutex<CpuSampler>,
    now: Now,
    sample_cpu: bool,
}

impl fmt::Debug for AdaptiveScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveScheduler")
            .field("config", self.controller.lock().config())
            .finish()
    }
}

impl AdaptiveScheduler {
    /// A scheduler with these settings, reading time from `now`.
    pub fn new(config: SchedulerConfig, now: Now) -> syncline_core::Result<Self> {
        config.validate()?;
        Ok(AdaptiveScheduler {
            controller: Mutex::new(Controller::new(config)),
            cpu: Mutex::new(CpuSampler::default()),
            now,
            sample_cpu: true,
        })
    }

    /// Does not sample the process CPU (deterministic simulations).
    pub fn without_cpu_sampling(mut self) -> Self {
        self.sample_cpu = false;
        self
    }

    /// The inputs of a remote's last decision.
    pub fn inputs(&self, remote: &str) -> Inputs {
        self.controller.lock().inputs(remote)
    }
}

/// Describes the scheduler's metrics to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_gauge};
    describe_gauge!(
        "syncline_scheduler_rtt_seconds",
        Unit::Seconds,
        "Round trip (EWMA) per remote."
    );
    describe_gauge!(
        "syncline_scheduler_throughput_bytes_per_second",
        Unit::Bytes,
        "Pull response throughput (EWMA) per remote."
    );
    describe_gauge!(
        "syncline_scheduler_op_rate_ops_per_second",
        Unit::CountPerSecond,
        "Operations per second seen in pulls (EWMA)."
    );
    describe_gauge!(
        "syncline_scheduler_pull_size_ops",
        Unit::Count,
        "Operations per pull (EWMA)."
    );
    describe_gauge!(
        "syncline_scheduler_pull_size_bytes",
        Unit::Bytes,
        "Bytes per pull (EWMA)."
    );
    describe_gauge!(
        "syncline_scheduler_recent_pushes",
        Unit::Count,
        "Pushes received from the remote within the push window."
    );
    describe_gauge!(
        "syncline_scheduler_pushes_succeed",
        Unit::Count,
        "1 if our last push to the remote succeeded."
    );
    describe_gauge!(
        "syncline_scheduler_empty_pulls",
        Unit::Count,
        "Empty pulls in a row."
    );
    describe_gauge!(
        "syncline_scheduler_failures",
        Unit::Count,
        "Failed pulls in a row."
    );
    describe_gauge!(
        "syncline_scheduler_queue_fill_ratio",
        Unit::Percent,
        "Queue fill, 0 to 1."
    );
    describe_gauge!(
        "syncline_scheduler_executor_lag_seconds",
        Unit::Seconds,
        "Duration of the last commit."
    );
    describe_gauge!(
        "syncline_scheduler_cpu_ratio",
        Unit::Percent,
        "Process CPU use, 0 to 1 of all cores."
    );
    describe_gauge!(
        "syncline_scheduler_interval_seconds",
        Unit::Seconds,
        "The wait chosen before the next pull, with the reason."
    );
}

fn export(remote: &str, i: &Inputs, reason: Reason) {
    let r = syncline_core::telemetry::remote_label(remote);
    gauge!("syncline_scheduler_rtt_seconds", "remote" => r.clone()).set(i.rtt);
    gauge!("syncline_scheduler_throughput_bytes_per_second", "remote" => r.clone())
        .set(i.throughput);
    gauge!("syncline_scheduler_op_rate_ops_per_second", "remote" => r.clone()).set(i.op_rate);
    gauge!("syncline_scheduler_pull_size_ops", "remote" => r.clone()).set(i.ops_per_pull);
    gauge!("syncline_scheduler_pull_size_bytes", "remote" => r.clone()).set(i.bytes_per_pull);
    gauge!("syncline_scheduler_recent_pushes", "remote" => r.clone()).set(i.recent_pushes as f64);
    gauge!("syncline_scheduler_pushes_succeed", "remote" => r.clone()).set(if i.pushes_succeed {
        1.0
    } else {
        0.0
    });
    gauge!("syncline_scheduler_empty_pulls", "remote" => r.clone()).set(f64::from(i.empty_streak));
    gauge!("syncline_scheduler_failures", "remote" => r.clone()).set(f64::from(i.failures));
    gauge!("syncline_scheduler_queue_fill_ratio").set(i.queue_fill);
    gauge!("syncline_scheduler_executor_lag_seconds").set(i.executor_lag);
    gauge!("syncline_scheduler_cpu_ratio").set(i.cpu);
    gauge!("syncline_scheduler_interval_seconds", "remote" => r, "reason" => reason_label(reason))
        .set(i.interval);
}

fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::HasMore => "has_more",
        Reason::Active => "active",
        Reason::Idle => "idle",
        Reason::Pushing => "pushing",
        Reason::Failure => "failure",
    }
}

impl Scheduler for AdaptiveScheduler {
    fn next_pull(&self, remote: &str, report: &PullReport, jitter: f64) -> Duration {
        let now = (self.now)();
        let cpu = if self.sample_cpu {
            self.cpu.lock().sample(now)
        } else {
            None
        };
        let mut c = self.controller.lock();
        if let Some(cpu) = cpu {
            let i = c.inputs(remote);
            c.on_load(
                i.queue_fill,
                Duration::from_secs_f64(i.executor_lag),
                Some(cpu),
            );
        }
        let d = c.on_pull(remote, now, report, jitter);
        export(remote, &c.inputs(remote), d.reason);
        d.interval
    }

    fn observe(&self, remote: Option<&str>, signal: &Signal) {
        let now = (self.now)();
        let mut c = self.controller.lock();
        match (remote, signal) {
            (Some(r), Signal::PushReceived { .. }) => c.on_push_received(r, now),
            (Some(r), Signal::PushSent { ok, rtt, .. }) => c.on_push_sent(r, *ok, *rtt),
            (
                _,
                Signal::Load {
                    queue_depth,
                    queue_capacity,
                    executor_lag,
                },
            ) => {
                let fill = *queue_depth as f64 / (*queue_capacity).max(1) as f64;
                c.on_load(fill, *executor_lag, None);
            }
            _ => {}
        }
    }

    fn idle(&self, remote: &str) -> bool {
        self.controller.lock().last_reason(remote) == Some(Reason::Idle)
    }

    fn forget(&self, remote: &str) {
        self.controller.lock().forget(remote);
    }
}
