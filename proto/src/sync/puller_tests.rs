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

/// What the remote and the store do next, in the property below.
#[derive(Clone, Debug)]
enum Step {
    Connect(bool),
    Disconnect,
    Wake,
    /// The registration or pull out is answered: `Some(n)` brings `n` new operations (one of
    /// them refused when `refuse`), `None` fails.
    Answer(Option<u64>, bool),
    /// The apply out commits, or fails.
    Apply(bool),
    /// The ack out goes through, or fails.
    Ack(bool),
    /// The scheduler answers with this wait (ms) and idleness.
    Schedule(u64, bool),
    Wait(u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        1 => any::<bool>().prop_map(Step::Connect),
        1 => Just(Step::Disconnect),
        1 => Just(Step::Wake),
        5 => (proptest::option::weighted(0.8, 0u64..20), any::<bool>())
            .prop_map(|(n, refuse)| Step::Answer(n, refuse)),
        3 => any::<bool>().prop_map(Step::Apply),
        3 => any::<bool>().prop_map(Step::Ack),
        3 => (0u64..5_000, any::<bool>()).prop_map(|(ms, idle)| Step::Schedule(ms, idle)),
        2 => (0u64..6_000).prop_map(Step::Wait),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever the remote does, one request is out at a time, the cursor moves only by a
    /// committed apply that starts where it stands, and every refusal of a pulled operation
    /// reaches the remote in exactly one acknowledgement that went through.
    #[test]
    fn one_thing_at_a_time_and_every_refusal_reported_once(
        steps in proptest::collection::vec(step(), 0..120),
    ) {
        let (mut p, mut now) = machine(None);
        let mut out: Option<PullEffect> = None;
        let mut remote_head = 10u64;
        let mut refused_made = Vec::new();
        let mut reported = Vec::new();
        let mut next_op = 1_000u64;
        for s in steps {
            match s {
                Step::Connect(duplex) => p.connected(now, duplex),
                Step::Disconnect => p.disconnected(),
                Step::Wake => p.woken(now),
                Step::Answer(n, refuse) => match out.take() {
                    Some(PullEffect::Register { since }) => {
                        proptest::prop_assert_eq!(since, p.cursor());
                        match n {
                            Some(_) => p.registered(now, Ok("l".into())),
                            None => p.registered(now, Err(Error::new(ErrorKind::Unavailable, "down"))),
                        }
                    }
                    Some(PullEffect::Pull { cursor, .. }) => {
                        proptest::prop_assert_eq!(cursor, p.cursor());
                        match n {
                            Some(n) => {
                                remote_head = remote_head.max(cursor.0) + n;
                                let mut answer = pulled(remote_head, n, false);
                                answer.ops.clear();
                                if refuse && n > 0 {
                                    next_op += 1;
                                    let r = refusal(next_op);
                                    refused_made.push(r.id);
                                    answer.refused = vec![r];
                                }
                                p.answered(now, Ok(answer));
                            }
                            None => p.answered(now, Err(Error::new(ErrorKind::Timeout, "slow"))),
                        }
                    }
                    other => out = other,
                },
                Step::Apply(ok) => match out.take() {
                    Some(PullEffect::Apply { range, .. }) => {
                        proptest::prop_assert_eq!(range.0, p.cursor());
                        let before = p.cursor();
                        if ok {
                            p.applied(Ok(()));
                            proptest::prop_assert_eq!(p.cursor(), range.1);
                        } else {
                            p.applied(Err(Error::new(ErrorKind::Storage, "disk")));
                            proptest::prop_assert_eq!(p.cursor(), before);
                        }
                    }
                    other => out = other,
                },
                Step::Ack(ok) => match out.take() {
                    Some(PullEffect::Ack { refused, cursor, .. }) => {
                        proptest::prop_assert_eq!(cursor, p.cursor());
                        if ok {
                            reported.extend(refused.iter().map(|r| r.id));
                        }
                        p.acked(ok);
                    }
                    other => out = other,
                },
                Step::Schedule(ms, idle) => match out.take() {
                    Some(PullEffect::Schedule(_)) => {
                        p.scheduled(now, Duration::from_millis(ms), idle);
                    }
                    other => out = other,
                },
                Step::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    p.handle_timeout(now);
                }
            }
            // Collect what the machine asks for: at most one request, apply, ack or schedule.
            for e in effects(&mut p) {
                match e {
                    PullEffect::Pulled { .. }
                    | PullEffect::Failed { .. }
                    | PullEffect::ForgetListener { .. } => {}
                    waiting => {
                        proptest::prop_assert!(out.is_none(), "{waiting:?} while {out:?} is out");
                        out = Some(waiting);
                    }
                }
            }
        }
        // Every refusal goes out once the remote takes the acks: drive it until it does.
        p.connected(now, true);
        for _ in 0..1_000 {
            if reported.len() == refused_made.len() {
                break;
            }
            for e in effects(&mut p) {
                if !matches!(e, PullEffect::Pulled { .. } | PullEffect::Failed { .. }) {
                    out = Some(e);
                }
            }
            match out.take() {
                Some(PullEffect::Register { .. }) => p.registered(now, Ok("l".into())),
                Some(PullEffect::Pull { cursor, .. }) => {
                    p.answered(now, Ok(pulled(cursor.0, 0, false)));
                }
                Some(PullEffect::Apply { .. }) => p.applied(Ok(())),
                Some(PullEffect::Ack { refused, .. }) => {
                    reported.extend(refused.iter().map(|r| r.id));
                    p.acked(true);
                }
                Some(PullEffect::Schedule(_)) => p.scheduled(now, Duration::ZERO, false),
                _ => {
                    now += Duration::from_secs(10);
                    p.handle_timeout(now);
                    p.woken(now);
                }
            }
        }
        let mut made = refused_made.clone();
        made.sort();
        reported.sort();
        proptest::prop_assert_eq!(reported, made);
    }
}
