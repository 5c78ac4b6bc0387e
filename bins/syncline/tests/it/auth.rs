//! The application API's authentication, tried on a real node process as a client would: no
//! token, a wrong one, a revoked one, each role inside and outside its documents, and what a
//! refusal shows.

use std::io::Write;
use std::process::Stdio;

use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::support::{NodeProc, free_port, syncline};

/// `syncline token new`: the token and its configuration hash, read off what it prints.
fn new_token() -> (String, String) {
    let out = syncline().args(["token", "new"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token in {text}"))
        .to_owned();
    let hash = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("hash = \""))
        .and_then(|h| h.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no hash in {text}"))
        .to_owned();
    (token, hash)
}

/// `syncline token hash` of a token a person chose, given on stdin.
fn argon2_of(token: &str) -> String {
    let mut child = syncline()
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

fn call(
    client: &Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Option<String>) {
    let mut req = match method {
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, resp.text().unwrap(), challenge)
}

/// Calls `check` every 100 ms for up to `secs` seconds until `done` holds of what it returned;
/// returns that, or panics with `what` and the last value.
fn eventually<T: std::fmt::Debug>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let v = check();
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {secs} s for {what}; last: {v:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// GETs `url` until its body satisfies `done`; returns the body.
fn get_until(
    c: &Client,
    url: &str,
    token: Option<&str>,
    secs: u64,
    done: impl Fn(&str) -> bool,
) -> String {
    eventually(
        url,
        secs,
        || call(c, "GET", url, token, None).1,
        |b| done(b),
    )
}

fn set(value: &str) -> Value {
    json!({"actions": [{"type": "set", "input": {"path": "/v", "value": value}}]})
}

fn config(name: &str, port: u16, tokens: &str) -> String {
    format!(
        r#"node_id = "{name}"
[listen]
http = "127.0.0.1:{port}"
[store]
kind = "memory"
[api]
open_metrics = false
remote_urls = ["ws://127.0.0.1:*/v1/sync/ws"]
{tokens}
"#
    )
}

#[test]
fn api_tokens_roles_and_documents_hold_on_a_real_node() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (admin, admin_hash) = new_token();
    let (reader, reader_hash) = new_token();
    let writer = "a pass phrase someone chose";
    let writer_hash = argon2_of(writer);
    let tokens = |with_reader: bool| {
        let mut t = format!(
            r#"[[api.tokens]]
name = "ops"
hash = "{admin_hash}"
role = "admin"
[[api.tokens]]
name = "app"
hash = "{writer_hash}"
role = "write"
documents = {{ document_ids = ["drive/**"] }}
"#
        );
        if with_reader {
            t.push_str(&format!(
                r#"[[api.tokens]]
name = "dashboard"
hash = "{reader_hash}"
role = "read"
documents = {{ document_ids = ["drive/**"] }}
"#
            ));
        }
        t
    };
    let port = free_port();
    let peer_port = free_port();
    let mut node = NodeProc::start(dir.path(), "a", port, &config("a", port, &tokens(true)));
    let _peer = NodeProc::start(
        dir.path(),
        "b",
        peer_port,
        &config("b", peer_port, &tokens(false)),
    );
    let base = node.http.clone();
    let c = Client::new();
    let doc = |d: &str| format!("{base}/v1/documents/{d}");
    let actions = |d: &str| format!("{base}/v1/documents/{d}/actions");

    // The secret document, written by the admin.
    let (s, b, _) = call(
        &c,
        "POST",
        &actions("hr%2Fpay"),
        Some(&admin),
        Some(set("SECRET-PAY")),
    );
    assert_eq!(s, 201, "{b}");

    // No token, a wrong one, one with a byte missing: 401 with a challenge, no content.
    for token in [None, Some("sl_wrong"), Some(&admin[1..])] {
        for (method, url) in [
            ("GET", doc("hr%2Fpay")),
            ("GET", format!("{base}/v1/documents")),
            ("POST", actions("drive%2Fa")),
            ("GET", format!("{base}/v1/remotes")),
            ("GET", format!("{base}/v1/sync/status")),
            ("GET", format!("{base}/metrics")),
        ] {
            let body = (method == "POST").then(|| set("x"));
            let (s, b, challenge) = call(&c, method, &url, token, body);
            assert_eq!(s, 401, "{method} {url} with {token:?}: {b}");
            assert!(challenge.is_some_and(|h| h.starts_with("Bearer")), "{url}");
            assert!(!b.contains("SECRET"), "{b}");
        }
    }

    // The writer: its documents, not the others, and no admin routes.
    let (s, b, _) = call(
        &c,
        "POST",
        &actions("drive%2Fa"),
        Some(writer),
        Some(set("hello")),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b, _) = call(
        &c,
        "POST",
        &actions("hr%2Fpay"),
        Some(writer),
        Some(set("overwrite")),
    );
    assert_eq!(s, 403, "{b}");
    assert!(!b.contains("SECRET"), "{b}");
    let (s, _, _) = call(&c, "GET", &format!("{base}/v1/remotes"), Some(writer), None);
    assert_eq!(s, 403);

    // The reader: reads its documents only, writes nothing.
    let (s, b, _) = call(&c, "GET", &doc("drive%2Fa"), Some(&reader), None);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("hello"), "{b}");
    for url in [doc("hr%2Fpay"), format!("{}/operations", doc("hr%2Fpay"))] {
        let (s, b, _) = call(&c, "GET", &url, Some(&reader), None);
        assert_eq!(s, 403, "{url}: {b}");
        assert!(!b.contains("SECRET"), "{b}");
    }
    let (s, b, _) = call(
        &c,
        "GET",
        &format!("{base}/v1/documents"),
        Some(&reader),
        None,
    );
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("drive/a") && !b.contains("hr/pay"), "{b}");
    let (s, _, _) = call(
        &c,
        "POST",
        &actions("drive%2Fa"),
        Some(&reader),
        Some(set("x")),
    );
    assert_eq!(s, 403);
    let (s, _, _) = call(&c, "GET", &format!("{base}/metrics"), Some(&reader), None);
    assert_eq!(s, 403, "metrics behind a token are for admins");

    // The admin: remotes only to the allowed URLs, and their credentials never come back.
    let remotes = format!("{base}/v1/remotes");
    let exfil = json!({"name": "exfil", "url": "ws://192.0.2.1:80/v1/sync/ws", "mode": "push"});
    let (s, b, _) = call(&c, "POST", &remotes, Some(&admin), Some(exfil));
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("api.remote_urls"), "{b}");
    let peer = json!({
        "name": "b",
        "url": format!("ws://127.0.0.1:{peer_port}/v1/sync/ws"),
        "mode": "push",
        "credentials": "tok-VERY-SECRET",
    });
    let (s, b, _) = call(&c, "POST", &remotes, Some(&admin), Some(peer));
    assert_eq!(s, 201, "{b}");
    for url in [
        remotes.clone(),
        format!("{remotes}/b"),
        format!("{base}/v1/sync/status"),
    ] {
        let (s, b, _) = call(&c, "GET", &url, Some(&admin), None);
        assert_eq!(s, 200, "{url}: {b}");
        assert!(!b.contains("VERY-SECRET"), "{url}: {b}");
    }
    let (s, b, _) = call(&c, "GET", &format!("{base}/metrics"), Some(&admin), None);
    assert_eq!(s, 200, "{b}");
    assert!(!b.contains("VERY-SECRET"));
    // Health stays open, for load balancers.
    let (s, _, _) = call(&c, "GET", &format!("{base}/healthz"), None, None);
    assert_eq!(s, 200);

    // Revoked: the reader's token is gone from the configuration after a restart.
    std::fs::write(&node.config, config("a", port, &tokens(false))).unwrap();
    node.restart();
    let (s, _, _) = call(&c, "GET", &doc("drive%2Fa"), Some(&reader), None);
    assert_eq!(s, 401, "a revoked token");
    let (s, _, _) = call(&c, "GET", &doc("drive%2Fa"), Some(writer), None);
    assert_eq!(s, 200, "the others still work");

    let log = node.log_text();
    for secret in [admin.as_str(), reader.as_str(), writer, "VERY-SECRET"] {
        assert!(!log.contains(secret), "the log shows a secret: {log}");
    }
}

#[test]
fn an_api_without_tokens_stays_on_loopback_unless_told_otherwise() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let open = |extra: &str| {
        format!(
            "node_id = \"a\"\n[listen]\nhttp = \"0.0.0.0:{}\"\n[store]\nkind = \"memory\"\n{extra}",
            free_port()
        )
    };
    let file = dir.path().join("open.toml");
    std::fs::write(&file, open("")).unwrap();
    for args in [vec!["config", "check"], vec!["node", "--config"]] {
        let out = syncline().args(&args).arg(&file).output().unwrap();
        assert!(
            !out.status.success(),
            "{args:?} accepted an open API on 0.0.0.0"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("listen.http")
                && err.contains("api.tokens")
                && err.contains("api.allow_unauthenticated"),
            "{args:?}: {err}"
        );
    }
    std::fs::write(&file, open("[api]\nallow_unauthenticated = true\n")).unwrap();
    let out = syncline()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // On loopback it starts, and says that anyone who reaches it may use it.
    let port = free_port();
    let toml = format!(
        "node_id = \"a\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n[store]\nkind = \"memory\"\n"
    );
    let node = NodeProc::start(dir.path(), "a", port, &toml);
    let log = node.log_text();
    assert!(log.contains("the application API has no tokens"), "{log}");
    // Web pages cannot reach it: not by pointing their own name at 127.0.0.1 (DNS
    // rebinding), not with a request that says which page sent it.
    let docs = format!("{}/v1/documents", node.http);
    let c = Client::new();
    for (header, value) in [("host", "evil.test"), ("origin", "http://evil.test")] {
        let r = c.get(&docs).header(header, value).send().unwrap();
        assert_eq!(r.status().as_u16(), 403, "{header}: {value}");
    }
    assert_eq!(c.get(&docs).send().unwrap().status().as_u16(), 200);
    // And it still adds no remote through the API without api.remote_urls.
    let body = json!({"name": "x", "url": "ws://127.0.0.1:9/v1/sync/ws", "mode": "push"});
    let (s, b, _) = call(
        &c,
        "POST",
        &format!("{}/v1/remotes", node.http),
        None,
        Some(body),
    );
    assert_eq!(s, 403, "{b}");
}

#[test]
fn a_sync_listener_of_its_own_serves_sync_only_and_the_api_listener_the_api_only() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (api_port, sync_port, b_port) = (free_port(), free_port(), free_port());
    let a = NodeProc::start(
        dir.path(),
        "a",
        api_port,
        &format!(
            "node_id = \"a\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{api_port}\"\n\
             sync = \"127.0.0.1:{sync_port}\"\n"
        ),
    );
    // b pulls from a's sync listener.
    let b = NodeProc::start(
        dir.path(),
        "b",
        b_port,
        &format!(
            "node_id = \"b\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{b_port}\"\n\
             [[remotes]]\nname = \"a\"\nurl = \"ws://127.0.0.1:{sync_port}/v1/sync/ws\"\nmode = \"pull\"\n"
        ),
    );
    let c = Client::new();
    let (s, b_, _) = call(
        &c,
        "POST",
        &format!("{}/v1/documents/d/actions", a.http),
        None,
        Some(set("over sync")),
    );
    assert_eq!(s, 201, "{b_}");
    let sync = format!("http://127.0.0.1:{sync_port}");
    for url in [
        format!("{sync}/v1/documents/d"),
        format!("{sync}/v1/remotes"),
        format!("{sync}/metrics"),
    ] {
        let (s, body, _) = call(&c, "GET", &url, None, None);
        assert_eq!(s, 404, "{url}: {body}");
        assert!(
            body.contains("listen.sync") && !body.contains("over sync"),
            "{body}"
        );
    }
    let (s, _, _) = call(&c, "GET", &format!("{sync}/healthz"), None, None);
    assert_eq!(s, 200);
    // The API's listener has no sync endpoints.
    let (s, body, _) = call(
        &c,
        "POST",
        &format!("{}/v1/sync/hello", a.http),
        None,
        Some(json!({})),
    );
    assert_eq!(s, 404, "{body}");
    get_until(&c, &format!("{}/v1/documents/d", b.http), None, 20, |b| {
        b.contains("over sync")
    });
}

#[test]
fn rate_limits_answer_429_with_retry_after_and_a_limited_peer_still_converges() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (t1, h1) = new_token();
    let (t2, h2) = new_token();
    let (pa, pb) = (free_port(), free_port());
    let a = NodeProc::start(
        dir.path(),
        "a",
        pa,
        &format!(
            "node_id = \"a\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{pa}\"\n\
             sync_rate_per_address = {{ per_second = 5, burst = 5 }}\n\
             [api]\nrate_per_token = {{ per_second = 1, burst = 5 }}\n\
             [[api.tokens]]\nname = \"one\"\nhash = \"{h1}\"\nrole = \"admin\"\n\
             [[api.tokens]]\nname = \"two\"\nhash = \"{h2}\"\nrole = \"admin\"\n"
        ),
    );
    let c = Client::new();
    let docs = format!("{}/v1/documents", a.http);
    for i in 0..5 {
        let (s, b, _) = call(&c, "GET", &docs, Some(&t1), None);
        assert_eq!(s, 200, "request {i}: {b}");
    }
    let resp = c.get(&docs).bearer_auth(&t1).send().unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 1, "{after}");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["kind"], "backpressure", "{body}");
    let (s, _, _) = call(&c, "GET", &docs, Some(&t2), None);
    assert_eq!(s, 200, "another token has its own budget");

    // b pushes to a over HTTP faster than a lets one address make sync requests: a answers
    // 429, b backs off and retries, and everything arrives.
    let b = NodeProc::start(
        dir.path(),
        "b",
        pb,
        &format!(
            "node_id = \"b\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{pb}\"\n\
             [[remotes]]\nname = \"a\"\nurl = \"http://127.0.0.1:{pa}\"\nmode = \"push\"\n"
        ),
    );
    for i in 0..40 {
        let (s, body, _) = call(
            &c,
            "POST",
            &format!("{}/v1/documents/limited/actions", b.http),
            None,
            Some(
                json!({"actions": [{"type": "set", "input": {"path": format!("/k{i}"), "value": i}}]}),
            ),
        );
        assert_eq!(s, 201, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    get_until(&c, &format!("{docs}/limited"), Some(&t2), 60, |body| {
        serde_json::from_str::<Value>(body).unwrap_or_default()["revision"] == 40
    });
    let (_, status, _) = call(&c, "GET", &format!("{}/v1/remotes/a", b.http), None, None);
    assert!(
        status.contains("429"),
        "b's status shows no rate limiting: {status}"
    );
}

/// The `sha256:` hash of a token, as `token_hash` takes it.
fn sha256_of(token: &str) -> String {
    syncline::auth::sha256_hash(token)
}

#[test]
fn a_shared_token_claims_no_other_id_and_takes_no_peer_slot() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (hub, pb, pf, pm) = (free_port(), free_port(), free_port(), free_port());
    let hub_node = NodeProc::start(
        dir.path(),
        "hub",
        hub,
        &format!(
            "node_id = \"hub\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{hub}\"\n\
             [[permissions.rules]]\npeer = \"b\"\ntoken_hash = \"{}\"\n\
             [[permissions.rules]]\npeer = \"field-*\"\ntoken_hash = \"{}\"\n\
             [[remotes]]\nname = \"b\"\nurl = \"peer://b\"\nmode = \"push\"\n\
             [[remotes]]\nname = \"field-1\"\nurl = \"peer://field-1\"\nmode = \"push\"\n",
            sha256_of("b-token"),
            sha256_of("field-token"),
        ),
    );
    let c = Client::new();
    let (s, body, _) = call(
        &c,
        "POST",
        &format!("{}/v1/documents/secret/actions", hub_node.http),
        None,
        Some(set("for b only")),
    );
    assert_eq!(s, 201, "{body}");
    // Each dials the hub and only pushes: what it gets, it gets through its peer:// slot.
    let dialler = |name: &str, port: u16, token: &str| {
        NodeProc::start(
            dir.path(),
            name,
            port,
            &format!(
                "node_id = \"{name}\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n\
                 [[remotes]]\nname = \"hub\"\nurl = \"ws://127.0.0.1:{hub}/v1/sync/ws\"\nmode = \"push\"\n\
                 credentials = \"{token}\"\n"
            ),
        )
    };
    let b = dialler("b", pb, "b-token");
    let field = dialler("field-1", pf, "field-token");
    // Mallory holds the field token and claims to be b.
    let std_dir = dir.path().join("mallory");
    std::fs::create_dir_all(&std_dir).unwrap();
    let mallory = NodeProc::start(
        &std_dir,
        "b",
        pm,
        &format!(
            "node_id = \"b\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{pm}\"\n\
             [[remotes]]\nname = \"hub\"\nurl = \"ws://127.0.0.1:{hub}/v1/sync/ws\"\nmode = \"push\"\n\
             credentials = \"field-token\"\n"
        ),
    );
    let has_secret = |node: &NodeProc| {
        let (_, body, _) = call(
            &c,
            "GET",
            &format!("{}/v1/documents/secret", node.http),
            None,
            None,
        );
        body.contains("for b only")
    };
    get_until(
        &c,
        &format!("{}/v1/documents/secret", b.http),
        None,
        20,
        |body| body.contains("for b only"),
    );
    // Mallory's hello as b with another rule's token is refused, and says why.
    get_until(
        &c,
        &format!("{}/v1/remotes/hub", mallory.http),
        None,
        20,
        |s| s.contains("wrong token"),
    );
    // field-1 is let in (its rule covers field-*), but a shared token does not prove who it is:
    // it does not get the peer://field-1 slot.
    eventually(
        "the hub's log to say why",
        20,
        || hub_node.log_text(),
        |log| log.contains("cannot take the peer://field-1"),
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        !has_secret(&field),
        "field-1 took a slot its shared token does not prove"
    );
    assert!(!has_secret(&mallory), "mallory got b's document");
    let log = hub_node.log_text();
    assert!(
        !log.contains("b-token") && !log.contains("field-token"),
        "{log}"
    );
}

/// A self-signed certificate for localhost and 127.0.0.1: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// A client of an https:// node that trusts only `ca` (a PEM file).
fn https_client(ca: &std::path::Path) -> Client {
    let pem = std::fs::read(ca).unwrap();
    Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

#[test]
fn https_listeners_serve_peers_that_trust_them_and_reload_their_certificate() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &cert).unwrap();
    let (other, _) = self_signed();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &other).unwrap();
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let a = NodeProc::start_https(
        dir.path(),
        "a",
        pa,
        &format!(
            "node_id = \"a\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{pa}\"\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let trusting = https_client(&ca_path);
    let (s, body, _) = call(
        &trusting,
        "POST",
        &format!("{}/v1/documents/tls/actions", a.http),
        None,
        Some(set("over https")),
    );
    assert_eq!(s, 201, "{body}");
    // Plain HTTP on the TLS port gets no answer.
    assert!(
        !crate::support::reqwest::blocking_get(&format!("http://127.0.0.1:{pa}/healthz"))
            .unwrap_or(false),
        "plain HTTP was answered on a TLS listener"
    );
    // b trusts a's certificate and pulls over https://, d over wss://; c trusts another one and
    // is refused, and its status says it is the certificate.
    // e and f trust it node-wide ([transports.http] ca, [transports.websocket] ca).
    let puller = |name: &str, port: u16, url: String, extra: &str| {
        NodeProc::start(
            dir.path(),
            name,
            port,
            &format!(
                "node_id = \"{name}\"\n[store]\nkind = \"memory\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n\
                 {extra}[[remotes]]\nname = \"a\"\nurl = \"{url}\"\nmode = \"pull\"\n"
            ),
        )
    };
    let ca = ca_path.display();
    let b = puller("b", pb, format!("https://localhost:{pa}?ca={ca}"), "");
    let d = puller(
        "d",
        pd,
        format!("wss://localhost:{pa}/v1/sync/ws?ca={ca}"),
        "",
    );
    let c_node = puller(
        "c",
        pc,
        format!("https://localhost:{pa}?ca={}", other_ca.display()),
        "",
    );
    let e = puller(
        "e",
        free_port(),
        format!("https://localhost:{pa}"),
        &format!("[transports.http]\nca = \"{ca}\"\n"),
    );
    let f = puller(
        "f",
        free_port(),
        format!("wss://localhost:{pa}/v1/sync/ws"),
        &format!("[transports.websocket]\nca = \"{ca}\"\n"),
    );
    let plain = Client::new();
    for node in [&b, &d, &e, &f] {
        get_until(
            &plain,
            &format!("{}/v1/documents/tls", node.http),
            None,
            20,
            |b| b.contains("over https"),
        );
    }
    get_until(
        &plain,
        &format!("{}/v1/remotes/a", c_node.http),
        None,
        20,
        |s| s.to_lowercase().contains("certificate"),
    );
    let (_, body, _) = call(
        &plain,
        "GET",
        &format!("{}/v1/documents/tls", c_node.http),
        None,
        None,
    );
    assert!(!body.contains("over https"), "{body}");

    // A new certificate in the same files, then SIGHUP: new connections get it.
    let (cert2, key2) = self_signed();
    std::fs::write(&cert_path, &cert2).unwrap();
    std::fs::write(&key_path, &key2).unwrap();
    let ca2 = dir.path().join("ca2.pem");
    std::fs::write(&ca2, &cert2).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(
        "the new certificate to be served",
        20,
        || {
            https_client(&ca2)
                .get(format!("{}/healthz", a.http))
                .send()
                .is_ok()
        },
        |ok| *ok,
    );
    assert!(
        a.log_text().contains("TLS certificate reloaded"),
        "{}",
        a.log_tail(10)
    );
    assert!(
        https_client(&ca_path)
            .get(format!("{}/healthz", a.http))
            .send()
            .is_err(),
        "the old certificate is still served"
    );
}
