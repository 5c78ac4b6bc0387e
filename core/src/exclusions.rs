//! Operations left out of the document view: those an authority refused.
//!
//! When a remote marked as an authority for a document (`remotes[].authority`, the
//! Switchboard case of seed 004) refuses one of its operations, the reactor that wrote it keeps
//! the operation in its log (the log is append-only and the refusal is a verdict about it, not
//! a deletion) but its document view skips it, so writer and authority converge on the same
//! state. The sync manager fills the set; the view reads it on every fold.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::types::OpId;

/// The set of excluded operation ids, shared by the sync manager and the document view.
#[derive(Debug, Default)]
pub struct Exclusions {
    any: AtomicBool,
    ids: RwLock<HashSet<OpId>>,
}

impl Exclusions {
    /// Whether the view leaves `id` out.
    pub fn contains(&self, id: &OpId) -> bool {
        // Most reactors have no authority: skip the lock entirely.
        self.any.load(Ordering::Acquire) && self.ids.read().contains(id)
    }

    /// Adds an id; returns whether it was new.
    pub fn insert(&self, id: OpId) -> bool {
        let new = self.ids.write().insert(id);
        self.any.store(true, Ordering::Release);
        new
    }

    /// Removes an id (the authority applied it after all); returns whether it was there.
    pub fn remove(&self, id: &OpId) -> bool {
        let mut ids = self.ids.write();
        let removed = ids.remove(id);
        self.any.store(!ids.is_empty(), Ordering::Release);
        removed
    }

    /// How many operations are excluded.
    pub fn len(&self) -> usize {
        self.ids.read().len()
    }

    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }
}
