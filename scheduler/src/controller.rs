//! The pure controller: measurements in, the next pull interval out.
//!
//! Time and randomness are arguments, so the controller is tested with synthetic inputs and
//! never touches a clock. `docs/scheduler.md` explains the formula with a worked example.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncline_core::{PullReport, RetryPolicy};

/// The controller's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Shortest wait between pulls (except `has_more`, which pulls at once).
    #[serde(with = "syncline_core::retry::millis")]
    pub min_interval: Duration,
    /// Longest wait between pulls.
    #[serde(with = "syncline_core::retry::millis")]
    pub max_interval: Duration,
    /// The first wait, before anything was measured.
    #[serde(with = "syncline_core::retry::millis")]
    pub initial_interval: Duration,
    /// The wait after a pull that brought operations, at a low operation rate.
    #[serde(with = "syncline_core::retry::millis")]
    pub active_interval: Duration,
    /// Operations per second at which the active wait halves.
    pub reference_rate: f64,
    /// Growth of the wait per pull that brought nothing.
    pub idle_growth: f64,
    /// The wait while the remote pushes to us (pulls are only a safety net then).
    #[serde(with = "syncline_core::retry::millis")]
    pub safety_interval: Duration,
    /// How long a push from the remote counts as recent.
    #[serde(with = "syncline_core::retry::millis")]
    pub push_window: Duration,
    /// Round trip beyond which pulls stretch proportionally.
    #[serde(with = "syncline_core::retry::millis")]
    pub rtt_target: Duration,
    /// Queue fill (0–1) beyond which pulls back off.
    pub queue_high_water: f64,
    /// Commit time beyond which pulls stretch proportionally.
    #[serde(with = "syncline_core::retry::millis")]
    pub lag_target: Duration,
    /// Process CPU use (0–1 of all cores) beyond which pulls wait twice as long.
    pub cpu_high_water: f64,
    /// Jitter as a fraction of the wait, applied both ways.
    pub jitter: f64,
    /// Weight of the newest sample in the moving averages.
    pub ewma_alpha: f64,
    /// Backoff after failed pulls (separate from the activity formula).
    pub backoff: RetryPolicy,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(30),
            initial_interval: Duration::from_secs(1),
            active_interval: Duration::from_millis(500),
            reference_rate: 100.0,
            idle_growth: 2.0,
            safety_interval: Duration::from_secs(15),
            push_window: Duration::from_secs(20),
            rtt_target: Duration::from_millis(100),
            queue_high_water: 0.5,
            lag_target: Duration::from_millis(200),
            cpu_high_water: 0.85,
            jitter: 0.2,
            ewma_alpha: 0.3,
            backoff: RetryPolicy {
                initial_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(30),
                multiplier: 2.0,
                max_attempts: None,
            },
        }
    }
}

impl SchedulerConfig {
    /// Checks the values, naming the key that is wrong.
    pub fn validate(&self) -> syncline_core::Result<()> {
        let bad = |k: &str, why: &str| {
            Err(syncline_core::Error::invalid(format!(
                "scheduler.{k}: {why}"
            )))
        };
        if self.min_interval.is_zero() {
            return bad("min_interval", "must be positive");
        }
        if self.min_interval > self.max_interval {
            return bad("min_interval", "must not exceed max_interval");
        }
        for (k, v) in [
            ("initial_interval", self.initial_interval),
            ("active_interval", self.active_interval),
            ("safety_interval", self.safety_interval),
        ] {
            if v < self.min_interval || v > self.max_interval {
                return bad(k, "must lie between min_interval and max_interval");
            }
        }
        if !(self.idle_growth.is_finite() && self.idle_growth >= 1.0) {
            return bad("idle_growth", "must be a number >= 1");
        }
        if !(self.reference_rate.is_finite() && self.reference_rate > 0.0) {
            return bad("reference_rate", "must be positive");
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad("jitter", "must be at least 0 and below 1");
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return bad("ewma_alpha", "must be in (0, 1]");
        }
        if !(self.queue_high_water > 0.0 && self.queue_high_water < 1.0) {
            return bad("queue_high_water", "must be in (0, 1)");
        }
        if !(self.cpu_high_water > 0.0 && self.cpu_high_water <= 1.0) {
            return bad("cpu_high_water", "must be in (0, 1]");
        }
        if self.rtt_target.is_zero() || self.lag_target.is_zero() {
            return bad("rtt_target", "rtt_target and lag_target must be positive");
        }
        self.backoff.validate("scheduler.backoff")
    }
}

/// Why an interval was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The responder has more: pull at once.
    HasMore,
    /// The last pull brought operations.
    Active,
    /// The last pulls brought nothing: the wait grows.
    Idle,
    /// The remote pushes to us: pulls are a safety net.
    Pushing,
    /// The last pull failed: backoff.
    Failure,
}

/// Every input of one remote's decision, for metrics and status pages.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Inputs {
    /// Round trip EWMA, seconds.
    pub rtt: f64,
    /// Response throughput EWMA, bytes per second.
    pub throughput: f64,
    /// Operations per second seen in pulls (EWMA).
    pub op_rate: f64,
    /// Operations per pull (EWMA).
    pub ops_per_pull: f64,
    /// Bytes per pull (EWMA).
    pub bytes_per_pull: f64,
    /// Pushes received from the remote within the push window.
    pub recent_pushes: usize,
    /// Whether our last push to the remote succeeded.
    pub pushes_succeed: bool,
    /// Pulls in a row that brought nothing.
    pub empty_streak: u32,
    /// Failed pulls in a row.
    pub failures: u32,
    /// Local queue fill, 0–1.
    pub queue_fill: f64,
    /// Last commit time, seconds.
    pub executor_lag: f64,
    /// Process CPU use, 0–1 of all cores.
    pub cpu: f64,
    /// The wait chosen last, seconds.
    pub interval: f64,
}

/// A decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// How long to wait before the next pull.
    pub interval: Duration,
    /// Why.
    pub reason: Reason,
}

#[derive(Clone, Debug, Default)]
struct RemoteState {
    rtt: Option<f64>,
    throughput: Option<f64>,
    op_rate: f64,
    ops_per_pull: Option<f64>,
    bytes_per_pull: Option<f64>,
    last_pull_at: Option<Duration>,
    base: Option<f64>,
    empty_streak: u32,
    failures: u32,
    pushes: VecDeque<Duration>,
    pushes_succeed: bool,
    interval: f64,
    reason: Option<Reason>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Load {
    queue_fill: f64,
    executor_lag: f64,
    cpu: f64,
}

/// The adaptive pull controller for all remotes of a reactor.
#[derive(Clone, Debug)]
pub struct Controller {
    config: SchedulerConfig,
    remotes: BTreeMap<String, RemoteState>,
    load: Load,
}

fn ewma(old: Option<f64>, sample: f64, alpha: f64) -> f64 {
    match old {
        Some(o) => o + alpha * (sample - o),
        None => sample,
    }
}

impl Controller {
    /// A controller with these settings.
    pub fn new(config: SchedulerConfig) -> Self {
        Controller {
            config,
            remotes: BTreeMap::new(),
            load: Load::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn remote(&mut self, name: &str) -> &mut RemoteState {
        self.remotes
            .entry(name.to_owned())
            .or_insert_with(|| RemoteState {
                pushes_succeed: true,
                ..RemoteState::default()
            })
    }

    fn prune(&mut self, name: &str, now: Duration) {
        let window = self.config.push_window;
        let r = self.remote(name);
        while r
            .pushes
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > window)
        {
            r.pushes.pop_front();
        }
    }

    /// The remote pushed a batch to us at `now`.
    pub fn on_push_received(&mut self, name: &str, now: Duration) {
        self.remote(name).pushes.push_back(now);
        self.prune(name, now);
    }

    /// Our push to the remote finished.
    pub fn on_push_sent(&mut self, name: &str, ok: bool, rtt: Duration) {
        let alpha = self.config.ewma_alpha;
        let r = self.remote(name);
        r.pushes_succeed = ok;
        if ok {
            r.rtt = Some(ewma(r.rtt, rtt.as_secs_f64(), alpha));
        }
    }

    /// Local load: queue fill (0–1), the last commit's duration, and CPU (0–1) if measured.
    pub fn on_load(&mut self, queue_fill: f64, executor_lag: Duration, cpu: Option<f64>) {
        self.load.queue_fill = queue_fill.clamp(0.0, 1.0);
        self.load.executor_lag = executor_lag.as_secs_f64();
        if let Some(c) = cpu {
            self.load.cpu = c.clamp(0.0, 1.0);
        }
    }

    /// Forgets a remote.
    pub fn forget(&mut self, name: &str) {
        self.remotes.remove(name);
    }

    /// Why the last interval of a remote was chosen.
    pub fn last_reason(&self, name: &str) -> Option<Reason> {
        self.remotes.get(name).and_then(|r| r.reason)
    }

    /// The inputs of a remote's last decision.
    pub fn inputs(&self, name: &str) -> Inputs {
        let r = self.remotes.get(name).cloned().unwrap_or_default();
        Inputs {
            rtt: r.rtt.unwrap_or(0.0),
            throughput: r.throughput.unwrap_or(0.0),
            op_rate: r.op_rate,
            ops_per_pull: r.ops_per_pull.unwrap_or(0.0),
            bytes_per_pull: r.bytes_per_pull.unwrap_or(0.0),
            recent_pushes: r.pushes.len(),
            pushes_succeed: r.pushes_succeed,
            empty_streak: r.empty_streak,
            failures: r.failures,
            queue_fill: self.load.queue_fill,
            executor_lag: self.load.executor_lag,
            cpu: self.load.cpu,
            interval: r.interval,
        }
    }

    /// Decides the wait after a pull of `name` that finished at `now`; `jitter` is uniform in
    /// `[0, 1)`.
    pub fn on_pull(
        &mut self,
        name: &str,
        now: Duration,
        report: &PullReport,
        jitter: f64,
    ) -> Decision {
        self.prune(name, now);
        let c = self.config.clone();
        let load = self.load;
        let r = self.remote(name);
        let min = c.min_interval.as_secs_f64();
        let max = c.max_interval.as_secs_f64();
        if !report.ok {
            r.failures += 1;
            let wait = c
                .backoff
                .backoff(r.failures, jitter)
                .as_secs_f64()
                .clamp(min, max);
            r.interval = wait;
            r.reason = Some(Reason::Failure);
            return Decision {
                interval: Duration::from_secs_f64(wait),
                reason: Reason::Failure,
            };
        }
        r.failures = 0;
        // Measurements.
        let rtt = report.rtt.as_secs_f64();
        if rtt > 0.0 {
            r.rtt = Some(ewma(r.rtt, rtt, c.ewma_alpha));
        }
        if rtt > 0.0 && report.bytes > 0 {
            r.throughput = Some(ewma(r.throughput, report.bytes as f64 / rtt, c.ewma_alpha));
        }
        r.ops_per_pull = Some(ewma(r.ops_per_pull, report.ops as f64, c.ewma_alpha));
        r.bytes_per_pull = Some(ewma(r.bytes_per_pull, report.bytes as f64, c.ewma_alpha));
        if let Some(prev) = r.last_pull_at {
            let dt = now.saturating_sub(prev).as_secs_f64().max(1e-3);
            r.op_rate = r.op_rate + c.ewma_alpha * (report.ops as f64 / dt - r.op_rate);
        }
        r.last_pull_at = Some(now);
        if report.has_more {
            r.empty_streak = 0;
            r.base = Some(c.active_interval.as_secs_f64());
            r.interval = 0.0;
            r.reason = Some(Reason::HasMore);
            return Decision {
                interval: Duration::ZERO,
                reason: Reason::HasMore,
            };
        }
        // 1. Activity: busy remotes are pulled soon, idle ones ever more rarely.
        let (mut base, mut reason) = if report.ops > 0 {
            r.empty_streak = 0;
            (
                c.active_interval.as_secs_f64() / (1.0 + r.op_rate / c.reference_rate),
                Reason::Active,
            )
        } else {
            r.empty_streak += 1;
            let prev = r.base.unwrap_or(c.initial_interval.as_secs_f64());
            (prev * c.idle_growth, Reason::Idle)
        };
        base = base.clamp(min, max);
        r.base = Some(base);
        // 2. Recent pushes from the remote: pulls are only a safety net.
        if !r.pushes.is_empty() && base < c.safety_interval.as_secs_f64() {
            base = c.safety_interval.as_secs_f64();
            reason = Reason::Pushing;
        }
        // 3. Network: slow round trips and long transfers stretch the wait; so does a remote
        //    our pushes do not reach.
        let transfer = match (r.bytes_per_pull, r.throughput) {
            (Some(b), Some(t)) if t > 0.0 => b / t,
            _ => 0.0,
        };
        let mut network = ((r.rtt.unwrap_or(0.0) + transfer) / c.rtt_target.as_secs_f64()).max(1.0);
        if !r.pushes_succeed {
            network *= 2.0;
        }
        // 4. Local load: a deep queue, slow commits or a busy CPU stretch it too.
        let hw = c.queue_high_water;
        let queue = 1.0 + 3.0 * ((load.queue_fill - hw) / (1.0 - hw)).max(0.0);
        let lag = (load.executor_lag / c.lag_target.as_secs_f64()).max(1.0);
        let cpu = if load.cpu > c.cpu_high_water {
            2.0
        } else {
            1.0
        };
        let wait = (base * network * queue * lag * cpu).clamp(min, max);
        // 5. Jitter, so that many reactors do not pull in lock-step.
        let jittered = (wait * (1.0 + c.jitter * (2.0 * jitter - 1.0))).clamp(min, max);
        r.interval = jittered;
        r.reason = Some(reason);
        Decision {
            interval: Duration::from_secs_f64(jittered),
            reason,
        }
    }
}
