//! When to pull a remote: the scheduler trait and the fixed-interval scheduler.
//!
//! The puller reports each pull's outcome and asks how long to wait before the next one; other
//! parts of the sync manager report signals (pushes received from the remote, pushes sent to it,
//! local load). The adaptive scheduler lives in `syncline-scheduler`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;

use crate::retry::RetryPolicy;

pub use syncline_proto::sync::puller::PullReport;

/// Something the scheduler may want to know between pulls.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Signal {
    /// The remote pushed `ops` operations to us.
    PushReceived {
        /// Operations in the push.
        ops: usize,
    },
    /// A push to the remote finished.
    PushSent {
        /// Whether it was applied.
        ok: bool,
        /// Operations in it.
        ops: usize,
        /// Round-trip time.
        rtt: Duration,
    },
    /// Local load.
    Load {
        /// Jobs queued.
        queue_depth: usize,
        /// Queue bound.
        queue_capacity: usize,
        /// Time the last commit took.
        executor_lag: Duration,
    },
}

/// Decides when each remote is pulled.
pub trait Scheduler: Send + Sync + fmt::Debug + 'static {
    /// The wait before the next pull of `remote`, given the last pull and a uniform random
    /// `jitter` in `[0, 1)` supplied by the caller (so the scheduler stays deterministic).
    fn next_pull(&self, remote: &str, report: &PullReport, jitter: f64) -> Duration;

    /// Whether the last wait chosen for `remote` was because it is idle. On links where the
    /// responder cannot poke us (HTTP), the puller then pulls at once and lets the responder
    /// hold the pull open for that long instead (a long poll): same number of requests, but
    /// operations written meanwhile arrive at once.
    fn idle(&self, remote: &str) -> bool {
        let _ = remote;
        false
    }

    /// Takes a signal about `remote` (or about the reactor when `remote` is `None`).
    fn observe(&self, remote: Option<&str>, signal: &Signal) {
        let _ = (remote, signal);
    }

    /// Forgets a removed remote.
    fn forget(&self, remote: &str) {
        let _ = remote;
    }
}

/// Pulls every `interval` (the original reactor's behaviour, 2 s by default): at once when the
/// responder has more, and with exponential backoff after failures.
#[derive(Debug)]
pub struct FixedInterval {
    interval: Duration,
    backoff: RetryPolicy,
    failures: Mutex<HashMap<String, u32>>,
}

impl FixedInterval {
    /// A scheduler pulling every `interval`, backing off after failures.
    pub fn new(interval: Duration, backoff: RetryPolicy) -> Self {
        FixedInterval {
            interval,
            backoff,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for FixedInterval {
    fn default() -> Self {
        FixedInterval::new(Duration::from_secs(2), RetryPolicy::default())
    }
}

impl Scheduler for FixedInterval {
    fn next_pull(&self, remote: &str, report: &PullReport, jitter: f64) -> Duration {
        let mut failures = self.failures.lock();
        if !report.ok {
            let n = failures.entry(remote.to_owned()).or_insert(0);
            *n += 1;
            return self.interval.max(self.backoff.backoff(*n, jitter));
        }
        failures.remove(remote);
        if report.has_more {
            Duration::ZERO
        } else {
            self.interval
        }
    }

    fn forget(&self, remote: &str) {
        self.failures.lock().remove(remote);
    }
}
