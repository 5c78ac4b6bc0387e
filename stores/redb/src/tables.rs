//! The redb tables of the engine's key spaces.
//!
//! The engine speaks byte keys and values; the three big spaces get tables of fixed-width
//! types, as format 1 had, because redb stores and compares those without lengths and offsets:
//! the feed (`o/`: `u64` ordinal keys), the id index (`i/`: 16-byte id keys, `u64` ordinal
//! values) and the strand index (`s/`: `u64` ordinal values). The node record, strand metadata
//! and sync storage (`n/`, `t/`, `m/`) are byte tables. Keys are stored without the space's
//! two bytes; ordinals as `u64` (the engine writes them big-endian, so the order is the same).

use std::cell::OnceCell;
use std::path::Path;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use syncline_core::Result;
use syncline_core::engine::{KEY_SPACES, KvWrite, Visit};

use crate::map_err;

type Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// `n/`, `t/`, `m/`.
pub(crate) const NODE: Bytes = TableDefinition::new("kv_n");
pub(crate) const STRANDS: Bytes = TableDefinition::new("kv_t");
pub(crate) const META: Bytes = TableDefinition::new("kv_m");
/// `o/`: the feed.
pub(crate) const OPS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("kv_ops");
/// `i/`: operation id to ordinal.
pub(crate) const IDS: TableDefinition<'static, &'static [u8; 16], u64> =
    TableDefinition::new("kv_ids");
/// `s/`: strand and sort key to ordinal.
pub(crate) const STRAND_OPS: TableDefinition<'static, &'static [u8], u64> =
    TableDefinition::new("kv_strand_ops");

/// Every table of the layout.
pub(crate) const NAMES: [&str; 6] = ["kv_n", "kv_t", "kv_m", "kv_ops", "kv_ids", "kv_strand_ops"];

/// The byte tables of the first engine layout for the spaces that are typed now; migrated when
/// found.
pub(crate) const UNTYPED: [(Bytes, usize); 3] = [
    (TableDefinition::new("kv_o"), 1),
    (TableDefinition::new("kv_i"), 2),
    (TableDefinition::new("kv_s"), 3),
];

/// The space of `key` (its index in [`KEY_SPACES`]) and the rest of the key.
pub(crate) fn split<'k>(path: &Path, key: &'k [u8]) -> Result<(usize, &'k [u8])> {
    KEY_SPACES
        .iter()
        .position(|p| key.starts_with(p.as_slice()))
        .map(|i| (i, &key[2..]))
        .ok_or_else(|| {
            syncline_core::Error::internal(format!(
                "redb store {}: a key outside the engine's key spaces",
                path.display()
            ))
        })
}

fn byte_table(space: usize) -> Bytes {
    match space {
        0 => NODE,
        4 => STRANDS,
        _ => META,
    }
}

/// An ordinal value (8 bytes, big-endian) as `u64`.
fn ordinal(path: &Path, v: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).map_err(|_| {
        syncline_core::Error::internal(format!(
            "redb store {}: an ordinal of {} bytes",
            path.display(),
            v.len()
        ))
    })
}

/// The `N`-byte keys `k` with `start <= k < end` in byte order, as an inclusive range; `None`
/// if there is none. `end` is `None` for the end of the space. `N` is at most 16.
fn fixed_bounds<const N: usize>(start: &[u8], end: Option<&[u8]>) -> Option<([u8; N], [u8; N])> {
    // A key of N bytes as a number, shorter byte strings padded with zeros.
    let number = |b: &[u8]| {
        let mut k = [0u8; 16];
        let n = b.len().min(N);
        k[16 - N..16 - N + n].copy_from_slice(&b[..n]);
        u128::from_be_bytes(k)
    };
    let key = |v: u128| -> [u8; N] {
        let mut k = [0u8; N];
        k.copy_from_slice(&v.to_be_bytes()[16 - N..]);
        k
    };
    let max = u128::MAX >> (128 - 8 * N);
    // A longer start is passed by the key equal to its first N bytes: begin after it.
    let lo = number(start).checked_add(u128::from(start.len() > N))?;
    let hi = match end {
        None => max,
        // A longer end is above the key equal to its first N bytes: that key is in.
        Some(e) if e.len() > N => number(e),
        // Keys below `e` padded with zeros: one less, inclusive.
        Some(e) => number(e).checked_sub(1)?,
    };
    (lo <= hi && lo <= max).then(|| (key(lo), key(hi)))
}

/// Opens tables on first use, in a read or a write transaction.
pub(crate) trait Opener {
    type Bytes: ReadableTable<&'static [u8], &'static [u8]>;
    type Ops: ReadableTable<u64, &'static [u8]>;
    type Ids: ReadableTable<&'static [u8; 16], u64>;
    type StrandOps: ReadableTable<&'static [u8], u64>;

    fn bytes(&self, t: Bytes) -> std::result::Result<Self::Bytes, redb::TableError>;
    fn ops(&self) -> std::result::Result<Self::Ops, redb::TableError>;
    fn ids(&self) -> std::result::Result<Self::Ids, redb::TableError>;
    fn strand_ops(&self) -> std::result::Result<Self::StrandOps, redb::TableError>;
}

impl Opener for redb::ReadTransaction {
    type Bytes = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
    type Ops = redb::ReadOnlyTable<u64, &'static [u8]>;
    type Ids = redb::ReadOnlyTable<&'static [u8; 16], u64>;
    type StrandOps = redb::ReadOnlyTable<&'static [u8], u64>;

    fn bytes(&self, t: Bytes) -> std::result::Result<Self::Bytes, redb::TableError> {
        self.open_table(t)
    }
    fn ops(&self) -> std::result::Result<Self::Ops, redb::TableError> {
        self.open_table(OPS)
    }
    fn ids(&self) -> std::result::Result<Self::Ids, redb::TableError> {
        self.open_table(IDS)
    }
    fn strand_ops(&self) -> std::result::Result<Self::StrandOps, redb::TableError> {
        self.open_table(STRAND_OPS)
    }
}

/// The tables of one read view, each opened on first use.
pub(crate) struct Tables<O: Opener> {
    bytes: [OnceCell<O::Bytes>; 3],
    ops: OnceCell<O::Ops>,
    ids: OnceCell<O::Ids>,
    strand_ops: OnceCell<O::StrandOps>,
}

impl<O: Opener> Default for Tables<O> {
    fn default() -> Self {
        Tables {
            bytes: Default::default(),
            ops: OnceCell::new(),
            ids: OnceCell::new(),
            strand_ops: OnceCell::new(),
        }
    }
}

fn opened<'c, T>(
    path: &Path,
    cell: &'c OnceCell<T>,
    open: impl FnOnce() -> std::result::Result<T, redb::TableError>,
) -> Result<&'c T> {
    if let Some(t) = cell.get() {
        return Ok(t);
    }
    let t = open().map_err(|e| map_err(path, "opening a table", e))?;
    Ok(cell.get_or_init(|| t))
}

impl<O: Opener> Tables<O> {
    fn byte_slot(&self, space: usize) -> &OnceCell<O::Bytes> {
        &self.bytes[match space {
            0 => 0,
            4 => 1,
            _ => 2,
        }]
    }

    /// The value at `key` (a full engine key).
    pub(crate) fn get(&self, txn: &O, path: &Path, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (space, rest) = split(path, key)?;
        let read = |e| map_err(path, "reading", e);
        match space {
            1 => {
                let Ok(k) = <[u8; 8]>::try_from(rest) else {
                    return Ok(None);
                };
                let t = opened(path, &self.ops, || txn.ops())?;
                Ok(t.get(u64::from_be_bytes(k))
                    .map_err(read)?
                    .map(|v| v.value().to_vec()))
            }
            2 => {
                let Ok(k) = <&[u8; 16]>::try_from(rest) else {
                    return Ok(None);
                };
                let t = opened(path, &self.ids, || txn.ids())?;
                Ok(t.get(k)
                    .map_err(read)?
                    .map(|v| v.value().to_be_bytes().to_vec()))
            }
            3 => {
                let t = opened(path, &self.strand_ops, || txn.strand_ops())?;
                Ok(t.get(rest)
                    .map_err(read)?
                    .map(|v| v.value().to_be_bytes().to_vec()))
            }
            s => {
                let t = opened(path, self.byte_slot(s), || txn.bytes(byte_table(s)))?;
                Ok(t.get(rest).map_err(read)?.map(|v| v.value().to_vec()))
            }
        }
    }

    /// Visits the entries with `start <= key < end` (full engine keys) in key order.
    pub(crate) fn range(
        &self,
        txn: &O,
        path: &Path,
        start: &[u8],
        end: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let (space, from) = split(path, start)?;
        // An end in the same space bounds the range; one past it leaves the space's end.
        let to = match split(path, end) {
            Ok((j, to)) if j == space => Some(to),
            _ => None,
        };
        let read = |e| map_err(path, "reading a range", e);
        let mut key = Vec::with_capacity(64);
        key.extend_from_slice(KEY_SPACES[space].as_slice());
        match space {
            1 => {
                let Some((lo, hi)) = fixed_bounds::<8>(from, to) else {
                    return Ok(());
                };
                let t = opened(path, &self.ops, || txn.ops())?;
                let range = t
                    .range(u64::from_be_bytes(lo)..=u64::from_be_bytes(hi))
                    .map_err(read)?;
                for entry in range {
                    let (k, v) = entry.map_err(read)?;
                    key.truncate(2);
                    key.extend_from_slice(&k.value().to_be_bytes());
                    if !visit(&key, v.value())? {
                        break;
                    }
                }
            }
            2 => {
                let Some((lo, hi)) = fixed_bounds::<16>(from, to) else {
                    return Ok(());
                };
                let t = opened(path, &self.ids, || txn.ids())?;
                for entry in t.range::<&[u8; 16]>(&lo..=&hi).map_err(read)? {
                    let (k, v) = entry.map_err(read)?;
                    key.truncate(2);
                    key.extend_from_slice(k.value());
                    if !visit(&key, &v.value().to_be_bytes())? {
                        break;
                    }
                }
            }
            3 => {
                let t = opened(path, &self.strand_ops, || txn.strand_ops())?;
                let range = match to {
                    Some(to) => t.range(from..to),
                    None => t.range(from..),
                }
                .map_err(read)?;
                for entry in range {
                    let (k, v) = entry.map_err(read)?;
                    key.truncate(2);
                    key.extend_from_slice(k.value());
                    if !visit(&key, &v.value().to_be_bytes())? {
                        break;
                    }
                }
            }
            s => {
                let t = opened(path, self.byte_slot(s), || txn.bytes(byte_table(s)))?;
                let range = match to {
                    Some(to) => t.range(from..to),
                    None => t.range(from..),
                }
                .map_err(read)?;
                for entry in range {
                    let (k, v) = entry.map_err(read)?;
                    key.truncate(2);
                    key.extend_from_slice(k.value());
                    if !visit(&key, v.value())? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Puts the writes of `batch` (full engine keys) into `txn`.
pub(crate) fn put_all(txn: &WriteTransaction, path: &Path, batch: &[KvWrite]) -> Result<()> {
    let mut node = None;
    let mut strands = None;
    let mut meta = None;
    let mut ops = None;
    let mut ids = None;
    let mut strand_ops = None;
    let write = |e| map_err(path, "writing", e);
    for w in batch {
        let (k, value) = match w {
            KvWrite::Put(k, v) => (k, Some(v.as_slice())),
            KvWrite::Delete(k) => (k, None),
        };
        let (space, rest) = split(path, k)?;
        match space {
            1 => {
                let k = <[u8; 8]>::try_from(rest)
                    .map(u64::from_be_bytes)
                    .map_err(|_| {
                        syncline_core::Error::internal(format!(
                            "redb store {}: a feed key of {} bytes",
                            path.display(),
                            rest.len()
                        ))
                    })?;
                let t = open_once(&mut ops, txn, OPS, path)?;
                match value {
                    Some(v) => t.insert(k, v).map(drop).map_err(write)?,
                    None => t.remove(k).map(drop).map_err(write)?,
                }
            }
            2 => {
                let k = <&[u8; 16]>::try_from(rest).map_err(|_| {
                    syncline_core::Error::internal(format!(
                        "redb store {}: an id key of {} bytes",
                        path.display(),
                        rest.len()
                    ))
                })?;
                let t = open_once(&mut ids, txn, IDS, path)?;
                match value {
                    Some(v) => t.insert(k, ordinal(path, v)?).map(drop).map_err(write)?,
                    None => t.remove(k).map(drop).map_err(write)?,
                }
            }
            3 => {
                let t = open_once(&mut strand_ops, txn, STRAND_OPS, path)?;
                match value {
                    Some(v) => t.insert(rest, ordinal(path, v)?).map(drop).map_err(write)?,
                    None => t.remove(rest).map(drop).map_err(write)?,
                }
            }
            s => {
                let slot = match s {
                    0 => &mut node,
                    4 => &mut strands,
                    _ => &mut meta,
                };
                let t = open_once(slot, txn, byte_table(s), path)?;
                match value {
                    Some(v) => t.insert(rest, v).map(drop).map_err(write)?,
                    None => t.remove(rest).map(drop).map_err(write)?,
                }
            }
        }
    }
    Ok(())
}

/// The table in `slot`, opened in `txn` on first use.
fn open_once<'s, 't, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<redb::Table<'t, K, V>>,
    txn: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
    path: &Path,
) -> Result<&'s mut redb::Table<'t, K, V>> {
    match slot {
        Some(t) => Ok(t),
        slot => Ok(slot.insert(
            txn.open_table(def)
                .map_err(|e| map_err(path, "opening a table", e))?,
        )),
    }
}

/// Creates every table of the layout.
pub(crate) fn create_all(txn: &WriteTransaction) -> std::result::Result<(), redb::TableError> {
    for t in [NODE, STRANDS, META] {
        txn.open_table(t)?;
    }
    txn.open_table(OPS)?;
    txn.open_table(IDS)?;
    txn.open_table(STRAND_OPS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_bounds_become_fixed_width_bounds() {
        let b = |start: &[u8], end: Option<&[u8]>| fixed_bounds::<2>(start, end);
        assert_eq!(b(&[], None), Some(([0, 0], [0xff, 0xff])));
        assert_eq!(b(&[1, 2], Some(&[1, 4])), Some(([1, 2], [1, 3])));
        // A shorter start is padded; a shorter end excludes every key it prefixes.
        assert_eq!(b(&[1], Some(&[2])), Some(([1, 0], [1, 0xff])));
        // A longer start begins after its prefix; a longer end includes its prefix.
        assert_eq!(b(&[1, 2, 0], Some(&[1, 4, 0])), Some(([1, 3], [1, 4])));
        assert_eq!(b(&[0xff, 0xff, 1], None), None);
        assert_eq!(b(&[0, 0], Some(&[0, 0])), None);
        assert_eq!(b(&[3, 0], Some(&[2, 0])), None);
    }
}
