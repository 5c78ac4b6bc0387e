//! What the responder receives: the checks every received operation passes (pushes and pulled
//! pages alike; decided in `syncline_proto::sync::incoming`), the pushes peers send, and the
//! directory they ask for.

use std::sync::Arc;

use super::Responder;
use crate::channel::JobStatus;
use crate::error::{Error, ErrorKind, Result, WireError};
use crate::protocol::{Directory, Push, Pushed, Refusal, Response, StrandUpdate, Strands};
use crate::queue::{JobKind, JobOutput};
use crate::scheduler::Signal;
use crate::sync::SyncContext;
use crate::telemetry;
use crate::types::{Operation, ReactorId};
use syncline_proto::sync::incoming::{self, IncomingLimits};

/// What a receiver decided about a received batch, operation by operation.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    /// Operations to apply.
    pub(crate) accepted: Vec<Arc<Operation>>,
    /// Operations refused, each with its reason.
    pub(crate) refused: Vec<Refusal>,
}

impl SyncContext {
    /// Checks received operations one by one (`syncline_proto::sync::incoming::sort`: hash,
    /// size and private scopes there; clock plausibility and, for pushes, the peer's right to
    /// change the strand here). An operation that fails is refused alone; only the newest
    /// accepted timestamp is folded into the HLC.
    pub(crate) fn verify_incoming(
        &self,
        ops: Vec<Operation>,
        peer: &ReactorId,
        check_write: bool,
    ) -> Result<Verdicts> {
        let limits = IncomingLimits {
            max_batch_ops: self.config.max_batch_ops,
            max_action_bytes: self.config.max_action_bytes,
            private_scopes: &self.private_scopes,
        };
        let sorted = incoming::sort(ops, &limits, |op| {
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
        })?;
        let via = if check_write { "push" } else { "pull" };
        for op in &sorted.dropped {
            tracing::debug!(op = %op.id, scope = %op.scope, "dropped an operation in a private scope");
        }
        let refused = sorted
            .refused
            .into_iter()
            .map(|(op, e)| {
                tracing::info!(
                    peer = %peer, op = %op.id, strand = %op.strand(), via, error = %e,
                    "refused an operation"
                );
                telemetry::ops_refused(via, e.kind().as_str(), 1);
                Refusal {
                    id: op.id,
                    error: WireError::from(&e),
                    by: None,
                }
            })
            .collect();
        if let Some(t) = sorted.newest {
            self.hlc.observe(t);
        }
        Ok(Verdicts {
            accepted: sorted.accepted,
            refused,
        })
    }
}

impl Responder {
    pub(super) async fn push(&self, peer: ReactorId, p: Push) -> Result<Response> {
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

    pub(super) async fn directory(&self, peer: ReactorId, d: Directory) -> Result<Response> {
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
