//! Who may use the application API: bearer tokens, each with a role and the documents it
//! reaches, kept in the configuration as hashes only.
//!
//! - A request names its token in `Authorization: Bearer <token>`. A missing or unknown token
//!   answers `401` (with `WWW-Authenticate: Bearer`), a token whose role or documents do not
//!   cover the request answers `403`; neither says anything about the documents.
//! - Roles: `read` (documents in its filter), `write` (and submit to them), `admin` (and
//!   remotes, dead letters, the sync status and, unless they are open, `/metrics`).
//! - Tokens are configured as `sha256:<hex>` of the token (for generated tokens:
//!   `syncline token new`) or an argon2 PHC string (`syncline token hash`, for tokens a person
//!   chose). A presented token is hashed once and compared in constant time; an argon2
//!   verification is remembered (bounded) under the token's SHA-256, so it runs once per token.
//! - A node with no tokens serves the API to anyone who can reach it, so it must listen on a
//!   loopback address unless `api.allow_unauthenticated` says otherwise (checked at start).
//! - Remotes added through the API may only point at URLs matching `api.remote_urls` (none by
//!   default), so the API cannot be used to make the node dial or send documents anywhere else.

use std::num::NonZeroUsize;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use syncline_core::{ConfigError, Error, ErrorKind, Filter, StrandId};

use crate::api::ApiError;

/// What a token may do, each role including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the documents of its filter.
    Read,
    /// Read and submit to them.
    Write,
    /// Everything: remotes, dead letters, status, metrics.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// One API token: `[[api.tokens]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// A name for logs (never the token).
    pub name: String,
    /// `sha256:<64 hex digits>` of the token, or an argon2 PHC string (`$argon2id$…`).
    pub hash: String,
    /// What it may do.
    pub role: Role,
    /// The documents it reaches on the document routes (document ids, scopes, branches; all
    /// by default).
    #[serde(default)]
    pub documents: Filter,
}

/// `[api]`: who may use the application API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The tokens; none serves the API without authentication (loopback only).
    pub tokens: Vec<ApiToken>,
    /// Serve the API without tokens on a non-loopback `listen.http`.
    pub allow_unauthenticated: bool,
    /// Serve `/metrics` without a token.
    pub open_metrics: bool,
    /// Serve `/healthz` without a token.
    pub open_health: bool,
    /// URL patterns a remote added through the API may point at (`*` within one part of the
    /// host or path, `**` across `/`), matched against `scheme://host[:port]/path`; none by
    /// default. Remotes in the configuration file are not restricted.
    pub remote_urls: Vec<String>,
    /// Requests per client address, before the token is read (none: no limit).
    pub rate_per_address: Option<crate::rate::Rate>,
    /// Requests per token (per address when the API has no tokens); none: no limit.
    pub rate_per_token: Option<crate::rate::Rate>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: Vec::new(),
            allow_unauthenticated: false,
            open_metrics: true,
            open_health: true,
            remote_urls: Vec::new(),
            rate_per_address: None,
            rate_per_token: None,
        }
    }
}

/// Most argon2 successes remembered.
const VERDICTS: usize = 1024;

/// argon2 verifications running at once.
const ARGON2_AT_ONCE: usize = 2;

enum Digested {
    Sha256([u8; 32]),
    Argon2(String),
}

struct Known {
    token: ApiToken,
    hash: Digested,
}

/// Who made a request, as the routes see it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name; `None` when the API has no tokens (open on loopback).
    pub name: Option<String>,
    role: Role,
    documents: Filter,
}

impl Caller {
    fn open() -> Self {
        Caller {
            name: None,
            role: Role::Admin,
            documents: Filter::all(),
        }
    }

    /// For logs: the token's name, or `unauthenticated`.
    pub fn who(&self) -> &str {
        self.name.as_deref().unwrap_or("unauthenticated")
    }

    /// Refuses the request unless the caller has `role`.
    pub fn needs(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        Err(forbidden(format!(
            "token {} has role {}; this route needs {}",
            self.who(),
            self.role.as_str(),
            role.as_str()
        )))
    }

    /// Refuses the request unless the caller has `role` and reaches `strand`.
    pub fn needs_strand(&self, role: Role, strand: &StrandId) -> Result<(), ApiError> {
        self.needs(role)?;
        if self.reaches(strand) {
            return Ok(());
        }
        Err(forbidden(format!(
            "token {} does not reach this document",
            self.who()
        )))
    }

    /// Whether the caller's documents include `strand`.
    pub fn reaches(&self, strand: &StrandId) -> bool {
        self.documents.matches_strand(
            strand.document_id.as_str(),
            "*",
            strand.scope.as_str(),
            strand.branch.as_str(),
        )
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError(Error::new(ErrorKind::PermissionDenied, message))
}

/// The API's tokens and URL rules, checked once at start.
pub struct ApiAuth {
    known: Vec<Known>,
    verdicts: Mutex<lru::LruCache<[u8; 32], usize>>,
    argon2_slots: tokio::sync::Semaphore,
    remote_urls: GlobSet,
    config: ApiConfig,
    per_token: Option<crate::rate::Limiter<String>>,
    per_address: Option<std::sync::Arc<crate::rate::Limiter<std::net::IpAddr>>>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("tokens", &self.known.len())
            .finish()
    }
}

impl ApiAuth {
    /// Checks every token's hash and filter and every URL pattern; an error names the key.
    pub fn new(config: &ApiConfig) -> Result<Self, ConfigError> {
        let mut known = Vec::with_capacity(config.tokens.len());
        for (i, t) in config.tokens.iter().enumerate() {
            let key = format!("api.tokens[{i}]");
            let bad = |field: &str, reason: String| {
                ConfigError::new(
                    format!("{key}.{field}"),
                    format!("token {}: {reason}", t.name),
                )
            };
            let hash = if let Some(hex) = t.hash.strip_prefix("sha256:") {
                let bytes = hex::decode(hex)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        bad("hash", "sha256: must be followed by 64 hex digits".into())
                    })?;
                Digested::Sha256(bytes)
            } else if t.hash.starts_with("$argon2") {
                argon2::PasswordHash::new(&t.hash)
                    .map_err(|e| bad("hash", format!("not an argon2 PHC string: {e}")))?;
                Digested::Argon2(t.hash.clone())
            } else {
                return Err(bad(
                    "hash",
                    "expected sha256:<hex> or an argon2 PHC string ($argon2id$…); `syncline \
                     token new` makes a token and its hash"
                        .into(),
                ));
            };
            t.documents
                .validate()
                .map_err(|e| bad("documents", e.message().to_owned()))?;
            if !t.documents.document_types.is_empty() {
                return Err(bad(
                    "documents",
                    "a token's documents are chosen by document_ids, scopes and branches; \
                     document_types is not supported here"
                        .into(),
                ));
            }
            if config.tokens[..i].iter().any(|o| o.name == t.name) {
                return Err(bad("name", "another token has this name".into()));
            }
            known.push(Known {
                token: t.clone(),
                hash,
            });
        }
        let mut urls = GlobSetBuilder::new();
        for (i, p) in config.remote_urls.iter().enumerate() {
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    ConfigError::new(
                        format!("api.remote_urls[{i}]"),
                        format!("{p:?} is not a valid pattern: {e}"),
                    )
                })?;
            urls.add(glob);
        }
        let remote_urls = urls
            .build()
            .map_err(|e| ConfigError::new("api.remote_urls", e.to_string()))?;
        for (key, rate) in [
            ("api.rate_per_address", config.rate_per_address),
            ("api.rate_per_token", config.rate_per_token),
        ] {
            if let Some(r) = rate {
                r.check(key)?;
            }
        }
        Ok(ApiAuth {
            known,
            verdicts: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(VERDICTS).expect("not zero"),
            )),
            argon2_slots: tokio::sync::Semaphore::new(ARGON2_AT_ONCE),
            remote_urls,
            config: config.clone(),
            per_token: config
                .rate_per_token
                .map(|r| crate::rate::Limiter::new("api.rate_per_token", r)),
            per_address: config
                .rate_per_address
                .map(|r| std::sync::Arc::new(crate::rate::Limiter::new("api.rate_per_address", r))),
        })
    }

    /// Whether the API has no tokens (anyone who reaches it may use it).
    pub fn is_open(&self) -> bool {
        self.known.is_empty()
    }

    /// Who presented these headers: `401` without a known token.
    pub async fn authenticate(
        self: &std::sync::Arc<Self>,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::open());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized("this route needs a token: Authorization: Bearer <token>")
            })?;
        let index = self
            .find(presented)
            .await
            .ok_or_else(|| unauthorized("the token is not valid"))?;
        let t = &self.known[index].token;
        Ok(Caller {
            name: Some(t.name.clone()),
            role: t.role,
            documents: t.documents.clone(),
        })
    }

    /// The index of the token `presented` is, if any.
    async fn find(self: &std::sync::Arc<Self>, presented: &str) -> Option<usize> {
        let digest = syncline_core::auth::token_sha256(presented);
        let mut found = None;
        // Every SHA-256 token is compared, in constant time, so the time taken says nothing
        // about which one (or how much of one) matched.
        for (i, k) in self.known.iter().enumerate() {
            if let Digested::Sha256(h) = &k.hash
                && bool::from(h.ct_eq(&digest))
            {
                found = Some(i);
            }
        }
        if found.is_some()
            || !self
                .known
                .iter()
                .any(|k| matches!(k.hash, Digested::Argon2(_)))
        {
            return found;
        }
        if let Some(i) = self.verdicts.lock().get(&digest) {
            return Some(*i);
        }
        // argon2 is slow on purpose (tens of ms, 19 MiB): it runs on the blocking pool, at most
        // ARGON2_AT_ONCE at a time, so guessed tokens cannot stall the API's or the sync
        // endpoints' workers. Only successes are remembered, so guesses cannot push real
        // tokens out of the cache.
        let _slot = self.argon2_slots.acquire().await.ok()?;
        let this = self.clone();
        let token = presented.to_owned();
        let verdict = tokio::task::spawn_blocking(move || this.argon2_position(&token))
            .await
            .ok()
            .flatten();
        if let Some(i) = verdict {
            self.verdicts.lock().put(digest, i);
        }
        verdict
    }

    fn argon2_position(&self, presented: &str) -> Option<usize> {
        self.known.iter().position(|k| match &k.hash {
            Digested::Argon2(phc) => argon2::PasswordHash::new(phc).is_ok_and(|h| {
                argon2::PasswordVerifier::verify_password(
                    &argon2::Argon2::default(),
                    presented.as_bytes(),
                    &h,
                )
                .is_ok()
            }),
            Digested::Sha256(_) => false,
        })
    }

    /// Refuses a remote URL the API may not add.
    pub fn check_remote_url(&self, url: &str) -> syncline_core::Result<()> {
        if self.config.remote_urls.is_empty() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "adding remotes through the API is off: list the URLs it may point at in \
                 api.remote_urls (for example \"wss://*.example.com/**\"), or configure the remote \
                 in the configuration file",
            ));
        }
        // Matched against the URL as it will be dialled (scheme, host, port, path), so that a
        // user name, a query or a fragment cannot make another host look like an allowed one.
        let dialled = url::Url::parse(url).ok().and_then(|u| {
            let host = u.host_str()?.to_owned();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            Some(format!("{}://{host}{port}{}", u.scheme(), u.path()))
        });
        let Some(dialled) = dialled else {
            return Err(Error::invalid(format!(
                "{} is not a URL with a host",
                syncline_core::transport::redacted_url(url)
            )));
        };
        if !self.remote_urls.is_match(&dialled) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{} matches none of api.remote_urls",
                    syncline_core::transport::redacted_url(url)
                ),
            ));
        }
        Ok(())
    }

    /// The per-address limit's layer state, if one is configured.
    pub fn per_address(&self) -> Option<std::sync::Arc<crate::rate::Limiter<std::net::IpAddr>>> {
        self.per_address.clone()
    }

    /// An API without tokens trusts whoever reaches its loopback address, so it must not be
    /// reachable from web pages: a request whose `Host` is not a loopback name (a page's own
    /// name pointed at 127.0.0.1, DNS rebinding) or that carries an `Origin` (sent by browsers)
    /// is refused. Not checked with tokens (a page cannot send them) or when
    /// `api.allow_unauthenticated` opened the API on purpose.
    fn check_open_request(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.is_open() || self.config.allow_unauthenticated {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        let loopback = name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(forbidden(
                "this API has no tokens and answers only requests addressed to localhost, \
                 127.0.0.1 or [::1] (Host header)"
                    .into(),
            ));
        }
        if headers.contains_key(header::ORIGIN) {
            return Err(forbidden(
                "this API has no tokens and does not answer web pages (Origin header); \
                 configure [[api.tokens]] for browser clients"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether `path` is served without a token.
    fn is_open_path(&self, path: &str) -> bool {
        (path == "/healthz" && self.config.open_health)
            || (path == "/metrics" && self.config.open_metrics)
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError(Error::new(ErrorKind::Unauthenticated, message))
}

/// The middleware: puts the [`Caller`] into the request, or answers 401.
pub async fn layer(
    State(auth): State<std::sync::Arc<ApiAuth>>,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<std::net::SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Err(e) = auth.check_open_request(req.headers()) {
        return e.into_response();
    }
    let caller = if auth.is_open_path(req.uri().path()) {
        Ok(Caller::open())
    } else {
        auth.authenticate(req.headers()).await
    };
    match caller {
        Ok(c) => {
            // `/metrics` behind a token is for admins.
            if req.uri().path() == "/metrics"
                && let Err(e) = c.needs(Role::Admin)
            {
                return e.into_response();
            }
            if let Some(limit) = &auth.per_token {
                let key = c
                    .name
                    .clone()
                    .unwrap_or_else(|| crate::rate::client_key(addr.ip()).to_string());
                if let Err(refused) = limit.check(&key) {
                    return refused.into_response();
                }
            }
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        Err(e) => {
            let mut r = e.into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"syncline\""),
            );
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    }
}

/// A new random token (256 bits, hex) and its `sha256:` hash for the configuration.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("sl_{}", hex::encode(bytes));
    let hash = sha256_hash(&token);
    (token, hash)
}

/// `sha256:<hex>` of a token.
pub fn sha256_hash(token: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(syncline_core::auth::token_sha256(token))
    )
}

/// An argon2id PHC string of a token (for tokens a person chose).
pub fn argon2_hash(token: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| anyhow::anyhow!("making a salt failed: {e}"))?;
    argon2::Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the token failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, hash: String, role: Role, docs: &[&str]) -> ApiToken {
        ApiToken {
            name: name.into(),
            hash,
            role,
            documents: Filter::documents(docs.iter().copied()),
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn tokens_map_to_their_role_and_documents_and_others_are_refused() {
        let (reader, reader_hash) = new_token();
        let config = ApiConfig {
            tokens: vec![
                token("reader", reader_hash, Role::Read, &["drive/*"]),
                token(
                    "ops",
                    argon2_hash("correct horse").unwrap(),
                    Role::Admin,
                    &[],
                ),
            ],
            ..ApiConfig::default()
        };
        let auth = std::sync::Arc::new(ApiAuth::new(&config).unwrap());
        let c = auth.authenticate(&bearer(&reader)).await.unwrap();
        assert_eq!(c.who(), "reader");
        let inside = StrandId::parse("drive/a", None, None).unwrap();
        let outside = StrandId::parse("hr/salaries", None, None).unwrap();
        assert!(c.needs_strand(Role::Read, &inside).is_ok());
        assert_eq!(
            c.needs_strand(Role::Read, &outside).unwrap_err().0.kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            c.needs(Role::Write).unwrap_err().0.kind(),
            ErrorKind::PermissionDenied
        );
        // Twice: the second answer comes from the remembered verdict.
        for _ in 0..2 {
            let admin = auth.authenticate(&bearer("correct horse")).await.unwrap();
            assert!(admin.needs(Role::Admin).is_ok());
        }
        for bad in [bearer("wrong"), bearer(&reader[1..]), HeaderMap::new()] {
            let e = auth.authenticate(&bad).await.unwrap_err();
            assert_eq!(e.0.kind(), ErrorKind::Unauthenticated);
            assert!(!e.0.to_string().contains(&reader), "{e:?}");
        }
    }

    #[test]
    fn bad_hashes_and_patterns_are_refused_naming_the_key() {
        let bad = |t: ApiToken| {
            ApiAuth::new(&ApiConfig {
                tokens: vec![t],
                ..ApiConfig::default()
            })
            .unwrap_err()
            .to_string()
        };
        let e = bad(token("a", "plain".into(), Role::Read, &[]));
        assert!(e.contains("api.tokens[0].hash: token a"), "{e}");
        let e = bad(token("a", "sha256:abcd".into(), Role::Read, &[]));
        assert!(e.contains("64 hex digits"), "{e}");
        let e = ApiAuth::new(&ApiConfig {
            remote_urls: vec!["ws://[".into()],
            ..ApiConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("api.remote_urls[0]"), "{e}");
    }

    #[test]
    fn an_open_api_answers_only_loopback_hosts_and_no_web_page() {
        let auth = ApiAuth::new(&ApiConfig::default()).unwrap();
        let h = |host: &str, origin: Option<&str>| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, host.parse().unwrap());
            if let Some(o) = origin {
                m.insert(header::ORIGIN, o.parse().unwrap());
            }
            m
        };
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "localhost",
        ] {
            assert!(auth.check_open_request(&h(ok, None)).is_ok(), "{ok}");
        }
        assert!(auth.check_open_request(&h("evil.test:8080", None)).is_err());
        let page = h("127.0.0.1:8080", Some("http://evil.test"));
        assert!(auth.check_open_request(&page).is_err());
    }

    #[test]
    fn remote_urls_are_off_by_default_and_matched_by_pattern() {
        let auth = ApiAuth::new(&ApiConfig::default()).unwrap();
        assert!(auth.check_remote_url("ws://127.0.0.1:1").is_err());
        let auth = ApiAuth::new(&ApiConfig {
            remote_urls: vec!["wss://*.example.com/**".into()],
            ..ApiConfig::default()
        })
        .unwrap();
        assert!(
            auth.check_remote_url("wss://a.example.com/v1/sync/ws")
                .is_ok()
        );
        // Another host dressed up as an allowed one.
        for sly in [
            "wss://attacker.test/.example.com/",
            "wss://attacker.test?.example.com/",
            "wss://a.example.com@attacker.test/x",
            "wss://attacker.test#.example.com/",
        ] {
            assert!(auth.check_remote_url(sly).is_err(), "{sly}");
        }
        let e = auth
            .check_remote_url("ws://user:secret@attacker.test:80/")
            .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
