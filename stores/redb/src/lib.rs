//! The syncline store on an embedded [redb](https://docs.rs/redb) file.
//!
//! One file holds everything; one `apply` is one redb write transaction (durable when it
//! returns, `Durability::Immediate`), so operations and the cursors written with them commit
//! together or not at all. The executor groups many jobs into each `apply` (group commit).
//! All redb work runs on tokio's blocking pool, never on the async workers.
//!
//! ## Table layout (format version 1)
//!
//! | table | key | value |
//! |---|---|---|
//! | `node` | `&str` | `format_version` → `u32` little endian |
//! | `ops` | ordinal `u64` | postcard of `(Operation, Option<ReactorId>)` (the op and the peer it came from) |
//! | `op_ids` | op id `[u8; 16]` | ordinal `u64` |
//! | `strand_ops` | strand key ‖ sort key | ordinal `u64` |
//! | `strands` | strand key | postcard of the strand's head (type, revision, last key, last ordinal) |
//! | `meta` | `"<space>/<key>"` | the sync storage's value |
//!
//! The strand key is document id, scope and branch, each as a big-endian `u16` length and its
//! bytes; the sort key is the HLC millis (`u64` BE), counter (`u32` BE) and the 16 op-id bytes,
//! so byte order is the canonical order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError,
    TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};
use syncline_core::filter::ReadFilter;
use syncline_core::store::keys::{parse_strand_key, sort_key_bytes, strand_key, strand_key_of};
use syncline_core::store::{
    ApplyBatch, ApplyOutcome, MAX_SCAN_ROWS, MetaSpace, MetaWrite, OpOutcome, OperationStore,
    ReadPage, SyncStorage,
};
use syncline_core::{
    DocumentType, Error, ErrorKind, OpId, Operation, Ordinal, ReactorId, Result, SortKey, StoredOp,
    StrandHead, StrandId,
};

/// The layout version written into every file; a file with another version is refused.
pub const FORMAT_VERSION: u32 = 1;

const NODE: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("node");
const OPS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("ops");
const OP_IDS: TableDefinition<'static, &[u8; 16], u64> = TableDefinition::new("op_ids");
const STRAND_OPS: TableDefinition<'static, &[u8], u64> = TableDefinition::new("strand_ops");
const STRANDS: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("strands");
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

const TABLES: [&str; 6] = ["node", "ops", "op_ids", "strand_ops", "strands", "meta"];

/// Where the store runs its blocking redb calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Blocking {
    /// On tokio's blocking pool (the default for nodes).
    #[default]
    Pool,
    /// On the calling task. Only for single-threaded deterministic simulations.
    Inline,
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

/// A store in one redb file.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    options: RedbOptions,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct StrandMeta {
    document_type: DocumentType,
    revision: u64,
    last: SortKey,
    last_ordinal: Ordinal,
}

#[derive(Serialize)]
struct RecordRef<'a> {
    op: &'a Operation,
    source: &'a Option<ReactorId>,
}

#[derive(Deserialize)]
struct Record {
    op: Operation,
    source: Option<ReactorId>,
}

fn storage(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Storage,
        format!("redb store {}: {what}: {e}", path.display()),
    )
}

fn map_storage(path: &Path, what: &str, e: StorageError) -> Error {
    match e {
        StorageError::Corrupted(msg) => Error::new(
            ErrorKind::Corrupt,
            format!(
                "redb store {}: {what}: the file is corrupt: {msg}",
                path.display()
            ),
        ),
        other => storage(path, what, other),
    }
}

fn meta_key(space: MetaSpace, key: &str) -> String {
    format!("{}/{key}", space.as_str())
}

impl RedbStore {
    /// Opens (creating if needed) the store in `path` with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        RedbStore::open_with(path, RedbOptions::default()).await
    }

    /// Opens (creating if needed) the store in `path`.
    ///
    /// A file that is not a redb database, a redb database of something else, or a syncline
    /// file of another format version is refused with an error naming the file and the reason.
    pub async fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let open = move || RedbStore::open_blocking(p, options);
        match options.blocking {
            Blocking::Inline => open(),
            Blocking::Pool => tokio::task::spawn_blocking(open)
                .await
                .map_err(|e| Error::internal(format!("opening the redb store panicked: {e}")))?,
        }
    }

    fn open_blocking(path: PathBuf, options: RedbOptions) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!("cannot create the directory {}: {e}", parent.display()),
                )
            })?;
        }
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => Error::new(
                ErrorKind::Unavailable,
                format!(
                    "redb store {}: the file is already open (by this or another process)",
                    path.display()
                ),
            ),
            DatabaseError::UpgradeRequired(v) => Error::new(
                ErrorKind::FormatVersion,
                format!(
                    "redb store {}: the file uses redb file format {v}, which this build cannot open",
                    path.display()
                ),
            ),
            DatabaseError::Storage(StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{} is not a redb database (or is damaged): {io}",
                        path.display()
                    ),
                )
            }
            DatabaseError::Storage(s) => match s {
                StorageError::Corrupted(msg) => Error::new(
                    ErrorKind::Corrupt,
                    format!("{} is not a redb database (or is damaged): {msg}", path.display()),
                ),
                other => storage(&path, "opening", other),
            },
            other => Error::new(
                ErrorKind::Corrupt,
                format!("{} cannot be opened as a redb database: {other}", path.display()),
            ),
        })?;
        let store = RedbStore {
            inner: Arc::new(Inner { db, path, options }),
        };
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> Result<()> {
        let path = &self.inner.path;
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| storage(path, "starting a transaction", e))?;
        let existing: Vec<String> = txn
            .list_tables()
            .map_err(|e| map_storage(path, "listing tables", e))?
            .map(|t| t.name().to_owned())
            .collect();
        let foreign: Vec<&String> = existing
            .iter()
            .filter(|t| !TABLES.contains(&t.as_str()))
            .collect();
        if !foreign.is_empty() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{} is a redb database but not a syncline store: it has the tables {}",
                    path.display(),
                    foreign
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        {
            let mut node = txn
                .open_table(NODE)
                .map_err(|e| storage(path, "opening the node table", e))?;
            let found = node
                .get("format_version")
                .map_err(|e| map_storage(path, "reading the format version", e))?
                .map(|v| v.value().to_vec());
            match found {
                Some(v) => {
                    let arr: [u8; 4] = v.as_slice().try_into().map_err(|_| {
                        Error::new(
                            ErrorKind::Corrupt,
                            format!(
                                "redb store {}: the format version record has {} bytes",
                                path.display(),
                                v.len()
                            ),
                        )
                    })?;
                    let version = u32::from_le_bytes(arr);
                    if version != FORMAT_VERSION {
                        return Err(Error::new(
                            ErrorKind::FormatVersion,
                            format!(
                                "redb store {} has format version {version}; this build reads \
                                 version {FORMAT_VERSION}",
                                path.display()
                            ),
                        ));
                    }
                }
                None => {
                    if existing.iter().any(|t| t == "ops") {
                        return Err(Error::new(
                            ErrorKind::Corrupt,
                            format!(
                                "redb store {} has operations but no format version",
                                path.display()
                            ),
                        ));
                    }
                    node.insert("format_version", FORMAT_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| map_storage(path, "writing the format version", e))?;
                }
            }
            // Create every table so read transactions can open them.
            txn.open_table(OPS)
                .map_err(|e| storage(path, "creating tables", e))?;
            txn.open_table(OP_IDS)
                .map_err(|e| storage(path, "creating tables", e))?;
            txn.open_table(STRAND_OPS)
                .map_err(|e| storage(path, "creating tables", e))?;
            txn.open_table(STRANDS)
                .map_err(|e| storage(path, "creating tables", e))?;
            txn.open_table(META)
                .map_err(|e| storage(path, "creating tables", e))?;
        }
        txn.commit().map_err(|e| storage(path, "committing", e))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        match self.inner.options.blocking {
            Blocking::Inline => f(&inner),
            Blocking::Pool => tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| Error::internal(format!("a redb task panicked: {e}")))?,
        }
    }
}

fn decode_record(path: &Path, ordinal: u64, bytes: &[u8]) -> Result<StoredOp> {
    let r: Record = postcard::from_bytes(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "redb store {}: operation {ordinal} does not decode: {e}",
                path.display()
            ),
        )
    })?;
    Ok(StoredOp {
        ordinal: Ordinal(ordinal),
        op: Arc::new(r.op),
        source: r.source,
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| Error::internal(format!("encoding a record failed: {e}")))
}

fn decode_meta(path: &Path, bytes: &[u8]) -> Result<StrandMeta> {
    postcard::from_bytes(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "redb store {}: a strand record does not decode: {e}",
                path.display()
            ),
        )
    })
}

impl Inner {
    fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        let path = &self.path;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| storage(path, "starting a transaction", e))?;
        let durability = if self.options.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| storage(path, "setting durability", e))?;
        let mut outcomes = Vec::with_capacity(batch.ops.len());
        let head;
        {
            let mut ops = txn
                .open_table(OPS)
                .map_err(|e| storage(path, "opening ops", e))?;
            let mut ids = txn
                .open_table(OP_IDS)
                .map_err(|e| storage(path, "opening op_ids", e))?;
            let mut strand_ops = txn
                .open_table(STRAND_OPS)
                .map_err(|e| storage(path, "opening strand_ops", e))?;
            let mut strands = txn
                .open_table(STRANDS)
                .map_err(|e| storage(path, "opening strands", e))?;
            let mut next = ops
                .last()
                .map_err(|e| map_storage(path, "reading the head", e))?
                .map(|(k, _)| k.value())
                .unwrap_or(0);
            let mut touched: HashMap<Vec<u8>, StrandMeta> = HashMap::new();
            let mut buf = Vec::with_capacity(512);
            for incoming in &batch.ops {
                let op = &incoming.op;
                if let Some(existing) = ids
                    .get(op.id.as_bytes())
                    .map_err(|e| map_storage(path, "looking up an id", e))?
                {
                    outcomes.push(OpOutcome::Duplicate(Ordinal(existing.value())));
                    continue;
                }
                next += 1;
                buf.clear();
                let bytes = postcard::to_io(
                    &RecordRef {
                        op,
                        source: &incoming.source,
                    },
                    &mut buf,
                )
                .map_err(|e| Error::internal(format!("encoding an operation failed: {e}")))?;
                ops.insert(next, bytes.as_slice())
                    .map_err(|e| map_storage(path, "writing an operation", e))?;
                ids.insert(op.id.as_bytes(), next)
                    .map_err(|e| map_storage(path, "writing an id", e))?;
                let skey = strand_key(
                    op.document_id.as_str(),
                    op.scope.as_str(),
                    op.branch.as_str(),
                );
                let sort = op.sort_key();
                let mut full = skey.clone();
                full.extend_from_slice(&sort_key_bytes(&sort));
                strand_ops
                    .insert(full.as_slice(), next)
                    .map_err(|e| map_storage(path, "indexing an operation", e))?;
                let meta = match touched.get_mut(&skey) {
                    Some(m) => m,
                    None => {
                        let loaded = strands
                            .get(skey.as_slice())
                            .map_err(|e| map_storage(path, "reading a strand", e))?
                            .map(|v| decode_meta(path, v.value()))
                            .transpose()?;
                        touched.entry(skey).or_insert(loaded.unwrap_or(StrandMeta {
                            document_type: op.document_type.clone(),
                            revision: 0,
                            last: sort,
                            last_ordinal: Ordinal(next),
                        }))
                    }
                };
                meta.revision += 1;
                if sort > meta.last || meta.revision == 1 {
                    meta.last = sort;
                }
                meta.last_ordinal = Ordinal(next);
                outcomes.push(OpOutcome::New(Ordinal(next)));
            }
            for (k, m) in &touched {
                strands
                    .insert(k.as_slice(), encode(m)?.as_slice())
                    .map_err(|e| map_storage(path, "writing a strand", e))?;
            }
            head = next;
            if !batch.meta.is_empty() {
                let mut meta = txn
                    .open_table(META)
                    .map_err(|e| storage(path, "opening meta", e))?;
                for w in &batch.meta {
                    write_meta(&mut meta, path, w)?;
                }
            }
        }
        txn.commit().map_err(|e| storage(path, "committing", e))?;
        Ok(ApplyOutcome {
            outcomes,
            head: Ordinal(head),
        })
    }
}

fn write_meta(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    path: &Path,
    w: &MetaWrite,
) -> Result<()> {
    let key = meta_key(w.space, &w.key);
    match &w.value {
        Some(v) => table
            .insert(key.as_str(), v.as_ref())
            .map(|_| ())
            .map_err(|e| map_storage(path, "writing sync storage", e)),
        None => table
            .remove(key.as_str())
            .map(|_| ())
            .map_err(|e| map_storage(path, "deleting from sync storage", e)),
    }
}

#[async_trait]
impl OperationStore for RedbStore {
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        self.run(move |inner| inner.apply(batch)).await
    }

    async fn read_since(
        &self,
        after: Ordinal,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<ReadPage> {
        let filter = filter.clone();
        self.run(move |inner| {
            let path = &inner.path;
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| storage(path, "starting a read", e))?;
            let ops = txn
                .open_table(OPS)
                .map_err(|e| storage(path, "opening ops", e))?;
            let head = ops
                .last()
                .map_err(|e| map_storage(path, "reading the head", e))?
                .map(|(k, _)| k.value())
                .unwrap_or(0);
            let mut page = ReadPage {
                ops: Vec::with_capacity(limit.min(4096)),
                scanned_to: after,
                head: Ordinal(head),
            };
            let range = ops
                .range(after.0 + 1..)
                .map_err(|e| map_storage(path, "reading the feed", e))?;
            for entry in range.take(MAX_SCAN_ROWS) {
                if page.ops.len() >= limit {
                    break;
                }
                let (k, v) = entry.map_err(|e| map_storage(path, "reading the feed", e))?;
                let stored = decode_record(path, k.value(), v.value())?;
                page.scanned_to = stored.ordinal;
                if filter.matches(&stored) {
                    page.ops.push(stored);
                }
            }
            Ok(page)
        })
        .await
    }

    async fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>> {
        let prefix = strand_key_of(strand);
        self.run(move |inner| {
            let path = &inner.path;
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| storage(path, "starting a read", e))?;
            let index = txn
                .open_table(STRAND_OPS)
                .map_err(|e| storage(path, "opening strand_ops", e))?;
            let ops = txn.open_table(OPS).map_err(|e| storage(path, "opening ops", e))?;
            let mut start = prefix.clone();
            if let Some(k) = after {
                start.extend_from_slice(&sort_key_bytes(&k));
                // The smallest key after `k`: every key of this strand has the same length.
                start.push(0);
            }
            let mut end = prefix;
            end.extend_from_slice(&[0xff; 29]);
            let mut out = Vec::new();
            let range = index
                .range(start.as_slice()..end.as_slice())
                .map_err(|e| map_storage(path, "reading a strand", e))?;
            for entry in range.take(limit) {
                let (_, ord) = entry.map_err(|e| map_storage(path, "reading a strand", e))?;
                let ord = ord.value();
                let v = ops
                    .get(ord)
                    .map_err(|e| map_storage(path, "reading an operation", e))?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Corrupt,
                            format!(
                                "redb store {}: the strand index names operation {ord}, which is missing",
                                path.display()
                            ),
                        )
                    })?;
                out.push(decode_record(path, ord, v.value())?.op);
            }
            Ok(out)
        })
        .await
    }

    async fn heads(&self) -> Result<Vec<StrandHead>> {
        self.run(|inner| {
            let path = &inner.path;
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| storage(path, "starting a read", e))?;
            let strands = txn
                .open_table(STRANDS)
                .map_err(|e| storage(path, "opening strands", e))?;
            let mut out = Vec::new();
            for entry in strands
                .range::<&[u8]>(..)
                .map_err(|e| map_storage(path, "reading strands", e))?
            {
                let (k, v) = entry.map_err(|e| map_storage(path, "reading strands", e))?;
                let strand = parse_strand_key(k.value()).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Corrupt,
                        format!("redb store {}: a strand key does not parse", path.display()),
                    )
                })?;
                let m = decode_meta(path, v.value())?;
                out.push(StrandHead {
                    strand,
                    document_type: m.document_type,
                    revision: m.revision,
                    last: m.last,
                    last_ordinal: m.last_ordinal,
                });
            }
            out.sort_by(|a, b| a.strand.cmp(&b.strand));
            Ok(out)
        })
        .await
    }

    async fn head(&self) -> Result<Ordinal> {
        self.run(|inner| {
            let path = &inner.path;
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| storage(path, "starting a read", e))?;
            let ops = txn
                .open_table(OPS)
                .map_err(|e| storage(path, "opening ops", e))?;
            Ok(Ordinal(
                ops.last()
                    .map_err(|e| map_storage(path, "reading the head", e))?
                    .map(|(k, _)| k.value())
                    .unwrap_or(0),
            ))
        })
        .await
    }

    async fn get(&self, id: &OpId) -> Result<Option<StoredOp>> {
        let id = *id;
        self.run(move |inner| {
            let path = &inner.path;
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| storage(path, "starting a read", e))?;
            let ids = txn
                .open_table(OP_IDS)
                .map_err(|e| storage(path, "opening op_ids", e))?;
            let Some(ord) = ids
                .get(id.as_bytes())
                .map_err(|e| map_storage(path, "looking up an id", e))?
            else {
                return Ok(None);
            };
            let ord = ord.value();
            let ops = txn
                .open_table(OPS)
                .map_err(|e| storage(path, "opening ops", e))?;
            let v = ops
                .get(ord)
                .map_err(|e| map_storage(path, "reading an operation", e))?;
            v.map(|v| decode_record(path, ord, v.value())).transpose()
        })
        .await
    }
}

#[async_trait]
impl SyncStorage for RedbStore {
    async fn get_meta(&self, space: MetaSpace, key: &str) -> Result<Option<Bytes>> {
        let key = meta_key(space, key);
        self.run(move |inner| {
            let path = &inner.path;
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| storage(path, "starting a read", e))?;
            let meta = txn
                .open_table(META)
                .map_err(|e| storage(path, "opening meta", e))?;
            Ok(meta
                .get(key.as_str())
                .map_err(|e| map_storage(path, "reading sync storage", e))?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
        .await
    }

    async fn write_meta(&self, writes: Vec<MetaWrite>) -> Result<()> {
        self.run(move |inner| {
            let path = &inner.path;
            let mut txn = inner
                .db
                .begin_write()
                .map_err(|e| storage(path, "starting a transaction", e))?;
            let durability = if inner.options.durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            txn.set_durability(durability)
                .map_err(|e| storage(path, "setting durability", e))?;
            {
                let mut meta = txn
                    .open_table(META)
                    .map_err(|e| storage(path, "opening meta", e))?;
                for w in &writes {
                    write_meta(&mut meta, path, w)?;
                }
            }
            txn.commit().map_err(|e| storage(path, "committing", e))
        })
        .await
    }

    async fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>> {
        self.run(move |inner| {
            let path = &inner.path;
            let txn = inner
                .db
                .begin_read()
                .map_err(|e| storage(path, "starting a read", e))?;
            let meta = txn
                .open_table(META)
                .map_err(|e| storage(path, "opening meta", e))?;
            let start = format!("{}/", space.as_str());
            // '/' + 1 == '0': the first key after every "<space>/..." key.
            let end = format!("{}0", space.as_str());
            let mut out = Vec::new();
            for entry in meta
                .range(start.as_str()..end.as_str())
                .map_err(|e| map_storage(path, "listing sync storage", e))?
            {
                let (k, v) = entry.map_err(|e| map_storage(path, "listing sync storage", e))?;
                out.push((
                    k.value()[start.len()..].to_owned(),
                    Bytes::copy_from_slice(v.value()),
                ));
            }
            Ok(out)
        })
        .await
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
                    .open_table(TableDefinition::<u64, u64>::new("accounts"))
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
                let mut t = txn.open_table(NODE).unwrap();
                t.insert("format_version", 99u32.to_le_bytes().as_slice())
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
