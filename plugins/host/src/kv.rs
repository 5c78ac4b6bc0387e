//! syncline's store on a store plugin's ordered key-value store: the plugin's `KvStore` as the
//! core engine's [`OrderedKv`] (key layout in [`syncline_core::engine`]).
//!
//! Plugins have no read snapshots: a read view reads the latest state, which is consistent for
//! the engine because it reads under its own write lock and one process owns a dataset. The
//! plugin's `write_batch` makes each apply atomic.

use std::sync::Arc;

use syncline_core::engine::{Blocking, KvEngine, KvRead, KvWrite, OrderedKv, Visit};
use syncline_core::{Error, ErrorKind, Result};
use syncline_plugin_api::{BatchOp, KvStore, PluginError};

/// Rows asked of a plugin per `scan` call when visiting a range.
const SCAN_CHUNK: usize = 1024;

/// A plugin's key-value store, named for errors.
pub struct PluginKv {
    kv: Arc<dyn KvStore>,
    name: String,
}

/// The store over a plugin's key-value store.
pub type KvAdapter = KvEngine<PluginKv>;

/// Wraps the key-value store of the plugin store `name`, checking (or writing) the layout
/// version.
pub async fn open(kv: Arc<dyn KvStore>, name: &str) -> Result<KvAdapter> {
    let kv = PluginKv {
        kv,
        name: format!("plugin store {name}"),
    };
    KvEngine::open(kv, Blocking::Pool).await
}

impl std::fmt::Debug for PluginKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl PluginKv {
    fn err(&self, what: &str, e: PluginError) -> Error {
        let kind = match e.code {
            syncline_plugin_api::ERR_INVALID => ErrorKind::InvalidInput,
            syncline_plugin_api::ERR_CLOSED => ErrorKind::Closed,
            syncline_plugin_api::ERR_UNAVAILABLE | syncline_plugin_api::ERR_TIMEOUT => {
                ErrorKind::Unavailable
            }
            syncline_plugin_api::ERR_PANIC => ErrorKind::Internal,
            _ => ErrorKind::Storage,
        };
        Error::new(kind, format!("{}: {what}: {}", self.name, e.message))
    }
}

impl KvRead for &PluginKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv.get(key).map_err(|e| self.err("reading", e))
    }

    fn range(&self, start: &[u8], end: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        let mut from = start.to_vec();
        loop {
            let rows = self
                .kv
                .scan(&from, Some(end), SCAN_CHUNK)
                .map_err(|e| self.err("scanning", e))?;
            let full = rows.len() >= SCAN_CHUNK;
            let Some(last) = rows.last().map(|(k, _)| k.clone()) else {
                return Ok(());
            };
            for (k, v) in &rows {
                if !visit(k, v)? {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
            // The smallest key after the last one seen.
            from = last;
            from.push(0);
        }
    }
}

impl OrderedKv for PluginKv {
    type Read<'a> = &'a PluginKv;

    fn read(&self) -> Result<Self::Read<'_>> {
        Ok(self)
    }

    fn write(&self, batch: Vec<KvWrite>) -> Result<()> {
        let ops: Vec<BatchOp> = batch
            .into_iter()
            .map(|w| match w {
                KvWrite::Put(k, v) => BatchOp::Put(k, v),
                KvWrite::Delete(k) => BatchOp::Delete(k),
            })
            .collect();
        self.kv
            .write_batch(&ops)
            .map_err(|e| self.err("committing", e))
    }

    fn name(&self) -> &str {
        &self.name
    }
}
