//! The document view: the read model of each strand (state, revision, canonical op list).
//!
//! Views are computed lazily from the store's canonical order and cached with snapshots every
//! few hundred operations. Writes only mark a cached strand dirty from the smallest sort key they
//! added; the next read folds forward from the last snapshot before that key. So an operation
//! that arrives late and sorts before the tail costs a replay from the nearest snapshot, not
//! from the start of the strand.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use crate::clock::Hlc;
use crate::error::Result;
use crate::events::{Event, EventBus};
use crate::exclusions::Exclusions;
use crate::model::ModelRegistry;
use crate::store::DynStore;
use crate::types::{ActionType, DocumentType, OpId, ReactorId, SortKey, StrandId};

/// Operations folded per store read.
const PAGE: usize = 4096;

/// Snapshots kept per cached strand: the most recent ones (late operations land near the
/// tail); a rollback before the oldest kept one folds the strand from its start.
pub const MAX_SNAPSHOTS: usize = 16;

/// A strand's state as the view computed it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DocumentState {
    /// The strand.
    pub strand: StrandId,
    /// Its document type (`None` for a strand with no operations).
    pub document_type: Option<DocumentType>,
    /// The state after folding every operation in canonical order.
    pub state: Value,
    /// Number of operations folded.
    pub revision: u64,
    /// Number of operations that errored (no effect).
    pub errored: u64,
}

/// One operation of a strand as the view lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ViewOp {
    /// Position in the canonical order, from 0.
    pub index: u64,
    /// The op id.
    pub id: OpId,
    /// Its HLC time.
    pub timestamp: Hlc,
    /// The action type.
    #[serde(rename = "type")]
    pub action_type: ActionType,
    /// The action input.
    pub input: Value,
    /// The reactor that created it.
    pub origin: ReactorId,
    /// Why it had no effect, if it errored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the view leaves it out because an authority refused it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
}

#[derive(Clone, Debug)]
struct Snapshot {
    len: u64,
    last: SortKey,
    state: Value,
    errored: u64,
    /// Estimated bytes of `state`.
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    document_type: Option<DocumentType>,
    state: Value,
    len: u64,
    last: Option<SortKey>,
    errors: BTreeMap<SortKey, String>,
    snapshots: Vec<Snapshot>,
    /// Estimated bytes of `state`: measured at each snapshot, grown by each folded input
    /// in between (measuring is a walk of the whole state).
    state_bytes: usize,
}

impl Cached {
    /// Estimated memory the cached strand holds: its state, its snapshots and its errors.
    fn weight(&self) -> usize {
        self.state_bytes
            + self.snapshots.iter().map(|s| s.bytes).sum::<usize>()
            + self.errors.values().map(|e| e.len() + 48).sum::<usize>()
    }
}

/// An estimate of the memory a JSON value takes (its text size plus per-node overhead), found
/// without allocating.
pub fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 16,
        Value::String(s) => 24 + s.len(),
        Value::Array(a) => 24 + a.iter().map(value_bytes).sum::<usize>(),
        Value::Object(o) => {
            48 + o
                .iter()
                .map(|(k, v)| 24 + k.len() + value_bytes(v))
                .sum::<usize>()
        }
    }
}

/// Cached strands, the least recently read first out, with their estimated bytes.
#[derive(Debug)]
struct Slots {
    lru: lru::LruCache<StrandId, (Slot, usize)>,
    bytes: usize,
    max_bytes: usize,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Per cached strand: the smallest sort key written since the last refresh.
type Dirty = Arc<Mutex<HashMap<StrandId, Option<SortKey>>>>;

/// The read model of all strands.
#[derive(Debug)]
pub struct DocumentView {
    store: DynStore,
    models: Arc<ModelRegistry>,
    /// Cached strands, least recently used first out.
    slots: Mutex<Slots>,
    dirty: Dirty,
    snapshot_every: u64,
    exclusions: Arc<Exclusions>,
}

impl DocumentView {
    /// A view over `store`, subscribed to `bus` for dirty marks.
    pub fn new(
        store: DynStore,
        models: Arc<ModelRegistry>,
        bus: &EventBus,
        snapshot_every: u64,
        max_cached: usize,
        exclusions: Arc<Exclusions>,
    ) -> Self {
        let dirty: Dirty = Arc::default();
        let d = dirty.clone();
        bus.on(move |event| {
            let w = match event {
                Event::OperationsWritten(w) => w,
                Event::ViewChanged(changed) => {
                    let mut map = d.lock();
                    for (strand, key) in changed.iter() {
                        if let Some(mark) = map.get_mut(strand)
                            && mark.is_none_or(|m| *key < m)
                        {
                            *mark = Some(*key);
                        }
                    }
                    return;
                }
                _ => return,
            };
            let mut map = d.lock();
            if map.is_empty() {
                return;
            }
            for stored in &w.ops {
                let op = &stored.op;
                // Consecutive operations mostly share a strand; look each strand up once.
                if let Some(mark) = map.get_mut(&op.strand()) {
                    let key = op.sort_key();
                    if mark.is_none_or(|m| key < m) {
                        *mark = Some(key);
                    }
                }
            }
        });
        DocumentView {
            store,
            models,
            slots: Mutex::new(Slots {
                lru: lru::LruCache::new(
                    std::num::NonZeroUsize::new(max_cached.max(1)).expect("at least 1"),
                ),
                bytes: 0,
                max_bytes: usize::MAX,
            }),
            dirty,
            snapshot_every: snapshot_every.max(1),
            exclusions,
        }
    }

    /// Bounds the cached views by their estimated bytes as well (`reactor.max_view_bytes`):
    /// beyond it the least recently read strands leave the cache.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        self.slots.lock().max_bytes = max_bytes.max(1);
        self
    }

    fn slot(&self, strand: &StrandId) -> Slot {
        let mut slots = self.slots.lock();
        if let Some((s, _)) = slots.lru.get(strand) {
            return s.clone();
        }
        let s: Slot = Arc::default();
        // Over the bound, the least recently read strand leaves the cache.
        if let Some((victim, (_, bytes))) = slots.lru.push(strand.clone(), (s.clone(), 0)) {
            slots.bytes -= bytes;
            self.dirty.lock().remove(&victim);
        }
        s
    }

    /// Records what a strand's cached view weighs now, and sends the least recently read
    /// strands away while the cache is over its bytes (never the one just read).
    fn weigh(&self, strand: &StrandId, slot: &Slot, bytes: usize) {
        let mut slots = self.slots.lock();
        let Slots {
            lru,
            bytes: total,
            max_bytes,
        } = &mut *slots;
        match lru.peek_mut(strand) {
            Some((s, w)) if Arc::ptr_eq(s, slot) => {
                *total = *total - *w + bytes;
                *w = bytes;
            }
            // It left the cache while it was being read.
            _ => return,
        }
        while *total > *max_bytes && lru.len() > 1 {
            let Some((victim, (_, w))) = lru.pop_lru() else {
                break;
            };
            if &victim == strand {
                // The strand just read is the most recent; only it is left over the bound.
                lru.put(victim, (slot.clone(), w));
                break;
            }
            *total -= w;
            self.dirty.lock().remove(&victim);
        }
    }

    /// Whether a strand's view is cached (without counting as a use).
    pub fn is_cached(&self, strand: &StrandId) -> bool {
        self.slots.lock().lru.contains(strand)
    }

    /// The estimated bytes of every cached view.
    pub fn cached_bytes(&self) -> usize {
        self.slots.lock().bytes
    }

    /// Snapshots held for a cached strand (0 if not cached).
    pub async fn snapshots(&self, strand: &StrandId) -> usize {
        let slot = self.slots.lock().lru.peek(strand).map(|(s, _)| s.clone());
        match slot {
            Some(s) => s.lock().await.as_ref().map_or(0, |c| c.snapshots.len()),
            None => 0,
        }
    }

    async fn refresh(&self, strand: &StrandId, cached: &mut Option<Cached>) -> Result<()> {
        // Register for dirty marks before reading, and take the mark: any write that commits
        // after this point marks the strand again for the next read.
        let mark = {
            let mut d = self.dirty.lock();
            d.insert(strand.clone(), None).flatten()
        };
        let c = cached.get_or_insert_with(|| Cached {
            document_type: None,
            state: Value::Null,
            len: 0,
            last: None,
            errors: BTreeMap::new(),
            snapshots: Vec::new(),
            state_bytes: 0,
        });
        if let (Some(m), Some(last)) = (mark, c.last)
            && m <= last
        {
            rollback(c, m);
        }
        loop {
            let ops = self.store.read_strand(strand, c.last, PAGE).await?;
            if ops.is_empty() {
                break;
            }
            for op in &ops {
                let key = op.sort_key();
                if self.exclusions.contains(&op.id) {
                    // Refused by an authority: in the log, not in the document.
                    c.last = Some(key);
                    continue;
                }
                if c.document_type.is_none() {
                    c.document_type = Some(op.document_type.clone());
                }
                if c.len == 0 && c.state.is_null() {
                    c.state = self
                        .models
                        .get(&op.document_type)
                        .map(|m| m.initial_state())
                        .unwrap_or(Value::Object(Default::default()));
                    c.state_bytes = value_bytes(&c.state);
                }
                c.state_bytes += op.action.input.as_bytes().len();
                let result = match self.models.get(&op.document_type) {
                    Ok(model) => match op.action.input.to_value() {
                        Ok(input) => {
                            model.apply(&mut c.state, op.action.action_type.as_str(), &input)
                        }
                        Err(e) => Err(e.message().to_owned()),
                    },
                    Err(e) => Err(e.message().to_owned()),
                };
                if let Err(msg) = result {
                    c.errors.insert(key, msg);
                }
                c.len += 1;
                c.last = Some(key);
                if c.len.is_multiple_of(self.snapshot_every) {
                    if c.snapshots.len() >= MAX_SNAPSHOTS {
                        c.snapshots.remove(0);
                    }
                    c.state_bytes = value_bytes(&c.state);
                    c.snapshots.push(Snapshot {
                        len: c.len,
                        last: key,
                        state: c.state.clone(),
                        errored: c.errors.len() as u64,
                        bytes: c.state_bytes,
                    });
                }
            }
            if ops.len() < PAGE {
                break;
            }
        }
        Ok(())
    }

    /// The current state of a strand.
    pub async fn state(&self, strand: &StrandId) -> Result<DocumentState> {
        let slot = self.slot(strand);
        let mut guard = slot.lock().await;
        self.refresh(strand, &mut guard).await?;
        let c = guard.as_ref().expect("refresh fills the slot");
        self.weigh(strand, &slot, c.weight());
        let state = if c.len == 0 {
            Value::Object(Default::default())
        } else {
            c.state.clone()
        };
        Ok(DocumentState {
            strand: strand.clone(),
            document_type: c.document_type.clone(),
            state,
            revision: c.len,
            errored: c.errors.len() as u64,
        })
    }

    /// A strand's operations in canonical order, each with its error if it had no effect.
    pub async fn operations(&self, strand: &StrandId) -> Result<Vec<ViewOp>> {
        let slot = self.slot(strand);
        let mut guard = slot.lock().await;
        self.refresh(strand, &mut guard).await?;
        let c = guard.as_ref().expect("refresh fills the slot");
        self.weigh(strand, &slot, c.weight());
        let mut out = Vec::with_capacity(c.len as usize);
        let mut after = None;
        loop {
            let ops = self.store.read_strand(strand, after, PAGE).await?;
            for op in &ops {
                let key = op.sort_key();
                // Stop at what the cached fold covers, so list and state agree.
                if c.last.is_none_or(|l| key > l) {
                    return Ok(out);
                }
                out.push(ViewOp {
                    index: out.len() as u64,
                    id: op.id,
                    timestamp: op.action.timestamp,
                    action_type: op.action.action_type.clone(),
                    input: op.action.input.to_value().unwrap_or(Value::Null),
                    origin: op.origin.clone(),
                    error: c.errors.get(&key).cloned(),
                    excluded: self.exclusions.contains(&op.id),
                });
                after = Some(key);
            }
            if ops.len() < PAGE {
                return Ok(out);
            }
        }
    }
}

/// Drops everything folded at or after `from`, back to the last snapshot before it.
fn rollback(c: &mut Cached, from: SortKey) {
    while c.snapshots.last().is_some_and(|s| s.last >= from) {
        c.snapshots.pop();
    }
    match c.snapshots.last() {
        Some(s) => {
            c.state = s.state.clone();
            c.state_bytes = s.bytes;
            c.len = s.len;
            c.last = Some(s.last);
            let cut = s.last;
            c.errors.retain(|k, _| *k <= cut);
            debug_assert_eq!(c.errors.len() as u64, s.errored);
        }
        None => {
            c.state = Value::Null;
            c.state_bytes = 0;
            c.len = 0;
            c.last = None;
            c.errors.clear();
        }
    }
}
