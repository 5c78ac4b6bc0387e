//! Every transport passes the same suite.

use syncline_testkit::harnesses::{
    HttpHarness, MemoryHarness, QuicHarness, RedisHarness, WsHarness,
};
use syncline_testkit::transport_suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_transport_passes_the_suite() {
    syncline_testkit::init_tracing();
    transport_suite::run(&MemoryHarness::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transport_passes_the_suite() {
    syncline_testkit::init_tracing();
    transport_suite::run(&HttpHarness).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_transport_passes_the_suite() {
    syncline_testkit::init_tracing();
    transport_suite::run(&WsHarness).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_transport_passes_the_suite() {
    syncline_testkit::init_tracing();
    transport_suite::run(&QuicHarness::new().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_transport_passes_the_suite() {
    syncline_testkit::init_tracing();
    transport_suite::run(&RedisHarness::new().unwrap())
        .await
        .unwrap();
}
