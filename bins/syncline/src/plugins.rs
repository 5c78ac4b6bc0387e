//! Runtime plugins named in the configuration (`[[plugins]]`).

use std::sync::Arc;

use syncline_core::{DynStore, Transport};

use crate::config::PluginConfig;

/// The plugins a node loaded.
#[derive(Default, Debug)]
pub struct Loaded {
    stores: Vec<String>,
    transports: Vec<Arc<dyn Transport>>,
}

impl Loaded {
    /// Loads the configured plugins.
    pub fn load(configs: &[PluginConfig]) -> anyhow::Result<Self> {
        if let Some(p) = configs.first() {
            anyhow::bail!(
                "plugins[0].path: cannot load {}: this build of syncline has no plugin loader",
                p.path.display()
            );
        }
        Ok(Loaded::default())
    }

    /// Store kinds and URL schemes the plugins provide.
    pub fn kinds(&self) -> Vec<String> {
        let mut k = self.stores.clone();
        for t in &self.transports {
            k.extend(t.schemes().into_iter().map(str::to_owned));
        }
        k
    }

    /// The store plugin named `kind`, opened with `options`.
    pub async fn store(
        &self,
        kind: &str,
        options: &Option<serde_json::Value>,
    ) -> anyhow::Result<Option<DynStore>> {
        let _ = (kind, options);
        Ok(None)
    }

    /// The transports the plugins provide.
    pub fn transports(&self) -> Vec<Arc<dyn Transport>> {
        self.transports.clone()
    }
}
