//! The outbox window: which parts of our feed a remote has durably applied.
//!
//! Batches cover contiguous feed ranges `(from, to]` and may finish out of order (several are
//! in flight at once). The committed cursor only moves over a prefix of finished ranges, so it
//! never passes an operation the remote has not applied. This is pure bookkeeping, tested
//! without any I/O.

use std::collections::BTreeMap;

use crate::types::Ordinal;

/// In-flight ranges and the committed cursor.
#[derive(Debug, Clone)]
pub struct OutboxWindow {
    committed: Ordinal,
    /// `from -> (to, finished)`.
    ranges: BTreeMap<Ordinal, (Ordinal, bool)>,
}

impl OutboxWindow {
    /// A window whose cursor starts at `committed`.
    pub fn new(committed: Ordinal) -> Self {
        OutboxWindow {
            committed,
            ranges: BTreeMap::new(),
        }
    }

    /// The committed cursor: everything up to it was applied by the remote (or dead-lettered).
    pub fn committed(&self) -> Ordinal {
        self.committed
    }

    /// Ranges opened and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.ranges.values().filter(|(_, done)| !done).count()
    }

    /// Records a batch covering `(from, to]` as sent.
    pub fn open(&mut self, from: Ordinal, to: Ordinal) {
        debug_assert!(from < to);
        self.ranges.insert(from, (to, false));
    }

    /// Records the batch starting at `from` as finished; returns the new committed cursor if it
    /// moved.
    pub fn finish(&mut self, from: Ordinal) -> Option<Ordinal> {
        if let Some(r) = self.ranges.get_mut(&from) {
            r.1 = true;
        }
        let before = self.committed;
        while let Some(entry) = self.ranges.first_entry() {
            let (to, done) = *entry.get();
            if !done || *entry.key() != self.committed {
                break;
            }
            self.committed = to;
            entry.remove();
        }
        (self.committed != before).then_some(self.committed)
    }

    /// Opens and finishes a range at once (a range with nothing to send).
    pub fn skip(&mut self, from: Ordinal, to: Ordinal) -> Option<Ordinal> {
        self.open(from, to);
        self.finish(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_moves_only_over_a_finished_prefix() {
        let mut w = OutboxWindow::new(Ordinal(10));
        w.open(Ordinal(10), Ordinal(20));
        w.open(Ordinal(20), Ordinal(30));
        w.open(Ordinal(30), Ordinal(40));
        assert_eq!(w.in_flight(), 3);
        assert_eq!(w.finish(Ordinal(20)), None);
        assert_eq!(w.committed(), Ordinal(10));
        assert_eq!(w.finish(Ordinal(10)), Some(Ordinal(30)));
        assert_eq!(w.skip(Ordinal(40), Ordinal(45)), None);
        assert_eq!(w.finish(Ordinal(30)), Some(Ordinal(45)));
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.finish(Ordinal(99)), None);
    }
}
