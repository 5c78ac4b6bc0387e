//! One remote: its connection, its pusher and its puller.
//!
//! - The connector dials, says `Hello`, publishes the live session and redials with backoff
//!   when it closes. Connection failures never count against a batch's retries.
//! - The pusher reads our feed after the outbox cursor in bounded batches, keeps a bounded
//!   window of them in flight, and moves the cursor only over batches the remote answered
//!   `Applied` (or that were dead-lettered, which keeps them). Events only wake it.
//! - The puller registers a listener once, then pulls after the inbox cursor whenever the
//!   scheduler says, when poked, or at once while the remote has more; the pulled operations
//!   and the new inbox cursor commit in one transaction.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use url::Url;

use super::cell::Cell;
use super::responder::Responder;
use super::responder::Verdicts;
use super::state::{DeadLetter, Direction, RefusalRecord, RemoteRecord, SyncState};
use super::window::OutboxWindow;
use super::{ConnectionState, Failure, Piggyback, RemoteConfig, RemoteStatus, SyncContext};
use crate::channel::{Channel, JobHandle, JobStatus, PullJobHandle};
use crate::error::{Error, ErrorKind, Result, WireError};
use crate::events::OperationsWritten;
use crate::filter::Filter;
use crate::protocol::{
    Ack, Directory, Hello, Notification, PROTOCOL_VERSION, Pull, Push, PushResult, Pushed, Refusal,
    Register, Request, Response, StrandUpdate,
};
use crate::queue::JobKind;
use crate::scheduler::{PullReport, Signal};
use crate::session::{Session, SessionHandler};
use crate::telemetry;
use crate::transport::parse_url;
use crate::types::{JobId, Operation, Ordinal, ReactorId, StrandHead};

/// Tasks that are aborted together when the group is dropped.
#[derive(Debug, Default)]
pub struct TaskGroup(Vec<JoinHandle<()>>);

impl TaskGroup {
    /// Spawns a task into the group.
    pub fn spawn(&mut self, fut: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(fut));
    }

    /// Moves another group's tasks into this one.
    pub fn extend(&mut self, mut other: TaskGroup) {
        self.0.append(&mut other.0);
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// How a pushed batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    Applied,
    DeadLettered,
    Stopped,
}

type Delivering = Pin<Box<dyn Future<Output = (JobHandle, Delivery, bool)> + Send>>;

/// How often a pusher looks at the feed without being woken (writes by other processes on a
/// shared store raise no local event).
const FEED_POLL: Duration = Duration::from_secs(1);

/// How long a batch offered for piggybacking waits for the puller before it is pushed alone.
const PIGGYBACK_WAIT: Duration = Duration::from_millis(50);

/// A push waiting to ride on the next pull.
struct Piggy {
    id: JobId,
    push: Push,
    reply: oneshot::Sender<Result<Pushed>>,
}

/// A piggybacked push taken by the puller; answers `Closed` if dropped unanswered.
struct TakenPiggy(Option<Piggy>);

impl TakenPiggy {
    fn answer(&mut self, result: Result<Pushed>) {
        if let Some(p) = self.0.take() {
            let _ = p.reply.send(result);
        }
    }
}

impl Drop for TakenPiggy {
    fn drop(&mut self) {
        self.answer(Err(Error::closed(
            "the pull carrying the push did not finish",
        )));
    }
}

/// The remote's session and stop flag.
#[derive(Clone, Debug, Default)]
struct LinkState {
    session: Option<Session>,
    stopped: bool,
}

/// The state one remote's tasks share.
pub(crate) struct RemoteShared {
    ctx: Arc<SyncContext>,
    responder: Arc<Responder>,
    pub(crate) config: RemoteConfig,
    url: Url,
    pub(crate) channel: Arc<Channel>,
    pub(crate) status: watch::Sender<RemoteStatus>,
    /// The live session and whether the remote was stopped, in one cell so that waiting
    /// tasks wake in a fixed order.
    link: Cell<LinkState>,
    pub(crate) wake_push: Notify,
    pub(crate) wake_pull: Notify,
    record: Mutex<RemoteRecord>,
    /// Dead letters to send again (bounded by the push window).
    requeue_tx: mpsc::Sender<DeadLetter>,
    /// Dead letters being sent again, so that one is never delivered twice at once.
    requeued: Mutex<std::collections::BTreeSet<String>>,
    draining: AtomicBool,
    inbox_cursor: AtomicU64,
    piggy: Mutex<VecDeque<Piggy>>,
    /// Refusals of pulled operations not yet reported to the remote (they ride on the next
    /// acknowledgement that goes through).
    unreported: Mutex<Vec<Refusal>>,
}

impl fmt::Debug for RemoteShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("name", &self.config.name)
            .field("url", &self.config.url)
            .finish()
    }
}

/// The handler of sessions we dialled: the peer's requests go to the responder, its pokes wake
/// our puller.
struct ClientHandler {
    responder: Arc<Responder>,
    remote: std::sync::Weak<RemoteShared>,
}

#[async_trait]
impl SessionHandler for ClientHandler {
    async fn handle(&self, session: &Session, request: Request) -> Result<Response> {
        // The peer may call us as soon as it welcomed us, before we read its welcome and
        // recorded who it is.
        if session.peer().is_none() {
            session.wait_peer(Duration::from_secs(10)).await;
        }
        self.responder.handle(session, request).await
    }

    fn notified(&self, _session: &Session, notification: Notification) {
        let Notification::Poke(_) = notification;
        if let Some(r) = self.remote.upgrade()
            && r.config.mode.pulls()
        {
            r.wake_pull.notify_one();
        }
    }
}

impl RemoteShared {
    pub(crate) async fn start(
        ctx: Arc<SyncContext>,
        responder: Arc<Responder>,
        record: RemoteRecord,
    ) -> Result<(Arc<Self>, TaskGroup)> {
        let config = record.config.clone();
        let url = parse_url(&config.url)?;
        let outbox = ctx.state.cursor(&config.name, Direction::Outbox).await?;
        let inbox = ctx.state.cursor(&config.name, Direction::Inbox).await?;
        let dead_letters = ctx
            .state
            .dead_letters()
            .await?
            .iter()
            .filter(|d| d.remote == config.name)
            .count();
        let status = RemoteStatus {
            name: config.name.to_string(),
            url: config.url.clone(),
            mode: config.mode,
            peer: record.peer.clone(),
            outbox_cursor: outbox,
            inbox_cursor: inbox,
            dead_letters,
            ..RemoteStatus::default()
        };
        let (requeue_tx, requeue_rx) = mpsc::channel(ctx.config.push_window.max(1));
        let shared = Arc::new(RemoteShared {
            ctx,
            responder,
            url,
            channel: Arc::new(Channel::new()),
            status: watch::channel(status).0,
            link: Cell::new(LinkState::default()),
            wake_push: Notify::new(),
            wake_pull: Notify::new(),
            record: Mutex::new(record),
            requeue_tx,
            requeued: Mutex::new(std::collections::BTreeSet::new()),
            draining: AtomicBool::new(false),
            inbox_cursor: AtomicU64::new(inbox.0),
            piggy: Mutex::new(VecDeque::new()),
            unreported: Mutex::new(Vec::new()),
            config,
        });
        {
            let s = shared.status_now();
            telemetry::remote_started(shared.name(), s.outbox_lag, s.inbox_lag);
        }
        let mut tasks = TaskGroup::default();
        tasks.spawn(shared.clone().connect_loop());
        if shared.config.mode.pushes() {
            let (cursor_tx, cursor_rx) = watch::channel(outbox);
            tasks.spawn(shared.clone().push_loop(requeue_rx, cursor_tx));
            tasks.spawn(shared.clone().save_outbox_cursor(cursor_rx));
        }
        if shared.config.mode.pulls() {
            tasks.spawn(shared.clone().pull_loop());
        }
        Ok((shared, tasks))
    }

    fn name(&self) -> &str {
        self.config.name.as_str()
    }

    pub(crate) fn peer(&self) -> Option<ReactorId> {
        self.record.lock().peer.clone()
    }

    pub(crate) fn record(&self) -> RemoteRecord {
        self.record.lock().clone()
    }

    /// Whether this remote pushes and is connected.
    pub(crate) fn pushes_live(&self) -> bool {
        self.config.mode.pushes()
            && self.config.filter.is_all()
            && self.link.get().session.is_some_and(|s| !s.is_closed())
    }

    pub(crate) fn on_written(&self, _written: &OperationsWritten) {
        if self.config.mode.pushes() {
            self.wake_push.notify_one();
            // The lag grows with every write while the remote is away: the gauge says so.
            self.report_lag();
        }
    }

    /// Sets the lag gauges from the status.
    fn report_lag(&self) {
        let s = self.status_now();
        telemetry::lag(self.name(), s.outbox_lag, s.inbox_lag);
    }

    pub(crate) fn status_now(&self) -> RemoteStatus {
        let mut s = self.status.borrow().clone();
        if self.config.mode.pushes() {
            s.outbox_lag = self.ctx.head().0.saturating_sub(s.outbox_cursor.0);
        }
        s.in_sync = s.connection == ConnectionState::Connected
            && s.dead_letters == 0
            && (!self.config.mode.pushes() || (s.outbox_lag == 0 && s.in_flight == 0))
            && (!self.config.mode.pulls() || (s.last_caught_up_pull > 0 && s.inbox_lag == 0));
        s
    }

    pub(crate) fn stop(&self) {
        let session = self.link.update(|l| {
            l.stopped = true;
            l.session.take()
        });
        if let Some(s) = session {
            s.close();
        }
        self.status
            .send_modify(|s| s.connection = ConnectionState::Stopped);
        telemetry::connected(self.name(), false);
    }

    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn requeue(&self, letter: DeadLetter) -> Result<()> {
        if !self.config.mode.pushes() {
            return Err(Error::invalid(format!(
                "remote {} does not push, so it cannot take a dead letter",
                self.name()
            )));
        }
        let mut requeued = self.requeued.lock();
        if requeued.contains(&letter.id) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "dead letter {} is already being sent to remote {} again",
                    letter.id,
                    self.name()
                ),
            ));
        }
        let id = letter.id.clone();
        match self.requeue_tx.try_send(letter) {
            Ok(()) => {
                requeued.insert(id);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::new(
                ErrorKind::Backpressure,
                format!(
                    "remote {} already has {} dead letters waiting to be sent again; try later",
                    self.name(),
                    self.ctx.config.push_window
                ),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Error::closed(format!("remote {} is stopped", self.name())))
            }
        }
    }

    pub(crate) async fn directory(&self, filter: Filter) -> Result<Vec<StrandHead>> {
        let timeout = self.ctx.config.request_timeout;
        let session = tokio::time::timeout(timeout, self.wait_session())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("remote {} is not connected", self.name()),
                )
            })?;
        let reply = session
            .request(&Request::Directory(Directory { filter }), timeout)
            .await?;
        match reply.response {
            Response::Strands(s) => Ok(s.heads),
            other => Err(unexpected("directory", &other)),
        }
    }

    /// The live session, waiting for one; `None` once stopped.
    async fn wait_session(&self) -> Option<Session> {
        loop {
            let state = self
                .link
                .wait_until(|l| l.stopped || l.session.as_ref().is_some_and(|s| !s.is_closed()))
                .await;
            if state.stopped {
                return None;
            }
            if let Some(s) = state.session.filter(|s| !s.is_closed()) {
                return Some(s);
            }
        }
    }

    fn stopped(&self) -> bool {
        self.link.get().stopped
    }

    async fn until_stopped(&self) {
        self.link.wait_until(|l| l.stopped).await;
    }

    /// Sleeps, returning `false` if stopped first.
    async fn sleep_or_stop(&self, wait: Duration) -> bool {
        if self.stopped() {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.until_stopped() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    fn succeeded(&self) {
        let now = self.ctx.now_ms();
        self.status.send_modify(|s| s.last_success_ms = Some(now));
    }

    fn failed(&self, e: &Error) {
        let now = self.ctx.now_ms();
        self.status.send_modify(|s| {
            s.last_failure = Some(Failure {
                at_ms: now,
                kind: e.kind().as_str().to_owned(),
                message: e.to_string(),
            })
        });
    }

    // ---- connection -------------------------------------------------------------------------

    async fn connect_loop(self: Arc<Self>) {
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
    async fn adopt(self: &Arc<Self>) -> Result<Session> {
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

    async fn dial(self: &Arc<Self>) -> Result<Session> {
        if self.url.scheme() == super::PEER_SCHEME {
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

    async fn learn_peer(&self, peer: ReactorId) -> Result<()> {
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

    // ---- push -------------------------------------------------------------------------------

    async fn save_outbox_cursor(self: Arc<Self>, mut rx: watch::Receiver<Ordinal>) {
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

    fn commit_outbox(&self, at: Ordinal, saver: &watch::Sender<Ordinal>) {
        self.status.send_modify(|s| s.outbox_cursor = at);
        saver.send_replace(at);
        self.report_lag();
    }

    async fn push_loop(
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
                let (page_ops, to, _) =
                    super::cut_to_bytes(page.ops, page.scanned_to, self.ctx.config.batch_bytes());
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
    async fn deliver(
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
    async fn keep_refusals(&self, handle: &JobHandle, refused: &[Refusal], requeued: bool) -> bool {
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

    async fn clear_refusals(&self, ops: &[Arc<Operation>], peer: &ReactorId) {
        if ops.is_empty() {
            return;
        }
        let ids: Vec<_> = ops.iter().map(|o| o.id).collect();
        if let Err(e) = self.ctx.state.delete_refusals(&ids, peer).await {
            tracing::warn!(remote = self.name(), error = %e, "could not delete refusals");
        }
        self.ctx.refusals_cleared(ops);
    }

    fn piggybacks_on(&self, session: &Session) -> bool {
        self.config.mode.pulls()
            && match self.ctx.config.piggyback {
                Piggyback::Never => false,
                Piggyback::NonDuplex => !session.info().duplex,
                Piggyback::Always => true,
            }
    }

    /// Sends one push, alone or riding on the next pull; returns the answer and the request's
    /// size (0 when it rode on a pull).
    async fn send_push(
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

    async fn forget_dead_letter(&self, handle: &JobHandle) {
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

    // ---- pull -------------------------------------------------------------------------------

    async fn pull_loop(self: Arc<Self>) {
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

    async fn ensure_listener(&self, session: &Session) -> Result<String> {
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

    async fn pull_once(&self, session: &Session, hold: Duration) -> Result<PullReport> {
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

fn unexpected(what: &str, response: &Response) -> Error {
    Error::malformed(format!(
        "the peer answered a {what} request with a {} response",
        response.message_type().route()
    ))
}
