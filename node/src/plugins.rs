//! Runtime plugins named in the configuration (`[[plugins]] path = ...`): stores and transports
//! syncline was not compiled with. See `docs/plugins.md`.

use anyhow::bail;
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

    /// Registers what each plugin provides: its store kind and its transport.
    pub fn register(&self, backends: &mut syncline_core::Backends) {
        for p in &self.plugins {
            p.register(backends);
        }
    }
}
