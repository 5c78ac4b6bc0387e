//! Every metric syncline's core records, in one place.
//!
//! Libraries only call the `metrics` macros; the binary installs the Prometheus exporter.
//! Names follow `syncline_<name>_<unit>[_total]`; labels are bounded: directions, statuses and
//! reasons are fixed sets, and remote names (which the API can add) pass through
//! [`remote_label`], which gives the first [`set_label_limits`] remotes their own label and
//! the rest `other`. `docs/metrics.md` lists them.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use parking_lot::Mutex;

use crate::sync::SyncStatus;

/// The label value remotes beyond the label limit share.
pub const OTHER: &str = "other";

static MAX_REMOTE_LABELS: AtomicUsize = AtomicUsize::new(64);
static MAX_PEER_LABELS: AtomicUsize = AtomicUsize::new(64);
static REMOTE_LABELS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// How many remotes get a label of their own (process-wide; the node sets it from
/// `metrics.max_remote_labels`), and how many listening peers in `syncline_listener_lag_ops`.
pub fn set_label_limits(remotes: usize, peers: usize) {
    MAX_REMOTE_LABELS.store(remotes, Ordering::Relaxed);
    MAX_PEER_LABELS.store(peers, Ordering::Relaxed);
}

/// The `remote` label for a remote: its name while fewer than the limit have one (configured
/// remotes start first, so they get theirs), else [`OTHER`].
pub fn remote_label(name: &str) -> String {
    let mut labels = REMOTE_LABELS.lock();
    let labels = labels.get_or_insert_with(HashSet::new);
    if labels.contains(name) {
        return name.to_owned();
    }
    if labels.len() < MAX_REMOTE_LABELS.load(Ordering::Relaxed) && name != OTHER {
        labels.insert(name.to_owned());
        return name.to_owned();
    }
    OTHER.to_owned()
}

/// A remote was removed: its label is free again, and its series leave `/metrics` (see
/// [`render_status`]).
pub(crate) fn remote_removed(name: &str) {
    if let Some(labels) = REMOTE_LABELS.lock().as_mut() {
        labels.remove(name);
    }
}

/// Makes the exporter's text true to `status`: drops the series of remotes that no longer
/// exist (the exporter keeps every series it ever saw), and appends the gauges computed from
/// the status, the same source as `GET /v1/sync/status`: `syncline_dead_letters`,
/// `syncline_remote_last_success_timestamp_seconds` (per remote) and
/// `syncline_listener_lag_ops` (per listening peer, the largest lag of its listeners; beyond
/// the peer label limit the rest are one `other` series with their largest lag).
pub fn render_status(exported: &str, status: &SyncStatus) -> String {
    let labelled: Vec<(String, &crate::sync::RemoteStatus)> = status
        .remotes
        .iter()
        .map(|r| (remote_label(&r.name), r))
        .collect();
    let live: HashSet<&str> = labelled.iter().map(|(l, _)| l.as_str()).collect();
    let mut out = String::with_capacity(exported.len() + 1024);
    for line in exported.lines() {
        if !line.starts_with('#')
            && let Some(value) = label_value(line, "remote")
            && value != OTHER
            && !live.contains(value)
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let mut letters: BTreeMap<String, usize> = BTreeMap::new();
    let mut success: BTreeMap<String, u64> = BTreeMap::new();
    for (label, r) in labelled {
        *letters.entry(label.clone()).or_default() += r.dead_letters;
        if let Some(ms) = r.last_success_ms {
            let e = success.entry(label).or_default();
            *e = (*e).max(ms);
        }
    }
    out.push_str(
        "# HELP syncline_dead_letters Dead letters kept (refused operations waiting to be \
         requeued), by remote.\n# TYPE syncline_dead_letters gauge\n",
    );
    for (remote, n) in &letters {
        let _ = writeln!(out, "syncline_dead_letters{{remote=\"{remote}\"}} {n}");
    }
    out.push_str(
        "# HELP syncline_remote_last_success_timestamp_seconds When a push or pull with the \
         remote last succeeded (Unix time).\n\
         # TYPE syncline_remote_last_success_timestamp_seconds gauge\n",
    );
    for (remote, ms) in &success {
        let _ = writeln!(
            out,
            "syncline_remote_last_success_timestamp_seconds{{remote=\"{remote}\"}} {}",
            *ms as f64 / 1000.0
        );
    }
    let mut by_peer: BTreeMap<String, u64> = BTreeMap::new();
    for l in &status.listeners {
        let e = by_peer.entry(l.peer.to_string()).or_default();
        *e = (*e).max(l.lag);
    }
    let mut peers: Vec<(String, u64)> = by_peer.into_iter().collect();
    peers.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let max = MAX_PEER_LABELS.load(Ordering::Relaxed).max(1);
    if peers.len() > max {
        let rest = peers.split_off(max - 1);
        let worst = rest.iter().map(|p| p.1).max().unwrap_or(0);
        peers.push((OTHER.to_owned(), worst));
    }
    out.push_str(
        "# HELP syncline_listener_lag_ops Our feed after the cursor a listening peer \
         acknowledged (its largest listener), by peer.\n\
         # TYPE syncline_listener_lag_ops gauge\n",
    );
    for (peer, lag) in &peers {
        let _ = writeln!(out, "syncline_listener_lag_ops{{peer=\"{peer}\"}} {lag}");
    }
    out
}

/// The value of label `name` in a Prometheus text line, if it has one.
fn label_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let labels = &line[line.find('{')? + 1..line.find('}')?];
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

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
    let labels = [
        ("remote", remote_label(remote)),
        ("status", status.to_owned()),
    ];
    counter!("syncline_batches_total", &labels).increment(1);
    if status == "applied" {
        counter!("syncline_ops_pushed_total", "remote" => remote_label(remote))
            .increment(ops as u64);
        counter!("syncline_bytes_total", "remote" => remote_label(remote), "direction" => "out")
            .increment(bytes as u64);
        histogram!("syncline_push_duration_seconds", "remote" => remote_label(remote))
            .record(rtt.as_secs_f64());
    }
}

/// A pull from a remote finished.
pub(crate) fn pull_done(remote: &str, ops: usize, bytes: usize, ok: bool, rtt: Duration) {
    let status = if ok { "ok" } else { "error" };
    counter!("syncline_pulls_total", "remote" => remote_label(remote), "status" => status)
        .increment(1);
    if ok {
        counter!("syncline_ops_pulled_total", "remote" => remote_label(remote))
            .increment(ops as u64);
        counter!("syncline_bytes_total", "remote" => remote_label(remote), "direction" => "in")
            .increment(bytes as u64);
        histogram!("syncline_pull_duration_seconds", "remote" => remote_label(remote))
            .record(rtt.as_secs_f64());
    }
}

/// A retry was scheduled.
pub(crate) fn retry(remote: &str, direction: &'static str) {
    counter!("syncline_retries_total", "remote" => remote_label(remote), "direction" => direction)
        .increment(1);
}

/// A batch went to the dead-letter store.
pub(crate) fn dead_letter(remote: &str) {
    counter!("syncline_dead_letters_total", "remote" => remote_label(remote)).increment(1);
}

/// Received operations this reactor refused, by reason (the error kind) and how they came
/// (`push` or `pull`).
pub(crate) fn ops_refused(how: &'static str, kind: &'static str, n: usize) {
    counter!("syncline_ops_refused_total", "via" => how, "reason" => kind).increment(n as u64);
}

/// Operations of ours a peer refused, by reason.
pub(crate) fn ops_refused_by_peer(kind: &str, n: usize) {
    counter!("syncline_ops_refused_by_peer_total", "reason" => kind.to_owned()).increment(n as u64);
}

/// Registers a remote's series at zero, so that they exist (and alerts can be written on
/// them) before the first event: connected 0, lags, dead letters and retries.
pub(crate) fn remote_started(remote: &str, outbox_lag: u64, inbox_lag: u64) {
    connected(remote, false);
    lag(remote, outbox_lag, inbox_lag);
    counter!("syncline_dead_letters_total", "remote" => remote_label(remote)).increment(0);
    for direction in ["push", "pull"] {
        counter!("syncline_retries_total", "remote" => remote_label(remote), "direction" => direction)
            .increment(0);
    }
}

/// Lag of a remote, in operations.
pub(crate) fn lag(remote: &str, outbox: u64, inbox: u64) {
    gauge!("syncline_outbox_lag_ops", "remote" => remote_label(remote)).set(outbox as f64);
    gauge!("syncline_inbox_lag_ops", "remote" => remote_label(remote)).set(inbox as f64);
}

/// The interval chosen for a remote's next pull.
pub(crate) fn pull_interval(remote: &str, interval: Duration) {
    gauge!("syncline_pull_interval_seconds", "remote" => remote_label(remote))
        .set(interval.as_secs_f64());
}

/// Whether a remote is connected (1) or not (0).
pub(crate) fn connected(remote: &str, up: bool) {
    gauge!("syncline_remote_connected", "remote" => remote_label(remote)).set(if up {
        1.0
    } else {
        0.0
    });
}

/// A frame sent (`out`) or received (`in`) by a session: every message, requests, responses
/// and notifications, as encoded (the transport's own framing is not counted).
pub(crate) fn frame_bytes(direction: &'static str, len: usize) {
    counter!("syncline_frame_bytes_total", "direction" => direction).increment(len as u64);
    counter!("syncline_frames_total", "direction" => direction).increment(1);
}

/// Sessions peers hold open with us (that said hello).
pub(crate) fn sessions(n: usize) {
    gauge!("syncline_sessions").set(n as f64);
}

/// Pull listeners peers registered with us.
pub(crate) fn listeners(n: usize) {
    gauge!("syncline_listeners").set(n as f64);
}

/// A session a peer opened was refused or closed by a limit: no hello in time
/// (`hello_timeout`), too many sessions (`max_sessions`), or its peer opened too many
/// (`max_sessions_per_peer`, the oldest is closed).
pub(crate) fn session_refused(reason: &'static str) {
    counter!("syncline_sessions_refused_total", "reason" => reason).increment(1);
}

/// Frames received with an error answer (malformed, too large, wrong version); transports
/// that answer frames themselves (the HTTP sync routes) count theirs here too.
pub fn frame_rejected(reason: &'static str) {
    counter!("syncline_frames_rejected_total", "reason" => reason).increment(1);
}

/// Describes every core metric (help text and unit) to the installed recorder; the node calls
/// it once after installing the exporter.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    // Counters an operator alerts on exist from the start, at zero.
    for reason in [
        "transport",
        "too_large",
        "protocol_version",
        "malformed",
        "overflow",
    ] {
        counter!("syncline_frames_rejected_total", "reason" => reason).increment(0);
    }
    for name in [
        "syncline_ops_submitted_total",
        "syncline_ops_applied_total",
        "syncline_ops_duplicate_total",
        "syncline_commits_total",
    ] {
        counter!(name).increment(0);
    }
    for direction in ["in", "out"] {
        counter!("syncline_frames_total", "direction" => direction).increment(0);
        counter!("syncline_frame_bytes_total", "direction" => direction).increment(0);
    }
    gauge!("syncline_queue_depth_jobs").set(0.0);
    for reason in [
        "permission_denied",
        "clock_drift",
        "hash_mismatch",
        "too_large",
    ] {
        for via in ["push", "pull"] {
            counter!("syncline_ops_refused_total", "via" => via, "reason" => reason).increment(0);
        }
        counter!("syncline_ops_refused_by_peer_total", "reason" => reason).increment(0);
    }
    for reason in ["hello_timeout", "max_sessions", "max_sessions_per_peer"] {
        counter!("syncline_sessions_refused_total", "reason" => reason).increment(0);
    }
    describe_gauge!(
        "syncline_sessions",
        Unit::Count,
        "Sessions peers hold open with this node (that said hello), every transport."
    );
    describe_gauge!(
        "syncline_listeners",
        Unit::Count,
        "Pull listeners peers registered with this node."
    );
    describe_gauge!(
        "syncline_connections",
        Unit::Count,
        "Open connections per listener (http, WebSockets included; quic)."
    );
    describe_counter!(
        "syncline_connections_refused_total",
        Unit::Count,
        "Connections refused by a cap, by listener and reason (total, per_address)."
    );
    describe_counter!(
        "syncline_sessions_refused_total",
        Unit::Count,
        "Sessions peers opened that a limit refused or closed, by reason (hello_timeout, \
         max_sessions, max_sessions_per_peer)."
    );
    describe_gauge!(
        "syncline_queue_depth_jobs",
        Unit::Count,
        "Jobs waiting in the queue."
    );
    describe_counter!(
        "syncline_frame_bytes_total",
        Unit::Bytes,
        "Bytes of sync frames sent (direction out) and received (in), as encoded."
    );
    describe_counter!(
        "syncline_frames_total",
        Unit::Count,
        "Sync frames sent (direction out) and received (in)."
    );
    describe_counter!(
        "syncline_commits_total",
        Unit::Count,
        "Store commits by the executor."
    );
    describe_histogram!(
        "syncline_commit_duration_seconds",
        Unit::Seconds,
        "Time one store commit took."
    );
    describe_histogram!(
        "syncline_commit_size_ops",
        Unit::Count,
        "Operations per commit."
    );
    describe_counter!(
        "syncline_ops_submitted_total",
        Unit::Count,
        "Operations submitted on this node and committed."
    );
    describe_counter!(
        "syncline_ops_applied_total",
        Unit::Count,
        "Operations received from peers and committed (new ones only)."
    );
    describe_counter!(
        "syncline_ops_duplicate_total",
        Unit::Count,
        "Received operations that were already stored."
    );
    describe_counter!(
        "syncline_batches_total",
        Unit::Count,
        "Pushed batches by remote and outcome (applied, dead_letter)."
    );
    describe_counter!(
        "syncline_ops_pushed_total",
        Unit::Count,
        "Operations pushed and applied by the remote."
    );
    describe_counter!(
        "syncline_bytes_total",
        Unit::Bytes,
        "Frame bytes by remote and direction (out: pushes, in: pulls)."
    );
    describe_histogram!(
        "syncline_push_duration_seconds",
        Unit::Seconds,
        "Time from sending a batch to the remote's durable answer."
    );
    describe_counter!(
        "syncline_pulls_total",
        Unit::Count,
        "Pulls by remote and outcome."
    );
    describe_counter!(
        "syncline_ops_pulled_total",
        Unit::Count,
        "Operations received in pulls."
    );
    describe_histogram!(
        "syncline_pull_duration_seconds",
        Unit::Seconds,
        "Time a pull took (long polls included)."
    );
    describe_counter!(
        "syncline_retries_total",
        Unit::Count,
        "Retried requests by remote and direction."
    );
    describe_counter!(
        "syncline_dead_letters_total",
        Unit::Count,
        "Batches given up and kept as dead letters."
    );
    describe_counter!(
        "syncline_ops_refused_total",
        Unit::Count,
        "Received operations this reactor refused, by reason and how they came (push, pull)."
    );
    describe_counter!(
        "syncline_ops_refused_by_peer_total",
        Unit::Count,
        "Operations of ours that a peer refused, by reason."
    );
    describe_gauge!(
        "syncline_outbox_lag_ops",
        Unit::Count,
        "Operations of our feed the remote has not applied."
    );
    describe_gauge!(
        "syncline_inbox_lag_ops",
        Unit::Count,
        "Operations of the remote's feed we have not applied, as of the last pull."
    );
    describe_gauge!(
        "syncline_pull_interval_seconds",
        Unit::Seconds,
        "The wait chosen before the next pull."
    );
    describe_gauge!(
        "syncline_remote_connected",
        Unit::Count,
        "1 while the remote is connected, else 0."
    );
    describe_counter!(
        "syncline_frames_rejected_total",
        Unit::Count,
        "Frames answered with an error, by reason."
    );
}
