//! Retry policy: exponential backoff with full jitter.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How failed requests are retried.
///
/// The wait before attempt `n + 1` is uniform in `[0, min(max_delay, initial_delay *
/// multiplier^(n-1))]` ("full jitter"), so many reactors retrying after one outage spread out
/// instead of arriving together.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Cap of the first wait.
    #[serde(with = "crate::retry::millis")]
    pub initial_delay: Duration,
    /// Largest cap.
    #[serde(with = "crate::retry::millis")]
    pub max_delay: Duration,
    /// Growth of the cap per attempt.
    pub multiplier: f64,
    /// Attempts before a batch is given up and dead-lettered; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: Some(10),
        }
    }
}

impl RetryPolicy {
    /// The cap of the wait after `attempt` failures (attempt >= 1).
    pub fn cap(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The wait after `attempt` failures, given a uniform random `unit` in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        self.cap(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Whether `attempts` failures exhaust the policy.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts.is_some_and(|m| attempts >= m)
    }

    /// Checks the values.
    pub fn validate(&self, what: &str) -> crate::Result<()> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(crate::Error::invalid(format!(
                "{what}.multiplier must be a number >= 1, got {}",
                self.multiplier
            )));
        }
        if self.initial_delay > self.max_delay {
            return Err(crate::Error::invalid(format!(
                "{what}.initial_delay ({:?}) is larger than {what}.max_delay ({:?})",
                self.initial_delay, self.max_delay
            )));
        }
        if self.max_attempts == Some(0) {
            return Err(crate::Error::invalid(format!(
                "{what}.max_attempts must be at least 1 (or absent to retry forever)"
            )));
        }
        Ok(())
    }
}

/// Serde for durations as integer milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_grow_exponentially_to_the_maximum_and_jitter_is_full() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: Some(3),
        };
        assert_eq!(p.cap(1), Duration::from_millis(100));
        assert_eq!(p.cap(2), Duration::from_millis(200));
        assert_eq!(p.cap(4), Duration::from_millis(800));
        assert_eq!(p.cap(5), Duration::from_secs(1));
        assert_eq!(p.cap(500), Duration::from_secs(1));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(200));
        assert!(!p.exhausted(2));
        assert!(p.exhausted(3));
        assert!(
            RetryPolicy {
                max_attempts: None,
                ..p
            }
            .validate("retry")
            .is_ok()
        );
        assert!(
            RetryPolicy {
                multiplier: 0.5,
                ..p
            }
            .validate("retry")
            .is_err()
        );
    }
}
