//! The channel of one remote: `inbox` and `outbox` mailboxes of job handles.
//!
//! This is seed 000's `IChannel`. The outbox holds the batches being applied by the remote, the
//! inbox the batches pulled from it and being applied here. Every handle has a forward-only
//! [`JobStatus`] that subscribers can follow (a progress bar, a status page); a mailbox tells its
//! subscribers when handles are added and removed.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};
use crate::types::{Branch, DocumentId, JobId, Operation, Ordinal, Scope};

pub use syncline_proto::job::JobStatus;

type StatusCallback = Box<dyn Fn(&JobHandle, JobStatus, JobStatus) + Send + Sync>;

struct JobInner {
    id: JobId,
    operations: Arc<[Arc<Operation>]>,
    range: (Ordinal, Ordinal),
    status: watch::Sender<JobStatus>,
    error: Mutex<Option<Error>>,
    callbacks: Mutex<Vec<StatusCallback>>,
    transition: Mutex<()>,
}

/// One batch in flight. Cheap to clone; clones share status and subscribers.
#[derive(Clone)]
pub struct JobHandle(Arc<JobInner>);

impl fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.0.id)
            .field("operations", &self.0.operations.len())
            .field("status", &self.status())
            .finish()
    }
}

impl JobHandle {
    /// A handle in status `Unknown` for a batch covering the feed range `(from, to]`.
    pub fn new(id: JobId, operations: Vec<Arc<Operation>>, range: (Ordinal, Ordinal)) -> Self {
        JobHandle(Arc::new(JobInner {
            id,
            operations: operations.into(),
            range,
            status: watch::channel(JobStatus::Unknown).0,
            error: Mutex::new(None),
            callbacks: Mutex::new(Vec::new()),
            transition: Mutex::new(()),
        }))
    }

    /// The job id.
    pub fn id(&self) -> JobId {
        self.0.id
    }

    /// The operations.
    pub fn operations(&self) -> &[Arc<Operation>] {
        &self.0.operations
    }

    /// The shared operation list.
    pub fn operations_shared(&self) -> Arc<[Arc<Operation>]> {
        self.0.operations.clone()
    }

    /// The ordinal range `(from, to]` of the sender's feed that this batch covers.
    pub fn range(&self) -> (Ordinal, Ordinal) {
        self.0.range
    }

    /// The documents the job touches, without repeats, in first-seen order.
    pub fn document_ids(&self) -> Vec<DocumentId> {
        let mut out: Vec<DocumentId> = Vec::new();
        for op in self.0.operations.iter() {
            if out.last() != Some(&op.document_id) && !out.contains(&op.document_id) {
                out.push(op.document_id.clone());
            }
        }
        out
    }

    /// The scopes the job touches.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut out: Vec<Scope> = Vec::new();
        for op in self.0.operations.iter() {
            if !out.contains(&op.scope) {
                out.push(op.scope.clone());
            }
        }
        out
    }

    /// The branches the job touches.
    pub fn branches(&self) -> Vec<Branch> {
        let mut out: Vec<Branch> = Vec::new();
        for op in self.0.operations.iter() {
            if !out.contains(&op.branch) {
                out.push(op.branch.clone());
            }
        }
        out
    }

    /// The current status.
    pub fn status(&self) -> JobStatus {
        *self.0.status.borrow()
    }

    /// The error, once the status is `Error`.
    pub fn error(&self) -> Option<Error> {
        self.0.error.lock().clone()
    }

    /// Subscribes to status changes: `callback(handle, previous, next)`.
    pub fn on(&self, callback: impl Fn(&JobHandle, JobStatus, JobStatus) + Send + Sync + 'static) {
        self.0.callbacks.lock().push(Box::new(callback));
    }

    /// A receiver that sees every new status (for async waiting).
    pub fn watch(&self) -> watch::Receiver<JobStatus> {
        self.0.status.subscribe()
    }

    /// Waits until the job is applied or failed.
    pub async fn finished(&self) -> JobStatus {
        let mut rx = self.watch();
        let status = rx.wait_for(|s| s.is_final()).await.map(|s| *s);
        status.unwrap_or(JobStatus::Error)
    }

    /// Moves the job to `next`, telling subscribers. Refuses backward moves and any move out of
    /// `Error` or `Applied`.
    pub fn advance(&self, next: JobStatus) -> Result<()> {
        let _serial = self.0.transition.lock();
        let prev = self.status();
        if prev == next {
            return Ok(());
        }
        if !prev.can_move_to(next) {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("job {} cannot move from {prev:?} to {next:?}", self.0.id),
            ));
        }
        self.0.status.send_replace(next);
        for cb in self.0.callbacks.lock().iter() {
            cb(self, prev, next);
        }
        Ok(())
    }

    /// Moves the job to `Error` with `error`, from any state but `Error`.
    pub fn fail(&self, error: Error) {
        {
            let mut slot = self.0.error.lock();
            if slot.is_none() {
                *slot = Some(error);
            }
        }
        let _ = self.advance(JobStatus::Error);
    }
}

/// A handle for a batch pulled from a remote and applied here, with seed 000's named steps.
#[derive(Clone, Debug)]
pub struct PullJobHandle(JobHandle);

impl PullJobHandle {
    /// A pulled batch in status `Unknown`.
    pub fn new(id: JobId, operations: Vec<Arc<Operation>>, range: (Ordinal, Ordinal)) -> Self {
        PullJobHandle(JobHandle::new(id, operations, range))
    }

    /// The underlying handle.
    pub fn handle(&self) -> &JobHandle {
        &self.0
    }

    /// Unknown → TransportPending.
    pub fn started(&self) -> Result<()> {
        self.0.advance(JobStatus::TransportPending)
    }

    /// TransportPending → ExecutionPending.
    pub fn transported(&self) -> Result<()> {
        self.0.advance(JobStatus::ExecutionPending)
    }

    /// ExecutionPending → Applied.
    pub fn executed(&self) -> Result<()> {
        self.0.advance(JobStatus::Applied)
    }

    /// Any state → Error.
    pub fn failed(&self, error: Error) {
        self.0.fail(error)
    }
}

impl std::ops::Deref for PullJobHandle {
    type Target = JobHandle;
    fn deref(&self) -> &JobHandle {
        &self.0
    }
}

/// Something a mailbox can hold.
pub trait MailboxItem: Clone + Send + Sync + 'static {
    /// The item's id.
    fn job_id(&self) -> JobId;
}

impl MailboxItem for JobHandle {
    fn job_id(&self) -> JobId {
        self.id()
    }
}

impl MailboxItem for PullJobHandle {
    fn job_id(&self) -> JobId {
        self.id()
    }
}

type ItemCallback<T> = Arc<dyn Fn(&T) + Send + Sync>;

struct MailboxInner<T> {
    items: Vec<T>,
    added: Vec<ItemCallback<T>>,
    removed: Vec<ItemCallback<T>>,
}

/// A set of job handles in insertion order, with `added`/`removed` subscriptions.
pub struct Mailbox<T: MailboxItem> {
    inner: Mutex<MailboxInner<T>>,
    len: watch::Sender<usize>,
}

impl<T: MailboxItem> fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("len", &self.inner.lock().items.len())
            .finish()
    }
}

impl<T: MailboxItem> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            inner: Mutex::new(MailboxInner {
                items: Vec::new(),
                added: Vec::new(),
                removed: Vec::new(),
            }),
            len: watch::channel(0).0,
        }
    }
}

impl<T: MailboxItem> Mailbox<T> {
    /// An empty mailbox.
    pub fn new() -> Self {
        Mailbox::default()
    }

    /// A snapshot of the items.
    pub fn items(&self) -> Vec<T> {
        self.inner.lock().items.clone()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// Whether the mailbox is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item with `id`.
    pub fn get(&self, id: JobId) -> Option<T> {
        self.inner
            .lock()
            .items
            .iter()
            .find(|i| i.job_id() == id)
            .cloned()
    }

    /// Subscribes to additions.
    pub fn added(&self, callback: impl Fn(&T) + Send + Sync + 'static) {
        self.inner.lock().added.push(Arc::new(callback));
    }

    /// Subscribes to removals.
    pub fn removed(&self, callback: impl Fn(&T) + Send + Sync + 'static) {
        self.inner.lock().removed.push(Arc::new(callback));
    }

    /// A receiver of the item count (for waiting until a mailbox drains).
    pub fn watch_len(&self) -> watch::Receiver<usize> {
        self.len.subscribe()
    }

    /// Adds an item (ignored if an item with the same id is already there).
    pub fn push(&self, item: T) {
        let callbacks = {
            let mut inner = self.inner.lock();
            if inner.items.iter().any(|i| i.job_id() == item.job_id()) {
                return;
            }
            inner.items.push(item.clone());
            self.len.send_replace(inner.items.len());
            inner.added.clone()
        };
        for cb in callbacks {
            cb(&item);
        }
    }

    /// Removes an item; returns whether it was there.
    pub fn remove(&self, item: &T) -> bool {
        let (callbacks, found) = {
            let mut inner = self.inner.lock();
            let Some(pos) = inner.items.iter().position(|i| i.job_id() == item.job_id()) else {
                return false;
            };
            let found = inner.items.remove(pos);
            self.len.send_replace(inner.items.len());
            (inner.removed.clone(), found)
        };
        for cb in callbacks {
            cb(&found);
        }
        true
    }
}

/// The channel of one remote.
#[derive(Debug, Default)]
pub struct Channel {
    /// Batches pulled from the remote, being applied here.
    pub inbox: Mailbox<PullJobHandle>,
    /// Batches pushed to the remote, being applied there.
    pub outbox: Mailbox<JobHandle>,
}

impl Channel {
    /// An empty channel.
    pub fn new() -> Self {
        Channel::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn handle(n: u8) -> JobHandle {
        JobHandle::new(
            JobId::from_random_bytes([n; 16]),
            vec![],
            (Ordinal(0), Ordinal(0)),
        )
    }

    #[test]
    fn status_moves_forward_only_and_error_is_sticky() {
        let h = handle(1);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        h.on(move |_, prev, next| s.lock().push((prev, next)));
        h.advance(JobStatus::TransportPending).unwrap();
        assert!(h.advance(JobStatus::Unknown).is_err());
        h.advance(JobStatus::Applied).unwrap();
        assert!(h.advance(JobStatus::ExecutionPending).is_err());
        assert_eq!(
            *seen.lock(),
            vec![
                (JobStatus::Unknown, JobStatus::TransportPending),
                (JobStatus::TransportPending, JobStatus::Applied)
            ]
        );
        let p = PullJobHandle::new(
            JobId::from_random_bytes([2; 16]),
            vec![],
            (Ordinal(0), Ordinal(0)),
        );
        p.started().unwrap();
        p.failed(Error::new(ErrorKind::Timeout, "first"));
        p.failed(Error::new(ErrorKind::Timeout, "second"));
        assert_eq!(p.status(), JobStatus::Error);
        assert!(p.executed().is_err());
        assert_eq!(p.error().unwrap().message(), "first");
    }

    #[test]
    fn mailbox_reports_additions_and_removals() {
        let mb: Mailbox<JobHandle> = Mailbox::new();
        let added = Arc::new(AtomicUsize::new(0));
        let removed = Arc::new(AtomicUsize::new(0));
        let (a, r) = (added.clone(), removed.clone());
        mb.added(move |_| {
            a.fetch_add(1, Ordering::SeqCst);
        });
        mb.removed(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let h1 = handle(1);
        let h2 = handle(2);
        mb.push(h1.clone());
        mb.push(h1.clone());
        mb.push(h2.clone());
        assert_eq!(mb.len(), 2);
        assert_eq!(mb.get(h2.id()).unwrap().id(), h2.id());
        assert!(mb.remove(&h1));
        assert!(!mb.remove(&h1));
        assert_eq!(added.load(Ordering::SeqCst), 2);
        assert_eq!(removed.load(Ordering::SeqCst), 1);
        assert_eq!(*mb.watch_len().borrow(), 1);
        assert_eq!(mb.items().len(), 1);
    }
}
