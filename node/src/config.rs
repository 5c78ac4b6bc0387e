//! The node's configuration: defaults < TOML file < `SYNCLINE_` environment variables (nested
//! with `__`), checked at start with errors that name the key and the reason.
//!
//! `docs/config.md` documents every key; `docs/examples/` has example files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use syncline_core::backend::{NodeContext, Section, StoreBackend, TransportBackend};
use syncline_core::transport::redacted_url;
use syncline_core::{PeerRule, ReactorConfig, RemoteConfig, SyncConfig};
use syncline_scheduler::SchedulerConfig;

use crate::backends::NodeBackends;

/// Which store the node uses, and the stores' sections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreChoice {
    /// A registered store kind: `redb` (default), `memory`, `redis`, or a store plugin's name.
    pub kind: String,
    /// Each kind's settings, `[store.<kind>]`, read by that kind's backend (its crate defines
    /// the keys and defaults; `[store.redb] path = ...`).
    #[serde(flatten)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

impl Default for StoreChoice {
    fn default() -> Self {
        StoreChoice {
            kind: "redb".into(),
            sections: BTreeMap::new(),
        }
    }
}

/// Where the node listens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// The HTTP listener: application API, `/metrics`, `/healthz`, and the HTTP and WebSocket
    /// sync endpoints unless `sync` is set.
    pub http: SocketAddr,
    /// A second HTTP listener for the HTTP and WebSocket sync endpoints only (and `/healthz`);
    /// with it, `http` serves the application API alone, so sync can be exposed while the API
    /// stays private.
    pub sync: Option<SocketAddr>,
    /// Serve `http` and `sync` over TLS (`https://`, `wss://`) with this certificate and key.
    pub tls: Option<TlsConfig>,
    /// A QUIC listener for `quic://` peers.
    pub quic: Option<SocketAddr>,
    /// A Redis pub/sub listener: `redis://host:port?as=<name>`.
    pub redis: Option<String>,
    /// More listen URLs, for transports that listen by themselves (plugin transports such as
    /// `tcp://127.0.0.1:7000`).
    pub urls: Vec<String>,
    /// Milliseconds a client has to send a request's headers on `http`; an idle keep-alive
    /// connection is closed after as long.
    pub header_timeout: u64,
    /// Most open connections on each listener (`http`, `quic`).
    pub max_connections: usize,
    /// Most open connections from one IP address on each listener.
    pub max_connections_per_address: usize,
    /// Milliseconds an HTTP sync session may go unused before it is forgotten.
    pub http_session_idle: u64,
    /// Requests per client address on the HTTP and WebSocket sync endpoints (each HTTP sync
    /// request, each WebSocket upgrade); none: no limit.
    pub sync_rate_per_address: Option<crate::rate::Rate>,
}

impl ListenConfig {
    /// The caps on open connections of each listener.
    pub fn connection_limits(&self) -> syncline_core::limits::ConnectionLimits {
        syncline_core::limits::ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            sync: None,
            tls: None,
            quic: None,
            redis: None,
            urls: Vec::new(),
            header_timeout: 10_000,
            max_connections: 8192,
            max_connections_per_address: 1024,
            http_session_idle: 300_000,
            sync_rate_per_address: None,
        }
    }
}

/// `listen.tls`: PEM files, read again on SIGHUP or when they change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A pull scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SchedulerKind {
    /// The adaptive scheduler (`syncline-scheduler`).
    Adaptive,
    /// A fixed interval.
    Fixed,
}

impl TryFrom<String> for SchedulerKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "adaptive" => Ok(SchedulerKind::Adaptive),
            "fixed" => Ok(SchedulerKind::Fixed),
            other => Err(format!(
                "unknown scheduler {other:?}; use adaptive or fixed"
            )),
        }
    }
}

impl From<SchedulerKind> for String {
    fn from(k: SchedulerKind) -> String {
        match k {
            SchedulerKind::Adaptive => "adaptive",
            SchedulerKind::Fixed => "fixed",
        }
        .into()
    }
}

/// Which pull scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerChoice {
    /// `adaptive` (default) or `fixed`.
    pub kind: SchedulerKind,
    /// For `fixed`: the interval in milliseconds.
    pub fixed_interval: u64,
    /// For `adaptive`: its settings (`[scheduler.adaptive]`).
    pub adaptive: SchedulerConfig,
}

impl Default for SchedulerChoice {
    fn default() -> Self {
        SchedulerChoice {
            kind: SchedulerKind::Adaptive,
            fixed_interval: 2_000,
            adaptive: SchedulerConfig::default(),
        }
    }
}

/// Metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (Prometheus text format).
    pub enabled: bool,
    /// Remotes with a `remote` label of their own; remotes added beyond them share `other`.
    pub max_remote_labels: usize,
    /// Listening peers with a `peer` label of their own in `syncline_listener_lag_ops`.
    pub max_peer_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            max_remote_labels: 64,
            max_peer_labels: 64,
        }
    }
}

/// Peer permissions: absent rules allow every peer everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermissionsConfig {
    /// Rules, checked in order; the first whose peer matches applies.
    pub rules: Vec<PeerRule>,
}

/// A runtime plugin to load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of the shared library.
    pub path: PathBuf,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The reactor id.
    pub node_id: String,
    /// Where files go (the redb store by default).
    pub data_dir: PathBuf,
    /// The store.
    pub store: StoreChoice,
    /// Listeners.
    pub listen: ListenConfig,
    /// Each transport's settings, `[transports.<name>]`, read by that transport's backend.
    pub transports: BTreeMap<String, serde_json::Value>,
    /// Remotes to sync with (more can be added at runtime through the API).
    pub remotes: Vec<RemoteConfig>,
    /// The pull scheduler.
    pub scheduler: SchedulerChoice,
    /// The reactor (queue, commits, views); its `sync` is the section below.
    pub reactor: ReactorConfig,
    /// The sync manager (batches, windows, retries, limits).
    pub sync: SyncConfig,
    /// Peer permissions.
    pub permissions: PermissionsConfig,
    /// Who may use the application API (`[api]`, `[[api.tokens]]`).
    pub api: crate::auth::ApiConfig,
    /// Metrics.
    pub metrics: MetricsConfig,
    /// Runtime plugins.
    pub plugins: Vec<PluginConfig>,
    /// Seconds to wait for in-flight batches on shutdown.
    pub shutdown_grace: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "node".into(),
            data_dir: PathBuf::from("./syncline-data"),
            store: StoreChoice::default(),
            listen: ListenConfig::default(),
            transports: BTreeMap::new(),
            remotes: Vec::new(),
            scheduler: SchedulerChoice::default(),
            reactor: ReactorConfig::default(),
            sync: SyncConfig::default(),
            permissions: PermissionsConfig::default(),
            api: crate::auth::ApiConfig::default(),
            metrics: MetricsConfig::default(),
            plugins: Vec::new(),
            shutdown_grace: 10,
        }
    }
}

pub use syncline_core::ConfigError;

/// The backends' sections of a checked configuration, with their defaults filled in.
struct CheckedSections {
    /// The chosen store's (`store.<kind>`).
    store: serde_json::Value,
    /// Every registered transport's (`transports.<name>`).
    transports: BTreeMap<String, serde_json::Value>,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(key, reason)
}

/// The URL scheme of `url`, or `""`.
fn scheme_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.scheme().to_owned())
        .unwrap_or_default()
}

impl Config {
    /// The layered configuration: defaults, then `file` (if any), then `SYNCLINE_*` variables.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            f = f.merge(Toml::file_exact(file));
        }
        f.merge(Env::prefixed("SYNCLINE_").split("__"))
    }

    /// Loads the configuration; [`Config::validate`] checks it against the backends.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(file) = file
            && !file.exists()
        {
            return Err(err(
                "",
                format!("the configuration file {} does not exist", file.display()),
            ));
        }
        Config::figment(file)
            .extract()
            .map_err(ConfigError::from_figment)
    }

    /// Checks values the types cannot (names, URLs, ranges) and each backend's section against
    /// the backends of this build (`backends`).
    pub fn validate(&self, backends: &NodeBackends) -> Result<(), ConfigError> {
        self.checked(backends).map(drop)
    }

    /// [`Config::validate`], returning the backends' sections with their defaults filled in.
    fn checked(&self, backends: &NodeBackends) -> Result<CheckedSections, ConfigError> {
        syncline_core::ReactorId::new(&self.node_id).map_err(|e| err("node_id", e.message()))?;
        let sections = self.check_sections(backends)?;
        for (key, v) in [
            ("listen.header_timeout", self.listen.header_timeout as usize),
            ("listen.max_connections", self.listen.max_connections),
            (
                "listen.max_connections_per_address",
                self.listen.max_connections_per_address,
            ),
            (
                "listen.http_session_idle",
                self.listen.http_session_idle as usize,
            ),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.remotes.iter().enumerate() {
            let key = format!("remotes[{i}]");
            r.validate().map_err(|e| err(&key, e.message()))?;
            if !names.insert(r.name.clone()) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("{} is used twice", r.name),
                ));
            }
            let own = std::iter::once(("http", self.listen.http))
                .chain(self.listen.sync.map(|s| ("http", s)))
                .chain(self.listen.quic.map(|q| ("quic", q)));
            for (kind, addr) in own {
                if crate::api::points_at(&r.url, kind, &addr) {
                    return Err(err(
                        &format!("{key}.url"),
                        format!(
                            "remote {}: {} is this node's own listener (listen.{kind}); a \
                             remote must be another node",
                            r.name, r.url
                        ),
                    ));
                }
            }
            let scheme = scheme_of(&r.url);
            if scheme != "peer" {
                transport_for(backends, &format!("{key}.url"), &scheme, "handles")?;
            }
        }
        if self.listen.quic.is_some() {
            transport_for(backends, "listen.quic", "quic", "handles")?;
        }
        if let Some(r) = &self.listen.redis {
            transport_for(backends, "listen.redis", "redis", "handles")?;
            let ok = url::Url::parse(r)
                .ok()
                .is_some_and(|u| u.query_pairs().any(|(k, _)| k == "as"));
            if !ok {
                return Err(err("listen.redis", "expected redis://host:port?as=<name>"));
            }
        }
        for (i, u) in self.listen.urls.iter().enumerate() {
            let key = format!("listen.urls[{i}]");
            let scheme = url::Url::parse(u)
                .map(|u| u.scheme().to_owned())
                .map_err(|e| err(&key, format!("{u:?} is not a URL: {e}")))?;
            transport_for(backends, &key, &scheme, "listens on")?;
        }
        match self.scheduler.kind {
            SchedulerKind::Adaptive => self
                .scheduler
                .adaptive
                .validate()
                .map_err(|e| err("scheduler", e.message()))?,
            SchedulerKind::Fixed => {
                if self.scheduler.fixed_interval == 0 {
                    return Err(err("scheduler.fixed_interval", "must be positive"));
                }
            }
        }
        self.reactor_config()
            .validate()
            .map_err(|e| err("reactor", e.message()))?;
        syncline_core::RulePermissions::new(self.permissions.rules.clone())
            .map_err(|e| err("permissions.rules", e.message()))?;
        if self.listen.sync == Some(self.listen.http) && self.listen.http.port() != 0 {
            return Err(err(
                "listen.sync",
                "is the same address as listen.http; leave it out to serve both there",
            ));
        }
        if let Some(r) = self.listen.sync_rate_per_address {
            r.check("listen.sync_rate_per_address")?;
        }
        let auth = crate::auth::ApiAuth::new(&self.api)?;
        if auth.is_open() && !self.api.allow_unauthenticated && !self.listen.http.ip().is_loopback()
        {
            return Err(err(
                "listen.http",
                format!(
                    "{} is not a loopback address and the application API has no tokens: \
                     anyone who reaches it could read and write every document and add \
                     remotes; add [[api.tokens]] (`syncline token new` makes one) or set \
                     api.allow_unauthenticated = true",
                    self.listen.http
                ),
            ));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            if p.path.as_os_str().is_empty() {
                return Err(err(&format!("plugins[{i}].path"), "must not be empty"));
            }
        }
        Ok(sections)
    }

    /// The configuration with every backend's section checked and its defaults filled in
    /// (what `syncline config check` prints).
    pub fn effective(&self, backends: &NodeBackends) -> Result<Config, ConfigError> {
        let CheckedSections { store, transports } = self.checked(backends)?;
        let mut c = self.clone();
        c.store.sections.insert(self.store.kind.clone(), store);
        c.transports.extend(transports);
        Ok(c)
    }

    /// Checks `[store]` and `[transports]`: a known store kind, and each section belongs to a
    /// registered backend and is valid for it. Returns the chosen store's section and every
    /// registered transport's, with their defaults.
    fn check_sections(&self, backends: &NodeBackends) -> Result<CheckedSections, ConfigError> {
        let root = self.sections();
        let kind = self.store.kind.as_str();
        let store = store_for(backends, "store.kind", kind)?
            .check(&Section::focus(&root, &format!("store.{kind}")))?;
        for (name, value) in &self.store.sections {
            let key = format!("store.{name}");
            if !value.is_object() {
                return Err(err(
                    &key,
                    format!(
                        "a store's settings go in its own section: write {name} under \
                         [store.{kind}] (store.{kind}.{name})"
                    ),
                ));
            }
            if name != kind {
                store_for(backends, &key, name)?.check(&Section::focus(&root, &key))?;
            }
        }
        if let Some(name) = self
            .transports
            .keys()
            .find(|name| backends.backends.transport(name).is_none())
        {
            return Err(err(
                &format!("transports.{name}"),
                format!(
                    "no transport named {name:?} in this binary (known: {})",
                    backends.backends.transport_names().join(", ")
                ),
            ));
        }
        let mut transports = BTreeMap::new();
        for name in backends.backends.transport_names() {
            if let Some(t) = backends.backends.transport(&name) {
                let section = Section::focus(&root, &format!("transports.{name}"));
                transports.insert(name, t.check(&section)?);
            }
        }
        Ok(CheckedSections { store, transports })
    }

    /// What a backend knows of this node.
    pub fn node_context(&self) -> anyhow::Result<NodeContext> {
        Ok(NodeContext {
            node_id: syncline_core::ReactorId::new(&self.node_id)?,
            data_dir: self.data_dir.clone(),
            max_frame_bytes: self.sync.max_frame_bytes,
            request_timeout: self.sync.request_timeout,
            connections: self.listen.connection_limits(),
        })
    }

    /// The backends' sections (`store.<kind>`, `transports.<name>`) as a figment to focus on.
    pub fn sections(&self) -> Figment {
        Figment::from(Serialized::defaults(serde_json::json!({
            "store": self.store.sections,
            "transports": self.transports,
        })))
    }

    /// The reactor configuration.
    pub fn reactor_config(&self) -> ReactorConfig {
        ReactorConfig {
            sync: self.sync.clone(),
            ..self.reactor.clone()
        }
    }

    /// The configuration as TOML, with credentials and tokens redacted.
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        for r in &mut c.remotes {
            if r.credentials.is_some() {
                r.credentials = Some("***".into());
            }
            r.url = syncline_core::transport::redacted_url(&r.url);
        }
        for rule in &mut c.permissions.rules {
            if rule.token.is_some() {
                rule.token = Some("***".into());
            }
        }
        for v in c
            .store
            .sections
            .values_mut()
            .chain(c.transports.values_mut())
        {
            redact_passwords(v);
        }
        if let Some(u) = &mut c.listen.redis {
            *u = redacted_url(u);
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}

/// The registered store `kind`, or why there is none.
fn store_for<'a>(
    backends: &'a NodeBackends,
    key: &str,
    kind: &str,
) -> Result<&'a Arc<dyn StoreBackend>, ConfigError> {
    if let Some(b) = backends.backends.store(kind) {
        return Ok(b);
    }
    Err(err(
        key,
        match backends.missing_store(kind) {
            Some(feature) => format!(
                "the {kind} store is not compiled into this binary; rebuild with --features \
                 {feature}"
            ),
            None => format!(
                "unknown store {kind:?}; use {}, or the name of a store plugin listed under \
                 [[plugins]]",
                backends.backends.store_kinds().join(", ")
            ),
        },
    ))
}

/// The registered transport for `scheme`, or why there is none; `verb` says what it would do
/// ("handles", "listens on").
fn transport_for<'a>(
    backends: &'a NodeBackends,
    key: &str,
    scheme: &str,
    verb: &str,
) -> Result<&'a Arc<dyn TransportBackend>, ConfigError> {
    if let Some(t) = backends.backends.transport_for_scheme(scheme) {
        return Ok(t);
    }
    Err(err(
        key,
        match backends.missing_scheme(scheme) {
            Some(feature) => format!(
                "{scheme}:// needs the {feature} feature, which this binary was built without; \
                 rebuild with --features {feature}"
            ),
            None => format!(
                "no transport {verb} {scheme}://; use {}, peer, or a transport plugin's scheme",
                backends.backends.schemes().join(", ")
            ),
        },
    ))
}

/// Every URL in `v` with its password as `***`.
fn redact_passwords(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => *s = redacted_url(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_passwords),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_passwords),
        _ => {}
    }
}
