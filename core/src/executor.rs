//! The job executor: turns queued jobs into store commits, many jobs per commit.
//!
//! Group commit: the executor takes every job that is ready (up to a bound), places the local
//! actions (HLC time, id, hash), and writes all of it, received batches and their cursor
//! writes included, in one `apply`. A durable commit costs milliseconds while one more record
//! in it costs microseconds, so throughput under load is bounded by record cost, not commit
//! cost. Each job still gets its own result.

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

    fn place(&self, job: &mut Job, out: &mut Vec<IncomingOp>, meta: &mut ApplyBatch) {
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
                meta.meta.append(writes);
            }
        }
    }

    /// Executes one group of jobs as one commit.
    pub async fn execute(&self, mut jobs: Vec<Job>) {
        let mut batch = ApplyBatch::default();
        let mut incoming = Vec::new();
        let mut spans = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            let start = incoming.len();
            self.place(job, &mut incoming, &mut batch);
            spans.push(start..incoming.len());
        }
        batch.ops = incoming.clone();
        let started = Instant::now();
        let result = self.store.apply(batch).await;
        let elapsed = started.elapsed();
        telemetry::commit(elapsed, incoming.len());
        self.bus.emit(&Event::Committed {
            ops: incoming.len(),
            elapsed,
            queue_depth: self.queue.depth(),
            queue_capacity: self.queue.capacity(),
        });
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, jobs = jobs.len(), "commit failed");
                for job in jobs.iter_mut() {
                    self.bus.emit(&Event::JobCompleted {
                        job: job.id,
                        error: Some(e.to_string()),
                    });
                    job.finish(Err(e.to_shared()));
                }
                return;
            }
        };
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
        for (job, span) in jobs.iter_mut().zip(spans) {
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
