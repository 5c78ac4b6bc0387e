//! The pusher: reads the feed after the outbox cursor, sends pushes within the window (or on
//! the peer's pulls), keeps refusals and dead letters, and moves the cursor over what the peer
//! answered.

use super::*;

use syncline_proto::sync::pusher::{PushEffect, Pusher, PusherConfig, Record};

/// What an effect the shell performed gave back.
enum Done {
    Answered(JobId, Result<(Pushed, usize)>),
    Recorded(JobId, bool),
    Nothing,
}

impl Done {
    fn name(&self) -> &'static str {
        match self {
            Done::Answered(_, Ok(_)) => "answered",
            Done::Answered(_, Err(_)) => "failed",
            Done::Recorded(..) => "recorded",
            Done::Nothing => "nothing",
        }
    }
}

type Pending = FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>>;

/// What the pusher's driver holds: the machine's batches as job handles, the effects being
/// performed, and the session the machine was last told about.
struct PushShell {
    remote: Arc<RemoteShared>,
    handles: BTreeMap<JobId, JobHandle>,
    pending: Pending,
    session: Option<Session>,
    filter: Option<crate::filter::ReadFilter>,
    saver: watch::Sender<Ordinal>,
}

impl PushShell {
    fn perform(&mut self, effect: PushEffect) {
        let remote = &self.remote;
        tracing::trace!(
            remote = remote.name(),
            effect = effect.name(),
            "push effect"
        );
        match effect {
            // Performed inline by the loop (`PushShell::read`).
            PushEffect::ReadFeed { .. } => {}
            PushEffect::Opened { job, range, ops } => {
                let handle = JobHandle::new(job, ops, range);
                remote.channel.outbox.push(handle.clone());
                self.handles.insert(job, handle);
            }
            PushEffect::Send { job, request } => {
                if let Some(h) = self.handles.get(&job) {
                    let _ = h.advance(JobStatus::TransportPending);
                }
                let session = self.session.clone();
                let remote = remote.clone();
                self.pending.push(Box::pin(async move {
                    let answer = match session {
                        Some(session) => remote.send_push(&session, &request, job).await,
                        None => Err(Error::closed("the session closed")),
                    };
                    Done::Answered(job, answer)
                }));
            }
            PushEffect::Sent {
                ok,
                refused,
                ops,
                bytes,
                rtt,
                ..
            } => {
                if ok {
                    let outcome = if refused { "refused" } else { "applied" };
                    telemetry::push_done(remote.name(), ops, bytes, outcome, rtt);
                    remote.succeeded();
                }
                remote
                    .ctx
                    .scheduler
                    .observe(Some(remote.name()), &Signal::PushSent { ok, ops, rtt });
            }
            PushEffect::Failed {
                job,
                error,
                attempts,
                retry_in,
                loud,
            } => {
                remote.failed(&error);
                if loud {
                    let operations = self.handles.get(&job).map_or(0, |h| h.operations().len());
                    tracing::warn!(
                        remote = remote.name(), job = %job, operations, attempts, error = %error,
                        "a batch keeps failing; it is retried for as long as the remote exists"
                    );
                } else {
                    tracing::debug!(
                        remote = remote.name(), error = %error,
                        "push failed; retrying in {} ms", retry_in.as_millis()
                    );
                }
                telemetry::retry(remote.name(), "push");
            }
            PushEffect::Relayed(relayed) => {
                let remote = remote.clone();
                self.pending.push(Box::pin(async move {
                    if let Some(peer) = remote.peer()
                        && let Err(e) = remote.ctx.record_reported(&peer, &relayed).await
                    {
                        tracing::warn!(remote = remote.name(), error = %e, "could not record refusals");
                    }
                    Done::Nothing
                }));
            }
            PushEffect::Record {
                job,
                record,
                requeued,
            } => {
                let Some(handle) = self.handles.get(&job).cloned() else {
                    return;
                };
                let remote = remote.clone();
                self.pending.push(Box::pin(async move {
                    let stored = match record {
                        Record::Refusals(refused) => {
                            remote.keep_refusals(&handle, &refused, requeued).await
                        }
                        Record::Delivered => {
                            remote.forget_dead_letter(&handle).await;
                            true
                        }
                    };
                    Done::Recorded(job, stored)
                }));
            }
            PushEffect::Finished { job, requeued } => {
                if let Some(handle) = self.handles.remove(&job) {
                    let _ = handle.advance(JobStatus::Applied);
                    remote.channel.outbox.remove(&handle);
                }
                if requeued {
                    remote.requeued.lock().remove(&job.to_string());
                }
            }
            PushEffect::Cursor(at) => remote.commit_outbox(at, &self.saver),
            PushEffect::InFlight(n) => {
                remote.status.send_if_modified(|s| {
                    let changed = s.in_flight != n;
                    s.in_flight = n;
                    changed
                });
            }
        }
    }
}

impl PushShell {
    /// Reads the feed and hands the page to the machine. Awaited in the loop, as a read is
    /// short and a batch cannot be opened before it anyway: that spares a wake-up per page.
    async fn read(&mut self, machine: &mut Pusher, after: Ordinal, limit: usize) {
        let remote = &self.remote;
        // What counts as an echo depends on who the remote is, known by now.
        let filter = self
            .filter
            .get_or_insert_with(|| remote.ctx.read_filter(&remote.config.filter, remote.peer()));
        let page = remote.ctx.store.read_since(after, limit, filter).await;
        let now = Instant::now().into_std();
        match page {
            Ok(page) => {
                let entropy = &remote.ctx.entropy;
                machine.feed_read(now, page.ops, page.scanned_to, || entropy.job_id());
            }
            Err(e) => {
                tracing::warn!(remote = remote.name(), error = %e, "reading the feed failed");
                remote.failed(&e);
                machine.feed_failed(now);
            }
        }
    }
}

impl RemoteShared {
    pub(super) async fn save_outbox_cursor(self: Arc<Self>, mut rx: watch::Receiver<Ordinal>) {
        while rx.changed().await.is_ok() {
            let at = *rx.borrow_and_update();
            if let Err(e) = self
                .ctx
                .state
                .set_cursor(&self.config.name, Direction::Outbox, at)
                .await
            {
                // The cursor only lags; the batches after it are sent again and deduplicated.
                tracing::warn!(remote = self.name(), error = %e, "could not save the outbox cursor");
            }
        }
    }

    pub(super) fn commit_outbox(&self, at: Ordinal, saver: &watch::Sender<Ordinal>) {
        self.status.send_modify(|s| s.outbox_cursor = at);
        saver.send_replace(at);
        self.report_lag();
    }

    /// Drives the pusher machine: performs its effects, feeds it what they returned, the
    /// session's comings and goings, local writes, requeued dead letters and its timers.
    pub(super) async fn push_loop(
        self: Arc<Self>,
        mut requeue_rx: mpsc::Receiver<DeadLetter>,
        saver: watch::Sender<Ordinal>,
    ) {
        let cfg = &self.ctx.config;
        let config = PusherConfig::new(
            cfg.push_batch_ops,
            cfg.batch_bytes(),
            cfg.push_window,
            cfg.retry,
        );
        let committed = self.status.borrow().outbox_cursor;
        let mut machine = Pusher::new(config, committed, self.peer().is_some());
        let mut shell = PushShell {
            remote: self.clone(),
            handles: BTreeMap::new(),
            pending: FuturesUnordered::new(),
            session: None,
            filter: None,
            saver,
        };
        let mut timer = MachineTimer::new();
        loop {
            while let Some(effect) = machine.poll_effect() {
                tracing::trace!(remote = self.name(), effect = effect.name(), "push effect");
                match effect {
                    PushEffect::ReadFeed { after, limit } => {
                        shell.read(&mut machine, after, limit).await;
                    }
                    other => shell.perform(other),
                }
            }
            timer.set(machine.poll_timeout());
            // Until the connector clears a closed session from the link, a send on it fails as
            // closed.
            let known = shell.session.as_ref().map(Session::id);
            tokio::select! {
                biased;
                _ = self.until_stopped() => break,
                Some(done) = shell.pending.next(), if !shell.pending.is_empty() => {
                    let now = Instant::now().into_std();
                    tracing::trace!(remote = self.name(), done = done.name(), pending = shell.pending.len(), "push input");
                    match done {
                        Done::Answered(job, answer) => {
                            machine.answered(now, job, answer, || self.ctx.entropy.unit());
                        }
                        Done::Recorded(job, true) => machine.recorded(job),
                        Done::Recorded(job, false) => machine.record_failed(now, job),
                        Done::Nothing => {}
                    }
                }
                session = self.session_changed(known) => {
                    shell.session = session;
                    tracing::trace!(remote = self.name(), session = ?shell.session.as_ref().map(Session::id), "push link");
                    match shell.session {
                        Some(_) => machine.connected(Instant::now().into_std()),
                        None => machine.disconnected(),
                    }
                }
                // Requeued batches count against the push window like any other.
                Some(letter) = requeue_rx.recv(), if machine.has_room() => {
                    let Ok(id) = letter.id.parse::<JobId>() else {
                        self.requeued.lock().remove(&letter.id);
                        tracing::warn!(remote = self.name(), letter = %letter.id, "a dead letter's id is not a job id; not sent again");
                        continue;
                    };
                    let ops = letter.operations.into_iter().map(Arc::new).collect();
                    machine.requeue(Instant::now().into_std(), id, ops, letter.range);
                }
                _ = self.wake_push.notified() => {
                    tracing::trace!(remote = self.name(), in_flight = machine.in_flight(), "push woken");
                    if self.draining.load(Ordering::SeqCst) {
                        machine.drain();
                    }
                    machine.written();
                }
                () = timer.fired(), if timer.is_armed() => {
                    tracing::trace!(remote = self.name(), "push timer");
                    machine.handle_timeout(Instant::now().into_std());
                }
            }
        }
    }

    /// Records the remote's refusals of operations of a batch, durably, with a dead letter
    /// that keeps the refused operations (to requeue them); returns `false` if that could not
    /// be stored (the machine tries again later). Only once stored may the window pass the
    /// batch.
    pub(super) async fn keep_refusals(
        &self,
        handle: &JobHandle,
        refused: &[Refusal],
        requeued: bool,
    ) -> bool {
        let peer = self
            .peer()
            .unwrap_or_else(|| ReactorId::new("unknown").expect("a valid id"));
        let now = self.ctx.now_ms();
        let mut records = Vec::with_capacity(refused.len());
        let mut ops = Vec::with_capacity(refused.len());
        for r in refused {
            let Some(op) = handle.operations().iter().find(|o| o.id == r.id) else {
                tracing::warn!(remote = self.name(), op = %r.id, "the remote refused an operation the batch did not hold");
                continue;
            };
            records.push(RefusalRecord::new(
                op,
                peer.clone(),
                Some(self.config.name.clone()),
                r.error.clone(),
                now,
            ));
            ops.push((**op).clone());
        }
        if records.is_empty() {
            // Nothing of this batch was refused after all: no empty dead letter.
            return true;
        }
        let error = match records.as_slice() {
            [one] => one.error.clone(),
            many => WireError {
                kind: many
                    .first()
                    .map(|r| r.error.kind.clone())
                    .unwrap_or_else(|| "internal".into()),
                message: format!(
                    "{} operations refused; first: {}",
                    many.len(),
                    many.first().map(|r| r.error.message.as_str()).unwrap_or("")
                ),
            },
        };
        let letter = DeadLetter {
            id: handle.id().to_string(),
            remote: self.config.name.clone(),
            range: handle.range(),
            operations: ops,
            error,
            attempts: 1,
            failed_at_ms: now,
        };
        if let Err(e) = self.ctx.state.put_refusals(&records, Some(&letter)).await {
            tracing::warn!(remote = self.name(), error = %e, "could not store refusals; trying again");
            return false;
        }
        if requeued {
            // What the remote took this time is no longer refused.
            let accepted: Vec<_> = handle
                .operations()
                .iter()
                .filter(|o| !refused.iter().any(|r| r.id == o.id))
                .cloned()
                .collect();
            self.clear_refusals(&accepted, &peer).await;
        }
        self.ctx.refusals_recorded(&records);
        self.ctx.relay_refusals(&records).await;
        for r in &records {
            telemetry::ops_refused_by_peer(&r.error.kind, 1);
        }
        telemetry::dead_letter(self.name());
        tracing::warn!(
            remote = self.name(), job = %handle.id(), refused = records.len(),
            operations = handle.operations().len(), error = %letter.error.message,
            "the remote refused operations; they are kept as a dead letter"
        );
        if !requeued {
            self.status.send_modify(|s| s.dead_letters += 1);
        }
        true
    }

    pub(super) async fn clear_refusals(&self, ops: &[Arc<Operation>], peer: &ReactorId) {
        if ops.is_empty() {
            return;
        }
        let ids: Vec<_> = ops.iter().map(|o| o.id).collect();
        if let Err(e) = self.ctx.state.delete_refusals(&ids, peer).await {
            tracing::warn!(remote = self.name(), error = %e, "could not delete refusals");
        }
        self.ctx.refusals_cleared(ops);
    }

    pub(super) fn piggybacks_on(&self, session: &Session) -> bool {
        self.config.mode.pulls()
            && match self.ctx.config.piggyback {
                Piggyback::Never => false,
                Piggyback::NonDuplex => !session.info().duplex,
                Piggyback::Always => true,
            }
    }

    /// Sends one push, alone or riding on the next pull; returns the answer and the request's
    /// size (0 when it rode on a pull).
    pub(super) async fn send_push(
        &self,
        session: &Session,
        request: &Request,
        id: JobId,
    ) -> Result<(Pushed, usize)> {
        let timeout = self.ctx.config.request_timeout;
        if let (true, Request::Push(push)) = (self.piggybacks_on(session), request) {
            let (reply, mut rx) = oneshot::channel();
            self.piggy.lock().push_back(Piggy {
                id,
                push: push.clone(),
                reply,
            });
            self.wake_pull.notify_one();
            let early = tokio::select! {
                biased;
                r = &mut rx => Some(r),
                _ = tokio::time::sleep(PIGGYBACK_WAIT) => None,
            };
            let answer = match early {
                Some(r) => Some(r),
                None => {
                    // Not picked up in time: take it back and push it alone.
                    let taken_back = {
                        let mut q = self.piggy.lock();
                        let pos = q.iter().position(|p| p.id == id);
                        pos.and_then(|pos| q.remove(pos)).is_some()
                    };
                    if taken_back {
                        None
                    } else {
                        Some(
                            tokio::time::timeout(timeout * 2, rx)
                                .await
                                .unwrap_or_else(|_| {
                                    Ok(Err(Error::new(
                                        ErrorKind::Timeout,
                                        "the pull carrying the push timed out",
                                    )))
                                }),
                        )
                    }
                }
            };
            if let Some(r) = answer {
                return r
                    .unwrap_or_else(|_| Err(Error::closed("the puller stopped")))
                    .map(|p| (p, 0));
            }
        }
        let reply = session.request(request, timeout).await?;
        match reply.response {
            Response::Pushed(p) => Ok((p, reply.request_bytes)),
            other => Err(unexpected("push", &other)),
        }
    }

    pub(super) async fn forget_dead_letter(&self, handle: &JobHandle) {
        if let Some(peer) = self.peer() {
            self.clear_refusals(handle.operations(), &peer).await;
        }
        match self
            .ctx
            .state
            .delete_dead_letter(&handle.id().to_string())
            .await
        {
            Ok(()) => self
                .status
                .send_modify(|s| s.dead_letters = s.dead_letters.saturating_sub(1)),
            Err(e) => tracing::warn!(error = %e, "could not delete a delivered dead letter"),
        }
    }
}
