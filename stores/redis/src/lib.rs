//! The syncline store on Redis.
//!
//! Several node processes (or machines) can share one dataset: an `apply` is one Lua script,
//! which Redis runs atomically, and ordinals come from `RPUSH` on one list, so two writers never
//! allocate the same ordinal and the feed has no gaps. Every key of a dataset starts with
//! `syncline:{<dataset>}:`, so several datasets share one server.
//!
//! ## Key layout (`P` = `syncline:{<dataset>}`)
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:ops` | list | postcard of `(Operation, Option<ReactorId>)`; index = ordinal − 1 |
//! | `P:ids` | hash | op id (16 bytes) → ordinal |
//! | `P:s:<strand key>` | sorted set | score 0, member = sort key (28 bytes); lexical order is canonical order |
//! | `P:strands:rev`, `P:strands:ord`, `P:strands:type` | hash | strand key → revision, last ordinal, document type |
//! | `P:meta:<space>` | hash | the sync storage |
//! | `P:format` | string | the layout version |
//!
//! Strand and sort keys are encoded as in the redb store. Connection loss surfaces as
//! `Unavailable` (retryable); the connection manager reconnects by itself.

mod backend;
pub mod server;
pub use backend::{KIND, RedisConfig, register};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};
use syncline_core::filter::ReadFilter;
use syncline_core::store::keys::{parse_sort_key, parse_strand_key, sort_key_bytes, strand_key};
use syncline_core::store::record;
use syncline_core::store::{
    ApplyBatch, ApplyOutcome, MAX_SCAN_ROWS, MetaSpace, MetaWrite, OpOutcome, OperationStore,
    ReadPage, SyncStorage,
};
use syncline_core::transport::redacted_url as redacted;
use syncline_core::{
    DocumentType, Error, ErrorKind, OpId, Operation, Ordinal, Result, SortKey, StoredOp,
    StrandHead, StrandId,
};

/// The layout version written into every dataset.
pub const FORMAT_VERSION: u32 = 1;

const APPLY: &str = r#"
-- ARGV: prefix, number of runs, then per run of operations of one strand: strand key, document
-- type, count, then per operation: id, sort key member, record; then the metadata writes.
local p = ARGV[1]
local runs = tonumber(ARGV[2])
local ids = p .. ':ids'
local first = redis.call('LLEN', p .. ':ops')
local head = first
-- Where each run starts, and every id: which ones the dataset holds already is one HMGET per
-- thousand ids, not one call per operation.
local starts = {}
local wanted = {}
local i = 3
for r = 1, runs do
  starts[r] = i
  local c = tonumber(ARGV[i + 2])
  i = i + 3
  for _ = 1, c do
    wanted[#wanted + 1] = ARGV[i]
    i = i + 3
  end
end
local meta_at = i
local n = #wanted
local found = {}
for j = 1, n, 1000 do
  local part = redis.call('HMGET', ids, unpack(wanted, j, math.min(j + 999, n)))
  for t = 1, #part do
    found[j + t - 1] = part[t]
  end
end
local seen = {}
local newids = {}
local dups = {}
local recs = {}
local strands = {}
local order = {}
local k = 0
for r = 1, runs do
  i = starts[r]
  local skey, dtype, c = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local s = strands[skey]
  for _ = 1, c do
    k = k + 1
    local id = ARGV[i]
    local known = found[k] or seen[id]
    if known then
      dups[#dups + 1] = k
      dups[#dups + 1] = tonumber(known)
    else
      head = head + 1
      seen[id] = head
      newids[#newids + 1] = id
      newids[#newids + 1] = head
      recs[#recs + 1] = ARGV[i + 2]
      if not s then
        s = {count = 0, dtype = dtype, zadd = {}}
        strands[skey] = s
        order[#order + 1] = skey
      end
      s.count = s.count + 1
      s.last = head
      local z = s.zadd
      z[#z + 1] = '0'
      z[#z + 1] = ARGV[i + 1]
    end
    i = i + 3
  end
end
for j = 1, #newids, 2000 do
  redis.call('HSET', ids, unpack(newids, j, math.min(j + 1999, #newids)))
end
for j = 1, #recs, 1000 do
  redis.call('RPUSH', p .. ':ops', unpack(recs, j, math.min(j + 999, #recs)))
end
for _, skey in ipairs(order) do
  local s = strands[skey]
  for j = 1, #s.zadd, 2000 do
    redis.call('ZADD', p .. ':s:' .. skey, unpack(s.zadd, j, math.min(j + 1999, #s.zadd)))
  end
  redis.call('HINCRBY', p .. ':strands:rev', skey, s.count)
  redis.call('HSET', p .. ':strands:ord', skey, s.last)
  redis.call('HSETNX', p .. ':strands:type', skey, s.dtype)
end
i = meta_at
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  local space, key, put, val = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if put == '1' then
    redis.call('HSET', p .. ':meta:' .. space, key, val)
  else
    redis.call('HDEL', p .. ':meta:' .. space, key)
  end
end
-- The head before and after, then (position, ordinal) of each duplicate; new operations took
-- the ordinals after the old head, in order.
local out = {first, head}
for j = 1, #dups do
  out[#out + 1] = dups[j]
end
return out
"#;

const READ_SINCE: &str = r#"
local p = ARGV[1]
local from = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local head = redis.call('LLEN', p .. ':ops')
local rows = {}
if count > 0 and from < head then
  rows = redis.call('LRANGE', p .. ':ops', from, from + count - 1)
end
return {head, rows}
"#;

const READ_STRAND: &str = r#"
local p = ARGV[1]
local members = redis.call('ZRANGEBYLEX', p .. ':s:' .. ARGV[2], ARGV[3], '+', 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, m in ipairs(members) do
  local ord = redis.call('HGET', p .. ':ids', string.sub(m, 13, 28))
  if not ord then
    return redis.error_reply('CORRUPT the strand index names an operation with no ordinal')
  end
  out[#out + 1] = tonumber(ord)
  out[#out + 1] = redis.call('LINDEX', p .. ':ops', tonumber(ord) - 1)
end
return out
"#;

const HEADS: &str = r#"
local p = ARGV[1]
local revs = redis.call('HGETALL', p .. ':strands:rev')
local out = {}
for i = 1, #revs, 2 do
  local skey = revs[i]
  local last = redis.call('ZRANGE', p .. ':s:' .. skey, -1, -1)
  out[#out + 1] = skey
  out[#out + 1] = tonumber(revs[i + 1])
  out[#out + 1] = last[1] or ''
  out[#out + 1] = tonumber(redis.call('HGET', p .. ':strands:ord', skey) or '0')
  out[#out + 1] = redis.call('HGET', p .. ':strands:type', skey) or ''
end
return out
"#;

const GET: &str = r#"
local p = ARGV[1]
local ord = redis.call('HGET', p .. ':ids', ARGV[2])
if not ord then
  return {}
end
return {tonumber(ord), redis.call('LINDEX', p .. ':ops', tonumber(ord) - 1)}
"#;

/// A store in one Redis dataset.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    /// How errors name the store.
    name: String,
    url: String,
    apply: Script,
    read_since: Script,
    read_strand: Script,
    heads: Script,
    get: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

impl Inner {
    fn err(&self, what: &str, e: RedisError) -> Error {
        let retryable = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_cluster_error();
        let kind = if retryable {
            ErrorKind::Unavailable
        } else if e.code() == Some("CORRUPT") {
            ErrorKind::Corrupt
        } else {
            ErrorKind::Storage
        };
        Error::new(
            kind,
            format!(
                "redis store {} ({}): {what}: {e}",
                redacted(&self.url),
                self.prefix
            ),
        )
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://[:password@]host:port/db`) and uses the dataset `dataset`.
    pub async fn open(url: &str, dataset: &str) -> Result<Self> {
        if dataset.is_empty() || dataset.contains(['{', '}']) {
            return Err(Error::invalid(format!(
                "redis dataset name {dataset:?} must be non-empty and free of braces"
            )));
        }
        let client = redis::Client::open(url).map_err(|e| {
            Error::invalid(format!("{:?} is not a valid Redis URL: {e}", redacted(url)))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot connect to redis at {}: {e}", redacted(url)),
                )
            })?;
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                prefix: format!("syncline:{{{dataset}}}"),
                name: format!("redis store syncline:{{{dataset}}}"),
                url: url.to_owned(),
                apply: Script::new(APPLY),
                read_since: Script::new(READ_SINCE),
                read_strand: Script::new(READ_STRAND),
                heads: Script::new(HEADS),
                get: Script::new(GET),
            }),
        };
        store.check_format().await?;
        Ok(store)
    }

    async fn check_format(&self) -> Result<()> {
        let mut c = self.inner.conn.clone();
        let key = format!("{}:format", self.inner.prefix);
        let set: bool = c
            .set_nx(&key, FORMAT_VERSION)
            .await
            .map_err(|e| self.inner.err("writing the format version", e))?;
        if !set {
            let found: String = c
                .get(&key)
                .await
                .map_err(|e| self.inner.err("reading the format version", e))?;
            if found != FORMAT_VERSION.to_string() {
                return Err(Error::new(
                    ErrorKind::FormatVersion,
                    format!(
                        "redis dataset {} has format version {found}; this build reads version \
                         {FORMAT_VERSION}",
                        self.inner.prefix
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Deletes every key of the dataset (for tests and `syncline` maintenance).
    pub async fn destroy(&self) -> Result<()> {
        let mut c = self.inner.conn.clone();
        let pattern = format!("{}:*", self.inner.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(|e| self.inner.err("scanning keys", e))?;
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| self.inner.err("deleting keys", e))?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    fn decode(&self, ordinal: u64, bytes: &[u8]) -> Result<StoredOp> {
        record::decode_op(&self.inner.name, ordinal, bytes)
    }
}

#[async_trait]
impl OperationStore for RedisStore {
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome> {
        let inner = &self.inner;
        let mut inv = inner.apply.prepare_invoke();
        // Runs of consecutive operations of one strand share its key and document type.
        let mut runs: Vec<(Vec<u8>, &str, &[syncline_core::store::IncomingOp])> = Vec::new();
        let mut start = 0;
        for (k, incoming) in batch.ops.iter().enumerate() {
            let next = batch.ops.get(k + 1);
            let op = &incoming.op;
            let same = next.is_some_and(|n| {
                n.op.document_id == op.document_id
                    && n.op.scope == op.scope
                    && n.op.branch == op.branch
                    && n.op.document_type == op.document_type
            });
            if !same {
                runs.push((
                    strand_key(
                        op.document_id.as_str(),
                        op.scope.as_str(),
                        op.branch.as_str(),
                    ),
                    op.document_type.as_str(),
                    &batch.ops[start..=k],
                ));
                start = k + 1;
            }
        }
        inv.arg(&inner.prefix).arg(runs.len());
        for (skey, dtype, ops) in &runs {
            inv.arg(skey.as_slice()).arg(*dtype).arg(ops.len());
            for incoming in *ops {
                let op = &incoming.op;
                let mut rec = Vec::with_capacity(512);
                record::encode_op(op, &incoming.source, &mut rec)?;
                inv.arg(op.id.as_bytes().as_slice())
                    .arg(sort_key_bytes(&op.sort_key()).as_slice())
                    .arg(rec);
            }
        }
        inv.arg(batch.meta.len());
        for w in &batch.meta {
            inv.arg(w.space.as_str()).arg(&w.key);
            match &w.value {
                Some(v) => inv.arg("1").arg(v.as_ref()),
                None => inv.arg("0").arg(""),
            };
        }
        let mut c = inner.conn.clone();
        let result: Vec<i64> = inv
            .invoke_async(&mut c)
            .await
            .map_err(|e| inner.err("applying a batch", e))?;
        let [first, head, dups @ ..] = result.as_slice() else {
            return Err(Error::internal("the apply script returned no heads"));
        };
        // Duplicates by position (1-based in the script); the rest are new, numbered in order.
        let mut dup = dups.chunks_exact(2).map(|d| (d[0], d[1])).peekable();
        let mut next = *first as u64;
        let mut outcomes = Vec::with_capacity(batch.ops.len());
        for k in 1..=batch.ops.len() as i64 {
            match dup.peek() {
                Some(&(at, ordinal)) if at == k => {
                    dup.next();
                    outcomes.push(OpOutcome::Duplicate(Ordinal(ordinal as u64)));
                }
                _ => {
                    next += 1;
                    outcomes.push(OpOutcome::New(Ordinal(next)));
                }
            }
        }
        if next != *head as u64 || dup.next().is_some() {
            return Err(Error::internal(format!(
                "the apply script's answer does not add up: heads {first}..{head} for {} \
                 operations with {} duplicates",
                batch.ops.len(),
                dups.len() / 2
            )));
        }
        Ok(ApplyOutcome {
            outcomes,
            head: Ordinal(*head as u64),
        })
    }

    async fn read_since(
        &self,
        after: Ordinal,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<ReadPage> {
        let inner = &self.inner;
        let mut c = inner.conn.clone();
        let chunk = limit.clamp(1, 4096);
        let mut page = ReadPage {
            ops: Vec::with_capacity(limit.min(4096)),
            scanned_to: after,
            head: after,
        };
        let mut scanned = 0;
        loop {
            let (head, rows): (u64, Vec<Vec<u8>>) = inner
                .read_since
                .arg(&inner.prefix)
                .arg(page.scanned_to.0)
                .arg(chunk)
                .invoke_async(&mut c)
                .await
                .map_err(|e| inner.err("reading the feed", e))?;
            page.head = Ordinal(head);
            if rows.is_empty() {
                return Ok(page);
            }
            for row in &rows {
                if page.ops.len() >= limit || scanned >= MAX_SCAN_ROWS {
                    return Ok(page);
                }
                let stored = self.decode(page.scanned_to.0 + 1, row)?;
                page.scanned_to = stored.ordinal;
                scanned += 1;
                if filter.matches(&stored) {
                    page.ops.push(stored);
                }
            }
        }
    }

    async fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>> {
        let inner = &self.inner;
        let mut c = inner.conn.clone();
        let start: Vec<u8> = match after {
            Some(k) => {
                let mut s = b"(".to_vec();
                s.extend_from_slice(&sort_key_bytes(&k));
                s
            }
            None => b"-".to_vec(),
        };
        let rows: Vec<redis::Value> = inner
            .read_strand
            .arg(&inner.prefix)
            .arg(strand_key(
                strand.document_id.as_str(),
                strand.scope.as_str(),
                strand.branch.as_str(),
            ))
            .arg(start)
            .arg(limit.min(i64::MAX as usize))
            .invoke_async(&mut c)
            .await
            .map_err(|e| inner.err("reading a strand", e))?;
        let mut out = Vec::with_capacity(rows.len() / 2);
        for pair in rows.chunks(2) {
            let (ord, rec) = match pair {
                [redis::Value::Int(o), redis::Value::BulkString(b)] => (*o as u64, b),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "redis store {}: a strand index entry points at no operation",
                            inner.prefix
                        ),
                    ));
                }
            };
            out.push(self.decode(ord, rec)?.op);
        }
        Ok(out)
    }

    async fn heads(&self) -> Result<Vec<StrandHead>> {
        let inner = &self.inner;
        let mut c = inner.conn.clone();
        let rows: Vec<redis::Value> = inner
            .heads
            .arg(&inner.prefix)
            .invoke_async(&mut c)
            .await
            .map_err(|e| inner.err("reading strand heads", e))?;
        let corrupt = || {
            Error::new(
                ErrorKind::Corrupt,
                format!("redis store {}: a strand head does not parse", inner.prefix),
            )
        };
        let mut out = Vec::new();
        for row in rows.chunks(5) {
            let [
                redis::Value::BulkString(skey),
                redis::Value::Int(rev),
                redis::Value::BulkString(last),
                redis::Value::Int(ord),
                redis::Value::BulkString(dtype),
            ] = row
            else {
                return Err(corrupt());
            };
            let strand = parse_strand_key(skey).ok_or_else(corrupt)?;
            let last = parse_sort_key(last).ok_or_else(corrupt)?;
            let document_type =
                DocumentType::new(String::from_utf8_lossy(dtype)).map_err(|_| corrupt())?;
            out.push(StrandHead {
                strand,
                document_type,
                revision: *rev as u64,
                last,
                last_ordinal: Ordinal(*ord as u64),
            });
        }
        out.sort_by(|a, b| a.strand.cmp(&b.strand));
        Ok(out)
    }

    async fn head(&self) -> Result<Ordinal> {
        let mut c = self.inner.conn.clone();
        let n: u64 = c
            .llen(format!("{}:ops", self.inner.prefix))
            .await
            .map_err(|e| self.inner.err("reading the head", e))?;
        Ok(Ordinal(n))
    }

    async fn get(&self, id: &OpId) -> Result<Option<StoredOp>> {
        let inner = &self.inner;
        let mut c = inner.conn.clone();
        let row: Vec<redis::Value> = inner
            .get
            .arg(&inner.prefix)
            .arg(id.as_bytes().as_slice())
            .invoke_async(&mut c)
            .await
            .map_err(|e| inner.err("looking up an id", e))?;
        match row.as_slice() {
            [] => Ok(None),
            [redis::Value::Int(o), redis::Value::BulkString(b)] => {
                Ok(Some(self.decode(*o as u64, b)?))
            }
            _ => Err(Error::new(
                ErrorKind::Corrupt,
                format!("redis store {}: operation {id} has no record", inner.prefix),
            )),
        }
    }
}

#[async_trait]
impl SyncStorage for RedisStore {
    async fn get_meta(&self, space: MetaSpace, key: &str) -> Result<Option<Bytes>> {
        let mut c = self.inner.conn.clone();
        let v: Option<Vec<u8>> = c
            .hget(
                format!("{}:meta:{}", self.inner.prefix, space.as_str()),
                key,
            )
            .await
            .map_err(|e| self.inner.err("reading sync storage", e))?;
        Ok(v.map(Bytes::from))
    }

    async fn write_meta(&self, writes: Vec<MetaWrite>) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in &writes {
            let key = format!("{}:meta:{}", self.inner.prefix, w.space.as_str());
            match &w.value {
                Some(v) => pipe.hset(key, &w.key, v.as_ref()).ignore(),
                None => pipe.hdel(key, &w.key).ignore(),
            };
        }
        let mut c = self.inner.conn.clone();
        pipe.query_async::<()>(&mut c)
            .await
            .map_err(|e| self.inner.err("writing sync storage", e))
    }

    async fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>> {
        let mut c = self.inner.conn.clone();
        let mut all: Vec<(String, Vec<u8>)> = c
            .hgetall(format!("{}:meta:{}", self.inner.prefix, space.as_str()))
            .await
            .map_err(|e| self.inner.err("listing sync storage", e))?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect())
    }
}
