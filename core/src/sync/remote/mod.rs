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

mod connector;
mod puller;
mod pusher;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::scheduler::Signal;
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

/// A machine's timer for its shell: one sleep, moved only when the machine's deadline
/// changes (making a timer per turn of the loop is a cost on the hot path).
struct MachineTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl MachineTimer {
    fn new() -> Self {
        MachineTimer {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Follows the machine's `poll_timeout`.
    fn set(&mut self, deadline: Option<std::time::Instant>) {
        let deadline = deadline.map(Instant::from_std);
        if deadline != self.armed {
            if let Some(at) = deadline {
                self.sleep.as_mut().reset(at);
            }
            self.armed = deadline;
        }
    }

    fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Waits for the deadline (poll only while armed) and disarms.
    async fn fired(&mut self) {
        (&mut self.sleep).await;
        self.armed = None;
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
    piggy: Mutex<VecDeque<Piggy>>,
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
            piggy: Mutex::new(VecDeque::new()),
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
        self.wake_push.notify_one();
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

    /// Waits until the live session is no longer the one with id `known` (it closed, another
    /// replaced it, or the remote stopped) and returns the live one, if any. The connector
    /// clears the link when a session closes (waiting on the session itself would wake tasks
    /// in a random order).
    async fn session_changed(&self, known: Option<u64>) -> Option<Session> {
        let live = |l: &LinkState| l.session.clone().filter(|s| !s.is_closed());
        let link = self
            .link
            .wait_until(|l| l.stopped || live(l).as_ref().map(Session::id) != known)
            .await;
        live(&link)
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
}

fn unexpected(what: &str, response: &Response) -> Error {
    Error::malformed(format!(
        "the peer answered a {what} request with a {} response",
        response.message_type().route()
    ))
}
