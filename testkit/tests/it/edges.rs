//! Replication at its edges, over the real memory transport: per-operation verdicts, refusals
//! that reach the writer, authorities, clocks across restarts and skewed peers, and no echo by
//! knowledge rather than by the unauthenticated origin field.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use syncline_core::store::{ApplyBatch, IncomingOp};
use syncline_core::testing::op_at;
use syncline_core::{
    DynStore, ErrorKind, Filter, ManualClock, MemoryStore, NewAction, PeerRule, StrandId,
    Submission, SyncMode,
};
use syncline_testkit::{
    fast_config, read_all, start_on, start_with_clock, start_with_rules, wait_for_count,
};
use syncline_transport_memory::MemoryNetwork;

use crate::sync::remote;

const WAIT: Duration = Duration::from_secs(10);

fn set(doc: &str, key: &str, value: i64) -> Submission {
    Submission::new(
        StrandId::parse(doc, None, None).unwrap(),
        vec![NewAction::new("set", json!({"path": format!("/{key}"), "value": value})).unwrap()],
    )
}

fn strand(doc: &str) -> StrandId {
    StrandId::parse(doc, None, None).unwrap()
}

/// A rule letting `peer` read everything and write `inbox/*` only.
fn inbox_only(peer: &str) -> Vec<PeerRule> {
    vec![PeerRule {
        peer: peer.into(),
        token: None,
        token_hash: None,
        read: Filter::all(),
        write: Filter::documents(["inbox/*"]),
    }]
}

/// One batch holds allowed and forbidden operations: the receiver applies the allowed ones and
/// refuses the other one by one; the refusal reaches the writer, which records it (by whom,
/// why), keeps only the refused operation as a dead letter, reports "not in sync", and, since
/// the receiver is the authority for that document, leaves it out of its view, so writer and
/// authority show the same state. Before per-operation verdicts the whole batch was
/// dead-lettered and the allowed operations never arrived.
#[tokio::test]
async fn a_mixed_batch_applies_what_is_allowed_and_the_writer_learns_the_rest() {
    let net = MemoryNetwork::new();
    let b = start_with_rules(&net, "b", 2, inbox_only("a"))
        .await
        .unwrap();
    let a_store: DynStore = Arc::new(MemoryStore::new());
    let a = start_on(&net, "a", a_store.clone(), fast_config(), 1)
        .await
        .unwrap();
    // Written before the remote exists, so the backfill sends them as one batch.
    a.submit(set("inbox/one", "x", 1)).await.unwrap();
    a.submit(set("private/one", "x", 2)).await.unwrap();
    a.submit(set("inbox/two", "x", 3)).await.unwrap();
    a.submit(set("private/two", "x", 4)).await.unwrap();
    let mut r = remote("b", SyncMode::Push);
    r.authority = Some(Filter::documents(["private/one"]));
    a.sync().add_remote(r).await.unwrap();

    wait_for_count(&[&b], 2, WAIT).await.unwrap();
    let err = a.sync().wait_for_sync("b", WAIT).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("not in sync"), "{err}");
    let on_b: Vec<String> = read_all(b.store())
        .await
        .unwrap()
        .iter()
        .map(|s| s.op.document_id.to_string())
        .collect();
    assert_eq!(on_b, vec!["inbox/one", "inbox/two"]);

    let letters = a.sync().dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let docs: Vec<_> = letters[0]
        .operations
        .iter()
        .map(|o| o.document_id.to_string())
        .collect();
    assert_eq!(docs, vec!["private/one", "private/two"]);
    assert_eq!(letters[0].attempts, 1);
    let refusals = a.sync().refusals().await.unwrap();
    assert_eq!(refusals.len(), 2);
    for r in &refusals {
        assert_eq!(r.by.as_str(), "b");
        assert_eq!(r.error.kind, "permission_denied");
        assert!(r.error.message.contains("may not change"), "{:?}", r.error);
    }
    let status = a.sync().remote_status("b").unwrap();
    assert!(!status.in_sync);
    assert_eq!(status.dead_letters, 1);
    assert_eq!(
        status.outbox_lag, 0,
        "the cursor passed refused operations only"
    );

    // b is the authority for private/one: a's view leaves the refused operation out (its state
    // equals b's, which never had it) while the log keeps it, flagged.
    let one = a.document(&strand("private/one")).await.unwrap();
    assert_eq!(one.state, json!({}));
    assert_eq!(one.revision, 0);
    assert_eq!(
        one.state,
        b.document(&strand("private/one")).await.unwrap().state
    );
    let listed = a.operations(&strand("private/one")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].excluded);
    // Not the authority for private/two: the writer keeps its own write.
    let two = a.document(&strand("private/two")).await.unwrap();
    assert_eq!(two.state, json!({"x": 4}));

    // Requeued while still forbidden: refused again, nothing duplicated, nothing lost.
    a.sync().requeue_dead_letter(&letters[0].id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.sync().dead_letters().await.unwrap().len(), 1);
    assert_eq!(b.store().head().await.unwrap().0, 2);

    // The exclusion survives a restart of the writer.
    a.crash().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a = start_on(&net, "a", a_store, fast_config(), 11)
        .await
        .unwrap();
    let one = a.document(&strand("private/one")).await.unwrap();
    assert_eq!(one.state, json!({}));
    assert_eq!(a.sync().refusals().await.unwrap().len(), 2);
}

/// The HLC resumes after the highest timestamp in the store: after a restart with a wall
/// clock behind what a peer wrote, a new write still sorts after everything already stored.
/// Before, the clock restarted from the wall clock and the later write lost.
#[tokio::test]
async fn the_clock_resumes_from_the_store_after_a_restart() {
    let net = MemoryNetwork::new();
    let wall = 1_800_000_000_000u64;
    let a_store: DynStore = Arc::new(MemoryStore::new());
    let clock_a = Arc::new(ManualClock::new(wall));
    let a = start_with_clock(
        &net,
        "a",
        a_store.clone(),
        fast_config(),
        1,
        clock_a.clone(),
    )
    .await
    .unwrap();
    // b's clock is four minutes ahead (within the five-minute drift limit).
    let clock_b = Arc::new(ManualClock::new(wall + 240_000));
    let b = start_with_clock(
        &net,
        "b",
        Arc::new(MemoryStore::new()),
        fast_config(),
        2,
        clock_b,
    )
    .await
    .unwrap();
    b.submit(set("doc", "v", 1)).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Pull))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    a.crash().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a = start_with_clock(&net, "a", a_store, fast_config(), 3, clock_a)
        .await
        .unwrap();
    a.submit(set("doc", "v", 2)).await.unwrap();
    let state = a.document(&strand("doc")).await.unwrap();
    assert_eq!(state.state, json!({"v": 2}), "the later write wins");
    let ops = a.operations(&strand("doc")).await.unwrap();
    assert_eq!(ops.last().unwrap().origin.as_str(), "a");
}

/// A peer whose clock is 59 minutes ahead (under the old one-hour limit, over the new
/// five-minute one) cannot drag our clock: its operations are refused one by one, over push
/// and over pull, the refusal is reported back to it, and our next timestamp stays at our wall
/// clock. Before, it was accepted and every later local timestamp was an hour ahead.
#[tokio::test]
async fn a_peer_far_ahead_is_refused_per_operation_and_never_moves_our_clock() {
    let net = MemoryNetwork::new();
    let wall = 1_800_000_000_000u64;
    let a = start_with_clock(
        &net,
        "a",
        Arc::new(MemoryStore::new()),
        fast_config(),
        1,
        Arc::new(ManualClock::new(wall)),
    )
    .await
    .unwrap();
    let c = start_with_clock(
        &net,
        "c",
        Arc::new(MemoryStore::new()),
        fast_config(),
        3,
        Arc::new(ManualClock::new(wall + 59 * 60_000)),
    )
    .await
    .unwrap();
    let b = start_with_clock(
        &net,
        "b",
        Arc::new(MemoryStore::new()),
        fast_config(),
        2,
        Arc::new(ManualClock::new(wall + 1_000)),
    )
    .await
    .unwrap();
    // c pushes to a; a pulls from b; b's operations are fine, c's are not.
    c.submit(set("doc", "c", 1)).await.unwrap();
    b.submit(set("doc", "b", 1)).await.unwrap();
    c.sync()
        .add_remote(remote("a", SyncMode::Push))
        .await
        .unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Pull))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    let err = c.sync().wait_for_sync("a", WAIT).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClockDrift, "{err}");
    let refusals = c.sync().refusals().await.unwrap();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].by.as_str(), "a");
    assert_eq!(refusals[0].error.kind, "clock_drift");
    assert_eq!(a.store().head().await.unwrap().0, 1, "only b's operation");
    let next = a.hlc().tick();
    assert!(
        next.millis < wall + 2_000,
        "our clock moved to {next} (wall {wall})"
    );

    // Over pull: a pulls from c, refuses, passes the operation and tells c.
    let c2 = start_with_clock(
        &net,
        "c2",
        Arc::new(MemoryStore::new()),
        fast_config(),
        4,
        Arc::new(ManualClock::new(wall + 59 * 60_000)),
    )
    .await
    .unwrap();
    c2.submit(set("doc", "c2", 1)).await.unwrap();
    a.sync()
        .add_remote(remote("c2", SyncMode::Pull))
        .await
        .unwrap();
    a.sync().wait_for_sync("c2", WAIT).await.unwrap();
    assert_eq!(a.store().head().await.unwrap().0, 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = c2.sync().refusals().await.unwrap();
        if !r.is_empty() {
            assert_eq!(r[0].by.as_str(), "a");
            assert_eq!(r[0].error.kind, "clock_drift");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "c2 never learned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.hlc().tick().millis < wall + 2_000);
}

/// A peer allowed to write pushes a correctly hashed operation claiming another reactor as its
/// origin. What a remote is sent depends on what it is known to hold, not on that claim: the
/// claimed origin still receives it and every reactor converges. Before, the no-echo rule
/// trusted `origin` and c never got it.
#[tokio::test]
async fn a_forged_origin_cannot_keep_a_reactor_from_converging() {
    let net = MemoryNetwork::new();
    let b_store: DynStore = Arc::new(MemoryStore::new());
    let b = start_on(&net, "b", b_store.clone(), fast_config(), 2)
        .await
        .unwrap();
    let a = start_on(&net, "a", Arc::new(MemoryStore::new()), fast_config(), 1)
        .await
        .unwrap();
    let c = start_on(&net, "c", Arc::new(MemoryStore::new()), fast_config(), 3)
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let forged = Arc::new(op_at("doc", 7, now, "c"));
    b_store
        .apply(ApplyBatch {
            ops: vec![IncomingOp {
                op: forged.clone(),
                source: None,
            }],
            meta: Vec::new(),
        })
        .await
        .unwrap();
    b.sync()
        .add_remote(remote("a", SyncMode::Push))
        .await
        .unwrap();
    a.sync()
        .add_remote(remote("c", SyncMode::Push))
        .await
        .unwrap();
    wait_for_count(&[&a, &c], 1, WAIT).await.unwrap();
    let on_c = read_all(c.store()).await.unwrap();
    assert_eq!(on_c[0].op.id, forged.id);
    assert_eq!(
        a.document(&strand("doc")).await.unwrap(),
        c.document(&strand("doc")).await.unwrap()
    );
    // And nothing is echoed back to the reactor it was received from.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.store().head().await.unwrap().0, 1);
}

/// A writer whose operation is refused two hops away learns it: the middle reactor records
/// the refusal and passes it on towards the operation's origin, on the next answer to a pull
/// (here w pulls from r in ping-pong) or with its acknowledgement (here r pulls from w2). The
/// writer's view honours it where the middle reactor is its authority for the document.
#[tokio::test]
async fn a_refusal_travels_back_through_a_relay_to_the_origin() {
    let net = MemoryNetwork::new();
    // p refuses writes by r to private/*.
    let p = start_with_rules(&net, "p", 5, inbox_only("r"))
        .await
        .unwrap();
    let r = start_on(&net, "r", Arc::new(MemoryStore::new()), fast_config(), 6)
        .await
        .unwrap();
    let w = start_on(&net, "w", Arc::new(MemoryStore::new()), fast_config(), 7)
        .await
        .unwrap();
    let w2 = start_on(&net, "w2", Arc::new(MemoryStore::new()), fast_config(), 8)
        .await
        .unwrap();
    r.sync()
        .add_remote(remote("p", SyncMode::Push))
        .await
        .unwrap();
    // w dials r (ping-pong: it pushes, and pulls r's answers); r pulls from w2.
    let mut to_r = remote("r", SyncMode::PingPong);
    to_r.authority = Some(Filter::documents(["private/*"]));
    w.sync().add_remote(to_r).await.unwrap();
    r.sync()
        .add_remote(remote("w2", SyncMode::Pull))
        .await
        .unwrap();
    w.submit(set("private/w", "x", 1)).await.unwrap();
    w.submit(set("inbox/w", "x", 1)).await.unwrap();
    w2.submit(set("private/w2", "x", 2)).await.unwrap();

    for (writer, doc) in [(&w, "private/w"), (&w2, "private/w2")] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let refusal = loop {
            let found = writer.sync().refusals().await.unwrap();
            if let Some(f) = found.into_iter().find(|f| f.strand == strand(doc)) {
                break f;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never learned that p refused its operation",
                writer.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(refusal.by.as_str(), "p", "{refusal:?}");
        assert_eq!(refusal.error.kind, "permission_denied");
    }
    // r records it too, as the one that pushed it to p.
    assert_eq!(r.sync().refusals().await.unwrap().len(), 2);
    // w made r its authority for private/*: the refused write leaves w's view.
    assert_eq!(
        w.document(&strand("private/w")).await.unwrap().state,
        json!({})
    );
    assert_eq!(
        w2.document(&strand("private/w2")).await.unwrap().state,
        json!({"x": 2}),
        "w2 has no authority"
    );
    assert_eq!(
        p.document(&strand("inbox/w")).await.unwrap().state,
        json!({"x": 1})
    );
}

/// A dead letter is sent again at most once at a time: a second requeue while the first is
/// still on its way is refused (it used to start a second, concurrent delivery of the same
/// batch), and once the first ended it may be requeued again.
#[tokio::test]
async fn a_dead_letter_is_requeued_once_at_a_time() {
    let net = MemoryNetwork::new();
    let b = start_with_rules(&net, "b", 2, inbox_only("a"))
        .await
        .unwrap();
    let a = start_on(&net, "a", Arc::new(MemoryStore::new()), fast_config(), 1)
        .await
        .unwrap();
    a.submit(set("private/one", "x", 1)).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let letter = loop {
        if let Some(l) = a.sync().dead_letters().await.unwrap().pop() {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // With b down, the requeued batch waits for a connection: it is in flight.
    b.crash().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.sync().requeue_dead_letter(&letter.id).await.unwrap();
    let err = a
        .sync()
        .requeue_dead_letter(&letter.id)
        .await
        .expect_err("already being sent again");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    // b comes back, refuses again; then the letter may be requeued again.
    let _b = start_with_rules(&net, "b", 12, inbox_only("a"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match a.sync().requeue_dead_letter(&letter.id).await {
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first requeue never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.sync().dead_letters().await.unwrap().len(), 1);
}
