//! The responder: serves peers' requests (seed 004's pull responder and push receiver) and
//! pokes listening peers when new operations are written.

use std::sync::Arc;

use async_trait::async_trait;
use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::remote::TaskGroup;
use super::state::ListenerRecord;
use super::{ListenerStatus, SyncContext};
use crate::channel::JobStatus;
use crate::error::{Error, ErrorKind, Result, WireError};
use crate::events::Event;
use crate::protocol::{
    Ack, Acked, Directory, Hello, Notification, PROTOCOL_VERSION, Poke, Pull, Pulled, Push,
    PushResult, Pushed, Refusal, Register, Registered, Request, Response, StrandUpdate, Strands,
    Welcome,
};
use crate::queue::{JobKind, JobOutput};
use crate::scheduler::Signal;
use crate::session::{Session, SessionHandler};
use crate::telemetry;
use std::time::Duration;

use crate::types::{Operation, Ordinal, ReactorId};

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
    /// Listeners by id, the most recently used first.
    listeners: Mutex<LruCache<String, ListenerRecord>>,
    sessions: Mutex<Vec<Session>>,
    /// Set when the manager shut down: no session is admitted after that.
    closed: std::sync::atomic::AtomicBool,
    poke: Arc<PokeState>,
}

/// What a receiver decided about a received batch, operation by operation.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    /// Operations to apply.
    pub(crate) accepted: Vec<Arc<Operation>>,
    /// Operations refused, each with its reason.
    pub(crate) refused: Vec<Refusal>,
}

impl SyncContext {
    /// Checks received operations one by one: hash, size, clock plausibility and (for pushes)
    /// the peer's right to change the strand. An operation that fails is refused alone, with
    /// its reason; the others are accepted. Operations in private scopes are dropped: they are
    /// never synced, whichever side is misconfigured. Only the newest *accepted* timestamp is
    /// folded into the HLC, so a refused operation never moves our clock. A batch over the
    /// operation count limit is refused whole (the sender broke the protocol).
    pub(crate) fn verify_incoming(
        &self,
        ops: Vec<Operation>,
        peer: &ReactorId,
        check_write: bool,
    ) -> Result<Verdicts> {
        if ops.len() > self.config.max_batch_ops {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a batch of {} operations exceeds the limit of {}",
                    ops.len(),
                    self.config.max_batch_ops
                ),
            ));
        }
        let via = if check_write { "push" } else { "pull" };
        let mut newest = None;
        let mut verdicts = Verdicts {
            accepted: Vec::with_capacity(ops.len()),
            refused: Vec::new(),
        };
        for op in ops {
            if self.private_scopes.iter().any(|s| s == op.scope.as_str()) {
                tracing::debug!(op = %op.id, scope = %op.scope, "dropped an operation in a private scope");
                continue;
            }
            if let Err(e) = self.check_incoming(&op, peer, check_write) {
                tracing::info!(
                    peer = %peer, op = %op.id, strand = %op.strand(), via, error = %e,
                    "refused an operation"
                );
                telemetry::ops_refused(via, e.kind().as_str(), 1);
                verdicts.refused.push(Refusal {
                    id: op.id,
                    error: WireError::from(&e),
                    by: None,
                });
                continue;
            }
            if newest.is_none_or(|t| op.action.timestamp > t) {
                newest = Some(op.action.timestamp);
            }
            verdicts.accepted.push(Arc::new(op));
        }
        if let Some(t) = newest {
            self.hlc.observe(t);
        }
        Ok(verdicts)
    }

    fn check_incoming(&self, op: &Operation, peer: &ReactorId, check_write: bool) -> Result<()> {
        op.verify()?;
        let size = op.action.input.as_bytes().len();
        if size > self.config.max_action_bytes {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "operation {} has an input of {size} bytes; the limit (sync.max_action_bytes) \
                     is {}",
                    op.id, self.config.max_action_bytes
                ),
            ));
        }
        self.hlc.check(op.action.timestamp)?;
        if check_write && !self.permissions.can_write(peer, op) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "reactor {peer} may not change {}/{}@{}",
                    op.document_id, op.scope, op.branch
                ),
            ));
        }
        Ok(())
    }
}

impl Responder {
    pub(crate) async fn start(ctx: Arc<SyncContext>) -> Result<(Arc<Self>, TaskGroup)> {
        let mut stored = ctx.state.listeners().await?;
        // The least recently used first, so the most recently used ends up at the front.
        stored.sort_by_key(|l| l.last_used_ms.max(l.created_ms));
        let mut listeners = LruCache::unbounded();
        for l in stored {
            listeners.put(l.id.clone(), l);
        }
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
        let responder = Arc::new(Responder {
            ctx,
            listeners: Mutex::new(listeners),
            sessions: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            poke,
        });
        let mut tasks = TaskGroup::default();
        tasks.spawn(responder.clone().poke_loop());
        tasks.spawn(responder.clone().expiry_loop());
        Ok((responder, tasks))
    }

    pub(crate) fn listener_status(&self, head: Ordinal) -> Vec<ListenerStatus> {
        let mut out: Vec<_> = self
            .listeners
            .lock()
            .iter()
            .map(|(_, l)| ListenerStatus {
                id: l.id.clone(),
                peer: l.peer.clone(),
                cursor: l.cursor,
                lag: head.0.saturating_sub(l.cursor.0),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub(crate) fn close_sessions(&self) {
        let sessions = {
            let mut list = self.sessions.lock();
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            std::mem::take(&mut *list)
        };
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
                let mut s = self.sessions.lock();
                s.retain(|x| !x.is_closed());
                telemetry::sessions(s.len());
                s.clone()
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

    /// Counts a session that said hello against the session limits: beyond
    /// `max_sessions_per_peer` the peer's oldest session is closed; beyond `max_sessions` the
    /// hello is refused.
    fn admit(&self, session: &Session, peer: &ReactorId) -> Result<()> {
        let config = &self.ctx.config;
        let evicted = {
            let mut sessions = self.sessions.lock();
            // Checked under the lock `close_sessions` takes, so no session slips in after it.
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                // A hello that reaches a reactor that stopped (its listener not gone yet):
                // nobody would answer the session, so it ends and the peer dials again.
                drop(sessions);
                session.close();
                return Err(Error::closed("the reactor is shutting down"));
            }
            sessions.retain(|s| !s.is_closed());
            if sessions.iter().any(|s| s.id() == session.id()) {
                return Ok(());
            }
            let of_peer = sessions.iter().filter(|s| s.peer() == Some(peer)).count();
            let evicted = if of_peer >= config.max_sessions_per_peer {
                // The list keeps hello order: the first of the peer's is its oldest.
                sessions.iter().find(|s| s.peer() == Some(peer)).cloned()
            } else {
                None
            };
            if evicted.is_none() && sessions.len() >= config.max_sessions {
                telemetry::session_refused("max_sessions");
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "this node serves its limit of {} sessions (sync.max_sessions); try \
                         again later",
                        config.max_sessions
                    ),
                ));
            }
            if let Some(old) = &evicted {
                sessions.retain(|s| s.id() != old.id());
            }
            sessions.push(session.clone());
            telemetry::sessions(sessions.len());
            evicted
        };
        if let Some(old) = evicted {
            tracing::info!(
                peer = %peer, transport = old.info().transport,
                "reactor {peer} opened more than {} sessions (sync.max_sessions_per_peer); \
                 closing its oldest", config.max_sessions_per_peer
            );
            telemetry::session_refused("max_sessions_per_peer");
            old.close();
        }
        Ok(())
    }

    fn remember(&self, session: &Session) {
        let mut s = self.sessions.lock();
        if !s.iter().any(|x| x.id() == session.id()) {
            s.push(session.clone());
        }
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
        let s = session.clone();
        self.ctx.inbound.send_modify(|m| {
            m.insert(hello.reactor_id, s);
        });
        Ok(Response::Welcome(Welcome {
            reactor_id: self.ctx.reactor.clone(),
            session: format!("{:016x}", self.ctx.entropy.next_u64()),
            protocol: PROTOCOL_VERSION,
        }))
    }

    /// The listener `id` of `peer`, marked as used now.
    fn listener(&self, id: &str, peer: &ReactorId) -> Result<ListenerRecord> {
        let now = self.ctx.now_ms();
        let l = {
            let mut map = self.listeners.lock();
            let l = map.get_mut(id).ok_or_else(|| {
                Error::not_found(format!("unknown listener {id:?}; register again"))
            })?;
            if &l.peer == peer {
                l.last_used_ms = l.last_used_ms.max(now);
            }
            l.clone()
        };
        if &l.peer != peer {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("listener {id:?} belongs to reactor {}, not {peer}", l.peer),
            ));
        }
        Ok(l)
    }

    fn attach_listener(&self, session: &Session, id: &str) {
        self.remember(session);
        let mut st = session.responder_state();
        if !st.listeners.iter().any(|l| l == id) {
            st.listeners.push(id.to_owned());
        }
    }

    /// Registers a listener. A peer registering a filter it already has a listener for gets
    /// that listener back (its cursor set to `since`), so re-registrations never pile up;
    /// beyond `max_listeners_per_peer` (or `max_listeners` in all) the least recently used
    /// listener is forgotten.
    async fn register(&self, session: &Session, peer: ReactorId, r: Register) -> Result<Response> {
        r.filter.validate()?;
        let now = self.ctx.now_ms();
        let (record, forget) = {
            let mut map = self.listeners.lock();
            let same = map
                .iter()
                .find(|(_, l)| l.peer == peer && l.filter == r.filter)
                .map(|(id, _)| id.clone());
            match same.and_then(|id| map.get_mut(&id)) {
                Some(l) => {
                    l.cursor = r.since;
                    l.last_used_ms = now;
                    (l.clone(), Vec::new())
                }
                None => {
                    let record = ListenerRecord {
                        id: self.ctx.entropy.job_id().to_string(),
                        peer,
                        filter: r.filter,
                        cursor: r.since,
                        created_ms: now,
                        last_used_ms: now,
                    };
                    let forget = make_room(
                        &mut map,
                        &record.peer,
                        self.ctx.config.max_listeners_per_peer,
                        self.ctx.config.max_listeners,
                    );
                    map.put(record.id.clone(), record.clone());
                    telemetry::listeners(map.len());
                    (record, forget)
                }
            }
        };
        if !forget.is_empty() {
            tracing::info!(
                peer = %record.peer, forgotten = forget.len(),
                "listener limit reached (sync.max_listeners_per_peer / sync.max_listeners); \
                 forgot the least recently used"
            );
        }
        self.ctx.state.put_listener(&record).await?;
        self.ctx.state.delete_listeners(&forget).await?;
        self.attach_listener(session, &record.id);
        Ok(Response::Registered(Registered {
            listener_id: record.id,
        }))
    }

    /// Forgets listeners unused for `sync.listener_ttl`.
    pub(crate) async fn expire_listeners(&self) -> Result<usize> {
        let ttl = u64::try_from(self.ctx.config.listener_ttl.as_millis()).unwrap_or(u64::MAX);
        let now = self.ctx.now_ms();
        let expired: Vec<String> = {
            let mut map = self.listeners.lock();
            let expired: Vec<String> = map
                .iter()
                .filter(|(_, l)| now.saturating_sub(l.last_used_ms.max(l.created_ms)) > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                map.pop(id);
            }
            telemetry::listeners(map.len());
            expired
        };
        if !expired.is_empty() {
            tracing::info!(
                expired = expired.len(),
                "forgot listeners unused for {} s (sync.listener_ttl)",
                ttl / 1000
            );
        }
        self.ctx.state.delete_listeners(&expired).await?;
        Ok(expired.len())
    }

    async fn expiry_loop(self: Arc<Self>) {
        let every = (self.ctx.config.listener_ttl / 8)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            if let Err(e) = self.expire_listeners().await {
                tracing::warn!(error = %e, "forgetting expired listeners failed");
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn pull(&self, session: &Session, peer: ReactorId, p: Pull) -> Result<Response> {
        let push_result = match p.push {
            Some(push) => Some(match self.push(peer.clone(), push).await {
                Ok(Response::Pushed(pushed)) => PushResult::Ok(pushed),
                Ok(_) => PushResult::Err(WireError::from(&Error::internal("push gave no result"))),
                Err(e) => PushResult::Err(WireError::from(&e)),
            }),
            None => None,
        };
        let listener = self.listener(&p.listener_id, &peer)?;
        self.attach_listener(session, &listener.id);
        // Anything written after this point pokes the peer again.
        session.responder_state().poke_pending = false;
        let limit = (p.limit as usize).clamp(1, self.ctx.config.max_batch_ops);
        let filter = self.ctx.read_filter(&listener.filter, Some(peer.clone()));
        // What our pusher already delivered to this peer (durably: the outbox cursor moves only
        // on `pushed`) need not travel again.
        let delivered = self
            .ctx
            .remotes_of(&peer)
            .iter()
            .filter(|r| r.config.mode.pushes() && r.config.filter.is_all())
            .map(|r| r.status_now().outbox_cursor)
            .max()
            .unwrap_or(Ordinal::ZERO);
        let from = p.cursor.max(delivered);
        let wait = Duration::from_millis(u64::from(p.wait_ms)).min(self.ctx.config.max_pull_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut page;
        let mut visible: Vec<Arc<Operation>>;
        let mut start = from;
        let mut covered;
        let mut cut;
        loop {
            // Register for new writes before reading, so none is missed in between.
            let written = self.ctx.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            page = self.ctx.store.read_since(start, limit, &filter).await?;
            let readable: Vec<_> = std::mem::take(&mut page.ops)
                .into_iter()
                .filter(|s| self.ctx.permissions.can_read(&peer, &s.op))
                .collect();
            // Cut the answer to fit the frame limit in bytes as well as in count.
            let kept;
            (kept, covered, cut) =
                super::cut_to_bytes(readable, page.scanned_to, self.ctx.config.batch_bytes());
            visible = kept.into_iter().map(|s| s.op).collect();
            let more = cut || page.scanned_to < page.head;
            if !visible.is_empty() || more || wait.is_zero() {
                break;
            }
            // A long poll: nothing for the peer yet; wait for a write or the deadline.
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                break;
            }
            start = page.scanned_to;
        }
        Ok(Response::Pulled(Pulled {
            strands: StrandUpdate::group(&visible),
            cursor: covered.max(from),
            head: page.head,
            has_more: cut || covered < page.head,
            push_result,
            refused: self.ctx.take_relayed(&peer),
        }))
    }

    async fn ack(&self, peer: ReactorId, a: Ack) -> Result<Response> {
        let mut listener = self.listener(&a.listener_id, &peer)?;
        self.ctx.record_reported(&peer, &a.refused).await?;
        if a.cursor > listener.cursor {
            listener.cursor = a.cursor;
            // Only a listener still kept is stored again (never one just forgotten).
            let kept = {
                let mut map = self.listeners.lock();
                map.get_mut(&a.listener_id)
                    .map(|l| l.cursor = l.cursor.max(a.cursor))
                    .is_some()
            };
            if kept {
                self.ctx.state.put_listener(&listener).await?;
            }
        }
        Ok(Response::Acked(Acked {}))
    }

    async fn push(&self, peer: ReactorId, p: Push) -> Result<Response> {
        let ops = StrandUpdate::into_operations(p.strands);
        let n = ops.len();
        let Verdicts {
            accepted: ops,
            mut refused,
        } = self.ctx.verify_incoming(ops, &peer, true)?;
        for r in self.ctx.remotes_of(&peer) {
            self.ctx.scheduler.observe(
                Some(r.config.name.as_str()),
                &Signal::PushReceived { ops: n },
            );
        }
        let summary = if ops.is_empty() {
            Default::default()
        } else {
            let ticket = self
                .ctx
                .queue
                .enqueue(
                    p.job_id,
                    JobKind::Apply {
                        ops,
                        source: peer.clone(),
                        meta: Vec::new(),
                    },
                )
                .await?;
            match ticket.wait().await? {
                JobOutput::Applied(s) => s,
                JobOutput::Submitted(_) => {
                    return Err(Error::internal("an apply job returned a submission result"));
                }
            }
        };
        Ok(Response::Pushed(Pushed {
            job_id: p.job_id,
            status: JobStatus::Applied,
            applied: summary.new as u32,
            duplicates: summary.duplicates as u32,
            head: summary.head,
            refused: {
                // Refusals others reported of operations this peer sent us ride along.
                refused.extend(self.ctx.take_relayed(&peer));
                refused
            },
        }))
    }

    async fn directory(&self, peer: ReactorId, d: Directory) -> Result<Response> {
        d.filter.validate()?;
        let heads = self
            .ctx
            .store
            .heads()
            .await?
            .into_iter()
            .filter(|h| {
                d.filter.matches_head(h)
                    && !self
                        .ctx
                        .private_scopes
                        .iter()
                        .any(|s| s == h.strand.scope.as_str())
                    && self.ctx.permissions.can_discover(&peer, h)
            })
            .collect();
        Ok(Response::Strands(Strands { heads }))
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
            let mut sessions = self.sessions.lock();
            sessions.retain(|s| s.id() != session.id() && !s.is_closed());
            telemetry::sessions(sessions.len());
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

/// Forgets listeners so that one more of `peer` fits: the peer's least recently used beyond
/// `per_peer - 1`, then the least recently used of all beyond `total - 1`. Returns their ids.
fn make_room(
    map: &mut LruCache<String, ListenerRecord>,
    peer: &ReactorId,
    per_peer: usize,
    total: usize,
) -> Vec<String> {
    let mut forget = Vec::new();
    let of_peer = map.iter().filter(|(_, l)| &l.peer == peer).count();
    // `iter` runs from the most recently used; its reverse from the least.
    let oldest: Vec<String> = map
        .iter()
        .rev()
        .filter(|(_, l)| &l.peer == peer)
        .take((of_peer + 1).saturating_sub(per_peer))
        .map(|(id, _)| id.clone())
        .collect();
    for id in oldest {
        map.pop(&id);
        forget.push(id);
    }
    while map.len() + 1 > total {
        match map.pop_lru() {
            Some((id, _)) => forget.push(id),
            None => break,
        }
    }
    forget
}
