//! The puller's shell: drives the puller machine (`syncline_proto::sync::puller`) over the
//! remote's session, the apply queue and the scheduler.

use super::*;

use syncline_proto::sync::puller::{PullEffect, Pulled, Puller, PullerConfig};

/// What an effect the shell performed gave back.
enum Done {
    Registered(Result<String>),
    Answered(Result<(Pulled, ReactorId)>),
    Applied(PullJobHandle, Result<()>),
    Acked(bool),
}

impl Done {
    fn name(&self) -> &'static str {
        match self {
            Done::Registered(_) => "registered",
            Done::Answered(_) => "answered",
            Done::Applied(..) => "applied",
            Done::Acked(_) => "acked",
        }
    }
}

type Pending = FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>>;

/// What the puller's driver holds: the effect being performed (one at a time), the session the
/// machine was last told about, the peer that answered the last pull, and the sequence number
/// of the pull under way.
struct PullShell {
    remote: Arc<RemoteShared>,
    pending: Pending,
    session: Option<Session>,
    peer: Option<ReactorId>,
    seq: u64,
    /// The job id of the answered pull's apply, drawn when the answer arrives (one per
    /// answered pull, applied or not, which keeps the order of the seeded draws).
    job: Option<JobId>,
}

impl PullShell {
    fn perform(&mut self, machine: &mut Puller, effect: PullEffect) {
        let remote = &self.remote;
        tracing::trace!(
            remote = remote.name(),
            effect = effect.name(),
            "pull effect"
        );
        let session = self.session.clone();
        match effect {
            PullEffect::Register { since } => {
                let remote = remote.clone();
                self.pending.push(Box::pin(async move {
                    Done::Registered(remote.register(session, since).await)
                }));
            }
            PullEffect::ForgetListener { error } => {
                tracing::info!(remote = remote.name(), error = %error, "registering again");
                remote.record.lock().listener_id = None;
            }
            PullEffect::Pull {
                listener,
                cursor,
                limit,
                hold,
            } => {
                let mut seq = 0;
                remote.status.send_modify(|s| {
                    s.pulls += 1;
                    seq = s.pulls;
                });
                self.seq = seq;
                let remote = remote.clone();
                self.pending.push(Box::pin(async move {
                    Done::Answered(remote.pull(session, listener, cursor, limit, hold).await)
                }));
            }
            PullEffect::Apply { ops, range } => {
                let remote = remote.clone();
                let job = self
                    .job
                    .take()
                    .unwrap_or_else(|| remote.ctx.entropy.job_id());
                let handle = PullJobHandle::new(job, ops.clone(), range);
                let _ = handle.started();
                let _ = handle.transported();
                remote.channel.inbox.push(handle.clone());
                let source = self.peer.clone();
                self.pending.push(Box::pin(async move {
                    let applied = remote.apply(source, &handle, ops, range.1).await;
                    Done::Applied(handle, applied)
                }));
            }
            PullEffect::Pulled {
                cursor,
                head,
                has_more,
                ops,
                bytes,
                rtt,
            } => {
                telemetry::pull_done(remote.name(), ops, bytes, true, rtt);
                let now = remote.ctx.now_ms();
                let seq = self.seq;
                remote.status.send_modify(|s| {
                    s.inbox_cursor = cursor;
                    s.inbox_lag = head.0.saturating_sub(cursor.0);
                    if !has_more {
                        s.last_caught_up_pull = seq;
                    }
                    s.last_success_ms = Some(now);
                });
                remote.report_lag();
            }
            PullEffect::Ack {
                listener,
                cursor,
                refused,
            } => {
                let remote = remote.clone();
                self.pending.push(Box::pin(async move {
                    let ack = Request::Ack(Ack {
                        listener_id: listener,
                        cursor,
                        refused,
                    });
                    let timeout = remote.ctx.config.request_timeout;
                    let sent = match session {
                        Some(s) => s.request(&ack, timeout).await.map(|_| ()),
                        None => Err(Error::closed("the session closed")),
                    };
                    if let Err(e) = &sent {
                        tracing::debug!(remote = remote.name(), error = %e, "ack failed");
                    }
                    Done::Acked(sent.is_ok())
                }));
            }
            PullEffect::Failed { error } => {
                tracing::debug!(remote = remote.name(), error = %error, "pull failed");
                remote.failed(&error);
                telemetry::pull_done(remote.name(), 0, 0, false, Duration::ZERO);
                if error.is_retryable() {
                    telemetry::retry(remote.name(), "pull");
                }
            }
            PullEffect::Schedule(report) => {
                let scheduler = &remote.ctx.scheduler;
                let wait = scheduler.next_pull(remote.name(), &report, remote.ctx.entropy.unit());
                let ms = wait.as_millis() as u64;
                remote.status.send_if_modified(|s| {
                    let changed = s.pull_interval_ms != ms;
                    s.pull_interval_ms = ms;
                    changed
                });
                telemetry::pull_interval(remote.name(), wait);
                let idle = scheduler.idle(remote.name());
                machine.scheduled(Instant::now().into_std(), wait, idle);
            }
        }
    }
}

impl RemoteShared {
    /// Drives the puller machine: performs its effects, feeds it what they returned, the
    /// session's comings and goings, pokes and its timer.
    pub(super) async fn pull_loop(self: Arc<Self>) {
        let cfg = &self.ctx.config;
        let config = PullerConfig {
            limit: cfg.pull_batch_ops as u32,
            long_poll: cfg.long_poll,
            max_wait: cfg.max_pull_wait,
        };
        let cursor = self.status.borrow().inbox_cursor;
        let listener = self.record.lock().listener_id.clone();
        let mut machine = Puller::new(config, cursor, listener);
        let mut shell = PullShell {
            remote: self.clone(),
            pending: FuturesUnordered::new(),
            session: None,
            peer: None,
            seq: 0,
            job: None,
        };
        let mut timer = MachineTimer::new();
        loop {
            while let Some(effect) = machine.poll_effect() {
                shell.perform(&mut machine, effect);
            }
            timer.set(machine.poll_timeout());
            let known = shell.session.as_ref().map(Session::id);
            tokio::select! {
                biased;
                _ = self.until_stopped() => break,
                Some(done) = shell.pending.next(), if !shell.pending.is_empty() => {
                    tracing::trace!(remote = self.name(), done = done.name(), "pull input");
                    let now = Instant::now().into_std();
                    match done {
                        Done::Registered(r) => machine.registered(now, r),
                        Done::Answered(r) => {
                            let r = r.map(|(pulled, peer)| {
                                shell.peer = Some(peer);
                                shell.job = Some(self.ctx.entropy.job_id());
                                pulled
                            });
                            self.add_relayed(&mut machine, shell.peer.as_ref());
                            machine.answered(now, r);
                        }
                        Done::Applied(handle, r) => {
                            match &r {
                                Ok(()) => {
                                    let _ = handle.executed();
                                }
                                Err(e) => handle.failed(e.clone()),
                            }
                            self.channel.inbox.remove(&handle);
                            self.add_relayed(&mut machine, shell.peer.as_ref());
                            machine.applied(r);
                        }
                        Done::Acked(ok) => machine.acked(ok),
                    }
                }
                session = self.session_changed(known) => {
                    shell.session = session;
                    match &shell.session {
                        Some(s) => machine.connected(Instant::now().into_std(), s.info().duplex),
                        None => machine.disconnected(),
                    }
                }
                _ = self.wake_pull.notified() => machine.woken(Instant::now().into_std()),
                () = timer.fired(), if timer.is_armed() => {
                    machine.handle_timeout(Instant::now().into_std());
                }
            }
        }
    }

    /// Refusals others reported of operations this remote sent us travel back with the next
    /// acknowledgement.
    fn add_relayed(&self, machine: &mut Puller, peer: Option<&ReactorId>) {
        if let Some(peer) = peer {
            machine.report(self.ctx.take_relayed(peer));
        }
    }

    /// Registers a listener on the remote after `since` and keeps its id with the remote's
    /// record.
    async fn register(&self, session: Option<Session>, since: Ordinal) -> Result<String> {
        let session = session.ok_or_else(|| Error::closed("the session closed"))?;
        let request = Request::Register(Register {
            filter: self.config.filter.clone(),
            since,
        });
        let reply = session
            .request(&request, self.ctx.config.request_timeout)
            .await?;
        let Response::Registered(registered) = reply.response else {
            return Err(unexpected("register", &reply.response));
        };
        let record = {
            let mut r = self.record.lock();
            r.listener_id = Some(registered.listener_id.clone());
            r.clone()
        };
        self.ctx.state.put_remote(&record).await?;
        Ok(registered.listener_id)
    }

    /// Sends one pull (carrying a waiting push when it piggybacks), records the refusals the
    /// remote reports, and checks the operations it brought.
    async fn pull(
        &self,
        session: Option<Session>,
        listener_id: String,
        cursor: Ordinal,
        limit: u32,
        hold: Duration,
    ) -> Result<(Pulled, ReactorId)> {
        let session = session.ok_or_else(|| Error::closed("the session closed"))?;
        let peer = session
            .peer()
            .cloned()
            .ok_or_else(|| Error::internal("a welcomed session has no peer"))?;
        let mut piggy = TakenPiggy(if self.piggybacks_on(&session) {
            self.piggy.lock().pop_front()
        } else {
            None
        });
        let request = Request::Pull(Pull {
            listener_id,
            cursor,
            limit,
            push: piggy.0.as_ref().map(|p| p.push.clone()),
            wait_ms: hold.as_millis().min(u128::from(u32::MAX)) as u32,
        });
        let timeout = self.ctx.config.request_timeout + hold;
        let reply = match session.request(&request, timeout).await {
            Ok(r) => r,
            Err(e) => {
                piggy.answer(Err(e.clone()));
                return Err(e);
            }
        };
        let Response::Pulled(mut pulled) = reply.response else {
            return Err(unexpected("pull", &reply.response));
        };
        if piggy.0.is_some() {
            piggy.answer(match pulled.push_result.take() {
                Some(PushResult::Ok(p)) => Ok(p),
                Some(PushResult::Err(e)) => Err(e.into()),
                None => Err(Error::malformed(
                    "the responder ignored the push carried by the pull",
                )),
            });
        }
        if let Err(e) = self.ctx.record_reported(&peer, &pulled.refused).await {
            tracing::warn!(remote = self.name(), error = %e, "could not record refusals");
        }
        let ops = StrandUpdate::into_operations(pulled.strands);
        let received = ops.len();
        let Verdicts { accepted, refused } = self.ctx.verify_incoming(ops, &peer, false)?;
        let pulled = Pulled {
            cursor: pulled.cursor,
            head: pulled.head,
            has_more: pulled.has_more,
            ops: accepted,
            received,
            refused,
            bytes: reply.response_bytes,
        };
        Ok((pulled, peer))
    }

    /// Applies pulled operations and the new inbox cursor in one commit.
    async fn apply(
        &self,
        source: Option<ReactorId>,
        handle: &PullJobHandle,
        ops: Vec<Arc<Operation>>,
        to: Ordinal,
    ) -> Result<()> {
        let source = source.ok_or_else(|| Error::internal("operations pulled from nobody"))?;
        let ticket = self
            .ctx
            .queue
            .enqueue(
                handle.id(),
                JobKind::Apply {
                    ops,
                    source,
                    meta: vec![SyncState::cursor_write(
                        &self.config.name,
                        Direction::Inbox,
                        to,
                    )],
                },
            )
            .await?;
        ticket.wait().await.map(|_| ())
    }
}
