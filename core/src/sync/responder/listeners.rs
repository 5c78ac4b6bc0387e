//! The responder's pull listeners: registration, pulls (long polls included), acknowledgements,
//! the limits on how many are kept and their expiry.

use std::sync::Arc;
use std::time::Duration;

use super::Responder;
use crate::error::{Error, Result, WireError};
use crate::protocol::{
    Ack, Acked, Pull, Pulled, PushResult, Register, Registered, Response, StrandUpdate,
};
use crate::session::Session;
use crate::sync::ListenerStatus;
use crate::sync::state::ListenerRecord;
use crate::telemetry;
use crate::types::{Operation, Ordinal, ReactorId};
use syncline_proto::sync::listeners::{PullHold, PullStep, Registration};

impl Responder {
    pub(crate) fn listener_status(&self, head: Ordinal) -> Vec<ListenerStatus> {
        let mut out: Vec<_> = self
            .listeners
            .lock()
            .iter()
            .map(|l| ListenerStatus {
                id: l.id.clone(),
                peer: l.peer.clone(),
                cursor: l.cursor,
                lag: head.0.saturating_sub(l.cursor.0),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The listener `id` of `peer`, marked as used now.
    fn listener(&self, id: &str, peer: &ReactorId) -> Result<ListenerRecord> {
        let now = self.ctx.now_ms();
        self.listeners.lock().get(id, peer, now)
    }

    pub(super) fn attach_listener(&self, session: &Session, id: &str) {
        self.remember(session);
        let mut st = session.responder_state();
        if !st.listeners.iter().any(|l| l == id) {
            st.listeners.push(id.to_owned());
        }
    }

    /// Registers a listener (`syncline_proto::sync::listeners::Listeners::register`): stores it, deletes those forgotten to
    /// make room, and attaches it to the session (for pokes).
    pub(super) async fn register(
        &self,
        session: &Session,
        peer: ReactorId,
        r: Register,
    ) -> Result<Response> {
        r.filter.validate()?;
        let now = self.ctx.now_ms();
        let Registration { record, forgotten } = {
            let mut table = self.listeners.lock();
            let registration = table.register(peer, r.filter, r.since, now, || {
                self.ctx.entropy.job_id().to_string()
            });
            telemetry::listeners(table.len());
            registration
        };
        if !forgotten.is_empty() {
            tracing::info!(
                peer = %record.peer, forgotten = forgotten.len(),
                "listener limit reached (sync.max_listeners_per_peer / sync.max_listeners); \
                 forgot the least recently used"
            );
        }
        self.ctx.state.put_listener(&record).await?;
        self.ctx.state.delete_listeners(&forgotten).await?;
        self.attach_listener(session, &record.id);
        Ok(Response::Registered(Registered {
            listener_id: record.id,
        }))
    }

    /// Forgets listeners unused for `sync.listener_ttl`.
    pub(crate) async fn expire_listeners(&self) -> Result<usize> {
        let now = self.ctx.now_ms();
        let expired = {
            let mut table = self.listeners.lock();
            let expired = table.expire(now);
            telemetry::listeners(table.len());
            expired
        };
        if !expired.is_empty() {
            tracing::info!(
                expired = expired.len(),
                "forgot listeners unused for {} s (sync.listener_ttl)",
                self.ctx.config.listener_ttl.as_secs()
            );
        }
        self.ctx.state.delete_listeners(&expired).await?;
        Ok(expired.len())
    }

    pub(super) async fn expiry_loop(self: Arc<Self>) {
        let every = (self.ctx.config.listener_ttl / 8)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            if let Err(e) = self.expire_listeners().await {
                tracing::warn!(error = %e, "forgetting expired listeners failed");
            }
            tokio::time::sleep(every).await;
        }
    }

    pub(super) async fn pull(
        &self,
        session: &Session,
        peer: ReactorId,
        p: Pull,
    ) -> Result<Response> {
        let push_result = match p.push {
            Some(push) => Some(match self.push(peer.clone(), push).await {
                Ok(Response::Pushed(pushed)) => PushResult::Ok(pushed),
                Ok(_) => PushResult::Err(WireError::from(&Error::internal("push gave no result"))),
                Err(e) => PushResult::Err(WireError::from(&e)),
            }),
            None => None,
        };
        let listener = self.listener(&p.listener_id, &peer)?;
        self.attach_listener(session, &listener.id);
        // Anything written after this point pokes the peer again.
        session.responder_state().poke_pending = false;
        let filter = self.ctx.read_filter(&listener.filter, Some(peer.clone()));
        // What our pusher already delivered to this peer (durably: the outbox cursor moves only
        // on `pushed`) need not travel again.
        let delivered = self
            .ctx
            .remotes_of(&peer)
            .iter()
            .filter(|r| r.config.mode.pushes() && r.config.filter.is_all())
            .map(|r| r.status_now().outbox_cursor)
            .max()
            .unwrap_or(Ordinal::ZERO);
        let config = &self.ctx.config;
        let mut hold = PullHold::new(
            p.cursor,
            delivered,
            p.limit,
            config.max_batch_ops,
            p.wait_ms,
            config.max_pull_wait,
            tokio::time::Instant::now().into_std(),
        );
        let mut page;
        let mut visible: Vec<Arc<Operation>>;
        let mut covered;
        let mut cut;
        loop {
            // Register for new writes before reading, so none is missed in between.
            let written = self.ctx.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            page = self
                .ctx
                .store
                .read_since(hold.start(), hold.limit(), &filter)
                .await?;
            let readable: Vec<_> = std::mem::take(&mut page.ops)
                .into_iter()
                .filter(|s| self.ctx.permissions.can_read(&peer, &s.op))
                .collect();
            // Cut the answer to fit the frame limit in bytes as well as in count.
            let kept;
            (kept, covered, cut) =
                crate::sync::cut_to_bytes(readable, page.scanned_to, config.batch_bytes());
            visible = kept.into_iter().map(|s| s.op).collect();
            match hold.page(!visible.is_empty(), cut, page.scanned_to, page.head) {
                PullStep::Answer => break,
                // A long poll: nothing for the peer yet; wait for a write or the deadline.
                PullStep::Hold(deadline) => {
                    let deadline = tokio::time::Instant::from_std(deadline);
                    if tokio::time::timeout_at(deadline, written).await.is_err() {
                        break;
                    }
                }
            }
        }
        let (cursor, has_more) = hold.answer(covered, cut, page.head);
        Ok(Response::Pulled(Pulled {
            strands: StrandUpdate::group(&visible),
            cursor,
            head: page.head,
            has_more,
            push_result,
            refused: self.ctx.take_relayed(&peer),
        }))
    }

    pub(super) async fn ack(&self, peer: ReactorId, a: Ack) -> Result<Response> {
        self.listener(&a.listener_id, &peer)?;
        self.ctx.record_reported(&peer, &a.refused).await?;
        let moved = self.listeners.lock().ack(&a.listener_id, a.cursor);
        if let Some(record) = moved {
            self.ctx.state.put_listener(&record).await?;
        }
        Ok(Response::Acked(Acked {}))
    }
}
