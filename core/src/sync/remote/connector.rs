//! The connector's effects: dial (or adopt the peer's connection) and say hello, store the
//! peer the first time, publish the live session.

use super::run::{Done, Shell};
use super::*;

use syncline_proto::sync::connector::ConnectEffect;
use syncline_proto::sync::remote::Link;

impl Shell {
    pub(super) fn connect_effect(&mut self, effect: ConnectEffect) {
        let remote = &self.driver;
        match effect {
            ConnectEffect::Dial => {
                remote
                    .status
                    .send_modify(|s| s.connection = ConnectionState::Connecting);
                let driver = remote.clone();
                self.spawn(async move { Done::Dialed(driver.dial().await) });
            }
            ConnectEffect::SavePeer(peer) => {
                let driver = remote.clone();
                self.spawn(async move { Done::Saved(driver.learn_peer(peer).await) });
            }
            ConnectEffect::Close => {
                // An adopted session is the peer's: it stays open.
                if let Some(s) = self.dialled.take()
                    && !remote.adopts()
                {
                    s.close();
                }
            }
            ConnectEffect::Connected { peer } => {
                let Some(session) = self.dialled.take() else {
                    return;
                };
                telemetry::connected(remote.name(), true);
                remote.status.send_modify(|s| {
                    s.connection = ConnectionState::Connected;
                    s.peer = Some(peer);
                });
                tracing::debug!(remote = remote.name(), url = %remote.url, "connected");
                remote.link.send_replace(Some(session.clone()));
                self.live = Some(session);
            }
            ConnectEffect::Disconnected => {
                if let Some(s) = self.live.take() {
                    s.close();
                }
                remote.link.send_replace(None);
                telemetry::connected(remote.name(), false);
                tracing::debug!(remote = remote.name(), "disconnected");
            }
            ConnectEffect::Failed {
                error,
                attempt,
                retry_in,
                loud,
            } => {
                if loud {
                    tracing::info!(
                        remote = remote.name(), url = %remote.url, attempt, error = %error,
                        "cannot connect; retrying in {} ms", retry_in.as_millis()
                    );
                }
                remote.failed(&error);
                remote.status.send_modify(|s| {
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
}

impl Driver {
    fn adopts(&self) -> bool {
        self.url.scheme() == super::super::PEER_SCHEME
    }

    /// What the machine needs to know of a session: whether it carries pokes, and whether
    /// pushes ride on pulls on it.
    pub(super) fn link_of(&self, session: &Session) -> Link {
        let duplex = session.info().duplex;
        let piggyback = self.config.mode.pulls()
            && match self.ctx.config.piggyback {
                Piggyback::Never => false,
                Piggyback::NonDuplex => !duplex,
                Piggyback::Always => true,
            };
        Link { duplex, piggyback }
    }

    /// Waits for the peer to connect to us (a `peer://` remote): its welcomed, duplex session
    /// becomes this remote's session.
    async fn adopt(&self) -> Result<(Session, ReactorId)> {
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
    async fn dial(self: &Arc<Self>) -> Result<(Session, ReactorId)> {
        if self.adopts() {
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
            remote: Arc::downgrade(&self.remote),
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
