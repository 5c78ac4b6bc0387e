//! The connector: dials (or adopts the peer's connection), says hello, learns the peer, and
//! redials with backoff when the session closes.

use super::*;

impl RemoteShared {
    pub(super) async fn connect_loop(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            if self.stopped() {
                break;
            }
            self.status
                .send_modify(|s| s.connection = ConnectionState::Connecting);
            let wait = match self.dial().await {
                Ok(session) => {
                    failures = 0;
                    telemetry::connected(self.name(), true);
                    let peer = session.peer().cloned();
                    self.status.send_modify(|s| {
                        s.connection = ConnectionState::Connected;
                        s.peer = peer;
                    });
                    tracing::debug!(remote = self.name(), url = %self.url, "connected");
                    self.link.update(|l| l.session = Some(session.clone()));
                    self.wake_push.notify_one();
                    self.wake_pull.notify_one();
                    tokio::select! {
                        biased;
                        _ = self.until_stopped() => {
                            session.close();
                            break;
                        }
                        _ = session.closed() => {}
                    }
                    self.link.update(|l| l.session = None);
                    telemetry::connected(self.name(), false);
                    tracing::debug!(remote = self.name(), "disconnected");
                    // A peer that accepts and drops at once is not redialled in a tight loop.
                    self.ctx
                        .config
                        .reconnect
                        .backoff(1, self.ctx.entropy.unit())
                }
                Err(e) => {
                    failures += 1;
                    let wait = self
                        .ctx
                        .config
                        .reconnect
                        .backoff(failures, self.ctx.entropy.unit());
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::info!(
                            remote = self.name(), url = %self.url, attempt = failures,
                            error = %e, "cannot connect; retrying in {} ms", wait.as_millis()
                        );
                    }
                    self.failed(&e);
                    self.status.send_modify(|s| {
                        s.connection = ConnectionState::Backoff {
                            attempt: failures,
                            retry_in_ms: wait.as_millis() as u64,
                            error: e.to_string(),
                        }
                    });
                    wait
                }
            };
            if !self.sleep_or_stop(wait).await {
                break;
            }
        }
        self.link.update(|l| l.session = None);
        self.status
            .send_modify(|s| s.connection = ConnectionState::Stopped);
    }

    /// Waits for the peer to connect to us (a `peer://` remote): its welcomed, duplex session
    /// becomes this remote's session.
    pub(super) async fn adopt(self: &Arc<Self>) -> Result<Session> {
        let peer = ReactorId::new(self.url.host_str().unwrap_or_default()).map_err(|e| {
            Error::invalid(format!(
                "remote {}: {} must name a reactor id: {}",
                self.name(),
                self.url,
                e.message()
            ))
        })?;
        let mut inbound = self.ctx.inbound.subscribe();
        let found = inbound
            .wait_for(|m| {
                m.get(&peer)
                    .is_some_and(|s| !s.is_closed() && s.info().duplex)
            })
            .await
            .map_err(|_| Error::closed("the sync manager stopped"))?
            .get(&peer)
            .cloned();
        let session = found.ok_or_else(|| Error::internal("an adopted session vanished"))?;
        self.learn_peer(peer).await?;
        Ok(session)
    }

    pub(super) async fn dial(self: &Arc<Self>) -> Result<Session> {
        if self.url.scheme() == super::super::PEER_SCHEME {
            return self.adopt().await;
        }
        let timeout = self.ctx.config.request_timeout;
        let link = tokio::time::timeout(timeout, self.ctx.transports.connect(&self.url))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("connecting to {} took longer than {timeout:?}", self.url),
                )
            })??;
        let handler = Arc::new(ClientHandler {
            responder: self.responder.clone(),
            remote: Arc::downgrade(self),
        });
        let session = Session::start(
            link,
            handler,
            self.ctx.config.limits(),
            self.ctx.session_id(),
        );
        let hello = Request::Hello(Hello {
            reactor_id: self.ctx.reactor.clone(),
            protocol: PROTOCOL_VERSION,
            credentials: self.config.credentials.clone(),
            capabilities: Vec::new(),
        });
        let result = async {
            let reply = session.request(&hello, timeout).await?;
            let Response::Welcome(welcome) = reply.response else {
                return Err(unexpected("hello", &reply.response));
            };
            if welcome.reactor_id == self.ctx.reactor {
                return Err(Error::invalid(format!(
                    "remote {} at {} is this reactor itself",
                    self.name(),
                    self.url
                )));
            }
            session.set_peer(welcome.reactor_id.clone())?;
            self.learn_peer(welcome.reactor_id).await
        }
        .await;
        match result {
            Ok(()) => Ok(session),
            Err(e) => {
                session.close();
                Err(e)
            }
        }
    }

    pub(super) async fn learn_peer(&self, peer: ReactorId) -> Result<()> {
        let record = {
            let mut r = self.record.lock();
            match &r.peer {
                Some(known) if *known == peer => return Ok(()),
                Some(known) => {
                    return Err(Error::invalid(format!(
                        "remote {} used to be reactor {known} but now answers as {peer}; its \
                         cursors do not apply to another reactor: remove and add the remote \
                         again to start over",
                        self.name()
                    )));
                }
                None => r.peer = Some(peer),
            }
            r.clone()
        };
        self.ctx.state.put_remote(&record).await
    }
}
