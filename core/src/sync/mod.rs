//! The sync manager: remotes, their channels, and the responder that serves peers.
//!
//! The sync manager never reaches into the executor or the store's internals: it learns about
//! new operations from the event bus, reads what to send from the store by cursor, and hands
//! what it receives to the queue like any other job. Its own state (remotes, cursors,
//! listeners, dead letters) lives in the store's sync storage.

mod config;
mod remote;
mod responder;
pub mod state;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::Permissions;
use crate::channel::Channel;
use crate::clock::HlcClock;
use crate::entropy::Entropy;
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, EventBus};
use crate::exclusions::Exclusions;
use crate::filter::{Filter, ReadFilter};
use crate::protocol::Refusal;
use crate::queue::Queue;
use crate::retry::RetryPolicy;
use crate::scheduler::Scheduler;
use crate::session::{Session, SessionHandler, SessionLimits};
use crate::store::DynStore;
use crate::telemetry;
use crate::transport::{Link, TransportRegistry, parse_url};
use crate::types::{Ordinal, ReactorId, RemoteName, StrandHead, StrandId};

pub use config::*;
use remote::RemoteHandle;
pub use remote::TaskGroup;
use responder::Responder;
pub use state::{DeadLetter, Direction, ListenerRecord, RefusalRecord, RemoteRecord, SyncState};
pub use status::*;
pub use syncline_proto::sync::window;

/// The URL scheme of remotes reached over a connection the peer opened to us:
/// `peer://<reactor id>`. Both reactors then push (and pull) on that one connection, which is how
/// a reactor that cannot dial its peer (behind NAT, a browser) still receives pushes.
pub const PEER_SCHEME: &str = "peer";

/// What the sync tasks share.
#[derive(Debug)]
pub(crate) struct SyncContext {
    pub(crate) reactor: ReactorId,
    pub(crate) store: DynStore,
    pub(crate) state: SyncState,
    pub(crate) queue: Arc<Queue>,
    pub(crate) bus: Arc<EventBus>,
    pub(crate) hlc: Arc<HlcClock>,
    pub(crate) entropy: Arc<Entropy>,
    pub(crate) scheduler: Arc<dyn Scheduler>,
    pub(crate) permissions: Arc<dyn Permissions>,
    pub(crate) transports: TransportRegistry,
    pub(crate) config: SyncConfig,
    pub(crate) private_scopes: Arc<[String]>,
    pub(crate) head: Arc<AtomicU64>,
    pub(crate) remotes: RwLock<BTreeMap<RemoteName, Arc<RemoteHandle>>>,
    /// Woken whenever operations are written (long polls wait on it).
    pub(crate) written: tokio::sync::Notify,
    /// Welcomed sessions peers opened to us, by peer (for `peer://` remotes).
    pub(crate) inbound: watch::Sender<BTreeMap<ReactorId, Session>>,
    /// Operations an authority refused, left out of the document view.
    pub(crate) exclusions: Arc<Exclusions>,
    /// Refusals to pass on towards operations' origins, by the peer each operation was
    /// received from (they ride on the next answer or acknowledgement to that peer).
    pub(crate) relay: Mutex<BTreeMap<ReactorId, Vec<Refusal>>>,
    /// The next session id; per manager, so that a simulation's ids do not depend on what
    /// else ran in the process.
    pub(crate) next_session: AtomicU64,
}

/// Most refusals waiting to be passed on to one peer; more are recorded here but not passed on.
const MAX_RELAYED_PER_PEER: usize = 10_000;

impl SyncContext {
    /// A fresh session id.
    pub(crate) fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.hlc.wall().now_millis()
    }

    pub(crate) fn head(&self) -> Ordinal {
        Ordinal(self.head.load(Ordering::Acquire))
    }

    pub(crate) fn read_filter(&self, filter: &Filter, peer: Option<ReactorId>) -> ReadFilter {
        ReadFilter::for_peer(filter.clone(), peer, self.private_scopes.clone())
    }

    /// Whether the refusal came from (or through) a remote that is the authority for the
    /// refused operation's document.
    fn is_authority(&self, records: &[RemoteRecord], r: &RefusalRecord) -> bool {
        records.iter().any(|rec| {
            (rec.peer.as_ref() == Some(&r.by) || r.remote.as_ref() == Some(&rec.config.name))
                && rec
                    .config
                    .is_authority_for(&r.strand, r.document_type.as_str())
        })
    }

    /// Records refusals `from` reported of operations we hold (its own verdicts, or, where a
    /// refusal names `by`, verdicts it passes on), and passes them on in turn.
    pub(crate) async fn record_reported(
        &self,
        from: &ReactorId,
        refused: &[Refusal],
    ) -> Result<()> {
        if refused.is_empty() {
            return Ok(());
        }
        let remote = self.remotes_of(from).first().map(|r| r.config.name.clone());
        let now = self.now_ms();
        let mut records = Vec::with_capacity(refused.len());
        for r in refused {
            let Some(stored) = self.store.get(&r.id).await? else {
                continue;
            };
            let by = r.by.clone().unwrap_or_else(|| from.clone());
            tracing::warn!(
                by = %by, via = %from, op = %r.id, strand = %stored.op.strand(),
                error = %r.error.message, "a peer refused an operation"
            );
            crate::telemetry::ops_refused_by_peer(&r.error.kind, 1);
            records.push(RefusalRecord::new(
                &stored.op,
                by,
                remote.clone(),
                r.error.clone(),
                now,
            ));
        }
        self.state.put_refusals(&records, None).await?;
        self.refusals_recorded(&records);
        self.relay_refusals(&records).await;
        Ok(())
    }

    /// Queues recorded refusals for the reactors we received the refused operations from, so
    /// that each travels on towards its operation's origin (where the operation was written
    /// here, it has arrived).
    pub(crate) async fn relay_refusals(&self, records: &[RefusalRecord]) {
        for r in records {
            let source = match self.store.get(&r.op).await {
                Ok(Some(s)) => s.source,
                _ => None,
            };
            let Some(source) = source.filter(|s| *s != r.by) else {
                continue;
            };
            let mut relay = self.relay.lock();
            let queue = relay.entry(source).or_default();
            if queue.len() >= MAX_RELAYED_PER_PEER {
                tracing::warn!(op = %r.op, "too many refusals wait to be passed on; this one is only recorded here");
                continue;
            }
            queue.push(Refusal {
                id: r.op,
                error: r.error.clone(),
                by: Some(r.by.clone()),
            });
        }
    }

    /// Takes the refusals waiting to be passed on to `peer`.
    pub(crate) fn take_relayed(&self, peer: &ReactorId) -> Vec<Refusal> {
        self.relay.lock().remove(peer).unwrap_or_default()
    }

    /// Takes refusals that are now durably recorded: those by an authority leave the document
    /// view.
    pub(crate) fn refusals_recorded(&self, refusals: &[RefusalRecord]) {
        let records: Vec<RemoteRecord> = self.remotes.read().values().map(|r| r.record()).collect();
        let changed: Vec<_> = refusals
            .iter()
            .filter(|r| self.is_authority(&records, r) && self.exclusions.insert(r.op))
            .map(|r| (r.strand.clone(), r.key))
            .collect();
        if !changed.is_empty() {
            tracing::info!(
                operations = changed.len(),
                "an authority refused operations; the document view leaves them out"
            );
            self.bus.emit(&Event::ViewChanged(Arc::new(changed)));
        }
    }

    /// Refused operations that the peer applied after all (a requeue): back into the view.
    pub(crate) fn refusals_cleared(&self, ops: &[Arc<crate::types::Operation>]) {
        let changed: Vec<_> = ops
            .iter()
            .filter(|op| self.exclusions.remove(&op.id))
            .map(|op| (op.strand(), op.sort_key()))
            .collect();
        if !changed.is_empty() {
            self.bus.emit(&Event::ViewChanged(Arc::new(changed)));
        }
    }

    /// Whether a remote has the URL `url`.
    pub(crate) fn remotes_of_url(&self, url: &str) -> bool {
        self.remotes.read().values().any(|r| r.config.url == url)
    }

    /// The names of remotes whose peer is `peer`.
    pub(crate) fn remotes_of(&self, peer: &ReactorId) -> Vec<Arc<RemoteHandle>> {
        self.remotes
            .read()
            .values()
            .filter(|r| r.peer().as_ref() == Some(peer))
            .cloned()
            .collect()
    }
}

pub(crate) use syncline_proto::sync::cut_to_bytes;

/// Everything needed to build a sync manager.
#[derive(Debug)]
pub struct SyncParts {
    /// This reactor.
    pub reactor: ReactorId,
    /// The store.
    pub store: DynStore,
    /// The job queue received batches go to.
    pub queue: Arc<Queue>,
    /// The event bus.
    pub bus: Arc<EventBus>,
    /// The HLC (observed on every receive).
    pub hlc: Arc<HlcClock>,
    /// Randomness.
    pub entropy: Arc<Entropy>,
    /// Pull timing.
    pub scheduler: Arc<dyn Scheduler>,
    /// Peer permissions.
    pub permissions: Arc<dyn Permissions>,
    /// Transports by scheme.
    pub transports: TransportRegistry,
    /// Tuning.
    pub config: SyncConfig,
    /// Operations the document view leaves out (refused by an authority).
    pub exclusions: Arc<Exclusions>,
}

/// Owns the remotes and serves peers.
#[derive(Debug)]
pub struct SyncManager {
    ctx: Arc<SyncContext>,
    responder: Arc<Responder>,
    tasks: Mutex<BTreeMap<RemoteName, TaskGroup>>,
    _responder_tasks: TaskGroup,
}

impl SyncManager {
    /// Builds the sync manager and starts the remotes stored in the sync storage.
    pub async fn start(parts: SyncParts) -> Result<Self> {
        parts.config.validate()?;
        let mut private: Vec<String> = vec![crate::types::LOCAL_SCOPE.to_owned()];
        private.extend(parts.config.private_scopes.iter().cloned());
        let head = parts.store.head().await?;
        let ctx = Arc::new(SyncContext {
            reactor: parts.reactor,
            state: SyncState::new(parts.store.clone()),
            store: parts.store,
            queue: parts.queue,
            bus: parts.bus,
            hlc: parts.hlc,
            entropy: parts.entropy,
            scheduler: parts.scheduler,
            permissions: parts.permissions,
            transports: parts.transports,
            config: parts.config,
            private_scopes: Arc::from(private),
            head: Arc::new(AtomicU64::new(head.0)),
            remotes: RwLock::new(BTreeMap::new()),
            inbound: watch::channel(BTreeMap::new()).0,
            written: tokio::sync::Notify::new(),
            exclusions: parts.exclusions,
            relay: Mutex::new(BTreeMap::new()),
            next_session: AtomicU64::new(1),
        });
        // Refusals by authorities recorded before this start keep their operations out of the
        // view.
        {
            let records = ctx.state.remotes().await?;
            for r in ctx.state.refusals().await? {
                if ctx.is_authority(&records, &r) {
                    ctx.exclusions.insert(r.op);
                }
            }
        }
        let (responder, responder_tasks) = Responder::start(ctx.clone()).await?;
        let weak = Arc::downgrade(&ctx);
        ctx.bus.on(move |event| {
            let Some(ctx) = weak.upgrade() else {
                return;
            };
            if let Event::Committed {
                elapsed,
                queue_depth,
                queue_capacity,
                ..
            } = event
            {
                ctx.scheduler.observe(
                    None,
                    &crate::scheduler::Signal::Load {
                        queue_depth: *queue_depth,
                        queue_capacity: *queue_capacity,
                        executor_lag: *elapsed,
                    },
                );
                return;
            }
            let Event::OperationsWritten(w) = event else {
                return;
            };
            if let Some(last) = w.ops.last() {
                ctx.head.fetch_max(last.ordinal.0, Ordering::AcqRel);
            }
            ctx.written.notify_waiters();
            for remote in ctx.remotes.read().values() {
                remote.on_written(w);
            }
        });
        let manager = SyncManager {
            ctx,
            responder,
            tasks: Mutex::new(BTreeMap::new()),
            _responder_tasks: responder_tasks,
        };
        for record in manager.ctx.state.remotes().await? {
            manager.launch(record).await?;
        }
        Ok(manager)
    }

    async fn launch(&self, record: RemoteRecord) -> Result<()> {
        let name = record.config.name.clone();
        let (shared, tasks) =
            RemoteHandle::start(self.ctx.clone(), self.responder.clone(), record).await?;
        self.ctx.remotes.write().insert(name.clone(), shared);
        self.tasks.lock().insert(name, tasks);
        Ok(())
    }

    /// Adds a remote, stores it, and starts syncing with it (backfilling our history if it
    /// pushes).
    pub async fn add_remote(&self, config: RemoteConfig) -> Result<()> {
        config.validate()?;
        let url = parse_url(&config.url)?;
        if url.scheme() != PEER_SCHEME {
            self.ctx.transports.for_url(&url)?;
        }
        if self.ctx.remotes.read().contains_key(&config.name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("a remote named {} already exists", config.name),
            ));
        }
        let record = RemoteRecord {
            config,
            listener_id: None,
            peer: None,
        };
        self.ctx.state.put_remote(&record).await?;
        self.launch(record).await
    }

    /// Stops a remote and deletes it with its cursors.
    pub async fn remove_remote(&self, name: &str) -> Result<()> {
        let name = RemoteName::new(name)?;
        let shared = self
            .ctx
            .remotes
            .write()
            .remove(&name)
            .ok_or_else(|| Error::not_found(format!("no remote named {name}")))?;
        shared.stop();
        self.tasks.lock().remove(&name);
        self.ctx.scheduler.forget(name.as_str());
        telemetry::remote_removed(name.as_str());
        self.ctx.state.delete_remote(&name).await
    }

    /// The configured remotes.
    pub fn remotes(&self) -> Vec<RemoteConfig> {
        self.ctx
            .remotes
            .read()
            .values()
            .map(|r| r.config.clone())
            .collect()
    }

    fn remote(&self, name: &str) -> Result<Arc<RemoteHandle>> {
        let name = RemoteName::new(name)?;
        self.ctx
            .remotes
            .read()
            .get(&name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no remote named {name}")))
    }

    /// A remote's channel (inbox and outbox mailboxes).
    pub fn channel(&self, name: &str) -> Result<Arc<Channel>> {
        Ok(self.remote(name)?.channel.clone())
    }

    /// A remote's status.
    pub fn remote_status(&self, name: &str) -> Result<RemoteStatus> {
        Ok(self.remote(name)?.status_now())
    }

    /// A receiver of a remote's status, updated as it changes.
    pub fn watch_remote(&self, name: &str) -> Result<watch::Receiver<RemoteStatus>> {
        Ok(self.remote(name)?.status.subscribe())
    }

    /// The status of everything.
    pub fn status(&self) -> SyncStatus {
        let head = self.ctx.head();
        SyncStatus {
            reactor_id: self.ctx.reactor.clone(),
            head,
            remotes: self
                .ctx
                .remotes
                .read()
                .values()
                .map(|r| r.status_now())
                .collect(),
            listeners: self.responder.listener_status(head),
        }
    }

    /// Waits until the remote is in sync: it applied our feed as of now (push modes), and a
    /// pull started after now found nothing more (pull modes).
    pub async fn wait_for_sync(&self, name: &str, timeout: Duration) -> Result<()> {
        let remote = self.remote(name)?;
        let target = self.ctx.store.head().await?;
        let mut rx = remote.status.subscribe();
        let pulls_at_start = rx.borrow().pulls;
        remote.wake_push.notify_one();
        remote.wake_pull.notify_one();
        let mode = remote.config.mode;
        let done = tokio::time::timeout(timeout, async {
            // The borrow `wait_for` returns holds the status lock: it is dropped here, as
            // reading the status again under it deadlocks against a waiting writer.
            rx.wait_for(|s| {
                (!mode.pushes() || s.outbox_cursor >= target)
                    && (!mode.pulls() || s.last_caught_up_pull > pulls_at_start)
            })
            .await
            .map(|_| ())
        })
        .await;
        match done {
            Ok(Ok(())) => {
                let s = remote.status_now();
                if s.dead_letters == 0 {
                    return Ok(());
                }
                // Delivered, but not everything was taken: say so, with the first reason.
                let letters = self.ctx.state.dead_letters().await?;
                let first = letters.iter().find(|d| d.remote == remote.config.name);
                let kind = first
                    .map(|d| Error::from(d.error.clone()).kind())
                    .unwrap_or(ErrorKind::Internal);
                Err(Error::new(
                    kind,
                    format!(
                        "remote {name} is not in sync: it refused operations kept in {} dead \
                         letter(s){}",
                        s.dead_letters,
                        first
                            .map(|d| format!("; first: {}", d.error.message))
                            .unwrap_or_default()
                    ),
                ))
            }
            Ok(Err(_)) => Err(Error::closed(format!("remote {name} was stopped"))),
            Err(_) => {
                let s = remote.status_now();
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "remote {name} is not in sync after {} ms: connection {:?}, outbox \
                         cursor {} of {target}, {} pulls caught up of {}{}",
                        timeout.as_millis(),
                        s.connection,
                        s.outbox_cursor,
                        s.last_caught_up_pull,
                        s.pulls,
                        s.last_failure
                            .map(|f| format!(", last failure: {}", f.message))
                            .unwrap_or_default()
                    ),
                ))
            }
        }
    }

    /// All dead letters.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.ctx.state.dead_letters().await
    }

    /// Every recorded refusal of our operations by a peer.
    pub async fn refusals(&self) -> Result<Vec<RefusalRecord>> {
        self.ctx.state.refusals().await
    }

    /// Sends a dead letter's batch again; it is deleted once the remote applied it.
    pub async fn requeue_dead_letter(&self, id: &str) -> Result<()> {
        let letter = self.ctx.state.dead_letter(id).await?;
        let remote = self.remote(letter.remote.as_str())?;
        remote.requeue(letter)
    }

    /// Asks a remote which strands it has that we may see (discovery).
    pub async fn directory(&self, name: &str, filter: Filter) -> Result<Vec<StrandHead>> {
        self.remote(name)?.directory(filter).await
    }

    /// The handler that serves a peer's requests on an accepted link.
    pub fn handler(&self) -> Arc<dyn SessionHandler> {
        self.responder.clone()
    }

    /// Serves an accepted link.
    pub fn serve(&self, link: Link) -> Session {
        let session = Session::start(
            link,
            self.responder.clone(),
            self.ctx.config.limits(),
            self.ctx.session_id(),
        );
        // A peer that connects must say who it is soon, or its connection is given back.
        let s = session.clone();
        let within = self.ctx.config.hello_timeout;
        tokio::spawn(async move {
            tokio::select! {
                () = s.closed() => {}
                peer = s.wait_peer(within) => if peer.is_none() {
                    tracing::debug!(
                        transport = s.info().transport, peer = %s.info().peer,
                        "no hello within {} ms; closing the session", within.as_millis()
                    );
                    telemetry::session_refused("hello_timeout");
                    s.close();
                }
            }
        });
        session
    }

    /// Stops pushing new batches, waits up to `drain` for in-flight batches to be applied,
    /// then stops every remote.
    pub async fn shutdown(&self, drain: Duration) {
        let remotes: Vec<_> = self.ctx.remotes.read().values().cloned().collect();
        for r in &remotes {
            r.begin_drain();
        }
        let _ = tokio::time::timeout(drain, async {
            for r in &remotes {
                let mut len = r.channel.outbox.watch_len();
                let _ = len.wait_for(|n| *n == 0).await;
            }
        })
        .await;
        for r in &remotes {
            r.stop();
            telemetry::remote_removed(r.config.name.as_str());
        }
        self.tasks.lock().clear();
        self.responder.close_sessions();
        self.ctx.remotes.write().clear();
    }
}
