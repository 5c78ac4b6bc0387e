//! The driver inside reactors, under paused tokio time: pulls of an idle remote spread out to
//! the maximum, and a remote that pushes is pulled only as a safety net.

use std::sync::Arc;
use std::time::Duration;

use syncline_core::{MemoryStore, Reactor, ReactorId, RemoteConfig, Submission, SyncMode};
use syncline_scheduler::{AdaptiveScheduler, SchedulerConfig, tokio_now};
use syncline_transport_memory::MemoryNetwork;

async fn reactor(net: &MemoryNetwork, name: &str, scheduler: Arc<AdaptiveScheduler>) -> Reactor {
    let r = Reactor::builder(ReactorId::new(name).unwrap())
        .store(Arc::new(MemoryStore::new()))
        .transport(net.transport(name))
        .scheduler(scheduler)
        .seed(name.len() as u64)
        .clock(Arc::new(syncline_core::TokioClock::new(
            1_700_000_000_000,
            0,
        )))
        .start()
        .await
        .unwrap();
    r.listen(&format!("mem://{name}")).await.unwrap();
    r
}

#[tokio::test(start_paused = true)]
async fn idle_then_pushing_remote() {
    let net = MemoryNetwork::new();
    let config = SchedulerConfig::default();
    let sched = Arc::new(
        AdaptiveScheduler::new(config.clone(), tokio_now())
            .unwrap()
            .without_cpu_sampling(),
    );
    let a = reactor(
        &net,
        "a",
        Arc::new(
            AdaptiveScheduler::new(config.clone(), tokio_now())
                .unwrap()
                .without_cpu_sampling(),
        ),
    )
    .await;
    let b = reactor(&net, "b", sched.clone()).await;
    b.sync()
        .add_remote(
            RemoteConfig::new("a", "mem://a")
                .unwrap()
                .with_mode(SyncMode::Pull),
        )
        .await
        .unwrap();
    // a is idle: b's pulls spread out to the maximum.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let status = b.sync().remote_status("a").unwrap();
    assert_eq!(
        Duration::from_millis(status.pull_interval_ms),
        config.max_interval,
        "{status:?}"
    );
    let idle_pulls = status.pulls;
    assert!(idle_pulls < 20, "{idle_pulls} pulls in 5 idle minutes");
    // a starts pushing to b every few seconds: b's pulls become a safety net.
    a.sync()
        .add_remote(
            RemoteConfig::new("b", "mem://b")
                .unwrap()
                .with_mode(SyncMode::Push),
        )
        .await
        .unwrap();
    for i in 0..60 {
        a.submit(
            Submission::json(
                "doc",
                [("set", serde_json::json!({"path": "/i", "value": i}))],
            )
            .unwrap(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let inputs = sched.inputs("a");
    assert!(inputs.recent_pushes > 0, "{inputs:?}");
    assert!(
        inputs.interval >= config.safety_interval.as_secs_f64() * (1.0 - config.jitter) - 1e-9,
        "{inputs:?}"
    );
    assert_eq!(b.store().head().await.unwrap().0, 60);
}
