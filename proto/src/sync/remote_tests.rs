//! One remote's machines wired together, stepped by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::error::ErrorKind;
use crate::job::JobStatus;
use crate::retry::RetryPolicy;
use crate::sync::puller::PullerConfig;
use crate::sync::pusher::PusherConfig;
use crate::testing::op_for;

const RETRY: RetryPolicy = RetryPolicy {
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
    multiplier: 2.0,
    max_attempts: None,
};

const PULLER: PullerConfig = PullerConfig {
    limit: 100,
    long_poll: true,
    max_wait: Duration::from_secs(20),
};

fn id(s: &str) -> ReactorId {
    ReactorId::new(s).unwrap()
}

fn job(n: u64) -> JobId {
    JobId::from_bytes((n as u128).to_be_bytes())
}

/// A remote `b` known from before that pushes and pulls (listener `l1`), over a link that
/// piggybacks or not; the feed holds `feed` operations.
struct Rig {
    m: RemoteMachine,
    now: Instant,
    feed: Vec<StoredOp>,
    next_job: u64,
}

impl Rig {
    fn new(feed: u64) -> Self {
        let now = Instant::now();
        let connector = Connector::new(
            RETRY,
            id("a"),
            ("b".into(), "mem://b".into()),
            Some(id("b")),
        );
        let pusher = Pusher::new(
            PusherConfig::new(10, usize::MAX, 4, RETRY),
            Ordinal::ZERO,
            true,
        );
        let puller = Puller::new(PULLER, Ordinal::ZERO, Some("l1".into()));
        let feed = (1..=feed)
            .map(|n| StoredOp {
                ordinal: Ordinal(n),
                op: Arc::new(op_for("doc", n)),
                source: None,
            })
            .collect();
        Rig {
            m: RemoteMachine::new(now, connector, Some(pusher), Some(puller)),
            now,
            feed,
            next_job: 0,
        }
    }

    /// Every effect until the machine has none, with feed reads performed; the names of the
    /// others in order, and the others.
    fn step(&mut self) -> Vec<RemoteEffect> {
        let mut out = Vec::new();
        while let Some(e) = self.m.poll_effect() {
            match e {
                RemoteEffect::Push(PushEffect::ReadFeed { after, limit }) => {
                    let ops: Vec<StoredOp> = self
                        .feed
                        .iter()
                        .filter(|s| s.ordinal > after)
                        .take(limit)
                        .cloned()
                        .collect();
                    let to = ops.last().map_or(after, |s| s.ordinal);
                    let next = &mut self.next_job;
                    self.m.feed_read(self.now, ops, to, || {
                        *next += 1;
                        job(*next)
                    });
                }
                other => out.push(other),
            }
        }
        out
    }

    fn connect(&mut self, piggyback: bool) -> Vec<RemoteEffect> {
        // The peer is known: the pusher reads and opens batches before any session.
        let first = self.step();
        assert_eq!(names(&first)[0], "dial");
        let link = Link {
            duplex: false,
            piggyback,
        };
        self.m
            .dialed(self.now, Ok((id("b"), link)), || unreachable!());
        self.step()
    }
}

fn names(effects: &[RemoteEffect]) -> Vec<&'static str> {
    effects.iter().map(RemoteEffect::name).collect()
}

fn pushed(job: JobId) -> Pushed {
    Pushed {
        job_id: job,
        status: JobStatus::Applied,
        applied: 1,
        duplicates: 0,
        head: Ordinal(1),
        refused: vec![],
    }
}

fn pulled(cursor: u64) -> Pulled {
    Pulled {
        cursor: Ordinal(cursor),
        head: Ordinal(cursor),
        ..Pulled::default()
    }
}

#[test]
fn a_session_up_starts_the_pusher_and_the_puller_and_a_session_down_stops_them() {
    let mut r = Rig::new(3);
    let e = r.connect(false);
    assert_eq!(names(&e), ["connected", "send", "pull"]);
    assert!(
        matches!(&e[2], RemoteEffect::Pull(_, None)),
        "nothing rides"
    );
    r.m.closed(r.now, || 0.5);
    assert_eq!(names(&r.step()), ["disconnected"]);
    // The push fails as closed (not an attempt) and waits for the next session.
    r.m.push_answered(r.now, job(1), Err(Error::closed("gone")), || 0.5);
    assert_eq!(names(&r.step()), ["sent", "failed"]);
    r.m.handle_timeout(r.now + Duration::from_secs(1));
    assert_eq!(names(&r.step()), ["dial"], "the batch waits, queued");
}

#[test]
fn on_a_piggybacking_link_a_push_rides_on_the_next_pull_and_gets_its_answer() {
    let mut r = Rig::new(3);
    let e = r.connect(true);
    assert_eq!(names(&e), ["connected", "pull"]);
    let RemoteEffect::Pull(PullEffect::Pull { .. }, Some(carried)) = &e[1] else {
        panic!("the push rides on the pull: {e:?}");
    };
    assert_eq!(carried.job, job(1));
    assert!(matches!(&*carried.request, Request::Push(p) if p.job_id == job(1)));
    assert_eq!(r.m.offered(), 0);
    r.now += Duration::from_millis(5);
    r.m.pull_answered(
        r.now,
        Ok(pulled(0)),
        Some(Ok(pushed(job(1)))),
        || unreachable!(),
    );
    let e = r.step();
    assert_eq!(
        names(&e),
        [
            "sent",
            "finished",
            "cursor",
            "in_flight",
            "pulled",
            "schedule"
        ]
    );
    assert!(matches!(
        e[0],
        RemoteEffect::Push(PushEffect::Sent {
            ok: true,
            bytes: 0,
            ..
        })
    ));
}

#[test]
fn an_offer_no_pull_takes_within_the_wait_is_sent_alone() {
    let mut r = Rig::new(3);
    r.connect(true);
    // The pull under way carries the first batch; the puller is busy when the next comes.
    r.feed.extend((4..=6).map(|n| StoredOp {
        ordinal: Ordinal(n),
        op: Arc::new(op_for("doc", n)),
        source: None,
    }));
    r.m.written(r.now);
    assert_eq!(names(&r.step()), ["opened", "in_flight"]);
    assert_eq!(r.m.offered(), 1);
    assert_eq!(r.m.poll_timeout(), Some(r.now + PIGGYBACK_WAIT));
    r.m.handle_timeout(r.now + PIGGYBACK_WAIT - Duration::from_millis(1));
    assert!(r.step().is_empty(), "not before the wait ends");
    r.m.handle_timeout(r.now + PIGGYBACK_WAIT);
    let e = r.step();
    assert!(
        matches!(e.as_slice(), [RemoteEffect::Push(PushEffect::Send { job: j, .. })] if *j == job(2)),
        "{e:?}"
    );
    assert_eq!(r.m.offered(), 0);
}

#[test]
fn a_failed_pull_fails_the_push_it_carried_and_a_silent_responder_too() {
    let mut r = Rig::new(3);
    r.connect(true);
    let timeout = Error::new(ErrorKind::Timeout, "slow");
    r.m.pull_answered(r.now, Err(timeout), None, || 0.5);
    let e = r.step();
    assert_eq!(names(&e), ["sent", "failed", "failed", "schedule"]);
    assert!(matches!(
        &e[1],
        RemoteEffect::Push(PushEffect::Failed { job: j, attempts: 1, .. }) if *j == job(1)
    ));

    // A responder that answers the pull but not the push it carried is malformed.
    let mut r = Rig::new(3);
    r.connect(true);
    r.m.pull_answered(r.now, Ok(pulled(0)), None, || 0.5);
    let e = r.step();
    assert!(matches!(
        &e[1],
        RemoteEffect::Push(PushEffect::Failed { error, .. }) if error.kind() == ErrorKind::Malformed
    ));
}

#[test]
fn offers_waiting_when_the_session_goes_are_sent_alone_and_fail_as_closed() {
    let mut r = Rig::new(3);
    r.connect(true);
    r.feed.push(StoredOp {
        ordinal: Ordinal(4),
        op: Arc::new(op_for("doc", 4)),
        source: None,
    });
    r.m.written(r.now);
    r.step();
    assert_eq!(r.m.offered(), 1);
    r.m.closed(r.now, || 0.5);
    let e = r.step();
    assert_eq!(names(&e), ["disconnected", "send"]);
    assert_eq!(r.m.offered(), 0);
}

#[test]
fn stop_ends_the_session_and_the_machine() {
    let mut r = Rig::new(0);
    r.connect(false);
    assert!(!r.m.is_stopped());
    r.m.stop(r.now);
    assert_eq!(names(&r.step()), ["disconnected", "stopped"]);
    assert!(r.m.is_stopped());
}
