//! The hybrid logical clock time carried by every operation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A hybrid logical clock time: wall milliseconds plus a counter for events within one
/// millisecond. Ties between reactors are broken by the operation id in the canonical order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (as seen by the clock that produced it).
    pub millis: u64,
    /// Logical counter within `millis`.
    pub counter: u32,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.millis, self.counter)
    }
}
