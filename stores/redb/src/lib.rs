//! The syncline store on an embedded [redb](https://docs.rs/redb) file.
//!
//! The file is the core store engine's ordered key-value store ([`syncline_core::engine`],
//! where the key layout is described): one redb table per engine key space, keyed without the
//! space's two bytes, so that the feed, the id index and the strand index are each their own
//! B-tree; those three have fixed-width key or value types (`tables.rs`). One
//! `apply` is one redb write transaction (durable when it returns, `Durability::Immediate`), so
//! operations and the cursors written with them commit together or not at all. The executor
//! groups many jobs into each `apply` (group commit). All redb work runs on tokio's blocking
//! pool, never on the async workers.
//!
//! ## Files of format version 1
//!
//! Files written before the engine (format version 1: tables `node`, `ops`, `op_ids`,
//! `strand_ops`, `strands`, `meta`) are migrated when opened, in one write transaction: each
//! record is copied to its engine key unchanged (the record encodings are the same) and the old
//! tables are dropped. A crash during the migration leaves the file as it was. A file migrated
//! this way cannot be opened by a build from before the engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableHandle, WriteTransaction};
use syncline_core::engine::{
    KEY_SPACES, KvEngine, KvRead, KvWrite, LAYOUT_VERSION, OrderedKv, Visit,
};
use syncline_core::filter::ReadFilter;
use syncline_core::store::{
    ApplyBatch, ApplyOutcome, MetaSpace, MetaWrite, OperationStore, ReadPage, SyncStorage,
};
use syncline_core::{Error, ErrorKind, OpId, Operation, Ordinal, Result, SortKey, StoredOp};
use syncline_core::{StrandHead, StrandId};

pub use syncline_core::engine::Blocking;

mod backend;
mod tables;
pub use backend::{KIND, RedbConfig, register};

/// The layout version of the engine's keys in the file; a file with another one is refused.
pub const FORMAT_VERSION: u32 = LAYOUT_VERSION;

/// Entries migrated per write into the new tables.
const MIGRATE_CHUNK: usize = 10_000;

/// The tables of format version 1, read once to migrate.
mod legacy {
    use redb::TableDefinition;

    pub(crate) const NODE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("node");
    pub(crate) const OPS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("ops");
    pub(crate) const OP_IDS: TableDefinition<'static, &[u8; 16], u64> =
        TableDefinition::new("op_ids");
    pub(crate) const STRAND_OPS: TableDefinition<'static, &[u8], u64> =
        TableDefinition::new("strand_ops");
    pub(crate) const STRANDS: TableDefinition<'static, &[u8], &[u8]> =
        TableDefinition::new("strands");
    pub(crate) const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
    pub(crate) const TABLES: [&str; 6] = ["node", "ops", "op_ids", "strand_ops", "strands", "meta"];
}

/// Options of a redb store.
#[derive(Clone, Copy, Debug)]
pub struct RedbOptions {
    /// Where blocking work runs.
    pub blocking: Blocking,
    /// Whether every commit is durable when it returns (fsync).
    pub durable: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            blocking: Blocking::Pool,
            durable: true,
        }
    }
}

/// The redb file as the engine's key-value store.
pub struct RedbFile {
    db: Database,
    path: PathBuf,
    name: String,
    durable: bool,
}

impl std::fmt::Debug for RedbFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// A store in one redb file.
#[derive(Clone)]
pub struct RedbStore {
    engine: KvEngine<RedbFile>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path())
            .finish()
    }
}

/// redb's errors, mapped into the core error in this one place.
fn map_err(path: &Path, what: &str, e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => Error::new(
            ErrorKind::Unavailable,
            format!(
                "redb store {}: the file is already open (by this or another process)",
                path.display()
            ),
        ),
        redb::Error::UpgradeRequired(v) => Error::new(
            ErrorKind::FormatVersion,
            format!(
                "redb store {}: the file uses redb file format {v}, which this build cannot open",
                path.display()
            ),
        ),
        redb::Error::Corrupted(msg) => Error::new(
            ErrorKind::Corrupt,
            format!(
                "redb store {}: {what}: the file is damaged or not a redb database: {msg}",
                path.display()
            ),
        ),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => Error::new(
            ErrorKind::Corrupt,
            format!(
                "redb store {}: {what}: the file is damaged or not a redb database: {io}",
                path.display()
            ),
        ),
        other => Error::new(
            ErrorKind::Storage,
            format!("redb store {}: {what}: {other}", path.display()),
        ),
    }
}

/// A read transaction; each space's table is opened on first use.
pub struct RedbRead<'a> {
    txn: redb::ReadTransaction,
    tables: tables::Tables<redb::ReadTransaction>,
    file: &'a RedbFile,
}

impl std::fmt::Debug for RedbRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbRead({})", self.file.name)
    }
}

impl KvRead for RedbRead<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.tables.get(&self.txn, &self.file.path, key)
    }

    fn range(&self, start: &[u8], end: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        self.tables
            .range(&self.txn, &self.file.path, start, end, visit)
    }
}

impl OrderedKv for RedbFile {
    type Read<'a> = RedbRead<'a>;

    fn read(&self) -> Result<RedbRead<'_>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| map_err(&self.path, "starting a read", e))?;
        Ok(RedbRead {
            txn,
            tables: Default::default(),
            file: self,
        })
    }

    fn write(&self, batch: Vec<KvWrite>) -> Result<()> {
        let path = &self.path;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| map_err(path, "starting a write", e))?;
        txn.set_durability(if self.durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| map_err(path, "starting a write", e))?;
        tables::put_all(&txn, path, &batch)?;
        txn.commit().map_err(|e| map_err(path, "committing", e))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl RedbStore {
    /// Opens (creating if needed) the store in `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        RedbStore::open_with(path, RedbOptions::default()).await
    }

    /// Opens (creating if needed) the store in `path`, migrating a file of format version 1.
    ///
    /// A file that is not a redb database, a redb database of something else, or a syncline
    /// file of another format version is refused with an error naming the file and the reason.
    pub async fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open = move || RedbFile::open(path, options.durable);
        let file = match options.blocking {
            Blocking::Inline => open()?,
            Blocking::Pool => tokio::task::spawn_blocking(open)
                .await
                .map_err(|e| Error::internal(format!("opening the redb store panicked: {e}")))??,
        };
        Ok(RedbStore {
            engine: KvEngine::open(file, options.blocking).await?,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.engine.kv().path
    }
}

impl RedbFile {
    fn open(path: PathBuf, durable: bool) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!("cannot create the directory {}: {e}", parent.display()),
                )
            })?;
        }
        let db = Database::create(&path).map_err(|e| map_err(&path, "opening", e))?;
        let file = RedbFile {
            db,
            name: format!("redb store {}", path.display()),
            path,
            durable,
        };
        file.prepare()?;
        Ok(file)
    }

    /// Refuses foreign files, migrates format version 1, and creates the `kv` table.
    fn prepare(&self) -> Result<()> {
        let path = &self.path;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| map_err(path, "starting a transaction", e))?;
        let existing: Vec<String> = txn
            .list_tables()
            .map_err(|e| map_err(path, "listing tables", e))?
            .map(|t| t.name().to_owned())
            .collect();
        let foreign: Vec<&str> = existing
            .iter()
            .map(String::as_str)
            .filter(|t| {
                !tables::NAMES.contains(t)
                    && !tables::UNTYPED.iter().any(|(d, _)| d.name() == *t)
                    && !legacy::TABLES.contains(t)
            })
            .collect();
        if !foreign.is_empty() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{} is a redb database but not a syncline store: it has the tables {}",
                    path.display(),
                    foreign.join(", ")
                ),
            ));
        }
        if existing.iter().any(|t| t == "node") {
            self.migrate_v1(&txn)?;
        }
        self.migrate_untyped(&txn, &existing)?;
        tables::create_all(&txn).map_err(|e| map_err(path, "creating the tables", e))?;
        txn.commit().map_err(|e| map_err(path, "committing", e))
    }

    /// Moves the byte tables of the first engine layout (`kv_o`, `kv_i`, `kv_s`) into their
    /// typed tables, in the same transaction as opening.
    fn migrate_untyped(&self, txn: &WriteTransaction, existing: &[String]) -> Result<()> {
        let path = &self.path;
        for (def, space) in tables::UNTYPED {
            if !existing.iter().any(|t| t == def.name()) {
                continue;
            }
            let mut chunk = Vec::with_capacity(MIGRATE_CHUNK);
            let mut moved = 0u64;
            {
                let table = txn
                    .open_table(def)
                    .map_err(|e| map_err(path, "opening a table to migrate", e))?;
                for entry in table
                    .range::<&[u8]>(..)
                    .map_err(|e| map_err(path, "migrating", e))?
                {
                    let (k, v) = entry.map_err(|e| map_err(path, "migrating", e))?;
                    let mut key = KEY_SPACES[space].to_vec();
                    key.extend_from_slice(k.value());
                    chunk.push(KvWrite::Put(key, v.value().to_vec()));
                    if chunk.len() == MIGRATE_CHUNK {
                        tables::put_all(txn, path, &chunk)?;
                        moved += chunk.len() as u64;
                        chunk.clear();
                    }
                }
            }
            tables::put_all(txn, path, &chunk)?;
            moved += chunk.len() as u64;
            txn.delete_table(def)
                .map_err(|e| map_err(path, "dropping a migrated table", e))?;
            tracing::info!(
                store = %path.display(), table = def.name(), entries = moved,
                "moved a redb table into its typed table"
            );
        }
        Ok(())
    }

    fn migrate_v1(&self, txn: &WriteTransaction) -> Result<()> {
        let path = &self.path;
        let version = {
            let node = txn
                .open_table(legacy::NODE)
                .map_err(|e| map_err(path, "opening the node table", e))?;
            node.get("format_version")
                .map_err(|e| map_err(path, "reading the format version", e))?
                .map(|v| v.value().to_vec())
        };
        match version.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(v)) if u32::from_le_bytes(v) == 1 => {}
            Some(Ok(v)) => {
                return Err(Error::new(
                    ErrorKind::FormatVersion,
                    format!(
                        "redb store {} has format version {}; this build reads version \
                         {FORMAT_VERSION} (and migrates version 1)",
                        path.display(),
                        u32::from_le_bytes(v)
                    ),
                ));
            }
            Some(Err(_)) | None => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "redb store {} has the tables of format version 1 but no readable \
                         format version",
                        path.display()
                    ),
                ));
            }
        }
        let copied = copy_v1(txn, path)?;
        tracing::info!(
            store = %path.display(),
            operations = copied,
            "migrated a redb store from format version 1"
        );
        Ok(())
    }
}

/// Copies every record of the format-1 tables to its engine key and drops the tables; returns
/// how many operations were copied.
fn copy_v1(txn: &WriteTransaction, path: &Path) -> Result<u64> {
    let v1 = |e: redb::Error| map_err(path, "migrating format version 1", e);
    // Every record goes to the table of its key space (the spaces below are the engine's), a
    // chunk at a time.
    let mut chunk: Vec<KvWrite> = Vec::with_capacity(MIGRATE_CHUNK);
    let mut put = |space: &[u8; 2], key: &[u8], value: &[u8], flush: bool| -> Result<()> {
        let mut k = space.to_vec();
        k.extend_from_slice(key);
        chunk.push(KvWrite::Put(k, value.to_vec()));
        if flush || chunk.len() >= MIGRATE_CHUNK {
            tables::put_all(txn, path, &chunk)?;
            chunk.clear();
        }
        Ok(())
    };
    let mut head = 0u64;
    let mut copied = 0u64;
    let ops = txn.open_table(legacy::OPS).map_err(|e| v1(e.into()))?;
    for entry in ops.range::<u64>(..).map_err(|e| v1(e.into()))? {
        let (k, v) = entry.map_err(|e| v1(e.into()))?;
        head = head.max(k.value());
        put(b"o/", &k.value().to_be_bytes(), v.value(), false)?;
        copied += 1;
        if copied.is_multiple_of(100_000) {
            tracing::info!(
                operations = copied,
                "migrating a redb store from format version 1"
            );
        }
    }
    drop(ops);
    let ids = txn.open_table(legacy::OP_IDS).map_err(|e| v1(e.into()))?;
    for entry in ids.range::<&[u8; 16]>(..).map_err(|e| v1(e.into()))? {
        let (k, v) = entry.map_err(|e| v1(e.into()))?;
        put(b"i/", k.value(), &v.value().to_be_bytes(), false)?;
    }
    drop(ids);
    let strand_ops = txn
        .open_table(legacy::STRAND_OPS)
        .map_err(|e| v1(e.into()))?;
    for entry in strand_ops.range::<&[u8]>(..).map_err(|e| v1(e.into()))? {
        let (k, v) = entry.map_err(|e| v1(e.into()))?;
        put(b"s/", k.value(), &v.value().to_be_bytes(), false)?;
    }
    drop(strand_ops);
    let strands = txn.open_table(legacy::STRANDS).map_err(|e| v1(e.into()))?;
    for entry in strands.range::<&[u8]>(..).map_err(|e| v1(e.into()))? {
        let (k, v) = entry.map_err(|e| v1(e.into()))?;
        put(b"t/", k.value(), v.value(), false)?;
    }
    drop(strands);
    let meta = txn.open_table(legacy::META).map_err(|e| v1(e.into()))?;
    for entry in meta.range::<&str>(..).map_err(|e| v1(e.into()))? {
        let (k, v) = entry.map_err(|e| v1(e.into()))?;
        put(b"m/", k.value().as_bytes(), v.value(), false)?;
    }
    drop(meta);
    put(b"n/", b"format", &LAYOUT_VERSION.to_le_bytes(), false)?;
    put(b"n/", b"head", &head.to_be_bytes(), true)?;
    for t in [
        legacy::OPS.name(),
        legacy::OP_IDS.name(),
        legacy::STRAND_OPS.name(),
        legacy::STRANDS.name(),
        legacy::META.name(),
    ] {
        txn.delete_table(redb::TableDefinition::<&[u8], &[u8]>::new(t))
            .map_err(|e| v1(e.into()))?;
    }
    txn.delete_table(legacy::NODE).map_err(|e| v1(e.into()))?;
    Ok(copied)
}

#[async_trait]
impl OperationStore for RedbStore {
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        self.engine.apply(batch).await
    }

    async fn read_since(
        &self,
        after: Ordinal,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<ReadPage> {
        self.engine.read_since(after, limit, filter).await
    }

    async fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>> {
        self.engine.read_strand(strand, after, limit).await
    }

    async fn heads(&self) -> Result<Vec<StrandHead>> {
        self.engine.heads().await
    }

    async fn head(&self) -> Result<Ordinal> {
        self.engine.head().await
    }

    async fn get(&self, id: &OpId) -> Result<Option<StoredOp>> {
        self.engine.get(id).await
    }
}

#[async_trait]
impl SyncStorage for RedbStore {
    async fn get_meta(&self, space: MetaSpace, key: &str) -> Result<Option<Bytes>> {
        self.engine.get_meta(space, key).await
    }

    async fn write_meta(&self, writes: Vec<MetaWrite>) -> Result<()> {
        self.engine.write_meta(writes).await
    }

    async fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>> {
        self.engine.list_meta(space).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn foreign_and_corrupt_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.redb");
        std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
        let err = RedbStore::open(&junk).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(err.message().contains("junk.redb"), "{err}");

        let foreign = dir.path().join("foreign.redb");
        {
            let db = Database::create(&foreign).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn
                    .open_table(redb::TableDefinition::<u64, u64>::new("accounts"))
                    .unwrap();
                t.insert(1, 2).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&foreign).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.message().contains("not a syncline store"), "{err}");
        assert!(err.message().contains("accounts"), "{err}");

        let future = dir.path().join("future.redb");
        {
            let store = RedbStore::open(&future).await.unwrap();
            drop(store);
            let db = Database::create(&future).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(tables::NODE).unwrap();
                t.insert(b"format".as_slice(), 99u32.to_le_bytes().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&future).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FormatVersion);
        assert!(err.message().contains("format version 99"), "{err}");

        let ok = dir.path().join("nested/dir/ok.redb");
        let store = RedbStore::open(&ok).await.unwrap();
        let err = RedbStore::open(&ok).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        drop(store);
        RedbStore::open(&ok).await.unwrap();
    }
}
