//! Runs the two-reactor memory workload once and prints what it measured (for profiling).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let ops: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let runs: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let w = syncline_benches::OneWay {
        ops,
        ..Default::default()
    };
    for run in 0..runs {
        let r = rt.block_on(async {
            let mut config = syncline_core::ReactorConfig::default();
            if let Ok(b) = std::env::var("BATCH") {
                config.sync.push_batch_ops = b.parse().expect("BATCH");
            }
            if let Ok(w) = std::env::var("WINDOW") {
                config.sync.push_window = w.parse().expect("WINDOW");
            }
            let pair = syncline_benches::memory_pair(config).await.expect("pair");
            syncline_benches::one_way(&pair, &w).await.expect("run")
        });
        println!(
            "run {run}: {} ops in {:?} = {:.0} ops/s; p50 {:?} p99 {:?}",
            r.ops, r.elapsed, r.ops_per_sec, r.p50, r.p99
        );
    }
}
