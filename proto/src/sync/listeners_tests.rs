//! The listener table stepped by hand.

#![allow(clippy::unwrap_used)]

use super::*;

fn peer(p: &str) -> ReactorId {
    ReactorId::new(p).unwrap()
}

fn filter(doc: &str) -> Filter {
    Filter::documents([doc])
}

fn limits(per_peer: usize, total: usize) -> ListenerLimits {
    ListenerLimits {
        per_peer,
        total,
        ttl_ms: 1_000,
    }
}

/// Ids `l0`, `l1`, ... in registration order.
struct Ids(usize);

impl Ids {
    fn next(&mut self) -> impl FnOnce() -> String {
        self.0 += 1;
        let n = self.0 - 1;
        move || format!("l{n}")
    }
}

#[test]
fn a_filter_registered_again_gets_its_listener_back_from_the_new_cursor() {
    let mut t = Listeners::new(Vec::new(), limits(4, 10));
    let mut ids = Ids(0);
    let a = t.register(peer("a"), filter("x"), Ordinal(5), 10, ids.next());
    assert_eq!(a.record.id, "l0");
    assert!(a.forgotten.is_empty());
    let again = t.register(peer("a"), filter("x"), Ordinal(2), 20, ids.next());
    assert_eq!(
        again.record.id, "l0",
        "no second listener for the same filter"
    );
    assert_eq!(again.record.cursor, Ordinal(2));
    assert_eq!(again.record.last_used_ms, 20);
    // Another filter, or another peer with the same filter, is another listener.
    assert_eq!(
        t.register(peer("a"), filter("y"), Ordinal(0), 30, ids.next())
            .record
            .id,
        "l2"
    );
    assert_eq!(
        t.register(peer("b"), filter("x"), Ordinal(0), 30, ids.next())
            .record
            .id,
        "l3"
    );
    assert_eq!(t.len(), 3);
}

#[test]
fn limits_forget_the_least_recently_used_first_per_peer_then_in_all() {
    let mut t = Listeners::new(Vec::new(), limits(2, 3));
    let mut ids = Ids(0);
    for (i, doc) in ["x", "y"].iter().enumerate() {
        t.register(peer("a"), filter(doc), Ordinal(0), i as u64, ids.next());
    }
    // Using l0 makes l1 the least recently used of a's.
    t.get("l0", &peer("a"), 5).unwrap();
    let third = t.register(peer("a"), filter("z"), Ordinal(0), 6, ids.next());
    assert_eq!(third.forgotten, vec!["l1".to_owned()]);
    // b's registrations push the total over 3: the least recently used of all goes.
    let b = t.register(peer("b"), filter("x"), Ordinal(0), 7, ids.next());
    assert!(b.forgotten.is_empty());
    let b2 = t.register(peer("b"), filter("y"), Ordinal(0), 8, ids.next());
    assert_eq!(b2.forgotten, vec!["l0".to_owned()]);
    let mut kept: Vec<String> = t.iter().map(|l| l.id.clone()).collect();
    kept.sort();
    assert_eq!(kept, ["l2", "l3", "l4"]);
}

#[test]
fn a_listener_is_only_its_peers_and_acks_only_move_forward() {
    let mut t = Listeners::new(Vec::new(), limits(4, 10));
    let mut ids = Ids(0);
    t.register(peer("a"), filter("x"), Ordinal(3), 0, ids.next());
    let e = t.get("l0", &peer("b"), 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert_eq!(t.get("l0", &peer("a"), 1).unwrap().last_used_ms, 1);
    assert_eq!(
        t.get("nope", &peer("a"), 1).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        t.ack("l0", Ordinal(2)),
        None,
        "behind the cursor: nothing to store"
    );
    assert_eq!(t.ack("l0", Ordinal(3)), None);
    assert_eq!(t.ack("l0", Ordinal(9)).unwrap().cursor, Ordinal(9));
    assert_eq!(
        t.ack("gone", Ordinal(9)),
        None,
        "a forgotten listener is not stored"
    );
}

#[test]
fn unused_listeners_expire_and_stored_ones_keep_their_order() {
    let stored = |id: &str, used: u64| ListenerRecord {
        id: id.into(),
        peer: peer("a"),
        filter: filter(id),
        cursor: Ordinal(0),
        created_ms: 0,
        last_used_ms: used,
    };
    // Stored out of order: the least recently used is still the first forgotten.
    let mut t = Listeners::new(
        vec![stored("new", 900), stored("old", 100), stored("mid", 500)],
        limits(3, 10),
    );
    let r = t.register(peer("a"), filter("more"), Ordinal(0), 950, || "more".into());
    assert_eq!(r.forgotten, vec!["old".to_owned()]);
    // At 1,600 ms only what was used in the last second stays.
    let mut expired = t.expire(1_600);
    expired.sort();
    assert_eq!(expired, ["mid"]);
    assert_eq!(t.len(), 2);
    assert!(t.expire(1_600).is_empty(), "expiry forgets once");
    assert_eq!(t.expire(10_000).len(), 2);
    assert!(t.is_empty());
}

#[test]
fn a_pull_with_nothing_to_say_is_held_until_its_deadline_and_never_behind_its_cursor() {
    let now = std::time::Instant::now();
    let max_wait = std::time::Duration::from_millis(25_000);
    let mut hold = PullHold::new(Ordinal(5), Ordinal(8), 0, 1024, 60_000, max_wait, now);
    assert_eq!(
        hold.start(),
        Ordinal(8),
        "what the pusher delivered is not read again"
    );
    assert_eq!(hold.limit(), 1, "a limit of 0 asks for one");
    // An empty page at the head: held, at most max_wait.
    assert_eq!(
        hold.page(false, false, Ordinal(9), Ordinal(9)),
        PullStep::Hold(now + max_wait)
    );
    assert_eq!(
        hold.start(),
        Ordinal(9),
        "the next read starts after what was scanned"
    );
    // Something to say, a cut page, or more behind: answered at once.
    assert_eq!(
        hold.page(true, false, Ordinal(10), Ordinal(10)),
        PullStep::Answer
    );
    assert_eq!(
        hold.page(false, true, Ordinal(10), Ordinal(10)),
        PullStep::Answer
    );
    assert_eq!(
        hold.page(false, false, Ordinal(10), Ordinal(12)),
        PullStep::Answer
    );
    // The answer never moves the peer's cursor back, and says when more is there.
    assert_eq!(
        hold.answer(Ordinal(3), false, Ordinal(12)),
        (Ordinal(8), true)
    );
    assert_eq!(
        hold.answer(Ordinal(12), false, Ordinal(12)),
        (Ordinal(12), false)
    );
    assert_eq!(
        hold.answer(Ordinal(12), true, Ordinal(12)),
        (Ordinal(12), true)
    );
    // A pull that asks not to wait is answered at once, even empty.
    let mut quick = PullHold::new(Ordinal(0), Ordinal(0), 5000, 1024, 0, max_wait, now);
    assert_eq!(quick.limit(), 1024);
    assert_eq!(
        quick.page(false, false, Ordinal(0), Ordinal(0)),
        PullStep::Answer
    );
}
