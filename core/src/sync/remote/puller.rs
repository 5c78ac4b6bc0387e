//! The puller: registers a listener, pulls on the scheduler's interval (or holds a long poll),
//! applies what it receives and acknowledges it.

use super::*;

impl RemoteShared {
    pub(super) async fn pull_loop(self: Arc<Self>) {
        let mut hold = Duration::ZERO;
        loop {
            let Some(session) = self.wait_session().await else {
                return;
            };
            let report = match self.pull_once(&session, hold).await {
                Ok(report) => report,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    // The responder forgot our listener (its store was reset): register again.
                    tracing::info!(remote = self.name(), error = %e, "registering again");
                    self.record.lock().listener_id = None;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(remote = self.name(), error = %e, "pull failed");
                    self.failed(&e);
                    telemetry::pull_done(self.name(), 0, 0, false, Duration::ZERO);
                    if e.is_retryable() {
                        telemetry::retry(self.name(), "pull");
                    }
                    PullReport::default()
                }
            };
            let wait = self
                .ctx
                .scheduler
                .next_pull(self.name(), &report, self.ctx.entropy.unit());
            let ms = wait.as_millis() as u64;
            self.status.send_if_modified(|s| {
                let changed = s.pull_interval_ms != ms;
                s.pull_interval_ms = ms;
                changed
            });
            telemetry::pull_interval(self.name(), wait);
            // An idle remote on a link without pokes: pull at once and let the responder hold
            // the pull open for the wait instead, so a write meanwhile arrives at once.
            hold = if self.ctx.config.long_poll
                && !session.info().duplex
                && report.ok
                && self.ctx.scheduler.idle(self.name())
            {
                wait.min(self.ctx.config.max_pull_wait)
            } else {
                Duration::ZERO
            };
            if wait.is_zero() || !hold.is_zero() {
                continue;
            }
            tokio::select! {
                biased;
                _ = self.until_stopped() => return,
                _ = self.wake_pull.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    pub(super) async fn ensure_listener(&self, session: &Session) -> Result<String> {
        if let Some(id) = self.record.lock().listener_id.clone() {
            return Ok(id);
        }
        let since = Ordinal(self.inbox_cursor.load(Ordering::SeqCst));
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

    pub(super) async fn pull_once(&self, session: &Session, hold: Duration) -> Result<PullReport> {
        let listener_id = self.ensure_listener(session).await?;
        let peer = session
            .peer()
            .cloned()
            .ok_or_else(|| Error::internal("a welcomed session has no peer"))?;
        let cursor = Ordinal(self.inbox_cursor.load(Ordering::SeqCst));
        let mut seq = 0;
        self.status.send_modify(|s| {
            s.pulls += 1;
            seq = s.pulls;
        });
        let timeout = self.ctx.config.request_timeout;
        let started = Instant::now();
        let mut piggy = TakenPiggy(if self.piggybacks_on(session) {
            self.piggy.lock().pop_front()
        } else {
            None
        });
        let request = Request::Pull(Pull {
            listener_id: listener_id.clone(),
            cursor,
            limit: self.ctx.config.pull_batch_ops as u32,
            push: piggy.0.as_ref().map(|p| p.push.clone()),
            wait_ms: hold.as_millis().min(u128::from(u32::MAX)) as u32,
        });
        let reply = match session.request(&request, timeout + hold).await {
            Ok(r) => r,
            Err(e) => {
                piggy.answer(Err(e.clone()));
                return Err(e);
            }
        };
        let rtt = started.elapsed();
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
        if pulled.cursor < cursor {
            return Err(Error::malformed(format!(
                "remote {} moved the cursor back from {cursor} to {}",
                self.name(),
                pulled.cursor
            )));
        }
        let ops = StrandUpdate::into_operations(pulled.strands);
        let n = ops.len();
        let Verdicts {
            accepted: ops,
            refused,
        } = self.ctx.verify_incoming(ops, &peer, false)?;
        // Refused operations are passed like applied ones (the verdict is permanent) and
        // reported to the remote with the acknowledgement.
        self.unreported.lock().extend(refused);
        let handle = PullJobHandle::new(
            self.ctx.entropy.job_id(),
            ops.clone(),
            (cursor, pulled.cursor),
        );
        let _ = handle.started();
        let _ = handle.transported();
        self.channel.inbox.push(handle.clone());
        let applied = async {
            if pulled.cursor > cursor {
                let ticket = self
                    .ctx
                    .queue
                    .enqueue(
                        handle.id(),
                        JobKind::Apply {
                            ops,
                            source: peer.clone(),
                            meta: vec![SyncState::cursor_write(
                                &self.config.name,
                                Direction::Inbox,
                                pulled.cursor,
                            )],
                        },
                    )
                    .await?;
                ticket.wait().await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = applied {
            handle.failed(e.clone());
            self.channel.inbox.remove(&handle);
            return Err(e);
        }
        let _ = handle.executed();
        self.channel.inbox.remove(&handle);
        self.inbox_cursor.store(pulled.cursor.0, Ordering::SeqCst);
        telemetry::pull_done(self.name(), n, reply.response_bytes, true, rtt);
        let now = self.ctx.now_ms();
        self.status.send_modify(|s| {
            s.inbox_cursor = pulled.cursor;
            s.inbox_lag = pulled.head.0.saturating_sub(pulled.cursor.0);
            if !pulled.has_more {
                s.last_caught_up_pull = seq;
            }
            s.last_success_ms = Some(now);
        });
        self.report_lag();
        // Refusals others reported of operations this remote sent us travel back with the
        // acknowledgement.
        self.unreported.lock().extend(self.ctx.take_relayed(&peer));
        if pulled.cursor > cursor || !self.unreported.lock().is_empty() {
            // Seed 004's acknowledgeStrands: tell the responder how far we durably applied, and
            // which operations we (or reactors after us) refused.
            let refused = std::mem::take(&mut *self.unreported.lock());
            let ack = Request::Ack(Ack {
                listener_id,
                cursor: pulled.cursor,
                refused: refused.clone(),
            });
            if let Err(e) = session.request(&ack, timeout).await {
                tracing::debug!(remote = self.name(), error = %e, "ack failed");
                let mut u = self.unreported.lock();
                let mut again = refused;
                again.append(&mut u);
                *u = again;
            }
        }
        Ok(PullReport {
            ok: true,
            ops: n,
            bytes: reply.response_bytes,
            has_more: pulled.has_more,
            // A held pull's time is mostly waiting, not the network: report it as unknown.
            rtt: if hold.is_zero() { rtt } else { Duration::ZERO },
        })
    }
}
