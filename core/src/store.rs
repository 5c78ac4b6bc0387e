//! The storage traits: the operations store and the sync storage.
//!
//! A store is one object implementing both ([`Store`]). The operations store keeps the
//! operations with their local ordinals; the sync storage keeps the sync manager's own records
//! (remotes, cursors, listeners, dead letters) as opaque values in a few key spaces. The one
//! place where both meet is [`OperationStore::apply`]: new operations and metadata writes in one
//! batch commit in one transaction, which is how the inbox cursor follows durability.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::filter::ReadFilter;
use crate::types::{OpId, Operation, Ordinal, ReactorId, SortKey, StoredOp, StrandHead, StrandId};

/// Most rows a single `read_since` call looks at, whatever the limit, so that a selective
/// filter over a long feed never turns one read into a full scan.
pub const MAX_SCAN_ROWS: usize = 65_536;

/// The key spaces of the sync storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MetaSpace {
    /// Configured remotes, by name.
    Remotes,
    /// Outbox and inbox cursors, by `<remote>/<direction>`.
    Cursors,
    /// Listeners registered by pulling peers, by listener id.
    Listeners,
    /// Dead letters, by id.
    DeadLetters,
    /// Node-level records (identity, format version).
    Node,
    /// Operations a peer refused, by `<op id>/<peer>`.
    Refusals,
}

impl MetaSpace {
    /// Every space, for stores that create one table each.
    pub const ALL: [MetaSpace; 6] = [
        MetaSpace::Remotes,
        MetaSpace::Cursors,
        MetaSpace::Listeners,
        MetaSpace::DeadLetters,
        MetaSpace::Node,
        MetaSpace::Refusals,
    ];

    /// A stable short name, used in table and key names.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaSpace::Remotes => "remotes",
            MetaSpace::Cursors => "cursors",
            MetaSpace::Listeners => "listeners",
            MetaSpace::DeadLetters => "dead_letters",
            MetaSpace::Node => "node",
            MetaSpace::Refusals => "refusals",
        }
    }
}

/// One write to the sync storage; `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaWrite {
    /// The key space.
    pub space: MetaSpace,
    /// The key.
    pub key: String,
    /// The new value, or `None` to delete.
    pub value: Option<Bytes>,
}

impl MetaWrite {
    /// Puts `value` at `key`.
    pub fn put(space: MetaSpace, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        MetaWrite {
            space,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// Deletes `key`.
    pub fn delete(space: MetaSpace, key: impl Into<String>) -> Self {
        MetaWrite {
            space,
            key: key.into(),
            value: None,
        }
    }
}

/// An operation to apply, with the peer it came from (`None` for local submissions).
#[derive(Clone, Debug)]
pub struct IncomingOp {
    /// The operation; its hash was verified before it got here.
    pub op: Arc<Operation>,
    /// The peer it was received from.
    pub source: Option<ReactorId>,
}

/// What one `apply` writes, atomically.
#[derive(Clone, Debug, Default)]
pub struct ApplyBatch {
    /// Operations; unknown ids are appended in this order, known ids are duplicates.
    pub ops: Vec<IncomingOp>,
    /// Sync-storage writes committed in the same transaction (e.g. the inbox cursor).
    pub meta: Vec<MetaWrite>,
}

/// What happened to one operation of an apply batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// The operation was new and got this ordinal.
    New(Ordinal),
    /// The id was already stored (or appeared earlier in the batch) under this ordinal.
    Duplicate(Ordinal),
}

impl OpOutcome {
    /// The ordinal, new or existing.
    pub fn ordinal(self) -> Ordinal {
        match self {
            OpOutcome::New(o) | OpOutcome::Duplicate(o) => o,
        }
    }

    /// Whether the operation was new.
    pub fn is_new(self) -> bool {
        matches!(self, OpOutcome::New(_))
    }
}

/// The result of an apply: one outcome per input operation, in input order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Outcomes in the order of `ApplyBatch::ops`.
    pub outcomes: Vec<OpOutcome>,
    /// The store's last ordinal after the apply.
    pub head: Ordinal,
}

/// One page of the changes feed.
#[derive(Clone, Debug, Default)]
pub struct ReadPage {
    /// Matching operations in ordinal order.
    pub ops: Vec<StoredOp>,
    /// The last ordinal looked at; the next read starts after it. Equal to the `after` argument
    /// when nothing new was there.
    pub scanned_to: Ordinal,
    /// The store's last ordinal when the page was read.
    pub head: Ordinal,
}

/// The operations store.
#[async_trait]
pub trait OperationStore: Send + Sync + fmt::Debug + 'static {
    /// Atomically and idempotently appends the new operations (each gets the next ordinal, with
    /// no gaps) and performs the metadata writes. Known ids change nothing and are reported as
    /// duplicates. Either everything in the batch is committed or nothing is.
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyOutcome>;

    /// Reads the feed after `after`: at most `limit` operations passing `filter`, looking at no
    /// more than [`MAX_SCAN_ROWS`] rows.
    async fn read_since(
        &self,
        after: Ordinal,
        limit: usize,
        filter: &ReadFilter,
    ) -> Result<ReadPage>;

    /// Reads a strand in canonical order, starting after `after` (from the start if `None`).
    async fn read_strand(
        &self,
        strand: &StrandId,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Vec<Arc<Operation>>>;

    /// The heads of all strands, ordered by strand.
    async fn heads(&self) -> Result<Vec<StrandHead>>;

    /// The last ordinal (0 for an empty store).
    async fn head(&self) -> Result<Ordinal>;

    /// Looks an operation up by id.
    async fn get(&self, id: &OpId) -> Result<Option<StoredOp>>;
}

/// The sync manager's own storage: opaque values in a few key spaces.
#[async_trait]
pub trait SyncStorage: Send + Sync + fmt::Debug + 'static {
    /// Reads one value.
    async fn get_meta(&self, space: MetaSpace, key: &str) -> Result<Option<Bytes>>;

    /// Writes (puts and deletes) atomically.
    async fn write_meta(&self, writes: Vec<MetaWrite>) -> Result<()>;

    /// Lists a space in key order.
    async fn list_meta(&self, space: MetaSpace) -> Result<Vec<(String, Bytes)>>;
}

/// A complete store: operations plus sync storage.
pub trait Store: OperationStore + SyncStorage {}

impl<T: OperationStore + SyncStorage + ?Sized> Store for T {}

/// Shared store handle.
pub type DynStore = Arc<dyn Store>;

/// The stored forms of an operation and a strand head, shared by every store that keeps
/// bytes (the key-value engine and the Redis store): postcard of these structs.
pub mod record {
    use std::sync::Arc;

    use serde::{Deserialize, Serialize};

    use crate::error::{Error, ErrorKind, Result};
    use crate::types::{DocumentType, Operation, Ordinal, ReactorId, SortKey, StoredOp};

    /// An operation and the peer it came from, borrowed for encoding.
    #[derive(Serialize)]
    struct RecordRef<'a> {
        op: &'a Operation,
        source: &'a Option<ReactorId>,
    }

    /// An operation and the peer it came from, as decoded.
    #[derive(Deserialize)]
    struct Record {
        op: Operation,
        source: Option<ReactorId>,
    }

    /// A strand's head as stored: document type, revision (number of operations), last sort
    /// key and last ordinal.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StrandMeta {
        /// The strand's document type (of its first operation).
        pub document_type: DocumentType,
        /// How many operations the strand has.
        pub revision: u64,
        /// The greatest sort key.
        pub last: SortKey,
        /// The ordinal of the strand's latest applied operation.
        pub last_ordinal: Ordinal,
    }

    impl StrandMeta {
        /// The head of a strand before its first operation.
        pub fn empty(document_type: DocumentType, first: SortKey) -> Self {
            StrandMeta {
                document_type,
                revision: 0,
                last: first,
                last_ordinal: Ordinal(0),
            }
        }

        /// Counts one more operation with sort key `sort`, applied at `ordinal`.
        pub fn record(&mut self, sort: SortKey, ordinal: Ordinal) {
            self.revision += 1;
            if self.revision == 1 || sort > self.last {
                self.last = sort;
            }
            self.last_ordinal = ordinal;
        }
    }

    /// Appends the record of `op` (received from `source`) to `buf`.
    pub fn encode_op(op: &Operation, source: &Option<ReactorId>, buf: &mut Vec<u8>) -> Result<()> {
        postcard::to_io(&RecordRef { op, source }, buf)
            .map(|_| ())
            .map_err(|e| Error::internal(format!("encoding an operation failed: {e}")))
    }

    /// Decodes the record of operation `ordinal`; `store` names the store in the error.
    pub fn decode_op(store: &str, ordinal: u64, bytes: &[u8]) -> Result<StoredOp> {
        let r: Record = postcard::from_bytes(bytes).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{store}: operation {ordinal} does not decode: {e}"),
            )
        })?;
        Ok(StoredOp {
            ordinal: Ordinal(ordinal),
            op: Arc::new(r.op),
            source: r.source,
        })
    }

    /// Encodes a strand head.
    pub fn encode_strand(meta: &StrandMeta) -> Result<Vec<u8>> {
        postcard::to_stdvec(meta)
            .map_err(|e| Error::internal(format!("encoding a strand failed: {e}")))
    }

    /// Decodes a strand head; `store` names the store in the error.
    pub fn decode_strand(store: &str, bytes: &[u8]) -> Result<StrandMeta> {
        postcard::from_bytes(bytes).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{store}: a strand record does not decode: {e}"),
            )
        })
    }
}

/// Byte encodings of strand and sort keys shared by the stores, in which byte order is the
/// canonical order.
pub mod keys {
    use crate::clock::Hlc;
    use crate::types::{OpId, SortKey, StrandId};

    /// Document id, scope and branch, each as a big-endian `u16` length and its bytes.
    pub fn strand_key(doc: &str, scope: &str, branch: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(6 + doc.len() + scope.len() + branch.len());
        for part in [doc, scope, branch] {
            k.extend_from_slice(&(part.len() as u16).to_be_bytes());
            k.extend_from_slice(part.as_bytes());
        }
        k
    }

    /// The strand key of a strand.
    pub fn strand_key_of(s: &StrandId) -> Vec<u8> {
        strand_key(s.document_id.as_str(), s.scope.as_str(), s.branch.as_str())
    }

    /// Parses a strand key.
    pub fn parse_strand_key(k: &[u8]) -> Option<StrandId> {
        let mut parts = Vec::with_capacity(3);
        let mut rest = k;
        for _ in 0..3 {
            if rest.len() < 2 {
                return None;
            }
            let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            parts.push(std::str::from_utf8(rest.get(2..2 + n)?).ok()?);
            rest = &rest[2 + n..];
        }
        if !rest.is_empty() {
            return None;
        }
        StrandId::parse(parts[0], Some(parts[1]), Some(parts[2])).ok()
    }

    /// HLC millis (`u64` BE), counter (`u32` BE), then the 16 op-id bytes.
    pub fn sort_key_bytes(k: &SortKey) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..8].copy_from_slice(&k.timestamp.millis.to_be_bytes());
        out[8..12].copy_from_slice(&k.timestamp.counter.to_be_bytes());
        out[12..].copy_from_slice(k.id.as_bytes());
        out
    }

    /// Parses a sort key.
    pub fn parse_sort_key(b: &[u8]) -> Option<SortKey> {
        if b.len() != 28 {
            return None;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[12..]);
        Some(SortKey {
            timestamp: Hlc {
                millis: u64::from_be_bytes(b[..8].try_into().ok()?),
                counter: u32::from_be_bytes(b[8..12].try_into().ok()?),
            },
            id: OpId::from_bytes(id),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keys_round_trip_and_sort_canonically() {
            let s = StrandId::parse("doc/a", Some("global"), Some("main")).unwrap();
            assert_eq!(parse_strand_key(&strand_key_of(&s)), Some(s));
            let a = SortKey {
                timestamp: Hlc {
                    millis: 5,
                    counter: 9,
                },
                id: OpId::from_bytes([9; 16]),
            };
            let b = SortKey {
                timestamp: Hlc {
                    millis: 6,
                    counter: 0,
                },
                id: OpId::from_bytes([1; 16]),
            };
            assert!(sort_key_bytes(&a) < sort_key_bytes(&b));
            assert_eq!(parse_sort_key(&sort_key_bytes(&a)), Some(a));
        }
    }
}
