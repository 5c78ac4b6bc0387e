//! The status of a job (a batch moving between reactors).

use serde::{Deserialize, Serialize};

/// Where a job is. Transitions only move forward (skipping states is allowed); `Error` can be
/// reached from any state and is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Not started.
    Unknown,
    /// Being moved over the transport.
    TransportPending,
    /// Being executed by the receiving reactor.
    ExecutionPending,
    /// Applied durably by the receiving reactor.
    Applied,
    /// Failed; see the handle's error.
    Error,
}

impl JobStatus {
    /// Whether moving from `self` to `next` is allowed.
    pub fn can_move_to(self, next: JobStatus) -> bool {
        match (self, next) {
            (JobStatus::Error, _) => false,
            (_, JobStatus::Error) => true,
            (JobStatus::Applied, _) => false,
            (a, b) => b > a,
        }
    }

    /// Whether the job is finished (applied or failed).
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Applied | JobStatus::Error)
    }
}
