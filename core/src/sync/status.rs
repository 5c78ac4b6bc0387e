//! What the sync manager reports: remotes' connections, failures, lag and listeners.

use super::*;

/// A remote's connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ConnectionState {
    /// Dialling.
    #[default]
    Connecting,
    /// Connected and welcomed.
    Connected,
    /// Waiting before the next attempt.
    Backoff {
        /// Failed attempts in a row.
        attempt: u32,
        /// Wait before the next attempt.
        retry_in_ms: u64,
        /// The last error.
        error: String,
    },
    /// Stopped (removed or shut down).
    Stopped,
}

/// The last failure seen with a remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The error's kind.
    pub kind: String,
    /// The error.
    pub message: String,
}

/// Everything observable about one remote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteStatus {
    /// The remote's name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Its mode.
    pub mode: SyncMode,
    /// The connection.
    pub connection: ConnectionState,
    /// The remote's reactor id, once known.
    pub peer: Option<ReactorId>,
    /// How far the remote applied our feed.
    pub outbox_cursor: Ordinal,
    /// Operations of our feed after the outbox cursor (including ones the filter skips).
    pub outbox_lag: u64,
    /// Batches pushed and not yet applied.
    pub in_flight: usize,
    /// How far we applied the remote's feed.
    pub inbox_cursor: Ordinal,
    /// The remote's feed after our inbox cursor, as of the last pull.
    pub inbox_lag: u64,
    /// Pulls started.
    pub pulls: u64,
    /// The number of the last pull that found nothing more waiting.
    pub last_caught_up_pull: u64,
    /// The wait chosen before the next pull.
    pub pull_interval_ms: u64,
    /// Last success (ms since the epoch).
    pub last_success_ms: Option<u64>,
    /// Last failure.
    pub last_failure: Option<Failure>,
    /// Dead letters kept for this remote: batches holding operations it refused.
    pub dead_letters: usize,
    /// Whether the remote holds everything we hold for it and we hold what it has for us:
    /// connected, nothing unsent or in flight, no dead letter (no refused operation), and the
    /// last pull found nothing more.
    pub in_sync: bool,
}

/// The status of every remote and of the responder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    /// This reactor.
    pub reactor_id: ReactorId,
    /// Our last ordinal.
    pub head: Ordinal,
    /// Remotes.
    pub remotes: Vec<RemoteStatus>,
    /// Listeners registered by peers pulling from us.
    pub listeners: Vec<ListenerStatus>,
}

/// A peer pulling from us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerStatus {
    /// Listener id.
    pub id: String,
    /// The peer.
    pub peer: ReactorId,
    /// How far it acknowledged.
    pub cursor: Ordinal,
    /// Our feed after its cursor.
    pub lag: u64,
}
