//! The sync manager's records in the store's sync storage, typed.
//!
//! Records are JSON values (readable with any store tool, stable across versions); cursors are
//! 8-byte big-endian integers.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, WireError};
use crate::store::{DynStore, MetaSpace, MetaWrite};
use crate::types::{
    DocumentType, OpId, Operation, Ordinal, ReactorId, RemoteName, SortKey, StrandId,
};

use super::RemoteConfig;

/// Which of a remote's two cursors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// How far the remote applied our feed.
    Outbox,
    /// How far we applied the remote's feed.
    Inbox,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbox => "outbox",
            Direction::Inbox => "inbox",
        }
    }
}

/// A remote as stored: its configuration plus what was learned about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteRecord {
    /// The configuration.
    pub config: RemoteConfig,
    /// The listener registered on the remote, once registered.
    #[serde(default)]
    pub listener_id: Option<String>,
    /// The remote's reactor id, once a handshake told it.
    #[serde(default)]
    pub peer: Option<ReactorId>,
}

pub use syncline_proto::sync::listeners::ListenerRecord;

/// A batch that failed permanently (or exhausted its retries), kept with its error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dead letter's id (the batch's job id).
    pub id: String,
    /// The remote it was for.
    pub remote: RemoteName,
    /// The feed range the batch covered.
    pub range: (Ordinal, Ordinal),
    /// The operations.
    pub operations: Vec<Operation>,
    /// Why it failed.
    pub error: WireError,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up (ms since the epoch).
    pub failed_at_ms: u64,
}

/// A peer's permanent verdict against one of the operations we sent it (or that it pulled
/// from us): kept so that `GET /v1/documents/{doc}` shows the operation refused, by whom and
/// why, and so that the document view leaves it out when the peer is an authority for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusalRecord {
    /// The refused operation.
    pub op: OpId,
    /// Its strand.
    pub strand: StrandId,
    /// Its document type.
    pub document_type: DocumentType,
    /// Its place in the strand's canonical order.
    pub key: SortKey,
    /// The reactor that refused it.
    pub by: ReactorId,
    /// Our remote for that reactor, when we pushed it.
    #[serde(default)]
    pub remote: Option<RemoteName>,
    /// Why.
    pub error: WireError,
    /// When we learned of it (ms since the epoch).
    pub at_ms: u64,
}

impl RefusalRecord {
    /// A refusal of `op` by `by`.
    pub fn new(
        op: &Operation,
        by: ReactorId,
        remote: Option<RemoteName>,
        error: WireError,
        at_ms: u64,
    ) -> Self {
        RefusalRecord {
            op: op.id,
            strand: op.strand(),
            document_type: op.document_type.clone(),
            key: op.sort_key(),
            by,
            remote,
            error,
            at_ms,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.op, self.by)
    }
}

/// Typed access to the sync storage.
#[derive(Clone, Debug)]
pub struct SyncState {
    store: DynStore,
}

fn encode<T: Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("encoding a sync record failed: {e}")))
}

fn decode<T: DeserializeOwned>(space: MetaSpace, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "the sync record {}/{key} does not decode: {e}",
                space.as_str()
            ),
        )
    })
}

fn cursor_key(remote: &RemoteName, dir: Direction) -> String {
    format!("{remote}/{}", dir.as_str())
}

impl SyncState {
    /// Typed access over a store.
    pub fn new(store: DynStore) -> Self {
        SyncState { store }
    }

    async fn list<T: DeserializeOwned>(&self, space: MetaSpace) -> Result<Vec<T>> {
        self.store
            .list_meta(space)
            .await?
            .iter()
            .map(|(k, v)| decode(space, k, v))
            .collect()
    }

    /// All stored remotes.
    pub async fn remotes(&self) -> Result<Vec<RemoteRecord>> {
        self.list(MetaSpace::Remotes).await
    }

    /// Stores a remote.
    pub async fn put_remote(&self, r: &RemoteRecord) -> Result<()> {
        self.store
            .write_meta(vec![MetaWrite::put(
                MetaSpace::Remotes,
                r.config.name.as_str(),
                encode(r)?,
            )])
            .await
    }

    /// Deletes a remote and its cursors.
    pub async fn delete_remote(&self, name: &RemoteName) -> Result<()> {
        self.store
            .write_meta(vec![
                MetaWrite::delete(MetaSpace::Remotes, name.as_str()),
                MetaWrite::delete(MetaSpace::Cursors, cursor_key(name, Direction::Outbox)),
                MetaWrite::delete(MetaSpace::Cursors, cursor_key(name, Direction::Inbox)),
            ])
            .await
    }

    /// A cursor (0 if never set).
    pub async fn cursor(&self, remote: &RemoteName, dir: Direction) -> Result<Ordinal> {
        let key = cursor_key(remote, dir);
        match self.store.get_meta(MetaSpace::Cursors, &key).await? {
            None => Ok(Ordinal::ZERO),
            Some(b) => {
                let arr: [u8; 8] = b.as_ref().try_into().map_err(|_| {
                    Error::new(
                        ErrorKind::Corrupt,
                        format!("cursor {key} has {} bytes, not 8", b.len()),
                    )
                })?;
                Ok(Ordinal(u64::from_be_bytes(arr)))
            }
        }
    }

    /// The write that sets a cursor (to commit with other writes).
    pub fn cursor_write(remote: &RemoteName, dir: Direction, at: Ordinal) -> MetaWrite {
        MetaWrite::put(
            MetaSpace::Cursors,
            cursor_key(remote, dir),
            Bytes::copy_from_slice(&at.0.to_be_bytes()),
        )
    }

    /// Sets a cursor.
    pub async fn set_cursor(&self, remote: &RemoteName, dir: Direction, at: Ordinal) -> Result<()> {
        self.store
            .write_meta(vec![SyncState::cursor_write(remote, dir, at)])
            .await
    }

    /// All listeners.
    pub async fn listeners(&self) -> Result<Vec<ListenerRecord>> {
        self.list(MetaSpace::Listeners).await
    }

    /// Stores a listener.
    pub async fn put_listener(&self, l: &ListenerRecord) -> Result<()> {
        self.store
            .write_meta(vec![MetaWrite::put(
                MetaSpace::Listeners,
                &l.id,
                encode(l)?,
            )])
            .await
    }

    /// Forgets listeners.
    pub async fn delete_listeners(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let writes = ids
            .iter()
            .map(|id| MetaWrite::delete(MetaSpace::Listeners, id.as_str()))
            .collect();
        self.store.write_meta(writes).await
    }

    /// All dead letters.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.list(MetaSpace::DeadLetters).await
    }

    /// One dead letter.
    pub async fn dead_letter(&self, id: &str) -> Result<DeadLetter> {
        match self.store.get_meta(MetaSpace::DeadLetters, id).await? {
            Some(b) => decode(MetaSpace::DeadLetters, id, &b),
            None => Err(Error::not_found(format!("no dead letter with id {id:?}"))),
        }
    }

    /// Stores a dead letter.
    pub async fn put_dead_letter(&self, d: &DeadLetter) -> Result<()> {
        self.store
            .write_meta(vec![MetaWrite::put(
                MetaSpace::DeadLetters,
                &d.id,
                encode(d)?,
            )])
            .await
    }

    /// Stores refusals, and the dead letter keeping the refused operations (to requeue them),
    /// in one write.
    pub async fn put_refusals(
        &self,
        refusals: &[RefusalRecord],
        letter: Option<&DeadLetter>,
    ) -> Result<()> {
        let mut writes = Vec::with_capacity(refusals.len() + 1);
        for r in refusals {
            writes.push(MetaWrite::put(MetaSpace::Refusals, r.key(), encode(r)?));
        }
        if let Some(d) = letter {
            writes.push(MetaWrite::put(MetaSpace::DeadLetters, &d.id, encode(d)?));
        }
        self.store.write_meta(writes).await
    }

    /// Every recorded refusal.
    pub async fn refusals(&self) -> Result<Vec<RefusalRecord>> {
        self.list(MetaSpace::Refusals).await
    }

    /// Forgets the refusals of these operations by `by` (they were applied after all).
    pub async fn delete_refusals(&self, ops: &[OpId], by: &ReactorId) -> Result<()> {
        let writes = ops
            .iter()
            .map(|op| MetaWrite::delete(MetaSpace::Refusals, format!("{op}/{by}")))
            .collect();
        self.store.write_meta(writes).await
    }

    /// Deletes a dead letter.
    pub async fn delete_dead_letter(&self, id: &str) -> Result<()> {
        self.store
            .write_meta(vec![MetaWrite::delete(MetaSpace::DeadLetters, id)])
            .await
    }
}
