//! The event bus: typed events, `emit` and `on`.
//!
//! Handlers run synchronously inside `emit`, in registration order, so no subscriber can miss
//! an event or see them out of order. A handler must therefore be quick and must not block: the
//! sync manager's handlers only set flags and wake tasks, which then read from the store.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::types::{JobId, ReactorId, StoredOp};

/// Operations newly written to the store by one commit.
#[derive(Debug, Clone)]
pub struct OperationsWritten {
    /// The new operations in ordinal order (duplicates are not included).
    pub ops: Vec<StoredOp>,
}

impl OperationsWritten {
    /// The peers the operations came from, without repeats (`None` for local submissions).
    pub fn sources(&self) -> Vec<Option<ReactorId>> {
        let mut out: Vec<Option<ReactorId>> = Vec::new();
        for s in &self.ops {
            if !out.contains(&s.source) {
                out.push(s.source.clone());
            }
        }
        out
    }
}

/// Everything the bus carries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// New operations were committed.
    OperationsWritten(Arc<OperationsWritten>),
    /// The executor committed a group of jobs (for load-aware scheduling).
    Committed {
        /// Operations in the commit.
        ops: usize,
        /// How long the commit took.
        elapsed: std::time::Duration,
        /// Jobs still queued.
        queue_depth: usize,
        /// The queue's bound.
        queue_capacity: usize,
    },
    /// Operations were left out of (or put back into) the document view: an authority refused
    /// them (or applied them after all). Each entry is the strand and the operation's sort key,
    /// from which the view refolds.
    ViewChanged(Arc<Vec<(crate::types::StrandId, crate::types::SortKey)>>),
    /// A job finished (`error` is `None` on success).
    JobCompleted {
        /// The job.
        job: JobId,
        /// The error message, if the job failed.
        error: Option<String>,
    },
}

type Handler = Arc<dyn Fn(&Event) + Send + Sync>;

/// A handle that removes its handler when passed to [`EventBus::off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription(u64);

/// The event bus of one reactor.
#[derive(Default)]
pub struct EventBus {
    handlers: RwLock<Vec<(u64, Handler)>>,
    next: AtomicU64,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("handlers", &self.handlers.read().len())
            .finish()
    }
}

impl EventBus {
    /// A bus with no handlers.
    pub fn new() -> Self {
        EventBus::default()
    }

    /// Registers a handler.
    pub fn on(&self, handler: impl Fn(&Event) + Send + Sync + 'static) -> Subscription {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.handlers.write().push((id, Arc::new(handler)));
        Subscription(id)
    }

    /// Removes a handler.
    pub fn off(&self, sub: Subscription) {
        self.handlers.write().retain(|(id, _)| *id != sub.0);
    }

    /// Delivers an event to every handler.
    pub fn emit(&self, event: &Event) {
        // Clone the list so a handler may subscribe or unsubscribe without deadlocking.
        let handlers: Vec<Handler> = self
            .handlers
            .read()
            .iter()
            .map(|(_, h)| h.clone())
            .collect();
        for h in handlers {
            h(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn handlers_run_in_order_and_can_be_removed() {
        let bus = EventBus::new();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let s1 = seen.clone();
        let a = bus.on(move |_| s1.lock().push(1));
        let s2 = seen.clone();
        bus.on(move |_| s2.lock().push(2));
        let ev = Event::JobCompleted {
            job: JobId::from_random_bytes([1; 16]),
            error: None,
        };
        bus.emit(&ev);
        bus.off(a);
        bus.emit(&ev);
        assert_eq!(*seen.lock(), vec![1, 2, 2]);
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let bus2 = Arc::new(EventBus::new());
        let b2 = bus2.clone();
        bus2.on(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            // Subscribing from inside a handler does not deadlock.
            b2.on(|_| {});
        });
        bus2.emit(&ev);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
