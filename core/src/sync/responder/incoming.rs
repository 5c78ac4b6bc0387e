//! What the responder receives: the checks every received operation passes (pushes and pulled
//! pages alike), the pushes peers send, and the directory they ask for.

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

/// What a receiver decided about a received batch, operation by operation.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    /// Operations to apply.
    pub(crate) accepted: Vec<Arc<Operation>>,
    /// Operations refused, each with its reason.
    pub(crate) refused: Vec<Refusal>,
}

impl SyncContext {
    /// Checks received operations one by one: hash, size, clock plausibility and (for pushes)
    /// the peer's right to change the strand. An operation that fails is refused alone, with
    /// its reason; the others are accepted. Operations in private scopes are dropped: they are
    /// never synced, whichever side is misconfigured. Only the newest *accepted* timestamp is
    /// folded into the HLC, so a refused operation never moves our clock. A batch over the
    /// operation count limit is refused whole (the sender broke the protocol).
    pub(crate) fn verify_incoming(
        &self,
        ops: Vec<Operation>,
        peer: &ReactorId,
        check_write: bool,
    ) -> Result<Verdicts> {
        if ops.len() > self.config.max_batch_ops {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "a batch of {} operations exceeds the limit of {}",
                    ops.len(),
                    self.config.max_batch_ops
                ),
            ));
        }
        let via = if check_write { "push" } else { "pull" };
        let mut newest = None;
        let mut verdicts = Verdicts {
            accepted: Vec::with_capacity(ops.len()),
            refused: Vec::new(),
        };
        for op in ops {
            if self.private_scopes.iter().any(|s| s == op.scope.as_str()) {
                tracing::debug!(op = %op.id, scope = %op.scope, "dropped an operation in a private scope");
                continue;
            }
            if let Err(e) = self.check_incoming(&op, peer, check_write) {
                tracing::info!(
                    peer = %peer, op = %op.id, strand = %op.strand(), via, error = %e,
                    "refused an operation"
                );
                telemetry::ops_refused(via, e.kind().as_str(), 1);
                verdicts.refused.push(Refusal {
                    id: op.id,
                    error: WireError::from(&e),
                    by: None,
                });
                continue;
            }
            if newest.is_none_or(|t| op.action.timestamp > t) {
                newest = Some(op.action.timestamp);
            }
            verdicts.accepted.push(Arc::new(op));
        }
        if let Some(t) = newest {
            self.hlc.observe(t);
        }
        Ok(verdicts)
    }

    pub(super) fn check_incoming(
        &self,
        op: &Operation,
        peer: &ReactorId,
        check_write: bool,
    ) -> Result<()> {
        op.verify()?;
        let size = op.action.input.as_bytes().len();
        if size > self.config.max_action_bytes {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "operation {} has an input of {size} bytes; the limit (sync.max_action_bytes) \
                     is {}",
                    op.id, self.config.max_action_bytes
                ),
            ));
        }
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
