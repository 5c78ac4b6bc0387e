//! Backends that register themselves.
//!
//! A store or transport crate exports its kind (or name and URL schemes), its own configuration
//! section (a serde type with defaults, extracted from `[store.<kind>]` or
//! `[transports.<name>]` with figment's `focus`) and a `register` that puts it into a
//! [`Backends`] registry. A node assembles itself from the registry and the configuration: it
//! knows no backend by name, so a plugin or a third-party crate registers into the same
//! registry and is configured the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use figment::Figment;
use figment::providers::Serialized;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::limits::ConnectionLimits;
use crate::memory_store::MemoryStore;
use crate::store::DynStore;
use crate::transport::{Transport, TransportRegistry};
use crate::types::ReactorId;

/// A configuration problem: the dotted key and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending key, dotted (`store.redb.durable`), or empty for the whole file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The figment error `e`, with its key and (when it came from a file) its source.
    pub fn from_figment(e: figment::Error) -> Self {
        let key = e.path.join(".");
        let reason = match &e.kind {
            figment::error::Kind::Message(m) => m.clone(),
            other => other.to_string(),
        };
        let source = e
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        ConfigError::new(key, format!("{reason}{source}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid configuration: {}", self.reason)
        } else {
            write!(f, "invalid configuration: {}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for crate::error::Error {
    fn from(e: ConfigError) -> Self {
        crate::error::Error::invalid(e.to_string())
    }
}

/// One backend's configuration section: the node's configuration focused on its key.
#[derive(Clone, Debug)]
pub struct Section {
    key: String,
    figment: Figment,
}

impl Section {
    /// The section `key` (dotted, as `store.redb`) of `root`.
    pub fn focus(root: &Figment, key: &str) -> Self {
        Section {
            key: key.to_owned(),
            figment: root.focus(key),
        }
    }

    /// The section `key` holding `value` (a table), for configurations built in code.
    pub fn of(key: &str, value: &impl Serialize) -> Self {
        Section {
            key: key.to_owned(),
            figment: Figment::from(Serialized::defaults(value)),
        }
    }

    /// Its dotted key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The section as the backend's type: its defaults, overridden by what the section says.
    /// Errors name the full key (`store.redb.durable`).
    pub fn extract<T: DeserializeOwned>(&self) -> std::result::Result<T, ConfigError> {
        self.figment.extract::<T>().map_err(|mut e| {
            // The section was built in code; its provider says nothing to the operator.
            e.metadata = None;
            let mut e = ConfigError::from_figment(e);
            e.key = if e.key.is_empty() {
                self.key.clone()
            } else {
                format!("{}.{}", self.key, e.key)
            };
            e
        })
    }
}

/// What a backend may know of the node it is built for.
#[derive(Clone, Debug)]
pub struct NodeContext {
    /// The reactor id.
    pub node_id: ReactorId,
    /// Where the node keeps files (`data_dir`).
    pub data_dir: PathBuf,
    /// The largest frame sent or accepted (`sync.max_frame_bytes`): HTTP bodies, WebSocket
    /// messages, QUIC streams.
    pub max_frame_bytes: usize,
    /// How long a request waits for its response (`sync.request_timeout`).
    pub request_timeout: Duration,
    /// Caps on each listener's open connections.
    pub connections: ConnectionLimits,
}

/// A store kind: checks its section and opens its store.
#[async_trait]
pub trait StoreBackend: Send + Sync + fmt::Debug {
    /// The kind (`store.kind`), and the name of its section (`[store.<kind>]`).
    fn kind(&self) -> &str;

    /// Checks the section without opening anything; returns it with defaults filled in.
    fn check(&self, section: &Section) -> std::result::Result<serde_json::Value, ConfigError>;

    /// Opens the store.
    async fn open(&self, node: &NodeContext, section: &Section) -> Result<DynStore>;
}

/// A transport: checks its section and builds the transport a reactor dials and listens with.
#[async_trait]
pub trait TransportBackend: Send + Sync + fmt::Debug {
    /// Its name, and the name of its section (`[transports.<name>]`).
    fn name(&self) -> &str;

    /// The URL schemes its transport handles.
    fn schemes(&self) -> Vec<String>;

    /// Checks the section without building anything; returns it with defaults filled in.
    fn check(&self, section: &Section) -> std::result::Result<serde_json::Value, ConfigError>;

    /// Builds the transport. `store` is the node's store, where a transport may keep a secret
    /// across restarts.
    async fn build(
        &self,
        node: &NodeContext,
        store: &DynStore,
        section: &Section,
    ) -> Result<Arc<dyn Transport>>;
}

/// A backend's configuration section as a type: serde with defaults, and the checks its types
/// cannot express.
pub trait Settings: DeserializeOwned + Serialize + Send + 'static {
    /// Checks values beyond their types; `key` is the section's dotted key.
    fn check(&self, key: &str) -> std::result::Result<(), ConfigError> {
        let _ = key;
        Ok(())
    }
}

/// Any table: the section of a backend that reads its settings itself (plugins).
impl Settings for serde_json::Value {}

/// No settings: a section that must be empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl Settings for NoSettings {}

fn settings<C: Settings>(section: &Section) -> std::result::Result<C, ConfigError> {
    let c: C = section.extract()?;
    c.check(section.key())?;
    Ok(c)
}

fn effective<C: Settings>(
    section: &Section,
) -> std::result::Result<serde_json::Value, ConfigError> {
    let c: C = settings(section)?;
    let mut v =
        serde_json::to_value(&c).map_err(|e| ConfigError::new(section.key(), e.to_string()))?;
    drop_nulls(&mut v);
    Ok(v)
}

/// Leaves unset optional keys out (TOML has no null).
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|_, v| !v.is_null());
            o.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

type OpenFn<C> = dyn Fn(NodeContext, C) -> BoxFuture<'static, Result<DynStore>> + Send + Sync;

/// A store kind from its settings type and an `open` function: what a store crate registers.
pub struct StoreKind<C> {
    kind: String,
    open: Box<OpenFn<C>>,
}

impl<C: Settings> StoreKind<C> {
    /// The kind `kind`, opened by `open` with the node and its settings.
    pub fn backend<F, Fut>(kind: impl Into<String>, open: F) -> Arc<dyn StoreBackend>
    where
        F: Fn(NodeContext, C) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<DynStore>> + Send + 'static,
    {
        Arc::new(StoreKind {
            kind: kind.into(),
            open: Box::new(move |node, c| open(node, c).boxed()),
        })
    }
}

impl<C> fmt::Debug for StoreKind<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKind({})", self.kind)
    }
}

#[async_trait]
impl<C: Settings> StoreBackend for StoreKind<C> {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn check(&self, section: &Section) -> std::result::Result<serde_json::Value, ConfigError> {
        effective::<C>(section)
    }

    async fn open(&self, node: &NodeContext, section: &Section) -> Result<DynStore> {
        let c: C = settings(section)?;
        (self.open)(node.clone(), c).await
    }
}

type BuildFn<C> = dyn Fn(NodeContext, DynStore, C) -> BoxFuture<'static, Result<Arc<dyn Transport>>>
    + Send
    + Sync;

/// A transport from its settings type and a `build` function: what a transport crate
/// registers.
pub struct TransportKind<C> {
    name: String,
    schemes: Vec<String>,
    build: Box<BuildFn<C>>,
}

impl<C: Settings> TransportKind<C> {
    /// The transport `name` for `schemes`, built by `build` with the node, its store and its
    /// settings.
    pub fn backend<F, Fut>(
        name: impl Into<String>,
        schemes: &[&str],
        build: F,
    ) -> Arc<dyn TransportBackend>
    where
        F: Fn(NodeContext, DynStore, C) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Arc<dyn Transport>>> + Send + 'static,
    {
        Arc::new(TransportKind {
            name: name.into(),
            schemes: schemes.iter().map(|s| (*s).to_owned()).collect(),
            build: Box::new(move |node, store, c| build(node, store, c).boxed()),
        })
    }
}

impl TransportKind<NoSettings> {
    /// A transport without settings (`[transports.<name>]` must be empty), made from the node
    /// alone.
    pub fn plain(
        name: &str,
        schemes: &[&str],
        make: impl Fn(&NodeContext) -> Result<Arc<dyn Transport>> + Send + Sync + 'static,
    ) -> Arc<dyn TransportBackend> {
        TransportKind::backend(name, schemes, move |node, _, _: NoSettings| {
            futures::future::ready(make(&node))
        })
    }
}

impl<C> fmt::Debug for TransportKind<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransportKind({}: {:?})", self.name, self.schemes)
    }
}

#[async_trait]
impl<C: Settings> TransportBackend for TransportKind<C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn schemes(&self) -> Vec<String> {
        self.schemes.clone()
    }

    fn check(&self, section: &Section) -> std::result::Result<serde_json::Value, ConfigError> {
        effective::<C>(section)
    }

    async fn build(
        &self,
        node: &NodeContext,
        store: &DynStore,
        section: &Section,
    ) -> Result<Arc<dyn Transport>> {
        let c: C = settings(section)?;
        (self.build)(node.clone(), store.clone(), c).await
    }
}

/// The stores and transports a node can be assembled from.
#[derive(Clone, Debug)]
pub struct Backends {
    stores: BTreeMap<String, Arc<dyn StoreBackend>>,
    transports: BTreeMap<String, Arc<dyn TransportBackend>>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends::new()
    }
}

impl Backends {
    /// A registry holding the core's own backend: the memory store.
    pub fn new() -> Self {
        let mut b = Backends {
            stores: BTreeMap::new(),
            transports: BTreeMap::new(),
        };
        b.register_store(StoreKind::backend("memory", |_, _: NoSettings| async {
            Ok(Arc::new(MemoryStore::new()) as DynStore)
        }));
        b
    }

    /// Registers a store kind (replacing one of the same kind).
    pub fn register_store(&mut self, store: Arc<dyn StoreBackend>) {
        self.stores.insert(store.kind().to_owned(), store);
    }

    /// Registers a transport (replacing one of the same name).
    pub fn register_transport(&mut self, transport: Arc<dyn TransportBackend>) {
        self.transports
            .insert(transport.name().to_owned(), transport);
    }

    /// The store kind `kind`.
    pub fn store(&self, kind: &str) -> Option<&Arc<dyn StoreBackend>> {
        self.stores.get(kind)
    }

    /// The transport named `name`.
    pub fn transport(&self, name: &str) -> Option<&Arc<dyn TransportBackend>> {
        self.transports.get(name)
    }

    /// The transport handling `scheme`.
    pub fn transport_for_scheme(&self, scheme: &str) -> Option<&Arc<dyn TransportBackend>> {
        self.transports
            .values()
            .find(|t| t.schemes().iter().any(|s| s == scheme))
    }

    /// The registered store kinds.
    pub fn store_kinds(&self) -> Vec<String> {
        self.stores.keys().cloned().collect()
    }

    /// The registered transports' names.
    pub fn transport_names(&self) -> Vec<String> {
        self.transports.keys().cloned().collect()
    }

    /// Every scheme a registered transport handles.
    pub fn schemes(&self) -> Vec<String> {
        let mut s: Vec<String> = self.transports.values().flat_map(|t| t.schemes()).collect();
        s.sort();
        s.dedup();
        s
    }

    /// Builds every registered transport, each from its section of `root` (`transports.<name>`).
    pub async fn build_transports(
        &self,
        node: &NodeContext,
        store: &DynStore,
        root: &Figment,
    ) -> Result<TransportRegistry> {
        let mut registry = TransportRegistry::new();
        for (name, t) in &self.transports {
            let section = Section::focus(root, &format!("transports.{name}"));
            registry.register(t.build(node, store, &section).await?);
        }
        Ok(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        path: Option<PathBuf>,
        durable: bool,
    }

    #[test]
    fn a_section_is_extracted_with_defaults_and_errors_name_the_full_key() {
        let root = Figment::from(Serialized::defaults(serde_json::json!({
            "store": { "kind": "x", "x": { "durable": true } },
        })));
        let s = Section::focus(&root, "store.x");
        assert_eq!(
            s.extract::<Example>().unwrap(),
            Example {
                path: None,
                durable: true
            }
        );
        let missing = Section::focus(&root, "store.y");
        assert_eq!(missing.extract::<Example>().unwrap(), Example::default());
        let bad = Section::of("store.x", &serde_json::json!({ "durable": "yes" }));
        let e = bad.extract::<Example>().unwrap_err();
        assert_eq!(e.key, "store.x.durable");
        let unknown = Section::of("store.x", &serde_json::json!({ "colour": 1 }));
        let e = unknown.extract::<Example>().unwrap_err();
        assert_eq!(e.key, "store.x.colour");
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn the_effective_section_has_the_defaults_and_no_unset_keys() {
        let v = effective::<Example>(&Section::of("store.x", &serde_json::json!({}))).unwrap();
        assert_eq!(v, serde_json::json!({ "durable": false }));
    }

    impl Settings for Example {}

    #[test]
    fn the_memory_store_is_always_registered() {
        let b = Backends::new();
        assert_eq!(b.store_kinds(), vec!["memory".to_owned()]);
        let e = b
            .store("memory")
            .unwrap()
            .check(&Section::of(
                "store.memory",
                &serde_json::json!({ "size": 1 }),
            ))
            .unwrap_err();
        assert!(e.reason.contains("unknown field"), "{e}");
    }
}
