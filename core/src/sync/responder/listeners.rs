//! The responder's pull listeners: registration, pulls (long polls included), acknowledgements,
//! the limits on how many are kept and their expiry.

use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;

use super::Responder;
use crate::error::{Error, ErrorKind, Result, WireError};
use crate::protocol::{
    Ack, Acked, Pull, Pulled, PushResult, Register, Registered, Response, StrandUpdate,
};
use crate::session::Session;
use crate::sync::ListenerStatus;
use crate::sync::state::ListenerRecord;
use crate::telemetry;
use crate::types::{Operation, Ordinal, ReactorId};

impl Responder {
    pub(crate) fn listener_status(&self, head: Ordinal) -> Vec<ListenerStatus> {
        let mut out: Vec<_> = self
            .listeners
            .lock()
            .iter()
            .map(|(_, l)| ListenerStatus {
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
    pub(super) fn listener(&self, id: &str, peer: &ReactorId) -> Result<ListenerRecord> {
        let now = self.ctx.now_ms();
        let l = {
            let mut map = self.listeners.lock();
            let l = map.get_mut(id).ok_or_else(|| {
                Error::not_found(format!("unknown listener {id:?}; register again"))
            })?;
            if &l.peer == peer {
                l.last_used_ms = l.last_used_ms.max(now);
            }
            l.clone()
        };
        if &l.peer != peer {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("listener {id:?} belongs to reactor {}, not {peer}", l.peer),
            ));
        }
        Ok(l)
    }

    pub(super) fn attach_listener(&self, session: &Session, id: &str) {
        self.remember(session);
        let mut st = session.responder_state();
        if !st.listeners.iter().any(|l| l == id) {
            st.listeners.push(id.to_owned());
        }
    }

    /// Registers a listener. A peer registering a filter it already has a listener for gets
    /// that listener back (its cursor set to `since`), so re-registrations never pile up;
    /// beyond `max_listeners_per_peer` (or `max_listeners` in all) the least recently used
    /// listener is forgotten.
    pub(super) async fn register(
        &self,
        session: &Session,
        peer: ReactorId,
        r: Register,
    ) -> Result<Response> {
        r.filter.validate()?;
        let now = self.ctx.now_ms();
        let (record, forget) = {
            let mut map = self.listeners.lock();
            let same = map
                .iter()
                .find(|(_, l)| l.peer == peer && l.filter == r.filter)
                .map(|(id, _)| id.clone());
            match same.and_then(|id| map.get_mut(&id)) {
                Some(l) => {
                    l.cursor = r.since;
                    l.last_used_ms = now;
                    (l.clone(), Vec::new())
                }
                None => {
                    let record = ListenerRecord {
                        id: self.ctx.entropy.job_id().to_string(),
                        peer,
                        filter: r.filter,
                        cursor: r.since,
                        created_ms: now,
                        last_used_ms: now,
                    };
                    let forget = make_room(
                        &mut map,
                        &record.peer,
                        self.ctx.config.max_listeners_per_peer,
                        self.ctx.config.max_listeners,
                    );
                    map.put(record.id.clone(), record.clone());
                    telemetry::listeners(map.len());
                    (record, forget)
                }
            }
        };
        if !forget.is_empty() {
            tracing::info!(
                peer = %record.peer, forgotten = forget.len(),
                "listener limit reached (sync.max_listeners_per_peer / sync.max_listeners); \
                 forgot the least recently used"
            );
        }
        self.ctx.state.put_listener(&record).await?;
        self.ctx.state.delete_listeners(&forget).await?;
        self.attach_listener(session, &record.id);
        Ok(Response::Registered(Registered {
            listener_id: record.id,
        }))
    }

    /// Forgets listeners unused for `sync.listener_ttl`.
    pub(crate) async fn expire_listeners(&self) -> Result<usize> {
        let ttl = u64::try_from(self.ctx.config.listener_ttl.as_millis()).unwrap_or(u64::MAX);
        let now = self.ctx.now_ms();
        let expired: Vec<String> = {
            let mut map = self.listeners.lock();
            let expired: Vec<String> = map
                .iter()
                .filter(|(_, l)| now.saturating_sub(l.last_used_ms.max(l.created_ms)) > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                map.pop(id);
            }
            telemetry::listeners(map.len());
            expired
        };
        if !expired.is_empty() {
            tracing::info!(
                expired = expired.len(),
                "forgot listeners unused for {} s (sync.listener_ttl)",
                ttl / 1000
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
        let limit = (p.limit as usize).clamp(1, self.ctx.config.max_batch_ops);
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
        let from = p.cursor.max(delivered);
        let wait = Duration::from_millis(u64::from(p.wait_ms)).min(self.ctx.config.max_pull_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut page;
        let mut visible: Vec<Arc<Operation>>;
        let mut start = from;
        let mut covered;
        let mut cut;
        loop {
            // Register for new writes before reading, so none is missed in between.
            let written = self.ctx.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            page = self.ctx.store.read_since(start, limit, &filter).await?;
            let readable: Vec<_> = std::mem::take(&mut page.ops)
                .into_iter()
                .filter(|s| self.ctx.permissions.can_read(&peer, &s.op))
                .collect();
            // Cut the answer to fit the frame limit in bytes as well as in count.
            let kept;
            (kept, covered, cut) =
                crate::sync::cut_to_bytes(readable, page.scanned_to, self.ctx.config.batch_bytes());
            visible = kept.into_iter().map(|s| s.op).collect();
            let more = cut || page.scanned_to < page.head;
            if !visible.is_empty() || more || wait.is_zero() {
                break;
            }
            // A long poll: nothing for the peer yet; wait for a write or the deadline.
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                break;
            }
            start = page.scanned_to;
        }
        Ok(Response::Pulled(Pulled {
            strands: StrandUpdate::group(&visible),
            cursor: covered.max(from),
            head: page.head,
            has_more: cut || covered < page.head,
            push_result,
            refused: self.ctx.take_relayed(&peer),
        }))
    }

    pub(super) async fn ack(&self, peer: ReactorId, a: Ack) -> Result<Response> {
        let mut listener = self.listener(&a.listener_id, &peer)?;
        self.ctx.record_reported(&peer, &a.refused).await?;
        if a.cursor > listener.cursor {
            listener.cursor = a.cursor;
            // Only a listener still kept is stored again (never one just forgotten).
            let kept = {
                let mut map = self.listeners.lock();
                map.get_mut(&a.listener_id)
                    .map(|l| l.cursor = l.cursor.max(a.cursor))
                    .is_some()
            };
            if kept {
                self.ctx.state.put_listener(&listener).await?;
            }
        }
        Ok(Response::Acked(Acked {}))
    }
}

/// Forgets listeners so that one more of `peer` fits: the peer's least recently used beyond
/// `per_peer - 1`, then the least recently used of all beyond `total - 1`. Returns their ids.
fn make_room(
    map: &mut LruCache<String, ListenerRecord>,
    peer: &ReactorId,
    per_peer: usize,
    total: usize,
) -> Vec<String> {
    let mut forget = Vec::new();
    let of_peer = map.iter().filter(|(_, l)| &l.peer == peer).count();
    // `iter` runs from the most recently used; its reverse from the least.
    let oldest: Vec<String> = map
        .iter()
        .rev()
        .filter(|(_, l)| &l.peer == peer)
        .take((of_peer + 1).saturating_sub(per_peer))
        .map(|(id, _)| id.clone())
        .collect();
    for id in oldest {
        map.pop(&id);
        forget.push(id);
    }
    while map.len() + 1 > total {
        match map.pop_lru() {
            Some((id, _)) => forget.push(id),
            None => break,
        }
    }
    forget
}
