//! Every metric syncline's core records, in one place.
//!
//! Libraries only call the `metrics` macros; the binary installs the Prometheus exporter.
//! Names follow `syncline_<name>_<unit>[_total]`; labels are bounded (remote names come from
//! configuration, directions and statuses are fixed sets). `docs/metrics.md` lists them.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Queue depth after taking a group of jobs.
pub(crate) fn queue_depth(depth: usize) {
    gauge!("syncline_queue_depth_jobs").set(depth as f64);
}

/// One store commit by the executor.
pub(crate) fn commit(elapsed: Duration, ops: usize) {
    counter!("syncline_commits_total").increment(1);
    histogram!("syncline_commit_duration_seconds").record(elapsed.as_secs_f64());
    histogram!("syncline_commit_size_ops").record(ops as f64);
}

/// New operations written, by where they came from.
pub(crate) fn ops_written(local: usize, remote: usize) {
    if local > 0 {
        counter!("syncline_ops_submitted_total").increment(local as u64);
    }
    if remote > 0 {
        counter!("syncline_ops_applied_total").increment(remote as u64);
    }
}

/// Received operations that were already stored.
pub(crate) fn ops_duplicate(n: usize) {
    if n > 0 {
        counter!("syncline_ops_duplicate_total").increment(n as u64);
    }
}

/// A batch pushed to a remote finished.
pub(crate) fn push_done(
    remote: &str,
    ops: usize,
    bytes: usize,
    status: &'static str,
    rtt: Duration,
) {
    let labels = [("remote", remote.to_owned()), ("status", status.to_owned())];
    counter!("syncline_batches_total", &labels).increment(1);
    if status == "applied" {
        counter!("syncline_ops_pushed_total", "remote" => remote.to_owned()).increment(ops as u64);
        counter!("syncline_bytes_total", "remote" => remote.to_owned(), "direction" => "out")
            .increment(bytes as u64);
        histogram!("syncline_push_duration_seconds", "remote" => remote.to_owned())
            .record(rtt.as_secs_f64());
    }
}

/// A pull from a remote finished.
pub(crate) fn pull_done(remote: &str, ops: usize, bytes: usize, ok: bool, rtt: Duration) {
    let status = if ok { "ok" } else { "error" };
    counter!("syncline_pulls_total", "remote" => remote.to_owned(), "status" => status)
        .increment(1);
    if ok {
        counter!("syncline_ops_pulled_total", "remote" => remote.to_owned()).increment(ops as u64);
        counter!("syncline_bytes_total", "remote" => remote.to_owned(), "direction" => "in")
            .increment(bytes as u64);
        histogram!("syncline_pull_duration_seconds", "remote" => remote.to_owned())
            .record(rtt.as_secs_f64());
    }
}

/// A retry was scheduled.
pub(crate) fn retry(remote: &str, direction: &'static str) {
    counter!("syncline_retries_total", "remote" => remote.to_owned(), "direction" => direction)
        .increment(1);
}

/// A batch went to the dead-letter store.
pub(crate) fn dead_letter(remote: &str) {
    counter!("syncline_dead_letters_total", "remote" => remote.to_owned()).increment(1);
}

/// Lag of a remote, in operations.
pub(crate) fn lag(remote: &str, outbox: u64, inbox: u64) {
    gauge!("syncline_outbox_lag_ops", "remote" => remote.to_owned()).set(outbox as f64);
    gauge!("syncline_inbox_lag_ops", "remote" => remote.to_owned()).set(inbox as f64);
}

/// The interval chosen for a remote's next pull.
pub(crate) fn pull_interval(remote: &str, interval: Duration) {
    gauge!("syncline_pull_interval_seconds", "remote" => remote.to_owned())
        .set(interval.as_secs_f64());
}

/// Whether a remote is connected (1) or not (0).
pub(crate) fn connected(remote: &str, up: bool) {
    gauge!("syncline_remote_connected", "remote" => remote.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Frames received with an error answer (malformed, too large, wrong version).
pub(crate) fn frame_rejected(reason: &'static str) {
    counter!("syncline_frames_rejected_total", "reason" => reason).increment(1);
}
