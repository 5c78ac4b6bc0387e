//! The puller machine stepped by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::error::{Error, ErrorKind, WireError};
use crate::protocol::Refusal;
use crate::testing::op_for;
use crate::types::Ordinal;

const CONFIG: PullerConfig = PullerConfig {
    limit: 100,
    long_poll: true,
    max_wait: Duration::from_secs(20),
};

fn machine(listener: Option<&str>) -> (Puller, Instant) {
    (
        Puller::new(CONFIG, Ordinal(10), listener.map(str::to_string)),
        Instant::now(),
    )
}

/// A machine with listener `l1` whose first pull is out.
fn pulling() -> (Puller, Instant) {
    let (mut p, now) = machine(Some("l1"));
    p.connected(now, true);
    effects(&mut p);
    (p, now)
}

fn effects(p: &mut Puller) -> Vec<PullEffect> {
    std::iter::from_fn(|| p.poll_effect()).collect()
}

fn names(effects: &[PullEffect]) -> Vec<&'static str> {
    effects.iter().map(PullEffect::name).collect()
}

fn pulled(cursor: u64, ops: u64, has_more: bool) -> Pulled {
    Pulled {
        cursor: Ordinal(cursor),
        head: Ordinal(cursor + u64::from(has_more)),
        has_more,
        ops: (0..ops).map(|n| Arc::new(op_for("doc", n))).collect(),
        received: ops as usize,
        refused: vec![],
        bytes: 10,
    }
}

fn refusal(n: u64) -> Refusal {
    Refusal {
        id: op_for("doc", n).id,
        error: WireError {
            kind: "forbidden".into(),
            message: "no".into(),
        },
        by: None,
    }
}

#[test]
fn it_registers_once_then_pulls_after_its_cursor() {
    let (mut p, now) = machine(None);
    assert!(effects(&mut p).is_empty(), "nothing before a session");
    p.connected(now, true);
    assert!(matches!(
        effects(&mut p).as_slice(),
        [PullEffect::Register { since: Ordinal(10) }]
    ));
    p.registered(now, Ok("l1".into()));
    assert!(matches!(
        effects(&mut p).as_slice(),
        [PullEffect::Pull { listener, cursor: Ordinal(10), limit: 100, hold: Duration::ZERO }]
            if listener == "l1"
    ));
    assert_eq!(p.listener(), Some("l1"));
}

#[test]
fn a_pull_with_operations_applies_then_acknowledges_then_schedules() {
    let (mut p, now) = pulling();
    p.answered(now + Duration::from_millis(7), Ok(pulled(15, 5, true)));
    let e = effects(&mut p);
    assert!(matches!(
        e.as_slice(),
        [PullEffect::Apply { ops, range: (Ordinal(10), Ordinal(15)) }] if ops.len() == 5
    ));
    assert_eq!(p.cursor(), Ordinal(10), "not before the commit");
    p.applied(Ok(()));
    let e = effects(&mut p);
    assert_eq!(names(&e), ["pulled", "ack"]);
    assert!(matches!(
        &e[0],
        PullEffect::Pulled { cursor: Ordinal(15), has_more: true, ops: 5, rtt, .. }
            if *rtt == Duration::from_millis(7)
    ));
    assert_eq!(p.cursor(), Ordinal(15));
    p.acked(true);
    let e = effects(&mut p);
    assert!(matches!(
        e.as_slice(),
        [PullEffect::Schedule(PullReport {
            ok: true,
            ops: 5,
            has_more: true,
            ..
        })]
    ));
    // The remote has more: the scheduler says at once.
    p.scheduled(now, Duration::ZERO, false);
    assert_eq!(names(&effects(&mut p)), ["pull"]);
}

#[test]
fn an_empty_pull_is_not_acknowledged_and_waits_for_the_scheduler() {
    let (mut p, now) = pulling();
    p.answered(now, Ok(pulled(10, 0, false)));
    assert_eq!(names(&effects(&mut p)), ["pulled", "schedule"]);
    p.scheduled(now, Duration::from_secs(2), true);
    assert!(
        effects(&mut p).is_empty(),
        "a duplex link is not long-polled"
    );
    assert_eq!(p.poll_timeout(), Some(now + Duration::from_secs(2)));
    p.handle_timeout(now + Duration::from_millis(1999));
    assert!(effects(&mut p).is_empty());
    p.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(names(&effects(&mut p)), ["pull"]);
}

#[test]
fn an_idle_remote_without_pokes_is_long_polled() {
    let (mut p, now) = machine(Some("l1"));
    p.connected(now, false);
    effects(&mut p);
    p.answered(now, Ok(pulled(10, 0, false)));
    effects(&mut p);
    p.scheduled(now, Duration::from_secs(60), true);
    assert!(matches!(
        effects(&mut p).as_slice(),
        [PullEffect::Pull { hold, .. }] if *hold == Duration::from_secs(20)
    ));
    // A held pull's time is waiting, not the network.
    p.answered(now + Duration::from_secs(5), Ok(pulled(11, 1, false)));
    p.applied(Ok(()));
    let e = effects(&mut p);
    assert!(matches!(&e[1], PullEffect::Pulled { rtt, .. } if rtt.is_zero()));
    // Not idle, or a failed pull: no hold.
    p.acked(true);
    effects(&mut p);
    p.scheduled(now, Duration::from_secs(1), false);
    assert!(effects(&mut p).is_empty());
}

#[test]
fn a_wake_pulls_now_or_right_after_the_pull_under_way() {
    let (mut p, now) = pulling();
    p.woken(now);
    assert!(effects(&mut p).is_empty(), "one pull at a time");
    p.answered(now, Ok(pulled(10, 0, false)));
    effects(&mut p);
    p.scheduled(now, Duration::from_secs(30), false);
    assert_eq!(names(&effects(&mut p)), ["pull"], "the wake was kept");
    p.answered(now, Ok(pulled(10, 0, false)));
    effects(&mut p);
    p.scheduled(now, Duration::from_secs(30), false);
    assert!(effects(&mut p).is_empty());
    p.woken(now);
    assert_eq!(names(&effects(&mut p)), ["pull"]);
}

#[test]
fn a_forgotten_listener_is_registered_again_at_once() {
    let (mut p, now) = machine(Some("old"));
    p.connected(now, true);
    effects(&mut p);
    p.answered(now, Err(Error::not_found("no listener old")));
    assert_eq!(names(&effects(&mut p)), ["forget_listener", "register"]);
    assert_eq!(p.listener(), None);
}

#[test]
fn failures_are_reported_and_scheduled_like_any_pull() {
    let (mut p, now) = machine(None);
    p.connected(now, true);
    effects(&mut p);
    p.registered(now, Err(Error::new(ErrorKind::Unavailable, "down")));
    let e = effects(&mut p);
    assert_eq!(names(&e), ["failed", "schedule"]);
    assert!(matches!(&e[1], PullEffect::Schedule(r) if !r.ok));
    p.scheduled(now, Duration::from_millis(100), true);
    p.handle_timeout(now + Duration::from_millis(100));
    assert_eq!(names(&effects(&mut p)), ["register"]);
    p.registered(now, Ok("l".into()));
    effects(&mut p);
    // A responder moving the cursor back is not believed.
    p.answered(now, Ok(pulled(3, 0, false)));
    assert!(matches!(
        effects(&mut p).as_slice(),
        [PullEffect::Failed { error }, PullEffect::Schedule(_)] if error.kind() == ErrorKind::Malformed
    ));
    assert_eq!(p.cursor(), Ordinal(10));
}

#[test]
fn a_failed_apply_keeps_the_cursor() {
    let (mut p, now) = pulling();
    p.answered(now, Ok(pulled(12, 2, false)));
    effects(&mut p);
    p.applied(Err(Error::new(ErrorKind::Storage, "disk full")));
    assert_eq!(names(&effects(&mut p)), ["failed", "schedule"]);
    assert_eq!(p.cursor(), Ordinal(10));
}

#[test]
fn refusals_ride_on_the_next_ack_that_goes_through() {
    let (mut p, now) = pulling();
    let mut answer = pulled(12, 1, false);
    answer.received = 2;
    answer.refused = vec![refusal(1)];
    p.answered(now, Ok(answer));
    effects(&mut p);
    p.applied(Ok(()));
    let e = effects(&mut p);
    assert!(
        matches!(&e[1], PullEffect::Ack { refused, cursor: Ordinal(12), .. } if refused.len() == 1)
    );
    p.acked(false);
    effects(&mut p);
    p.scheduled(now, Duration::from_secs(1), false);
    p.report(vec![refusal(2)]);
    p.handle_timeout(now + Duration::from_secs(1));
    effects(&mut p);
    // Nothing new, but refusals to report: acknowledged anyway, the older first.
    p.answered(now, Ok(pulled(12, 0, false)));
    let e = effects(&mut p);
    assert!(matches!(
        &e[1],
        PullEffect::Ack { refused, .. }
            if refused.iter().map(|r| r.id).collect::<Vec<_>>() == [refusal(1).id, refusal(2).id]
    ));
}

#[test]
fn no_pull_without_a_session() {
    let (mut p, now) = machine(Some("l1"));
    p.woken(now);
    assert!(effects(&mut p).is_empty());
    p.connected(now, true);
    effects(&mut p);
    p.disconnected();
    p.answered(now, Err(Error::closed("gone")));
    effects(&mut p);
    p.scheduled(now, Duration::ZERO, false);
    assert!(effects(&mut p).is_empty(), "waits for the next session");
    assert_eq!(p.poll_timeout(), None);
    p.connected(now, true);
    assert_eq!(names(&effects(&mut p)), ["pull"]);
}
