//! The reactor beyond the sync rules: document views (canonical order, the view cache's
//! bounds) and what a stopped reactor lets go of.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use syncline_core::{MemoryStore, StrandId, Submission, SyncMode};
use syncline_testkit::{fast_config, start_on, submit_increments, wait_for_count};
use syncline_transport_memory::MemoryNetwork;

const WAIT: Duration = Duration::from_secs(10);

use crate::sync::remote;

/// A late operation that sorts before the tail is inserted in the canonical order and the
/// view equals a fold from scratch, on both reactors.
#[tokio::test]
async fn late_operations_reorder_and_views_agree() {
    use syncline_core::ManualClock;
    let net = MemoryNetwork::new();
    let clock_a = Arc::new(ManualClock::new(2_000_000));
    let clock_b = Arc::new(ManualClock::new(1_000_000));
    let mut config = fast_config();
    config.snapshot_every = 4;
    // The clocks are 1,000 s apart on purpose: allow it.
    config.max_clock_drift = Duration::from_secs(3600);
    let a = syncline_testkit::start_with_clock(
        &net,
        "a",
        Arc::new(MemoryStore::new()),
        config.clone(),
        1,
        clock_a,
    )
    .await
    .unwrap();
    let b = syncline_testkit::start_with_clock(
        &net,
        "b",
        Arc::new(MemoryStore::new()),
        config,
        2,
        clock_b,
    )
    .await
    .unwrap();
    let strand = StrandId::parse("doc", None, None).unwrap();
    // Both write offline; b's clock is behind, so its operations sort first.
    for i in 0..20 {
        a.submit(
            Submission::json(
                "doc",
                [("push", json!({"path": "/log", "value": format!("a{i}")}))],
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let before = a.document(&strand).await.unwrap();
    assert_eq!(before.revision, 20);
    for i in 0..3 {
        b.submit(
            Submission::json(
                "doc",
                [("push", json!({"path": "/log", "value": format!("b{i}")}))],
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
    b.submit(Submission::json("doc", [("set", json!({"path": "/log", "value": "oops"}))]).unwrap())
        .await
        .unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::PingPong))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    let va = a.document(&strand).await.unwrap();
    let vb = b.document(&strand).await.unwrap();
    assert_eq!(va, vb);
    assert_eq!(va.revision, 24);
    // b's set replaced its own pushes; a's pushes then failed on a string, deterministically.
    assert_eq!(va.state["log"], json!("oops"));
    assert_eq!(va.errored, 20);
    let ops_a = a.operations(&strand).await.unwrap();
    let ops_b = b.operations(&strand).await.unwrap();
    assert_eq!(ops_a, ops_b);
    assert!(ops_a[..4].iter().all(|o| o.origin.as_str() == "b"));
    assert!(ops_a[4..].iter().all(|o| o.error.is_some()));
    // A fresh view over the same store agrees with the incrementally rolled-back one.
    let fresh = syncline_core::DocumentView::new(
        a.store().clone(),
        Arc::new(syncline_core::ModelRegistry::default()),
        &syncline_core::EventBus::new(),
        1_000,
        10,
        Arc::default(),
    );
    assert_eq!(fresh.state(&strand).await.unwrap(), va);
}

/// A reactor that stopped (gracefully or by crash) holds no memory: its remotes, sessions and
/// tasks let go of the context, so the store it was given comes back with a single owner. An
/// embedded user can stop a reactor and reopen its store file in the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reactor_lets_go_of_its_store() {
    for crash in [false, true] {
        let net = MemoryNetwork::new();
        let store_a = Arc::new(MemoryStore::new());
        let store_b = Arc::new(MemoryStore::new());
        let a = start_on(&net, "a", store_a.clone(), fast_config(), 1)
            .await
            .unwrap();
        let b = start_on(&net, "b", store_b.clone(), fast_config(), 2)
            .await
            .unwrap();
        a.sync()
            .add_remote(remote("b", SyncMode::PingPong))
            .await
            .unwrap();
        submit_increments(&a, "doc", 200, 20).await.unwrap();
        submit_increments(&b, "other", 100, 20).await.unwrap();
        wait_for_count(&[&a, &b], 300, WAIT).await.unwrap();
        for r in [&a, &b] {
            if crash {
                r.crash().await;
            } else {
                r.shutdown(Duration::from_secs(1)).await;
            }
        }
        drop((a, b));
        // Aborted tasks are dropped by the runtime shortly after.
        let deadline = tokio::time::Instant::now() + WAIT;
        while Arc::strong_count(&store_a) > 1 || Arc::strong_count(&store_b) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "crash {crash}: still held: a {} b {}",
                Arc::strong_count(&store_a),
                Arc::strong_count(&store_b)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The view cache is bounded: the least recently read strand leaves it, and a strand keeps at
/// most `MAX_SNAPSHOTS` snapshots; a late operation that sorts before the oldest kept snapshot
/// folds the strand from its start and still agrees with a fresh view.
#[tokio::test]
async fn the_view_cache_evicts_the_least_recently_used_and_bounds_snapshots() {
    use syncline_core::ManualClock;
    use syncline_core::view::MAX_SNAPSHOTS;
    let net = MemoryNetwork::new();
    let mut config = fast_config();
    config.snapshot_every = 4;
    config.max_cached_views = 2;
    let a = syncline_testkit::start_with_clock(
        &net,
        "a",
        Arc::new(MemoryStore::new()),
        config.clone(),
        1,
        Arc::new(ManualClock::new(2_000_000)),
    )
    .await
    .unwrap();
    let b = syncline_testkit::start_with_clock(
        &net,
        "b",
        Arc::new(MemoryStore::new()),
        config,
        2,
        Arc::new(ManualClock::new(1_900_000)),
    )
    .await
    .unwrap();
    let (x, y, z) = (
        StrandId::parse("x", None, None).unwrap(),
        StrandId::parse("y", None, None).unwrap(),
        StrandId::parse("z", None, None).unwrap(),
    );
    submit_increments(&a, "x", 100, 10).await.unwrap();
    submit_increments(&a, "y", 1, 1).await.unwrap();
    submit_increments(&a, "z", 1, 1).await.unwrap();
    a.document(&x).await.unwrap();
    a.document(&y).await.unwrap();
    a.document(&x).await.unwrap();
    a.document(&z).await.unwrap();
    assert!(a.view().is_cached(&x), "read last but one");
    assert!(!a.view().is_cached(&y), "the least recently read leaves");
    assert!(a.view().is_cached(&z));
    assert_eq!(
        a.view().snapshots(&x).await,
        MAX_SNAPSHOTS,
        "100 / 4 = 25 made, 16 kept"
    );
    // b's clock is behind: its operation sorts before all of a's, before every kept snapshot.
    b.submit(Submission::json("x", [("set", json!({"path": "/n", "value": 1000}))]).unwrap())
        .await
        .unwrap();
    b.sync()
        .add_remote(remote("a", SyncMode::Push))
        .await
        .unwrap();
    b.sync().wait_for_sync("a", WAIT).await.unwrap();
    let view = a.document(&x).await.unwrap();
    assert_eq!(view.revision, 101);
    assert_eq!(
        view.state,
        json!({"n": 1100}),
        "set first, then 100 increments"
    );
    let fresh = syncline_core::DocumentView::new(
        a.store().clone(),
        Arc::new(syncline_core::ModelRegistry::default()),
        &syncline_core::EventBus::new(),
        4,
        2,
        Arc::default(),
    );
    assert_eq!(fresh.state(&x).await.unwrap(), view);
}

/// The view cache is bounded in bytes too: big states push the least recently read strands
/// out, the strand just read stays even alone over the bound, and an evicted strand reads the
/// same again.
#[tokio::test]
async fn the_view_cache_is_bounded_in_bytes() {
    let net = MemoryNetwork::new();
    let mut config = fast_config();
    config.snapshot_every = 4;
    config.max_view_bytes = 200_000;
    let a = syncline_testkit::start_on(&net, "a", Arc::new(MemoryStore::new()), config, 1)
        .await
        .unwrap();
    let big = "x".repeat(20_000);
    let strands: Vec<StrandId> = (0..4)
        .map(|i| StrandId::parse(&format!("big{i}"), None, None).unwrap())
        .collect();
    for s in &strands {
        // Four 20 KB values: with its snapshot, about 100 KB per strand.
        let actions: Vec<_> = (0..4)
            .map(|k| ("set", json!({"path": format!("/k{k}"), "value": big})))
            .collect();
        a.submit(Submission::json(s.document_id.as_str(), actions).unwrap())
            .await
            .unwrap();
    }
    let mut states = Vec::new();
    for s in &strands {
        states.push(a.document(s).await.unwrap());
        assert!(a.view().is_cached(s), "the strand just read stays");
        let bytes = a.view().cached_bytes();
        assert!(
            bytes <= 200_000 || strands.iter().filter(|x| a.view().is_cached(x)).count() == 1,
            "{bytes} bytes cached"
        );
    }
    assert!(
        !a.view().is_cached(&strands[0]),
        "the least recently read left"
    );
    assert!(a.view().is_cached(&strands[3]));
    assert!(
        a.view().cached_bytes() > 80_000,
        "{}",
        a.view().cached_bytes()
    );
    assert_eq!(a.document(&strands[0]).await.unwrap(), states[0]);
    a.shutdown(Duration::from_secs(1)).await;
}
