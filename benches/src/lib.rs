//! Benchmark helpers: the workloads of `syncline bench` (re-exported from
//! `syncline::bench::workloads`) and pairs of reactors on each store over the memory transport.

use std::sync::Arc;

use syncline_core::{ReactorConfig, Result};

pub use syncline::bench::workloads::*;

/// A and B on memory stores over the memory transport.
pub async fn memory_pair(config: ReactorConfig) -> Result<Pair> {
    let net = syncline_transport_memory::MemoryNetwork::new();
    pair(
        (
            Arc::new(syncline_core::MemoryStore::new()),
            Arc::new(syncline_core::MemoryStore::new()),
        ),
        (net.transport("bench-a"), net.transport("bench-b")),
        Some("mem://bench-b"),
        "mem://bench-b",
        config,
    )
    .await
}

/// A and B on redb files in `dir` over the memory transport.
pub async fn redb_pair(dir: &std::path::Path, config: ReactorConfig) -> Result<Pair> {
    let net = syncline_transport_memory::MemoryNetwork::new();
    let a = syncline_store_redb::RedbStore::open(dir.join("a.redb")).await?;
    let b = syncline_store_redb::RedbStore::open(dir.join("b.redb")).await?;
    pair(
        (Arc::new(a), Arc::new(b)),
        (net.transport("bench-a"), net.transport("bench-b")),
        Some("mem://bench-b"),
        "mem://bench-b",
        config,
    )
    .await
}

/// A and B on two datasets of the Redis server(s) at `urls` over the memory transport.
pub async fn redis_pair(urls: (&str, &str), dataset: &str, config: ReactorConfig) -> Result<Pair> {
    let net = syncline_transport_memory::MemoryNetwork::new();
    let a = syncline_store_redis::RedisStore::open(urls.0, &format!("{dataset}-a")).await?;
    let b = syncline_store_redis::RedisStore::open(urls.1, &format!("{dataset}-b")).await?;
    pair(
        (Arc::new(a), Arc::new(b)),
        (net.transport("bench-a"), net.transport("bench-b")),
        Some("mem://bench-b"),
        "mem://bench-b",
        config,
    )
    .await
}
