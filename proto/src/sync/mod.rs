//! The sync state machines: what one remote does next, and the responder's listener table,
//! decided without I/O.
//!
//! Each machine takes inputs (a session came up or went away, a feed page was read, a request
//! was answered, a timer fired), each with the time `now` passed in, and queues effects for its
//! driver to perform (read the feed, send a request, store a record, report status). A machine
//! never waits: it says when it next wants to be woken ([`pusher::Pusher::poll_timeout`]) and
//! the driver calls it back then. Randomness (the jitter of a backoff) and fresh ids come in as
//! arguments too, so the same inputs always give the same effects.

pub mod connector;
pub mod incoming;
pub mod listeners;
pub mod puller;
pub mod pusher;
pub mod remote;
pub mod sessions;
pub mod window;

use crate::types::{Ordinal, StoredOp};

/// Keeps the longest prefix of a feed page whose operations fit in `budget` bytes on the wire
/// (always at least one), and returns it with the feed position it covers: the page's end if
/// nothing was cut, else the last kept operation (the next read starts after it).
pub fn cut_to_bytes(
    mut ops: Vec<StoredOp>,
    scanned_to: Ordinal,
    budget: usize,
) -> (Vec<StoredOp>, Ordinal, bool) {
    let mut used = 0usize;
    for i in 0..ops.len() {
        used = used.saturating_add(ops[i].op.wire_size());
        if used > budget && i > 0 {
            let to = ops[i - 1].ordinal;
            ops.truncate(i);
            return (ops, to, true);
        }
    }
    (ops, scanned_to, false)
}
