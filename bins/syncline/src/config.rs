//! The node's configuration: defaults < TOML file < `SYNCLINE_` environment variables (nested
//! with `__`), checked at start with errors that name the key and the reason.
//!
//! `docs/config.md` documents every key; `docs/examples/` has example files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use syncline_core::{PeerRule, ReactorConfig, RemoteConfig, SyncConfig};
use syncline_scheduler::SchedulerConfig;

/// Which store the node uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redb` (default), `memory`, `redis`, or the name of a store plugin.
    pub kind: String,
    /// redb: the file (default `<data_dir>/<node_id>.redb`).
    pub path: Option<PathBuf>,
    /// redis: the server URL.
    pub url: Option<String>,
    /// redis: the dataset (default: the node id).
    pub dataset: Option<String>,
    /// redb: fsync every commit (default true).
    pub durable: bool,
    /// Plugin stores: their options, passed through as JSON.
    pub options: Option<serde_json::Value>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: "redb".into(),
            path: None,
            url: None,
            dataset: None,
            durable: true,
            options: None,
        }
    }
}

/// Where the node listens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// The HTTP listener: application API, `/metrics`, `/healthz`, and the HTTP and WebSocket
    /// sync endpoints.
    pub http: SocketAddr,
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
            quic: None,
            redis: None,
            urls: Vec::new(),
            header_timeout: 10_000,
            max_connections: 8192,
            max_connections_per_address: 1024,
            http_session_idle: 300_000,
        }
    }
}

/// QUIC certificates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Certificate chain (PEM) the listener presents; with `key`. Absent: self-signed.
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
    /// Certificates to trust when dialling `quic://` remotes.
    pub ca: Option<PathBuf>,
    /// Trust any certificate when dialling (local use only).
    pub insecure: bool,
    /// Where to write the self-signed certificate, so peers can trust it.
    pub write_self_signed: Option<PathBuf>,
}

/// Transport settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportsConfig {
    /// QUIC.
    pub quic: QuicConfig,
}

/// Which pull scheduler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerChoice {
    /// `adaptive` (default) or `fixed`.
    pub kind: String,
    /// For `fixed`: the interval in milliseconds.
    pub fixed_interval: u64,
    /// For `adaptive`: its settings (`[scheduler.adaptive]`).
    pub adaptive: SchedulerConfig,
}

impl Default for SchedulerChoice {
    fn default() -> Self {
        SchedulerChoice {
            kind: "adaptive".into(),
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
    pub store: StoreConfig,
    /// Listeners.
    pub listen: ListenConfig,
    /// Transport settings.
    pub transports: TransportsConfig,
    /// Remotes to sync with (more can be added at runtime through the API).
    pub remotes: Vec<RemoteConfig>,
    /// The pull scheduler.
    pub scheduler: SchedulerChoice,
    /// The reactor (queue, commits, views).
    pub reactor: ReactorTuning,
    /// The sync manager (batches, windows, retries, limits).
    pub sync: SyncConfig,
    /// Peer permissions.
    pub permissions: PermissionsConfig,
    /// Metrics.
    pub metrics: MetricsConfig,
    /// Runtime plugins.
    pub plugins: Vec<PluginConfig>,
    /// Seconds to wait for in-flight batches on shutdown.
    pub shutdown_grace: u64,
}

/// The reactor's tuning (everything of `ReactorConfig` but `sync`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactorTuning {
    /// Most jobs queued.
    pub queue_capacity: usize,
    /// Most operations in one commit.
    pub max_commit_ops: usize,
    /// Most actions in one submission.
    pub max_submit_actions: usize,
    /// Operations between view snapshots.
    pub snapshot_every: u64,
    /// Strands whose views are cached.
    pub max_cached_views: usize,
    /// Estimated bytes of the cached views.
    pub max_view_bytes: usize,
    /// Milliseconds a received timestamp may be ahead of our clock.
    pub max_clock_drift: u64,
}

impl Default for ReactorTuning {
    fn default() -> Self {
        let r = ReactorConfig::default();
        ReactorTuning {
            queue_capacity: r.queue_capacity,
            max_commit_ops: r.max_commit_ops,
            max_submit_actions: r.max_submit_actions,
            snapshot_every: r.snapshot_every,
            max_cached_views: r.max_cached_views,
            max_view_bytes: r.max_view_bytes,
            max_clock_drift: r.max_clock_drift.as_millis() as u64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "node".into(),
            data_dir: PathBuf::from("./syncline-data"),
            store: StoreConfig::default(),
            listen: ListenConfig::default(),
            transports: TransportsConfig::default(),
            remotes: Vec::new(),
            scheduler: SchedulerChoice::default(),
            reactor: ReactorTuning::default(),
            sync: SyncConfig::default(),
            permissions: PermissionsConfig::default(),
            metrics: MetricsConfig::default(),
            plugins: Vec::new(),
            shutdown_grace: 10,
        }
    }
}

/// A configuration problem: the key and the reason.
#[derive(Debug)]
pub struct ConfigError {
    /// The offending key, dotted (`store.kind`), or empty for the whole file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid configuration: {}", self.reason)
        } else {
            write!(f, "invalid configuration: {}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The cargo features compiled into this binary, by name.
pub fn compiled_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "transport-memory") {
        f.push("transport-memory");
    }
    if cfg!(feature = "transport-http") {
        f.push("transport-http");
    }
    if cfg!(feature = "transport-websocket") {
        f.push("transport-websocket");
    }
    if cfg!(feature = "transport-quic") {
        f.push("transport-quic");
    }
    if cfg!(feature = "transport-redis") {
        f.push("transport-redis");
    }
    if cfg!(feature = "store-redb") {
        f.push("store-redb");
    }
    if cfg!(feature = "store-redis") {
        f.push("store-redis");
    }
    f
}

/// The feature a URL scheme needs.
pub fn feature_for_scheme(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" | "https" => Some("transport-http"),
        "ws" => Some("transport-websocket"),
        "quic" => Some("transport-quic"),
        "redis" => Some("transport-redis"),
        "mem" => Some("transport-memory"),
        _ => None,
    }
}

/// The feature a store kind needs.
pub fn feature_for_store(kind: &str) -> Option<&'static str> {
    match kind {
        "redb" => Some("store-redb"),
        "redis" => Some("store-redis"),
        _ => None,
    }
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

    /// Loads and checks the configuration. Plugin store kinds and plugin schemes are allowed
    /// when `plugin_names` lists them.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(file) = file
            && !file.exists()
        {
            return Err(err(
                "",
                format!("the configuration file {} does not exist", file.display()),
            ));
        }
        let config: Config = Config::figment(file).extract().map_err(|e| {
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
            err(&key, format!("{reason}{source}"))
        })?;
        Ok(config)
    }

    /// Checks values the types cannot: names, URLs, features, ranges.
    pub fn validate(&self, features: &[&str], plugin_kinds: &[String]) -> Result<(), ConfigError> {
        syncline_core::ReactorId::new(&self.node_id).map_err(|e| err("node_id", e.message()))?;
        let kind = self.store.kind.as_str();
        match kind {
            "memory" => {}
            "redb" | "redis" => {
                let feature = feature_for_store(kind).unwrap_or_default();
                if !features.contains(&feature) {
                    return Err(err(
                        "store.kind",
                        format!(
                            "the {kind} store is not compiled into this binary; rebuild with \
                             --features {feature}"
                        ),
                    ));
                }
                if kind == "redis" && self.store.url.is_none() {
                    return Err(err("store.url", "the redis store needs a server URL"));
                }
            }
            other if plugin_kinds.iter().any(|p| p == other) => {}
            other => {
                return Err(err(
                    "store.kind",
                    format!(
                        "unknown store {other:?}; use memory, redb, redis, or the name of a \
                         store plugin listed under [[plugins]]"
                    ),
                ));
            }
        }
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
            let scheme = url::Url::parse(&r.url)
                .map(|u| u.scheme().to_owned())
                .unwrap_or_default();
            if let Some(feature) = feature_for_scheme(&scheme) {
                if !features.contains(&feature) {
                    return Err(err(
                        &format!("{key}.url"),
                        format!(
                            "{scheme}:// needs the {feature} feature, which this binary was \
                             built without"
                        ),
                    ));
                }
            } else if scheme != "peer" && !plugin_kinds.contains(&scheme) {
                return Err(err(
                    &format!("{key}.url"),
                    format!(
                        "no transport handles {scheme}://; use http, ws, quic, redis, peer, or \
                         a transport plugin's scheme"
                    ),
                ));
            }
        }
        if self.listen.quic.is_some() && !features.contains(&"transport-quic") {
            return Err(err(
                "listen.quic",
                "QUIC is not compiled into this binary; rebuild with --features transport-quic",
            ));
        }
        if let Some(r) = &self.listen.redis {
            if !features.contains(&"transport-redis") {
                return Err(err(
                    "listen.redis",
                    "the Redis transport is not compiled into this binary; rebuild with \
                     --features transport-redis",
                ));
            }
            let ok = url::Url::parse(r)
                .ok()
                .is_some_and(|u| u.query_pairs().any(|(k, _)| k == "as"));
            if !ok {
                return Err(err("listen.redis", "expected redis://host:port?as=<name>"));
            }
        }
        for (i, u) in self.listen.urls.iter().enumerate() {
            let scheme = url::Url::parse(u)
                .map(|u| u.scheme().to_owned())
                .map_err(|e| {
                    err(
                        &format!("listen.urls[{i}]"),
                        format!("{u:?} is not a URL: {e}"),
                    )
                })?;
            if !plugin_kinds.contains(&scheme) && feature_for_scheme(&scheme).is_none() {
                return Err(err(
                    &format!("listen.urls[{i}]"),
                    format!("no loaded transport handles {scheme}://"),
                ));
            }
        }
        match self.scheduler.kind.as_str() {
            "adaptive" => self
                .scheduler
                .adaptive
                .validate()
                .map_err(|e| err("scheduler", e.message()))?,
            "fixed" => {
                if self.scheduler.fixed_interval == 0 {
                    return Err(err("scheduler.fixed_interval", "must be positive"));
                }
            }
            other => {
                return Err(err(
                    "scheduler.kind",
                    format!("unknown scheduler {other:?}; use adaptive or fixed"),
                ));
            }
        }
        self.reactor_config()
            .validate()
            .map_err(|e| err("reactor", e.message()))?;
        syncline_core::RulePermissions::new(self.permissions.rules.clone())
            .map_err(|e| err("permissions.rules", e.message()))?;
        for (i, p) in self.plugins.iter().enumerate() {
            if p.path.as_os_str().is_empty() {
                return Err(err(&format!("plugins[{i}].path"), "must not be empty"));
            }
        }
        Ok(())
    }

    /// The reactor configuration.
    pub fn reactor_config(&self) -> ReactorConfig {
        ReactorConfig {
            queue_capacity: self.reactor.queue_capacity,
            max_commit_ops: self.reactor.max_commit_ops,
            max_submit_actions: self.reactor.max_submit_actions,
            snapshot_every: self.reactor.snapshot_every,
            max_cached_views: self.reactor.max_cached_views,
            max_view_bytes: self.reactor.max_view_bytes,
            max_clock_drift: Duration::from_millis(self.reactor.max_clock_drift),
            sync: self.sync.clone(),
        }
    }

    /// The redb file.
    pub fn redb_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join(format!("{}.redb", self.node_id)))
    }

    /// The configuration as TOML, with credentials and tokens redacted.
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        for r in &mut c.remotes {
            if r.credentials.is_some() {
                r.credentials = Some("***".into());
            }
        }
        for rule in &mut c.permissions.rules {
            if rule.token.is_some() {
                rule.token = Some("***".into());
            }
        }
        if let Some(u) = &c.store.url
            && let Ok(mut parsed) = url::Url::parse(u)
            && parsed.password().is_some()
        {
            let _ = parsed.set_password(Some("***"));
            c.store.url = Some(parsed.to_string());
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}
