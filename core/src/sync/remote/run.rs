//! The remote's driver: one loop that performs the machine's effects and feeds it what they
//! returned, the session's end, local writes, pokes, requeued dead letters and its timer.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::task::JoinSet;
use tokio::time::Instant;

use syncline_proto::sync::connector::Connector;
use syncline_proto::sync::puller::{Pulled, Puller, PullerConfig};
use syncline_proto::sync::pusher::{PushEffect, Pusher, PusherConfig};
use syncline_proto::sync::remote::{RemoteEffect, RemoteMachine};

use super::*;

/// What an effect the driver performed gave back.
pub(super) enum Done {
    Dialed(Result<(Session, ReactorId)>),
    Saved(Result<()>),
    PushAnswered(JobId, Result<(Pushed, usize)>),
    Recorded(JobId, bool),
    Registered(Result<String>),
    PullAnswered(Result<(Pulled, ReactorId)>, Option<Result<Pushed>>),
    Applied(PullJobHandle, Result<()>),
    Acked(bool),
    /// Nothing to tell the machine.
    Nothing,
}

impl Done {
    fn name(&self) -> &'static str {
        match self {
            Done::Dialed(_) => "dialed",
            Done::Saved(_) => "saved",
            Done::PushAnswered(_, Ok(_)) => "push_answered",
            Done::PushAnswered(_, Err(_)) => "push_failed",
            Done::Recorded(..) => "recorded",
            Done::Registered(_) => "registered",
            Done::PullAnswered(..) => "pull_answered",
            Done::Applied(..) => "applied",
            Done::Acked(_) => "acked",
            Done::Nothing => "nothing",
        }
    }
}

/// What the driver holds besides the machine: the effects being performed, the sessions, and
/// each role's bookkeeping.
pub(super) struct Shell {
    pub(super) driver: Arc<Driver>,
    /// The effects being performed, polled by the loop itself.
    pub(super) pending: FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>>,
    /// Pushes being sent, each its own task, so that encoding a batch runs beside the loop
    /// and the pull it is handling, on another worker (dropping the set aborts them).
    pub(super) sends: JoinSet<Done>,
    /// The session being dialled, then the live one.
    pub(super) dialled: Option<Session>,
    pub(super) live: Option<Session>,
    /// The pusher's batches as job handles.
    pub(super) handles: BTreeMap<JobId, JobHandle>,
    /// What counts as an echo to this remote (known once the peer is).
    pub(super) filter: Option<crate::filter::ReadFilter>,
    pub(super) saver: watch::Sender<Ordinal>,
    /// The peer that answered the last pull.
    pub(super) pulled_from: Option<ReactorId>,
    /// The sequence number of the pull under way.
    pub(super) seq: u64,
    /// The job id of the answered pull's apply, drawn when the answer arrives (one per
    /// answered pull, applied or not, which keeps the order of the seeded draws).
    pub(super) job: Option<JobId>,
}

impl Shell {
    pub(super) fn spawn(&mut self, fut: impl Future<Output = Done> + Send + 'static) {
        self.pending.push(Box::pin(fut));
    }

    /// Like [`Shell::spawn`], as a task of its own.
    pub(super) fn spawn_task(&mut self, fut: impl Future<Output = Done> + Send + 'static) {
        self.sends.spawn(fut);
    }
}

/// A machine's timer: one sleep, moved only when the machine's deadline changes (making a
/// timer per turn of the loop is a cost on the hot path).
struct MachineTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl MachineTimer {
    fn new() -> Self {
        MachineTimer {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Follows the machine's `poll_timeout`.
    fn set(&mut self, deadline: Option<std::time::Instant>) {
        let deadline = deadline.map(Instant::from_std);
        if deadline != self.armed {
            if let Some(at) = deadline {
                self.sleep.as_mut().reset(at);
            }
            self.armed = deadline;
        }
    }

    fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Waits for the deadline (poll only while armed) and disarms.
    async fn fired(&mut self) {
        (&mut self.sleep).await;
        self.armed = None;
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Driver {
    fn machine(&self) -> RemoteMachine {
        let cfg = &self.ctx.config;
        let names = (self.config.name.to_string(), self.url.to_string());
        let connector = Connector::new(cfg.reconnect, self.ctx.reactor.clone(), names, self.peer());
        let status = self.status.borrow().clone();
        let pusher = self.config.mode.pushes().then(|| {
            let config = PusherConfig::new(
                cfg.push_batch_ops,
                cfg.batch_bytes(),
                cfg.push_window,
                cfg.retry,
            );
            Pusher::new(config, status.outbox_cursor, self.peer().is_some())
        });
        let puller = self.config.mode.pulls().then(|| {
            let config = PullerConfig {
                limit: cfg.pull_batch_ops as u32,
                long_poll: cfg.long_poll,
                max_wait: cfg.max_pull_wait,
            };
            let listener = self.record.lock().listener_id.clone();
            Puller::new(config, status.inbox_cursor, listener)
        });
        RemoteMachine::new(now(), connector, pusher, puller)
    }

    /// Drives the remote's machine until the remote stops.
    pub(super) async fn run(
        self: Arc<Self>,
        mut requeue_rx: mpsc::Receiver<DeadLetter>,
        saver: watch::Sender<Ordinal>,
    ) {
        let mut machine = self.machine();
        let mut shell = Shell {
            driver: self.clone(),
            pending: FuturesUnordered::new(),
            sends: JoinSet::new(),
            dialled: None,
            live: None,
            handles: BTreeMap::new(),
            filter: None,
            saver,
            pulled_from: None,
            seq: 0,
            job: None,
        };
        let mut timer = MachineTimer::new();
        let entropy = self.ctx.entropy.clone();
        loop {
            while let Some(effect) = machine.poll_effect() {
                tracing::trace!(remote = self.name(), effect = effect.name(), "effect");
                match effect {
                    // Awaited in the loop, as a read is short and a batch cannot be opened
                    // before it anyway: that spares a wake-up per page.
                    RemoteEffect::Push(PushEffect::ReadFeed { after, limit }) => {
                        shell.read(&mut machine, after, limit).await;
                    }
                    RemoteEffect::Connect(e) => shell.connect_effect(e),
                    RemoteEffect::Push(e) => shell.push_effect(e),
                    RemoteEffect::Pull(e, carried) => shell.pull_effect(&mut machine, e, carried),
                }
            }
            if machine.is_stopped() {
                break;
            }
            timer.set(machine.poll_timeout());
            tokio::select! {
                biased;
                () = self.stop.notified() => machine.stop(now()),
                Some(done) = shell.pending.next(), if !shell.pending.is_empty() => {
                    tracing::trace!(remote = self.name(), done = done.name(), "input");
                    shell.done(&mut machine, done);
                }
                Some(joined) = shell.sends.join_next(), if !shell.sends.is_empty() => {
                    match joined {
                        Ok(done) => {
                            tracing::trace!(remote = self.name(), done = done.name(), "input");
                            shell.done(&mut machine, done);
                        }
                        Err(e) => tracing::error!(remote = self.name(), error = %e, "an effect of the remote panicked"),
                    }
                }
                () = async { shell.live.as_ref().expect("guarded").closed().await }, if shell.live.is_some() => {
                    machine.closed(now(), || entropy.unit());
                }
                // Requeued batches count against the push window like any other.
                Some(letter) = requeue_rx.recv(), if machine.has_room() => {
                    let Ok(id) = letter.id.parse::<JobId>() else {
                        self.requeued.lock().remove(&letter.id);
                        tracing::warn!(remote = self.name(), letter = %letter.id, "a dead letter's id is not a job id; not sent again");
                        continue;
                    };
                    let ops = letter.operations.into_iter().map(Arc::new).collect();
                    machine.requeue(now(), id, ops, letter.range);
                }
                () = self.wake_push.notified() => {
                    if self.draining.load(Ordering::SeqCst) {
                        machine.drain(now());
                    }
                    machine.written(now());
                }
                () = self.wake_pull.notified() => machine.woken(now()),
                () = timer.fired(), if timer.is_armed() => machine.handle_timeout(now()),
            }
        }
        self.link.send_replace(None);
        self.status
            .send_modify(|s| s.connection = ConnectionState::Stopped);
    }
}

impl Shell {
    /// Feeds the machine what an effect gave back.
    fn done(&mut self, machine: &mut RemoteMachine, done: Done) {
        let now = now();
        let entropy = self.driver.ctx.entropy.clone();
        let jitter = || entropy.unit();
        match done {
            Done::Dialed(r) => {
                let r = r.map(|(session, peer)| {
                    let link = self.driver.link_of(&session);
                    self.dialled = Some(session);
                    (peer, link)
                });
                machine.dialed(now, r, jitter);
            }
            Done::Saved(r) => machine.saved(now, r, jitter),
            Done::PushAnswered(job, answer) => machine.push_answered(now, job, answer, jitter),
            Done::Recorded(job, true) => machine.recorded(now, job),
            Done::Recorded(job, false) => machine.record_failed(now, job),
            Done::Registered(r) => machine.registered(now, r),
            Done::PullAnswered(r, push) => {
                let r = r.map(|(pulled, peer)| {
                    self.pulled_from = Some(peer);
                    self.job = Some(entropy.job_id());
                    pulled
                });
                self.add_relayed(machine);
                machine.pull_answered(now, r, push, jitter);
            }
            Done::Applied(handle, r) => {
                match &r {
                    Ok(()) => {
                        let _ = handle.executed();
                    }
                    Err(e) => handle.failed(e.clone()),
                }
                self.driver.channel.inbox.remove(&handle);
                self.add_relayed(machine);
                machine.applied(now, r);
            }
            Done::Acked(ok) => machine.acked(now, ok),
            Done::Nothing => {}
        }
    }

    /// Refusals others reported of operations this remote sent us travel back with the next
    /// acknowledgement.
    fn add_relayed(&self, machine: &mut RemoteMachine) {
        if let Some(peer) = &self.pulled_from {
            machine.report(self.driver.ctx.take_relayed(peer));
        }
    }
}
