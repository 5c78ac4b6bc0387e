//! The reactor: one operations store, one queue and executor, one document view, one sync
//! manager, many remotes, assembled from injected parts.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::auth::{AllowAll, Permissions};
use crate::clock::{Clock, HlcClock, SystemClock};
use crate::entropy::Entropy;
use crate::error::{Error, ErrorKind, Result};
use crate::events::EventBus;
use crate::executor::JobExecutor;
use crate::model::{DocumentModel, ModelRegistry};
use crate::queue::{JobKind, JobOutput, NewAction, Queue, Submission, Written};
use crate::scheduler::{FixedInterval, Scheduler};
use crate::session::Session;
use crate::store::DynStore;
use crate::sync::{SyncConfig, SyncManager, SyncParts, TaskGroup};
use crate::transport::{Link, Transport, TransportRegistry, parse_url};
use crate::types::{DEFAULT_DOCUMENT_TYPE, DocumentType, ReactorId, StrandId};
use crate::view::{DocumentState, DocumentView, ViewOp};

/// Tuning of a reactor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactorConfig {
    /// Most jobs queued (submissions and received batches); beyond it callers wait.
    pub queue_capacity: usize,
    /// Most operations written in one commit.
    pub max_commit_ops: usize,
    /// Most actions in one submission.
    pub max_submit_actions: usize,
    /// Operations between document view snapshots.
    pub snapshot_every: u64,
    /// Strands whose views are kept in memory.
    pub max_cached_views: usize,
    /// Estimated bytes of the views kept in memory (states, snapshots, errors); beyond it the
    /// least recently read strands leave the cache.
    pub max_view_bytes: usize,
    /// How far ahead of our clock a received timestamp may be.
    #[serde(with = "crate::retry::millis")]
    pub max_clock_drift: Duration,
    /// The sync manager. Not part of the serde form: a node configures it as its own `[sync]`
    /// section.
    #[serde(skip)]
    pub sync: SyncConfig,
}

/// How far ahead of our clock a received timestamp may be by default: five minutes. Enough for
/// machines whose clocks are kept by NTP (off by milliseconds to seconds) or drift for a day
/// without it; small enough that one peer cannot drag every reactor's clock by hours
/// (`docs/protocol.md`, "Clocks").
pub const DEFAULT_MAX_CLOCK_DRIFT: Duration = Duration::from_secs(300);

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            queue_capacity: 4096,
            max_commit_ops: 16_384,
            max_submit_actions: 10_000,
            snapshot_every: 512,
            max_cached_views: 4096,
            max_view_bytes: 256 << 20,
            max_clock_drift: DEFAULT_MAX_CLOCK_DRIFT,
            sync: SyncConfig::default(),
        }
    }
}

impl ReactorConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("queue_capacity", self.queue_capacity),
            ("max_commit_ops", self.max_commit_ops),
            ("max_submit_actions", self.max_submit_actions),
            ("max_cached_views", self.max_cached_views),
            ("max_view_bytes", self.max_view_bytes),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("reactor.{k} must be at least 1")));
            }
        }
        if self.snapshot_every == 0 {
            return Err(Error::invalid("reactor.snapshot_every must be at least 1"));
        }
        self.sync.validate()
    }
}

impl Submission {
    /// A submission to a strand of the default (`json`) document type.
    pub fn new(strand: StrandId, actions: Vec<NewAction>) -> Self {
        Submission {
            strand,
            document_type: DocumentType::new(DEFAULT_DOCUMENT_TYPE).expect("a valid name"),
            actions,
        }
    }

    /// A JSON-model submission to `document` (global scope, main branch) from
    /// `(type, input)` pairs.
    pub fn json<'a>(
        document: &str,
        actions: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Result<Self> {
        let strand = StrandId::parse(document, None, None)?;
        let actions = actions
            .into_iter()
            .map(|(t, input)| NewAction::new(t, input))
            .collect::<Result<Vec<_>>>()?;
        Ok(Submission::new(strand, actions))
    }
}

/// Builds a reactor.
#[derive(Debug)]
pub struct ReactorBuilder {
    id: ReactorId,
    store: Option<DynStore>,
    transports: TransportRegistry,
    clock: Arc<dyn Clock>,
    entropy: Option<Arc<Entropy>>,
    scheduler: Option<Arc<dyn Scheduler>>,
    permissions: Arc<dyn Permissions>,
    models: ModelRegistry,
    config: ReactorConfig,
}

impl ReactorBuilder {
    /// The store (required).
    pub fn store(mut self, store: DynStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds a transport.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transports.register(transport);
        self
    }

    /// Replaces the transports.
    pub fn transports(mut self, transports: TransportRegistry) -> Self {
        self.transports = transports;
        self
    }

    /// The wall clock (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Seeds all randomness (ids, jitter) for a deterministic run.
    pub fn seed(mut self, seed: u64) -> Self {
        self.entropy = Some(Arc::new(Entropy::seeded(seed)));
        self
    }

    /// The pull scheduler (a fixed 2 s interval by default).
    pub fn scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Peer permissions (everything allowed by default).
    pub fn permissions(mut self, permissions: Arc<dyn Permissions>) -> Self {
        self.permissions = permissions;
        self
    }

    /// Registers a document model.
    pub fn model(mut self, document_type: &str, model: Arc<dyn DocumentModel>) -> Self {
        self.models.register(document_type, model);
        self
    }

    /// The configuration.
    pub fn config(mut self, config: ReactorConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the reactor: the executor, the sync manager and the stored remotes.
    pub async fn start(self) -> Result<Reactor> {
        self.config.validate()?;
        let store = self
            .store
            .ok_or_else(|| Error::invalid("a reactor needs a store"))?;
        let entropy = self.entropy.unwrap_or_else(|| Arc::new(Entropy::from_os()));
        let bus = Arc::new(EventBus::new());
        let queue = Arc::new(Queue::new(self.config.queue_capacity));
        let hlc = Arc::new(HlcClock::new(self.clock, self.config.max_clock_drift));
        // The clock resumes after the highest timestamp the store holds, so an operation made
        // after a restart never sorts before one this reactor already stored (ours or a
        // peer's), whatever the wall clock says.
        if let Some(highest) = store.heads().await?.iter().map(|h| h.last.timestamp).max() {
            hlc.observe(highest);
        }
        let models = Arc::new(self.models);
        let exclusions = Arc::new(crate::exclusions::Exclusions::default());
        let view = DocumentView::new(
            store.clone(),
            models.clone(),
            &bus,
            self.config.snapshot_every,
            self.config.max_cached_views,
            exclusions.clone(),
        )
        .with_max_bytes(self.config.max_view_bytes);
        let executor = JobExecutor {
            queue: queue.clone(),
            store: store.clone(),
            bus: bus.clone(),
            hlc: hlc.clone(),
            entropy: entropy.clone(),
            reactor: self.id.clone(),
            max_group_ops: self.config.max_commit_ops,
        };
        let executor_task = tokio::spawn(executor.run());
        let scheduler = self.scheduler.unwrap_or_else(|| {
            Arc::new(FixedInterval::new(
                Duration::from_secs(2),
                self.config.sync.reconnect,
            ))
        });
        let sync = SyncManager::start(SyncParts {
            reactor: self.id.clone(),
            store: store.clone(),
            queue: queue.clone(),
            bus: bus.clone(),
            hlc: hlc.clone(),
            entropy: entropy.clone(),
            scheduler,
            permissions: self.permissions,
            transports: self.transports.clone(),
            config: self.config.sync.clone(),
            exclusions,
        })
        .await;
        let sync = match sync {
            Ok(s) => s,
            Err(e) => {
                executor_task.abort();
                return Err(e);
            }
        };
        Ok(Reactor(Arc::new(Inner {
            id: self.id,
            store,
            bus,
            queue,
            view,
            sync,
            hlc,
            entropy,
            models,
            transports: self.transports,
            config: self.config,
            executor: Mutex::new(Some(executor_task)),
            tasks: Mutex::new(TaskGroup::default()),
        })))
    }
}

#[derive(Debug)]
struct Inner {
    id: ReactorId,
    store: DynStore,
    bus: Arc<EventBus>,
    queue: Arc<Queue>,
    view: DocumentView,
    sync: SyncManager,
    hlc: Arc<HlcClock>,
    entropy: Arc<Entropy>,
    models: Arc<ModelRegistry>,
    transports: TransportRegistry,
    config: ReactorConfig,
    executor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tasks: Mutex<TaskGroup>,
}

/// A running reactor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reactor(Arc<Inner>);

impl Reactor {
    /// Starts building a reactor with this id.
    pub fn builder(id: ReactorId) -> ReactorBuilder {
        ReactorBuilder {
            id,
            store: None,
            transports: TransportRegistry::new(),
            clock: Arc::new(SystemClock),
            entropy: None,
            scheduler: None,
            permissions: Arc::new(AllowAll),
            models: ModelRegistry::default(),
            config: ReactorConfig::default(),
        }
    }

    /// This reactor's id.
    pub fn id(&self) -> &ReactorId {
        &self.0.id
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.0.store
    }

    /// The event bus.
    pub fn bus(&self) -> &Arc<EventBus> {
        &self.0.bus
    }

    /// The job queue.
    pub fn queue(&self) -> &Arc<Queue> {
        &self.0.queue
    }

    /// The document view.
    pub fn view(&self) -> &DocumentView {
        &self.0.view
    }

    /// The sync manager.
    pub fn sync(&self) -> &SyncManager {
        &self.0.sync
    }

    /// The hybrid logical clock.
    pub fn hlc(&self) -> &Arc<HlcClock> {
        &self.0.hlc
    }

    /// The configuration.
    pub fn config(&self) -> &ReactorConfig {
        &self.0.config
    }

    /// The transports.
    pub fn transports(&self) -> &TransportRegistry {
        &self.0.transports
    }

    /// Validates and writes a submission; returns the new operations once committed.
    pub async fn submit(&self, submission: Submission) -> Result<Vec<Written>> {
        let n = submission.actions.len();
        if n == 0 {
            return Err(Error::invalid("a submission needs at least one action"));
        }
        if n > self.0.config.max_submit_actions {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a submission of {n} actions exceeds the limit of {}",
                    self.0.config.max_submit_actions
                ),
            ));
        }
        let model = self.0.models.get(&submission.document_type)?;
        let max_bytes = self.0.config.sync.max_action_bytes;
        for (i, a) in submission.actions.iter().enumerate() {
            let bytes = json_len(&a.input);
            if bytes > max_bytes {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!(
                        "action {i} ({}) on {} has an input of {bytes} bytes; the limit \
                         (sync.max_action_bytes) is {max_bytes}",
                        a.action_type, submission.strand
                    ),
                ));
            }
            model
                .validate(a.action_type.as_str(), &a.input)
                .map_err(|e| {
                    Error::invalid(format!(
                        "action {i} ({}) on {}: {}",
                        a.action_type,
                        submission.strand,
                        e.message()
                    ))
                })?;
        }
        let ticket = self
            .0
            .queue
            .enqueue(self.0.entropy.job_id(), JobKind::Submit(submission))
            .await?;
        match ticket.wait().await? {
            JobOutput::Submitted(w) => Ok(w),
            JobOutput::Applied(_) => Err(Error::internal("a submission returned an apply result")),
        }
    }

    /// The current state of a strand.
    pub async fn document(&self, strand: &StrandId) -> Result<DocumentState> {
        self.0.view.state(strand).await
    }

    /// A strand's operations in canonical order.
    pub async fn operations(&self, strand: &StrandId) -> Result<Vec<ViewOp>> {
        self.0.view.operations(strand).await
    }

    /// Serves an accepted link (for transports whose server is mounted elsewhere).
    pub fn serve(&self, link: Link) -> Session {
        self.0.sync.serve(link)
    }

    /// Accepts links on `url` with the transport for its scheme; returns the URL peers dial.
    pub async fn listen(&self, url: &str) -> Result<Url> {
        let url = parse_url(url)?;
        let mut acceptor = self.0.transports.listen(&url).await?;
        let local = acceptor.local_url();
        let me = Arc::downgrade(&self.0);
        self.0.tasks.lock().spawn(async move {
            loop {
                match acceptor.accept().await {
                    Ok(link) => {
                        let Some(inner) = me.upgrade() else {
                            return;
                        };
                        inner.sync.serve(link);
                    }
                    Err(e) if e.kind() == ErrorKind::Closed => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(local)
    }

    /// Stops gracefully: in-flight batches get up to `drain` to be applied, queued jobs are
    /// executed, then everything stops.
    pub async fn shutdown(&self, drain: Duration) {
        self.0.sync.shutdown(drain).await;
        *self.0.tasks.lock() = TaskGroup::default();
        self.0.queue.close();
        let executor = self.0.executor.lock().take();
        if let Some(task) = executor {
            let _ = task.await;
        }
    }

    /// Stops at once, as a crash would: nothing is drained, queued jobs are lost; what the
    /// store committed stays. For simulations.
    pub async fn crash(&self) {
        self.0.queue.abort();
        if let Some(task) = self.0.executor.lock().take() {
            task.abort();
        }
        *self.0.tasks.lock() = TaskGroup::default();
        self.0.sync.shutdown(Duration::ZERO).await;
    }
}

/// The length of a value's JSON text, without building it.
fn json_len(v: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}
