//! The connector's shell: drives the connector machine (`syncline_proto::sync::connector`):
//! dials (or adopts the peer's connection) and says hello, stores the peer the first time, and
//! publishes the live session to the pusher and puller.

use super::*;

use syncline_proto::sync::connector::{ConnectEffect, Connector};

/// What an effect the shell performed gave back.
enum Done {
    Dialed(Result<(Session, ReactorId)>),
    Saved(Result<()>),
}

impl RemoteShared {
    /// Drives the connector machine until the remote stops.
    pub(super) async fn connect_loop(self: Arc<Self>) {
        let names = (self.config.name.to_string(), self.url.to_string());
        let mut machine = Connector::new(
            self.ctx.config.reconnect,
            self.ctx.reactor.clone(),
            names,
            self.peer(),
        );
        let adopts = self.url.scheme() == super::super::PEER_SCHEME;
        let mut pending: FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>> =
            FuturesUnordered::new();
        // The session being dialled, then the live one.
        let mut dialled: Option<Session> = None;
        let mut live: Option<Session> = None;
        let mut timer = MachineTimer::new();
        loop {
            while let Some(effect) = machine.poll_effect() {
                tracing::trace!(
                    remote = self.name(),
                    effect = effect.name(),
                    "connect effect"
                );
                match effect {
                    ConnectEffect::Dial => {
                        self.status
                            .send_modify(|s| s.connection = ConnectionState::Connecting);
                        let remote = self.clone();
                        pending.push(Box::pin(async move { Done::Dialed(remote.dial().await) }));
                    }
                    ConnectEffect::SavePeer(peer) => {
                        let remote = self.clone();
                        pending.push(Box::pin(async move {
                            Done::Saved(remote.learn_peer(peer).await)
                        }));
                    }
                    ConnectEffect::Close => {
                        // An adopted session is the peer's: it stays open.
                        if let Some(s) = dialled.take()
                            && !adopts
                        {
                            s.close();
                        }
                    }
                    ConnectEffect::Connected { peer } => {
                        let Some(session) = dialled.take() else {
                            continue;
                        };
                        telemetry::connected(self.name(), true);
                        self.status.send_modify(|s| {
                            s.connection = ConnectionState::Connected;
                            s.peer = Some(peer);
                        });
                        tracing::debug!(remote = self.name(), url = %self.url, "connected");
                        self.link.update(|l| l.session = Some(session.clone()));
                        self.wake_push.notify_one();
                        self.wake_pull.notify_one();
                        live = Some(session);
                    }
                    ConnectEffect::Disconnected => {
                        if let Some(s) = live.take() {
                            s.close();
                        }
                        self.link.update(|l| l.session = None);
                        telemetry::connected(self.name(), false);
                        tracing::debug!(remote = self.name(), "disconnected");
                    }
                    ConnectEffect::Failed {
                        error,
                        attempt,
                        retry_in,
                        loud,
                    } => {
                        if loud {
                            tracing::info!(
                                remote = self.name(), url = %self.url, attempt, error = %error,
                                "cannot connect; retrying in {} ms", retry_in.as_millis()
                            );
                        }
                        self.failed(&error);
                        self.status.send_modify(|s| {
                            s.connection = ConnectionState::Backoff {
                                attempt,
                                retry_in_ms: retry_in.as_millis() as u64,
                                error: error.to_string(),
                            }
                        });
                    }
                    ConnectEffect::Stopped => {}
                }
            }
            if self.stopped() {
                break;
            }
            timer.set(machine.poll_timeout());
            let entropy = &self.ctx.entropy;
            tokio::select! {
                biased;
                _ = self.until_stopped() => {
                    machine.stop();
                }
                Some(done) = pending.next(), if !pending.is_empty() => {
                    let now = Instant::now().into_std();
                    match done {
                        Done::Dialed(r) => {
                            let r = r.map(|(session, peer)| {
                                dialled = Some(session);
                                peer
                            });
                            machine.dialed(now, r, || entropy.unit());
                        }
                        Done::Saved(r) => machine.saved(now, r, || entropy.unit()),
                    }
                }
                _ = async { live.as_ref().expect("guarded").closed().await }, if live.is_some() => {
                    machine.closed(Instant::now().into_std(), || entropy.unit());
                }
                () = timer.fired(), if timer.is_armed() => {
                    machine.handle_timeout(Instant::now().into_std());
                }
            }
        }
        self.link.update(|l| l.session = None);
        self.status
            .send_modify(|s| s.connection = ConnectionState::Stopped);
    }

    /// Waits for the peer to connect to us (a `peer://` remote): its welcomed, duplex session
    /// becomes this remote's session.
    pub(super) async fn adopt(self: &Arc<Self>) -> Result<(Session, ReactorId)> {
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
        Ok((session, peer))
    }

    /// Dials the remote and says hello; returns the session and who answered (the machine
    /// checks who that may be).
    pub(super) async fn dial(self: &Arc<Self>) -> Result<(Session, ReactorId)> {
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
            session.set_peer(welcome.reactor_id.clone())?;
            Ok(welcome.reactor_id)
        }
        .await;
        match result {
            Ok(peer) => Ok((session, peer)),
            Err(e) => {
                session.close();
                Err(e)
            }
        }
    }

    /// Stores who the remote is, learnt at its first welcome.
    async fn learn_peer(&self, peer: ReactorId) -> Result<()> {
        let record = {
            let mut r = self.record.lock();
            r.peer = Some(peer);
            r.clone()
        };
        let stored = self.ctx.state.put_remote(&record).await;
        if stored.is_err() {
            self.record.lock().peer = None;
        }
        stored
    }
}
