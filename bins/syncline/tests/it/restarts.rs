//! Restarts of real `syncline node` processes over WebSocket, HTTP, QUIC and Redis pub/sub.
//!
//! Two nodes: `l` listens, `d` dials it (one `ping_pong` remote). Both write all the time. Each
//! of them is stopped with SIGTERM and with SIGKILL and started again, three times each (twelve
//! restarts per transport). After every restart a marker operation is written on each side and
//! must reach the other side within [`BOUND`] of the restarted node answering `/healthz`; while
//! the listener is down the dialler must not report its remote as connected; nothing may be
//! dead-lettered; and at the end both nodes hold exactly the operations that were acknowledged
//! (plus, at most, writes whose answer was lost when a node died under them), once each.
//!
//! Failures are collected and reported together at the end, so one run shows every restart that
//! did not resume. The measured times are printed with `--nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{NodeProc, free_port, free_udp_port, get_json};

/// How long after the restarted node answers `/healthz` sync must have resumed in both
/// directions: 2 s plus one reconnect backoff step.
const BOUND: Duration = Duration::from_secs(6);
/// The sequence of the four restart kinds is run this many times.
const REPEATS: usize = 3;
/// The bounded wait for convergence at the end.
const CONVERGE: Duration = Duration::from_secs(60);
/// How long a stopped node stays down at least.
const DOWN_AT_LEAST: Duration = Duration::from_millis(500);
/// Log lines of each node quoted in a failure.
const LOG_TAIL: usize = 30;
/// Documents each writer spreads its writes over.
const WRITER_DOCS: u64 = 3;

/// The node processes are heavy for a small machine: one transport at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Http,
    Quic,
    Redis,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
            Transport::Quic => "quic",
            Transport::Redis => "redis",
        }
    }

    /// The dialler's remote URL for a listener on `http` (TCP), `quic` (UDP) and `redis` (the
    /// test's redis-server).
    fn url(self, http: u16, quic: u16, redis: &str) -> String {
        match self {
            Transport::WebSocket => format!("ws://127.0.0.1:{http}"),
            Transport::Http => format!("http://127.0.0.1:{http}"),
            Transport::Quic => format!("quic://127.0.0.1:{quic}"),
            Transport::Redis => format!("{redis}?to=l"),
        }
    }
}

#[test]
fn restarts_over_websocket() {
    restarts(Transport::WebSocket);
}

#[test]
fn restarts_over_http() {
    restarts(Transport::Http);
}

#[test]
fn restarts_over_quic() {
    restarts(Transport::Quic);
}

#[test]
fn restarts_over_redis() {
    restarts(Transport::Redis);
}

/// Which node is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Listener,
    Dialler,
}

/// How it is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Term,
    Kill,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        }
    }
}

/// Every write the test made, by document.
#[derive(Debug, Default)]
struct Ledger {
    /// Acknowledged (201) writes: doc → op id → pushed value.
    acked: BTreeMap<String, BTreeMap<String, u64>>,
    /// Writes without a clear answer (the node died under them): doc → pushed value → what
    /// happened and during which restart. They may or may not have been committed.
    in_doubt: BTreeMap<String, BTreeMap<u64, String>>,
    /// What the test is doing, for the in-doubt writes.
    phase: String,
}

impl Ledger {
    fn docs(&self) -> BTreeSet<String> {
        self.acked
            .keys()
            .chain(self.in_doubt.keys())
            .cloned()
            .collect()
    }

    fn acked_total(&self) -> usize {
        self.acked.values().map(BTreeMap::len).sum()
    }

    fn in_doubt_total(&self) -> usize {
        self.in_doubt.values().map(BTreeMap::len).sum()
    }
}

type SharedLedger = Arc<Mutex<Ledger>>;

fn lock(l: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of one write.
enum Outcome {
    /// 201, with the new operation's id.
    Acked(String),
    /// Certainly not written (the connection was refused).
    NotWritten,
    /// Perhaps written: the answer was lost or was an error.
    InDoubt(String),
}

/// An error with its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        write!(s, ": {e}").unwrap();
        source = e.source();
    }
    s
}

/// Pushes `value` to `/items` of `doc` on `node`; records the outcome in the ledger.
fn write(
    client: &reqwest::blocking::Client,
    ledger: &SharedLedger,
    node: &str,
    doc: &str,
    value: u64,
) -> Option<String> {
    let body = json!({"actions": [{"type": "push", "input": {"path": "/items", "value": value}}]});
    let outcome = match client
        .post(format!("{node}/v1/documents/{doc}/actions"))
        .json(&body)
        .send()
    {
        Ok(r) if r.status().as_u16() == 201 => match r.json::<Value>() {
            Ok(v) => v["operations"][0]["id"].as_str().map_or_else(
                || Outcome::InDoubt(format!("201 without an id: {v}")),
                |id| Outcome::Acked(id.to_owned()),
            ),
            Err(e) => Outcome::InDoubt(format!("201, body unreadable: {}", chain(&e))),
        },
        Ok(r) => Outcome::InDoubt(format!("{}: {}", r.status(), r.text().unwrap_or_default())),
        Err(e) if e.is_connect() => Outcome::NotWritten,
        Err(e) => Outcome::InDoubt(chain(&e)),
    };
    let mut l = lock(ledger);
    match outcome {
        Outcome::Acked(id) => {
            l.acked
                .entry(doc.to_owned())
                .or_default()
                .insert(id.clone(), value);
            Some(id)
        }
        Outcome::NotWritten => None,
        Outcome::InDoubt(why) => {
            let why = format!("{node}, {}: {why}", l.phase);
            l.in_doubt
                .entry(doc.to_owned())
                .or_default()
                .insert(value, why);
            None
        }
    }
}

/// The writer threads; stopped and joined when dropped (also when the test panics).
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    fn start(nodes: [(&str, &str); 2], ledger: &SharedLedger, values: &Arc<AtomicU64>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [(nodes[0], nodes[1]), (nodes[1], nodes[0])]
            .into_iter()
            .map(|((name, own), (_, other))| {
                let (name, own, other) = (name.to_owned(), own.to_owned(), other.to_owned());
                let (stop, ledger, values) = (stop.clone(), ledger.clone(), values.clone());
                std::thread::spawn(move || {
                    let client = client();
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let doc = format!("w-{name}-{}", k % WRITER_DOCS);
                        k += 1;
                        // Our own node first; while it is down, the other one.
                        let written = [&own, &other].into_iter().any(|node| {
                            let value = values.fetch_add(1, Ordering::Relaxed);
                            write(&client, &ledger, node, &doc, value).is_some()
                        });
                        let pause = if written { 30 } else { 100 };
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                })
            })
            .collect();
        Writers { stop, threads }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn logs(l: &NodeProc, d: &NodeProc) -> String {
    format!(
        "--- tail of l's log ---\n{}\n--- tail of d's log ---\n{}",
        l.log_tail(LOG_TAIL),
        d.log_tail(LOG_TAIL)
    )
}

/// A document's operation ids and the values pushed to its `/items`, as one node holds them.
type Held = (Vec<String>, Vec<Value>);

/// The ids of `doc`'s operations on `node` (empty if it has none), and the pushed values in its
/// state; `None` if the node does not answer.
fn held(client: &reqwest::blocking::Client, node: &str, doc: &str) -> Option<Held> {
    let v = get_json(
        client,
        &format!("{node}/v1/documents/{doc}?operations=false"),
    )?;
    if v.get("error").is_some() {
        // An unknown document: nothing held yet.
        return (v["error"]["kind"] == "not_found").then(|| (Vec::new(), Vec::new()));
    }
    let ids = crate::support::all_operations(client, node, doc)?
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect();
    let items = v["state"]["items"].as_array().cloned().unwrap_or_default();
    Some((ids, items))
}

/// Whether `node` holds operation `id` of `doc`.
fn has_op(client: &reqwest::blocking::Client, node: &str, doc: &str, id: &str) -> bool {
    held(client, node, doc).is_some_and(|(ids, _)| ids.iter().any(|i| i == id))
}

/// The dialler's view of its one remote: its connection state.
fn dialler_state(client: &reqwest::blocking::Client, d: &str) -> String {
    get_json(client, &format!("{d}/v1/sync/status")).map_or_else(
        || "<no answer>".to_owned(),
        |v| {
            v["remotes"][0]["connection"]["state"]
                .as_str()
                .unwrap_or("<missing>")
                .to_owned()
        },
    )
}

/// Dead letters over all remotes of `node`, with the dead letters themselves.
fn dead_letters(client: &reqwest::blocking::Client, node: &str) -> Option<(u64, Value)> {
    let status = get_json(client, &format!("{node}/v1/sync/status"))?;
    let n = status["remotes"]
        .as_array()?
        .iter()
        .map(|r| r["dead_letters"].as_u64().unwrap_or(0))
        .sum();
    let letters = if n > 0 {
        get_json(client, &format!("{node}/v1/dead-letters")).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    Some((n, letters))
}

/// Writes a marker on `node`, retrying (bounded) until it is acknowledged.
fn marker(
    client: &reqwest::blocking::Client,
    ledger: &SharedLedger,
    values: &AtomicU64,
    node: &str,
    doc: &str,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let value = values.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = write(client, ledger, node, doc, value) {
            return Some(id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn config(
    dir: &Path,
    name: &str,
    http: u16,
    transport: Transport,
    quic: Option<u16>,
    redis: Option<&str>,
) -> String {
    let mut toml = format!(
        "node_id = \"{name}\"\ndata_dir = \"{}\"\nshutdown_grace = 2\n[listen]\nhttp = \"127.0.0.1:{http}\"\n",
        dir.display()
    );
    if let Some(q) = quic {
        writeln!(toml, "quic = \"127.0.0.1:{q}\"").unwrap();
    }
    if let Some(r) = redis {
        writeln!(toml, "redis = \"{r}?as={name}\"").unwrap();
    }
    if transport == Transport::Quic {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        write!(
            toml,
            "[transports.quic]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"{c}\"\n",
            c = cert.display(),
            k = key.display()
        )
        .unwrap();
    }
    toml.push_str("[sync]\nrequest_timeout = 3000\n");
    toml
}

/// The times measured for one restart.
#[derive(Debug, Default)]
struct Measured {
    /// Listener stops: how long until the dialler stopped saying "connected".
    noticed_down: Option<Duration>,
    /// From the restarted node answering `/healthz`: l's marker on d, d's marker on l, and the
    /// dialler saying "connected".
    l_to_d: Option<Duration>,
    d_to_l: Option<Duration>,
    connected: Option<Duration>,
}

fn show(d: Option<Duration>) -> String {
    d.map_or_else(|| "MISSING".to_owned(), |d| format!("{} ms", ms(d)))
}

fn restarts(transport: Transport) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    syncline::install_crypto();
    let t = transport.name();
    let dir = tempfile::tempdir().unwrap();
    if transport == Transport::Quic {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    }
    let (hl, hd, ql) = (free_port(), free_port(), free_udp_port());
    let quic = (transport == Transport::Quic).then_some(ql);
    // Redis pub/sub goes through a real redis-server, which stays up through the restarts.
    let redis_server = (transport == Transport::Redis)
        .then(|| syncline_testkit::redis_server::RedisServer::start().expect("redis-server"));
    let redis_url = redis_server.as_ref().map(|r| r.url()).unwrap_or_default();
    let redis = (transport == Transport::Redis).then_some(redis_url.as_str());
    let mut l = NodeProc::start(
        dir.path(),
        "l",
        hl,
        &config(dir.path(), "l", hl, transport, quic, redis),
    );
    let mut d = NodeProc::start(
        dir.path(),
        "d",
        hd,
        &format!(
            "{}[[remotes]]\nname = \"l\"\nurl = \"{}\"\nmode = \"ping_pong\"\n",
            config(dir.path(), "d", hd, transport, None, None),
            transport.url(hl, ql, &redis_url)
        ),
    );
    let (lu, du) = (l.http.clone(), d.http.clone());
    let client = client();
    let ledger = SharedLedger::default();
    let values = Arc::new(AtomicU64::new(0));
    let mut failures: Vec<String> = Vec::new();
    let mut summary: Vec<String> = Vec::new();

    // The dialler connects before anything else is measured.
    let deadline = Instant::now() + BOUND;
    while dialler_state(&client, &du) != "connected" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    let state = dialler_state(&client, &du);
    assert_eq!(
        state,
        "connected",
        "[{t}] d never connected to l at the start\n{}",
        logs(&l, &d)
    );

    let mut writers = Writers::start([("l", lu.as_str()), ("d", du.as_str())], &ledger, &values);
    std::thread::sleep(Duration::from_secs(1));

    let kinds = [
        (Side::Listener, Stop::Term),
        (Side::Listener, Stop::Kill),
        (Side::Dialler, Stop::Term),
        (Side::Dialler, Stop::Kill),
    ];
    let total = kinds.len() * REPEATS;
    let mut dead_seen = (0u64, 0u64);
    for i in 1..=total {
        let (side, stop) = kinds[(i - 1) % kinds.len()];
        let what = format!(
            "[{t}] restart {i}/{total} ({} {})",
            match side {
                Side::Listener => "listener l",
                Side::Dialler => "dialler d",
            },
            stop.name()
        );
        lock(&ledger).phase = what.clone();
        let mut m = Measured::default();
        let mut problems: Vec<String> = Vec::new();
        let node = match side {
            Side::Listener => &mut l,
            Side::Dialler => &mut d,
        };
        let stopped = Instant::now();
        match stop {
            Stop::Term => {
                if !node.terminate(Duration::from_secs(15)) {
                    eprintln!("{what}: SIGTERM did not end the node cleanly within 15 s");
                }
            }
            Stop::Kill => node.kill(),
        }
        if side == Side::Listener {
            // What an operator sees on the dialler while its peer is down.
            let down = Instant::now();
            let mut state = dialler_state(&client, &du);
            while state == "connected" && down.elapsed() < BOUND {
                std::thread::sleep(Duration::from_millis(25));
                state = dialler_state(&client, &du);
            }
            if state == "connected" {
                problems.push(format!(
                    "while l is down, the dialler still says \"connected\" {} ms after l \
                     stopped (bound {} ms); logs at that moment:\n{}",
                    ms(down.elapsed()),
                    ms(BOUND),
                    logs(&l, &d)
                ));
            } else {
                m.noticed_down = Some(down.elapsed());
            }
        }
        // The rest of the downtime; the dialler must not claim to be connected to a listener
        // that is not there.
        while stopped.elapsed() < DOWN_AT_LEAST {
            std::thread::sleep(Duration::from_millis(25));
            if side == Side::Listener
                && m.noticed_down.is_some()
                && dialler_state(&client, &du) == "connected"
            {
                problems.push(format!(
                    "while l is down, the dialler says \"connected\" again {} ms after l stopped",
                    ms(stopped.elapsed())
                ));
                break;
            }
        }
        match side {
            Side::Listener => l.start_again(),
            Side::Dialler => d.start_again(),
        }
        let healthy = Instant::now();

        // One marker on each side; each must reach the other side.
        let ml = format!("marker-l-{i}");
        let md = format!("marker-d-{i}");
        let id_l = marker(&client, &ledger, &values, &lu, &ml);
        let id_d = marker(&client, &ledger, &values, &du, &md);
        if id_l.is_none() || id_d.is_none() {
            problems.push(format!(
                "a marker write was not acknowledged within 10 s (l: {id_l:?}, d: {id_d:?})"
            ));
        }
        let deadline = healthy + BOUND;
        loop {
            if m.l_to_d.is_none()
                && let Some(id) = &id_l
                && has_op(&client, &du, &ml, id)
            {
                m.l_to_d = Some(healthy.elapsed());
            }
            if m.d_to_l.is_none()
                && let Some(id) = &id_d
                && has_op(&client, &lu, &md, id)
            {
                m.d_to_l = Some(healthy.elapsed());
            }
            if m.connected.is_none() && dialler_state(&client, &du) == "connected" {
                m.connected = Some(healthy.elapsed());
            }
            let done = (m.l_to_d.is_some() || id_l.is_none())
                && (m.d_to_l.is_some() || id_d.is_none())
                && m.connected.is_some();
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        for (dir_name, got, id, doc) in [
            ("l -> d", m.l_to_d, &id_l, &ml),
            ("d -> l", m.d_to_l, &id_d, &md),
        ] {
            if got.is_none()
                && let Some(id) = id
            {
                problems.push(format!(
                    "{dir_name}: marker {doc} (op {id}) not there {} ms after the restarted node \
                     answered /healthz (bound {} ms)",
                    ms(healthy.elapsed()),
                    ms(BOUND),
                ));
            }
        }
        if m.connected.is_none() {
            problems.push(format!(
                "the dialler does not say \"connected\" {} ms after the restarted node answered \
                 /healthz (it says {:?}; bound {} ms)",
                ms(healthy.elapsed()),
                dialler_state(&client, &du),
                ms(BOUND),
            ));
        }
        // Nothing dead-lettered, on either node.
        for (name, url, seen) in [("l", &lu, &mut dead_seen.0), ("d", &du, &mut dead_seen.1)] {
            if let Some((n, letters)) = dead_letters(&client, url)
                && n > *seen
            {
                problems.push(format!("{name} has {n} dead letter(s): {letters}"));
                *seen = n;
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{what}:\n  - {}\nd's remote now: {}\n{}",
                problems.join("\n  - "),
                get_json(&client, &format!("{du}/v1/sync/status"))
                    .map_or_else(|| "<no answer>".to_owned(), |s| s["remotes"][0].to_string()),
                logs(&l, &d)
            ));
        }
        let line = format!(
            "{what}: down noticed {}, l->d {}, d->l {}, connected {} (after /healthz)",
            m.noticed_down
                .map_or_else(|| "-".to_owned(), |d| format!("{} ms", ms(d))),
            show(m.l_to_d),
            show(m.d_to_l),
            show(m.connected),
        );
        eprintln!("{line}");
        summary.push(line);
    }

    // The end: every acknowledged write on both nodes, once, and nothing else but writes whose
    // answer was lost.
    writers.stop();
    lock(&ledger).phase = "the end".to_owned();
    let converge = Instant::now();
    let docs = lock(&ledger).docs();
    let (converged, last) = loop {
        let acked = lock(&ledger).acked.clone();
        let last: BTreeMap<String, [Option<Held>; 2]> = docs
            .iter()
            .map(|doc| {
                (
                    doc.clone(),
                    [held(&client, &lu, doc), held(&client, &du, doc)],
                )
            })
            .collect();
        let ok = last.iter().all(|(doc, [a, b])| match (a, b) {
            (Some((a, _)), Some((b, _))) => {
                let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
                    (a.iter().collect(), b.iter().collect());
                a == b
                    && acked
                        .get(doc)
                        .is_none_or(|ids| ids.keys().all(|id| a.contains(id)))
            }
            _ => false,
        });
        if ok || converge.elapsed() > CONVERGE {
            break (ok, last);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let converge_time = converge.elapsed();
    let ledger = lock(&ledger);
    let mut held_total = 0usize;
    for (doc, [a, b]) in &last {
        let acked = ledger.acked.get(doc).cloned().unwrap_or_default();
        let doubt = ledger.in_doubt.get(doc).cloned().unwrap_or_default();
        let mut sides = Vec::new();
        for (name, got) in [("l", a), ("d", b)] {
            let Some((ids, items)) = got else {
                failures.push(format!("[{t}] end: {name} does not answer for {doc}"));
                continue;
            };
            let set: BTreeSet<&String> = ids.iter().collect();
            if set.len() != ids.len() {
                failures.push(format!(
                    "[{t}] end: {name} holds an operation of {doc} twice ({} ids, {} distinct)",
                    ids.len(),
                    set.len()
                ));
            }
            let missing: Vec<&String> = acked.keys().filter(|id| !set.contains(id)).collect();
            if !missing.is_empty() {
                failures.push(format!(
                    "[{t}] end: {name} lacks {} acknowledged operation(s) of {doc} (of {}), e.g. \
                     {:?}",
                    missing.len(),
                    acked.len(),
                    &missing[..missing.len().min(5)]
                ));
            }
            // The values in the state: every acknowledged one once, the others only writes in
            // doubt.
            let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
            for v in items {
                *counts.entry(v.as_u64().unwrap_or(u64::MAX)).or_default() += 1;
            }
            let twice: Vec<u64> = counts
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(v, _)| *v)
                .collect();
            let acked_values: BTreeSet<u64> = acked.values().copied().collect();
            let unexplained: Vec<u64> = counts
                .keys()
                .filter(|v| !acked_values.contains(v) && !doubt.contains_key(v))
                .copied()
                .collect();
            if !twice.is_empty() || !unexplained.is_empty() || items.len() != ids.len() {
                failures.push(format!(
                    "[{t}] end: {name}'s {doc}: values twice {twice:?}, values never written or \
                     acknowledged {unexplained:?}, {} values for {} operations",
                    items.len(),
                    ids.len()
                ));
            }
            sides.push(set.into_iter().cloned().collect::<BTreeSet<String>>());
            if name == "l" {
                for (v, why) in &doubt {
                    eprintln!(
                        "[{t}] in doubt: {doc} value {v} ({}): {why}",
                        if counts.contains_key(v) {
                            "committed"
                        } else {
                            "not committed"
                        }
                    );
                }
            }
        }
        if let [a, b] = &sides[..] {
            if a != b {
                failures.push(format!(
                    "[{t}] end: l and d hold different operations of {doc}: {} only on l, {} only \
                     on d",
                    a.difference(b).count(),
                    b.difference(a).count()
                ));
            }
            held_total += a.len();
        }
    }
    for (name, url) in [("l", &lu), ("d", &du)] {
        match dead_letters(&client, url) {
            Some((0, _)) => {}
            Some((n, letters)) => {
                failures.push(format!(
                    "[{t}] end: {name} has {n} dead letter(s): {letters}"
                ));
            }
            None => failures.push(format!("[{t}] end: {name} does not answer /v1/sync/status")),
        }
    }
    let end = format!(
        "[{t}] end: {} after the writers stopped: {} acknowledged writes, {} in doubt, {} \
         operations held, over {} documents",
        if converged {
            format!("converged in {} ms", ms(converge_time))
        } else {
            format!("NOT converged within {} ms", ms(CONVERGE))
        },
        ledger.acked_total(),
        ledger.in_doubt_total(),
        held_total,
        docs.len()
    );
    eprintln!("{end}");
    summary.push(end);
    if !converged {
        failures.push(format!(
            "[{t}] end: not converged within {} ms\n{}",
            ms(CONVERGE),
            logs(&l, &d)
        ));
    }
    assert!(
        failures.is_empty(),
        "[{t}] {} failure(s):\n\n{}\n\nmeasured:\n{}",
        failures.len(),
        failures.join("\n\n"),
        summary.join("\n")
    );
}
