//! The redb store as a backend: `kind = "redb"`, configured by `[store.redb]`.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use syncline_core::DynStore;
use syncline_core::backend::{Backends, NodeContext, Settings, StoreKind};

use crate::{RedbOptions, RedbStore};

/// `[store.redb]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedbConfig {
    /// The file (default `<data_dir>/<node_id>.redb`).
    pub path: Option<PathBuf>,
    /// Fsync every commit.
    pub durable: bool,
}

impl Default for RedbConfig {
    fn default() -> Self {
        RedbConfig {
            path: None,
            durable: RedbOptions::default().durable,
        }
    }
}

impl RedbConfig {
    /// The file for `node`.
    pub fn path_for(&self, node: &NodeContext) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| node.data_dir.join(format!("{}.redb", node.node_id)))
    }
}

impl Settings for RedbConfig {}

/// The store kind.
pub const KIND: &str = "redb";

/// Registers the redb store.
pub fn register(backends: &mut Backends) {
    backends.register_store(StoreKind::backend(KIND, |node, c: RedbConfig| async move {
        let options = RedbOptions {
            durable: c.durable,
            ..Default::default()
        };
        Ok(Arc::new(RedbStore::open_with(c.path_for(&node), options).await?) as DynStore)
    }));
}
