//! The responder's pull listeners, decided without I/O: who registered what, how far each
//! acknowledged, which are forgotten when a limit is reached or a listener goes unused.
//!
//! The responder's shell stores what this table says to store (a record on registration and
//! acknowledgement, deletions of the forgotten ones) and reads the feed for a pull; the table
//! takes the time (`now_ms`, wall clock, since the epoch: records outlive the process) and
//! fresh ids as arguments.

use std::time::{Duration, Instant};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::filter::Filter;
use crate::types::{Ordinal, ReactorId};

/// A pulling peer's registration with us.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerRecord {
    /// The listener id.
    pub id: String,
    /// The peer that registered it (only it may pull with it).
    pub peer: ReactorId,
    /// Which strands it gets.
    pub filter: Filter,
    /// How far the peer acknowledged our feed.
    pub cursor: Ordinal,
    /// When it was registered (ms since the epoch).
    pub created_ms: u64,
    /// When its peer last registered, pulled with it or acknowledged (ms since the epoch);
    /// stored on registration and acknowledgement. A listener unused for `sync.listener_ttl`
    /// is forgotten.
    #[serde(default)]
    pub last_used_ms: u64,
}

impl ListenerRecord {
    /// When it was last used (or registered).
    fn used_ms(&self) -> u64 {
        self.last_used_ms.max(self.created_ms)
    }
}

/// How many listeners are kept, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Listeners one peer keeps (`sync.max_listeners_per_peer`).
    pub per_peer: usize,
    /// Listeners kept in all (`sync.max_listeners`).
    pub total: usize,
    /// A listener unused this long (ms) is forgotten (`sync.listener_ttl`).
    pub ttl_ms: u64,
}

/// What a registration did.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// The listener to store and hand back: the peer's existing one for the same filter (its
    /// cursor set to `since`), or a new one.
    pub record: ListenerRecord,
    /// Listeners forgotten to make room (to delete from storage).
    pub forgotten: Vec<String>,
}

/// The listeners, the most recently used first.
#[derive(Debug)]
pub struct Listeners {
    map: LruCache<String, ListenerRecord>,
    limits: ListenerLimits,
}

impl Listeners {
    /// The table of `stored` listeners (in any order; the least recently used is forgotten
    /// first).
    pub fn new(mut stored: Vec<ListenerRecord>, limits: ListenerLimits) -> Self {
        stored.sort_by_key(ListenerRecord::used_ms);
        let mut map = LruCache::unbounded();
        for l in stored {
            map.put(l.id.clone(), l);
        }
        Listeners { map, limits }
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every listener, the most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = &ListenerRecord> {
        self.map.iter().map(|(_, l)| l)
    }

    /// Registers a listener of `peer` for `filter` from `since`. A peer registering a filter
    /// it already has a listener for gets that listener back, so re-registrations never pile
    /// up; otherwise a new one (`new_id`) is made, and beyond the per-peer or total limit the
    /// least recently used listeners are forgotten.
    pub fn register(
        &mut self,
        peer: ReactorId,
        filter: Filter,
        since: Ordinal,
        now_ms: u64,
        new_id: impl FnOnce() -> String,
    ) -> Registration {
        let same = self
            .map
            .iter()
            .find(|(_, l)| l.peer == peer && l.filter == filter)
            .map(|(id, _)| id.clone());
        if let Some(l) = same.and_then(|id| self.map.get_mut(&id)) {
            l.cursor = since;
            l.last_used_ms = now_ms;
            return Registration {
                record: l.clone(),
                forgotten: Vec::new(),
            };
        }
        let record = ListenerRecord {
            id: new_id(),
            peer,
            filter,
            cursor: since,
            created_ms: now_ms,
            last_used_ms: now_ms,
        };
        let forgotten = self.make_room(&record.peer);
        self.map.put(record.id.clone(), record.clone());
        Registration { record, forgotten }
    }

    /// Forgets listeners so that one more of `peer` fits: the peer's least recently used beyond
    /// `per_peer - 1`, then the least recently used of all beyond `total - 1`.
    fn make_room(&mut self, peer: &ReactorId) -> Vec<String> {
        let of_peer = self.map.iter().filter(|(_, l)| &l.peer == peer).count();
        // `iter` runs from the most recently used; its reverse from the least.
        let mut forget: Vec<String> = self
            .map
            .iter()
            .rev()
            .filter(|(_, l)| &l.peer == peer)
            .take((of_peer + 1).saturating_sub(self.limits.per_peer))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &forget {
            self.map.pop(id);
        }
        while self.map.len() + 1 > self.limits.total {
            match self.map.pop_lru() {
                Some((id, _)) => forget.push(id),
                None => break,
            }
        }
        forget
    }

    /// The listener `id` for a pull or an acknowledgement by `peer`, marked as used now. Not
    /// found (the peer registers again) or another peer's (refused).
    pub fn get(&mut self, id: &str, peer: &ReactorId, now_ms: u64) -> Result<ListenerRecord> {
        let l = self
            .map
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("unknown listener {id:?}; register again")))?;
        if &l.peer != peer {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("listener {id:?} belongs to reactor {}, not {peer}", l.peer),
            ));
        }
        l.last_used_ms = l.last_used_ms.max(now_ms);
        Ok(l.clone())
    }

    /// The peer acknowledged `cursor` on listener `id` (checked with [`Listeners::get`]): the
    /// record to store if the cursor moved forward on a listener still kept (never one just
    /// forgotten).
    pub fn ack(&mut self, id: &str, cursor: Ordinal) -> Option<ListenerRecord> {
        let l = self.map.get_mut(id)?;
        if cursor <= l.cursor {
            return None;
        }
        l.cursor = cursor;
        Some(l.clone())
    }

    /// Forgets the listeners unused for the time limit; returns their ids (to delete).
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let ttl = self.limits.ttl_ms;
        let expired: Vec<String> = self
            .map
            .iter()
            .filter(|(_, l)| now_ms.saturating_sub(l.used_ms()) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.map.pop(id);
        }
        expired
    }
}

/// A pull being served: where it reads from, how much, and until when it may be held open for
/// a write (a long poll).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullHold {
    from: Ordinal,
    start: Ordinal,
    limit: usize,
    deadline: Option<Instant>,
}

/// What to do with a page read for a pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullStep {
    /// Answer with it.
    Answer,
    /// Nothing for the peer yet: wait for a write (then read again from
    /// [`PullHold::start`]) until this instant, then answer.
    Hold(Instant),
}

impl PullHold {
    /// A pull from `cursor` for at most `limit` operations (within `1..=max_batch_ops`), held
    /// for at most `wait_ms` (within `max_wait`) from `now`. What our pusher already delivered
    /// to the peer (`delivered`, durably) is not read again.
    pub fn new(
        cursor: Ordinal,
        delivered: Ordinal,
        limit: u32,
        max_batch_ops: usize,
        wait_ms: u32,
        max_wait: Duration,
        now: Instant,
    ) -> Self {
        let from = cursor.max(delivered);
        let wait = Duration::from_millis(u64::from(wait_ms)).min(max_wait);
        PullHold {
            from,
            start: from,
            limit: (limit as usize).clamp(1, max_batch_ops.max(1)),
            deadline: (!wait.is_zero()).then(|| now + wait),
        }
    }

    /// Where the next read starts.
    pub fn start(&self) -> Ordinal {
        self.start
    }

    /// How many operations a read asks for.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A page was read: `found` whether it holds operations for the peer, `cut` whether the
    /// byte budget cut it, `scanned_to` how far it read, `head` the feed's head.
    pub fn page(&mut self, found: bool, cut: bool, scanned_to: Ordinal, head: Ordinal) -> PullStep {
        match self.deadline {
            Some(deadline) if !found && !cut && scanned_to >= head => {
                self.start = scanned_to;
                PullStep::Hold(deadline)
            }
            _ => PullStep::Answer,
        }
    }

    /// The answer's cursor and whether more is there, for a page that covered the feed to
    /// `covered` and was `cut` or not.
    pub fn answer(&self, covered: Ordinal, cut: bool, head: Ordinal) -> (Ordinal, bool) {
        (covered.max(self.from), cut || covered < head)
    }
}

#[cfg(test)]
#[path = "listeners_tests.rs"]
mod tests;
