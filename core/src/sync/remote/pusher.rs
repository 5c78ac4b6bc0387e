//! The pusher's effects: read the feed after the outbox cursor, send pushes, keep refusals and
//! dead letters, and save the cursor over what the peer answered.

use super::run::{Done, Shell};
use super::*;

use syncline_proto::sync::pusher::{PushEffect, Record};
use syncline_proto::sync::remote::RemoteMachine;

impl Shell {
    pub(super) fn push_effect(&mut self, effect: PushEffect) {
        let remote = &self.driver;
        match effect {
            // Performed inline by the loop (`Shell::read`).
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
                let session = self.live.clone();
                let driver = remote.clone();
                self.spawn_task(async move {
                    let answer = match session {
                        Some(session) => driver.send_push(&session, &request).await,
                        None => Err(Error::closed("the session closed")),
                    };
                    Done::PushAnswered(job, answer)
                });
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
                let driver = remote.clone();
                self.spawn(async move {
                    if let Some(peer) = driver.peer()
                        && let Err(e) = driver.ctx.record_reported(&peer, &relayed).await
                    {
                        tracing::warn!(remote = driver.name(), error = %e, "could not record refusals");
                    }
                    Done::Nothing
                });
            }
            PushEffect::Record {
                job,
                record,
                requeued,
            } => {
                let Some(handle) = self.handles.get(&job).cloned() else {
                    return;
                };
                let driver = remote.clone();
                self.spawn(async move {
                    let stored = match record {
                        Record::Refusals(refused) => {
                            driver.keep_refusals(&handle, &refused, requeued).await
                        }
                        Record::Delivered => {
                            driver.forget_dead_letter(&handle).await;
                            true
                        }
                    };
                    Done::Recorded(job, stored)
                });
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
            PushEffect::Cursor(at) => {
                remote.status.send_modify(|s| s.outbox_cursor = at);
                self.saver.send_replace(at);
                remote.report_lag();
            }
            PushEffect::InFlight(n) => {
                remote.status.send_if_modified(|s| {
                    let changed = s.in_flight != n;
                    s.in_flight = n;
                    changed
                });
            }
        }
    }

    /// Reads the feed and hands the page to the machine.
    pub(super) async fn read(&mut self, machine: &mut RemoteMachine, after: Ordinal, limit: usize) {
        let remote = &self.driver;
        // What counts as an echo depends on who the remote is, known by now.
        let filter = self
            .filter
            .get_or_insert_with(|| remote.ctx.read_filter(&remote.config.filter, remote.peer()));
        let page = remote.ctx.store.read_since(after, limit, filter).await;
        let now = tokio::time::Instant::now().into_std();
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

impl Driver {
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

    /// Sends one push on its own; returns the answer and the request's size.
    async fn send_push(&self, session: &Session, request: &Request) -> Result<(Pushed, usize)> {
        let reply = session.request(request, self.request_timeout).await?;
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
