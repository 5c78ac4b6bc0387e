//! Configuration: layering, clear errors, feature checks, and the documented examples.

use std::path::PathBuf;

use syncline::backends::NodeBackends;
use syncline::config::Config;

use crate::support::syncline;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn defaults_then_file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "a.toml",
        r#"
node_id = "from-file"
[store]
kind = "memory"
[scheduler.adaptive]
max_interval = 60000
"#,
    );
    // SAFETY of the environment: figment reads it; these names are used by no other test.
    let c = Config::figment(Some(&file))
        .merge(figment::providers::Serialized::default(
            "listen.http",
            "127.0.0.1:9999",
        ))
        .extract::<Config>()
        .unwrap();
    assert_eq!(c.node_id, "from-file");
    assert_eq!(c.store.kind, "memory");
    assert_eq!(c.scheduler.adaptive.max_interval.as_secs(), 60);
    assert_eq!(c.listen.http.port(), 9999);
    assert_eq!(
        c.reactor.queue_capacity, 4096,
        "untouched keys keep their defaults"
    );
    // Environment variables override the file (checked through the binary so the test does
    // not touch this process's environment).
    let out = syncline()
        .args(["config", "check"])
        .arg(&file)
        .env("SYNCLINE_NODE_ID", "from-env")
        .env("SYNCLINE_SYNC__PUSH_WINDOW", "3")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("node_id = \"from-env\""), "{stdout}");
    assert!(stdout.contains("push_window = 3"), "{stdout}");
    assert!(stdout.contains("max_interval = 60000"), "{stdout}");
}

fn check_fails(text: &str, key: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "bad.toml", text);
    let out = syncline()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text} should fail");
    assert!(stderr.contains(key), "the error names {key}: {stderr}");
    assert!(
        stderr.contains(reason),
        "the error says {reason:?}: {stderr}"
    );
    // The node refuses to start the same way.
    let out = syncline()
        .args(["node", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(key), "node start names {key}: {stderr}");
}

#[test]
fn invalid_configurations_name_the_key_and_the_reason() {
    check_fails("node_id = \"has space\"", "node_id", "contains ' '");
    check_fails("[store]\nkind = \"floppy\"", "store.kind", "unknown store");
    check_fails(
        "[listen]\nhttp = \"not an address\"",
        "listen.http",
        "invalid socket address",
    );
    check_fails(
        "[reactor]\nqueue_capacity = \"many\"",
        "reactor.queue_capacity",
        "string",
    );
    check_fails("colour = \"blue\"", "colour", "unknown field");
    check_fails(
        "[[remotes]]\nname = \"b\"\nurl = \"gopher://x\"",
        "remotes[0].url",
        "no transport handles gopher://",
    );
    check_fails(
        "[[remotes]]\nname = \"b\"\nurl = \"ws://x:1\"\n[[remotes]]\nname = \"b\"\nurl = \"ws://y:1\"",
        "remotes[1].name",
        "used twice",
    );
    check_fails(
        "[listen]\nhttp = \"127.0.0.1:8090\"\n[[remotes]]\nname = \"me\"\nurl = \"ws://localhost:8090\"",
        "remotes[0].url",
        "this node's own listener (listen.http)",
    );
    check_fails(
        "[listen]\nheader_timeout = 0",
        "listen.header_timeout",
        "at least 1",
    );
    check_fails(
        "[sync]\nhello_timeout = 0",
        "sync",
        "hello_timeout must be positive",
    );
    check_fails(
        "[scheduler.adaptive]\nmin_interval = 90000",
        "scheduler",
        "min_interval",
    );
    check_fails(
        "[scheduler]\nkind = \"psychic\"",
        "scheduler.kind",
        "unknown scheduler",
    );
    check_fails("[sync]\npush_batch_ops = 0", "reactor", "push_batch_ops");
    let out = syncline()
        .args(["config", "check", "/nonexistent/syncline.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn features_not_compiled_in_are_named() {
    let mut c = Config::default();
    c.store.kind = "redis".into();
    c.store.sections.insert(
        "redis".into(),
        serde_json::json!({ "url": "redis://127.0.0.1:1" }),
    );
    let without = NodeBackends::without(&["store-redis"]);
    let e = c.validate(&without).unwrap_err();
    assert_eq!(e.key, "store.kind");
    assert!(e.reason.contains("--features store-redis"), "{e}");
    let mut c = Config::default();
    c.remotes
        .push(syncline_core::RemoteConfig::new("b", "quic://127.0.0.1:4433").unwrap());
    let without = NodeBackends::without(&["transport-quic"]);
    let e = c.validate(&without).unwrap_err();
    assert_eq!(e.key, "remotes[0].url");
    assert!(e.reason.contains("transport-quic"), "{e}");
}

#[test]
fn the_documented_examples_are_valid() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = syncline()
                .args(["config", "check"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn backend_sections_are_checked_by_their_backends() {
    // A store setting written in [store] itself, as before the sections: says where it goes.
    check_fails(
        "[store]\nkind = \"redb\"\npath = \"/tmp/x.redb\"",
        "store.path",
        "write path under [store.redb]",
    );
    check_fails(
        "[store]\nkind = \"redis\"",
        "store.redis.url",
        "needs a server URL",
    );
    check_fails(
        "[store.redb]\ndurable = \"yes\"",
        "store.redb.durable",
        "invalid type",
    );
    check_fails(
        "[transports.quic]\ncolour = 1",
        "transports.quic.colour",
        "unknown field",
    );
    check_fails(
        "[transports.tcp]\nport = 1",
        "transports.tcp",
        "no transport named \"tcp\"",
    );
    // The effective configuration shows each backend's section with its defaults, and no
    // password.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "redis.toml",
        "[store]\nkind = \"redis\"\n[store.redis]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n",
    );
    let out = syncline()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[store.redis]"), "{stdout}");
    assert!(stdout.contains("redis://:***@127.0.0.1:6379"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("[transports.quic]") && stdout.contains("idle_timeout = 10000"),
        "{stdout}"
    );
}
