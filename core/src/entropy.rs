//! Injected randomness: ids and retry jitter come from here, so a seeded simulation replays
//! exactly.

use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::types::{ActionId, JobId, OpId};

/// A reactor's source of randomness.
pub struct Entropy(Mutex<StdRng>);

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Entropy")
    }
}

impl Entropy {
    /// Randomness seeded from the operating system.
    pub fn from_os() -> Self {
        Entropy(Mutex::new(StdRng::from_os_rng()))
    }

    /// Deterministic randomness for simulations and tests.
    pub fn seeded(seed: u64) -> Self {
        Entropy(Mutex::new(StdRng::seed_from_u64(seed)))
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&self, buf: &mut [u8]) {
        self.0.lock().fill_bytes(buf);
    }

    fn bytes16(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.0.lock().fill_bytes(&mut b);
        b
    }

    /// A fresh operation id.
    pub fn op_id(&self) -> OpId {
        OpId::from_random_bytes(self.bytes16())
    }

    /// `n` fresh operation ids for operations stamped at `millis`, taking the lock once.
    ///
    /// The ids are version 7 UUIDs: the millisecond first, then random bits. Ids created close
    /// in time are close in key order, so stores indexing by id append to the same few index
    /// pages instead of touching a random page per operation.
    pub fn op_ids(&self, n: usize, millis: u64) -> Vec<OpId> {
        let mut rng = self.0.lock();
        (0..n)
            .map(|_| {
                let mut b = [0u8; 10];
                rng.fill_bytes(&mut b);
                OpId(uuid::Builder::from_unix_timestamp_millis(millis, &b).into_uuid())
            })
            .collect()
    }

    /// A fresh action id.
    pub fn action_id(&self) -> ActionId {
        ActionId::from_random_bytes(self.bytes16())
    }

    /// A fresh job id.
    pub fn job_id(&self) -> JobId {
        JobId::from_random_bytes(self.bytes16())
    }

    /// A uniformly random duration in `[0, max]` (full jitter).
    pub fn jitter(&self, max: Duration) -> Duration {
        let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.0.lock().random_range(0..=nanos))
    }

    /// A random float in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        self.0.lock().random::<f64>()
    }

    /// A random `u64`.
    pub fn next_u64(&self) -> u64 {
        self.0.lock().next_u64()
    }
}
