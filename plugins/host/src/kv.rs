//! syncline's store on any ordered key-value store with atomic write batches (a store plugin,
//! or a plugin's Rust type used directly).
//!
//! Key layout:
//!
//! | key | value |
//! |---|---|
//! | `n/format` | layout version, `u32` LE |
//! | `n/head` | last ordinal, `u64` BE |
//! | `o/` ‖ ordinal (`u64` BE) | postcard of `(Operation, Option<ReactorId>)` |
//! | `i/` ‖ op id (16 bytes) | ordinal, `u64` BE |
//! | `s/` ‖ strand key ‖ sort key | ordinal, `u64` BE |
//! | `t/` ‖ strand key | postcard of the strand's head |
//! | `m/` ‖ space ‖ `/` ‖ key | sync storage value |
//!
//! One process writes at a time (applies are serialized here); the plugin's `write_batch` makes
//! each apply atomic. All calls run on tokio's blocking pool.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
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
use syncline_plugin_api::{BatchOp, KvStore, PluginError};

const FORMAT: u32 = 1;

/// The store over a key-value store.
#[derive(Clone)]
pub struct KvAdapter {
    kv: Arc<dyn KvStore>,
    name: String,
    write: Arc<Mutex<()>>,
}

impl std::fmt::Debug for KvAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvAdapter({})", self.name)
    }
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

#[derive(Serialize, Deserialize)]
struct StrandMeta {
    document_type: DocumentType,
    revision: u64,
    last: SortKey,
    last_ordinal: Ordinal,
}

fn pe(name: &str, what: &str, e: PluginError) -> Error {
    let kind = match e.code {
        syncline_plugin_api::ERR_INVALID => ErrorKind::InvalidInput,
        syncline_plugin_api::ERR_CLOSED => ErrorKind::Closed,
        syncline_plugin_api::ERR_UNAVAILABLE | syncline_plugin_api::ERR_TIMEOUT => {
            ErrorKind::Unavailable
        }
        syncline_plugin_api::ERR_PANIC => ErrorKind::Internal,
        _ => ErrorKind::Storage,
    };
    Error::new(kind, format!("plugin store {name}: {what}: {}", e.message))
}

fn corrupt(name: &str, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Corrupt, format!("plugin store {name}: {what}"))
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn meta_key(space: MetaSpace, k: &str) -> Vec<u8> {
    format!("m/{}/{k}", space.as_str()).into_bytes()
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

impl KvAdapter {
    /// Wraps a key-value store named `name`, checking (or writing) the layout version.
    pub async fn new(kv: Arc<dyn KvStore>, name: &str) -> Result<Self> {
        let a = KvAdapter {
            kv,
            name: name.to_owned(),
            write: Arc::default(),
        };
        let b = a.clone();
        a.blocking(move || {
            match b.kv.get(b"n/format").map_err(|e| pe(&b.name, "reading the format", e))? {
                Some(v) => {
                    let arr: [u8; 4] = v
                        .as_slice()
                        .try_into()
                        .map_err(|_| corrupt(&b.name, "the format record is malformed"))?;
                    let found = u32::from_le_bytes(arr);
                    if found != FORMAT {
                        return Err(Error::new(
                            ErrorKind::FormatVersion,
                            format!(
                                "plugin store {} has layout version {found}; this build reads {FORMAT}",
                                b.name
                            ),
                        ));
                    }
                }
                None => b
                    .kv
                    .write_batch(&[BatchOp::Put(
                        b"n/format".to_vec(),
                        FORMAT.to_le_bytes().to_vec(),
                    )])
                    .map_err(|e| pe(&b.name, "writing the format", e))?,
            }
            Ok(())
        })
        .await?;
        Ok(a)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::internal(format!("a plugin store call panicked: {e}")))?
    }

    fn head_now(&self) -> Result<u64> {
        Ok(self
            .kv
            .get(b"n/head")
            .map_err(|e| pe(&self.name, "reading the head", e))?
            .and_then(|v| be64(&v))
            .unwrap_or(0))
    }

    fn decode(&self, ordinal: u64, bytes: &[u8]) -> Result<StoredOp> {
        let r: Record = postcard::from_bytes(bytes).map_err(|e| {
            corrupt(
                &self.name,
                format!("operation {ordinal} does not decode: {e}"),
            )
        })?;
        Ok(StoredOp {
            ordinal: Ordinal(ordinal),
            op: Arc::new(r.op),
            source: r.source,
        })
    }

    fn apply_now(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        let _serial = self.write.lock();
        let mut head = self.head_now()?;
        let mut ops = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.ops.len());
        let mut seen: HashMap<OpId, u64> = HashMap::new();
        let mut metas: HashMap<Vec<u8>, StrandMeta> = HashMap::new();
        for inc in &batch.ops {
            let op = &inc.op;
            if let Some(o) = seen.get(&op.id) {
                outcomes.push(OpOutcome::Duplicate(Ordinal(*o)));
                continue;
            }
            let ik = key(b"i/", op.id.as_bytes());
            if let Some(v) = self
                .kv
                .get(&ik)
                .map_err(|e| pe(&self.name, "looking up an id", e))?
            {
                let o = be64(&v).ok_or_else(|| corrupt(&self.name, "an id record is malformed"))?;
                outcomes.push(OpOutcome::Duplicate(Ordinal(o)));
                continue;
            }
            head += 1;
            seen.insert(op.id, head);
            let rec = postcard::to_stdvec(&RecordRef {
                op,
                source: &inc.source,
            })
            .map_err(|e| Error::internal(format!("encoding an operation failed: {e}")))?;
            ops.push(BatchOp::Put(key(b"o/", &head.to_be_bytes()), rec));
            ops.push(BatchOp::Put(ik, head.to_be_bytes().to_vec()));
            let sk = strand_key(
                op.document_id.as_str(),
                op.scope.as_str(),
                op.branch.as_str(),
            );
            let sort = op.sort_key();
            let mut idx = key(b"s/", &sk);
            idx.extend_from_slice(&sort_key_bytes(&sort));
            ops.push(BatchOp::Put(idx, head.to_be_bytes().to_vec()));
            if !metas.contains_key(&sk) {
                let loaded = self
                    .kv
                    .get(&key(b"t/", &sk))
                    .map_err(|e| pe(&self.name, "reading a strand", e))?
                    .map(|v| {
                        postcard::from_bytes::<StrandMeta>(&v)
                            .map_err(|e| corrupt(&self.name, format!("a strand record: {e}")))
                    })
                    .transpose()?;
                metas.insert(
                    sk.clone(),
                    loaded.unwrap_or(StrandMeta {
                        document_type: op.document_type.clone(),
                        revision: 0,
                        last: sort,
                        last_ordinal: Ordinal(head),
                    }),
                );
            }
            if let Some(m) = metas.get_mut(&sk) {
                m.revision += 1;
                if m.revision == 1 || sort > m.last {
                    m.last = sort;
                }
                m.last_ordinal = Ordinal(head);
            }
            outcomes.push(OpOutcome::New(Ordinal(head)));
        }
        for (sk, m) in &metas {
            let v = postcard::to_stdvec(m)
                .map_err(|e| Error::internal(format!("encoding a strand failed: {e}")))?;
            ops.push(BatchOp::Put(key(b"t/", sk), v));
        }
        ops.push(BatchOp::Put(
            b"n/head".to_vec(),
            head.to_be_bytes().to_vec(),
        ));
        for w in &batch.meta {
            let k = meta_key(w.space, &w.key);
            ops.push(match &w.value {
                Some(v) => BatchOp::Put(k, v.to_vec()),
                None => BatchOp::Delete(k),
            });
        }
        self.kv
            .write_batch(&ops)
            .map_err(|e| pe(&self.name, "committing", e))?;
        Ok(ApplyOutcome {
            outcomes,
            head: Ordinal(head),
        })
    }
}

#[async_trait]
impl OperationStore for KvAdapter {
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        let me = self.clone();
        self.blocking(move || me.apply_now(batch)).await
    }

    async fn read_since(
        &self,
        after: Ordinal,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<ReadPage> {
        let me = self.clone();
        let filter = filter.clone();
        self.blocking(move || {
            let head = me.head_now()?;
            let mut page = ReadPage {
                ops: Vec::new(),
                scanned_to: after,
                head: Ordinal(head),
            };
            let chunk = limit.clamp(1, 4096);
            let mut scanned = 0;
            loop {
                let start = key(b"o/", &(page.scanned_to.0 + 1).to_be_bytes());
                let rows = me
                    .kv
                    .scan(&start, Some(b"o0"), chunk)
                    .map_err(|e| pe(&me.name, "reading the feed", e))?;
                if rows.is_empty() {
                    return Ok(page);
                }
                for (k, v) in rows {
                    if page.ops.len() >= limit || scanned >= MAX_SCAN_ROWS {
                        return Ok(page);
                    }
                    let o = be64(&k[2..]).ok_or_else(|| corrupt(&me.name, "a feed key"))?;
                    let stored = me.decode(o, &v)?;
                    page.scanned_to = stored.ordinal;
                    scanned += 1;
                    if filter.matches(&stored) {
                        page.ops.push(stored);
                    }
                }
            }
        })
        .await
    }

    async fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>> {
        let me = self.clone();
        let prefix = key(b"s/", &strand_key_of(strand));
        self.blocking(move || {
            let mut start = prefix.clone();
            if let Some(k) = after {
                start.extend_from_slice(&sort_key_bytes(&k));
                start.push(0);
            }
            let end = prefix_end(&prefix);
            let rows = me
                .kv
                .scan(&start, Some(&end), limit)
                .map_err(|e| pe(&me.name, "reading a strand", e))?;
            let mut out = Vec::with_capacity(rows.len());
            for (_, v) in rows {
                let o = be64(&v).ok_or_else(|| corrupt(&me.name, "a strand index entry"))?;
                let rec = me
                    .kv
                    .get(&key(b"o/", &o.to_be_bytes()))
                    .map_err(|e| pe(&me.name, "reading an operation", e))?
                    .ok_or_else(|| corrupt(&me.name, format!("operation {o} is missing")))?;
                out.push(me.decode(o, &rec)?.op);
            }
            Ok(out)
        })
        .await
    }

    async fn heads(&self) -> Result<Vec<StrandHead>> {
        let me = self.clone();
        self.blocking(move || {
            let rows = me
                .kv
                .scan(b"t/", Some(b"t0"), usize::MAX)
                .map_err(|e| pe(&me.name, "reading strands", e))?;
            let mut out = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let strand = parse_strand_key(&k[2..])
                    .ok_or_else(|| corrupt(&me.name, "a strand key does not parse"))?;
                let m: StrandMeta = postcard::from_bytes(&v)
                    .map_err(|e| corrupt(&me.name, format!("a strand record: {e}")))?;
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
        let me = self.clone();
        self.blocking(move || me.head_now().map(Ordinal)).await
    }

    async fn get(&self, id: &OpId) -> Result<Option<StoredOp>> {
        let me = self.clone();
        let id = *id;
        self.blocking(move || {
            let Some(v) = me
                .kv
                .get(&key(b"i/", id.as_bytes()))
                .map_err(|e| pe(&me.name, "looking up an id", e))?
            else {
                return Ok(None);
            };
            let o = be64(&v).ok_or_else(|| corrupt(&me.name, "an id record"))?;
            let rec = me
                .kv
                .get(&key(b"o/", &o.to_be_bytes()))
                .map_err(|e| pe(&me.name, "reading an operation", e))?;
            rec.map(|r| me.decode(o, &r)).transpose()
        })
        .await
    }
}

#[async_trait]
impl SyncStorage for KvAdapter {
    async fn get_meta(&self, space: MetaSpace, k: &str) -> Result<Option<Bytes>> {
        let me = self.clone();
        let k = meta_key(space, k);
        self.blocking(move || {
            Ok(me
                .kv
                .get(&k)
                .map_err(|e| pe(&me.name, "reading sync storage", e))?
                .map(Bytes::from))
        })
        .await
    }

    async fn write_meta(&self, writes: Vec<MetaWrite>) -> Result<()> {
        let me = self.clone();
        self.blocking(move || {
            let _serial = me.write.lock();
            let ops: Vec<BatchOp> = writes
                .iter()
                .map(|w| {
                    let k = meta_key(w.space, &w.key);
                    match &w.value {
                        Some(v) => BatchOp::Put(k, v.to_vec()),
                        None => BatchOp::Delete(k),
                    }
                })
                .collect();
            me.kv
                .write_batch(&ops)
                .map_err(|e| pe(&me.name, "writing sync storage", e))
        })
        .await
    }

    async fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>> {
        let me = self.clone();
        self.blocking(move || {
            let prefix = format!("m/{}/", space.as_str()).into_bytes();
            let rows = me
                .kv
                .scan(&prefix, Some(&prefix_end(&prefix)), usize::MAX)
                .map_err(|e| pe(&me.name, "listing sync storage", e))?;
            rows.into_iter()
                .map(|(k, v)| {
                    let name = String::from_utf8(k[prefix.len()..].to_vec())
                        .map_err(|_| corrupt(&me.name, "a sync storage key is not UTF-8"))?;
                    Ok((name, Bytes::from(v)))
                })
                .collect()
        })
        .await
    }
}
