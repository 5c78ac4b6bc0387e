//! The simulation suite: many seeds, zero lost, duplicated or diverged operations.

use syncline_testkit::sim::{SimConfig, SimOutcome, run};

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SYNCLINE_SIM_SEED") {
        return vec![s.parse().expect("SYNCLINE_SIM_SEED must be a number")];
    }
    let count: u64 = std::env::var("SYNCLINE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    (0..count).collect()
}

#[test]
fn simulation() {
    syncline_testkit::init_tracing();
    let seeds = seeds();
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else { return };
                let cfg = SimConfig::for_seed(seed);
                match run(&cfg) {
                    Ok(out) if out.report.is_clean() && out.acked > 0 => {
                        eprintln!(
                            "seed {seed}: {} reactors {:?}, {} ops acked, {} checked, {} crashes, settled in {:?}, {:?}",
                            cfg.reactors, cfg.topology, out.acked, out.report.checked,
                            out.crashes, out.settle, out.stats
                        );
                    }
                    Ok(out) => failures.lock().unwrap().push(format!(
                        "seed {seed} ({} reactors, {:?}): {} ops acked; {}{}",
                        cfg.reactors, cfg.topology, out.acked, out.report, SimOutcome::replay_hint(seed)
                    )),
                    Err(e) => failures.lock().unwrap().push(format!(
                        "seed {seed} failed to run: {e}\n{}", SimOutcome::replay_hint(seed)
                    )),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

#[test]
fn seeds_replay_exactly() {
    // Every topology, with and without piggybacking, with crashes: three runs each must be
    // identical frame for frame.
    for seed in [0, 3, 5, 6, 9, 14, 15, 31] {
        let cfg = SimConfig::for_seed(seed);
        let first = run(&cfg).expect("run");
        assert!(first.report.is_clean(), "seed {seed}: {}", first.report);
        for _ in 0..2 {
            let again = run(&cfg).expect("run");
            assert_eq!(
                first.fingerprint, again.fingerprint,
                "seed {seed} must give the same run every time"
            );
            assert_eq!(first.stats, again.stats, "seed {seed}");
        }
    }
}

#[test]
fn simulation_on_redb() {
    use syncline_testkit::sim::SimStore;
    let count: u64 = std::env::var("SYNCLINE_SIM_REDB_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut failures = Vec::new();
    for seed in 1000..1000 + count {
        let mut cfg = SimConfig::for_seed(seed);
        cfg.store = SimStore::Redb;
        match run(&cfg) {
            Ok(out) if out.report.is_clean() && out.acked > 0 => {}
            Ok(out) => failures.push(format!("seed {seed} on redb: {}", out.report)),
            Err(e) => failures.push(format!("seed {seed} on redb failed to run: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
