//! The job queue: FIFO per lane, bounded, many lanes served in turn.
//!
//! A lane is a strand for local submissions and a peer for batches received from it. Jobs of
//! one lane run in the order they were enqueued; the executor takes jobs from all ready lanes
//! round robin, so a lane with a long backlog never starves the others. The queue is bounded in
//! jobs: `enqueue` waits for room (backpressure), `try_enqueue` refuses.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::clock::Hlc;
use crate::error::{Error, ErrorKind, Result};
use crate::store::MetaWrite;
use crate::types::{
    ActionId, ActionType, DocumentType, JobId, OpId, Operation, Ordinal, ReactorId, StrandId,
};

/// One action of a local submission, before it is placed in a strand.
#[derive(Clone, Debug)]
pub struct NewAction {
    /// The action type.
    pub action_type: ActionType,
    /// The input.
    pub input: Value,
    /// An id chosen by the caller, or `None` for a fresh one.
    pub id: Option<ActionId>,
}

impl NewAction {
    /// An action with a fresh id.
    pub fn new(action_type: &str, input: Value) -> Result<Self> {
        Ok(NewAction {
            action_type: ActionType::new(action_type)?,
            input,
            id: None,
        })
    }
}

/// A local submission: actions for one strand.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The strand.
    pub strand: StrandId,
    /// The document type.
    pub document_type: DocumentType,
    /// The actions, in order.
    pub actions: Vec<NewAction>,
}

/// An operation written by a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// The new operation's id.
    pub id: OpId,
    /// Its local ordinal.
    pub ordinal: Ordinal,
    /// Its HLC time.
    pub timestamp: Hlc,
}

/// What applying a received batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Operations that were new here.
    pub new: usize,
    /// Operations that were already here.
    pub duplicates: usize,
    /// The store's last ordinal after the commit.
    pub head: Ordinal,
}

/// What a job asks the executor to do.
#[derive(Debug)]
pub enum JobKind {
    /// Place local actions in a strand.
    Submit(Submission),
    /// Apply verified operations received from a peer, with metadata writes (the inbox
    /// cursor) committed in the same transaction.
    Apply {
        /// The operations.
        ops: Vec<Arc<Operation>>,
        /// The peer they came from.
        source: ReactorId,
        /// Metadata committed atomically with them.
        meta: Vec<MetaWrite>,
    },
}

/// A job's result.
#[derive(Debug)]
pub enum JobOutput {
    /// The submission's operations.
    Submitted(Vec<Written>),
    /// The received batch's summary.
    Applied(ApplySummary),
}

/// A queued job.
#[derive(Debug)]
pub struct Job {
    /// The job id.
    pub id: JobId,
    /// What to do.
    pub kind: JobKind,
    pub(crate) reply: Option<oneshot::Sender<Result<JobOutput>>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// The lane the job runs in.
    pub fn lane(&self) -> Lane {
        match &self.kind {
            JobKind::Submit(s) => Lane::Strand(s.strand.clone()),
            JobKind::Apply { source, .. } => Lane::Inbox(source.clone()),
        }
    }

    /// Number of operations the job will write at most.
    pub fn op_count(&self) -> usize {
        match &self.kind {
            JobKind::Submit(s) => s.actions.len(),
            JobKind::Apply { ops, .. } => ops.len(),
        }
    }

    /// Sends the result to whoever enqueued the job.
    pub fn finish(&mut self, result: Result<JobOutput>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(result);
        }
    }
}

/// A FIFO lane.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Local submissions to one strand.
    Strand(StrandId),
    /// Batches received from one peer.
    Inbox(ReactorId),
}

/// Waits for a queued job's result.
#[derive(Debug)]
pub struct JobTicket {
    /// The job id.
    pub id: JobId,
    rx: oneshot::Receiver<Result<JobOutput>>,
}

impl JobTicket {
    /// Waits until the executor finished the job.
    pub async fn wait(self) -> Result<JobOutput> {
        self.rx.await.unwrap_or_else(|_| {
            Err(Error::closed(
                "the reactor stopped before the job was executed",
            ))
        })
    }
}

#[derive(Default)]
struct Lanes {
    lanes: HashMap<Lane, VecDeque<Job>>,
    ready: VecDeque<Lane>,
    jobs: usize,
    closed: bool,
}

/// The bounded, lane-fair job queue.
pub struct Queue {
    lanes: Mutex<Lanes>,
    room: Arc<Semaphore>,
    capacity: usize,
    wake: Notify,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("depth", &self.depth())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Queue {
    /// A queue holding at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Queue {
            lanes: Mutex::new(Lanes::default()),
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
            wake: Notify::new(),
        }
    }

    /// Jobs waiting.
    pub fn depth(&self) -> usize {
        self.lanes.lock().jobs
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn push(&self, id: JobId, kind: JobKind, permit: OwnedSemaphorePermit) -> Result<JobTicket> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            id,
            kind,
            reply: Some(tx),
            _permit: Some(permit),
        };
        let lane = job.lane();
        {
            let mut l = self.lanes.lock();
            if l.closed {
                return Err(Error::closed("the reactor is shutting down"));
            }
            let q = l.lanes.entry(lane.clone()).or_default();
            let was_empty = q.is_empty();
            q.push_back(job);
            if was_empty {
                l.ready.push_back(lane);
            }
            l.jobs += 1;
        }
        self.wake.notify_one();
        Ok(JobTicket { id, rx })
    }

    /// Enqueues a job, waiting while the queue is full.
    pub async fn enqueue(&self, id: JobId, kind: JobKind) -> Result<JobTicket> {
        let permit = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::closed("the reactor is shutting down"))?;
        self.push(id, kind, permit)
    }

    /// Enqueues a job or fails at once with [`ErrorKind::Backpressure`] when full.
    pub fn try_enqueue(&self, id: JobId, kind: JobKind) -> Result<JobTicket> {
        let permit = self.room.clone().try_acquire_owned().map_err(|_| {
            Error::new(
                ErrorKind::Backpressure,
                format!("the job queue is full ({} jobs)", self.capacity),
            )
        })?;
        self.push(id, kind, permit)
    }

    /// Takes up to `max_ops` operations' worth of jobs (at least one job) from the ready lanes
    /// in turn, waiting while the queue is empty. Returns `None` once closed and drained.
    pub async fn take(&self, max_ops: usize) -> Option<Vec<Job>> {
        loop {
            let notified = self.wake.notified();
            {
                let mut guard = self.lanes.lock();
                let l = &mut *guard;
                if l.jobs > 0 {
                    let mut out = Vec::new();
                    let mut ops = 0;
                    while let Some(lane) = l.ready.pop_front() {
                        let Some(q) = l.lanes.get_mut(&lane) else {
                            continue;
                        };
                        let Some(job) = q.pop_front() else {
                            l.lanes.remove(&lane);
                            continue;
                        };
                        ops += job.op_count();
                        out.push(job);
                        l.jobs -= 1;
                        if q.is_empty() {
                            l.lanes.remove(&lane);
                        } else {
                            l.ready.push_back(lane);
                        }
                        if ops >= max_ops {
                            break;
                        }
                    }
                    return Some(out);
                }
                if l.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Stops accepting jobs and drops every queued one (their callers get a `Closed` error).
    pub fn abort(&self) {
        let dropped: Vec<Job> = {
            let mut l = self.lanes.lock();
            l.closed = true;
            l.jobs = 0;
            // Drop jobs lane by lane in ready order, so a simulation replays the same way.
            let ready: Vec<Lane> = l.ready.drain(..).collect();
            let mut out = Vec::new();
            for lane in ready {
                if let Some(q) = l.lanes.remove(&lane) {
                    out.extend(q);
                }
            }
            out
        };
        drop(dropped);
        self.room.close();
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Stops accepting jobs; `take` drains what is queued and then returns `None`.
    pub fn close(&self) {
        self.lanes.lock().closed = true;
        self.room.close();
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(doc: &str, n: usize) -> JobKind {
        JobKind::Submit(Submission {
            strand: StrandId::parse(doc, None, None).unwrap(),
            document_type: DocumentType::new("json").unwrap(),
            actions: (0..n)
                .map(|_| {
                    NewAction::new("set", serde_json::json!({"path": "/a", "value": 1})).unwrap()
                })
                .collect(),
        })
    }

    fn jid(n: u8) -> JobId {
        JobId::from_random_bytes([n; 16])
    }

    #[tokio::test]
    async fn lanes_are_fifo_and_served_in_turn() {
        let q = Queue::new(16);
        for i in 0..3 {
            q.enqueue(jid(i), submit("a", 1)).await.unwrap();
        }
        q.enqueue(jid(10), submit("b", 1)).await.unwrap();
        let jobs = q.take(2).await.unwrap();
        let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
        // One from lane a, then one from lane b (round robin), then stop at 2 ops.
        assert_eq!(ids, vec![jid(0), jid(10)]);
        let jobs = q.take(100).await.unwrap();
        let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![jid(1), jid(2)]);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_pushes_back_and_frees_room_when_jobs_finish() {
        let q = Queue::new(2);
        q.try_enqueue(jid(1), submit("a", 1)).unwrap();
        q.try_enqueue(jid(2), submit("a", 1)).unwrap();
        let err = q.try_enqueue(jid(3), submit("a", 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backpressure);
        let taken = q.take(1).await.unwrap();
        assert_eq!(taken.len(), 1);
        // The permit is released when the job is dropped (finished), not when it is taken.
        assert!(q.try_enqueue(jid(3), submit("a", 1)).is_err());
        drop(taken);
        q.try_enqueue(jid(3), submit("a", 1)).unwrap();
    }

    #[tokio::test]
    async fn close_drains_then_ends() {
        let q = Queue::new(4);
        q.enqueue(jid(1), submit("a", 1)).await.unwrap();
        q.close();
        assert!(q.enqueue(jid(2), submit("a", 1)).await.is_err());
        assert_eq!(q.take(10).await.unwrap().len(), 1);
        assert!(q.take(10).await.is_none());
    }
}
