//! Runs the transport workloads for every transport and prints a table: 100k operations one
//! way, 100k both ways, and push-to-applied latency at a steady 1,000 ops/s (memory store).
//!
//! `tcp-plugin` is the example `tcp` plugin loaded through the C boundary and `tcp-native` the
//! same plugin code compiled in, for the boundary's overhead (build the plugin first:
//! `cargo build --release -p syncline-plugin-tcp`).
//!
//! `cargo run --release -p syncline-benches --example transports [ops] [only]`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use syncline_benches::{OneWay, Pair, both_ways, one_way, steady};
use syncline_core::{MemoryStore, ReactorConfig, RemoteConfig, SyncMode};
use syncline_plugin_host::{LinkTransport, Native, Plugin};
use syncline_testkit::harnesses::{
    HttpHarness, ListeningHarness, MemoryHarness, QuicHarness, RedisHarness, WsHarness,
};
use syncline_testkit::transport_suite::{Node, TransportHarness};

async fn pair(h: &dyn TransportHarness, mode: SyncMode) -> (Pair, Node, Node) {
    let config = ReactorConfig::default();
    let a = h
        .start("bench-a", Arc::new(MemoryStore::new()), config.clone())
        .await
        .expect("a");
    let b = h
        .start("bench-b", Arc::new(MemoryStore::new()), config)
        .await
        .expect("b");
    a.reactor
        .sync()
        .add_remote(
            RemoteConfig::new("b", &b.url)
                .expect("remote")
                .with_mode(mode),
        )
        .await
        .expect("remote");
    let p = Pair {
        a: a.reactor.clone(),
        b: b.reactor.clone(),
    };
    (p, a, b)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let only = args.next();
    rt.block_on(async {
        let harnesses: Vec<Box<dyn TransportHarness>> = vec![
            Box::new(MemoryHarness::default()),
            Box::new(HttpHarness),
            Box::new(WsHarness),
            Box::new(QuicHarness::new().expect("quic")),
            Box::new(RedisHarness::new().expect("redis")),
            Box::new(ListeningHarness::new(
                "tcp-plugin",
                "tcp",
                Plugin::load(&syncline_testkit::plugin_library("tcp"))
                    .expect("the tcp plugin")
                    .transport()
                    .expect("a transport"),
            )),
            Box::new(ListeningHarness::new(
                "tcp-native",
                "tcp",
                Arc::new(LinkTransport::new(Native::<syncline_plugin_tcp::Plugin>::new())),
            )),
        ];
        println!("| transport | one way, ops/s | burst p50 / p99 | both ways, ops/s | steady 1,000 ops/s p50 / p99 |");
        println!("|---|---|---|---|---|");
        for h in &harnesses {
            if only.as_deref().is_some_and(|o| o != h.name()) {
                continue;
            }
            let mut burst = Vec::new();
            for _ in 0..3 {
                let (p, a, b) = pair(h.as_ref(), SyncMode::Push).await;
                burst.push(one_way(&p, &OneWay { ops, ..Default::default() }).await.expect("one way"));
                a.crash().await;
                b.crash().await;
            }
            burst.sort_by(|x, y| x.ops_per_sec.total_cmp(&y.ops_per_sec));
            let mid = &burst[1];
            let (p, a, b) = pair(h.as_ref(), SyncMode::PingPong).await;
            let both = both_ways(&p, ops).await.expect("both ways");
            a.crash().await;
            b.crash().await;
            let (p, a, b) = pair(h.as_ref(), SyncMode::Push).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let st = steady(&p, 1_000, Duration::from_secs(5), 10).await.expect("steady");
            a.crash().await;
            b.crash().await;
            println!(
                "| {} | {:.0} (runs: {}) | {:.1?} / {:.1?} | {:.0} | {:.2?} / {:.2?} |",
                h.name(),
                mid.ops_per_sec,
                burst.iter().map(|r| format!("{:.0}k", r.ops_per_sec / 1000.0)).collect::<Vec<_>>().join(", "),
                mid.p50,
                mid.p99,
                both.ops_per_sec,
                st.p50,
                st.p99
            );
        }
    });
}
