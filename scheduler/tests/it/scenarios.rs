//! Each scenario is a list of steps (time passing, pulls, pushes, load) and a check of the
//! decisions the controller made.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use syncline_core::{FixedInterval, PullReport, RetryPolicy, Scheduler};
use syncline_scheduler::{Controller, Decision, Reason, SchedulerConfig};

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Time passes.
    Wait(u64),
    /// A pull finished: operations, has_more, round trip in ms.
    Pull(usize, bool, u64),
    /// A pull failed.
    Fail,
    /// The remote pushed a batch to us.
    PushReceived,
    /// Local load: queue fill, commit time in ms.
    Load(f64, u64),
}

use Step::*;

/// Runs the steps with no jitter (the jitter input at its midpoint) and returns the decisions.
fn run(config: SchedulerConfig, steps: &[Step]) -> Vec<Decision> {
    let mut c = Controller::new(config);
    let mut now = Duration::ZERO;
    let mut out = Vec::new();
    for s in steps {
        match *s {
            Wait(ms) => now += Duration::from_millis(ms),
            Pull(ops, has_more, rtt) => out.push(c.on_pull(
                "r",
                now,
                &PullReport {
                    ok: true,
                    ops,
                    bytes: ops * 200,
                    has_more,
                    rtt: Duration::from_millis(rtt),
                },
                0.5,
            )),
            Fail => out.push(c.on_pull("r", now, &PullReport::default(), 0.5)),
            PushReceived => c.on_push_received("r", now),
            Load(fill, lag) => c.on_load(fill, Duration::from_millis(lag), None),
        }
    }
    out
}

/// Pulls at the intervals the controller chooses, `n` times, each bringing `ops`.
fn follow(c: &mut Controller, now: &mut Duration, n: usize, ops: usize) -> Vec<Decision> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = c.on_pull(
            "r",
            *now,
            &PullReport {
                ok: true,
                ops,
                bytes: ops * 200,
                has_more: false,
                rtt: Duration::from_millis(2),
            },
            0.5,
        );
        *now += d.interval;
        out.push(d);
    }
    out
}

fn secs(d: &Decision) -> f64 {
    d.interval.as_secs_f64()
}

type Check = fn(&SchedulerConfig, &[Decision]);

#[test]
fn scenarios() {
    let table: Vec<(&str, Vec<Step>, Check)> = vec![
        (
            "has_more pulls again at once",
            vec![Pull(1024, true, 5), Pull(1024, true, 5), Pull(10, false, 5)],
            |_, d| {
                assert_eq!(d[0].interval, Duration::ZERO);
                assert_eq!(d[0].reason, Reason::HasMore);
                assert_eq!(d[1].interval, Duration::ZERO);
                assert!(d[2].interval > Duration::ZERO);
            },
        ),
        (
            "an idle remote's interval grows to the maximum",
            (0..12)
                .flat_map(|_| [Pull(0, false, 5), Wait(1_000)])
                .collect(),
            |c, d| {
                for w in d.windows(2) {
                    assert!(
                        secs(&w[1]) >= secs(&w[0]),
                        "never shrinks while idle: {d:?}"
                    );
                }
                assert_eq!(d.last().unwrap().interval, c.max_interval);
                assert_eq!(d.last().unwrap().reason, Reason::Idle);
            },
        ),
        (
            "active pushes from the remote relax pulls to the safety net",
            (0..10)
                .flat_map(|_| [PushReceived, Wait(2_000), Pull(0, false, 5)])
                .chain([Wait(1_000), Pull(5, false, 5)])
                .collect(),
            |c, d| {
                for x in d {
                    assert!(x.interval >= c.safety_interval, "{x:?}");
                }
                assert_eq!(d.last().unwrap().reason, Reason::Pushing);
            },
        ),
        (
            "busy remotes are pulled sooner than quiet ones",
            vec![
                Pull(5, false, 2),
                Wait(500),
                Pull(5, false, 2),
                Wait(500),
                Pull(500, false, 2),
                Wait(500),
                Pull(500, false, 2),
            ],
            |c, d| {
                assert_eq!(d[0].reason, Reason::Active);
                assert!(d[0].interval <= c.active_interval);
                assert!(d[3].interval < d[1].interval, "{d:?}");
            },
        ),
        (
            "rising RTT backs pulls off",
            vec![
                Pull(5, false, 5),
                Wait(1_000),
                Pull(5, false, 400),
                Wait(1_000),
                Pull(5, false, 800),
                Wait(1_000),
                Pull(5, false, 800),
            ],
            |_, d| {
                assert!(secs(&d[3]) > 2.0 * secs(&d[0]), "{d:?}");
            },
        ),
        (
            "a deep local queue backs pulls off",
            vec![
                Pull(5, false, 2),
                Wait(1_000),
                Load(0.9, 10),
                Pull(5, false, 2),
                Wait(1_000),
                Load(0.1, 10),
                Pull(5, false, 2),
            ],
            |_, d| {
                assert!(secs(&d[1]) > 2.5 * secs(&d[0]), "{d:?}");
                assert!(
                    secs(&d[2]) < secs(&d[1]),
                    "recovers when the queue drains: {d:?}"
                );
            },
        ),
        (
            "slow commits back pulls off",
            vec![
                Pull(5, false, 2),
                Wait(1_000),
                Load(0.0, 1_000),
                Pull(5, false, 2),
            ],
            |_, d| {
                assert!(secs(&d[1]) >= 4.0 * secs(&d[0]), "{d:?}");
            },
        ),
        (
            "failures back off exponentially and reset on success",
            vec![Fail, Fail, Fail, Fail, Fail, Pull(5, false, 2), Fail],
            |c, d| {
                let caps: Vec<f64> = (1..=5)
                    .map(|n| c.backoff.cap(n).as_secs_f64() / 2.0)
                    .collect();
                for (i, cap) in caps.iter().enumerate() {
                    assert_eq!(d[i].reason, Reason::Failure);
                    assert!(
                        (secs(&d[i]) - cap.max(c.min_interval.as_secs_f64())).abs() < 1e-6,
                        "{d:?}"
                    );
                }
                assert_eq!(d[5].reason, Reason::Active);
                assert!(
                    (secs(&d[6]) - caps[0].max(c.min_interval.as_secs_f64())).abs() < 1e-6,
                    "reset"
                );
            },
        ),
    ];
    for (name, steps, check) in table {
        let config = SchedulerConfig::default();
        let decisions = run(config.clone(), &steps);
        eprintln!(
            "{name}: {:?}",
            decisions.iter().map(secs).collect::<Vec<_>>()
        );
        check(&config, &decisions);
    }
}

#[test]
fn pushes_stopping_tightens_pulls_within_a_few_intervals() {
    let config = SchedulerConfig::default();
    let mut c = Controller::new(config.clone());
    let mut now = Duration::ZERO;
    // The remote pushes every second while we pull what little it also writes.
    for _ in 0..30 {
        c.on_push_received("r", now);
        now += Duration::from_secs(1);
    }
    let relaxed = follow(&mut c, &mut now, 1, 3);
    assert_eq!(relaxed[0].reason, Reason::Pushing);
    assert!(relaxed[0].interval >= config.safety_interval);
    // The pushes stop; the remote keeps writing, so pulls bring operations.
    let after = follow(&mut c, &mut now, 4, 3);
    let tight = after
        .iter()
        .position(|d| d.interval <= config.active_interval)
        .expect("pulls tighten");
    assert!(tight <= 2, "tightened after {tight} intervals: {after:?}");
}

#[test]
fn failure_backoff_is_jittered() {
    let mut c = Controller::new(SchedulerConfig::default());
    let report = PullReport::default();
    let low = c.on_pull("a", Duration::ZERO, &report, 0.0).interval;
    let mut c2 = Controller::new(SchedulerConfig::default());
    let high = c2.on_pull("a", Duration::ZERO, &report, 0.99).interval;
    assert!(
        high > low,
        "full jitter spreads retries: {low:?} vs {high:?}"
    );
}

/// 100 reactors pull one idle server from the same moment: with the adaptive scheduler their
/// pulls spread out; with a fixed interval they arrive together.
#[test]
fn a_hundred_reactors_spread_out() {
    fn busiest_bucket(times: &[Duration]) -> usize {
        let mut buckets = std::collections::BTreeMap::new();
        for t in times {
            *buckets.entry(t.as_millis() / 100).or_insert(0usize) += 1;
        }
        buckets.values().copied().max().unwrap_or(0)
    }
    let horizon = Duration::from_secs(300);
    let report = PullReport {
        ok: true,
        rtt: Duration::from_millis(2),
        ..PullReport::default()
    };
    let mut adaptive = Vec::new();
    let mut fixed = Vec::new();
    for r in 0..100u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(r);
        let mut c = Controller::new(SchedulerConfig::default());
        let f = FixedInterval::new(Duration::from_secs(2), RetryPolicy::default());
        let (mut t, mut tf) = (Duration::ZERO, Duration::ZERO);
        while t < horizon {
            if t > horizon / 2 {
                adaptive.push(t);
            }
            t += c.on_pull("server", t, &report, rng.random()).interval;
        }
        while tf < horizon {
            if tf > horizon / 2 {
                fixed.push(tf);
            }
            tf += f.next_pull("server", &report, rng.random());
        }
    }
    let (a, f) = (busiest_bucket(&adaptive), busiest_bucket(&fixed));
    eprintln!("busiest 100 ms: adaptive {a} pulls, fixed {f} pulls");
    assert_eq!(f, 100, "a fixed interval keeps everyone in lock-step");
    assert!(a <= 15, "jitter spreads pulls: {a} in one 100 ms bucket");
    assert!(
        adaptive.len() < fixed.len() / 5,
        "and an idle server is pulled far less"
    );
}

#[test]
fn bad_settings_are_refused_with_the_key() {
    let c = SchedulerConfig {
        min_interval: Duration::from_secs(60),
        ..SchedulerConfig::default()
    };
    let e = c.validate().unwrap_err();
    assert!(e.message().contains("scheduler.min_interval"), "{e}");
    let c = SchedulerConfig {
        jitter: 1.5,
        ..SchedulerConfig::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .message()
            .contains("scheduler.jitter")
    );
}
