//! The pusher: reads the feed after the outbox cursor, sends pushes within the window (or on
//! the peer's pulls), keeps refusals and dead letters, and moves the cursor over what the peer
//! answered.

use super::*;

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

    pub(super) async fn push_loop(
        self: Arc<Self>,
        mut requeue_rx: mpsc::Receiver<DeadLetter>,
        saver: watch::Sender<Ordinal>,
    ) {
        // What counts as an echo depends on who the remote is: learn that before reading.
        if self.peer().is_none() && self.wait_session().await.is_none() {
            return;
        }
        let filter = self.ctx.read_filter(&self.config.filter, self.peer());
        let committed = self.status.borrow().outbox_cursor;
        let mut window = OutboxWindow::new(committed);
        let mut read_pos = committed;
        let mut inflight: FuturesUnordered<Delivering> = FuturesUnordered::new();
        let batch = self.ctx.config.push_batch_ops;
        let max_in_flight = self.ctx.config.push_window;
        loop {
            if self.stopped() {
                break;
            }
            let mut read_failed = false;
            while !self.draining.load(Ordering::SeqCst) && inflight.len() < max_in_flight {
                let page = match self.ctx.store.read_since(read_pos, batch, &filter).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(remote = self.name(), error = %e, "reading the feed failed");
                        self.failed(&e);
                        read_failed = true;
                        break;
                    }
                };
                if page.scanned_to <= read_pos {
                    break;
                }
                // Cut the batch to fit the frame limit in bytes as well as in count.
                let (page_ops, to, _) = super::super::cut_to_bytes(
                    page.ops,
                    page.scanned_to,
                    self.ctx.config.batch_bytes(),
                );
                let from = read_pos;
                read_pos = to;
                if page_ops.is_empty() {
                    if let Some(c) = window.skip(from, to) {
                        self.commit_outbox(c, &saver);
                    }
                    continue;
                }
                window.open(from, to);
                let ops: Vec<Arc<Operation>> = page_ops.into_iter().map(|s| s.op).collect();
                let handle = JobHandle::new(self.ctx.entropy.job_id(), ops, (from, to));
                self.channel.outbox.push(handle.clone());
                inflight.push(Box::pin(self.clone().deliver(handle, false)));
            }
            let n = inflight.len();
            self.status.send_if_modified(|s| {
                let changed = s.in_flight != n;
                s.in_flight = n;
                changed
            });
            // Events wake the pusher for local writes; the poll catches writes made by other
            // processes sharing the store, and retries a failed read.
            let poll = if read_failed {
                Duration::from_millis(500)
            } else {
                FEED_POLL
            };
            tokio::select! {
                biased;
                _ = self.until_stopped() => break,
                Some((handle, delivery, requeued)) = inflight.next(), if !inflight.is_empty() => {
                    self.channel.outbox.remove(&handle);
                    if requeued {
                        self.requeued.lock().remove(&handle.id().to_string());
                    }
                    if !requeued && delivery != Delivery::Stopped
                        && let Some(c) = window.finish(handle.range().0) {
                            self.commit_outbox(c, &saver);
                        }
                }
                // Requeued batches count against the push window like any other.
                Some(letter) = requeue_rx.recv(), if inflight.len() < max_in_flight => {
                    let Ok(id) = letter.id.parse::<JobId>() else {
                        self.requeued.lock().remove(&letter.id);
                        tracing::warn!(remote = self.name(), letter = %letter.id, "a dead letter's id is not a job id; not sent again");
                        continue;
                    };
                    let ops = letter.operations.into_iter().map(Arc::new).collect();
                    let handle = JobHandle::new(id, ops, letter.range);
                    self.channel.outbox.push(handle.clone());
                    inflight.push(Box::pin(self.clone().deliver(handle, true)));
                }
                _ = self.wake_push.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Pushes one batch until the remote answered it (every operation applied or refused) or
    /// the remote stops. Failures of the whole batch (network, session, timeout, or an error
    /// answer) are retried with backoff for as long as the remote exists: only per-operation
    /// refusals end in a dead letter, and only those let the cursor pass an operation the
    /// remote does not hold.
    pub(super) async fn deliver(
        self: Arc<Self>,
        handle: JobHandle,
        requeued: bool,
    ) -> (JobHandle, Delivery, bool) {
        let _ = handle.advance(JobStatus::TransportPending);
        let request = Request::Push(Push {
            job_id: handle.id(),
            strands: StrandUpdate::group(handle.operations()),
        });
        let n = handle.operations().len();
        let policy = self.ctx.config.retry;
        let mut attempts = 0u32;
        loop {
            let Some(session) = self.wait_session().await else {
                return (handle, Delivery::Stopped, requeued);
            };
            let started = Instant::now();
            let err = match self.send_push(&session, &request, handle.id()).await {
                Ok((mut pushed, request_bytes)) => {
                    let rtt = started.elapsed();
                    // Refusals the remote passes on from other reactors (they name who
                    // refused) are about earlier batches: record them apart.
                    let (relayed, own): (Vec<_>, Vec<_>) =
                        pushed.refused.drain(..).partition(|r| r.by.is_some());
                    pushed.refused = own;
                    if let Some(peer) = session.peer()
                        && let Err(e) = self.ctx.record_reported(peer, &relayed).await
                    {
                        tracing::warn!(remote = self.name(), error = %e, "could not record refusals");
                    }
                    let outcome = if pushed.refused.is_empty() {
                        "applied"
                    } else {
                        "refused"
                    };
                    telemetry::push_done(self.name(), n, request_bytes, outcome, rtt);
                    self.ctx.scheduler.observe(
                        Some(self.name()),
                        &Signal::PushSent {
                            ok: true,
                            ops: n,
                            rtt,
                        },
                    );
                    self.succeeded();
                    let delivery = if pushed.refused.is_empty() {
                        if requeued {
                            self.forget_dead_letter(&handle).await;
                        }
                        Delivery::Applied
                    } else if self.keep_refusals(&handle, &pushed.refused, requeued).await {
                        Delivery::DeadLettered
                    } else {
                        return (handle, Delivery::Stopped, requeued);
                    };
                    let _ = handle.advance(JobStatus::Applied);
                    return (handle, delivery, requeued);
                }
                Err(e) => e,
            };
            self.failed(&err);
            self.ctx.scheduler.observe(
                Some(self.name()),
                &Signal::PushSent {
                    ok: false,
                    ops: n,
                    rtt: started.elapsed(),
                },
            );
            // A closed session is the connector's business; only failures on a live session
            // count towards the backoff.
            if err.kind() != ErrorKind::Closed {
                attempts += 1;
            }
            if attempts > 0 && (!err.is_retryable() || policy.exhausted(attempts)) {
                // Not a verdict on any operation: keep trying, louder.
                if attempts.is_power_of_two() {
                    tracing::warn!(
                        remote = self.name(), job = %handle.id(), operations = n,
                        attempts, error = %err,
                        "a batch keeps failing; it is retried for as long as the remote exists"
                    );
                }
            } else {
                tracing::debug!(remote = self.name(), error = %err, "push failed; retrying");
            }
            telemetry::retry(self.name(), "push");
            let wait = policy.backoff(attempts.max(1), self.ctx.entropy.unit());
            if !self.sleep_or_stop(wait).await {
                return (handle, Delivery::Stopped, requeued);
            }
        }
    }

    /// Records the remote's refusals of operations of a batch, durably, with a dead letter
    /// that keeps the refused operations (to requeue them); returns `false` if the remote
    /// stopped first. Only then may the window pass the batch.
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
        loop {
            match self.ctx.state.put_refusals(&records, Some(&letter)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(remote = self.name(), error = %e, "could not store refusals");
                    if !self.sleep_or_stop(Duration::from_secs(1)).await {
                        return false;
                    }
                }
            }
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
