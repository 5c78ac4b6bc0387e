//! The Redis store as a backend: `kind = "redis"`, configured by `[store.redis]`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use syncline_core::DynStore;
use syncline_core::backend::{Backends, ConfigError, Settings, StoreKind};

use crate::RedisStore;

/// `[store.redis]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// The server: `redis://[:password@]host:port[/db]`.
    pub url: Option<String>,
    /// The key namespace (`syncline:{dataset}:…`; default: the node id), so datasets share a
    /// server; nodes with the same dataset share one store.
    pub dataset: Option<String>,
}

impl Settings for RedisConfig {
    fn check(&self, key: &str) -> Result<(), ConfigError> {
        match &self.url {
            Some(_) => Ok(()),
            None => Err(ConfigError::new(
                format!("{key}.url"),
                "the redis store needs a server URL",
            )),
        }
    }
}

/// The store kind.
pub const KIND: &str = "redis";

/// Registers the Redis store.
pub fn register(backends: &mut Backends) {
    backends.register_store(StoreKind::backend(
        KIND,
        |node, c: RedisConfig| async move {
            let url = c.url.unwrap_or_default();
            let dataset = c.dataset.unwrap_or_else(|| node.node_id.to_string());
            Ok(Arc::new(RedisStore::open(&url, &dataset).await?) as DynStore)
        },
    ));
}
