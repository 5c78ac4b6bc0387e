//! Nodes that load runtime plugins (`[[plugins]] path = ...`): the failures that must stop node
//! start with a clear message, the host's logging service, and two node processes syncing 10k
//! operations through the `tcp` plugin transport onto the `kvfile` plugin store.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncline_testkit::plugin_library;

use crate::support::{NodeProc, free_port, syncline};

/// Starts `syncline node` with `toml` (and `env`), expects it to exit with a failure within 30 s
/// and returns its standard error.
fn node_fails(dir: &Path, toml: &str, env: &[(&str, &str)]) -> String {
    let config = dir.join("node.toml");
    std::fs::write(&config, toml).unwrap();
    let mut cmd = syncline();
    cmd.args(["node", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started although it should have refused to");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    // Exit code 1 is an error reported by `main`; a panic would be 101, a crash a signal.
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        !err.contains("thread '"),
        "no panic reaches standard error: {err}"
    );
    err
}

fn base(dir: &Path, name: &str, http: u16) -> String {
    format!(
        "node_id = \"{name}\"\ndata_dir = \"{}\"\nshutdown_grace = 2\n[listen]\nhttp = \"127.0.0.1:{http}\"\n",
        dir.join(name).display()
    )
}

fn plugin(path: &Path) -> String {
    format!("[[plugins]]\npath = \"{}\"\n", path.display())
}

#[test]
fn bad_plugins_stop_node_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    // A missing file.
    let missing = d.join("libnothing.so");
    let err = node_fails(
        d,
        &format!("{}{}", base(d, "n", port), plugin(&missing)),
        &[],
    );
    assert!(
        err.contains("plugins[0].path") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    // A real shared library without the entry point.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("libm on this system");
    let err = node_fails(d, &format!("{}{}", base(d, "n", port), plugin(libm)), &[]);
    assert!(
        err.contains(&libm.display().to_string()) && err.contains("syncline_plugin_entry"),
        "{err}"
    );
    // A file that is not a library at all.
    let junk = d.join("junk.so");
    std::fs::write(&junk, b"not an ELF file").unwrap();
    let err = node_fails(d, &format!("{}{}", base(d, "n", port), plugin(&junk)), &[]);
    assert!(err.contains(&junk.display().to_string()), "{err}");
    // A plugin built for another ABI version: the file and both versions are named.
    let testing = plugin_library("testing");
    let err = node_fails(
        d,
        &format!("{}{}", base(d, "n", port), plugin(&testing)),
        &[("TESTING_PLUGIN_MODE", "future")],
    );
    assert!(
        err.contains(&testing.display().to_string())
            && err.contains("version 999")
            && err.contains(&format!(
                "version {}",
                syncline_plugin_host::PLUGIN_ABI_VERSION
            )),
        "{err}"
    );
    // A plugin that panics inside `open`: an error, not an unwinding crash.
    let err = node_fails(
        d,
        &format!(
            "{}[store]\nkind = \"testing\"\n{}",
            base(d, "n", port),
            plugin(&testing)
        ),
        &[("TESTING_PLUGIN_MODE", "panic")],
    );
    assert!(
        err.contains("testing plugin")
            && err.contains("the plugin panicked: the testing plugin was asked to panic"),
        "{err}"
    );
    assert!(
        err.contains("plugin panicked at plugins/examples/testing/src/lib.rs"),
        "the host logs where: {err}"
    );
    // Only configured paths are loaded: a store kind no listed plugin provides is refused even
    // though the library sits next to the binary.
    let err = node_fails(
        d,
        &format!("{}[store]\nkind = \"kvfile\"\n", base(d, "n", port)),
        &[],
    );
    assert!(
        err.contains("store.kind") && err.contains("kvfile"),
        "{err}"
    );
}

#[test]
fn plugins_get_the_host_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let mut n = NodeProc::start(
        d,
        "logs",
        port,
        &format!(
            "{}[store]\nkind = \"testing\"\n{}",
            base(d, "logs", port),
            plugin(&plugin_library("testing"))
        ),
    );
    assert!(
        n.log_text().contains("testing plugin: store opened"),
        "{}",
        n.log_text()
    );
    assert!(n.terminate(Duration::from_secs(20)), "{}", n.log_text());
}

fn post(client: &reqwest::blocking::Client, node: &str, doc: &str, from: usize, n: usize) -> bool {
    let body = json!({"actions": (from..from + n).map(|i| json!({"type": "push", "input": {"path": "/items", "value": i}})).collect::<Vec<_>>()});
    client
        .post(format!("{node}/v1/documents/{doc}/actions"))
        .json(&body)
        .send()
        .is_ok_and(|r| r.status().as_u16() == 201)
}

fn head(client: &reqwest::blocking::Client, node: &str) -> u64 {
    client
        .get(format!("{node}/healthz"))
        .send()
        .ok()
        .and_then(|r| r.json::<Value>().ok())
        .and_then(|v| v["head"].as_u64())
        .unwrap_or(0)
}

fn documents(client: &reqwest::blocking::Client, node: &str, docs: usize) -> Vec<Value> {
    (0..docs)
        .map(|d| {
            client
                .get(format!("{node}/v1/documents/doc-{d}"))
                .send()
                .unwrap()
                .json::<Value>()
                .unwrap()["state"]
                .clone()
        })
        .collect()
}

#[test]
fn two_nodes_sync_10k_operations_through_the_tcp_plugin_onto_the_kvfile_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ha, hb) = (free_port(), free_port());
    let tcp = free_port();
    let plugins = format!(
        "{}{}",
        plugin(&plugin_library("kvfile")),
        plugin(&plugin_library("tcp"))
    );
    let store = |name: &str| {
        format!(
            "[store]\nkind = \"kvfile\"\n[store.kvfile]\npath = \"{}\"\n",
            d.join(format!("{name}.kv")).display()
        )
    };
    let mut a = NodeProc::start(
        d,
        "a",
        ha,
        &format!(
            "{}urls = [\"tcp://127.0.0.1:{tcp}\"]\n{}{}",
            base(d, "a", ha),
            store("a"),
            plugins
        ),
    );
    let mut b = NodeProc::start(
        d,
        "b",
        hb,
        &format!(
            "{}{}{}[[remotes]]\nname = \"a\"\nurl = \"tcp://127.0.0.1:{tcp}\"\nmode = \"ping_pong\"\n",
            base(d, "b", hb),
            store("b"),
            plugins
        ),
    );
    syncline::install_crypto();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // 10,000 operations over 4 documents, half written on each node, in submissions of 100.
    let (docs, total, batch) = (4usize, 10_000usize, 100usize);
    for i in 0..total / batch {
        let node = if i % 2 == 0 { &a.http } else { &b.http };
        assert!(post(
            &client,
            node,
            &format!("doc-{}", i % docs),
            i * batch,
            batch
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while head(&client, &a.http) != total as u64 || head(&client, &b.http) != total as u64 {
        assert!(
            Instant::now() < deadline,
            "not converged: a {} b {}\n{}\n{}",
            head(&client, &a.http),
            head(&client, &b.http),
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let state_a = documents(&client, &a.http, docs);
    assert_eq!(state_a, documents(&client, &b.http, docs), "a and b differ");
    let items: usize = state_a
        .iter()
        .map(|s| s["items"].as_array().unwrap().len())
        .sum();
    assert_eq!(items, total);
    assert!(
        a.log_text().contains("tcp plugin listening"),
        "{}",
        a.log_text()
    );
    // The plugin store keeps everything across a restart.
    assert!(a.terminate(Duration::from_secs(20)), "{}", a.log_text());
    a.restart();
    assert_eq!(head(&client, &a.http), total as u64);
    assert_eq!(documents(&client, &a.http, docs), state_a);
    assert!(b.terminate(Duration::from_secs(20)), "{}", b.log_text());
}
