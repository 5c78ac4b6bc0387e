//! A small client of a node's HTTP API, for the `doc` and `status` commands and the demo.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Talks to one node.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'@' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Client {
    /// A client of the node at `base` (`http://host:port`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Client::with_token(base, None)
    }

    /// A client of the node at `base` that presents `token` (an `[[api.tokens]]` token) with
    /// every request.
    pub fn with_token(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("the token is not valid in an HTTP header")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    async fn check(resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let body: Value = if status == reqwest::StatusCode::NO_CONTENT {
            Value::Null
        } else {
            resp.json().await.context("the node's answer is not JSON")?
        };
        if !status.is_success() {
            let msg = body["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string());
            bail!("the node answered {status}: {msg}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        Client::check(resp).await
    }

    /// Submits actions (`(type, input)`) to a document.
    pub async fn apply(
        &self,
        doc: &str,
        scope: Option<&str>,
        branch: Option<&str>,
        actions: &[(String, Value)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}/v1/documents/{}/actions", self.base, encode_segment(doc));
        let body = json!({
            "scope": scope,
            "branch": branch,
            "actions": actions.iter().map(|(t, i)| json!({"type": t, "input": i})).collect::<Vec<_>>(),
        });
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        Client::check(resp).await
    }

    /// A document's state.
    pub async fn document(
        &self,
        doc: &str,
        scope: Option<&str>,
        branch: Option<&str>,
        operations: bool,
    ) -> anyhow::Result<Value> {
        let mut q = vec![format!("operations={operations}")];
        if let Some(s) = scope {
            q.push(format!("scope={}", encode_segment(s)));
        }
        if let Some(b) = branch {
            q.push(format!("branch={}", encode_segment(b)));
        }
        self.get(&format!(
            "/v1/documents/{}?{}",
            encode_segment(doc),
            q.join("&")
        ))
        .await
    }

    /// The sync status.
    pub async fn status(&self) -> anyhow::Result<Value> {
        self.get("/v1/sync/status").await
    }

    /// `/healthz`.
    pub async fn health(&self) -> anyhow::Result<Value> {
        self.get("/healthz").await
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        if !resp.status().is_success() {
            bail!("the node answered {} for /metrics", resp.status());
        }
        Ok(resp.text().await?)
    }
}
