//! One remote: one task drives one machine (`syncline_proto::sync::remote`) of three roles.
//!
//! - The connector dials, says `Hello`, publishes the live session and redials with backoff
//!   when it closes. Connection failures never count against a batch's retries.
//! - The pusher reads our feed after the outbox cursor in bounded batches, keeps a bounded
//!   window of them in flight, and moves the cursor only over batches the remote answered
//!   `Applied` (or that were dead-lettered, which keeps them). Events only wake it. On a link
//!   that piggybacks, a push first waits briefly for a pull to ride on.
//! - The puller registers a listener once, then pulls after the inbox cursor whenever the
//!   scheduler says, when poked, or at once while the remote has more; the pulled operations
//!   and the new inbox cursor commit in one transaction.
//!
//! `run.rs` is the driver's loop; `connector.rs`, `pusher.rs` and `puller.rs` perform each
//! role's effects.

mod connector;
mod puller;
mod pusher;
mod run;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use url::Url;

use super::responder::Responder;
use super::responder::Verdicts;
use super::state::{DeadLetter, Direction, RefusalRecord, RemoteRecord, SyncState};
use super::{ConnectionState, Failure, Piggyback, RemoteConfig, RemoteStatus, SyncContext};
use crate::channel::{Channel, JobHandle, JobStatus, PullJobHandle};
use crate::clock::HlcClock;
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

/// What the rest of the sync manager holds of one remote: its configuration, status, mailboxes
/// and the ways to wake or stop its driver. It points at nothing that holds it (the driver
/// task holds the context and the responder), so removing a remote or stopping the manager
/// frees it without breaking a cycle by hand.
pub(crate) struct RemoteHandle {
    pub(crate) config: RemoteConfig,
    url: Url,
    pub(crate) channel: Arc<Channel>,
    pub(crate) status: watch::Sender<RemoteStatus>,
    /// The live session, as the driver published it (for readers: the driver owns it).
    link: watch::Sender<Option<Session>>,
    stopped: AtomicBool,
    stop: Notify,
    pub(crate) wake_push: Notify,
    pub(crate) wake_pull: Notify,
    record: Mutex<RemoteRecord>,
    /// Dead letters to send again (bounded by the push window).
    requeue_tx: mpsc::Sender<DeadLetter>,
    /// Dead letters being sent again, so that one is never delivered twice at once.
    requeued: Mutex<BTreeSet<String>>,
    draining: AtomicBool,
    /// Our feed's head (the manager's), for the outbox lag.
    head: Arc<AtomicU64>,
    hlc: Arc<HlcClock>,
    request_timeout: Duration,
    push_window: usize,
}

impl fmt::Debug for RemoteHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("name", &self.config.name)
            .field("url", &self.config.url)
            .finish()
    }
}

/// What the remote's driver task holds: the remote, the context and the responder (for the
/// sessions it dials, which serve the peer's requests too).
struct Driver {
    remote: Arc<RemoteHandle>,
    ctx: Arc<SyncContext>,
    responder: Arc<Responder>,
}

impl Deref for Driver {
    type Target = RemoteHandle;
    fn deref(&self) -> &RemoteHandle {
        &self.remote
    }
}

/// The handler of sessions we dialled: the peer's requests go to the responder, its pokes wake
/// our puller.
struct ClientHandler {
    responder: Arc<Responder>,
    remote: std::sync::Weak<RemoteHandle>,
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

impl RemoteHandle {
    /// Starts a remote's driver (and the task that saves its outbox cursor).
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
            // Status is shown to operators and in logs: never a password.
            url: crate::transport::redacted_url(&config.url),
            mode: config.mode,
            peer: record.peer.clone(),
            outbox_cursor: outbox,
            inbox_cursor: inbox,
            dead_letters,
            ..RemoteStatus::default()
        };
        let (requeue_tx, requeue_rx) = mpsc::channel(ctx.config.push_window.max(1));
        let shared = Arc::new(RemoteHandle {
            url,
            channel: Arc::new(Channel::new()),
            status: watch::channel(status).0,
            link: watch::channel(None).0,
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
            wake_push: Notify::new(),
            wake_pull: Notify::new(),
            record: Mutex::new(record),
            requeue_tx,
            requeued: Mutex::new(BTreeSet::new()),
            draining: AtomicBool::new(false),
            head: ctx.head.clone(),
            hlc: ctx.hlc.clone(),
            request_timeout: ctx.config.request_timeout,
            push_window: ctx.config.push_window,
            config,
        });
        {
            let s = shared.status_now();
            telemetry::remote_started(shared.name(), s.outbox_lag, s.inbox_lag);
        }
        let driver = Arc::new(Driver {
            remote: shared.clone(),
            ctx,
            responder,
        });
        let mut tasks = TaskGroup::default();
        let (cursor_tx, cursor_rx) = watch::channel(outbox);
        if shared.config.mode.pushes() {
            tasks.spawn(driver.clone().save_outbox_cursor(cursor_rx));
        }
        tasks.spawn(driver.run(requeue_rx, cursor_tx));
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

    fn now_ms(&self) -> u64 {
        self.hlc.wall().now_millis()
    }

    /// The live session, if any.
    fn live(&self) -> Option<Session> {
        self.link.borrow().clone().filter(|s| !s.is_closed())
    }

    /// Whether this remote pushes and is connected.
    pub(crate) fn pushes_live(&self) -> bool {
        self.config.mode.pushes() && self.config.filter.is_all() && self.live().is_some()
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
            let head = self.head.load(Ordering::Acquire);
            s.outbox_lag = head.saturating_sub(s.outbox_cursor.0);
        }
        s.in_sync = s.connection == ConnectionState::Connected
            && s.dead_letters == 0
            && (!self.config.mode.pushes() || (s.outbox_lag == 0 && s.in_flight == 0))
            && (!self.config.mode.pulls() || (s.last_caught_up_pull > 0 && s.inbox_lag == 0));
        s
    }

    /// Stops the remote: its session closes now, its driver ends.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        if let Some(s) = self.link.send_replace(None) {
            s.close();
        }
        self.status
            .send_modify(|s| s.connection = ConnectionState::Stopped);
        telemetry::connected(self.name(), false);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
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
                    self.push_window
                ),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Error::closed(format!("remote {} is stopped", self.name())))
            }
        }
    }

    pub(crate) async fn directory(&self, filter: Filter) -> Result<Vec<StrandHead>> {
        let timeout = self.request_timeout;
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
        let mut rx = self.link.subscribe();
        loop {
            if self.is_stopped() {
                return None;
            }
            if let Some(s) = self.live() {
                return Some(s);
            }
            rx.changed().await.ok()?;
        }
    }

    fn succeeded(&self) {
        let now = self.now_ms();
        self.status.send_modify(|s| s.last_success_ms = Some(now));
    }

    fn failed(&self, e: &Error) {
        let now = self.now_ms();
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
