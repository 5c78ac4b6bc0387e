//! The puller of one remote, as a state machine.
//!
//! It registers a listener once, then pulls after the inbox cursor whenever the scheduler
//! says, when woken (a poke, a new session), or at once while the remote has more; what it
//! pulls is applied together with the new inbox cursor, and acknowledged with the refusals of
//! pulled operations not yet reported. On a link without pokes an idle remote's pull is held
//! open by the responder (a long poll) instead of being repeated. One pull is under way at a
//! time.
//!
//! Everything it decides comes out of [`Puller::poll_effect`]; the driver performs it and feeds
//! the result back ([`Puller::registered`], [`Puller::answered`], [`Puller::applied`],
//! [`Puller::acked`], [`Puller::scheduled`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};
use crate::protocol::Refusal;
use crate::types::{Operation, Ordinal};

/// What one pull did (what the scheduler is told).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PullReport {
    /// Whether it succeeded.
    pub ok: bool,
    /// Operations received.
    pub ops: usize,
    /// Bytes of the response.
    pub bytes: usize,
    /// Whether the responder has more.
    pub has_more: bool,
    /// Round-trip time of the request (zero when unknown, e.g. for a long poll).
    pub rtt: Duration,
}

/// How the puller is tuned.
#[derive(Clone, Copy, Debug)]
pub struct PullerConfig {
    /// Most operations asked for in one pull.
    pub limit: u32,
    /// Whether an idle remote on a link without pokes is long-polled.
    pub long_poll: bool,
    /// Longest a pull is held open.
    pub max_wait: Duration,
}

/// A pull's answer as the driver checked it: the operations it accepted (the others are in
/// `refused`, our verdicts to report to the remote).
#[derive(Clone, Debug, Default)]
pub struct Pulled {
    /// The remote's cursor after these operations.
    pub cursor: Ordinal,
    /// The remote's head.
    pub head: Ordinal,
    /// Whether the remote has more after `cursor`.
    pub has_more: bool,
    /// Operations to apply.
    pub ops: Vec<Arc<Operation>>,
    /// Operations received, refused ones included.
    pub received: usize,
    /// Our refusals of received operations.
    pub refused: Vec<Refusal>,
    /// Size of the response.
    pub bytes: usize,
}

/// Something the driver must do.
#[derive(Clone, Debug)]
pub enum PullEffect {
    /// Register a listener after `since` and call [`Puller::registered`].
    Register {
        /// Where the listener starts.
        since: Ordinal,
    },
    /// The remote forgot our listener (its store was reset): forget it too; a new one is
    /// registered at once.
    ForgetListener {
        /// Why.
        error: Error,
    },
    /// Send a pull and call [`Puller::answered`].
    Pull {
        /// Our listener on the remote.
        listener: String,
        /// Our inbox cursor.
        cursor: Ordinal,
        /// Most operations.
        limit: u32,
        /// How long the responder may hold the pull open (zero: answer at once).
        hold: Duration,
    },
    /// Apply these operations with the inbox cursor moving over `range`, in one commit, and
    /// call [`Puller::applied`].
    Apply {
        /// The operations.
        ops: Vec<Arc<Operation>>,
        /// The cursor moves from `range.0` to `range.1`.
        range: (Ordinal, Ordinal),
    },
    /// A pull succeeded: report it (status, metrics).
    Pulled {
        /// The inbox cursor now.
        cursor: Ordinal,
        /// The remote's head.
        head: Ordinal,
        /// Whether the remote has more.
        has_more: bool,
        /// Operations received.
        ops: usize,
        /// Size of the response.
        bytes: usize,
        /// The round trip (zero for a held pull, whose time is mostly waiting).
        rtt: Duration,
    },
    /// Acknowledge the cursor to the remote, with our refusals, and call [`Puller::acked`].
    Ack {
        /// Our listener on the remote.
        listener: String,
        /// How far we applied.
        cursor: Ordinal,
        /// Refusals not reported yet.
        refused: Vec<Refusal>,
    },
    /// A pull failed (it is tried again when the scheduler says).
    Failed {
        /// Why.
        error: Error,
    },
    /// Ask the scheduler when to pull next and call [`Puller::scheduled`] before anything
    /// else.
    Schedule(PullReport),
}

impl PullEffect {
    /// The effect's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            PullEffect::Register { .. } => "register",
            PullEffect::ForgetListener { .. } => "forget_listener",
            PullEffect::Pull { .. } => "pull",
            PullEffect::Apply { .. } => "apply",
            PullEffect::Pulled { .. } => "pulled",
            PullEffect::Ack { .. } => "ack",
            PullEffect::Failed { .. } => "failed",
            PullEffect::Schedule(_) => "schedule",
        }
    }
}

/// Where the puller is.
#[derive(Clone, Debug)]
enum Stage {
    /// Waiting: for the timer at `until`, or (`None`) for a session or a wake.
    Idle { until: Option<Instant> },
    /// Registering a listener.
    Registering,
    /// A pull is out since `since`.
    Pulling { since: Instant },
    /// Applying what a pull brought, up to `to`.
    Applying {
        report: PullReport,
        head: Ordinal,
        to: Ordinal,
    },
    /// Acknowledging; `refused` goes back to the unreported if the ack fails.
    Acking {
        report: PullReport,
        refused: Vec<Refusal>,
    },
    /// Waiting for [`Puller::scheduled`].
    Scheduling { ok: bool },
}

/// One remote's puller.
#[derive(Debug)]
pub struct Puller {
    config: PullerConfig,
    cursor: Ordinal,
    listener: Option<String>,
    connected: bool,
    /// Whether the live session carries pokes (no long polls on it).
    duplex: bool,
    stage: Stage,
    /// How long the next pull may be held.
    hold: Duration,
    /// Woken while busy: pull again as soon as this pull is done.
    woken: bool,
    /// Refusals of pulled operations not reported yet (they ride on the next ack that goes
    /// through).
    unreported: Vec<Refusal>,
    effects: VecDeque<PullEffect>,
}

impl Puller {
    /// A puller whose inbox cursor is `cursor`, with the listener it registered before if any.
    /// It pulls at the first [`Puller::connected`].
    pub fn new(config: PullerConfig, cursor: Ordinal, listener: Option<String>) -> Self {
        Puller {
            config,
            cursor,
            listener,
            connected: false,
            duplex: false,
            stage: Stage::Idle { until: None },
            hold: Duration::ZERO,
            woken: false,
            unreported: Vec::new(),
            effects: VecDeque::new(),
        }
    }

    /// The next effect to perform.
    pub fn poll_effect(&mut self) -> Option<PullEffect> {
        self.effects.pop_front()
    }

    /// When the puller wants [`Puller::handle_timeout`] called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.stage {
            Stage::Idle { until } => until,
            _ => None,
        }
    }

    /// The inbox cursor.
    pub fn cursor(&self) -> Ordinal {
        self.cursor
    }

    /// The listener on the remote, once registered.
    pub fn listener(&self) -> Option<&str> {
        self.listener.as_deref()
    }

    /// Whether no pull is under way.
    pub fn is_idle(&self) -> bool {
        matches!(self.stage, Stage::Idle { .. })
    }

    /// A live session to the remote exists; `duplex` is whether it carries pokes. An idle
    /// puller pulls at once.
    pub fn connected(&mut self, now: Instant, duplex: bool) {
        self.connected = true;
        self.duplex = duplex;
        if self.is_idle() {
            self.start(now);
        }
    }

    /// The session went away; the pull under way fails on its own.
    pub fn disconnected(&mut self) {
        self.connected = false;
    }

    /// Something may be waiting on the remote (a poke, a caller waiting for sync): pull now,
    /// or as soon as the pull under way is done.
    pub fn woken(&mut self, now: Instant) {
        if self.is_idle() {
            self.start(now);
        } else {
            self.woken = true;
        }
    }

    /// Refusals to report with the next acknowledgement (passed on from reactors we sent the
    /// remote's operations to).
    pub fn report(&mut self, refused: Vec<Refusal>) {
        self.unreported.extend(refused);
    }

    /// The listener registration asked for by [`PullEffect::Register`] ended.
    pub fn registered(&mut self, now: Instant, listener: Result<String, Error>) {
        if !matches!(self.stage, Stage::Registering) {
            return;
        }
        match listener {
            Ok(id) => {
                self.listener = Some(id);
                self.start(now);
            }
            Err(e) => self.fail(e),
        }
    }

    /// The pull asked for by [`PullEffect::Pull`] was answered, or failed.
    pub fn answered(&mut self, now: Instant, answer: Result<Pulled, Error>) {
        let Stage::Pulling { since } = self.stage else {
            return;
        };
        let pulled = match answer {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.listener = None;
                self.effects
                    .push_back(PullEffect::ForgetListener { error: e });
                self.start(now);
                return;
            }
            Err(e) => return self.fail(e),
        };
        if pulled.cursor < self.cursor {
            return self.fail(Error::malformed(format!(
                "the remote moved the cursor back from {} to {}",
                self.cursor, pulled.cursor
            )));
        }
        // Refused operations are passed like applied ones (the verdict is permanent) and
        // reported with the acknowledgement.
        self.unreported.extend(pulled.refused);
        let report = PullReport {
            ok: true,
            ops: pulled.received,
            bytes: pulled.bytes,
            has_more: pulled.has_more,
            rtt: if self.hold.is_zero() {
                now.saturating_duration_since(since)
            } else {
                Duration::ZERO
            },
        };
        if pulled.cursor > self.cursor {
            self.stage = Stage::Applying {
                report,
                head: pulled.head,
                to: pulled.cursor,
            };
            self.effects.push_back(PullEffect::Apply {
                ops: pulled.ops,
                range: (self.cursor, pulled.cursor),
            });
        } else {
            self.done(report, pulled.head, false);
        }
    }

    /// The apply asked for by [`PullEffect::Apply`] committed, or failed.
    pub fn applied(&mut self, result: Result<(), Error>) {
        let Stage::Applying { report, head, to } = self.stage else {
            return;
        };
        match result {
            Ok(()) => {
                self.cursor = to;
                self.done(report, head, true);
            }
            Err(e) => self.fail(e),
        }
    }

    /// The acknowledgement asked for by [`PullEffect::Ack`] went through, or failed (its
    /// refusals ride on the next one).
    pub fn acked(&mut self, ok: bool) {
        let Stage::Acking { report, refused } = &mut self.stage else {
            return;
        };
        let report = *report;
        if !ok {
            let mut again = std::mem::take(refused);
            again.append(&mut self.unreported);
            self.unreported = again;
        }
        self.schedule(report);
    }

    /// The scheduler's answer to [`PullEffect::Schedule`]: wait `wait` before the next pull;
    /// `idle` is whether it considers the remote idle.
    pub fn scheduled(&mut self, now: Instant, wait: Duration, idle: bool) {
        let Stage::Scheduling { ok } = self.stage else {
            return;
        };
        // An idle remote on a link without pokes: pull at once and let the responder hold the
        // pull open for the wait instead, so a write meanwhile arrives at once.
        self.hold = if self.config.long_poll && !self.duplex && ok && idle {
            wait.min(self.config.max_wait)
        } else {
            Duration::ZERO
        };
        if wait.is_zero() || !self.hold.is_zero() || self.woken {
            self.start(now);
        } else {
            self.stage = Stage::Idle {
                until: Some(now + wait),
            };
        }
    }

    /// Time passed: pull if the wait is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Stage::Idle { until: Some(at) } = self.stage
            && at <= now
        {
            self.start(now);
        }
    }

    fn start(&mut self, now: Instant) {
        if !self.connected {
            self.stage = Stage::Idle { until: None };
            return;
        }
        self.woken = false;
        match &self.listener {
            None => {
                self.stage = Stage::Registering;
                self.effects
                    .push_back(PullEffect::Register { since: self.cursor });
            }
            Some(listener) => {
                self.stage = Stage::Pulling { since: now };
                self.effects.push_back(PullEffect::Pull {
                    listener: listener.clone(),
                    cursor: self.cursor,
                    limit: self.config.limit,
                    hold: self.hold,
                });
            }
        }
    }

    fn done(&mut self, report: PullReport, head: Ordinal, moved: bool) {
        self.effects.push_back(PullEffect::Pulled {
            cursor: self.cursor,
            head,
            has_more: report.has_more,
            ops: report.ops,
            bytes: report.bytes,
            rtt: report.rtt,
        });
        let listener = self.listener.clone().unwrap_or_default();
        if moved || !self.unreported.is_empty() {
            // Seed 004's acknowledgeStrands: tell the responder how far we durably applied,
            // and which operations we (or reactors after us) refused.
            let refused = std::mem::take(&mut self.unreported);
            self.effects.push_back(PullEffect::Ack {
                listener,
                cursor: self.cursor,
                refused: refused.clone(),
            });
            self.stage = Stage::Acking { report, refused };
        } else {
            self.schedule(report);
        }
    }

    fn fail(&mut self, error: Error) {
        self.effects.push_back(PullEffect::Failed { error });
        self.schedule(PullReport::default());
    }

    fn schedule(&mut self, report: PullReport) {
        self.stage = Stage::Scheduling { ok: report.ok };
        self.effects.push_back(PullEffect::Schedule(report));
    }
}

#[cfg(test)]
#[path = "puller_tests.rs"]
mod tests;
