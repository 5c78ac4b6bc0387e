//! The connector of one remote, as a state machine.
//!
//! It has the driver dial the remote (or adopt the session the peer opened to us) and say
//! hello, checks who answered (not this reactor itself, and the reactor the remote was before:
//! its cursors belong to that one), has the peer stored the first time it is learnt, publishes
//! the session, and redials with backoff when the session closes or a dial fails. Connection
//! failures are the connector's alone: they never count against a batch.
//!
//! Everything it decides comes out of [`Connector::poll_effect`]; the driver performs it and
//! feeds the result back ([`Connector::dialed`], [`Connector::saved`], [`Connector::closed`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::retry::RetryPolicy;
use crate::types::ReactorId;

/// Something the driver must do.
#[derive(Clone, Debug)]
pub enum ConnectEffect {
    /// Dial the remote and say hello (or wait for the peer's session), then call
    /// [`Connector::dialed`] with who answered.
    Dial,
    /// The remote answered as `peer` for the first time: store that with the remote, then
    /// call [`Connector::saved`].
    SavePeer(ReactorId),
    /// Close the session just dialled: it is refused (the failure follows).
    Close,
    /// The session is the remote's live session now (the pusher and puller use it).
    Connected {
        /// Who the remote is.
        peer: ReactorId,
    },
    /// The live session closed: nobody may use it any more.
    Disconnected,
    /// Dialling failed; the next dial is in `retry_in`.
    Failed {
        /// Why.
        error: Error,
        /// Failures in a row.
        attempt: u32,
        /// When the next dial is.
        retry_in: Duration,
        /// Whether to say so (the first failure, then at powers of two).
        loud: bool,
    },
    /// The connector stopped.
    Stopped,
}

impl ConnectEffect {
    /// The effect's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ConnectEffect::Dial => "dial",
            ConnectEffect::SavePeer(_) => "save_peer",
            ConnectEffect::Close => "close",
            ConnectEffect::Connected { .. } => "connected",
            ConnectEffect::Disconnected => "disconnected",
            ConnectEffect::Failed { .. } => "failed",
            ConnectEffect::Stopped => "stopped",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Stage {
    Dialing,
    /// Storing who the remote is, before the session is published.
    Saving(ReactorId),
    Connected,
    /// Waiting to dial again.
    Waiting {
        until: Instant,
    },
    Stopped,
}

/// One remote's connector.
#[derive(Debug)]
pub struct Connector {
    reconnect: RetryPolicy,
    /// This reactor: a remote answering as it is refused.
    me: ReactorId,
    /// Who the remote was when last connected, if ever.
    peer: Option<ReactorId>,
    /// What the remote is called and where it is, for errors.
    name: String,
    url: String,
    stage: Stage,
    failures: u32,
    effects: VecDeque<ConnectEffect>,
}

impl Connector {
    /// A connector for remote `name` at `url` of reactor `me`, whose peer is `peer` if it was
    /// learnt before; it dials at once.
    pub fn new(
        reconnect: RetryPolicy,
        me: ReactorId,
        (name, url): (String, String),
        peer: Option<ReactorId>,
    ) -> Self {
        Connector {
            reconnect,
            me,
            peer,
            name,
            url,
            stage: Stage::Dialing,
            failures: 0,
            effects: VecDeque::from([ConnectEffect::Dial]),
        }
    }

    /// The next effect to perform.
    pub fn poll_effect(&mut self) -> Option<ConnectEffect> {
        self.effects.pop_front()
    }

    /// When the connector wants [`Connector::handle_timeout`] called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.stage {
            Stage::Waiting { until } => Some(until),
            _ => None,
        }
    }

    /// Whether a live session is published.
    pub fn is_connected(&self) -> bool {
        self.stage == Stage::Connected
    }

    /// Who the remote is, once known.
    pub fn peer(&self) -> Option<&ReactorId> {
        self.peer.as_ref()
    }

    /// The dial asked for by [`ConnectEffect::Dial`] ended: the remote answered as `peer`, or
    /// it failed. `jitter` gives a number in `[0, 1)` to spread the backoff, asked only when
    /// one is needed.
    pub fn dialed(
        &mut self,
        now: Instant,
        answer: Result<ReactorId, Error>,
        jitter: impl FnOnce() -> f64,
    ) {
        if self.stage != Stage::Dialing {
            return;
        }
        let peer = match answer {
            Ok(peer) => peer,
            Err(e) => return self.fail(now, e, jitter),
        };
        if peer == self.me {
            let e = Error::invalid(format!(
                "remote {} at {} is this reactor itself",
                self.name, self.url
            ));
            return self.refuse(now, e, jitter);
        }
        match &self.peer {
            Some(known) if *known == peer => self.connect(peer),
            Some(known) => {
                let e = Error::invalid(format!(
                    "remote {} used to be reactor {known} but now answers as {peer}; its \
                     cursors do not apply to another reactor: remove and add the remote again \
                     to start over",
                    self.name
                ));
                self.refuse(now, e, jitter);
            }
            None => {
                self.stage = Stage::Saving(peer.clone());
                self.effects.push_back(ConnectEffect::SavePeer(peer));
            }
        }
    }

    /// Storing the peer asked for by [`ConnectEffect::SavePeer`] ended.
    pub fn saved(&mut self, now: Instant, result: Result<(), Error>, jitter: impl FnOnce() -> f64) {
        let Stage::Saving(peer) = &self.stage else {
            return;
        };
        let peer = peer.clone();
        match result {
            Ok(()) => {
                self.peer = Some(peer.clone());
                self.connect(peer);
            }
            Err(e) => self.refuse(now, e, jitter),
        }
    }

    /// The live session closed; the remote is dialled again after a short wait (a peer that
    /// accepts and drops at once is not redialled in a tight loop).
    pub fn closed(&mut self, now: Instant, jitter: impl FnOnce() -> f64) {
        if self.stage != Stage::Connected {
            return;
        }
        self.effects.push_back(ConnectEffect::Disconnected);
        self.stage = Stage::Waiting {
            until: now + self.reconnect.backoff(1, jitter()),
        };
    }

    /// Time passed: dial if the wait is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Stage::Waiting { until } = self.stage
            && until <= now
        {
            self.stage = Stage::Dialing;
            self.effects.push_back(ConnectEffect::Dial);
        }
    }

    /// The remote is removed or the reactor stops.
    pub fn stop(&mut self) {
        if self.stage == Stage::Stopped {
            return;
        }
        if self.stage == Stage::Connected {
            self.effects.push_back(ConnectEffect::Disconnected);
        }
        self.stage = Stage::Stopped;
        self.effects.push_back(ConnectEffect::Stopped);
    }

    fn connect(&mut self, peer: ReactorId) {
        self.failures = 0;
        self.stage = Stage::Connected;
        self.effects.push_back(ConnectEffect::Connected { peer });
    }

    fn refuse(&mut self, now: Instant, error: Error, jitter: impl FnOnce() -> f64) {
        self.effects.push_back(ConnectEffect::Close);
        self.fail(now, error, jitter);
    }

    fn fail(&mut self, now: Instant, error: Error, jitter: impl FnOnce() -> f64) {
        self.failures += 1;
        let attempt = self.failures;
        let retry_in = self.reconnect.backoff(attempt, jitter());
        self.effects.push_back(ConnectEffect::Failed {
            error,
            attempt,
            retry_in,
            loud: attempt == 1 || attempt.is_power_of_two(),
        });
        self.stage = Stage::Waiting {
            until: now + retry_in,
        };
    }
}

#[cfg(test)]
#[path = "connector_tests.rs"]
mod tests;
