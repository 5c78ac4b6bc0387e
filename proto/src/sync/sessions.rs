//! The responder's sessions, decided without I/O: which sessions peers hold open with this
//! reactor, against `sync.max_sessions` and `sync.max_sessions_per_peer`, and none after the
//! reactor shut down.
//!
//! The table keeps each session's handle (`S`, the shell's session type) so the shell can close
//! the sessions it says to close; whether a session is still open is asked of the shell.

use crate::types::ReactorId;

/// How many sessions are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions in all (`sync.max_sessions`).
    pub max_sessions: usize,
    /// Sessions one reactor id holds (`sync.max_sessions_per_peer`).
    pub max_per_peer: usize,
}

/// What admitting a session that said hello did.
#[derive(Debug, PartialEq)]
pub enum Admission<S> {
    /// Admitted; `evicted` is the peer's oldest session, to close (it had its limit).
    Admitted {
        /// The session to close, if any.
        evicted: Option<S>,
    },
    /// The session was admitted before (a second hello on it).
    Already,
    /// Refused: the reactor serves `max_sessions` sessions.
    Full,
    /// Refused: the reactor shut down; the shell closes the session.
    ShuttingDown,
}

#[derive(Debug)]
struct Entry<S> {
    id: u64,
    peer: Option<ReactorId>,
    handle: S,
}

/// The sessions peers opened, in the order they said hello (or were first used).
#[derive(Debug)]
pub struct Sessions<S> {
    list: Vec<Entry<S>>,
    limits: SessionLimits,
    shut: bool,
}

impl<S: Clone> Sessions<S> {
    /// An empty table.
    pub fn new(limits: SessionLimits) -> Self {
        Sessions {
            list: Vec::new(),
            limits,
            shut: false,
        }
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether the reactor shut down.
    pub fn is_shut(&self) -> bool {
        self.shut
    }

    /// Admits session `id` of `peer`, which said hello. Sessions no longer open are let go
    /// first. Beyond the per-peer limit the peer's oldest session is evicted; beyond the total
    /// limit (with nothing to evict) the hello is refused.
    pub fn admit(
        &mut self,
        id: u64,
        peer: &ReactorId,
        handle: S,
        is_open: impl Fn(&S) -> bool,
    ) -> Admission<S> {
        if self.shut {
            return Admission::ShuttingDown;
        }
        self.list.retain(|e| is_open(&e.handle));
        if let Some(e) = self.list.iter_mut().find(|e| e.id == id) {
            e.peer = Some(peer.clone());
            return Admission::Already;
        }
        let of_peer = |e: &Entry<S>| e.peer.as_ref() == Some(peer);
        let evicted = if self.list.iter().filter(|e| of_peer(e)).count() >= self.limits.max_per_peer
        {
            // The list keeps hello order: the first of the peer's is its oldest.
            self.list
                .iter()
                .position(of_peer)
                .map(|i| self.list.remove(i).handle)
        } else {
            None
        };
        if evicted.is_none() && self.list.len() >= self.limits.max_sessions {
            return Admission::Full;
        }
        self.list.push(Entry {
            id,
            peer: Some(peer.clone()),
            handle,
        });
        Admission::Admitted { evicted }
    }

    /// Keeps session `id` (used by a peer, as when it registers a listener) if it is not kept
    /// yet and the reactor has not shut down. It counts against the limits from its hello on.
    pub fn remember(&mut self, id: u64, peer: Option<ReactorId>, handle: S) {
        if !self.shut && !self.list.iter().any(|e| e.id == id) {
            self.list.push(Entry { id, peer, handle });
        }
    }

    /// Session `id` closed.
    pub fn closed(&mut self, id: u64, is_open: impl Fn(&S) -> bool) {
        self.list.retain(|e| e.id != id && is_open(&e.handle));
    }

    /// The sessions still open (those closed are let go), in hello order.
    pub fn open(&mut self, is_open: impl Fn(&S) -> bool) -> Vec<S> {
        self.list.retain(|e| is_open(&e.handle));
        self.list.iter().map(|e| e.handle.clone()).collect()
    }

    /// The reactor shut down: no session is admitted from now on; returns every session, to
    /// close.
    pub fn shut_down(&mut self) -> Vec<S> {
        self.shut = true;
        std::mem::take(&mut self.list)
            .into_iter()
            .map(|e| e.handle)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn peer(p: &str) -> ReactorId {
        ReactorId::new(p).unwrap()
    }

    fn open(_: &u64) -> bool {
        true
    }

    #[test]
    fn the_per_peer_limit_evicts_the_peers_oldest_and_the_total_limit_refuses() {
        let mut t = Sessions::new(SessionLimits {
            max_sessions: 3,
            max_per_peer: 2,
        });
        assert_eq!(
            t.admit(1, &peer("a"), 1, open),
            Admission::Admitted { evicted: None }
        );
        assert_eq!(
            t.admit(2, &peer("a"), 2, open),
            Admission::Admitted { evicted: None }
        );
        assert_eq!(t.admit(2, &peer("a"), 2, open), Admission::Already);
        // a's third session closes its oldest, and takes no more room.
        assert_eq!(
            t.admit(3, &peer("a"), 3, open),
            Admission::Admitted { evicted: Some(1) }
        );
        assert_eq!(
            t.admit(4, &peer("b"), 4, open),
            Admission::Admitted { evicted: None }
        );
        assert_eq!(t.len(), 3);
        // Full: c has nothing to evict; a still can (its oldest goes).
        assert_eq!(t.admit(5, &peer("c"), 5, open), Admission::Full);
        assert_eq!(
            t.admit(6, &peer("a"), 6, open),
            Admission::Admitted { evicted: Some(2) }
        );
        // A session that closed makes room.
        t.closed(4, open);
        assert_eq!(
            t.admit(5, &peer("c"), 5, open),
            Admission::Admitted { evicted: None }
        );
        assert_eq!(t.open(open), vec![3, 6, 5]);
    }

    #[test]
    fn sessions_no_longer_open_are_let_go_and_none_is_admitted_after_shutdown() {
        let mut t = Sessions::new(SessionLimits {
            max_sessions: 2,
            max_per_peer: 2,
        });
        t.admit(1, &peer("a"), 1, open);
        t.remember(2, Some(peer("b")), 2);
        t.remember(2, Some(peer("b")), 2);
        assert_eq!(t.len(), 2);
        // Session 1 closed without the shell saying so: the next admission lets it go.
        assert_eq!(
            t.admit(3, &peer("c"), 3, |s| *s != 1),
            Admission::Admitted { evicted: None }
        );
        assert_eq!(t.shut_down(), vec![2, 3]);
        assert!(t.is_shut() && t.is_empty());
        assert_eq!(t.admit(4, &peer("a"), 4, open), Admission::ShuttingDown);
        t.remember(5, None, 5);
        assert!(t.is_empty(), "nothing is kept after shutdown");
    }
}
