//! The responder: serves peers' requests (seed 004's pull responder and push receiver) and
//! pokes listening peers when new operations are written.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::SyncContext;
use super::remote::TaskGroup;
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::protocol::{Hello, Notification, PROTOCOL_VERSION, Poke, Request, Response, Welcome};
use crate::session::{Session, SessionHandler};
use crate::telemetry;
use crate::types::ReactorId;
use syncline_proto::sync::listeners::{ListenerLimits, Listeners};
use syncline_proto::sync::sessions::{Admission, SessionLimits, Sessions};

#[derive(Debug, Default)]
struct PokeState {
    /// Sources of operations written since the poker last ran (`None` = local).
    sources: Mutex<Vec<Option<ReactorId>>>,
    wake: Notify,
}

/// Serves peers.
#[derive(Debug)]
pub(crate) struct Responder {
    ctx: Arc<SyncContext>,
    /// The pull listeners (the table decides; this shell stores and reads).
    listeners: Mutex<Listeners>,
    /// The sessions peers hold open (the table decides admission; this shell closes).
    sessions: Mutex<Sessions<Session>>,
    poke: Arc<PokeState>,
}

mod incoming;
mod listeners;

pub(crate) use incoming::Verdicts;

impl Responder {
    pub(crate) async fn start(ctx: Arc<SyncContext>) -> Result<(Arc<Self>, TaskGroup)> {
        let limits = ListenerLimits {
            per_peer: ctx.config.max_listeners_per_peer,
            total: ctx.config.max_listeners,
            ttl_ms: u64::try_from(ctx.config.listener_ttl.as_millis()).unwrap_or(u64::MAX),
        };
        let listeners = Listeners::new(ctx.state.listeners().await?, limits);
        telemetry::listeners(listeners.len());
        let poke = Arc::new(PokeState::default());
        let p = poke.clone();
        ctx.bus.on(move |event| {
            let Event::OperationsWritten(w) = event else {
                return;
            };
            {
                let mut sources = p.sources.lock();
                for s in w.sources() {
                    if !sources.contains(&s) {
                        sources.push(s);
                    }
                }
            }
            p.wake.notify_one();
        });
        let session_limits = SessionLimits {
            max_sessions: ctx.config.max_sessions,
            max_per_peer: ctx.config.max_sessions_per_peer,
        };
        let responder = Arc::new(Responder {
            ctx,
            listeners: Mutex::new(listeners),
            sessions: Mutex::new(Sessions::new(session_limits)),
            poke,
        });
        let mut tasks = TaskGroup::default();
        tasks.spawn(responder.clone().poke_loop());
        tasks.spawn(responder.clone().expiry_loop());
        Ok((responder, tasks))
    }

    pub(crate) fn close_sessions(&self) {
        // Under the lock `admit` takes, so no session slips in after it.
        let sessions = self.sessions.lock().shut_down();
        for s in sessions {
            s.close();
        }
    }

    /// Tells listening peers that something new is there, at most one outstanding poke per
    /// session, and never about operations that came from that peer.
    async fn poke_loop(self: Arc<Self>) {
        loop {
            self.poke.wake.notified().await;
            let sources = std::mem::take(&mut *self.poke.sources.lock());
            let head = self.ctx.head();
            let sessions: Vec<Session> = {
                let mut table = self.sessions.lock();
                let open = table.open(|s| !s.is_closed());
                telemetry::sessions(table.len());
                open
            };
            for s in sessions {
                if !s.info().duplex {
                    continue;
                }
                let Some(peer) = s.peer().cloned() else {
                    continue;
                };
                if !sources.iter().any(|src| src.as_ref() != Some(&peer)) {
                    continue;
                }
                // A peer we push to gets the operations from our pusher; poking it would only
                // make it pull what is already on its way.
                if self.ctx.remotes_of(&peer).iter().any(|r| r.pushes_live()) {
                    continue;
                }
                {
                    let mut st = s.responder_state();
                    if st.poke_pending || st.listeners.is_empty() {
                        continue;
                    }
                    st.poke_pending = true;
                }
                if let Err(e) = s.notify(Notification::Poke(Poke { head })).await {
                    tracing::debug!(peer = %peer, error = %e, "poke failed");
                }
            }
        }
    }

    /// Counts a session that said hello against the session limits
    /// (`syncline_proto::sync::sessions`): beyond `max_sessions_per_peer` the peer's oldest
    /// session is closed; beyond `max_sessions` the hello is refused.
    fn admit(&self, session: &Session, peer: &ReactorId) -> Result<()> {
        let config = &self.ctx.config;
        let admission = {
            let mut table = self.sessions.lock();
            let a = table.admit(session.id(), peer, session.clone(), |s| !s.is_closed());
            telemetry::sessions(table.len());
            a
        };
        match admission {
            Admission::Already | Admission::Admitted { evicted: None } => Ok(()),
            Admission::Admitted { evicted: Some(old) } => {
                tracing::info!(
                    peer = %peer, transport = old.info().transport,
                    "reactor {peer} opened more than {} sessions (sync.max_sessions_per_peer); \
                     closing its oldest", config.max_sessions_per_peer
                );
                telemetry::session_refused("max_sessions_per_peer");
                old.close();
                Ok(())
            }
            Admission::Full => {
                telemetry::session_refused("max_sessions");
                Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "this node serves its limit of {} sessions (sync.max_sessions); try \
                         again later",
                        config.max_sessions
                    ),
                ))
            }
            Admission::ShuttingDown => {
                // A hello that reaches a reactor that stopped (its listener not gone yet):
                // nobody would answer the session, so it ends and the peer dials again.
                session.close();
                Err(Error::closed("the reactor is shutting down"))
            }
        }
    }

    fn remember(&self, session: &Session) {
        self.sessions
            .lock()
            .remember(session.id(), session.peer().cloned(), session.clone());
    }

    fn hello(&self, session: &Session, hello: Hello) -> Result<Response> {
        if hello.protocol < PROTOCOL_VERSION {
            return Err(Error::new(
                ErrorKind::ProtocolVersion,
                format!(
                    "reactor {} speaks protocol version {} at most; this node needs {PROTOCOL_VERSION}",
                    hello.reactor_id, hello.protocol
                ),
            ));
        }
        if hello.reactor_id == self.ctx.reactor {
            return Err(Error::invalid(format!(
                "reactor {} connected to itself",
                hello.reactor_id
            )));
        }
        self.ctx
            .permissions
            .authenticate(&hello.reactor_id, hello.credentials.as_deref())?;
        self.admit(session, &hello.reactor_id)?;
        session.set_peer(hello.reactor_id.clone())?;
        // Only a peer whose credential is its own may take its `peer://` slot: under a rule
        // for many ids (`*`, `field-*`) anyone holding the token could claim this one.
        if self.ctx.permissions.proves(&hello.reactor_id) {
            let s = session.clone();
            self.ctx.inbound.send_modify(|m| {
                m.insert(hello.reactor_id, s);
            });
        } else if self
            .ctx
            .remotes_of_url(&format!("{}://{}", super::PEER_SCHEME, hello.reactor_id))
        {
            tracing::warn!(
                peer = %hello.reactor_id,
                "reactor {} said hello under a rule for many ids, so it cannot take the \
                 peer://{} remote's session: give it a permissions rule of its own with a token",
                hello.reactor_id, hello.reactor_id
            );
        }
        Ok(Response::Welcome(Welcome {
            reactor_id: self.ctx.reactor.clone(),
            session: format!("{:016x}", self.ctx.entropy.next_u64()),
            protocol: PROTOCOL_VERSION,
        }))
    }
}

#[async_trait]
impl SessionHandler for Responder {
    async fn handle(&self, session: &Session, request: Request) -> Result<Response> {
        let request = match request {
            Request::Hello(h) => return self.hello(session, h),
            other => other,
        };
        let peer = session.peer().cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Unauthenticated,
                "the session has not said hello; send a hello request first",
            )
        })?;
        match request {
            Request::Hello(_) => unreachable!("handled above"),
            Request::Register(r) => self.register(session, peer, r).await,
            Request::Pull(p) => self.pull(session, peer, p).await,
            Request::Ack(a) => self.ack(peer, a).await,
            Request::Push(p) => self.push(peer, p).await,
            Request::Directory(d) => self.directory(peer, d).await,
        }
    }

    fn notified(&self, session: &Session, notification: Notification) {
        // A poke on a session the peer opened wakes our `peer://` remotes that pull from it
        // (pokes on sessions we dialled go to the client handler).
        let Notification::Poke(_) = notification;
        if let Some(peer) = session.peer() {
            for r in self.ctx.remotes_of(peer) {
                if r.config.mode.pulls() {
                    r.wake_pull.notify_one();
                }
            }
        }
    }

    fn closed(&self, session: &Session) {
        {
            let mut table = self.sessions.lock();
            table.closed(session.id(), |s| !s.is_closed());
            telemetry::sessions(table.len());
        }
        if let Some(peer) = session.peer() {
            self.ctx.inbound.send_if_modified(|m| {
                if m.get(peer).is_some_and(|s| s.id() == session.id()) {
                    m.remove(peer);
                    true
                } else {
                    false
                }
            });
        }
    }
}
