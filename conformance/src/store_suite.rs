//! The store conformance suite: every store (memory, redb, Redis, plugins) must pass it.
//!
//! Each check is a `pub async fn` taking a [`StoreHarness`]; [`run`] runs them all and names
//! the store in every failure.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use syncline_core::filter::ReadFilter;
use syncline_core::store::{ApplyBatch, IncomingOp, MetaSpace, MetaWrite, OpOutcome};
use syncline_core::sync::{DeadLetter, Direction, ListenerRecord, RemoteRecord, SyncState};
use syncline_core::testing::op_at;
use syncline_core::{
    DynStore, Filter, Operation, Ordinal, ReactorId, RemoteConfig, RemoteName, Result, StrandId,
    WireError,
};

/// Makes and reopens stores of one kind.
#[syncline_core::async_trait]
pub trait StoreHarness: Send + Sync {
    /// The store's name, for messages.
    fn name(&self) -> String;

    /// A new, empty store.
    async fn fresh(&self) -> Result<DynStore>;

    /// Closes `store` and opens the same data again.
    async fn reopen(&self, store: DynStore) -> Result<DynStore>;
}

fn batch(ops: &[Operation], source: Option<&str>) -> ApplyBatch {
    ApplyBatch {
        ops: ops
            .iter()
            .map(|o| IncomingOp {
                op: Arc::new(o.clone()),
                source: source.map(|s| ReactorId::new(s).expect("valid")),
            })
            .collect(),
        meta: Vec::new(),
    }
}

/// `n` operations on `doc` with ids from `start`, times increasing.
pub fn ops(doc: &str, start: u64, n: u64) -> Vec<Operation> {
    (start..start + n)
        .map(|i| op_at(doc, i, 1_700_000_000_000 + i * 10, "origin"))
        .collect()
}

/// New operations get gap-free ordinals in input order; the head follows.
pub async fn apply_appends_gap_free(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    assert_eq!(
        s.head().await?,
        Ordinal(0),
        "{}: a new store is empty",
        h.name()
    );
    let first = s.apply(batch(&ops("a", 0, 5), None)).await?;
    let want: Vec<_> = (1..=5).map(|o| OpOutcome::New(Ordinal(o))).collect();
    assert_eq!(first.outcomes, want, "{}", h.name());
    assert_eq!(first.head, Ordinal(5), "{}", h.name());
    let second = s.apply(batch(&ops("b", 100, 3), Some("peer"))).await?;
    assert_eq!(
        second.outcomes[0],
        OpOutcome::New(Ordinal(6)),
        "{}",
        h.name()
    );
    assert_eq!(s.head().await?, Ordinal(8), "{}", h.name());
    let empty = s.apply(ApplyBatch::default()).await?;
    assert!(empty.outcomes.is_empty());
    assert_eq!(empty.head, Ordinal(8), "{}", h.name());
    let got = s.get(&ops("b", 100, 1)[0].id).await?.expect("stored");
    assert_eq!(got.ordinal, Ordinal(6), "{}", h.name());
    assert_eq!(got.source, Some(ReactorId::new("peer")?), "{}", h.name());
    assert_eq!(*got.op, ops("b", 100, 1)[0], "{}", h.name());
    got.op.verify()?;
    assert!(s.get(&ops("zz", 999, 1)[0].id).await?.is_none());
    Ok(())
}

/// Known ids, across batches and inside one batch, change nothing and are reported.
pub async fn duplicates_change_nothing(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    s.apply(batch(&ops("a", 0, 4), None)).await?;
    let mut mixed = ops("a", 2, 4); // 2, 3 known; 4, 5 new
    mixed.push(mixed[2].clone()); // 4 again inside the batch
    let out = s.apply(batch(&mixed, Some("x"))).await?;
    assert_eq!(
        out.outcomes,
        vec![
            OpOutcome::Duplicate(Ordinal(3)),
            OpOutcome::Duplicate(Ordinal(4)),
            OpOutcome::New(Ordinal(5)),
            OpOutcome::New(Ordinal(6)),
            OpOutcome::Duplicate(Ordinal(5)),
        ],
        "{}",
        h.name()
    );
    assert_eq!(s.head().await?, Ordinal(6), "{}", h.name());
    // The duplicate did not overwrite the source of the original.
    let first = s.get(&ops("a", 2, 1)[0].id).await?.expect("stored");
    assert_eq!(first.source, None, "{}", h.name());
    Ok(())
}

/// Batches of thousands of operations (larger than any chunk a backend splits its work into)
/// with known ids spread through them, and a repeat inside the batch, keep the same rules.
pub async fn large_batches_keep_the_rules(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    s.apply(batch(&ops("big", 0, 1500), None)).await?;
    // 1,000..1,500 known, 1,500..3,500 new, then 2,999 again.
    let mut mixed = ops("big", 1000, 2500);
    mixed.push(mixed[1999].clone());
    let out = s.apply(batch(&mixed, Some("x"))).await?;
    assert_eq!(out.outcomes.len(), 2501, "{}", h.name());
    for (k, o) in out.outcomes.iter().enumerate() {
        let want = match k {
            0..500 => OpOutcome::Duplicate(Ordinal(1001 + k as u64)),
            500..2500 => OpOutcome::New(Ordinal(1001 + k as u64)),
            _ => OpOutcome::Duplicate(Ordinal(3000)),
        };
        assert_eq!(*o, want, "{}: operation {k} of the batch", h.name());
    }
    assert_eq!(out.head, Ordinal(3500), "{}", h.name());
    let page = s
        .read_since(
            Ordinal(2990),
            20,
            &syncline_core::filter::ReadFilter::everything(),
        )
        .await?;
    let ids: Vec<_> = page.ops.iter().map(|o| o.op.id).collect();
    let want: Vec<_> = ops("big", 2990, 20).iter().map(|o| o.id).collect();
    assert_eq!(ids, want, "{}: the feed holds them in order", h.name());
    Ok(())
}

/// Operations and metadata in one apply are visible together.
pub async fn ops_and_cursor_commit_together(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    let name = RemoteName::new("r")?;
    let mut b = batch(&ops("a", 0, 3), Some("r"));
    b.meta.push(SyncState::cursor_write(
        &name,
        Direction::Inbox,
        Ordinal(42),
    ));
    b.meta.push(MetaWrite::put(
        MetaSpace::Node,
        "k",
        Bytes::from_static(b"v"),
    ));
    s.apply(b).await?;
    let state = SyncState::new(s.clone());
    assert_eq!(
        state.cursor(&name, Direction::Inbox).await?,
        Ordinal(42),
        "{}",
        h.name()
    );
    assert_eq!(s.head().await?, Ordinal(3), "{}", h.name());
    // Metadata alone, and a delete, in one apply.
    let mut b = ApplyBatch::default();
    b.meta.push(MetaWrite::delete(MetaSpace::Node, "k"));
    b.meta.push(SyncState::cursor_write(
        &name,
        Direction::Inbox,
        Ordinal(43),
    ));
    s.apply(b).await?;
    assert_eq!(
        s.get_meta(MetaSpace::Node, "k").await?,
        None,
        "{}",
        h.name()
    );
    assert_eq!(
        state.cursor(&name, Direction::Inbox).await?,
        Ordinal(43),
        "{}",
        h.name()
    );
    Ok(())
}

/// `read_since` pages through the feed with a filter and a limit, without gaps or repeats.
pub async fn read_since_pages_with_filter(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    let mut all = Vec::new();
    for i in 0..60u64 {
        let doc = if i % 3 == 0 { "keep/x" } else { "drop/y" };
        all.push(op_at(doc, i, 1_700_000_000_000 + i, "origin"));
    }
    s.apply(batch(&all[..30], None)).await?;
    s.apply(batch(&all[30..], Some("peer"))).await?;
    let filter = ReadFilter::for_peer(Filter::documents(["keep/*"]), None, Arc::from(vec![]));
    let mut seen = Vec::new();
    let mut after = Ordinal(0);
    loop {
        let page = s.read_since(after, 3, &filter).await?;
        assert_eq!(page.head, Ordinal(60), "{}", h.name());
        assert!(page.ops.len() <= 3, "{}: the limit holds", h.name());
        if page.scanned_to == after {
            assert!(page.ops.is_empty());
            break;
        }
        assert!(page.scanned_to > after, "{}", h.name());
        for op in &page.ops {
            assert!(
                op.ordinal > after && op.ordinal <= page.scanned_to,
                "{}",
                h.name()
            );
        }
        seen.extend(page.ops.iter().map(|s| s.ordinal.0));
        after = page.scanned_to;
    }
    let want: Vec<u64> = (0..60).filter(|i| i % 3 == 0).map(|i| i + 1).collect();
    assert_eq!(seen, want, "{}: every match once, in order", h.name());
    // Excluding a peer drops what came from it.
    let no_peer = ReadFilter::for_peer(
        Filter::all(),
        Some(ReactorId::new("peer")?),
        Arc::from(vec![]),
    );
    let page = s.read_since(Ordinal(0), 1000, &no_peer).await?;
    assert_eq!(page.ops.len(), 30, "{}", h.name());
    assert_eq!(page.scanned_to, Ordinal(60), "{}", h.name());
    // Past the head there is nothing.
    let page = s
        .read_since(Ordinal(60), 10, &ReadFilter::everything())
        .await?;
    assert!(page.ops.is_empty());
    assert_eq!(page.scanned_to, Ordinal(60), "{}", h.name());
    Ok(())
}

/// Strands read in canonical order, with a late operation inserted in the middle, and page by
/// sort key.
pub async fn strands_read_in_canonical_order(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    let early = op_at("doc", 1, 1_000, "a");
    let late_but_earlier = op_at("doc", 2, 500, "b");
    let tie_a = op_at("doc", 3, 2_000, "a");
    let tie_b = op_at("doc", 4, 2_000, "b");
    let other = op_at("other", 5, 100, "a");
    s.apply(batch(&[tie_b.clone(), early.clone(), other.clone()], None))
        .await?;
    s.apply(batch(&[late_but_earlier.clone(), tie_a.clone()], None))
        .await?;
    let strand = StrandId::parse("doc", None, None)?;
    let got: Vec<_> = s
        .read_strand(&strand, None, 100)
        .await?
        .iter()
        .map(|o| o.id)
        .collect();
    let mut want = [
        early.clone(),
        late_but_earlier.clone(),
        tie_a.clone(),
        tie_b.clone(),
    ];
    want.sort_by_key(|o| o.sort_key());
    let want: Vec<_> = want.iter().map(|o| o.id).collect();
    assert_eq!(got, want, "{}: canonical order", h.name());
    assert_eq!(want[0], late_but_earlier.id);
    // Paging by sort key.
    let first_two = s.read_strand(&strand, None, 2).await?;
    assert_eq!(first_two.len(), 2);
    let rest = s
        .read_strand(&strand, Some(first_two[1].sort_key()), 100)
        .await?;
    assert_eq!(
        rest.iter().map(|o| o.id).collect::<Vec<_>>(),
        want[2..].to_vec(),
        "{}",
        h.name()
    );
    let missing = StrandId::parse("nothing", None, None)?;
    assert!(s.read_strand(&missing, None, 10).await?.is_empty());
    Ok(())
}

/// Heads report revision, last key and last ordinal per strand.
pub async fn heads_summarise_strands(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    let a = ops("a", 0, 3);
    let b = ops("b", 10, 2);
    s.apply(batch(&a, None)).await?;
    s.apply(batch(&b, None)).await?;
    let late = op_at("a", 20, 1, "z");
    s.apply(batch(std::slice::from_ref(&late), None)).await?;
    let heads = s.heads().await?;
    assert_eq!(heads.len(), 2, "{}", h.name());
    assert_eq!(heads[0].strand, StrandId::parse("a", None, None)?);
    assert_eq!(heads[0].revision, 4, "{}", h.name());
    assert_eq!(
        heads[0].last,
        a[2].sort_key(),
        "{}: the last key is the largest",
        h.name()
    );
    assert_eq!(heads[0].last_ordinal, Ordinal(6), "{}", h.name());
    assert_eq!(heads[0].document_type.as_str(), "json");
    assert_eq!(heads[1].revision, 2);
    assert_eq!(heads[1].last_ordinal, Ordinal(5));
    Ok(())
}

/// Remotes, cursors, listeners and dead letters round-trip through the sync storage.
pub async fn sync_records_round_trip(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    let state = SyncState::new(s.clone());
    let remote = RemoteRecord {
        config: RemoteConfig::new("b", "mem://b")?,
        listener_id: Some("l1".into()),
        peer: Some(ReactorId::new("b")?),
    };
    state.put_remote(&remote).await?;
    let other = RemoteRecord {
        config: RemoteConfig::new("a", "mem://a")?,
        listener_id: None,
        peer: None,
    };
    state.put_remote(&other).await?;
    let names: Vec<_> = state
        .remotes()
        .await?
        .into_iter()
        .map(|r| r.config.name.to_string())
        .collect();
    assert_eq!(names, vec!["a", "b"], "{}: listed in key order", h.name());
    let b = RemoteName::new("b")?;
    state.set_cursor(&b, Direction::Outbox, Ordinal(7)).await?;
    state.set_cursor(&b, Direction::Inbox, Ordinal(9)).await?;
    assert_eq!(state.cursor(&b, Direction::Outbox).await?, Ordinal(7));
    assert_eq!(state.cursor(&b, Direction::Inbox).await?, Ordinal(9));
    let listener = ListenerRecord {
        id: "l1".into(),
        peer: ReactorId::new("c")?,
        filter: Filter::documents(["x/*"]),
        cursor: Ordinal(3),
        created_ms: 12,
        last_used_ms: 15,
    };
    state.put_listener(&listener).await?;
    assert_eq!(
        state.listeners().await?,
        vec![listener.clone()],
        "{}",
        h.name()
    );
    state
        .delete_listeners(std::slice::from_ref(&listener.id))
        .await?;
    assert!(state.listeners().await?.is_empty(), "{}", h.name());
    state.put_listener(&listener).await?;
    let letter = DeadLetter {
        id: "d1".into(),
        remote: b.clone(),
        range: (Ordinal(1), Ordinal(4)),
        operations: ops("a", 0, 2),
        error: WireError {
            kind: "permission_denied".into(),
            message: "no".into(),
        },
        attempts: 0,
        failed_at_ms: 5,
    };
    state.put_dead_letter(&letter).await?;
    assert_eq!(state.dead_letter("d1").await?, letter, "{}", h.name());
    state.delete_dead_letter("d1").await?;
    assert!(state.dead_letters().await?.is_empty());
    state.delete_remote(&b).await?;
    assert_eq!(state.remotes().await?.len(), 1, "{}", h.name());
    assert_eq!(
        state.cursor(&b, Direction::Outbox).await?,
        Ordinal(0),
        "{}: a removed remote's cursors go with it",
        h.name()
    );
    Ok(())
}

/// Concurrent appliers never produce duplicate or skipped ordinals.
pub async fn concurrent_appliers_keep_ordinals_unique(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut ordinals = Vec::new();
            for b in 0..25u64 {
                let start = w * 1_000_000 + b * 100;
                // Every writer also re-sends an operation of writer 0, which must dedupe.
                let mut ops = ops(&format!("w{w}"), start, 10);
                ops.push(op_at(
                    "shared",
                    900_000_000 + b,
                    1_700_000_000_000 + b,
                    "origin",
                ));
                let out = s.apply(batch(&ops, None)).await?;
                ordinals.extend(
                    out.outcomes
                        .iter()
                        .filter(|o| o.is_new())
                        .map(|o| o.ordinal().0),
                );
            }
            Ok::<_, syncline_core::Error>(ordinals)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| syncline_core::Error::internal(e.to_string()))??,
        );
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "{}: no ordinal handed out twice",
        h.name()
    );
    let expected = 8 * 25 * 10 + 25;
    assert_eq!(
        all.len(),
        expected,
        "{}: every new operation got one",
        h.name()
    );
    assert_eq!(
        unique,
        (1..=expected as u64).collect::<BTreeSet<_>>(),
        "{}: no gaps",
        h.name()
    );
    assert_eq!(s.head().await?, Ordinal(expected as u64), "{}", h.name());
    Ok(())
}

/// Reopening keeps everything committed.
pub async fn reopen_keeps_everything(h: &dyn StoreHarness) -> Result<()> {
    let s = h.fresh().await?;
    let name = RemoteName::new("r")?;
    let mut b = batch(&ops("a", 0, 20), Some("p"));
    b.meta
        .push(SyncState::cursor_write(&name, Direction::Inbox, Ordinal(5)));
    s.apply(b).await?;
    let s = h.reopen(s).await?;
    assert_eq!(s.head().await?, Ordinal(20), "{}", h.name());
    let state = SyncState::new(s.clone());
    assert_eq!(
        state.cursor(&name, Direction::Inbox).await?,
        Ordinal(5),
        "{}",
        h.name()
    );
    let strand = StrandId::parse("a", None, None)?;
    assert_eq!(
        s.read_strand(&strand, None, 100).await?.len(),
        20,
        "{}",
        h.name()
    );
    assert_eq!(s.heads().await?.len(), 1);
    let out = s.apply(batch(&ops("a", 0, 21), None)).await?;
    assert_eq!(
        out.outcomes.iter().filter(|o| o.is_new()).count(),
        1,
        "{}",
        h.name()
    );
    assert_eq!(out.head, Ordinal(21), "{}", h.name());
    Ok(())
}

/// Runs every check against one kind of store.
pub async fn run(h: &dyn StoreHarness) -> Result<()> {
    apply_appends_gap_free(h).await?;
    duplicates_change_nothing(h).await?;
    large_batches_keep_the_rules(h).await?;
    ops_and_cursor_commit_together(h).await?;
    read_since_pages_with_filter(h).await?;
    strands_read_in_canonical_order(h).await?;
    heads_summarise_strands(h).await?;
    sync_records_round_trip(h).await?;
    concurrent_appliers_keep_ordinals_unique(h).await?;
    reopen_keeps_everything(h).await?;
    Ok(())
}
