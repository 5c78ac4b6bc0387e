//! Time: the injected wall clock and the hybrid logical clock built on it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::error::{Error, Result};

pub use syncline_proto::clock::Hlc;

/// A source of wall-clock milliseconds. Injected so simulations control time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that follows tokio's (possibly paused) time, offset from a fixed epoch. Used by the
/// deterministic simulation; `skew_ms` models a reactor whose wall clock is off.
#[derive(Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
    epoch_ms: u64,
    skew_ms: i64,
}

impl TokioClock {
    /// A clock reading `epoch_ms + skew_ms` now and advancing with tokio time.
    pub fn new(epoch_ms: u64, skew_ms: i64) -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
            epoch_ms,
            skew_ms,
        }
    }
}

impl Clock for TokioClock {
    fn now_millis(&self) -> u64 {
        let elapsed = self.start.elapsed().as_millis() as i64;
        (self.epoch_ms as i64 + elapsed + self.skew_ms).max(0) as u64
    }
}

/// A clock moved by hand, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `millis`.
    pub fn new(millis: u64) -> Self {
        ManualClock(AtomicU64::new(millis))
    }

    /// Moves the clock to `millis` (it may go backwards, as real clocks do).
    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The hybrid logical clock of one reactor.
///
/// `tick` gives strictly increasing times on this reactor; `observe` folds in times received
/// from peers so that operations created after a receive sort after what was received, even
/// when the wall clocks disagree.
#[derive(Debug)]
pub struct HlcClock {
    clock: Arc<dyn Clock>,
    last: Mutex<Hlc>,
    max_drift: Duration,
}

impl HlcClock {
    /// An HLC over `clock` that refuses remote times more than `max_drift` ahead of it.
    pub fn new(clock: Arc<dyn Clock>, max_drift: Duration) -> Self {
        HlcClock {
            clock,
            last: Mutex::new(Hlc::default()),
            max_drift,
        }
    }

    /// The underlying wall clock.
    pub fn wall(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A fresh time for a local event.
    pub fn tick(&self) -> Hlc {
        let now = self.clock.now_millis();
        let mut last = self.last.lock();
        *last = if now > last.millis {
            Hlc {
                millis: now,
                counter: 0,
            }
        } else {
            Hlc {
                millis: last.millis,
                counter: last.counter.saturating_add(1),
            }
        };
        *last
    }

    /// Reserves `n` consecutive times for a batch of local events and returns the first;
    /// the others are the same millisecond with the following counters.
    pub fn tick_many(&self, n: u32) -> Hlc {
        let first = self.tick();
        if n > 1 {
            let mut last = self.last.lock();
            let end = first.counter.saturating_add(n - 1);
            if *last
                < (Hlc {
                    millis: first.millis,
                    counter: end,
                })
            {
                *last = Hlc {
                    millis: first.millis,
                    counter: end,
                };
            }
        }
        first
    }

    /// Checks that a remote time is not implausibly far ahead of our wall clock.
    pub fn check(&self, remote: Hlc) -> Result<()> {
        let now = self.clock.now_millis();
        let limit = now.saturating_add(self.max_drift.as_millis() as u64);
        if remote.millis > limit {
            return Err(Error::new(
                crate::error::ErrorKind::ClockDrift,
                format!(
                    "timestamp {remote} is {} ms ahead of this reactor's clock; the limit is {} ms",
                    remote.millis - now,
                    self.max_drift.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// Folds a received time into the clock (the HLC receive rule).
    pub fn observe(&self, remote: Hlc) {
        let mut last = self.last.lock();
        if remote > *last {
            *last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_increase_even_when_the_wall_clock_goes_back() {
        let wall = Arc::new(ManualClock::new(1_000));
        let hlc = HlcClock::new(wall.clone(), Duration::from_secs(60));
        let a = hlc.tick();
        wall.set(500);
        let b = hlc.tick();
        assert!(b > a);
        wall.set(2_000);
        let c = hlc.tick();
        assert_eq!(
            c,
            Hlc {
                millis: 2_000,
                counter: 0
            }
        );
    }

    #[test]
    fn observing_a_later_remote_time_orders_later_local_events_after_it() {
        let wall = Arc::new(ManualClock::new(1_000));
        let hlc = HlcClock::new(wall, Duration::from_secs(60));
        let remote = Hlc {
            millis: 5_000,
            counter: 7,
        };
        hlc.check(remote).unwrap();
        hlc.observe(remote);
        assert!(hlc.tick() > remote);
        let far = Hlc {
            millis: 1_000 + 61_000,
            counter: 0,
        };
        assert!(hlc.check(far).is_err());
    }

    #[test]
    fn tick_many_reserves_a_run() {
        let wall = Arc::new(ManualClock::new(1_000));
        let hlc = HlcClock::new(wall, Duration::from_secs(60));
        let first = hlc.tick_many(10);
        let next = hlc.tick();
        assert_eq!(next.millis, first.millis);
        assert_eq!(next.counter, first.counter + 10);
    }
}
