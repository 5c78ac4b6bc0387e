//! The in-memory store: everything in one process, under one lock.
//!
//! It is durable for as long as the `Arc` lives, which is what the simulation's crash and
//! restart use: a crashed reactor loses its queue and sync state in memory, while its store
//! keeps exactly what was committed.

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;

use crate::error::{Error, ErrorKind, Result};
use crate::filter::ReadFilter;
use crate::store::{
    ApplyBatch, ApplyOutcome, MAX_SCAN_ROWS, MetaSpace, MetaWrite, OpOutcome, OperationStore,
    ReadPage, SyncStorage,
};
use crate::types::{
    DocumentType, OpId, Operation, Ordinal, SortKey, StoredOp, StrandHead, StrandId,
};

#[derive(Debug)]
struct StrandIndex {
    document_type: DocumentType,
    keys: BTreeMap<SortKey, Ordinal>,
    last_ordinal: Ordinal,
}

#[derive(Debug, Default)]
struct Inner {
    ops: Vec<StoredOp>,
    by_id: HashMap<OpId, Ordinal>,
    strands: HashMap<StrandId, StrandIndex>,
    meta: BTreeMap<(MetaSpace, String), Bytes>,
}

impl Inner {
    fn op(&self, ordinal: Ordinal) -> Option<&StoredOp> {
        self.ops.get((ordinal.0 as usize).checked_sub(1)?)
    }
}

/// A store held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
    fail_next: AtomicUsize,
    poison: RwLock<Option<String>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// An empty store behind an `Arc`.
    pub fn shared() -> Arc<Self> {
        Arc::new(MemoryStore::new())
    }

    /// Makes the next `n` applies fail with a retryable storage error (for tests of the
    /// executor's and the sync manager's error paths).
    pub fn fail_next_applies(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Makes every apply holding an operation of `document` fail with a storage error, as a
    /// store that cannot take one particular record would (for tests of commit isolation).
    pub fn fail_applies_of(&self, document: &str) {
        *self.poison.write() = Some(document.to_owned());
    }

    /// Number of stored operations.
    pub fn len(&self) -> usize {
        self.inner.read().ops.len()
    }

    /// Whether the store holds no operations.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take_failure(&self) -> bool {
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[async_trait]
impl OperationStore for MemoryStore {
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        if self.take_failure() {
            return Err(Error::new(
                ErrorKind::Storage,
                "memory store: injected apply failure",
            ));
        }
        if let Some(doc) = self.poison.read().as_deref()
            && batch.ops.iter().any(|o| o.op.document_id.as_str() == doc)
        {
            return Err(Error::new(
                ErrorKind::Storage,
                format!("memory store: injected failure for an operation of {doc}"),
            ));
        }
        let mut inner = self.inner.write();
        let Inner {
            ops: feed,
            by_id,
            strands,
            meta,
        } = &mut *inner;
        let mut outcomes = Vec::with_capacity(batch.ops.len());
        feed.reserve(batch.ops.len());
        by_id.reserve(batch.ops.len());
        let mut incoming = batch.ops.into_iter().peekable();
        // Consecutive operations mostly share a strand: look each run's strand up once.
        while let Some(first) = incoming.next() {
            let idx = strands
                .entry(first.op.strand())
                .or_insert_with(|| StrandIndex {
                    document_type: first.op.document_type.clone(),
                    keys: BTreeMap::new(),
                    last_ordinal: Ordinal::ZERO,
                });
            let strand_of = first.op.clone();
            let mut next = Some(first);
            while let Some(inc) = next.take() {
                let id = inc.op.id;
                if let Some(&existing) = by_id.get(&id) {
                    outcomes.push(OpOutcome::Duplicate(existing));
                } else {
                    let ordinal = Ordinal(feed.len() as u64 + 1);
                    idx.keys.insert(inc.op.sort_key(), ordinal);
                    idx.last_ordinal = ordinal;
                    by_id.insert(id, ordinal);
                    feed.push(StoredOp {
                        ordinal,
                        op: inc.op,
                        source: inc.source,
                    });
                    outcomes.push(OpOutcome::New(ordinal));
                }
                next = incoming.next_if(|n| {
                    n.op.document_id == strand_of.document_id
                        && n.op.scope == strand_of.scope
                        && n.op.branch == strand_of.branch
                        && n.op.document_type == strand_of.document_type
                });
            }
        }
        for w in batch.meta {
            apply_meta(meta, w);
        }
        Ok(ApplyOutcome {
            outcomes,
            head: Ordinal(feed.len() as u64),
        })
    }

    async fn read_since(
        &self,
        after: Ordinal,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<ReadPage> {
        let inner = self.inner.read();
        let head = Ordinal(inner.ops.len() as u64);
        let start = (after.0 as usize).min(inner.ops.len());
        let mut page = ReadPage {
            ops: Vec::with_capacity(limit.min(4096)),
            scanned_to: after,
            head,
        };
        for stored in inner.ops[start..].iter().take(MAX_SCAN_ROWS) {
            if page.ops.len() >= limit {
                break;
            }
            page.scanned_to = stored.ordinal;
            if filter.matches(stored) {
                page.ops.push(stored.clone());
            }
        }
        Ok(page)
    }

    async fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>> {
        let inner = self.inner.read();
        let Some(idx) = inner.strands.get(strand) else {
            return Ok(Vec::new());
        };
        let range = match after {
            Some(k) => idx
                .keys
                .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            None => idx.keys.range(..),
        };
        Ok(range
            .take(limit)
            .filter_map(|(_, ord)| inner.op(*ord).map(|s| s.op.clone()))
            .collect())
    }

    async fn heads(&self) -> Result<Vec<StrandHead>> {
        let inner = self.inner.read();
        let mut heads: Vec<StrandHead> = inner
            .strands
            .iter()
            .filter_map(|(strand, idx)| {
                let (last, _) = idx.keys.last_key_value()?;
                Some(StrandHead {
                    strand: strand.clone(),
                    document_type: idx.document_type.clone(),
                    revision: idx.keys.len() as u64,
                    last: *last,
                    last_ordinal: idx.last_ordinal,
                })
            })
            .collect();
        heads.sort_by(|a, b| a.strand.cmp(&b.strand));
        Ok(heads)
    }

    async fn head(&self) -> Result<Ordinal> {
        Ok(Ordinal(self.inner.read().ops.len() as u64))
    }

    async fn get(&self, id: &OpId) -> Result<Option<StoredOp>> {
        let inner = self.inner.read();
        Ok(inner.by_id.get(id).and_then(|o| inner.op(*o)).cloned())
    }
}

fn apply_meta(meta: &mut BTreeMap<(MetaSpace, String), Bytes>, w: MetaWrite) {
    match w.value {
        Some(v) => {
            meta.insert((w.space, w.key), v);
        }
        None => {
            meta.remove(&(w.space, w.key));
        }
    }
}

#[async_trait]
impl SyncStorage for MemoryStore {
    async fn get_meta(&self, space: MetaSpace, key: &str) -> Result<Option<Bytes>> {
        Ok(self
            .inner
            .read()
            .meta
            .get(&(space, key.to_owned()))
            .cloned())
    }

    async fn write_meta(&self, writes: Vec<MetaWrite>) -> Result<()> {
        let mut inner = self.inner.write();
        for w in writes {
            apply_meta(&mut inner.meta, w);
        }
        Ok(())
    }

    async fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>> {
        let inner = self.inner.read();
        Ok(inner
            .meta
            .range((space, String::new())..)
            .take_while(|((s, _), _)| *s == space)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}
