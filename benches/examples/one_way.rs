//! Runs the two-reactor one-way workload and prints what it measured (for profiling).
//!
//! `one_way [memory|redb|redis] [ops] [runs]`; `redis` uses `REDIS_URL_A`/`REDIS_URL_B`
//! (default `redis://127.0.0.1:6379` for both).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut args = std::env::args().skip(1);
    let store = args.next().unwrap_or_else(|| "memory".into());
    let ops: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let w = syncline_benches::OneWay {
        ops,
        ..Default::default()
    };
    for run in 0..runs {
        let dir =
            std::env::temp_dir().join(format!("syncline-one-way-{}-{run}", std::process::id()));
        let r = rt.block_on(async {
            let config = syncline_core::ReactorConfig::default();
            let pair = match store.as_str() {
                "redb" => syncline_benches::redb_pair(&dir, config).await,
                "redis" => {
                    let a = std::env::var("REDIS_URL_A")
                        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
                    let b = std::env::var("REDIS_URL_B").unwrap_or_else(|_| a.clone());
                    syncline_benches::redis_pair(
                        (&a, &b),
                        &format!("oneway-{}-{run}", std::process::id()),
                        config,
                    )
                    .await
                }
                _ => syncline_benches::memory_pair(config).await,
            }
            .expect("pair");
            syncline_benches::one_way(&pair, &w).await.expect("run")
        });
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "{store} run {run}: {} ops in {:?} = {:.0} ops/s; p50 {:?} p99 {:?}",
            r.ops, r.elapsed, r.ops_per_sec, r.p50, r.p99
        );
    }
}
