//! Resource soak: a node process is hammered from outside (thousands of QUIC, WebSocket, HTTP
//! and bare TCP connections that say hello and go, hundreds of listeners registered and
//! dropped, repeated requeues) while a legitimate peer keeps syncing with it; afterwards its
//! RSS and open file descriptors must be back within a small bound of where they started.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncline::core::protocol::{
    Body, Codec, Envelope, Hello, PROTOCOL_VERSION, Register, Request, Response,
};
use syncline::core::{Filter, Link, Ordinal, ReactorId, Transport};

use crate::support::{NodeProc, free_port, free_udp_port, get_json};

/// RSS in KiB and open file descriptors of a process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    pub(crate) rss_kib: u64,
    pub(crate) fds: usize,
}

pub(crate) fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    Usage { rss_kib, fds }
}

fn frame(id: u64, request: Request) -> bytes::Bytes {
    bytes::Bytes::from(
        Codec::Binary
            .encode(&Envelope {
                v: PROTOCOL_VERSION,
                id,
                body: Body::Request(request),
            })
            .unwrap(),
    )
}

fn hello_request(who: &str) -> Request {
    Request::Hello(Hello {
        reactor_id: ReactorId::new(who).unwrap(),
        protocol: PROTOCOL_VERSION,
        credentials: None,
        capabilities: vec![],
    })
}

/// Sends `request` and waits for the answer to it.
async fn ask(link: &mut Link, id: u64, request: Request) -> Response {
    link.sender.send(frame(id, request)).await.unwrap();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(10), link.receiver.recv())
            .await
            .expect("an answer within 10 s")
            .expect("the link stays open")
            .expect("a frame");
        let env = Codec::decode(&got).unwrap();
        if env.id != id {
            continue;
        }
        match env.body {
            Body::Response(r) => return r,
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// One visitor: connects, says hello, optionally registers a listener, and goes.
async fn visit(transport: &dyn Transport, url: &url::Url, who: &str, register: bool) {
    let mut link = transport.connect(url).await.unwrap();
    let r = ask(&mut link, 1, hello_request(who)).await;
    assert!(matches!(r, Response::Welcome(_)), "{r:?}");
    if register {
        let r = ask(
            &mut link,
            2,
            Request::Register(Register {
                filter: Filter::documents(["soak/*"]),
                since: Ordinal::ZERO,
            }),
        )
        .await;
        assert!(matches!(r, Response::Registered(_)), "{r:?}");
    }
    link.sender.close();
}

/// `rounds` visits, `parallel` at a time, each under its own reactor id.
async fn churn(
    transport: Arc<dyn Transport>,
    url: &str,
    what: &str,
    rounds: usize,
    parallel: usize,
    register_every: usize,
) {
    let url = url::Url::parse(url).unwrap();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (transport, url, next, what) = (
            transport.clone(),
            url.clone(),
            next.clone(),
            what.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= rounds {
                    break;
                }
                let who = format!("soak-{what}-{}", i % 500);
                visit(&*transport, &url, &who, i.is_multiple_of(register_every)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "soak: {rounds} {what} visits in {} ms",
        started.elapsed().as_millis()
    );
}

/// Bare TCP connections that connect and close at once, and some that send half a request.
async fn tcp_churn(addr: &str, rounds: usize) {
    use tokio::io::AsyncWriteExt;
    for i in 0..rounds {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                .await;
        }
        drop(s);
    }
}

/// Adds remotes of every transport to `node` (pointing at QUIC port `qa` and HTTP port `pa`)
/// and deletes each again soon after.
fn cycle_remotes(client: &reqwest::blocking::Client, node: &str, qa: u16, pa: u16, n: usize) {
    for i in 0..n {
        let url = match i % 3 {
            0 => format!("quic://127.0.0.1:{qa}?insecure=true"),
            1 => format!("ws://127.0.0.1:{pa}"),
            _ => format!("http://127.0.0.1:{pa}"),
        };
        let name = format!("cycle{i}");
        let s = post_json(
            client,
            &format!("{node}/v1/remotes"),
            &json!({"name": name, "url": url, "mode": "pull"}),
        );
        assert_eq!(s, 201, "adding {url}");
        std::thread::sleep(Duration::from_millis(30));
        let s = client
            .delete(format!("{node}/v1/remotes/{name}"))
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert!(matches!(s, 200 | 204), "deleting {name}: {s}");
    }
}

fn post_json(client: &reqwest::blocking::Client, url: &str, body: &Value) -> u16 {
    client
        .post(url)
        .json(body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Node `a` on the memory store, listening on HTTP port `pa` and QUIC port `qa`; `rest` goes on
/// inside `[listen]`.
fn listener_config(dir: &std::path::Path, pa: u16, qa: u16, rest: &str) -> String {
    format!(
        "node_id = \"a\"\ndata_dir = \"{d}\"\n[store]\nkind = \"memory\"\n\
         [api]\nremote_urls = [\"**\"]\n\
         [listen]\nhttp = \"127.0.0.1:{pa}\"\nquic = \"127.0.0.1:{qa}\"\n{rest}",
        d = dir.display()
    )
}

#[test]
fn connections_listeners_and_requeues_leave_no_trace() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (pa, qa, pb) = (free_port(), free_udp_port(), free_port());
    let a = NodeProc::start(
        dir.path(),
        "a",
        pa,
        &listener_config(
            dir.path(),
            pa,
            qa,
            &format!(
                "http_session_idle = 2000\n[sync]\nmax_listeners = 300\n\
                 [[remotes]]\nname = \"b\"\nurl = \"ws://127.0.0.1:{pb}\"\nmode = \"push\"\n"
            ),
        ),
    );
    // b takes a's live documents but refuses `forbidden/*`: a keeps a dead letter to requeue.
    let b = NodeProc::start(
        dir.path(),
        "b",
        pb,
        &format!(
            "node_id = \"b\"\ndata_dir = \"{d}\"\n[store]\nkind = \"memory\"\n\
             [api]\nremote_urls = [\"**\"]\n\
             [listen]\nhttp = \"127.0.0.1:{pb}\"\n\
             [[permissions.rules]]\npeer = \"a\"\nwrite = {{ document_ids = [\"live/*\"] }}\n\
             read = {{ document_ids = [\"live/*\"] }}\n",
            d = dir.path().display()
        ),
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The legitimate traffic: a writes a marker every 50 ms for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, client, node) = (
            stop.clone(),
            written.clone(),
            client.clone(),
            a.http.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let s = post_json(
                    &client,
                    &format!("{node}/v1/documents/live%2Fmarkers/actions"),
                    &json!({"actions": [{"type": "increment", "input": {"path": "/n", "by": 1}}]}),
                );
                assert_eq!(s, 201);
                written.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let held_by_b = |client: &reqwest::blocking::Client| -> u64 {
        get_json(
            client,
            &format!("{}/v1/documents/live%2Fmarkers?operations=false", b.http),
        )
        .and_then(|v| v["state"]["n"].as_u64())
        .unwrap_or(0)
    };
    // A refused write, for the requeues.
    assert_eq!(
        post_json(
            &client,
            &format!("{}/v1/documents/forbidden%2Fx/actions", a.http),
            &json!({"actions": [{"type": "set", "input": {"path": "/a", "value": 1}}]}),
        ),
        201
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let quic: Arc<dyn Transport> = Arc::new(syncline::transport_quic::QuicTransport::new(
        syncline::transport_quic::QuicOptions {
            insecure: true,
            ..Default::default()
        },
    ));
    let ws: Arc<dyn Transport> = Arc::new(syncline::transport_websocket::WsTransport::new(
        Default::default(),
    ));
    let http: Arc<dyn Transport> =
        Arc::new(syncline::transport_http::HttpTransport::new(Duration::from_secs(10)).unwrap());
    let (quic_url, ws_url, http_url) = (
        format!("quic://127.0.0.1:{qa}"),
        format!("ws://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pa}"),
    );
    let tcp_addr = format!("127.0.0.1:{pa}");
    let pid = a.pid();
    let round = |n: usize| {
        rt.block_on(async {
            let u0 = usage(pid);
            churn(quic.clone(), &quic_url, "quic", n, 8, 5).await;
            let u1 = usage(pid);
            churn(ws.clone(), &ws_url, "ws", n, 8, 5).await;
            let u2 = usage(pid);
            churn(http.clone(), &http_url, "http", n, 8, 5).await;
            let u3 = usage(pid);
            tcp_churn(&tcp_addr, n / 2).await;
            let u4 = usage(pid);
            eprintln!(
                "soak: RSS growth (KiB): quic {}, ws {}, http {}, tcp {}",
                u1.rss_kib as i64 - u0.rss_kib as i64,
                u2.rss_kib as i64 - u1.rss_kib as i64,
                u3.rss_kib as i64 - u2.rss_kib as i64,
                u4.rss_kib as i64 - u3.rss_kib as i64
            );
        })
    };

    // Warm up (thread pools, allocator arenas, the first of every kind), then measure.
    round(200);
    cycle_remotes(&client, &b.http, qa, pa, 6);
    std::thread::sleep(Duration::from_secs(1));
    let before = usage(a.pid());
    let b_start = usage(b.pid());
    let b_before = held_by_b(&client);
    let started = Instant::now();
    for _ in 0..3 {
        round(600);
        // Requeue the refused letter again and again; b refuses it every time.
        for _ in 0..20 {
            let letters = get_json(&client, &format!("{}/v1/dead-letters", a.http)).unwrap();
            if let Some(id) = letters["dead_letters"][0]["id"].as_str() {
                let s = client
                    .post(format!("{}/v1/dead-letters/{id}/requeue", a.http))
                    .send()
                    .unwrap()
                    .status()
                    .as_u16();
                assert!(matches!(s, 202 | 409 | 404), "requeue answered {s}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // On b: remotes of every transport added and deleted again.
        let b_now = usage(b.pid());
        cycle_remotes(&client, &b.http, qa, pa, 60);
        eprintln!(
            "soak: b after 60 remote cycles: {:?} (before {b_now:?})",
            usage(b.pid())
        );
        let now = usage(a.pid());
        eprintln!("soak: after a round: {now:?} (before {before:?})");
    }
    eprintln!("soak: churn took {} ms", started.elapsed().as_millis());
    // The legitimate peer kept syncing throughout.
    let b_during = held_by_b(&client);
    assert!(
        b_during > b_before,
        "b stopped receiving a's writes during the churn ({b_before} -> {b_during})"
    );
    // Let closed connections and idle HTTP sessions (2 s) be reaped, then compare.
    std::thread::sleep(Duration::from_secs(4));
    let after = usage(a.pid());
    eprintln!("soak: before {before:?}, after {after:?}");
    let metrics = client
        .get(format!("{}/metrics", a.http))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("syncline_sessions") || l.starts_with("syncline_listeners"))
    {
        eprintln!("soak: {l}");
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held_by_b(&client) < written.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "b did not catch up with a");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Listeners registered by visitors are replaced, not accumulated.
    let status = get_json(&client, &format!("{}/v1/sync/status", a.http)).unwrap();
    let listeners = status["listeners"].as_array().map_or(0, Vec::len);
    eprintln!("soak: {listeners} listeners");
    assert!(
        listeners <= 300,
        "{listeners} listeners kept after the visitors left (sync.max_listeners = 300)"
    );
    let b_after = usage(b.pid());
    eprintln!("soak: b before {b_start:?}, after {b_after:?}");
    assert!(
        b_after.rss_kib <= b_start.rss_kib + 8 * 1024 && b_after.fds <= b_start.fds + 4,
        "remotes added and deleted left b at {b_after:?} (from {b_start:?})"
    );
    assert!(
        after.rss_kib <= before.rss_kib + 8 * 1024,
        "RSS grew from {} to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    assert!(
        after.fds <= before.fds + 4,
        "open file descriptors grew from {} to {}",
        before.fds,
        after.fds
    );
    drop(b);
}

/// A TCP connection to `to` from `from` (another loopback address, so it counts as another
/// client).
async fn tcp_from(from: &str, to: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to.parse().unwrap()).await
}

/// Whether the server closed `s` (EOF or reset) within `within`; what it said before.
async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let mut said = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (false, String::from_utf8_lossy(&said).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&said).into_owned()),
            Ok(Ok(n)) => said.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn idle_slow_and_silent_clients_are_cut_off_and_the_api_stays_reachable() {
    syncline::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (pa, qa) = (free_port(), free_udp_port());
    // 256 descriptors: the node lowers listen.max_connections to fit (192) and one address
    // to half of that (96).
    let a = NodeProc::start_limited(
        dir.path(),
        "a",
        pa,
        &listener_config(
            dir.path(),
            pa,
            qa,
            // Long enough that every hostile socket is open before the first is timed out,
            // however loaded the machine.
            "header_timeout = 3000\n[sync]\nhello_timeout = 1000\n",
        ),
        256,
    );
    let log = a.log_text();
    assert!(
        log.contains("listen.max_connections lowered from 8192 to 192"),
        "{log}"
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = usage(a.pid());
    let addr = format!("127.0.0.1:{pa}");

    // 372 idle sockets and 100 half-sent requests from another address.
    let (mut idle, mut half) = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut idle = Vec::new();
        for _ in 0..372 {
            idle.push(tcp_from("127.0.0.2", &addr).await.unwrap());
        }
        let mut half = Vec::new();
        for _ in 0..100 {
            let mut s = tcp_from("127.0.0.2", &addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                .await
                .unwrap();
            half.push(s);
        }
        (idle, half)
    });
    // The node stays reachable for everyone else, its API included.
    let started = Instant::now();
    let health = client.get(format!("{}/healthz", a.http)).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    eprintln!(
        "soak: /healthz answered in {} ms with 472 hostile sockets",
        started.elapsed().as_millis()
    );
    let metrics = client
        .get(format!("{}/metrics", a.http))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("syncline_connections_refused_total{")
                && l.contains("listener=\"http\"")
                && l.contains("reason=\"per_address\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        refused >= 372.0 + 100.0 - 96.0,
        "{refused} refused: {metrics}"
    );

    // Every one of them is closed by the node: refused at once with a 503, or after the
    // header timeout.
    rt.block_on(async {
        let mut refused_503 = 0;
        for s in idle.iter_mut().chain(half.iter_mut()) {
            let (closed, said) = closed_by_server(s, Duration::from_secs(8)).await;
            assert!(closed, "a hostile socket is still open after 8 s");
            if said.starts_with("HTTP/1.1 503") {
                assert!(
                    said.contains("listen.max_connections_per_address"),
                    "{said}"
                );
                refused_503 += 1;
            }
        }
        assert!(refused_503 >= 372 + 100 - 96, "{refused_503} answered 503");
    });
    drop((idle, half));

    // A body that stops arriving fails its request after the header timeout.
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut s = tcp_from("127.0.0.3", &addr).await.unwrap();
        s.write_all(
            b"POST /v1/documents/slow/actions HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"actions\"",
        )
        .await
        .unwrap();
        let started = Instant::now();
        let (closed, said) = closed_by_server(&mut s, Duration::from_secs(8)).await;
        assert!(closed, "a stalled body kept its connection: {said}");
        assert!(said.starts_with("HTTP/1.1 400"), "{said}");
        assert!(said.contains("\"error\""), "{said}");
        eprintln!(
            "soak: a stalled body failed after {} ms",
            started.elapsed().as_millis()
        );
    });

    // WebSockets and QUIC connections that never say hello are closed after hello_timeout.
    rt.block_on(async {
        let ws = syncline::transport_websocket::WsTransport::new(Default::default());
        let quic =
            syncline::transport_quic::QuicTransport::new(syncline::transport_quic::QuicOptions {
                insecure: true,
                ..Default::default()
            });
        let mut links = Vec::new();
        for _ in 0..50 {
            links.push(
                ws.connect(&url::Url::parse(&format!("ws://127.0.0.1:{pa}")).unwrap())
                    .await
                    .unwrap(),
            );
            links.push(
                quic.connect(&url::Url::parse(&format!("quic://127.0.0.1:{qa}")).unwrap())
                    .await
                    .unwrap(),
            );
        }
        for mut l in links {
            let end = tokio::time::timeout(Duration::from_secs(4), async {
                while l.receiver.recv().await.is_some() {}
            })
            .await;
            assert!(
                end.is_ok(),
                "a silent {} session stayed open",
                l.info.transport
            );
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = usage(a.pid());
    eprintln!("soak: hostile clients: before {before:?}, after {after:?}");
    assert!(
        after.fds <= before.fds + 4,
        "open file descriptors grew from {} to {}",
        before.fds,
        after.fds
    );
    let metrics = client
        .get(format!("{}/metrics", a.http))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("syncline_sessions_refused_total{reason=\"hello_timeout\"} 100"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("sessions"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
