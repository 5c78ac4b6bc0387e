//! Sync behaviour from seeds 000 and 004, over the memory transport: each rule of the design's
//! protocol section is a test here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use syncline_core::filter::ReadFilter;
use syncline_core::sync::{Direction, SyncState};
use syncline_core::{
    DynStore, ErrorKind, Filter, JobStatus, MemoryStore, NewAction, Ordinal, PeerRule, Reactor,
    ReactorId, RemoteConfig, RetryPolicy, StrandId, Submission, SyncMode,
};
use syncline_testkit::{
    fast_config, read_all, start_memory, start_on, submit_increments, wait_for_count,
};
use syncline_transport_memory::MemoryNetwork;

const WAIT: Duration = Duration::from_secs(10);

/// A remote reached over the memory transport at `mem://<name>`.
pub(crate) fn remote(name: &str, mode: SyncMode) -> RemoteConfig {
    RemoteConfig::new(name, &format!("mem://{name}"))
        .unwrap()
        .with_mode(mode)
}

async fn submit_to(r: &Reactor, doc: &str, scope: &str, branch: &str, n: usize) {
    let strand = StrandId::parse(doc, Some(scope), Some(branch)).unwrap();
    let actions = (0..n)
        .map(|i| NewAction::new("set", json!({"path": format!("/k{i}"), "value": i})).unwrap())
        .collect();
    r.submit(Submission::new(strand, actions)).await.unwrap();
}

#[tokio::test]
async fn push_pull_and_ping_pong_converge() {
    for mode in [SyncMode::Push, SyncMode::Pull, SyncMode::PingPong] {
        let net = MemoryNetwork::new();
        let a = start_memory(&net, "a", 1).await.unwrap();
        let b = start_memory(&net, "b", 2).await.unwrap();
        submit_increments(&a, "doc", 500, 50).await.unwrap();
        submit_increments(&b, "other", 300, 30).await.unwrap();
        a.sync().add_remote(remote("b", mode)).await.unwrap();
        a.sync().wait_for_sync("b", WAIT).await.unwrap();
        let (want_a, want_b) = match mode {
            SyncMode::Push => (500, 800),
            SyncMode::Pull => (800, 300),
            SyncMode::PingPong => (800, 800),
        };
        wait_for_count(&[&a], want_a, WAIT).await.unwrap();
        wait_for_count(&[&b], want_b, WAIT).await.unwrap();
        let strand = StrandId::parse("doc", None, None).unwrap();
        if mode.pushes() {
            assert_eq!(b.document(&strand).await.unwrap().state, json!({"n": 500}));
        }
    }
}

#[tokio::test]
async fn backfill_sends_history_written_before_the_remote_was_added() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    submit_increments(&a, "old", 2_000, 100).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    assert_eq!(b.store().head().await.unwrap(), Ordinal(2_000));
    let status = a.sync().remote_status("b").unwrap();
    assert_eq!(status.outbox_cursor, Ordinal(2_000));
    assert_eq!(status.outbox_lag, 0);
}

#[tokio::test]
async fn filters_route_by_document_glob_scope_and_branch() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    submit_to(&a, "drive/one", "global", "main", 3).await;
    submit_to(&a, "drive/two", "global", "main", 2).await;
    submit_to(&a, "drive/one", "public", "main", 4).await;
    submit_to(&a, "drive/one", "global", "dev", 5).await;
    submit_to(&a, "other", "global", "main", 6).await;
    submit_to(&a, "drive/deep/x", "global", "main", 7).await;
    let filter = Filter::documents(["drive/*"])
        .with_scopes(["global"])
        .with_branches(["main"]);
    // One remote pushes with the filter; the other direction pulls with it.
    a.sync()
        .add_remote(remote("b", SyncMode::Push).with_filter(filter.clone()))
        .await
        .unwrap();
    let c = start_memory(&net, "c", 3).await.unwrap();
    c.sync()
        .add_remote(remote("a", SyncMode::Pull).with_filter(filter))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    c.sync().wait_for_sync("a", WAIT).await.unwrap();
    for r in [&b, &c] {
        let docs: HashSet<String> = read_all(r.store())
            .await
            .unwrap()
            .iter()
            .map(|s| format!("{}/{}@{}", s.op.document_id, s.op.scope, s.op.branch))
            .collect();
        assert_eq!(
            docs,
            HashSet::from([
                "drive/one/global@main".into(),
                "drive/two/global@main".into()
            ]),
            "{}",
            r.id()
        );
        assert_eq!(r.store().head().await.unwrap(), Ordinal(5));
    }
}

#[tokio::test]
async fn local_scope_never_leaves_the_reactor() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    let c = start_memory(&net, "c", 3).await.unwrap();
    submit_to(&a, "doc", "local", "main", 10).await;
    submit_to(&a, "doc", "global", "main", 1).await;
    submit_to(&b, "doc", "local", "main", 10).await;
    // Push, ping-pong and pull, even with a filter that names the local scope.
    let everything = Filter::all().with_scopes(["local", "global"]);
    a.sync()
        .add_remote(remote("b", SyncMode::PingPong).with_filter(everything.clone()))
        .await
        .unwrap();
    c.sync()
        .add_remote(remote("a", SyncMode::Pull).with_filter(everything))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    c.sync().wait_for_sync("a", WAIT).await.unwrap();
    for (r, own) in [(&a, 10), (&b, 10), (&c, 0)] {
        let all = read_all(r.store()).await.unwrap();
        let local: Vec<_> = all.iter().filter(|s| s.op.scope.is_local()).collect();
        assert_eq!(local.len(), own, "{}", r.id());
        assert!(local.iter().all(|s| &s.op.origin == r.id()), "{}", r.id());
    }
    let heads = a.sync().directory("b", Filter::all()).await.unwrap();
    assert!(heads.iter().all(|h| !h.strand.scope.is_local()));
}

#[tokio::test]
async fn outbox_handles_move_forward_and_mailboxes_report_progress() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let _b = start_memory(&net, "b", 2).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    let channel = a.sync().channel("b").unwrap();
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let added = Arc::new(Mutex::new(0usize));
    let removed = Arc::new(Mutex::new(0usize));
    let (t, ad) = (transitions.clone(), added.clone());
    channel.outbox.added(move |job| {
        *ad.lock() += job.operations().len();
        let t = t.clone();
        job.on(move |_, prev, next| t.lock().push((prev, next)));
    });
    let rm = removed.clone();
    channel.outbox.removed(move |job| {
        assert_eq!(job.status(), JobStatus::Applied);
        *rm.lock() += job.operations().len();
    });
    submit_increments(&a, "doc", 100, 10).await.unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    assert_eq!(*added.lock(), 100);
    assert_eq!(*removed.lock(), 100);
    assert!(channel.outbox.is_empty());
    let t = transitions.lock();
    assert!(!t.is_empty());
    for (prev, next) in t.iter() {
        assert!(prev < next, "{prev:?} -> {next:?} moves backwards");
    }
    assert!(t.contains(&(JobStatus::TransportPending, JobStatus::Applied)));
}

#[tokio::test]
async fn pulled_batches_go_through_the_inbox() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    submit_increments(&b, "doc", 50, 10).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Pull))
        .await
        .unwrap();
    let channel = a.sync().channel("b").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    channel
        .inbox
        .removed(move |job| s.lock().push((job.status(), job.operations().len())));
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    let seen = seen.lock();
    assert!(
        seen.iter().all(|(st, _)| *st == JobStatus::Applied),
        "{seen:?}"
    );
    assert_eq!(seen.iter().map(|(_, n)| n).sum::<usize>(), 50);
    let status = a.sync().remote_status("b").unwrap();
    assert_eq!(status.inbox_cursor, Ordinal(50));
    assert_eq!(status.inbox_lag, 0);
    // The responder saw the acknowledgement (seed 004's acknowledgeStrands).
    let listeners = b.sync().status().listeners;
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].cursor, Ordinal(50));
}

/// The outbox cursor never passes an operation the remote has not applied, even while the
/// remote's store fails and batches are retried; the inbox cursor commits with the operations.
#[tokio::test]
async fn cursors_follow_durability() {
    let net = MemoryNetwork::new();
    let mut config = fast_config();
    config.sync.push_batch_ops = 7;
    config.sync.push_window = 3;
    let a = start_on(&net, "a", Arc::new(MemoryStore::new()), config, 1)
        .await
        .unwrap();
    let b_store = Arc::new(MemoryStore::new());
    let b = start_on(&net, "b", b_store.clone(), fast_config(), 2)
        .await
        .unwrap();
    submit_increments(&a, "doc", 200, 20).await.unwrap();
    b_store.fail_next_applies(3);
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    let mut rx = a.sync().watch_remote("b").unwrap();
    let checker = {
        let b = b.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let mut checked = 0;
            loop {
                let cursor = rx.borrow_and_update().outbox_cursor;
                let a_ops = read_all(a.store()).await.unwrap();
                for s in a_ops.iter().take_while(|s| s.ordinal <= cursor) {
                    assert!(
                        b.store().get(&s.op.id).await.unwrap().is_some(),
                        "the outbox cursor is at {cursor} but b lacks ordinal {}",
                        s.ordinal
                    );
                }
                checked += 1;
                if cursor == Ordinal(200) {
                    return checked;
                }
                if rx.changed().await.is_err() {
                    return checked;
                }
            }
        })
    };
    let checks = tokio::time::timeout(WAIT, checker).await.unwrap().unwrap();
    assert!(checks > 1);
    // The persisted cursor catches up with the status.
    let state = SyncState::new(a.store().clone());
    let name = syncline_core::RemoteName::new("b").unwrap();
    tokio::time::timeout(WAIT, async {
        while state.cursor(&name, Direction::Outbox).await.unwrap() != Ordinal(200) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    // Inbox side: a failed commit of a pulled batch leaves the inbox cursor where it was.
    let c_store = Arc::new(MemoryStore::new());
    let c = start_on(&net, "c", c_store.clone(), fast_config(), 3)
        .await
        .unwrap();
    c_store.fail_next_applies(2);
    c.sync()
        .add_remote(remote("a", SyncMode::Pull))
        .await
        .unwrap();
    c.sync().wait_for_sync("a", WAIT).await.unwrap();
    let c_state = SyncState::new(c_store.clone() as DynStore);
    let name = syncline_core::RemoteName::new("a").unwrap();
    assert_eq!(
        c_state.cursor(&name, Direction::Inbox).await.unwrap(),
        Ordinal(200)
    );
    assert_eq!(c.store().head().await.unwrap(), Ordinal(200));
    let status = c.sync().remote_status("a").unwrap();
    assert!(
        status.last_failure.is_some(),
        "the failed commits are visible"
    );
}

#[tokio::test]
async fn duplicate_loads_do_not_wedge_the_queue() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    let _c = start_memory(&net, "c", 3).await.unwrap();
    submit_increments(&a, "doc", 300, 30).await.unwrap();
    // b receives every operation twice: pushed by a and pulled from c, which has them too.
    a.sync()
        .add_remote(remote("c", SyncMode::Push))
        .await
        .unwrap();
    a.sync().wait_for_sync("c", WAIT).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    b.sync()
        .add_remote(remote("c", SyncMode::Pull))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    b.sync().wait_for_sync("c", WAIT).await.unwrap();
    // And the queue still takes new work afterwards.
    submit_increments(&a, "doc", 10, 10).await.unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    let all = read_all(b.store()).await.unwrap();
    assert_eq!(all.len(), 310);
    let ids: HashSet<_> = all.iter().map(|s| s.op.id).collect();
    assert_eq!(ids.len(), 310);
    assert_eq!(b.queue().depth(), 0);
}

#[tokio::test]
async fn no_echo_and_cycles_go_quiet() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    let c = start_memory(&net, "c", 3).await.unwrap();
    // A push cycle a -> b -> c -> a, plus ping-pong a <-> b.
    a.sync()
        .add_remote(remote("b", SyncMode::PingPong))
        .await
        .unwrap();
    b.sync()
        .add_remote(remote("c", SyncMode::Push))
        .await
        .unwrap();
    c.sync()
        .add_remote(remote("a", SyncMode::Push))
        .await
        .unwrap();
    let sent_to_b = Arc::new(Mutex::new(Vec::new()));
    let s = sent_to_b.clone();
    a.sync().channel("b").unwrap().outbox.added(move |job| {
        for op in job.operations() {
            s.lock().push(op.origin.clone());
        }
    });
    submit_increments(&a, "x", 40, 10).await.unwrap();
    submit_increments(&b, "y", 40, 10).await.unwrap();
    submit_increments(&c, "z", 40, 10).await.unwrap();
    wait_for_count(&[&a, &b, &c], 120, WAIT).await.unwrap();
    // a never sends b's own operations back to it.
    let b_id = ReactorId::new("b").unwrap();
    assert!(sent_to_b.lock().iter().all(|o| *o != b_id));
    // Once converged nothing moves any more: no operation keeps circling.
    let before = heads(&[&a, &b, &c]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = heads(&[&a, &b, &c]).await;
    assert_eq!(before, after);
    assert_eq!(after, vec![120, 120, 120]);
}

async fn heads(reactors: &[&Reactor]) -> Vec<u64> {
    let mut out = Vec::new();
    for r in reactors {
        out.push(r.store().head().await.unwrap().0);
    }
    out
}

/// Failures of a whole batch (here the receiver's store) are retried with backoff for as long
/// as the remote exists, past the retry policy's attempts: they are not a verdict on any
/// operation, so nothing is dead-lettered and the cursor never passes the batch.
#[tokio::test]
async fn transient_failures_are_retried_until_delivered_never_dead_lettered() {
    let net = MemoryNetwork::new();
    let mut config = fast_config();
    config.sync.retry = RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        multiplier: 2.0,
        max_attempts: Some(3),
    };
    let a = start_on(&net, "a", Arc::new(MemoryStore::new()), config, 1)
        .await
        .unwrap();
    let b_store = Arc::new(MemoryStore::new());
    let b = start_on(&net, "b", b_store.clone(), fast_config(), 2)
        .await
        .unwrap();
    // Two failures: retried, then applied.
    b_store.fail_next_applies(2);
    submit_increments(&a, "doc", 10, 10).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    assert!(a.sync().dead_letters().await.unwrap().is_empty());
    // Twelve failures, four times the three attempts: still retried, and delivered once b's
    // store recovers. The outbox cursor waits for it.
    b_store.fail_next_applies(12);
    submit_increments(&a, "doc", 5, 5).await.unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    assert_eq!(b.store().head().await.unwrap(), Ordinal(15));
    assert!(a.sync().dead_letters().await.unwrap().is_empty());
    let status = a.sync().remote_status("b").unwrap();
    assert_eq!(status.dead_letters, 0);
    assert_eq!(status.outbox_cursor, Ordinal(15));
    assert!(status.last_failure.is_some(), "the failures are visible");
    let err = a.sync().requeue_dead_letter("nope").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_permissions_hold() {
    let net = MemoryNetwork::new();
    let rules = vec![PeerRule {
        peer: "a".into(),
        token: Some("secret".into()),
        token_hash: None,
        read: Filter::documents(["public/*"]),
        write: Filter::documents(["inbox/*"]),
    }];
    let b = syncline_testkit::start_with_rules(&net, "b", 2, rules)
        .await
        .unwrap();
    submit_to(&b, "public/one", "global", "main", 2).await;
    submit_to(&b, "private/one", "global", "main", 3).await;
    let a = start_memory(&net, "a", 1).await.unwrap();

    // Without the token the handshake is refused and the remote backs off, visibly.
    a.sync()
        .add_remote(remote("b", SyncMode::Pull))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = a.sync().remote_status("b").unwrap();
    let failure = status.last_failure.expect("a failure is recorded");
    assert_eq!(failure.kind, "unauthenticated", "{failure:?}");
    assert!(matches!(
        status.connection,
        syncline_core::ConnectionState::Backoff { .. }
    ));
    a.sync().remove_remote("b").await.unwrap();

    // With it: a sees only public documents, and its push to a document it may not change is
    // refused at once and dead-lettered, while the allowed one lands.
    let mut config = remote("b", SyncMode::PingPong);
    config.credentials = Some("secret".into());
    a.sync().add_remote(config).await.unwrap();
    submit_to(&a, "inbox/note", "global", "main", 1).await;
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    submit_to(&a, "private/one", "global", "main", 1).await;
    let letters = tokio::time::timeout(WAIT, async {
        loop {
            let l = a.sync().dead_letters().await.unwrap();
            if !l.is_empty() {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(letters[0].error.kind, "permission_denied");
    assert_eq!(letters[0].attempts, 1, "a refusal is not retried");
    assert_eq!(letters[0].operations.len(), 1);
    let docs: HashSet<String> = read_all(a.store())
        .await
        .unwrap()
        .iter()
        .filter(|s| s.op.origin.as_str() == "b")
        .map(|s| s.op.document_id.to_string())
        .collect();
    assert_eq!(docs, HashSet::from(["public/one".to_string()]));
    let on_b: HashSet<String> = read_all(b.store())
        .await
        .unwrap()
        .iter()
        .map(|s| s.op.document_id.to_string())
        .collect();
    assert!(on_b.contains("inbox/note"));
    assert!(
        read_all(b.store())
            .await
            .unwrap()
            .iter()
            .all(|s| s.op.origin.as_str() == "b" || s.op.document_id.as_str() == "inbox/note")
    );
    let heads = a.sync().directory("b", Filter::all()).await.unwrap();
    let names: Vec<_> = heads
        .iter()
        .map(|h| h.strand.document_id.to_string())
        .collect();
    assert!(names.contains(&"public/one".to_string()));
    assert!(!names.contains(&"private/one".to_string()));
}

#[tokio::test]
async fn a_restarted_reactor_resumes_from_its_cursors() {
    let net = MemoryNetwork::new();
    let a_store: DynStore = Arc::new(MemoryStore::new());
    let a = start_on(&net, "a", a_store.clone(), fast_config(), 1)
        .await
        .unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::PingPong))
        .await
        .unwrap();
    submit_increments(&a, "doc", 100, 10).await.unwrap();
    submit_increments(&b, "doc", 100, 10).await.unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    a.crash().await;
    submit_increments(&b, "doc", 50, 10).await.unwrap();
    // The remote comes back from the store, with its cursors.
    let a = start_on(&net, "a", a_store, fast_config(), 11)
        .await
        .unwrap();
    assert_eq!(a.sync().remotes().len(), 1);
    let status = a.sync().remote_status("b").unwrap();
    assert_eq!(status.outbox_cursor, Ordinal(200));
    assert_eq!(status.inbox_cursor, Ordinal(200));
    submit_increments(&a, "doc", 25, 5).await.unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    wait_for_count(&[&a, &b], 275, WAIT).await.unwrap();
    let strand = StrandId::parse("doc", None, None).unwrap();
    assert_eq!(a.document(&strand).await.unwrap().state, json!({"n": 275}));
    assert_eq!(b.document(&strand).await.unwrap().state, json!({"n": 275}));
}

#[tokio::test]
async fn adding_and_removing_remotes() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let _b = start_memory(&net, "b", 2).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    let err = a
        .sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let err = a
        .sync()
        .add_remote(RemoteConfig::new("x", "carrier-pigeon://b").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.message().contains("carrier-pigeon"), "{err}");
    let err = a
        .sync()
        .add_remote(RemoteConfig::new("y", "not a url").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    a.sync().remove_remote("b").await.unwrap();
    assert!(a.sync().remotes().is_empty());
    assert_eq!(
        a.sync().remove_remote("b").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let stored = syncline_core::sync::SyncState::new(a.store().clone())
        .remotes()
        .await
        .unwrap();
    assert!(stored.is_empty());
}

#[tokio::test]
async fn unreachable_peers_back_off_and_recover() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    submit_increments(&a, "doc", 20, 10).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::Push))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = a.sync().remote_status("b").unwrap();
    match &status.connection {
        syncline_core::ConnectionState::Backoff { attempt, .. } => assert!(*attempt >= 2),
        other => panic!("expected backoff, got {other:?}"),
    }
    assert_eq!(status.outbox_lag, 20);
    let b = start_memory(&net, "b", 2).await.unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    assert_eq!(b.store().head().await.unwrap(), Ordinal(20));
    assert_eq!(
        a.sync().remote_status("b").unwrap().connection,
        syncline_core::ConnectionState::Connected
    );
}

#[tokio::test]
async fn submissions_are_validated() {
    let net = MemoryNetwork::new();
    let a = start_memory(&net, "a", 1).await.unwrap();
    let bad = Submission::json("doc", [("set", json!({"path": "nope", "value": 1}))]).unwrap();
    let err = a.submit(bad).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.message().contains("action 0 (set) on doc/global@main"),
        "{err}"
    );
    let err = a
        .submit(Submission::json("doc", []).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let mut sub = Submission::json("doc", [("set", json!({"path": "/a", "value": 1}))]).unwrap();
    sub.document_type = syncline_core::DocumentType::new("spreadsheet").unwrap();
    let err = a.submit(sub).await.unwrap_err();
    assert!(err.message().contains("unknown document type"), "{err}");
    assert_eq!(a.store().head().await.unwrap(), Ordinal(0));
    let filter = ReadFilter::everything();
    assert!(
        a.store()
            .read_since(Ordinal(0), 10, &filter)
            .await
            .unwrap()
            .ops
            .is_empty()
    );
}

#[tokio::test]
async fn pushes_ride_on_pulls_when_piggybacking() {
    use syncline_core::sync::Piggyback;
    use syncline_testkit::counting::Counting;
    let net = MemoryNetwork::new();
    let counting = Counting::new(net.transport("a"));
    let mut config = fast_config();
    config.sync.piggyback = Piggyback::Always;
    let a = Reactor::builder(ReactorId::new("a").unwrap())
        .store(Arc::new(MemoryStore::new()))
        .transport(counting.clone())
        .config(config)
        .seed(1)
        .start()
        .await
        .unwrap();
    let b = start_memory(&net, "b", 2).await.unwrap();
    submit_increments(&a, "doc", 300, 30).await.unwrap();
    submit_increments(&b, "other", 100, 10).await.unwrap();
    a.sync()
        .add_remote(remote("b", SyncMode::PingPong))
        .await
        .unwrap();
    a.sync().wait_for_sync("b", WAIT).await.unwrap();
    wait_for_count(&[&a, &b], 400, WAIT).await.unwrap();
    // Message types: 3 pull, 5 push.
    assert_eq!(counting.requests(5), 0, "no push travelled alone");
    assert!(counting.requests(3) > 0);
    let channel = a.sync().channel("b").unwrap();
    assert!(channel.outbox.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_remotes_push_back_on_the_inbound_connection() {
    syncline_testkit::init_tracing();
    let h = syncline_testkit::harnesses::MemoryHarness::default();
    syncline_testkit::transport_suite::both_sides_push_on_one_connection(&h)
        .await
        .unwrap();
}
