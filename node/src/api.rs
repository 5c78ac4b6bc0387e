//! The node's HTTP application API.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/documents/{doc}/actions` | submits actions; `201 {operations: [{id, ordinal, timestamp}]}` |
//! | `GET /v1/documents/{doc}?scope&branch&offset&limit` | `{strand, document_type, state, revision, errored, operations, operations_total, next_offset}` (a page of at most [`MAX_PAGE`] operations) |
//! | `GET /v1/documents/{doc}/operations?scope&branch&offset&limit` | a page of the operations in canonical order, each with the peers' `refused` verdicts and `excluded` when an authority refused it |
//! | `GET /v1/documents` | every strand with its head |
//! | `GET /v1/remotes`, `POST /v1/remotes` | list, add (body: a remote) |
//! | `GET /v1/remotes/{name}`, `DELETE /v1/remotes/{name}` | one remote's status, remove it |
//! | `GET /v1/dead-letters`, `POST /v1/dead-letters/{id}/requeue` | dead letters |
//! | `GET /v1/sync/status` | every remote's and listener's status |
//! | `GET /healthz` | liveness |
//! | `GET /metrics` | Prometheus text format |
//!
//! Who may call which route is [`crate::auth`]'s: with `[[api.tokens]]` configured, documents
//! need `read` (and the document in the token's filter), submissions `write`, remotes, dead
//! letters and the sync status `admin`; remote credentials are never returned.
//!
//! A document id with `/` is percent-encoded in the path (`drive%2Fa`). Errors are
//! `{"error": {"kind", "message"}}` with a fitting status; a body over `sync.max_frame_bytes`
//! or an action input over `sync.max_action_bytes` answers 413.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use syncline_core::{
    DocumentType, Error, ErrorKind, NewAction, Reactor, RemoteConfig, StrandId, Submission,
};

use crate::auth::{ApiAuth, Caller, Role};

/// What the routes share.
#[derive(Clone)]
pub struct AppState {
    /// The reactor.
    pub reactor: Reactor,
    /// Renders `/metrics`, when metrics are on.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The addresses this node listens on, by URL scheme, filled in as listeners start: a
    /// remote pointing at one of them is this node itself.
    pub listening: std::sync::Arc<parking_lot::RwLock<Vec<(&'static str, std::net::SocketAddr)>>>,
    /// Who may call which route.
    pub auth: Arc<ApiAuth>,
}

impl AppState {
    /// Refuses a remote URL that points at this node's own listeners (it would dial itself
    /// forever).
    pub fn check_not_self(&self, url: &str) -> syncline_core::Result<()> {
        let ours = self
            .listening
            .read()
            .iter()
            .any(|(scheme, addr)| points_at(url, scheme, addr));
        if ours {
            return Err(Error::invalid(format!(
                "{} is this node's own listener; a remote must be another node",
                syncline_core::transport::redacted_url(url)
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("reactor", self.reactor.id())
            .finish()
    }
}

/// An API error: a syncline error with its HTTP status.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status for an error kind ([`ErrorKind::http_status`], shared with the HTTP sync
/// routes).
pub fn status_for(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_for(self.0.kind());
        (
            status,
            Json(json!({"error": {"kind": self.0.kind().as_str(), "message": self.0.to_string()}})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Whether remote URL `url` dials listener `addr` of kind `scheme` (`http`, which serves
/// `http://` and `ws://`, or `quic`): same port, and the same address or a local one.
pub fn points_at(url: &str, scheme: &str, addr: &std::net::SocketAddr) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    let kind = match u.scheme() {
        "ws" | "wss" | "http" | "https" => "http",
        other => other,
    };
    // Another host on the same port is another node (nodes often share a port), even when
    // we listen on every interface: only a local name or our own address is us.
    kind == scheme && addr.port() == port && (local || addr.ip().to_string() == host)
}

/// `?scope=&branch=`, and which page of operations.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrandQuery {
    scope: Option<String>,
    branch: Option<String>,
    /// `GET /v1/documents/{doc}`: include the operation list (default true).
    operations: Option<bool>,
    /// The first operation listed (its index in canonical order; default 0).
    offset: Option<usize>,
    /// How many operations are listed at most (default and maximum [`MAX_PAGE`]).
    limit: Option<usize>,
}

/// The most operations one response lists; more are paged with `offset`.
pub const MAX_PAGE: usize = 1000;

/// An axum extractor that answers with the API's JSON error instead of axum's plain text.
macro_rules! json_rejecting {
    ($(#[$doc:meta])* $name:ident, $inner:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name<T>(pub T);

        impl<S, T> axum::extract::FromRequestParts<S> for $name<T>
        where
            T: serde::de::DeserializeOwned + Send,
            S: Send + Sync,
        {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                $inner::<T>::from_request_parts(parts, state)
                    .await
                    .map(|$inner(t)| $name(t))
                    .map_err(|e| {
                        ApiError(Error::invalid(format!(
                            concat!($what, " is not valid: {}"),
                            e.body_text()
                        )))
                    })
            }
        }
    };
}

json_rejecting!(
    /// A path parameter, or the JSON error for one that does not parse (invalid UTF-8 in a
    /// percent-encoded id, say).
    ApiPath,
    Path,
    "the path"
);
json_rejecting!(
    /// A query string, or the JSON error for one that does not parse.
    ApiQuery,
    Query,
    "the query string"
);

/// One action of a submission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// The action type.
    #[serde(rename = "type")]
    action_type: String,
    /// Its input.
    #[serde(default)]
    input: Value,
}

/// `POST /v1/documents/{doc}/actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    scope: Option<String>,
    branch: Option<String>,
    document_type: Option<String>,
    actions: Vec<ActionBody>,
}

impl SubmitBody {
    /// The submission this body asks for on document `doc`: ids, scope, branch, type and
    /// every action checked (the API's body parsing, also fuzzed on its own).
    pub fn into_submission(self, doc: &str) -> syncline_core::Result<Submission> {
        let strand = StrandId::parse(doc, self.scope.as_deref(), self.branch.as_deref())?;
        let document_type = DocumentType::new(
            self.document_type
                .as_deref()
                .unwrap_or(syncline_core::types::DEFAULT_DOCUMENT_TYPE),
        )?;
        let actions = self
            .actions
            .into_iter()
            .map(|a| NewAction::new(&a.action_type, a.input))
            .collect::<syncline_core::Result<Vec<_>>>()?;
        Ok(Submission {
            strand,
            document_type,
            actions,
        })
    }
}

#[derive(Serialize)]
struct Submitted {
    operations: Vec<syncline_core::Written>,
}

fn json_error(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError(Error::new(
            ErrorKind::TooLarge,
            "the request body exceeds the API's limit (sync.max_frame_bytes); one action's \
             input may be up to sync.max_action_bytes",
        ));
    }
    ApiError(Error::invalid(format!(
        "the request body is not valid: {}",
        rejection.body_text()
    )))
}

/// The strand's operations as JSON, each with the refusals peers reported for it (by whom,
/// why, when) and whether the view leaves it out.
async fn operations_json(s: &AppState, strand: &StrandId, q: &StrandQuery) -> ApiResult<Value> {
    let ops = s.reactor.operations(strand).await?;
    let total = ops.len();
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let ops: Vec<_> = ops.into_iter().skip(offset).take(limit).collect();
    let next = (offset + ops.len() < total).then_some(offset + ops.len());
    let mut refusals: std::collections::HashMap<_, Vec<Value>> = Default::default();
    for r in s.reactor.sync().refusals().await? {
        if &r.strand == strand {
            refusals.entry(r.op).or_default().push(json!({
                "by": r.by, "remote": r.remote, "kind": r.error.kind,
                "message": r.error.message, "at_ms": r.at_ms,
            }));
        }
    }
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let id = op.id;
        let mut v = serde_json::to_value(op)
            .map_err(|e| Error::internal(format!("encoding operations failed: {e}")))?;
        if let Some(r) = refusals.remove(&id) {
            v["refused"] = Value::Array(r);
        }
        out.push(v);
    }
    Ok(json!({"operations": out, "operations_total": total, "next_offset": next}))
}

async fn submit(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(doc): ApiPath<String>,
    body: Result<Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Submitted>)> {
    caller.needs(Role::Write)?;
    let Json(body) = body.map_err(json_error)?;
    let submission = body.into_submission(&doc)?;
    caller.needs_strand(Role::Write, &submission.strand)?;
    let written = s.reactor.submit(submission).await?;
    Ok((
        StatusCode::CREATED,
        Json(Submitted {
            operations: written,
        }),
    ))
}

async fn document(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(doc): ApiPath<String>,
    ApiQuery(q): ApiQuery<StrandQuery>,
) -> ApiResult<Json<Value>> {
    let strand = StrandId::parse(&doc, q.scope.as_deref(), q.branch.as_deref())?;
    caller.needs_strand(Role::Read, &strand)?;
    let state = s.reactor.document(&strand).await?;
    let mut v = serde_json::to_value(&state)
        .map_err(|e| Error::internal(format!("encoding a document failed: {e}")))?;
    if q.operations.unwrap_or(true) {
        let page = operations_json(&s, &strand, &q).await?;
        for key in ["operations", "operations_total", "next_offset"] {
            v[key] = page[key].clone();
        }
    }
    Ok(Json(v))
}

async fn operations(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(doc): ApiPath<String>,
    ApiQuery(q): ApiQuery<StrandQuery>,
) -> ApiResult<Json<Value>> {
    let strand = StrandId::parse(&doc, q.scope.as_deref(), q.branch.as_deref())?;
    caller.needs_strand(Role::Read, &strand)?;
    let mut page = operations_json(&s, &strand, &q).await?;
    page["strand"] = json!(strand);
    Ok(Json(page))
}

async fn documents(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.needs(Role::Read)?;
    let mut heads = s.reactor.store().heads().await?;
    heads.retain(|h| caller.reaches(&h.strand));
    Ok(Json(json!({"strands": heads})))
}

/// A remote's configuration as the API shows it: its credentials never, its URL without a
/// password.
fn remote_json(config: &RemoteConfig) -> Value {
    let mut v = json!(config);
    if !v["credentials"].is_null() {
        v["credentials"] = json!("[redacted]");
    }
    v["url"] = json!(syncline_core::transport::redacted_url(&config.url));
    v
}

async fn remotes(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.needs(Role::Admin)?;
    let remotes: Vec<Value> = s.reactor.sync().remotes().iter().map(remote_json).collect();
    Ok(Json(json!({"remotes": remotes})))
}

async fn add_remote(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<RemoteConfig>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.needs(Role::Admin)?;
    let Json(config) = body.map_err(json_error)?;
    s.auth.check_remote_url(&config.url)?;
    s.check_not_self(&config.url)?;
    let name = config.name.to_string();
    let url = syncline_core::transport::redacted_url(&config.url);
    s.reactor.sync().add_remote(config).await?;
    tracing::info!(by = caller.who(), remote = %name, url = %url, "a remote was added through the API");
    let status = s.reactor.sync().remote_status(&name)?;
    Ok((StatusCode::CREATED, Json(json!(status))))
}

async fn remote(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    caller.needs(Role::Admin)?;
    Ok(Json(json!(s.reactor.sync().remote_status(&name)?)))
}

async fn remove_remote(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.needs(Role::Admin)?;
    s.reactor.sync().remove_remote(&name).await?;
    tracing::info!(by = caller.who(), remote = %name, "a remote was removed through the API");
    Ok(StatusCode::NO_CONTENT)
}

async fn dead_letters(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.needs(Role::Admin)?;
    let letters = s.reactor.sync().dead_letters().await?;
    let summary: Vec<Value> = letters
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "remote": d.remote, "range": d.range,
                "operations": d.operations.len(), "error": d.error,
                "attempts": d.attempts, "failed_at_ms": d.failed_at_ms,
            })
        })
        .collect();
    Ok(Json(json!({"dead_letters": summary})))
}

async fn requeue(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.needs(Role::Admin)?;
    s.reactor.sync().requeue_dead_letter(&id).await?;
    tracing::info!(by = caller.who(), letter = %id, "a dead letter was requeued through the API");
    Ok(StatusCode::ACCEPTED)
}

async fn status(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.needs(Role::Admin)?;
    Ok(Json(json!(s.reactor.sync().status())))
}

async fn health(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let head = s.reactor.store().head().await?;
    Ok(Json(
        json!({"status": "ok", "reactor_id": s.reactor.id(), "head": head}),
    ))
}

/// `GET /healthz` on a sync listener of its own (`listen.sync`): liveness only.
pub async fn sync_health(State(r): State<Reactor>) -> Json<Value> {
    Json(json!({"status": "ok", "reactor_id": r.id()}))
}

/// Anything else on a sync listener of its own: the application API is not served there.
pub async fn sync_not_found() -> ApiError {
    ApiError(Error::not_found(
        "this is the sync listener (listen.sync); the application API is served on listen.http",
    ))
}

async fn metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            syncline_core::telemetry::render_status(&h.render(), &s.reactor.sync().status()),
        )
            .into_response(),
        None => ApiError(Error::not_found(
            "metrics are disabled (metrics.enabled = false)",
        ))
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError(Error::not_found(
        "no such route; see docs/config.md for the API",
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let mut r = ApiError(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{method} is not allowed on {}; see docs/config.md for the API",
            uri.path()
        ),
    ))
    .into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// The application routes.
pub fn router(state: AppState) -> Router {
    let body_limit = state.reactor.config().sync.max_frame_bytes;
    let auth = state.auth.clone();
    let router = Router::new()
        .route("/v1/documents", get(documents))
        .route("/v1/documents/{doc}", get(document))
        .route("/v1/documents/{doc}/actions", post(submit))
        .route("/v1/documents/{doc}/operations", get(operations))
        .route("/v1/remotes", get(remotes).post(add_remote))
        .route("/v1/remotes/{name}", get(remote).delete(remove_remote))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/{id}/requeue", post(requeue))
        .route("/v1/sync/status", get(status))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::auth::layer,
        ));
    // The per-address limit runs first (it wraps the token check), so guessing tokens costs
    // the guesser its own budget.
    let router = match auth.per_address() {
        Some(limit) => router.route_layer(axum::middleware::from_fn_with_state(
            limit,
            crate::rate::per_address,
        )),
        None => router,
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::points_at;

    #[test]
    fn only_our_own_listener_is_us() {
        let any: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("an address");
        let one: std::net::SocketAddr = "10.0.0.5:8080".parse().expect("an address");
        assert!(points_at("ws://127.0.0.1:8080", "http", &any));
        assert!(points_at("http://localhost:8080", "http", &any));
        assert!(points_at("ws://[::1]:8080", "http", &any));
        assert!(points_at("ws://10.0.0.5:8080", "http", &one));
        // Another node on the same port.
        assert!(!points_at("ws://10.0.0.6:8080", "http", &any));
        assert!(!points_at("ws://b.example:8080", "http", &any));
        // Another port, another listener kind.
        assert!(!points_at("ws://127.0.0.1:8081", "http", &any));
        assert!(!points_at("quic://127.0.0.1:8080", "http", &any));
        assert!(points_at("quic://127.0.0.1:8080", "quic", &any));
    }
}
