//! `syncline node` processes: the client commands, graceful shutdown, and three nodes over
//! WebSocket, HTTP and QUIC surviving a SIGKILL mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{NodeProc, free_port, free_udp_port, syncline};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = syncline().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_commands_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut a = NodeProc::start(
        dir.path(),
        "cli",
        port,
        &format!(
            "node_id = \"cli\"\ndata_dir = \"{}\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n",
            dir.path().display()
        ),
    );
    let node = a.http.clone();
    let (ok, out, err) = run(&[
        "doc",
        "apply",
        "drive/x",
        "set",
        r#"{"path":"/a","value":1}"#,
        "increment",
        r#"{"path":"/n","by":5}"#,
        "--node",
        &node,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("applied 2 operation(s) to drive/x"), "{out}");
    let (ok, out, err) = run(&[
        "doc",
        "apply",
        "drive/x",
        "push",
        r#"{"path":"/l","value":"x"}"#,
        "--node",
        &node,
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["operations"][0]["ordinal"], 3);
    let (ok, out, _) = run(&["doc", "show", "drive/x", "--node", &node, "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], json!({"a": 1, "n": 5, "l": ["x"]}));
    let (ok, out, _) = run(&["doc", "show", "drive/x", "--node", &node, "--operations"]);
    assert!(ok);
    assert!(out.contains("revision 3"), "{out}");
    assert!(out.contains("#2 push"), "{out}");
    let (ok, out, _) = run(&["status", "--node", &node]);
    assert!(ok);
    assert!(
        out.contains("reactor cli") && out.contains("no remotes"),
        "{out}"
    );
    // Bad input gets a clear error and a failing exit.
    let (ok, _, err) = run(&["doc", "apply", "d", "set", "{not json", "--node", &node]);
    assert!(!ok);
    assert!(err.contains("is not JSON"), "{err}");
    let (ok, _, err) = run(&[
        "doc",
        "apply",
        "d",
        "set",
        r#"{"path":"bad"}"#,
        "--node",
        &node,
    ]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("JSON Pointer"), "{err}");
    let (ok, _, err) = run(&["status", "--node", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the node"), "{err}");
    // SIGTERM: a graceful stop.
    assert!(a.terminate(Duration::from_secs(20)), "{}", a.log_text());
    assert!(
        a.log_text().contains("syncline node stopped"),
        "{}",
        a.log_text()
    );
}

fn post(client: &reqwest::blocking::Client, node: &str, doc: &str, n: usize) -> bool {
    let body = json!({"actions": (0..n).map(|i| json!({"type": "push", "input": {"path": "/items", "value": i}})).collect::<Vec<_>>()});
    client
        .post(format!("{node}/v1/documents/{doc}/actions"))
        .json(&body)
        .send()
        .is_ok_and(|r| r.status().as_u16() == 201)
}

fn get(client: &reqwest::blocking::Client, url: &str) -> Option<Value> {
    client.get(url).send().ok()?.json().ok()
}

#[test]
fn three_nodes_over_three_transports_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (ha, hb, hc) = (free_port(), free_port(), free_port());
    let (qa, qc) = (free_udp_port(), free_udp_port());
    let common = |name: &str, http: u16, quic: Option<u16>| {
        format!(
            "node_id = \"{name}\"\ndata_dir = \"{d}\"\nshutdown_grace = 2\n[listen]\nhttp = \"127.0.0.1:{http}\"\n{q}\n\
             [transports.quic]\ncert = \"{c}\"\nkey = \"{k}\"\nca = \"{c}\"\n[sync]\nrequest_timeout = 3000\n",
            d = dir.path().display(),
            c = cert.display(),
            k = key.display(),
            q = quic
                .map(|p| format!("quic = \"127.0.0.1:{p}\""))
                .unwrap_or_default(),
        )
    };
    let remote = |name: &str, url: String| {
        format!("[[remotes]]\nname = \"{name}\"\nurl = \"{url}\"\nmode = \"ping_pong\"\n")
    };
    let c = NodeProc::start(dir.path(), "c", hc, &common("c", hc, Some(qc)));
    let mut b = NodeProc::start(
        dir.path(),
        "b",
        hb,
        &format!(
            "{}{}",
            common("b", hb, None),
            remote("c", format!("http://127.0.0.1:{hc}"))
        ),
    );
    let a = NodeProc::start(
        dir.path(),
        "a",
        ha,
        &format!(
            "{}{}{}",
            common("a", ha, Some(qa)),
            remote("b", format!("ws://127.0.0.1:{hb}")),
            remote("c", format!("quic://127.0.0.1:{qc}"))
        ),
    );
    syncline::install_crypto();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let nodes = [a.http.clone(), b.http.clone(), c.http.clone()];
    // 10,050 operations in submissions of 50 on all three nodes; b is killed with SIGKILL a
    // third of the way through and restarted later; while it is down its share goes to a.
    let rounds = 67;
    let mut acked = 0usize;
    let mut b_down = false;
    for round in 0..rounds {
        if round == rounds / 3 {
            b.kill();
            b_down = true;
        }
        if round == rounds / 3 + 10 {
            b.restart();
            b_down = false;
        }
        for (i, node) in nodes.iter().enumerate() {
            let target = if i == 1 && b_down { &nodes[0] } else { node };
            let doc = format!("doc-{}", round % 5);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if post(&client, target, &doc, 50) {
                    acked += 50;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{target} never accepted the write"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(acked, 3 * rounds * 50);
    // Everything converges: every node holds every acknowledged operation, once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let heads: Vec<u64> = nodes
            .iter()
            .map(|n| {
                get(&client, &format!("{n}/healthz")).map_or(0, |v| v["head"].as_u64().unwrap_or(0))
            })
            .collect();
        if heads.iter().all(|h| *h == acked as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged: heads {heads:?}, expected {acked}\na: {}\nb: {}",
            a.log_text()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n"),
            b.log_text()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut views: Vec<BTreeMap<String, (Value, BTreeSet<String>)>> = Vec::new();
    for n in &nodes {
        let mut docs = BTreeMap::new();
        for d in 0..5 {
            let v = get(
                &client,
                &format!("{n}/v1/documents/doc-{d}?operations=false"),
            )
            .unwrap();
            let ids: Vec<String> = crate::support::all_operations(&client, n, &format!("doc-{d}"))
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned())
                .collect();
            let unique: BTreeSet<String> = ids.iter().cloned().collect();
            assert_eq!(unique.len(), ids.len(), "{n} holds an operation twice");
            docs.insert(format!("doc-{d}"), (v["state"].clone(), unique));
        }
        views.push(docs);
    }
    assert_eq!(views[0], views[1], "a and b differ");
    assert_eq!(views[0], views[2], "a and c differ");
    let total: usize = views[0].values().map(|(_, ids)| ids.len()).sum();
    assert_eq!(total, acked, "nothing lost, nothing extra");
    let status = get(&client, &format!("{}/v1/sync/status", nodes[0])).unwrap();
    for r in status["remotes"].as_array().unwrap() {
        assert_eq!(r["dead_letters"], 0, "{r}");
    }
}

/// Reads one sample (`name{labels} value`) from a Prometheus text page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What an operator alerts on tells the truth during an outage: a remote that never connected
/// has its series (connected 0, dead letters 0), and the outbox lag gauge follows the writes
/// as the API does, then drops to 0 once the peer is up and has everything.
#[test]
fn metrics_tell_the_truth_while_a_peer_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let (ha, hb) = (free_port(), free_port());
    let toml = |name: &str, port: u16, remote: Option<u16>| {
        let mut t = format!(
            "node_id = \"{name}\"\ndata_dir = \"{}\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n[sync]\nrequest_timeout = 2000\n",
            dir.path().display()
        );
        if let Some(r) = remote {
            t.push_str(&format!(
                "[[remotes]]\nname = \"b\"\nurl = \"ws://127.0.0.1:{r}\"\nmode = \"push\"\n"
            ));
        }
        t
    };
    let a = NodeProc::start(dir.path(), "a", ha, &toml("a", ha, Some(hb)));
    syncline::install_crypto();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let metrics = || {
        client
            .get(format!("{}/metrics", a.http))
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let text = metrics();
    assert_eq!(
        sample(&text, "syncline_remote_connected{remote=\"b\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "syncline_dead_letters_total{remote=\"b\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "syncline_frames_rejected_total{reason=\"malformed\"}"
        ),
        Some(0.0),
        "{text}"
    );
    for round in 1..=3 {
        assert!(post(&client, &a.http, "doc", 100));
        let api = get(&client, &format!("{}/v1/remotes/b", a.http)).unwrap();
        assert_eq!(api["outbox_lag"], 100 * round, "{api}");
        let text = metrics();
        assert_eq!(
            sample(&text, "syncline_outbox_lag_ops{remote=\"b\"}"),
            Some((100 * round) as f64),
            "the gauge agrees with the API after {} writes:\n{text}",
            100 * round
        );
    }
    let _b = NodeProc::start(dir.path(), "b", hb, &toml("b", hb, None));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics();
        if sample(&text, "syncline_outbox_lag_ops{remote=\"b\"}") == Some(0.0)
            && sample(&text, "syncline_remote_connected{remote=\"b\"}") == Some(1.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Remote names come from the API, so their labels are bounded: beyond
/// `metrics.max_remote_labels` remotes share `other`, and a removed remote frees its label and
/// leaves `/metrics`.
#[test]
fn remote_labels_are_bounded_and_removed_remotes_leave_metrics() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let a = NodeProc::start(
        dir.path(),
        "labels",
        port,
        &format!(
            "node_id = \"labels\"\ndata_dir = \"{}\"\n[store]\nkind = \"memory\"\n\
             [api]\nremote_urls = [\"**\"]\n[listen]\nhttp = \"127.0.0.1:{port}\"\n[metrics]\nmax_remote_labels = 2\n",
            dir.path().display()
        ),
    );
    let client = reqwest::blocking::Client::new();
    let add = |name: &str| {
        let s = client
            .post(format!("{}/v1/remotes", a.http))
            .json(&json!({"name": name, "url": format!("ws://127.0.0.1:{}", free_port()), "mode": "push"}))
            .send()
            .unwrap()
            .status();
        assert_eq!(s.as_u16(), 201, "adding {name}");
    };
    let metrics = || {
        client
            .get(format!("{}/metrics", a.http))
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    for name in ["r1", "r2", "r3", "r4"] {
        add(name);
    }
    let text = metrics();
    let has = |text: &str, remote: &str| {
        text.contains(&format!("syncline_outbox_lag_ops{{remote=\"{remote}\"}}"))
    };
    assert!(has(&text, "r1") && has(&text, "r2"), "{text}");
    assert!(!has(&text, "r3") && !has(&text, "r4"), "{text}");
    assert!(has(&text, "other"), "{text}");
    assert!(
        text.contains("syncline_dead_letters{remote=\"other\"} 0"),
        "{text}"
    );
    let s = client
        .delete(format!("{}/v1/remotes/r1", a.http))
        .send()
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 204);
    add("r5");
    let text = metrics();
    assert!(!text.contains("remote=\"r1\""), "{text}");
    assert!(has(&text, "r5"), "{text}");
}
