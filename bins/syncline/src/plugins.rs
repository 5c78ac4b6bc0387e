//! Runtime plugins named in the configuration (`[[plugins]] path = ...`): stores and transports
//! syncline was not compiled with. See `docs/plugins.md`.

use std::sync::Arc;

use anyhow::bail;
use syncline_core::{DynStore, Transport};
use syncline_plugin_host::Plugin;

use crate::config::PluginConfig;

/// The plugins a node loaded.
#[derive(Default, Debug)]
pub struct Loaded {
    plugins: Vec<Plugin>,
}

impl Loaded {
    /// Loads the configured plugins (and only those), checking each before use.
    pub fn load(configs: &[PluginConfig]) -> anyhow::Result<Self> {
        let mut plugins: Vec<Plugin> = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let p = Plugin::load(&c.path).map_err(|e| {
                anyhow::anyhow!("invalid configuration: plugins[{i}].path: {}", e.message())
            })?;
            if plugins.iter().any(|q| q.name == p.name) {
                bail!(
                    "invalid configuration: plugins[{i}].path: a plugin named {:?} is already loaded",
                    p.name
                );
            }
            plugins.push(p);
        }
        Ok(Loaded { plugins })
    }

    /// Store kinds and URL schemes the plugins provide.
    pub fn kinds(&self) -> Vec<String> {
        let mut k = self.store_kinds();
        k.extend(self.schemes());
        k
    }

    /// Store kinds the plugins provide.
    pub fn store_kinds(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.store_kind().map(str::to_owned))
            .collect()
    }

    /// URL schemes the plugins provide.
    pub fn schemes(&self) -> Vec<String> {
        self.plugins.iter().filter_map(|p| p.scheme()).collect()
    }

    /// The store plugin named `kind`, opened with `options`.
    pub async fn store(
        &self,
        kind: &str,
        options: &Option<serde_json::Value>,
    ) -> anyhow::Result<Option<DynStore>> {
        for p in &self.plugins {
            if p.store_kind() == Some(kind) {
                let opts = options.clone().unwrap_or(serde_json::Value::Null);
                return Ok(Some(p.open_store(&opts).await.map_err(|e| {
                    anyhow::anyhow!(
                        "store: the {kind} plugin cannot open the store: {}",
                        e.message()
                    )
                })?));
            }
        }
        Ok(None)
    }

    /// The transports the plugins provide.
    pub fn transports(&self) -> Vec<Arc<dyn Transport>> {
        self.plugins
            .iter()
            .filter_map(|p| p.transport().ok())
            .collect()
    }
}
