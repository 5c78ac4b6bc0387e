//! A shared value whose waiters wake in a fixed order.
//!
//! tokio's `watch` spreads its waiters over several internal notifiers chosen at random, so two
//! tasks waiting for the same change wake in a random order. That is harmless in production but
//! breaks the simulation's exact replay; this cell wakes waiters in the order they started
//! waiting.

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A value with ordered change notification.
#[derive(Debug, Default)]
pub(crate) struct Cell<T> {
    value: Mutex<T>,
    changed: Notify,
}

impl<T: Clone> Cell<T> {
    pub(crate) fn new(value: T) -> Self {
        Cell {
            value: Mutex::new(value),
            changed: Notify::new(),
        }
    }

    /// The current value.
    pub(crate) fn get(&self) -> T {
        self.value.lock().clone()
    }

    /// Changes the value and wakes every waiter; returns the old value.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.value.lock());
        self.changed.notify_waiters();
        r
    }

    /// Waits until `pred` holds and returns the value then.
    pub(crate) async fn wait_until(&self, pred: impl Fn(&T) -> bool) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let v = self.value.lock();
                if pred(&v) {
                    return v.clone();
                }
            }
            notified.await;
        }
    }
}
