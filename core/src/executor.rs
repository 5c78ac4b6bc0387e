//! The job executor: turns queued jobs into store commits, many jobs per commit.
//!
//! Group commit: the executor takes every job that is ready (up to a bound), places the local
//! actions (HLC time, id, hash), and writes all of it, received batches and their cursor
//! writes included, in one `apply`. A durable commit costs milliseconds while one more record
//! in it costs microseconds, so throughput under load is bounded by record cost, not commit
//! cost. Each job still gets its own result: when a group's commit fails, its jobs are
//! committed one by one, so a job the store cannot take fails alone.

use std::sync::Arc;
use tokio::time::Instant;

use crate::clock::{Hlc, HlcClock};
use crate::entropy::Entropy;
use crate::events::{Event, EventBus, OperationsWritten};
use crate::queue::{ApplySummary, Job, JobKind, JobOutput, Queue, Written};
use crate::store::{ApplyBatch, DynStore, IncomingOp, OpOutcome};
use crate::telemetry;
use crate::types::{Action, OpHash, Operation, Payload, ReactorId, StoredOp};

/// Runs jobs from the queue against the store.
#[derive(Debug)]
pub struct JobExecutor {
    /// The queue to drain.
    pub queue: Arc<Queue>,
    /// The store to write.
    pub store: DynStore,
    /// Where `OperationsWritten` is announced.
    pub bus: Arc<EventBus>,
    /// Stamps local actions.
    pub hlc: Arc<HlcClock>,
    /// Ids for local operations.
    pub entropy: Arc<Entropy>,
    /// This reactor (the origin of local operations).
    pub reactor: ReactorId,
    /// Most operations in one commit.
    pub max_group_ops: usize,
}

impl JobExecutor {
    /// Runs until the queue is closed and drained.
    pub async fn run(self) {
        while let Some(jobs) = self.queue.take(self.max_group_ops).await {
            telemetry::queue_depth(self.queue.depth());
            self.execute(jobs).await;
        }
    }

    /// Turns a job into what it writes: operations (local actions placed with their HLC time,
    /// id and hash) and metadata writes.
    fn place(&self, job: &mut Job) -> ApplyBatch {
        let mut placed = ApplyBatch::default();
        let out = &mut placed.ops;
        match &mut job.kind {
            JobKind::Submit(sub) => {
                let n = sub.actions.len();
                let first = self.hlc.tick_many(n as u32);
                let ids = self.entropy.op_ids(n, first.millis);
                for (i, (action, id)) in sub.actions.drain(..).zip(ids).enumerate() {
                    let op = Operation {
                        id,
                        document_id: sub.strand.document_id.clone(),
                        document_type: sub.document_type.clone(),
                        scope: sub.strand.scope.clone(),
                        branch: sub.strand.branch.clone(),
                        action: Action {
                            id: action.id.unwrap_or_else(|| self.entropy.action_id()),
                            action_type: action.action_type,
                            input: Payload::from_value(&action.input),
                            timestamp: Hlc {
                                millis: first.millis,
                                counter: first.counter.saturating_add(i as u32),
                            },
                        },
                        hash: OpHash([0; 32]),
                        origin: self.reactor.clone(),
                    }
                    .seal();
                    out.push(IncomingOp {
                        op: Arc::new(op),
                        source: None,
                    });
                }
            }
            JobKind::Apply {
                ops,
                source,
                meta: writes,
            } => {
                out.extend(ops.drain(..).map(|op| IncomingOp {
                    op,
                    source: Some(source.clone()),
                }));
                placed.meta.append(writes);
            }
        }
        placed
    }

    /// Executes one group of jobs as one commit. If that commit fails and the group holds
    /// more than one job, each job is committed alone, so that one job the store cannot take
    /// fails by itself and unrelated jobs of the same group still commit.
    pub async fn execute(&self, mut jobs: Vec<Job>) {
        let placed: Vec<ApplyBatch> = jobs.iter_mut().map(|j| self.place(j)).collect();
        let mut batch = ApplyBatch::default();
        for p in &placed {
            batch.ops.extend(p.ops.iter().cloned());
            batch.meta.extend(p.meta.iter().cloned());
        }
        match self.commit(batch).await {
            Ok(outcome) => self.finish(jobs, &placed, outcome),
            Err(e) if jobs.len() > 1 => {
                tracing::warn!(
                    error = %e, jobs = jobs.len(),
                    "a group commit failed; committing its jobs one by one"
                );
                for (job, p) in jobs.into_iter().zip(placed) {
                    match self.commit(p.clone()).await {
                        Ok(outcome) => self.finish(vec![job], std::slice::from_ref(&p), outcome),
                        Err(e) => self.fail(job, &e),
                    }
                }
            }
            Err(e) => {
                for job in jobs {
                    self.fail(job, &e);
                }
            }
        }
    }

    /// One store commit, timed and announced.
    async fn commit(&self, batch: ApplyBatch) -> crate::error::Result<crate::store::ApplyOutcome> {
        let n = batch.ops.len();
        let started = Instant::now();
        let result = self.store.apply(batch).await;
        let elapsed = started.elapsed();
        telemetry::commit(elapsed, n);
        self.bus.emit(&Event::Committed {
            ops: n,
            elapsed,
            queue_depth: self.queue.depth(),
            queue_capacity: self.queue.capacity(),
        });
        result
    }

    fn fail(&self, mut job: Job, e: &crate::error::Error) {
        tracing::warn!(error = %e, job = %job.id, "commit failed");
        self.bus.emit(&Event::JobCompleted {
            job: job.id,
            error: Some(e.to_string()),
        });
        job.finish(Err(e.to_shared()));
    }

    /// Announces what a commit wrote and answers its jobs (`placed[i]` is what `jobs[i]`
    /// wrote, in the commit's order).
    fn finish(
        &self,
        mut jobs: Vec<Job>,
        placed: &[ApplyBatch],
        outcome: crate::store::ApplyOutcome,
    ) {
        let incoming: Vec<&IncomingOp> = placed.iter().flat_map(|p| p.ops.iter()).collect();
        let mut new_ops = Vec::new();
        for (inc, out) in incoming.iter().zip(&outcome.outcomes) {
            if let OpOutcome::New(ordinal) = out {
                new_ops.push(StoredOp {
                    ordinal: *ordinal,
                    op: inc.op.clone(),
                    source: inc.source.clone(),
                });
            }
        }
        let fresh_local = new_ops.iter().filter(|s| s.source.is_none()).count();
        telemetry::ops_written(fresh_local, new_ops.len() - fresh_local);
        telemetry::ops_duplicate(outcome.outcomes.len() - new_ops.len());
        if !new_ops.is_empty() {
            self.bus
                .emit(&Event::OperationsWritten(Arc::new(OperationsWritten {
                    ops: new_ops,
                })));
        }
        let mut start = 0;
        for (job, p) in jobs.iter_mut().zip(placed) {
            let span = start..start + p.ops.len();
            start = span.end;
            let outcomes = &outcome.outcomes[span.clone()];
            let output = match &job.kind {
                JobKind::Submit(_) => JobOutput::Submitted(
                    incoming[span]
                        .iter()
                        .zip(outcomes)
                        .map(|(inc, o)| Written {
                            id: inc.op.id,
                            ordinal: o.ordinal(),
                            timestamp: inc.op.action.timestamp,
                        })
                        .collect(),
                ),
                JobKind::Apply { .. } => {
                    let new = outcomes.iter().filter(|o| o.is_new()).count();
                    JobOutput::Applied(ApplySummary {
                        new,
                        duplicates: outcomes.len() - new,
                        head: outcome.head,
                    })
                }
            };
            self.bus.emit(&Event::JobCompleted {
                job: job.id,
                error: None,
            });
            job.finish(Ok(output));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::error::ErrorKind;
    use crate::memory_store::MemoryStore;
    use crate::queue::Submission;
    use crate::store::OperationStore;

    /// A group commit that fails because of one job fails that job alone: the others of the
    /// group are committed one by one and succeed. Before, every job of the group failed with
    /// the one error (unrelated local submissions included).
    #[tokio::test]
    async fn one_bad_job_fails_alone_in_a_group_commit() {
        let store = Arc::new(MemoryStore::new());
        store.fail_applies_of("bad");
        let queue = Arc::new(Queue::new(64));
        let entropy = Arc::new(Entropy::seeded(1));
        let executor = JobExecutor {
            queue: queue.clone(),
            store: store.clone(),
            bus: Arc::new(EventBus::new()),
            hlc: Arc::new(HlcClock::new(
                Arc::new(SystemClock),
                std::time::Duration::from_secs(300),
            )),
            entropy: entropy.clone(),
            reactor: ReactorId::new("a").expect("a valid id"),
            max_group_ops: 1_000,
        };
        let mut tickets = Vec::new();
        for doc in ["good-1", "bad", "good-2", "good-3"] {
            let sub = Submission::json(
                doc,
                [("set", serde_json::json!({"path": "/v", "value": 1}))],
            )
            .expect("a valid submission");
            tickets.push(
                queue
                    .enqueue(entropy.job_id(), JobKind::Submit(sub))
                    .await
                    .expect("enqueued"),
            );
        }
        let jobs = queue.take(1_000).await.expect("jobs");
        assert_eq!(jobs.len(), 4, "one group");
        executor.execute(jobs).await;
        let mut results = Vec::new();
        for t in tickets {
            results.push(t.wait().await);
        }
        assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok());
        let err = results[1].as_ref().expect_err("the bad job fails");
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert_eq!(store.head().await.expect("head").0, 3);
    }
}
