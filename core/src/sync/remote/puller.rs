//! The puller's effects over the remote's session, the apply queue and the scheduler.

use super::run::{Done, Shell};
use super::*;

use syncline_proto::sync::puller::{PullEffect, Pulled};
use syncline_proto::sync::remote::{Carried, RemoteMachine};

impl Shell {
    pub(super) fn pull_effect(
        &mut self,
        machine: &mut RemoteMachine,
        effect: PullEffect,
        carried: Option<Carried>,
    ) {
        let remote = &self.driver;
        let session = self.live.clone();
        match effect {
            PullEffect::Register { since } => {
                let driver = remote.clone();
                self.spawn(async move { Done::Registered(driver.register(session, since).await) });
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
                let push = carried.and_then(|c| match &*c.request {
                    Request::Push(p) => Some(p.clone()),
                    _ => None,
                });
                let driver = remote.clone();
                self.spawn(async move {
                    let (answer, pushed) = driver
                        .pull(session, listener, cursor, limit, hold, push)
                        .await;
                    Done::PullAnswered(answer, pushed)
                });
            }
            PullEffect::Apply { ops, range } => {
                let driver = remote.clone();
                let job = self
                    .job
                    .take()
                    .unwrap_or_else(|| remote.ctx.entropy.job_id());
                let handle = PullJobHandle::new(job, ops.clone(), range);
                let _ = handle.started();
                let _ = handle.transported();
                remote.channel.inbox.push(handle.clone());
                let source = self.pulled_from.clone();
                self.spawn(async move {
                    let applied = driver.apply(source, &handle, ops, range.1).await;
                    Done::Applied(handle, applied)
                });
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
                let now = remote.now_ms();
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
                let driver = remote.clone();
                self.spawn(async move {
                    let ack = Request::Ack(Ack {
                        listener_id: listener,
                        cursor,
                        refused,
                    });
                    let sent = match session {
                        Some(s) => s.request(&ack, driver.request_timeout).await.map(|_| ()),
                        None => Err(Error::closed("the session closed")),
                    };
                    if let Err(e) = &sent {
                        tracing::debug!(remote = driver.name(), error = %e, "ack failed");
                    }
                    Done::Acked(sent.is_ok())
                });
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
                machine.scheduled(tokio::time::Instant::now().into_std(), wait, idle);
            }
        }
    }
}

impl Driver {
    /// Registers a listener on the remote after `since` and keeps its id with the remote's
    /// record.
    async fn register(&self, session: Option<Session>, since: Ordinal) -> Result<String> {
        let session = session.ok_or_else(|| Error::closed("the session closed"))?;
        let request = Request::Register(Register {
            filter: self.config.filter.clone(),
            since,
        });
        let reply = session.request(&request, self.request_timeout).await?;
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

    /// Sends one pull (carrying `push` if one rides on it), records the refusals the remote
    /// reports, and checks the operations it brought; returns that and the answer to the push.
    async fn pull(
        &self,
        session: Option<Session>,
        listener_id: String,
        cursor: Ordinal,
        limit: u32,
        hold: Duration,
        push: Option<Push>,
    ) -> (Result<(Pulled, ReactorId)>, Option<Result<Pushed>>) {
        let Some(session) = session else {
            return (Err(Error::closed("the session closed")), None);
        };
        let Some(peer) = session.peer().cloned() else {
            return (Err(Error::internal("a welcomed session has no peer")), None);
        };
        let request = Request::Pull(Pull {
            listener_id,
            cursor,
            limit,
            push,
            wait_ms: hold.as_millis().min(u128::from(u32::MAX)) as u32,
        });
        let timeout = self.request_timeout + hold;
        let reply = match session.request(&request, timeout).await {
            Ok(r) => r,
            Err(e) => return (Err(e), None),
        };
        let Response::Pulled(mut pulled) = reply.response else {
            return (Err(unexpected("pull", &reply.response)), None);
        };
        let pushed = pulled.push_result.take().map(|r| match r {
            PushResult::Ok(p) => Ok(p),
            PushResult::Err(e) => Err(e.into()),
        });
        let checked = async {
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
        .await;
        (checked, pushed)
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
