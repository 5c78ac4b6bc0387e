//! Two reactors, memory store and memory transport: 100k operations submitted on A until B
//! holds all of them.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use syncline_benches::{OneWay, memory_pair, one_way};
use syncline_core::ReactorConfig;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn e2e(c: &mut Criterion) {
    let rt = runtime();
    let w = OneWay::default();
    let mut g = c.benchmark_group("e2e");
    g.sample_size(10);
    g.throughput(Throughput::Elements(w.ops as u64));
    g.bench_function("memory_store_memory_transport_100k", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let pair = memory_pair(ReactorConfig::default()).await.expect("pair");
                    let r = one_way(&pair, &w).await.expect("run");
                    total += r.elapsed;
                    pair.a.shutdown(std::time::Duration::from_secs(1)).await;
                    pair.b.shutdown(std::time::Duration::from_secs(1)).await;
                }
                total
            })
        })
    });
    g.finish();
    // Latency percentiles come from separate runs (criterion reports means only).
    for run in 0..3 {
        let r = rt.block_on(async {
            let pair = memory_pair(ReactorConfig::default()).await.expect("pair");
            one_way(&pair, &w).await.expect("run")
        });
        println!(
            "e2e memory/memory run {run}: {} ops in {:?} = {:.0} ops/s; push-to-applied p50 {:?} p99 {:?} max {:?}",
            r.ops, r.elapsed, r.ops_per_sec, r.p50, r.p99, r.max
        );
    }
}

criterion_group!(benches, e2e);
criterion_main!(benches);
