//! `syncline bench`: the smoke run of the matrix, its JSON, Markdown and chart, plugins and a
//! Redis server of its own in the matrix, and clear errors.

use serde_json::Value;
use syncline_testkit::plugin_library;

use crate::support::syncline;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = syncline().arg("bench").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every run of `matrix` succeeded and measured something plausible.
fn check_runs(matrix: &Value, expected: usize) {
    let runs = matrix["runs"].as_array().unwrap();
    assert_eq!(runs.len(), expected, "{matrix:#}");
    for r in runs {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
        assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
        // Every operation crossed the wire once, in frames of at least its encoded size.
        let bytes = r["frame_bytes_per_op"].as_f64().unwrap();
        assert!((40.0..2000.0).contains(&bytes), "{r}");
        if ["one-way", "steady"].contains(&r["workload"].as_str().unwrap()) {
            let (p50, p99) = (r["p50_us"].as_u64().unwrap(), r["p99_us"].as_u64().unwrap());
            assert!(p50 > 0 && p50 <= p99, "{r}");
        } else {
            assert!(r["p50_us"].is_null(), "{r}");
        }
    }
}

#[test]
fn the_memory_smoke_run_reports_every_workload() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.json");
    let chart = dir.path().join("m.svg");
    let (ok, out, err) = bench(&[
        "--only",
        "memory/memory",
        "--ops",
        "10000",
        "--duration",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let matrix: Value = serde_json::from_str(&out).unwrap();
    check_runs(&matrix, 4);
    assert_eq!(matrix["ops"], 10000);
    assert!(matrix["machine"]["cpus"].as_u64().unwrap() >= 1);
    // Progress goes to standard error, one line per run when it is not a terminal.
    assert!(err.contains("[4/4] memory/memory/catch-up"), "{err}");
    std::fs::write(&json, &out).unwrap();
    // The saved matrix renders as a table, Markdown and a chart without running again.
    let (ok, table, err) = bench(&["--from", json.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        table.contains("one-way ops/s") && table.contains("memory     memory"),
        "{table}"
    );
    let (ok, md, err) = bench(&[
        "--from",
        json.to_str().unwrap(),
        "--markdown",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(md.starts_with("| transport | store |"), "{md}");
    assert!(md.contains("| memory | memory |"), "{md}");
    // Against this machine's limits (the shape the limits example writes).
    let limits = dir.path().join("limits.json");
    std::fs::write(
        &limits,
        r#"{"ops": 1024, "op_bytes": 136, "batch": 1024,
            "transports": {"memory": 1000000000.0}, "stores": {"memory": 2000000000.0}}"#,
    )
    .unwrap();
    let (ok, text, err) = bench(&[
        "--from",
        json.to_str().unwrap(),
        "--limits",
        limits.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        text.contains("of transport") && text.contains("of store"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("memory") && l.contains('%'))
        .unwrap_or_else(|| panic!("a limits row: {text}"));
    assert!(
        line.contains("1000.00M") && line.contains("2000.00M") && line.ends_with('%'),
        "{line}"
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("memory / memory"),
        "{svg}"
    );
    assert!(svg.matches("<rect").count() > 5, "bars are drawn");
}

#[test]
fn plugins_and_redis_join_the_matrix() {
    let (ok, out, err) = bench(&[
        "--plugin",
        plugin_library("tcp").to_str().unwrap(),
        "--plugin",
        plugin_library("kvfile").to_str().unwrap(),
        "--only",
        "tcp/kvfile/one-way,redis/redis/both-ways,websocket/redb/catch-up",
        "--ops",
        "3000",
        "--repeat",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    let matrix: Value = serde_json::from_str(&out).unwrap();
    check_runs(&matrix, 3);
    // Repeated runs report the median and keep every sample.
    for r in matrix["runs"].as_array().unwrap() {
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2, "{r}");
        assert!(
            samples
                .iter()
                .any(|s| s.as_f64() == r["ops_per_sec"].as_f64()),
            "{r}"
        );
    }
    let combos: Vec<String> = matrix["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["transport"].as_str().unwrap(),
                r["store"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(combos, ["websocket/redb", "redis/redis", "tcp/kvfile"]);
}

#[test]
fn bad_requests_fail_clearly() {
    let (ok, _, err) = bench(&["--only", "carrier-pigeon"]);
    assert!(!ok);
    assert!(
        err.contains("selects nothing") && err.contains("the transports here are"),
        "{err}"
    );
    let (ok, _, err) = bench(&["--ops", "0"]);
    assert!(!ok);
    assert!(err.contains("must be positive"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{}").unwrap();
    let (ok, _, err) = bench(&["--from", junk.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("is not a matrix saved with --json"), "{err}");
    let (ok, _, err) = bench(&["--plugin", "/nonexistent/libx.so", "--list"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/libx.so") && err.contains("does not exist"),
        "{err}"
    );
    // A Redis server that is not there fails the runs that need it, each with the reason.
    let (ok, _, err) = bench(&[
        "--only",
        "memory/redis/one-way",
        "--redis",
        "redis://127.0.0.1:1",
        "--ops",
        "100",
    ]);
    assert!(!ok);
    assert!(err.contains("memory/redis/one-way: FAILED"), "{err}");
    assert!(err.contains("1 of 1 runs failed"), "{err}");
}
