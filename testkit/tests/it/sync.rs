//! Sync behaviour from seeds 000 and 004, over the memory transport.

use std::time::Duration;

use syncline_core::{RemoteConfig, SyncMode};
use syncline_testkit::{start_memory, submit_increments, wait_for_count};
use syncline_transport_memory::MemoryNetwork;

#[tokio::test]
async fn push_pull_and_ping_pong_converge() {
    for mode in [SyncMode::Push, SyncMode::Pull, SyncMode::PingPong] {
        let net = MemoryNetwork::new();
        let a = start_memory(&net, "a", 1).await.unwrap();
        let b = start_memory(&net, "b", 2).await.unwrap();
        submit_increments(&a, "doc", 500, 50).await.unwrap();
        a.sync()
            .add_remote(RemoteConfig::new("b", "mem://b").unwrap().with_mode(mode))
            .await
            .unwrap();
        if mode == SyncMode::Push {
            a.sync().wait_for_sync("b", Duration::from_secs(10)).await.unwrap();
            wait_for_count(&[&b], 500, Duration::from_secs(10)).await.unwrap();
        } else {
            // a pulls from b (and pushes for ping-pong); b's writes must reach a.
            submit_increments(&b, "other", 300, 30).await.unwrap();
            a.sync().wait_for_sync("b", Duration::from_secs(10)).await.unwrap();
            let expect_a = 800;
            wait_for_count(&[&a], expect_a, Duration::from_secs(10)).await.unwrap();
        }
    }
}
