//! One remote as one state machine: its connector, pusher and puller, wired together.
//!
//! The three role machines decide alone; this one only passes between them what one of them
//! learnt and another needs, so that a driver holds one machine per remote and one place where
//! the live session is known:
//!
//! - the connector's `Connected` tells the pusher and the puller that a session is up (and
//!   whether it carries pokes), `Disconnected` that it went away;
//! - on a link that piggybacks, a push the pusher wants sent is offered to the puller first: it
//!   rides on the next pull if one starts within the wait, and is sent alone when the wait ends
//!   or the session goes away; the pull's answer carries the push's answer back to the pusher.
//!
//! Everything it decides comes out of [`RemoteMachine::poll_effect`], each effect of one of the
//! role machines (wrapped in [`RemoteEffect`]); the driver performs it and feeds the result back
//! through the methods of this machine, each with the time `now` passed in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::protocol::{Pushed, Refusal, Request};
use crate::sync::connector::{ConnectEffect, Connector};
use crate::sync::puller::{PullEffect, Pulled, Puller};
use crate::sync::pusher::{PushEffect, Pusher};
use crate::types::{JobId, Operation, Ordinal, ReactorId, StoredOp};

/// How long a push offered to the puller waits for a pull to ride on before it is sent alone.
pub const PIGGYBACK_WAIT: Duration = Duration::from_millis(50);

/// What the driver knows of a session it dialled, beyond who answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Whether the session carries pokes (the peer can call us on it).
    pub duplex: bool,
    /// Whether pushes ride on pulls on this session.
    pub piggyback: bool,
}

/// A push riding on a pull.
#[derive(Clone, Debug)]
pub struct Carried {
    /// The pusher's batch.
    pub job: JobId,
    /// Its push request.
    pub request: Arc<Request>,
}

/// Something the driver must do: an effect of one of the role machines.
#[derive(Clone, Debug)]
pub enum RemoteEffect {
    /// The connector's.
    Connect(ConnectEffect),
    /// The pusher's.
    Push(PushEffect),
    /// The puller's; a [`PullEffect::Pull`] may carry a push, whose answer comes back through
    /// [`RemoteMachine::pull_answered`].
    Pull(PullEffect, Option<Carried>),
}

impl RemoteEffect {
    /// The effect's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            RemoteEffect::Connect(e) => e.name(),
            RemoteEffect::Push(e) => e.name(),
            RemoteEffect::Pull(e, _) => e.name(),
        }
    }
}

/// A push waiting for a pull to ride on.
#[derive(Debug)]
struct Offer {
    job: JobId,
    request: Arc<Request>,
    until: Instant,
}

/// One remote.
#[derive(Debug)]
pub struct RemoteMachine {
    connector: Connector,
    pusher: Option<Pusher>,
    puller: Option<Puller>,
    /// The link of the session dialled last.
    link: Link,
    offers: VecDeque<Offer>,
    /// The push riding on the pull under way.
    riding: Option<JobId>,
    now: Instant,
    effects: VecDeque<RemoteEffect>,
    stopped: bool,
}

impl RemoteMachine {
    /// A remote of the given role machines (a remote that only pulls has no pusher, one that
    /// only pushes no puller), at time `now`.
    pub fn new(
        now: Instant,
        connector: Connector,
        pusher: Option<Pusher>,
        puller: Option<Puller>,
    ) -> Self {
        RemoteMachine {
            connector,
            pusher,
            puller,
            link: Link::default(),
            offers: VecDeque::new(),
            riding: None,
            now,
            effects: VecDeque::new(),
            stopped: false,
        }
    }

    /// The next effect to perform.
    pub fn poll_effect(&mut self) -> Option<RemoteEffect> {
        if self.effects.is_empty() {
            self.collect();
        }
        self.effects.pop_front()
    }

    /// When the machine wants [`RemoteMachine::handle_timeout`] called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.connector.poll_timeout(),
            self.pusher.as_ref().and_then(Pusher::poll_timeout),
            self.puller.as_ref().and_then(Puller::poll_timeout),
            self.offers.front().map(|o| o.until),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The pusher, if the remote pushes.
    pub fn pusher(&self) -> Option<&Pusher> {
        self.pusher.as_ref()
    }

    /// The puller, if the remote pulls.
    pub fn puller(&self) -> Option<&Puller> {
        self.puller.as_ref()
    }

    /// Whether the connector stopped (after [`RemoteMachine::stop`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Pushes waiting for a pull to ride on.
    pub fn offered(&self) -> usize {
        self.offers.len()
    }

    // The connector's inputs.

    /// The dial ended: who answered and what the session is, or why it failed.
    pub fn dialed(
        &mut self,
        now: Instant,
        answer: Result<(ReactorId, Link), Error>,
        jitter: impl FnOnce() -> f64,
    ) {
        self.now = now;
        let answer = answer.map(|(peer, link)| {
            self.link = link;
            peer
        });
        self.connector.dialed(now, answer, jitter);
    }

    /// Storing the peer ended.
    pub fn saved(&mut self, now: Instant, result: Result<(), Error>, jitter: impl FnOnce() -> f64) {
        self.now = now;
        self.connector.saved(now, result, jitter);
    }

    /// The live session closed.
    pub fn closed(&mut self, now: Instant, jitter: impl FnOnce() -> f64) {
        self.now = now;
        self.connector.closed(now, jitter);
    }

    /// The remote is removed or the reactor stops.
    pub fn stop(&mut self, now: Instant) {
        self.now = now;
        self.connector.stop();
    }

    // The pusher's inputs.

    /// Operations were written here.
    pub fn written(&mut self, now: Instant) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.written();
        }
    }

    /// No new batches from now on.
    pub fn drain(&mut self, now: Instant) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.drain();
        }
    }

    /// See [`Pusher::feed_read`].
    pub fn feed_read(
        &mut self,
        now: Instant,
        ops: Vec<StoredOp>,
        scanned_to: Ordinal,
        next_id: impl FnOnce() -> JobId,
    ) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.feed_read(now, ops, scanned_to, next_id);
        }
    }

    /// See [`Pusher::feed_failed`].
    pub fn feed_failed(&mut self, now: Instant) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.feed_failed(now);
        }
    }

    /// Whether the pusher has room for another batch (false if the remote does not push).
    pub fn has_room(&self) -> bool {
        self.pusher.as_ref().is_some_and(Pusher::has_room)
    }

    /// See [`Pusher::requeue`].
    pub fn requeue(
        &mut self,
        now: Instant,
        job: JobId,
        ops: Vec<Arc<Operation>>,
        range: (Ordinal, Ordinal),
    ) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.requeue(now, job, ops, range);
        }
    }

    /// A push sent alone was answered, or failed. See [`Pusher::answered`].
    pub fn push_answered(
        &mut self,
        now: Instant,
        job: JobId,
        answer: Result<(Pushed, usize), Error>,
        jitter: impl FnOnce() -> f64,
    ) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.answered(now, job, answer, jitter);
        }
    }

    /// See [`Pusher::recorded`].
    pub fn recorded(&mut self, now: Instant, job: JobId) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.recorded(job);
        }
    }

    /// See [`Pusher::record_failed`].
    pub fn record_failed(&mut self, now: Instant, job: JobId) {
        self.now = now;
        if let Some(p) = &mut self.pusher {
            p.record_failed(now, job);
        }
    }

    // The puller's inputs.

    /// Something may be waiting on the remote (a poke, a caller waiting for sync).
    pub fn woken(&mut self, now: Instant) {
        self.now = now;
        if let Some(p) = &mut self.puller {
            p.woken(now);
        }
    }

    /// See [`Puller::report`].
    pub fn report(&mut self, refused: Vec<Refusal>) {
        if let Some(p) = &mut self.puller {
            p.report(refused);
        }
    }

    /// See [`Puller::registered`].
    pub fn registered(&mut self, now: Instant, listener: Result<String, Error>) {
        self.now = now;
        if let Some(p) = &mut self.puller {
            p.registered(now, listener);
        }
    }

    /// The pull asked for was answered, or failed; `push` is the answer to the push it carried
    /// (`None` if the responder gave none). `jitter` is asked only if that push failed.
    pub fn pull_answered(
        &mut self,
        now: Instant,
        answer: Result<Pulled, Error>,
        push: Option<Result<Pushed, Error>>,
        jitter: impl FnOnce() -> f64,
    ) {
        self.now = now;
        if let Some(job) = self.riding.take() {
            let result = match (&answer, push) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), Some(r)) => r.map(|p| (p, 0)),
                (Ok(_), None) => Err(Error::malformed(
                    "the responder ignored the push carried by the pull",
                )),
            };
            self.push_answered(now, job, result, jitter);
        }
        if let Some(p) = &mut self.puller {
            p.answered(now, answer);
        }
    }

    /// See [`Puller::applied`].
    pub fn applied(&mut self, now: Instant, result: Result<(), Error>) {
        self.now = now;
        if let Some(p) = &mut self.puller {
            p.applied(result);
        }
    }

    /// See [`Puller::acked`].
    pub fn acked(&mut self, now: Instant, ok: bool) {
        self.now = now;
        if let Some(p) = &mut self.puller {
            p.acked(ok);
        }
    }

    /// See [`Puller::scheduled`].
    pub fn scheduled(&mut self, now: Instant, wait: Duration, idle: bool) {
        self.now = now;
        if let Some(p) = &mut self.puller {
            p.scheduled(now, wait, idle);
        }
    }

    /// Time passed: every role machine's timers, and offers whose wait ended are sent alone.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.connector.handle_timeout(now);
        if let Some(p) = &mut self.pusher {
            p.handle_timeout(now);
        }
        if let Some(p) = &mut self.puller {
            p.handle_timeout(now);
        }
        while self.offers.front().is_some_and(|o| o.until <= now) {
            if let Some(o) = self.offers.pop_front() {
                self.send_alone(o);
            }
        }
    }

    /// Moves the role machines' effects to the queue, passing between them what concerns
    /// another. One pass in this order sees everything: the connector's effects feed the
    /// pusher and the puller, the pusher's offers feed the puller, and the puller feeds nobody.
    fn collect(&mut self) {
        while let Some(e) = self.connector.poll_effect() {
            self.on_connect(e);
        }
        while let Some(e) = self.pusher.as_mut().and_then(Pusher::poll_effect) {
            self.on_push(e);
        }
        while let Some(e) = self.puller.as_mut().and_then(Puller::poll_effect) {
            self.on_pull(e);
        }
    }

    fn on_connect(&mut self, effect: ConnectEffect) {
        let now = self.now;
        match &effect {
            ConnectEffect::Connected { .. } => {
                self.effects.push_back(RemoteEffect::Connect(effect));
                if let Some(p) = &mut self.pusher {
                    p.connected(now);
                }
                let duplex = self.link.duplex;
                if let Some(p) = &mut self.puller {
                    p.connected(now, duplex);
                }
            }
            ConnectEffect::Disconnected => {
                self.effects.push_back(RemoteEffect::Connect(effect));
                if let Some(p) = &mut self.pusher {
                    p.disconnected();
                }
                if let Some(p) = &mut self.puller {
                    p.disconnected();
                }
                // Offers no pull will carry now: sent alone, they fail as closed and wait for
                // the next session like any batch.
                while let Some(o) = self.offers.pop_front() {
                    self.send_alone(o);
                }
            }
            ConnectEffect::Stopped => {
                self.stopped = true;
                self.effects.push_back(RemoteEffect::Connect(effect));
            }
            _ => self.effects.push_back(RemoteEffect::Connect(effect)),
        }
    }

    fn on_push(&mut self, effect: PushEffect) {
        match effect {
            PushEffect::Send { job, request }
                // The connector's effects are drained first, so its state is the one its
                // last effect told.
                if self.connector.is_connected() && self.link.piggyback && self.puller.is_some() =>
            {
                self.offers.push_back(Offer {
                    job,
                    request,
                    until: self.now + PIGGYBACK_WAIT,
                });
                let now = self.now;
                if let Some(p) = &mut self.puller {
                    p.woken(now);
                }
            }
            other => self.effects.push_back(RemoteEffect::Push(other)),
        }
    }

    fn on_pull(&mut self, effect: PullEffect) {
        let carried = match &effect {
            PullEffect::Pull { .. } => self.offers.pop_front().map(|o| {
                self.riding = Some(o.job);
                Carried {
                    job: o.job,
                    request: o.request,
                }
            }),
            _ => None,
        };
        self.effects.push_back(RemoteEffect::Pull(effect, carried));
    }

    fn send_alone(&mut self, o: Offer) {
        self.effects.push_back(RemoteEffect::Push(PushEffect::Send {
            job: o.job,
            request: o.request,
        }));
    }
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
