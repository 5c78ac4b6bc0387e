//! The store engine: syncline's operations store and sync storage over any ordered key-value
//! store with atomic write batches.
//!
//! The algorithm on which idempotence and gap-free ordinals rest (dedupe by id, the next
//! ordinal for each new operation, the strand index and heads, metadata in the same commit) is
//! written here once. A backend implements [`OrderedKv`] (a consistent read view with `get` and
//! an ordered `range`, and an atomic `write` of a batch) and gets a complete [`Store`] by
//! wrapping itself in a [`KvEngine`]. The redb store and the plugin host's key-value stores are
//! such backends.
//!
//! ## Key layout (layout version 1)
//!
//! | key | value |
//! |---|---|
//! | `n/format` | layout version, `u32` LE |
//! | `n/head` | last ordinal, `u64` BE |
//! | `o/` ‖ ordinal (`u64` BE) | [`record::encode_op`]: postcard of `(Operation, Option<ReactorId>)` |
//! | `i/` ‖ op id (16 bytes) | ordinal, `u64` BE |
//! | `s/` ‖ strand key ‖ sort key | ordinal, `u64` BE |
//! | `t/` ‖ strand key | [`record::StrandMeta`], postcard |
//! | `m/` ‖ space ‖ `/` ‖ key | the sync storage's value |
//!
//! Strand and sort keys are [`keys`]' encodings, in which byte order is the canonical order.
//!
//! One engine writes at a time (applies and metadata writes are serialized by the engine), and
//! one process owns a dataset: the engine reads under its write lock and commits what it read,
//! so a second writer on the same dataset would break the ordinals.
//!
//! [`Store`]: crate::store::Store

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::{Error, ErrorKind, Result};
use crate::filter::ReadFilter;
use crate::store::keys::{parse_strand_key, sort_key_bytes, strand_key, strand_key_of};
use crate::store::record::{self, StrandMeta};
use crate::store::{
    ApplyBatch, ApplyOutcome, MAX_SCAN_ROWS, MetaSpace, MetaWrite, OpOutcome, OperationStore,
    ReadPage, SyncStorage,
};
use crate::types::{OpId, Operation, Ordinal, SortKey, StoredOp, StrandHead, StrandId};

/// The key layout version the engine writes; a dataset with another one is refused.
pub const LAYOUT_VERSION: u32 = 1;

/// The engine's key spaces: every key it reads or writes starts with one of these two bytes,
/// and no `range` it asks for crosses two (its end is the first key after its space at most),
/// so a backend may keep each space in a table of its own (redb does).
pub const KEY_SPACES: [&[u8; 2]; 6] = [b"n/", b"o/", b"i/", b"s/", b"t/", b"m/"];

const FORMAT_KEY: &[u8] = b"n/format";
const HEAD_KEY: &[u8] = b"n/head";

/// One write of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvWrite {
    /// Sets `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Removes `key` (nothing if absent).
    Delete(Vec<u8>),
}

/// What [`KvRead::range`] calls for each entry, key and value; `Ok(false)` stops the visit.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A consistent read view of an ordered key-value store.
pub trait KvRead {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits the entries with `start <= key < end` in key order until `visit` returns
    /// `Ok(false)` or fails.
    fn range(&self, start: &[u8], end: &[u8], visit: &mut Visit<'_>) -> Result<()>;
}

/// An ordered key-value store with atomic write batches: what a backend implements to become
/// a store.
///
/// Calls block; the engine makes them on tokio's blocking pool (or inline, see [`Blocking`]).
/// Errors are the core's: a backend maps its own error type once, with
/// [`ErrorKind::Corrupt`] for damaged data and [`ErrorKind::Storage`] for I/O.
pub trait OrderedKv: Send + Sync + 'static {
    /// A read view; reads through one view see one state.
    type Read<'a>: KvRead
    where
        Self: 'a;

    /// Opens a read view.
    fn read(&self) -> Result<Self::Read<'_>>;

    /// Applies every write of `batch`, atomically: all or none, durable when it returns if
    /// the backend is configured durable.
    fn write(&self, batch: Vec<KvWrite>) -> Result<()>;

    /// How errors and logs name this store, e.g. `redb store /var/lib/syncline/node.redb`.
    fn name(&self) -> &str;
}

impl<K: OrderedKv> OrderedKv for Arc<K> {
    type Read<'a> = K::Read<'a>;

    fn read(&self) -> Result<Self::Read<'_>> {
        K::read(self)
    }

    fn write(&self, batch: Vec<KvWrite>) -> Result<()> {
        K::write(self, batch)
    }

    fn name(&self) -> &str {
        K::name(self)
    }
}

/// Where the engine runs its blocking calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Blocking {
    /// On tokio's blocking pool (the default for nodes).
    #[default]
    Pool,
    /// On the calling task. Only for single-threaded deterministic simulations.
    Inline,
}

/// A [`Store`](crate::store::Store) over an [`OrderedKv`].
pub struct KvEngine<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    kv: K,
    blocking: Blocking,
    write: Mutex<()>,
}

impl<K> Clone for KvEngine<K> {
    fn clone(&self) -> Self {
        KvEngine {
            inner: self.inner.clone(),
        }
    }
}

impl<K: OrderedKv> std::fmt::Debug for KvEngine<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KvEngine")
            .field(&self.inner.kv.name())
            .finish()
    }
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn op_key(ordinal: u64) -> Vec<u8> {
    prefixed(b"o/", &ordinal.to_be_bytes())
}

fn meta_key(space: MetaSpace, key: &str) -> Vec<u8> {
    format!("m/{}/{key}", space.as_str()).into_bytes()
}

/// The first key after every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

fn corrupt(name: &str, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Corrupt, format!("{name}: {what}"))
}

fn be64(name: &str, what: &str, v: &[u8]) -> Result<u64> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(name, format!("{what} has {} bytes, not 8", v.len())))
}

fn meta_writes(writes: &[MetaWrite], out: &mut Vec<KvWrite>) {
    out.extend(writes.iter().map(|w| {
        let k = meta_key(w.space, &w.key);
        match &w.value {
            Some(v) => KvWrite::Put(k, v.to_vec()),
            None => KvWrite::Delete(k),
        }
    }));
}

impl<K: OrderedKv> KvEngine<K> {
    /// Wraps `kv`, checking its layout version (writing it into an empty dataset).
    pub async fn open(kv: K, blocking: Blocking) -> Result<Self> {
        let engine = KvEngine {
            inner: Arc::new(Inner {
                kv,
                blocking,
                write: Mutex::new(()),
            }),
        };
        engine.run(|inner| inner.check_layout()).await?;
        Ok(engine)
    }

    /// The backend.
    pub fn kv(&self) -> &K {
        &self.inner.kv
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner<K>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self.inner.blocking {
            Blocking::Inline => f(&self.inner),
            Blocking::Pool => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || f(&inner))
                    .await
                    .map_err(|e| {
                        Error::internal(format!("a call to {} panicked: {e}", self.kv().name()))
                    })?
            }
        }
    }
}

impl<K: OrderedKv> Inner<K> {
    fn name(&self) -> &str {
        self.kv.name()
    }

    fn check_layout(&self) -> Result<()> {
        let _serial = self.write.lock();
        let found = self.kv.read()?.get(FORMAT_KEY)?;
        match found {
            Some(v) => {
                let arr: [u8; 4] = v.as_slice().try_into().map_err(|_| {
                    corrupt(
                        self.name(),
                        format!("the format version record has {} bytes", v.len()),
                    )
                })?;
                let version = u32::from_le_bytes(arr);
                if version != LAYOUT_VERSION {
                    return Err(Error::new(
                        ErrorKind::FormatVersion,
                        format!(
                            "{} has format version {version}; this build reads version \
                             {LAYOUT_VERSION}",
                            self.name()
                        ),
                    ));
                }
                Ok(())
            }
            None => self.kv.write(vec![KvWrite::Put(
                FORMAT_KEY.to_vec(),
                LAYOUT_VERSION.to_le_bytes().to_vec(),
            )]),
        }
    }

    fn head(&self, view: &K::Read<'_>) -> Result<u64> {
        match view.get(HEAD_KEY)? {
            Some(v) => be64(self.name(), "the head record", &v),
            None => Ok(0),
        }
    }

    fn load_op(&self, view: &K::Read<'_>, ordinal: u64) -> Result<StoredOp> {
        let bytes = view.get(&op_key(ordinal))?.ok_or_else(|| {
            corrupt(
                self.name(),
                format!("an index names operation {ordinal}, which is missing"),
            )
        })?;
        record::decode_op(self.name(), ordinal, &bytes)
    }

    fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        let _serial = self.write.lock();
        let view = self.kv.read()?;
        let mut head = self.head(&view)?;
        let mut writes = Vec::with_capacity(batch.ops.len() * 3 + batch.meta.len() + 2);
        let mut outcomes = Vec::with_capacity(batch.ops.len());
        let mut seen: HashMap<OpId, u64> = HashMap::new();
        let mut strands: HashMap<Vec<u8>, StrandMeta> = HashMap::new();
        let mut buf = Vec::with_capacity(1024);
        for incoming in &batch.ops {
            let op = &incoming.op;
            if let Some(o) = seen.get(&op.id) {
                outcomes.push(OpOutcome::Duplicate(Ordinal(*o)));
                continue;
            }
            let id_key = prefixed(b"i/", op.id.as_bytes());
            if let Some(v) = view.get(&id_key)? {
                let o = be64(self.name(), "an id record", &v)?;
                outcomes.push(OpOutcome::Duplicate(Ordinal(o)));
                continue;
            }
            head += 1;
            seen.insert(op.id, head);
            buf.clear();
            record::encode_op(op, &incoming.source, &mut buf)?;
            writes.push(KvWrite::Put(op_key(head), buf.as_slice().to_vec()));
            writes.push(KvWrite::Put(id_key, head.to_be_bytes().to_vec()));
            let strand = strand_key(
                op.document_id.as_str(),
                op.scope.as_str(),
                op.branch.as_str(),
            );
            let sort = op.sort_key();
            let mut index = prefixed(b"s/", &strand);
            index.extend_from_slice(&sort_key_bytes(&sort));
            writes.push(KvWrite::Put(index, head.to_be_bytes().to_vec()));
            let meta = match strands.get_mut(&strand) {
                Some(m) => m,
                None => {
                    let loaded = view
                        .get(&prefixed(b"t/", &strand))?
                        .map(|v| record::decode_strand(self.name(), &v))
                        .transpose()?;
                    strands.entry(strand).or_insert(
                        loaded.unwrap_or_else(|| StrandMeta::empty(op.document_type.clone(), sort)),
                    )
                }
            };
            meta.record(sort, Ordinal(head));
            outcomes.push(OpOutcome::New(Ordinal(head)));
        }
        drop(view);
        for (strand, meta) in &strands {
            writes.push(KvWrite::Put(
                prefixed(b"t/", strand),
                record::encode_strand(meta)?,
            ));
        }
        if !strands.is_empty() {
            writes.push(KvWrite::Put(HEAD_KEY.to_vec(), head.to_be_bytes().to_vec()));
        }
        meta_writes(&batch.meta, &mut writes);
        if !writes.is_empty() {
            self.kv.write(writes)?;
        }
        Ok(ApplyOutcome {
            outcomes,
            head: Ordinal(head),
        })
    }

    fn read_since(&self, after: Ordinal, limit: usize, filter: &ReadFilter) -> Result<ReadPage> {
        let view = self.kv.read()?;
        let mut page = ReadPage {
            ops: Vec::with_capacity(limit.min(4096)),
            scanned_to: after,
            head: Ordinal(self.head(&view)?),
        };
        if limit == 0 {
            return Ok(page);
        }
        let mut scanned = 0;
        view.range(&op_key(after.0.saturating_add(1)), b"o0", &mut |k, v| {
            let o = be64(self.name(), "a feed key", &k[2..])?;
            let stored = record::decode_op(self.name(), o, v)?;
            page.scanned_to = stored.ordinal;
            scanned += 1;
            if filter.matches(&stored) {
                page.ops.push(stored);
            }
            Ok(page.ops.len() < limit && scanned < MAX_SCAN_ROWS)
        })?;
        Ok(page)
    }

    fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>> {
        let view = self.kv.read()?;
        let prefix = prefixed(b"s/", &strand_key_of(strand));
        let mut start = prefix.clone();
        if let Some(k) = after {
            start.extend_from_slice(&sort_key_bytes(&k));
            // The smallest key after `k`: every key of this strand has the same length.
            start.push(0);
        }
        let mut ordinals = Vec::new();
        if limit > 0 {
            view.range(&start, &prefix_end(&prefix), &mut |_, v| {
                ordinals.push(be64(self.name(), "a strand index entry", v)?);
                Ok(ordinals.len() < limit)
            })?;
        }
        ordinals
            .into_iter()
            .map(|o| self.load_op(&view, o).map(|s| s.op))
            .collect()
    }

    fn heads(&self) -> Result<Vec<StrandHead>> {
        let view = self.kv.read()?;
        let mut out = Vec::new();
        view.range(b"t/", b"t0", &mut |k, v| {
            let strand = parse_strand_key(&k[2..])
                .ok_or_else(|| corrupt(self.name(), "a strand key does not parse"))?;
            let m = record::decode_strand(self.name(), v)?;
            out.push(StrandHead {
                strand,
                document_type: m.document_type,
                revision: m.revision,
                last: m.last,
                last_ordinal: m.last_ordinal,
            });
            Ok(true)
        })?;
        out.sort_by(|a, b| a.strand.cmp(&b.strand));
        Ok(out)
    }

    fn get(&self, id: &OpId) -> Result<Option<StoredOp>> {
        let view = self.kv.read()?;
        let Some(v) = view.get(&prefixed(b"i/", id.as_bytes()))? else {
            return Ok(None);
        };
        let o = be64(self.name(), "an id record", &v)?;
        self.load_op(&view, o).map(Some)
    }

    fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>> {
        let view = self.kv.read()?;
        let prefix = format!("m/{}/", space.as_str()).into_bytes();
        let mut out = Vec::new();
        view.range(&prefix, &prefix_end(&prefix), &mut |k, v| {
            let key = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| corrupt(self.name(), "a sync storage key is not UTF-8"))?;
            out.push((key.to_owned(), Bytes::copy_from_slice(v)));
            Ok(true)
        })?;
        Ok(out)
    }
}

#[async_trait]
impl<K: OrderedKv> OperationStore for KvEngine<K> {
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
        self.run(move |inner| inner.read_since(after, limit, &filter))
            .await
    }

    async fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>> {
        let strand = strand.clone();
        self.run(move |inner| inner.read_strand(&strand, after, limit))
            .await
    }

    async fn heads(&self) -> Result<Vec<StrandHead>> {
        self.run(|inner| inner.heads()).await
    }

    async fn head(&self) -> Result<Ordinal> {
        self.run(|inner| inner.head(&inner.kv.read()?).map(Ordinal))
            .await
    }

    async fn get(&self, id: &OpId) -> Result<Option<StoredOp>> {
        let id = *id;
        self.run(move |inner| inner.get(&id)).await
    }
}

#[async_trait]
impl<K: OrderedKv> SyncStorage for KvEngine<K> {
    async fn get_meta(&self, space: MetaSpace, key: &str) -> Result<Option<Bytes>> {
        let key = meta_key(space, key);
        self.run(move |inner| Ok(inner.kv.read()?.get(&key)?.map(Bytes::from)))
            .await
    }

    async fn write_meta(&self, writes: Vec<MetaWrite>) -> Result<()> {
        self.run(move |inner| {
            let _serial = inner.write.lock();
            let mut batch = Vec::with_capacity(writes.len());
            meta_writes(&writes, &mut batch);
            inner.kv.write(batch)
        })
        .await
    }

    async fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>> {
        self.run(move |inner| inner.list_meta(space)).await
    }
}

/// An [`OrderedKv`] in a `BTreeMap`: the reference backend of the engine's contract, for
/// tests and for backends to compare against.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: RwLock<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl KvRead for RwLockReadGuard<'_, std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(std::collections::BTreeMap::get(self, key).cloned())
    }

    fn range(&self, start: &[u8], end: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        for (k, v) in std::collections::BTreeMap::range::<[u8], _>(
            self,
            (
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
            ),
        ) {
            if !visit(k, v)? {
                break;
            }
        }
        Ok(())
    }
}

impl OrderedKv for MemoryKv {
    type Read<'a> = RwLockReadGuard<'a, std::collections::BTreeMap<Vec<u8>, Vec<u8>>>;

    fn read(&self) -> Result<Self::Read<'_>> {
        Ok(self.map.read())
    }

    fn write(&self, batch: Vec<KvWrite>) -> Result<()> {
        let mut map = self.map.write();
        for w in batch {
            match w {
                KvWrite::Put(k, v) => map.insert(k, v),
                KvWrite::Delete(k) => map.remove(&k),
            };
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "memory key-value store"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"m/"), b"m0".to_vec());
        assert_eq!(prefix_end(&[0x01, 0xff]), vec![0x02]);
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0xff, 0xff, 0xff]);
    }
}
