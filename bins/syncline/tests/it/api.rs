//! The application API of an in-process node.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use syncline::config::Config;
use syncline::node::Node;

async fn node(name: &str) -> Node {
    let mut c = Config {
        node_id: name.to_owned(),
        ..Config::default()
    };
    c.store.kind = "memory".into();
    c.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    c.api.remote_urls = vec!["**".into()];
    Node::start(c).await.unwrap()
}

async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        "PUT" => client.put(url),
        _ => client.get(url),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_remotes_status_and_errors() {
    let n = node("api").await;
    let base = format!("http://{}", n.http_addr);
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/documents/drive%2Fa/actions"),
        Some(json!({"actions": [
            {"type": "set", "input": {"path": "/title", "value": "hello"}},
            {"type": "increment", "input": {"path": "/n", "by": 2}},
            {"type": "push", "input": {"path": "/title", "value": 1}},
        ]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let ops = v["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 3);
    assert_eq!(ops[0]["ordinal"], 1);
    let (s, v) = call("GET", &format!("{base}/v1/documents/drive%2Fa"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["state"], json!({"title": "hello", "n": 2}));
    assert_eq!(v["revision"], 3);
    assert_eq!(v["errored"], 1);
    assert!(
        v["operations"][2]["error"]
            .as_str()
            .unwrap()
            .contains("cannot push")
    );
    let (_, v) = call(
        "GET",
        &format!("{base}/v1/documents/drive%2Fa/operations"),
        None,
    )
    .await;
    assert_eq!(v["operations"].as_array().unwrap().len(), 3);
    let (_, v) = call(
        "GET",
        &format!("{base}/v1/documents/drive%2Fa?scope=other&operations=false"),
        None,
    )
    .await;
    assert_eq!(v["revision"], 0);
    let (_, v) = call("GET", &format!("{base}/v1/documents"), None).await;
    assert_eq!(v["strands"][0]["strand"]["document_id"], "drive/a");

    // Errors are JSON with a kind and a fitting status.
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/documents/d/actions"),
        Some(json!({"actions": [{"type": "set", "input": {"path": "x"}}]})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["kind"], "invalid_input");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON Pointer")
    );
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/documents/d/actions"),
        Some(json!({"nope": 1})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["kind"], "invalid_input");
    let (s, v) = call("GET", &format!("{base}/v2/whatever"), None).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["kind"], "not_found");
    let (s, _) = call("GET", &format!("{base}/v1/documents/has%20space"), None).await;
    assert_eq!(s, 400);

    // Remotes at runtime.
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/remotes"),
        Some(json!({"name": "b", "url": "ws://127.0.0.1:1", "mode": "push"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "b");
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/remotes"),
        Some(json!({"name": "b", "url": "ws://127.0.0.1:1"})),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    let (_, v) = call("GET", &format!("{base}/v1/remotes"), None).await;
    assert_eq!(v["remotes"].as_array().unwrap().len(), 1);
    let (s, v) = call("GET", &format!("{base}/v1/remotes/b"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["outbox_lag"], 3);
    let (_, v) = call("GET", &format!("{base}/v1/sync/status"), None).await;
    assert_eq!(v["reactor_id"], "api");
    assert_eq!(v["remotes"][0]["name"], "b");
    let (s, _) = call("DELETE", &format!("{base}/v1/remotes/b"), None).await;
    assert_eq!(s, 204);
    let (s, _) = call("DELETE", &format!("{base}/v1/remotes/b"), None).await;
    assert_eq!(s, 404);
    let (_, v) = call("GET", &format!("{base}/v1/dead-letters"), None).await;
    assert_eq!(v["dead_letters"], json!([]));
    let (s, v) = call("GET", &format!("{base}/healthz"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["head"], 3);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let a = node("metrics-a").await;
    let b = node("metrics-b").await;
    a.reactor
        .sync()
        .add_remote(
            syncline_core::RemoteConfig::new("b", &format!("ws://{}", b.http_addr))
                .unwrap()
                .with_mode(syncline_core::SyncMode::PingPong),
        )
        .await
        .unwrap();
    let base = format!("http://{}", a.http_addr);
    call(
        "POST",
        &format!("{base}/v1/documents/m/actions"),
        Some(json!({"actions": [{"type": "increment", "input": {"path": "/n"}}]})),
    )
    .await;
    a.reactor
        .sync()
        .wait_for_sync("b", std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "syncline_ops_submitted_total",
        "syncline_ops_pushed_total",
        "syncline_ops_pulled_total",
        "syncline_batches_total",
        "syncline_bytes_total",
        "syncline_frame_bytes_total{direction=\"out\"}",
        "syncline_frames_total{direction=\"in\"}",
        "syncline_queue_depth_jobs",
        "syncline_outbox_lag_ops",
        "syncline_pull_interval_seconds",
        "syncline_push_duration_seconds_bucket",
        "syncline_scheduler_interval_seconds",
    ] {
        assert!(text.contains(name), "{name} is missing:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (./scripts/test installs the prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Gauges computed from the status, and the build.
    for name in [
        "syncline_dead_letters{remote=\"b\"} 0",
        "syncline_remote_last_success_timestamp_seconds{remote=\"b\"}",
        "syncline_build_info{version=",
        "syncline_remote_connected{remote=\"b\"} 1",
    ] {
        assert!(text.contains(name), "{name} is missing:\n{text}");
    }
    let b_text = reqwest::get(format!("http://{}/metrics", b.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        b_text.contains("syncline_listener_lag_ops{peer=\"metrics-a\"} "),
        "{b_text}"
    );
    // Every metric the dashboard in docs/ plots is one the node exports.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/grafana/syncline-node.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    text.contains(&format!("# TYPE {base} ")),
                    "panel {:?} plots {name}, which the node does not export",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} metrics in the dashboard");
    // A removed remote's series leave /metrics.
    a.reactor.sync().remove_remote("b").await.unwrap();
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("remote=\"b\""),
        "series of the removed remote remain:\n{}",
        text.lines()
            .filter(|l| l.contains("remote=\"b\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Every error the API gives is its JSON error, whatever went wrong: a wrong method, a bad query
/// string, invalid UTF-8 or a path-like document id, a remote pointing at the node itself; and
/// long operation lists come in pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_edges_answer_with_the_json_error() {
    let n = node("edges").await;
    let base = format!("http://{}", n.http_addr);
    let kind = |v: &Value| v["error"]["kind"].as_str().unwrap_or_default().to_owned();
    let (status, v) = call("PUT", &format!("{base}/v1/documents"), None).await;
    assert_eq!((status, kind(&v).as_str()), (405, "unsupported"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("PUT"),
        "{v}"
    );
    let (status, v) = call(
        "GET",
        &format!("{base}/v1/documents/x?operations=maybe"),
        None,
    )
    .await;
    assert_eq!((status, kind(&v).as_str()), (400, "invalid_input"), "{v}");
    let (status, v) = call("GET", &format!("{base}/v1/documents/x?nonsense=1"), None).await;
    assert_eq!((status, kind(&v).as_str()), (400, "invalid_input"), "{v}");
    let (status, v) = call("GET", &format!("{base}/v1/documents/%FF%FE"), None).await;
    assert_eq!((status, kind(&v).as_str()), (400, "invalid_input"), "{v}");
    // Sent as they are (an HTTP client would normalise `%2E` segments away).
    for bad in [
        "%2E",
        "%2E%2E",
        "%2F",
        "a%2F",
        "a%2F%2Fb",
        "%2F..%2F..%2Fetc%2Fpasswd",
    ] {
        let body = r#"{"actions": [{"type": "set", "input": {"path": "/a", "value": 1}}]}"#;
        let (status, v) = raw(
            n.http_addr,
            &format!(
                "POST /v1/documents/{bad}/actions HTTP/1.1\r\nHost: localhost\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert_eq!(
            (status, kind(&v).as_str()),
            (400, "invalid_input"),
            "{bad}: {v}"
        );
        let (status, v) = raw(
            n.http_addr,
            &format!(
                "GET /v1/documents/{bad} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(
            (status, kind(&v).as_str()),
            (400, "invalid_input"),
            "{bad}: {v}"
        );
    }
    let (status, v) = call(
        "POST",
        &format!("{base}/v1/remotes"),
        Some(json!({"name": "me", "url": format!("ws://localhost:{}", n.http_addr.port())})),
    )
    .await;
    assert_eq!((status, kind(&v).as_str()), (400, "invalid_input"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("own listener"),
        "{v}"
    );
    // Pages of operations.
    for _ in 0..5 {
        let (status, _) = call(
            "POST",
            &format!("{base}/v1/documents/paged/actions"),
            Some(json!({"actions": [{"type": "increment", "input": {"path": "/n"}}]})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (_, v) = call("GET", &format!("{base}/v1/documents/paged?limit=2"), None).await;
    assert_eq!(v["operations"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        (v["operations_total"].as_u64(), v["next_offset"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(v["state"]["n"], 5, "the state is whole whatever the page");
    let (_, v) = call(
        "GET",
        &format!("{base}/v1/documents/paged/operations?offset=4"),
        None,
    )
    .await;
    assert_eq!(v["operations"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["next_offset"].is_null(), "{v}");
    n.shutdown().await;
}

/// Sends `request` as it is and reads the answer: its status and JSON body.
async fn raw(addr: SocketAddr, request: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(answer.clone())),
    )
}

/// The `syncline_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("syncline_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

/// What an operator sees of the edges through the API: an action over the limit answers 413
/// naming the limit, as does a body over the frame limit; an operation the authority refused is
/// listed with who refused it and why, left out of the state, and the remote is not in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_refusals_through_the_api() {
    let mut cb = Config {
        node_id: "auth".to_owned(),
        ..Config::default()
    };
    cb.store.kind = "memory".into();
    cb.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    cb.permissions.rules = vec![syncline_core::PeerRule {
        peer: "writer".into(),
        token: None,
        token_hash: None,
        read: syncline_core::Filter::all(),
        write: syncline_core::Filter::documents(["inbox/*"]),
    }];
    let b = Node::start(cb).await.unwrap();
    let mut ca = Config {
        node_id: "writer".to_owned(),
        ..Config::default()
    };
    ca.store.kind = "memory".into();
    ca.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    ca.sync.max_action_bytes = 4096;
    ca.sync.max_frame_bytes = 64 << 10;
    let mut r = syncline_core::RemoteConfig::new("auth", &format!("ws://{}", b.http_addr))
        .unwrap()
        .with_mode(syncline_core::SyncMode::Push);
    r.authority = Some(syncline_core::Filter::documents(["private/*"]));
    ca.remotes = vec![r];
    let a = Node::start(ca).await.unwrap();
    let base = format!("http://{}", a.http_addr);

    let (s, v) = call(
        "POST",
        &format!("{base}/v1/documents/inbox%2Fbig/actions"),
        Some(json!({"actions": [{"type": "set", "input": {"path": "/x", "value": "x".repeat(5000)}}]})),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["kind"], "too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sync.max_action_bytes"),
        "{v}"
    );
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/documents/inbox%2Fbig/actions"),
        Some(json!({"actions": (0..40).map(|_| json!({"type": "set", "input": {"path": "/x", "value": "x".repeat(2000)}})).collect::<Vec<_>>()})),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sync.max_frame_bytes"),
        "{v}"
    );

    for doc in ["inbox%2Fok", "private%2Fno"] {
        let (s, v) = call(
            "POST",
            &format!("{base}/v1/documents/{doc}/actions"),
            Some(json!({"actions": [{"type": "set", "input": {"path": "/v", "value": 1}}]})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        let (_, v) = call("GET", &format!("{base}/v1/documents/private%2Fno"), None).await;
        if v["operations"][0]["refused"].is_array() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "never refused: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(refused["state"], json!({}), "{refused}");
    assert_eq!(refused["revision"], 0);
    let op = &refused["operations"][0];
    assert_eq!(op["excluded"], true, "{op}");
    assert_eq!(op["refused"][0]["by"], "auth", "{op}");
    assert_eq!(op["refused"][0]["kind"], "permission_denied", "{op}");
    let (_, v) = call(
        "GET",
        &format!("http://{}/v1/documents/inbox%2Fok", b.http_addr),
        None,
    )
    .await;
    assert_eq!(v["state"], json!({"v": 1}));
    let (_, v) = call("GET", &format!("{base}/v1/sync/status"), None).await;
    assert_eq!(v["remotes"][0]["in_sync"], false, "{v}");
    assert_eq!(v["remotes"][0]["dead_letters"], 1, "{v}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Over HTTP a sync session is named by a token the server draws and sends as the
/// `syncline-session` header of the welcome: 128 random bits, different for every hello, and
/// not the protocol session id inside the welcome (which the transport never reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sync_sessions_are_named_by_server_tokens() {
    use syncline::core::protocol::{Body, Codec, Envelope, PROTOCOL_VERSION, Request, Response};
    let n = node("tokens").await;
    let base = format!("http://{}/v1/sync", n.http_addr);
    let client = reqwest::Client::new();
    let frame = |id: u64, request: Request| {
        Codec::Json
            .encode(&Envelope {
                v: PROTOCOL_VERSION,
                id,
                body: Body::Request(request),
            })
            .unwrap()
    };
    let hello = || {
        frame(
            1,
            Request::Hello(syncline::core::protocol::Hello {
                reactor_id: syncline::core::ReactorId::new("caller").unwrap(),
                protocol: PROTOCOL_VERSION,
                credentials: None,
                capabilities: Vec::new(),
            }),
        )
    };
    let post = |path: &str, token: Option<&str>, body: Vec<u8>| {
        let mut r = client
            .post(format!("{base}/{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.header("syncline-session", t);
        }
        r.send()
    };
    let mut tokens = Vec::new();
    let mut welcome_session = String::new();
    for _ in 0..2 {
        let r = post("hello", None, hello()).await.unwrap();
        assert_eq!(r.status(), 200);
        let token = r.headers()["syncline-session"].to_str().unwrap().to_owned();
        assert_eq!(token.len(), 32, "{token}");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        let env = Codec::decode(&r.bytes().await.unwrap()).unwrap();
        let Body::Response(Response::Welcome(w)) = env.body else {
            panic!("not a welcome: {env:?}")
        };
        assert_ne!(w.session, token);
        welcome_session = w.session;
        tokens.push(token);
    }
    assert_ne!(tokens[0], tokens[1], "every hello draws a new token");
    let directory = || {
        frame(
            2,
            Request::Directory(syncline::core::protocol::Directory {
                filter: Default::default(),
            }),
        )
    };
    // The token opens the session; the welcome's own id, or no header, does not.
    let ok = post("directory", Some(&tokens[1]), directory())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    let wrong = post("directory", Some(&welcome_session), directory())
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let none = post("directory", None, directory()).await.unwrap();
    assert_eq!(none.status(), 401);
    n.shutdown().await;
}
