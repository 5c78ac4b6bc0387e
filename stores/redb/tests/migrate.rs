//! A file written by the format-1 layout (`tests/fixtures/format-v1.redb.gz`, written by the
//! redb store before the engine: eight operations on two documents, an inbox cursor committed
//! with them and a remote) is migrated when opened and keeps everything.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::sync::Arc;

use syncline_core::filter::ReadFilter;
use syncline_core::store::{ApplyBatch, IncomingOp, MetaSpace, OperationStore, SyncStorage};
use syncline_core::testing::op_for;
use syncline_core::{Ordinal, ReactorId, StrandId};
use syncline_store_redb::RedbStore;

fn fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/format-v1.redb.gz"
    ))
    .unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut bytes)
        .unwrap();
    let path = dir.join("v1.redb");
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn check(store: &RedbStore) {
    let page = store
        .read_since(Ordinal(0), 100, &ReadFilter::everything())
        .await
        .unwrap();
    assert_eq!(page.head, Ordinal(8));
    assert_eq!(page.ops.len(), 8);
    for (i, stored) in page.ops.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(stored.ordinal, Ordinal(n));
        let doc = if n <= 5 { "doc/a" } else { "doc/b" };
        assert_eq!(*stored.op, op_for(doc, n));
        let source = (n > 5).then(|| ReactorId::new("peer-b").unwrap());
        assert_eq!(stored.source, source);
    }
    let heads = store.heads().await.unwrap();
    assert_eq!(heads.len(), 2);
    assert_eq!((heads[0].revision, heads[0].last_ordinal), (5, Ordinal(5)));
    assert_eq!((heads[1].revision, heads[1].last_ordinal), (3, Ordinal(8)));
    let strand = StrandId::parse("doc/a", Some("global"), Some("main")).unwrap();
    assert_eq!(store.read_strand(&strand, None, 10).await.unwrap().len(), 5);
    assert_eq!(
        store
            .get(&op_for("doc/b", 7).id)
            .await
            .unwrap()
            .unwrap()
            .ordinal,
        Ordinal(7)
    );
    assert_eq!(
        store
            .get_meta(MetaSpace::Cursors, "r/inbox")
            .await
            .unwrap()
            .as_deref(),
        Some(b"42".as_slice())
    );
    assert_eq!(store.list_meta(MetaSpace::Remotes).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_format_1_file_is_migrated_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path());
    {
        let store = RedbStore::open(&path).await.unwrap();
        check(&store).await;
        // Known ids stay duplicates; the next ordinal follows the migrated head.
        let out = store
            .apply(ApplyBatch {
                ops: vec![
                    IncomingOp {
                        op: Arc::new(op_for("doc/a", 1)),
                        source: None,
                    },
                    IncomingOp {
                        op: Arc::new(op_for("doc/a", 9)),
                        source: None,
                    },
                ],
                meta: vec![],
            })
            .await
            .unwrap();
        assert_eq!(out.outcomes[0].ordinal(), Ordinal(1));
        assert!(!out.outcomes[0].is_new());
        assert!(out.outcomes[1].is_new());
        assert_eq!(out.head, Ordinal(9));
    }
    // Opened again, the file is in the current layout and the old tables are gone.
    let store = RedbStore::open(&path).await.unwrap();
    assert_eq!(store.head().await.unwrap(), Ordinal(9));
    drop(store);
    let db = redb::Database::create(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    assert!(tables.iter().all(|t| t.starts_with("kv_")), "{tables:?}");
    assert_eq!(tables.len(), 6, "{tables:?}");
}

/// A file of the first engine layout (byte tables `kv_o`, `kv_i`, `kv_s` for the feed and the
/// two indexes) has those tables moved into the typed ones when opened, and keeps everything.
#[tokio::test]
async fn a_file_of_the_byte_table_layout_moves_into_typed_tables() {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
    let dir = tempfile::tempdir().unwrap();
    let path = fixture(dir.path());
    drop(RedbStore::open(&path).await.unwrap());
    // Write the typed tables back as the byte tables the first engine layout had.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let bytes = |name| TableDefinition::<&[u8], &[u8]>::new(name);
        {
            let ops = txn
                .open_table(TableDefinition::<u64, &[u8]>::new("kv_ops"))
                .unwrap();
            let mut to = txn.open_table(bytes("kv_o")).unwrap();
            for e in ops.range::<u64>(..).unwrap() {
                let (k, v) = e.unwrap();
                to.insert(k.value().to_be_bytes().as_slice(), v.value())
                    .unwrap();
            }
            let ids = txn
                .open_table(TableDefinition::<&[u8; 16], u64>::new("kv_ids"))
                .unwrap();
            let mut to = txn.open_table(bytes("kv_i")).unwrap();
            for e in ids.range::<&[u8; 16]>(..).unwrap() {
                let (k, v) = e.unwrap();
                to.insert(k.value().as_slice(), v.value().to_be_bytes().as_slice())
                    .unwrap();
            }
            let strand_ops = txn
                .open_table(TableDefinition::<&[u8], u64>::new("kv_strand_ops"))
                .unwrap();
            let mut to = txn.open_table(bytes("kv_s")).unwrap();
            for e in strand_ops.range::<&[u8]>(..).unwrap() {
                let (k, v) = e.unwrap();
                to.insert(k.value(), v.value().to_be_bytes().as_slice())
                    .unwrap();
            }
        }
        txn.delete_table(TableDefinition::<u64, &[u8]>::new("kv_ops"))
            .unwrap();
        txn.delete_table(TableDefinition::<&[u8; 16], u64>::new("kv_ids"))
            .unwrap();
        txn.delete_table(TableDefinition::<&[u8], u64>::new("kv_strand_ops"))
            .unwrap();
        txn.commit().unwrap();
    }
    {
        let store = RedbStore::open(&path).await.unwrap();
        check(&store).await;
    }
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let mut tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    tables.sort();
    assert_eq!(
        tables,
        ["kv_ids", "kv_m", "kv_n", "kv_ops", "kv_strand_ops", "kv_t"],
        "the byte tables are gone"
    );
}
