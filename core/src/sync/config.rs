//! What a remote and the sync manager are configured with.

use super::*;

/// How operations flow with a remote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// We push our operations to the remote.
    Push,
    /// We pull the remote's operations on an interval.
    Pull,
    /// Both: push ours, pull theirs.
    #[default]
    #[serde(alias = "ping-pong", alias = "pingpong")]
    PingPong,
}

impl SyncMode {
    /// Whether this mode pushes.
    pub fn pushes(self) -> bool {
        matches!(self, SyncMode::Push | SyncMode::PingPong)
    }

    /// Whether this mode pulls.
    pub fn pulls(self) -> bool {
        matches!(self, SyncMode::Pull | SyncMode::PingPong)
    }
}

/// A configured peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The local name.
    pub name: RemoteName,
    /// Where it is (`mem://b`, `http://host:port`, `ws://...`, `quic://...`, `redis://...`).
    pub url: String,
    /// Push, pull or both.
    #[serde(default)]
    pub mode: SyncMode,
    /// Which strands are exchanged (ours pushed, theirs pulled).
    #[serde(default)]
    pub filter: Filter,
    /// A bearer token presented in `Hello`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// The documents this remote is the authority for (seed 004's Switchboard): when it
    /// refuses one of our operations in them, our document view leaves the operation out, so
    /// that we converge on the authority's state. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<Filter>,
}

impl RemoteConfig {
    /// A remote with the default mode (ping-pong) and filter (everything).
    pub fn new(name: &str, url: &str) -> Result<Self> {
        Ok(RemoteConfig {
            name: RemoteName::new(name)?,
            url: url.to_owned(),
            mode: SyncMode::PingPong,
            filter: Filter::all(),
            credentials: None,
            authority: None,
        })
    }

    /// Sets the mode.
    pub fn with_mode(mut self, mode: SyncMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the filter.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Checks the URL and the filter.
    pub fn validate(&self) -> Result<()> {
        parse_url(&self.url)
            .map_err(|e| Error::invalid(format!("remote {}: {}", self.name, e.message())))?;
        self.filter
            .validate()
            .map_err(|e| Error::invalid(format!("remote {}: {}", self.name, e.message())))?;
        if let Some(a) = &self.authority {
            a.validate().map_err(|e| {
                Error::invalid(format!("remote {} authority: {}", self.name, e.message()))
            })?;
        }
        Ok(())
    }

    /// Whether this remote is the authority for the strand.
    pub fn is_authority_for(&self, strand: &StrandId, document_type: &str) -> bool {
        self.authority.as_ref().is_some_and(|a| {
            a.matches_strand(
                strand.document_id.as_str(),
                document_type,
                strand.scope.as_str(),
                strand.branch.as_str(),
            )
        })
    }
}

/// The default largest action input: 1 MiB.
pub const DEFAULT_MAX_ACTION_BYTES: usize = 1 << 20;

/// Tuning of the sync manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Most operations in one pushed batch.
    pub push_batch_ops: usize,
    /// Most pushed batches in flight per remote.
    pub push_window: usize,
    /// Most operations asked for in one pull.
    pub pull_batch_ops: usize,
    /// Most operations accepted in one received batch.
    pub max_batch_ops: usize,
    /// Time to wait for a response.
    #[serde(with = "crate::retry::millis")]
    pub request_timeout: Duration,
    /// Retries of a batch.
    pub retry: RetryPolicy,
    /// Backoff between connection attempts (never gives up).
    pub reconnect: RetryPolicy,
    /// Scopes that never leave the reactor, besides `local`.
    pub private_scopes: Vec<String>,
    /// Largest frame sent or accepted. Batches (pushes, pull responses, piggybacked pushes)
    /// are cut to fit in seven eighths of it.
    pub max_frame_bytes: usize,
    /// Largest action input (its JSON text) accepted at submission or from a peer; at most half
    /// of `max_frame_bytes`, so any operation fits in a batch alone.
    pub max_action_bytes: usize,
    /// Most concurrent requests served per session.
    pub max_concurrent_requests: usize,
    /// When a ping-pong remote carries pushes inside its pulls (seed 000's optimisation).
    pub piggyback: Piggyback,
    /// Long polls on links without pokes (HTTP) when the scheduler finds a remote idle.
    pub long_poll: bool,
    /// Longest a pull is held open for a peer that asked to wait.
    #[serde(with = "crate::retry::millis")]
    pub max_pull_wait: Duration,
    /// A session a peer opened is closed if it has not said hello within this time.
    #[serde(with = "crate::retry::millis")]
    pub hello_timeout: Duration,
    /// Most sessions peers may hold open with us at once (every transport together); a hello
    /// beyond it is refused as `unavailable`.
    pub max_sessions: usize,
    /// Most sessions one peer may hold open; its hello beyond it closes its oldest session.
    pub max_sessions_per_peer: usize,
    /// Most pull listeners kept; registering one more forgets the least recently used.
    pub max_listeners: usize,
    /// Most pull listeners one peer may have; one more forgets its least recently used.
    pub max_listeners_per_peer: usize,
    /// A listener nobody pulled with or acknowledged for this long is forgotten.
    #[serde(with = "crate::retry::millis")]
    pub listener_ttl: Duration,
}

/// When pushes ride on pulls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Piggyback {
    /// Never: pushes are always their own requests.
    Never,
    /// On links where the responder cannot call us (HTTP): one request does both.
    #[default]
    NonDuplex,
    /// On every link.
    Always,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            push_batch_ops: 1024,
            push_window: 8,
            pull_batch_ops: 1024,
            max_batch_ops: 16_384,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            reconnect: RetryPolicy {
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(10),
                multiplier: 2.0,
                max_attempts: None,
            },
            private_scopes: Vec::new(),
            max_frame_bytes: 32 << 20,
            max_action_bytes: DEFAULT_MAX_ACTION_BYTES,
            max_concurrent_requests: 64,
            piggyback: Piggyback::NonDuplex,
            long_poll: true,
            max_pull_wait: Duration::from_secs(25),
            hello_timeout: Duration::from_secs(5),
            max_sessions: 4096,
            max_sessions_per_peer: 16,
            max_listeners: 10_000,
            max_listeners_per_peer: 16,
            listener_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl SyncConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("push_batch_ops", self.push_batch_ops),
            ("push_window", self.push_window),
            ("pull_batch_ops", self.pull_batch_ops),
            ("max_batch_ops", self.max_batch_ops),
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_action_bytes", self.max_action_bytes),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_sessions", self.max_sessions),
            ("max_sessions_per_peer", self.max_sessions_per_peer),
            ("max_listeners", self.max_listeners),
            ("max_listeners_per_peer", self.max_listeners_per_peer),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(Error::invalid(format!("sync.{k} must be at least 1")));
            }
        }
        if self.push_batch_ops > self.max_batch_ops || self.pull_batch_ops > self.max_batch_ops {
            return Err(Error::invalid(format!(
                "sync.push_batch_ops ({}) and sync.pull_batch_ops ({}) must not exceed \
                 sync.max_batch_ops ({}), or peers with the same settings refuse the batches",
                self.push_batch_ops, self.pull_batch_ops, self.max_batch_ops
            )));
        }
        if self.max_action_bytes > self.max_frame_bytes / 2 {
            return Err(Error::invalid(format!(
                "sync.max_action_bytes ({}) must be at most half of sync.max_frame_bytes ({}), \
                 so that any operation fits in a batch",
                self.max_action_bytes, self.max_frame_bytes
            )));
        }
        for (k, v) in [
            ("request_timeout", self.request_timeout),
            ("hello_timeout", self.hello_timeout),
            ("listener_ttl", self.listener_ttl),
        ] {
            if v.is_zero() {
                return Err(Error::invalid(format!("sync.{k} must be positive")));
            }
        }
        self.retry.validate("sync.retry")?;
        self.reconnect.validate("sync.reconnect")
    }

    /// The bytes a batch of operations may take: seven eighths of the frame limit, leaving room
    /// for the envelope and, in a pull, the result of a piggybacked push.
    pub fn batch_bytes(&self) -> usize {
        self.max_frame_bytes - self.max_frame_bytes / 8
    }

    pub(crate) fn limits(&self) -> SessionLimits {
        SessionLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
        }
    }
}
