//! Runs a reactor from a [`Config`]: store, transports, scheduler, permissions, listeners, the
//! application API and metrics.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use syncline_core::{
    AllowAll, Permissions, Reactor, ReactorId, RulePermissions, Scheduler, Section,
};

use crate::api::{AppState, router};
use crate::backends::NodeBackends;
use crate::config::{Config, SchedulerKind};
use crate::serve::{HttpServer, ServerLimits};

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
                .inspect(|_| {
                    syncline_core::telemetry::describe();
                    syncline_scheduler::describe();
                    metrics::describe_gauge!(
                        "syncline_build_info",
                        "The running build: always 1, with its version as a label."
                    );
                    metrics::gauge!("syncline_build_info", "version" => env!("CARGO_PKG_VERSION"))
                        .set(1.0);
                })
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder failed: {e}"))
}

/// A running node.
pub struct Node {
    /// The configuration it runs.
    pub config: Config,
    /// The reactor.
    pub reactor: Reactor,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound sync listener (`listen.sync`), if it has its own.
    pub sync_addr: Option<SocketAddr>,
    /// The bound QUIC address, if listening.
    pub quic_addr: Option<SocketAddr>,
    servers: Vec<HttpServer>,
    tls_watch: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", self.reactor.id())
            .field("http", &self.http_addr)
            .finish()
    }
}

fn scheduler(config: &Config) -> anyhow::Result<Arc<dyn Scheduler>> {
    Ok(match config.scheduler.kind {
        SchedulerKind::Fixed => Arc::new(syncline_core::FixedInterval::new(
            Duration::from_millis(config.scheduler.fixed_interval),
            config.scheduler.adaptive.backoff,
        )),
        SchedulerKind::Adaptive => Arc::new(syncline_scheduler::AdaptiveScheduler::new(
            config.scheduler.adaptive.clone(),
            syncline_scheduler::tokio_now(),
        )?),
    })
}

impl Node {
    /// Checks the configuration and starts the node.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        crate::install_crypto();
        let plugins = crate::plugins::Loaded::load(&config.plugins)?;
        let compiled = NodeBackends::compiled().with_plugins(&plugins);
        config.validate(&compiled)?;
        let node = config.node_context()?;
        let sections = config.sections();
        let kind = config.store.kind.as_str();
        let store = compiled
            .backends
            .store(kind)
            .context("store.kind: checked above")?
            .open(&node, &Section::focus(&sections, &format!("store.{kind}")))
            .await
            .with_context(|| format!("opening the {kind} store"))?;
        let permissions: Arc<dyn Permissions> = if config.permissions.rules.is_empty() {
            Arc::new(AllowAll)
        } else {
            Arc::new(RulePermissions::new(config.permissions.rules.clone())?)
        };
        syncline_core::telemetry::set_label_limits(
            config.metrics.max_remote_labels,
            config.metrics.max_peer_labels,
        );
        let metrics = if config.metrics.enabled {
            Some(metrics_handle()?)
        } else {
            None
        };
        let transports = compiled
            .backends
            .build_transports(&node, &store, &sections)
            .await
            .context("building the transports")?;
        let reactor = Reactor::builder(ReactorId::new(&config.node_id)?)
            .store(store)
            .transports(transports)
            .scheduler(scheduler(&config)?)
            .permissions(permissions)
            .config(config.reactor_config())
            .start()
            .await
            .context("starting the reactor")?;
        // Remotes from the configuration; remotes added at runtime were restored from the store.
        for r in &config.remotes {
            let existing = reactor.sync().remotes();
            match existing.iter().find(|e| e.name == r.name) {
                Some(e) if e == r => {}
                Some(_) => {
                    tracing::warn!(remote = %r.name, "the configuration changed this remote; starting it over");
                    reactor.sync().remove_remote(r.name.as_str()).await?;
                    reactor.sync().add_remote(r.clone()).await?;
                }
                None => reactor.sync().add_remote(r.clone()).await?,
            }
        }
        let listening = Arc::new(parking_lot::RwLock::new(Vec::new()));
        let auth = Arc::new(crate::auth::ApiAuth::new(&config.api)?);
        let state = AppState {
            reactor: reactor.clone(),
            metrics,
            listening: listening.clone(),
            auth: auth.clone(),
        };
        let r = reactor.clone();
        let accept: syncline_core::AcceptFn = Arc::new(move |link| {
            r.serve(link);
        });
        let api = router(state);
        let mut sync = axum::Router::new();
        #[cfg(feature = "transport-http")]
        if compiled.backends.transport("http").is_some() {
            sync = sync.merge(syncline_transport_http::router(
                accept.clone(),
                syncline_transport_http::ServerOptions {
                    session_idle: Duration::from_millis(config.listen.http_session_idle),
                    ..syncline_transport_http::ServerOptions::for_node(&node)
                },
            ));
        }
        #[cfg(feature = "transport-websocket")]
        if compiled.backends.transport("websocket").is_some() {
            let ws: syncline_transport_websocket::WsSettings =
                Section::focus(&sections, "transports.websocket").extract()?;
            sync = sync.merge(syncline_transport_websocket::router(
                accept.clone(),
                syncline_transport_websocket::WsOptions::for_node(&node),
                ws.origins(),
            ));
        }
        let _ = &accept;
        if let Some(rate) = config.listen.sync_rate_per_address {
            let limit = Arc::new(crate::rate::Limiter::new(
                "listen.sync_rate_per_address",
                rate,
            ));
            sync = sync.route_layer(axum::middleware::from_fn_with_state(
                limit,
                crate::rate::per_address,
            ));
        }
        let limits = ServerLimits {
            header_timeout: Duration::from_millis(config.listen.header_timeout),
            connections: config.listen.connection_limits(),
        }
        .fit_to_fd_limit();
        let tls = match &config.listen.tls {
            Some(t) => Some(crate::serve::TlsFiles::load(&t.cert, &t.key)?),
            None => None,
        };
        let mut servers = Vec::new();
        // With a sync listener of its own, the API's listener serves the API alone.
        let (app, sync_addr) = match config.listen.sync {
            None => (api.merge(sync), None),
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listen.sync: cannot listen on {addr}"))?;
                let bound = listener.local_addr()?;
                listening.write().push(("http", bound));
                let health = axum::Router::new()
                    .route("/healthz", axum::routing::get(crate::api::sync_health))
                    .with_state(reactor.clone());
                let sync = sync.merge(health).fallback(crate::api::sync_not_found);
                servers.push(HttpServer::serve(listener, sync, limits, tls.clone()));
                (api, Some(bound))
            }
        };
        let listener = tokio::net::TcpListener::bind(config.listen.http)
            .await
            .with_context(|| format!("listen.http: cannot listen on {}", config.listen.http))?;
        let http_addr = listener.local_addr()?;
        listening.write().push(("http", http_addr));
        if auth.is_open() {
            tracing::warn!(
                http = %http_addr,
                "the application API has no tokens (api.tokens): anyone who can reach \
                 {http_addr} may read and write every document; add [[api.tokens]] before \
                 exposing it"
            );
        }
        servers.push(HttpServer::serve(listener, app, limits, tls.clone()));
        let mut quic_addr = None;
        if let Some(addr) = config.listen.quic {
            let url = reactor
                .listen(&format!("quic://{addr}"))
                .await
                .with_context(|| format!("listen.quic: cannot listen on {addr}"))?;
            quic_addr = Some(SocketAddr::new(
                addr.ip(),
                url.port().unwrap_or(addr.port()),
            ));
            listening.write().extend(quic_addr.map(|a| ("quic", a)));
        }
        for url in &config.listen.urls {
            reactor
                .listen(url)
                .await
                .with_context(|| format!("listen.urls: cannot listen on {url}"))?;
        }
        if let Some(url) = &config.listen.redis {
            reactor
                .listen(url)
                .await
                .with_context(|| format!("listen.redis: cannot subscribe at {url}"))?;
        }
        tracing::info!(
            node = %config.node_id, http = %http_addr, sync = ?sync_addr, quic = ?quic_addr,
            "syncline node started"
        );
        // Watched once every listener is up: a start that fails leaves no task behind.
        let tls_watch = tls.map(crate::serve::TlsFiles::watch);
        Ok(Node {
            config,
            reactor,
            http_addr,
            sync_addr,
            quic_addr,
            servers,
            tls_watch,
        })
    }

    /// Stops gracefully: no new requests, in-flight batches get `shutdown_grace`, queued jobs
    /// are committed.
    pub async fn shutdown(mut self) {
        let grace = Duration::from_secs(self.config.shutdown_grace);
        if let Some(w) = self.tls_watch.take() {
            w.abort();
        }
        for server in std::mem::take(&mut self.servers) {
            server.shutdown(grace).await;
        }
        self.reactor.shutdown(grace).await;
        tracing::info!(node = %self.config.node_id, "syncline node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(w) = self.tls_watch.take() {
            w.abort();
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
