//! Fixed 2 s pulls against the adaptive scheduler on the same simulated workloads (ten virtual
//! minutes each), with pokes (duplex links) and without (HTTP-like links, where the adaptive
//! scheduler long-polls an idle remote).

use syncline_testkit::sched_compare::{Kind, Workload, run};

#[test]
fn adaptive_scheduling_beats_a_fixed_interval() {
    for duplex in [true, false] {
        for workload in [Workload::Bursty, Workload::Idle, Workload::Pushing] {
            let fixed = run(workload, Kind::Fixed, duplex, 7).unwrap();
            let adaptive = run(workload, Kind::Adaptive, duplex, 7).unwrap();
            let label = format!(
                "{workload:?} ({})",
                if duplex {
                    "with pokes"
                } else {
                    "without pokes"
                }
            );
            eprintln!("{label}: fixed {fixed} | adaptive {adaptive}");
            assert_eq!(fixed.ops, adaptive.ops, "{label}: same workload");
            assert!(
                adaptive.empty_pulls < fixed.empty_pulls,
                "{label}: fewer empty pulls: {} vs {}",
                adaptive.empty_pulls,
                fixed.empty_pulls
            );
            if let (Some(a), Some(f)) = (adaptive.mean, fixed.mean) {
                assert!(a <= f, "{label}: latency no worse: {a:?} vs {f:?}");
                if workload == Workload::Bursty && !duplex {
                    assert!(a < f / 2, "{label}: latency clearly lower: {a:?} vs {f:?}");
                }
            }
        }
    }
}
