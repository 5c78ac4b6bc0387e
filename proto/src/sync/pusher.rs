//! The pusher of one remote, as a state machine.
//!
//! It reads our feed after the outbox cursor in bounded batches, keeps a bounded window of them
//! in flight, retries a batch whose request failed with backoff for as long as the remote
//! exists, has the remote's refusals of single operations recorded (a dead letter keeps them),
//! and moves the cursor only over a prefix of batches the remote answered. Only per-operation
//! refusals let the cursor pass an operation the remote does not hold; connection failures never
//! count against a batch's attempts.
//!
//! Everything it decides comes out of [`Pusher::poll_effect`]; the driver performs it and feeds
//! the result back ([`Pusher::feed_read`], [`Pusher::answered`], [`Pusher::recorded`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};
use crate::protocol::{Push, Pushed, Refusal, Request, StrandUpdate};
use crate::retry::RetryPolicy;
use crate::sync::cut_to_bytes;
use crate::sync::window::OutboxWindow;
use crate::types::{JobId, Operation, Ordinal, StoredOp};

/// How the pusher is tuned.
#[derive(Clone, Copy, Debug)]
pub struct PusherConfig {
    /// Most operations read for one batch.
    pub batch_ops: usize,
    /// Most bytes of operations in one batch (on the wire).
    pub batch_bytes: usize,
    /// Most batches in flight at once (requeued dead letters included).
    pub window: usize,
    /// Backoff of a batch whose request failed.
    pub retry: RetryPolicy,
    /// How often the feed is read without being woken (writes by other processes sharing the
    /// store raise no local event).
    pub feed_poll: Duration,
    /// How soon a failed feed read is tried again.
    pub read_retry: Duration,
    /// How soon a failed write of a batch's records is tried again.
    pub record_retry: Duration,
}

impl PusherConfig {
    /// The default timings with the given sizes and retry policy.
    pub fn new(batch_ops: usize, batch_bytes: usize, window: usize, retry: RetryPolicy) -> Self {
        PusherConfig {
            batch_ops: batch_ops.max(1),
            batch_bytes,
            window: window.max(1),
            retry,
            feed_poll: Duration::from_secs(1),
            read_retry: Duration::from_millis(500),
            record_retry: Duration::from_secs(1),
        }
    }
}

/// What a batch's durable records are.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The remote refused these operations of the batch: store the refusals with a dead letter
    /// holding the refused operations.
    Refusals(Vec<Refusal>),
    /// A requeued dead letter was applied: delete it and its refusals.
    Delivered,
}

/// Something the driver must do.
#[derive(Clone, Debug)]
pub enum PushEffect {
    /// Read the feed after `after`, at most `limit` operations, and call
    /// [`Pusher::feed_read`] (or [`Pusher::feed_failed`]).
    ReadFeed {
        /// The position to read after.
        after: Ordinal,
        /// Most operations.
        limit: usize,
    },
    /// A batch exists: track it (a job handle in the outbox).
    Opened {
        /// The batch.
        job: JobId,
        /// The feed range `(from, to]` it covers.
        range: (Ordinal, Ordinal),
        /// Its operations.
        ops: Vec<Arc<Operation>>,
    },
    /// Send the batch's request on the live session and call [`Pusher::answered`].
    Send {
        /// The batch.
        job: JobId,
        /// The push request.
        request: Arc<Request>,
    },
    /// A request ended: `ok` is whether the remote answered (`refused` says whether it refused
    /// some operations), with the round trip measured from the `now` of the send to the `now`
    /// of the answer.
    Sent {
        /// The batch.
        job: JobId,
        /// Whether the remote answered.
        ok: bool,
        /// Whether it refused operations of the batch.
        refused: bool,
        /// Operations in the batch.
        ops: usize,
        /// Size of the request as the driver reported it.
        bytes: usize,
        /// The round trip.
        rtt: Duration,
    },
    /// The request failed (the batch is sent again after a backoff).
    Failed {
        /// The batch.
        job: JobId,
        /// Why.
        error: Error,
        /// Failures on a live session so far (0 when only the session closed).
        attempts: u32,
        /// When it is sent again.
        retry_in: Duration,
        /// Whether to say so loudly: the failure is not one that passes (not retryable, or the
        /// policy's attempts are used up) and the count of attempts reached a power of two.
        loud: bool,
    },
    /// The remote passed on refusals by other reactors of operations we sent earlier: record
    /// them (nothing waits for it).
    Relayed(Vec<Refusal>),
    /// Store the batch's records durably and call [`Pusher::recorded`] (or
    /// [`Pusher::record_failed`]).
    Record {
        /// The batch.
        job: JobId,
        /// What to store.
        record: Record,
        /// Whether the batch is a dead letter sent again.
        requeued: bool,
    },
    /// The batch is done; `delivered` is whether the remote answered it (every operation
    /// applied or refused and recorded).
    Finished {
        /// The batch.
        job: JobId,
        /// Whether it was a dead letter sent again.
        requeued: bool,
    },
    /// The outbox cursor moved: save it.
    Cursor(Ordinal),
    /// The number of batches in flight changed.
    InFlight(usize),
}

impl PushEffect {
    /// The effect's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            PushEffect::ReadFeed { .. } => "read_feed",
            PushEffect::Opened { .. } => "opened",
            PushEffect::Send { .. } => "send",
            PushEffect::Sent { .. } => "sent",
            PushEffect::Failed { .. } => "failed",
            PushEffect::Relayed(_) => "relayed",
            PushEffect::Record { .. } => "record",
            PushEffect::Finished { .. } => "finished",
            PushEffect::Cursor(_) => "cursor",
            PushEffect::InFlight(_) => "in_flight",
        }
    }
}

/// Where one batch is.
#[derive(Clone, Debug)]
enum Stage {
    /// Waiting for a live session.
    Queued,
    /// Sent at the given time; waiting for the answer.
    Sending { since: Instant },
    /// The last request failed; sent again at `until`.
    Backoff { until: Instant },
    /// Records being stored (`retry_at` after a failed write).
    Recording {
        record: Record,
        retry_at: Option<Instant>,
    },
}

#[derive(Debug)]
struct Batch {
    range: (Ordinal, Ordinal),
    request: Arc<Request>,
    ops: usize,
    requeued: bool,
    attempts: u32,
    stage: Stage,
}

/// One remote's pusher.
#[derive(Debug)]
pub struct Pusher {
    config: PusherConfig,
    window: OutboxWindow,
    read_pos: Ordinal,
    batches: BTreeMap<JobId, Batch>,
    /// Whether a live session exists.
    connected: bool,
    /// Whether we know who the remote is (what counts as its echo depends on it): no read
    /// before.
    peer_known: bool,
    /// A feed read is being performed.
    reading: bool,
    /// Something may be in the feed: read when there is room.
    want_read: bool,
    /// When the feed is read again without being woken.
    poll_at: Option<Instant>,
    draining: bool,
    effects: VecDeque<PushEffect>,
    /// Batches in flight as last reported.
    reported_in_flight: usize,
}

impl Pusher {
    /// A pusher whose outbox cursor is `committed`. If `peer_known`, it reads the feed at once;
    /// else after the first [`Pusher::connected`].
    pub fn new(config: PusherConfig, committed: Ordinal, peer_known: bool) -> Self {
        let mut p = Pusher {
            config,
            window: OutboxWindow::new(committed),
            read_pos: committed,
            batches: BTreeMap::new(),
            connected: false,
            peer_known,
            reading: false,
            want_read: true,
            poll_at: None,
            draining: false,
            effects: VecDeque::new(),
            reported_in_flight: 0,
        };
        p.maybe_read();
        p
    }

    /// The next effect to perform.
    pub fn poll_effect(&mut self) -> Option<PushEffect> {
        self.effects.pop_front()
    }

    /// When the pusher wants [`Pusher::handle_timeout`] called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let batches = self.batches.values().filter_map(|b| match b.stage {
            Stage::Backoff { until } => Some(until),
            Stage::Recording {
                retry_at: Some(at), ..
            } => Some(at),
            _ => None,
        });
        batches.chain(self.poll_at).min()
    }

    /// The outbox cursor.
    pub fn committed(&self) -> Ordinal {
        self.window.committed()
    }

    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.batches.len()
    }

    /// Whether another batch fits in the window (a requeued dead letter counts like any).
    pub fn has_room(&self) -> bool {
        self.batches.len() < self.config.window
    }

    /// A live session to the remote exists (and the remote is known).
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        if !self.peer_known {
            self.peer_known = true;
            self.want_read = true;
        }
        let queued: Vec<JobId> = self
            .batches
            .iter()
            .filter(|(_, b)| matches!(b.stage, Stage::Queued))
            .map(|(id, _)| *id)
            .collect();
        for job in queued {
            self.send(job, now);
        }
        self.maybe_read();
    }

    /// The session went away; batches wait for the next one.
    pub fn disconnected(&mut self) {
        self.connected = false;
    }

    /// Operations were written here: the feed may hold something to send.
    pub fn written(&mut self) {
        self.want_read = true;
        self.maybe_read();
    }

    /// No new batches from now on; those in flight finish.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// A feed read asked for by [`PushEffect::ReadFeed`] returned `ops` and looked at the feed
    /// up to `scanned_to`. `next_id` mints the id of a batch if one is opened.
    pub fn feed_read(
        &mut self,
        now: Instant,
        ops: Vec<StoredOp>,
        scanned_to: Ordinal,
        next_id: impl FnOnce() -> JobId,
    ) {
        self.reading = false;
        if scanned_to <= self.read_pos {
            // Nothing new: look again later, or when woken.
            self.poll_at = Some(now + self.config.feed_poll);
            self.maybe_read();
            return;
        }
        let (ops, to, _) = cut_to_bytes(ops, scanned_to, self.config.batch_bytes);
        let from = self.read_pos;
        self.read_pos = to;
        self.want_read = true;
        if ops.is_empty() {
            // Nothing there is for this remote: the cursor passes it.
            if let Some(c) = self.window.skip(from, to) {
                self.effects.push_back(PushEffect::Cursor(c));
            }
        } else {
            self.window.open(from, to);
            let ops: Vec<Arc<Operation>> = ops.into_iter().map(|s| s.op).collect();
            self.open(next_id(), (from, to), ops, false, now);
        }
        self.maybe_read();
    }

    /// The feed read failed; it is tried again soon.
    pub fn feed_failed(&mut self, now: Instant) {
        self.reading = false;
        self.poll_at = Some(now + self.config.read_retry);
    }

    /// A dead letter is to be sent again as batch `job` covering `range` (the driver checks
    /// [`Pusher::has_room`] first). It never moves the cursor.
    pub fn requeue(
        &mut self,
        now: Instant,
        job: JobId,
        ops: Vec<Arc<Operation>>,
        range: (Ordinal, Ordinal),
    ) {
        if self.batches.contains_key(&job) {
            return;
        }
        self.open(job, range, ops, true, now);
    }

    /// The remote answered the request of batch `job` (`bytes` is the request's size, for the
    /// report), or the request failed. `jitter` gives a number in `[0, 1)` to spread the
    /// backoff after a failure, asked only then.
    pub fn answered(
        &mut self,
        now: Instant,
        job: JobId,
        answer: Result<(Pushed, usize), Error>,
        jitter: impl FnOnce() -> f64,
    ) {
        let Some(batch) = self.batches.get_mut(&job) else {
            return;
        };
        let Stage::Sending { since } = batch.stage else {
            return;
        };
        let rtt = now.saturating_duration_since(since);
        match answer {
            Ok((mut pushed, bytes)) => {
                // Refusals the remote passes on from other reactors (they name who refused)
                // are about earlier batches: they are recorded apart.
                let (relayed, own): (Vec<_>, Vec<_>) =
                    pushed.refused.drain(..).partition(|r| r.by.is_some());
                if !relayed.is_empty() {
                    self.effects.push_back(PushEffect::Relayed(relayed));
                }
                self.effects.push_back(PushEffect::Sent {
                    job,
                    ok: true,
                    refused: !own.is_empty(),
                    ops: batch.ops,
                    bytes,
                    rtt,
                });
                let record = if !own.is_empty() {
                    Record::Refusals(own)
                } else if batch.requeued {
                    Record::Delivered
                } else {
                    self.finish(job);
                    return;
                };
                batch.stage = Stage::Recording {
                    record: record.clone(),
                    retry_at: None,
                };
                self.effects.push_back(PushEffect::Record {
                    job,
                    record,
                    requeued: batch.requeued,
                });
            }
            Err(error) => {
                // A closed session is the connector's business; only failures on a live
                // session count towards the backoff.
                if error.kind() != ErrorKind::Closed {
                    batch.attempts += 1;
                }
                let attempts = batch.attempts;
                let policy = self.config.retry;
                // Not a verdict on any operation: the batch is tried for as long as the remote
                // exists, louder as the failures add up.
                let loud = attempts > 0
                    && (!error.is_retryable() || policy.exhausted(attempts))
                    && attempts.is_power_of_two();
                let retry_in = policy.backoff(attempts.max(1), jitter());
                batch.stage = Stage::Backoff {
                    until: now + retry_in,
                };
                self.effects.push_back(PushEffect::Sent {
                    job,
                    ok: false,
                    refused: false,
                    ops: batch.ops,
                    bytes: 0,
                    rtt,
                });
                self.effects.push_back(PushEffect::Failed {
                    job,
                    error,
                    attempts,
                    retry_in,
                    loud,
                });
            }
        }
    }

    /// The records of batch `job` are stored: the batch is done.
    pub fn recorded(&mut self, job: JobId) {
        if self
            .batches
            .get(&job)
            .is_some_and(|b| matches!(b.stage, Stage::Recording { .. }))
        {
            self.finish(job);
        }
    }

    /// Storing the records of batch `job` failed: they are stored again later (the batch
    /// holds its window slot, and the cursor does not pass it, until they are).
    pub fn record_failed(&mut self, now: Instant, job: JobId) {
        if let Some(Batch {
            stage: Stage::Recording { retry_at, .. },
            ..
        }) = self.batches.get_mut(&job)
        {
            *retry_at = Some(now + self.config.record_retry);
        }
    }

    /// Time passed: batches whose backoff ended are sent again, records are stored again, the
    /// feed is polled.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_at.is_some_and(|at| at <= now) {
            self.poll_at = None;
            self.want_read = true;
        }
        let mut resend = Vec::new();
        for (job, b) in &mut self.batches {
            match &mut b.stage {
                Stage::Backoff { until } if *until <= now => resend.push(*job),
                Stage::Recording { record, retry_at } if retry_at.is_some_and(|at| at <= now) => {
                    *retry_at = None;
                    self.effects.push_back(PushEffect::Record {
                        job: *job,
                        record: record.clone(),
                        requeued: b.requeued,
                    });
                }
                _ => {}
            }
        }
        for job in resend {
            self.send(job, now);
        }
        self.maybe_read();
    }

    fn open(
        &mut self,
        job: JobId,
        range: (Ordinal, Ordinal),
        ops: Vec<Arc<Operation>>,
        requeued: bool,
        now: Instant,
    ) {
        let request = Arc::new(Request::Push(Push {
            job_id: job,
            strands: StrandUpdate::group(&ops),
        }));
        self.batches.insert(
            job,
            Batch {
                range,
                request,
                ops: ops.len(),
                requeued,
                attempts: 0,
                stage: Stage::Queued,
            },
        );
        self.effects
            .push_back(PushEffect::Opened { job, range, ops });
        self.report_in_flight();
        self.send(job, now);
    }

    fn send(&mut self, job: JobId, now: Instant) {
        let connected = self.connected;
        let Some(b) = self.batches.get_mut(&job) else {
            return;
        };
        if !connected {
            b.stage = Stage::Queued;
            return;
        }
        b.stage = Stage::Sending { since: now };
        self.effects.push_back(PushEffect::Send {
            job,
            request: b.request.clone(),
        });
    }

    fn finish(&mut self, job: JobId) {
        let Some(b) = self.batches.remove(&job) else {
            return;
        };
        self.effects.push_back(PushEffect::Finished {
            job,
            requeued: b.requeued,
        });
        if !b.requeued
            && let Some(c) = self.window.finish(b.range.0)
        {
            self.effects.push_back(PushEffect::Cursor(c));
        }
        self.report_in_flight();
        self.want_read = true;
        self.maybe_read();
    }

    fn report_in_flight(&mut self) {
        let n = self.batches.len();
        if n != self.reported_in_flight {
            self.reported_in_flight = n;
            self.effects.push_back(PushEffect::InFlight(n));
        }
    }

    fn maybe_read(&mut self) {
        if self.want_read && self.peer_known && !self.reading && !self.draining && self.has_room() {
            self.want_read = false;
            self.reading = true;
            self.effects.push_back(PushEffect::ReadFeed {
                after: self.read_pos,
                limit: self.config.batch_ops,
            });
        }
    }
}

#[cfg(test)]
#[path = "pusher_tests.rs"]
mod tests;
