//! The pusher machine stepped by hand: every decision is visible in its effects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::error::{Error, ErrorKind, WireError};
use crate::job::JobStatus;
use crate::protocol::{Pushed, Refusal};
use crate::retry::RetryPolicy;
use crate::testing::op_for;
use crate::types::{JobId, Ordinal, ReactorId, StoredOp};

const RETRY: RetryPolicy = RetryPolicy {
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(10),
    multiplier: 2.0,
    max_attempts: Some(4),
};

/// A machine, a feed of `n` operations on one document, and a clock.
struct Rig {
    p: Pusher,
    feed: Vec<StoredOp>,
    now: Instant,
    next_job: u64,
}

impl Rig {
    fn new(ops: u64, batch_ops: usize, window: usize, peer_known: bool) -> Self {
        let feed = (1..=ops)
            .map(|n| StoredOp {
                ordinal: Ordinal(n),
                op: Arc::new(op_for("doc", n)),
                source: None,
            })
            .collect();
        let config = PusherConfig::new(batch_ops, usize::MAX, window, RETRY);
        Rig {
            p: Pusher::new(config, Ordinal::ZERO, peer_known),
            feed,
            now: Instant::now(),
            next_job: 0,
        }
    }

    fn effects(&mut self) -> Vec<PushEffect> {
        std::iter::from_fn(|| self.p.poll_effect()).collect()
    }

    /// Performs the feed reads among `effects` (and those they lead to) until the machine asks
    /// for none; returns every other effect in order.
    fn settle(&mut self, mut effects: Vec<PushEffect>) -> Vec<PushEffect> {
        let mut out = Vec::new();
        while !effects.is_empty() {
            for e in effects {
                match e {
                    PushEffect::ReadFeed { after, limit } => self.read(after, limit),
                    other => out.push(other),
                }
            }
            effects = self.effects();
        }
        out
    }

    fn read(&mut self, after: Ordinal, limit: usize) {
        let ops: Vec<StoredOp> = self
            .feed
            .iter()
            .filter(|s| s.ordinal > after)
            .take(limit)
            .cloned()
            .collect();
        let scanned_to = ops.last().map_or(after, |s| s.ordinal);
        let job = &mut self.next_job;
        self.p.feed_read(self.now, ops, scanned_to, || {
            *job += 1;
            JobId::from_bytes((*job as u128).to_be_bytes())
        });
    }

    /// A session comes up; returns what followed.
    fn connect(&mut self) -> Vec<PushEffect> {
        let now = self.now;
        self.p.connected(now);
        self.step()
    }

    fn step(&mut self) -> Vec<PushEffect> {
        let e = self.effects();
        self.settle(e)
    }

    fn advance(&mut self, by: Duration) -> Vec<PushEffect> {
        self.now += by;
        self.p.handle_timeout(self.now);
        self.step()
    }
}

fn job(n: u64) -> JobId {
    JobId::from_bytes((n as u128).to_be_bytes())
}

fn pushed(job: JobId, refused: Vec<Refusal>) -> Result<(Pushed, usize), Error> {
    Ok((
        Pushed {
            job_id: job,
            status: JobStatus::Applied,
            applied: 1,
            duplicates: 0,
            head: Ordinal(1),
            refused,
        },
        100,
    ))
}

fn refusal(n: u64, by: Option<&str>) -> Refusal {
    Refusal {
        id: op_for("doc", n).id,
        error: WireError {
            kind: "forbidden".into(),
            message: "no".into(),
        },
        by: by.map(|b| ReactorId::new(b).unwrap()),
    }
}

fn sends(effects: &[PushEffect]) -> Vec<JobId> {
    effects
        .iter()
        .filter_map(|e| match e {
            PushEffect::Send { job, .. } => Some(*job),
            _ => None,
        })
        .collect()
}

fn cursors(effects: &[PushEffect]) -> Vec<Ordinal> {
    effects
        .iter()
        .filter_map(|e| match e {
            PushEffect::Cursor(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn has(effects: &[PushEffect], name: &str) -> bool {
    effects.iter().any(|e| e.name() == name)
}

#[test]
fn an_unknown_peer_is_not_read_for_until_connected() {
    let mut r = Rig::new(3, 10, 4, false);
    assert!(r.step().is_empty(), "nothing before the peer is known");
    let e = r.connect();
    assert_eq!(sends(&e), vec![job(1)]);
    assert!(has(&e, "opened"));
    assert_eq!(r.p.in_flight(), 1);
}

#[test]
fn batches_wait_for_a_session_and_are_sent_when_it_comes() {
    let mut r = Rig::new(5, 2, 4, true);
    let e = r.step();
    assert!(sends(&e).is_empty(), "no session: nothing sent");
    assert_eq!(r.p.in_flight(), 3, "batches of 2, 2 and 1 are opened");
    assert_eq!(sends(&r.connect()), vec![job(1), job(2), job(3)]);
}

#[test]
fn the_window_bounds_batches_in_flight() {
    let mut r = Rig::new(10, 1, 3, true);
    let e = r.connect();
    assert_eq!(sends(&e).len(), 3);
    assert!(!r.p.has_room());
    // One answered: one more is read and sent.
    r.p.answered(r.now, job(1), pushed(job(1), vec![]), || {
        unreachable!("no backoff")
    });
    let e = r.step();
    assert_eq!(sends(&e), vec![job(4)]);
    assert_eq!(r.p.in_flight(), 3);
}

#[test]
fn the_cursor_moves_only_over_a_prefix_of_answered_batches() {
    let mut r = Rig::new(6, 2, 3, true);
    r.connect();
    r.p.answered(r.now, job(2), pushed(job(2), vec![]), || 0.5);
    let e = r.step();
    assert!(cursors(&e).is_empty(), "batch 1 is still out");
    assert!(has(&e, "finished"));
    r.p.answered(r.now, job(1), pushed(job(1), vec![]), || 0.5);
    let e = r.step();
    assert_eq!(cursors(&e), vec![Ordinal(4)]);
    assert_eq!(r.p.committed(), Ordinal(4));
}

#[test]
fn a_failed_request_backs_off_and_a_closed_session_does_not_count() {
    let mut r = Rig::new(1, 10, 4, true);
    r.connect();
    // The session closed under the request: no attempt counted.
    r.p.answered(r.now, job(1), Err(Error::closed("gone")), || 1.0);
    let e = r.step();
    let Some(PushEffect::Failed {
        attempts, retry_in, ..
    }) = e.iter().find(|e| e.name() == "failed").cloned()
    else {
        panic!("{e:?}")
    };
    assert_eq!((attempts, retry_in), (0, Duration::from_millis(100)));
    assert!(sends(&r.advance(Duration::from_millis(99))).is_empty());
    assert_eq!(sends(&r.advance(Duration::from_millis(1))), vec![job(1)]);
    // A timeout on a live session counts, and the backoff grows.
    for (attempt, wait) in [(1, 100), (2, 200)] {
        r.p.answered(
            r.now,
            job(1),
            Err(Error::new(ErrorKind::Timeout, "slow")),
            || 1.0,
        );
        let e = r.step();
        assert!(
            matches!(
                e.iter().find(|e| e.name() == "failed"),
                Some(PushEffect::Failed { attempts, retry_in, loud: false, .. })
                    if *attempts == attempt && *retry_in == Duration::from_millis(wait)
            ),
            "{e:?}"
        );
        assert_eq!(sends(&r.advance(Duration::from_millis(wait))), vec![job(1)]);
    }
    // An answer to a request the machine is not waiting for changes nothing.
    r.p.answered(r.now, job(2), pushed(job(2), vec![]), || 0.5);
    assert!(r.step().is_empty());
}

#[test]
fn a_batch_whose_retry_comes_while_disconnected_waits_for_the_next_session() {
    let mut r = Rig::new(1, 10, 4, true);
    r.connect();
    r.p.answered(
        r.now,
        job(1),
        Err(Error::new(ErrorKind::Unavailable, "down")),
        || 1.0,
    );
    r.p.disconnected();
    assert!(sends(&r.advance(Duration::from_secs(1))).is_empty());
    assert_eq!(sends(&r.connect()), vec![job(1)]);
}

#[test]
fn failures_get_loud_at_powers_of_two_once_the_policy_is_used_up() {
    let mut r = Rig::new(1, 10, 4, true);
    r.connect();
    let mut loud = Vec::new();
    for attempt in 1..=16u32 {
        r.p.answered(
            r.now,
            job(1),
            Err(Error::new(ErrorKind::Unavailable, "down")),
            || 0.0,
        );
        let e = r.step();
        if let Some(PushEffect::Failed { loud: true, .. }) = e.iter().find(|e| e.name() == "failed")
        {
            loud.push(attempt);
        }
        // Jitter 0: the retry is due at once.
        assert_eq!(sends(&r.advance(Duration::ZERO)), vec![job(1)]);
    }
    assert_eq!(loud, vec![4, 8, 16]);
}

#[test]
fn refusals_are_recorded_before_the_cursor_passes_them() {
    let mut r = Rig::new(2, 10, 4, true);
    r.connect();
    r.p.answered(
        r.now,
        job(1),
        pushed(job(1), vec![refusal(2, None)]),
        || 0.5,
    );
    let e = r.step();
    assert!(matches!(
        e.iter().find(|e| e.name() == "record"),
        Some(PushEffect::Record { record: Record::Refusals(v), requeued: false, .. }) if v.len() == 1
    ));
    assert!(cursors(&e).is_empty());
    // Storing them failed: tried again after a while, the slot still held.
    r.p.record_failed(r.now, job(1));
    assert!(!has(&r.advance(Duration::from_millis(999)), "record"));
    assert!(has(&r.advance(Duration::from_millis(1)), "record"));
    r.p.recorded(job(1));
    let e = r.step();
    assert_eq!(cursors(&e), vec![Ordinal(2)]);
    assert_eq!(r.p.in_flight(), 0);
}

#[test]
fn refusals_relayed_from_other_reactors_are_recorded_apart() {
    let mut r = Rig::new(1, 10, 4, true);
    r.connect();
    r.p.answered(
        r.now,
        job(1),
        pushed(job(1), vec![refusal(7, Some("c"))]),
        || 0.5,
    );
    let e = r.step();
    assert!(has(&e, "relayed"));
    assert!(!has(&e, "record"), "the batch itself was applied");
    assert_eq!(cursors(&e), vec![Ordinal(1)]);
}

#[test]
fn a_requeued_dead_letter_never_moves_the_cursor() {
    let mut r = Rig::new(0, 10, 4, true);
    r.connect();
    let ops = vec![Arc::new(op_for("doc", 1))];
    r.p.requeue(r.now, job(99), ops, (Ordinal(5), Ordinal(6)));
    assert_eq!(sends(&r.step()), vec![job(99)]);
    r.p.answered(r.now, job(99), pushed(job(99), vec![]), || 0.5);
    let e = r.step();
    assert!(matches!(
        e.iter().find(|e| e.name() == "record"),
        Some(PushEffect::Record {
            record: Record::Delivered,
            requeued: true,
            ..
        })
    ));
    r.p.recorded(job(99));
    let e = r.step();
    assert!(matches!(
        e.iter().find(|e| e.name() == "finished"),
        Some(PushEffect::Finished { requeued: true, .. })
    ));
    assert!(cursors(&e).is_empty());
    assert_eq!(r.p.committed(), Ordinal::ZERO);
}

#[test]
fn a_page_with_nothing_for_the_remote_moves_the_cursor_past_it() {
    let mut r = Rig::new(0, 10, 4, true);
    r.step();
    let now = r.now;
    r.p.feed_read(now, vec![], Ordinal(50), || unreachable!("no batch"));
    let e = r.step();
    assert_eq!(cursors(&e), vec![Ordinal(50)]);
    assert!(!has(&e, "opened"));
}

#[test]
fn an_idle_feed_is_polled_and_a_write_reads_at_once() {
    let mut r = Rig::new(0, 10, 4, true);
    r.step();
    assert_eq!(r.p.poll_timeout(), Some(r.now + Duration::from_secs(1)));
    r.feed.push(StoredOp {
        ordinal: Ordinal(1),
        op: Arc::new(op_for("doc", 1)),
        source: None,
    });
    // Written by another process: found by the poll.
    assert!(r.advance(Duration::from_millis(500)).is_empty());
    assert!(has(&r.advance(Duration::from_millis(500)), "opened"));
    // Written here: read at once.
    r.feed.push(StoredOp {
        ordinal: Ordinal(2),
        op: Arc::new(op_for("doc", 2)),
        source: None,
    });
    r.p.written();
    assert!(has(&r.step(), "opened"));
}

#[test]
fn a_failed_read_is_tried_again_later() {
    let mut r = Rig::new(3, 10, 4, true);
    let e = r.effects();
    assert!(matches!(e.as_slice(), [PushEffect::ReadFeed { .. }]));
    r.p.feed_failed(r.now);
    assert!(r.effects().is_empty());
    assert_eq!(r.p.poll_timeout(), Some(r.now + Duration::from_millis(500)));
    assert!(has(&r.advance(Duration::from_millis(500)), "opened"));
}

#[test]
fn a_draining_pusher_opens_no_more_batches() {
    let mut r = Rig::new(4, 1, 1, true);
    r.connect();
    r.p.drain();
    r.p.answered(r.now, job(1), pushed(job(1), vec![]), || 0.5);
    let e = r.step();
    assert_eq!(cursors(&e), vec![Ordinal(1)]);
    assert!(!has(&e, "opened"));
    assert_eq!(r.p.in_flight(), 0);
}

/// What the world does next, in the property below.
#[derive(Clone, Debug)]
enum Step {
    Connect,
    Disconnect,
    /// The `n`-th request out (modulo) is answered: applied, refused in part, or failed.
    Answer(usize, Outcome),
    /// The `n`-th record being stored (modulo) is stored, or storing it failed.
    Record(usize, bool),
    Write,
    Wait(u64),
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Applied,
    Refused,
    Failed,
    Closed,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let outcome = prop_oneof![
        4 => Just(Outcome::Applied),
        1 => Just(Outcome::Refused),
        1 => Just(Outcome::Failed),
        1 => Just(Outcome::Closed),
    ];
    prop_oneof![
        1 => Just(Step::Connect),
        1 => Just(Step::Disconnect),
        6 => (any::<usize>(), outcome).prop_map(|(n, o)| Step::Answer(n, o)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(n, ok)| Step::Record(n, ok)),
        1 => Just(Step::Write),
        2 => (0u64..3_000).prop_map(Step::Wait),
    ]
}

/// Requests and record writes the rig has been asked for and not yet answered.
#[derive(Default)]
struct World {
    sending: Vec<(JobId, Arc<crate::protocol::Request>)>,
    recording: Vec<JobId>,
    /// Open batches and the feed range each covers.
    open: BTreeMap<JobId, (Ordinal, Ordinal)>,
    /// Batches the remote refused in part whose records are not stored yet.
    unrecorded: std::collections::BTreeSet<JobId>,
    cursor: Ordinal,
}

impl World {
    fn take(&mut self, effects: Vec<PushEffect>) {
        for e in effects {
            match e {
                PushEffect::Opened { job, range, .. } => {
                    self.open.insert(job, range);
                }
                PushEffect::Send { job, request } => {
                    assert!(
                        !self.sending.iter().any(|(j, _)| *j == job),
                        "{job} sent twice at once"
                    );
                    self.sending.push((job, request));
                }
                PushEffect::Record { job, .. } => self.recording.push(job),
                PushEffect::Finished { job, .. } => {
                    assert!(
                        !self.unrecorded.contains(&job),
                        "{job} finished before its refusals were stored"
                    );
                    self.open.remove(&job);
                }
                PushEffect::Cursor(c) => {
                    assert!(
                        c > self.cursor,
                        "the cursor went from {} to {c}",
                        self.cursor
                    );
                    self.cursor = c;
                }
                _ => {}
            }
        }
        // The cursor never passes a batch that is not done.
        for (job, (from, _)) in &self.open {
            assert!(
                self.cursor <= *from,
                "cursor {} passed open batch {job} from {from}",
                self.cursor
            );
        }
    }
}

fn refusal_of(request: &crate::protocol::Request) -> Vec<Refusal> {
    let crate::protocol::Request::Push(push) = request else {
        return vec![];
    };
    let first = &push.strands[0].operations[0];
    vec![Refusal {
        id: first.id,
        error: WireError {
            kind: "forbidden".into(),
            message: "no".into(),
        },
        by: None,
    }]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever the remote and the store do, the cursor only moves forward, never passes a
    /// batch that is not done, the window bounds what is out, and once everything succeeds
    /// the cursor reaches the end of the feed.
    #[test]
    fn the_cursor_is_safe_and_reaches_the_end(
        ops in 1u64..120,
        batch in 1usize..12,
        window in 1usize..5,
        steps in proptest::collection::vec(step(), 0..80),
    ) {
        let mut r = Rig::new(ops, batch, window, true);
        let mut w = World::default();
        let e = r.step();
        w.take(e);
        for s in steps {
            let e = match s {
                Step::Connect => r.connect(),
                Step::Disconnect => {
                    r.p.disconnected();
                    r.step()
                }
                Step::Answer(n, outcome) if !w.sending.is_empty() => {
                    let (job, request) = w.sending.remove(n % w.sending.len());
                    let answer = match outcome {
                        Outcome::Applied => pushed(job, vec![]),
                        Outcome::Refused => {
                            w.unrecorded.insert(job);
                            pushed(job, refusal_of(&request))
                        }
                        Outcome::Failed => Err(Error::new(ErrorKind::Unavailable, "down")),
                        Outcome::Closed => Err(Error::closed("gone")),
                    };
                    r.p.answered(r.now, job, answer, || 0.5);
                    r.step()
                }
                Step::Record(n, ok) if !w.recording.is_empty() => {
                    let job = w.recording.remove(n % w.recording.len());
                    if ok {
                        w.unrecorded.remove(&job);
                        r.p.recorded(job);
                    } else {
                        r.p.record_failed(r.now, job);
                    }
                    r.step()
                }
                Step::Write => {
                    r.p.written();
                    r.step()
                }
                Step::Wait(ms) => r.advance(Duration::from_millis(ms)),
                _ => vec![],
            };
            w.take(e);
            proptest::prop_assert!(r.p.in_flight() <= window);
        }
        // From now on everything succeeds.
        let e = r.connect();
        w.take(e);
        for _ in 0..10_000 {
            if r.p.committed() == Ordinal(ops) {
                break;
            }
            let mut e = Vec::new();
            for (job, _) in std::mem::take(&mut w.sending) {
                r.p.answered(r.now, job, pushed(job, vec![]), || 0.5);
                e.extend(r.step());
            }
            for job in std::mem::take(&mut w.recording) {
                w.unrecorded.remove(&job);
                r.p.recorded(job);
                e.extend(r.step());
            }
            e.extend(r.advance(Duration::from_secs(20)));
            w.take(e);
        }
        proptest::prop_assert_eq!(r.p.committed(), Ordinal(ops));
        proptest::prop_assert_eq!(w.cursor, Ordinal(ops));
        proptest::prop_assert_eq!(r.p.in_flight(), 0);
    }
}
