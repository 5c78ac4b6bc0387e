//! Two reactors over the memory transport: 100k operations submitted on A until B holds all of
//! them, on the memory, redb and Redis stores.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use syncline_benches::{OneWay, Pair, memory_pair, one_way, redb_pair, redis_pair};
use syncline_core::ReactorConfig;
use syncline_testkit::redis_server::RedisServer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Redb,
    Redis,
}

async fn make(
    kind: Kind,
    servers: &(RedisServer, RedisServer),
    n: u64,
) -> (Pair, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = ReactorConfig::default();
    let pair = match kind {
        Kind::Memory => memory_pair(config).await,
        Kind::Redb => redb_pair(dir.path(), config).await,
        Kind::Redis => {
            redis_pair(
                (&servers.0.url(), &servers.1.url()),
                &format!("e2e-{n}"),
                config,
            )
            .await
        }
    }
    .expect("pair");
    (pair, dir)
}

fn e2e(c: &mut Criterion) {
    let rt = runtime();
    let servers = (
        RedisServer::start().expect("redis-server"),
        RedisServer::start().expect("redis-server"),
    );
    let w = OneWay::default();
    let mut g = c.benchmark_group("e2e");
    g.sample_size(10);
    g.throughput(Throughput::Elements(w.ops as u64));
    let mut n = 0u64;
    for (name, kind) in [
        ("memory", Kind::Memory),
        ("redb", Kind::Redb),
        ("redis", Kind::Redis),
    ] {
        g.bench_function(format!("{name}_store_memory_transport_100k"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        n += 1;
                        let (pair, _dir) = make(kind, &servers, n).await;
                        total += one_way(&pair, &w).await.expect("run").elapsed;
                        pair.a.shutdown(Duration::from_secs(1)).await;
                        pair.b.shutdown(Duration::from_secs(1)).await;
                    }
                    total
                })
            })
        });
        // Latency percentiles come from separate runs (criterion reports means only).
        for run in 0..3 {
            n += 1;
            let r = rt.block_on(async {
                let (pair, _dir) = make(kind, &servers, n).await;
                let r = one_way(&pair, &w).await.expect("run");
                pair.a.shutdown(Duration::from_secs(1)).await;
                pair.b.shutdown(Duration::from_secs(1)).await;
                r
            });
            println!(
                "e2e {name}/memory run {run}: {} ops in {:?} = {:.0} ops/s; push-to-applied p50 {:?} p99 {:?} max {:?}",
                r.ops, r.elapsed, r.ops_per_sec, r.p50, r.p99, r.max
            );
        }
    }
    g.finish();
}

criterion_group!(benches, e2e);
criterion_main!(benches);
