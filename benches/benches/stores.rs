//! Store apply throughput for batches of 1, 100 and 1,000 operations.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use syncline_core::store::{ApplyBatch, IncomingOp};
use syncline_core::testing::op_at;
use syncline_core::{DynStore, MemoryStore};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn batch(n: u64) -> ApplyBatch {
    let start = NEXT.fetch_add(n, Ordering::Relaxed);
    ApplyBatch {
        ops: (start..start + n)
            .map(|i| IncomingOp {
                op: Arc::new(op_at(
                    &format!("bench/{}", i % 64),
                    i,
                    1_700_000_000_000 + i,
                    "bench",
                )),
                source: None,
            })
            .collect(),
        meta: vec![],
    }
}

fn apply(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let redis = syncline_testkit::redis_server::RedisServer::start().expect("redis-server");
    let stores: Vec<(&str, DynStore)> = rt.block_on(async {
        vec![
            ("memory", Arc::new(MemoryStore::new()) as DynStore),
            (
                "redb",
                Arc::new(
                    syncline_store_redb::RedbStore::open(dir.path().join("bench.redb"))
                        .await
                        .expect("redb"),
                ) as DynStore,
            ),
            (
                "redis",
                Arc::new(
                    syncline_store_redis::RedisStore::open(&redis.url(), "bench")
                        .await
                        .expect("redis"),
                ) as DynStore,
            ),
        ]
    });
    let mut g = c.benchmark_group("store_apply");
    g.sample_size(20);
    for (name, store) in &stores {
        for n in [1u64, 100, 1000] {
            g.throughput(Throughput::Elements(n));
            g.bench_function(format!("{name}/batch_{n}"), |b| {
                b.to_async(&rt).iter_batched(
                    || batch(n),
                    |batch| {
                        let store = store.clone();
                        async move { store.apply(batch).await.expect("apply") }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
