//! This machine's limits for the one-way workload, without syncline: how fast each medium moves
//! (or stores) records of the size of an encoded operation (1,000,000 by default), in batches of
//! 1,024 like syncline's pushes. `syncline bench --limits` shows each combination as a fraction of these.
//!
//! - transports: a tokio channel (memory), HTTP POSTs to axum (8 in flight), WebSocket binary
//!   messages (tokio-tungstenite), QUIC streams (quinn, 8 in flight), Redis pipelined PUBLISH to a
//!   subscriber;
//! - stores: a `BTreeMap` (memory), redb write transactions (fsync each, like syncline's), Redis
//!   pipelined `SET`s.
//!
//! `cargo run --release -p syncline-benches --example limits [ops] > limits.json`
//! (starts its own `redis-server`; progress on standard error).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use syncline_core::protocol::{Body, Codec, Envelope, Push, Request, StrandUpdate};
use syncline_core::testing::op_at;
use syncline_core::{JobId, Operation};
use syncline_testkit::redis_server::RedisServer;

const BATCH: usize = 1024;
const IN_FLIGHT: usize = 8;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A real push frame of `BATCH` operations, as syncline encodes it.
fn frame() -> Bytes {
    let ops: Vec<Arc<Operation>> = (0..BATCH as u64)
        .map(|i| {
            Arc::new(op_at(
                &format!("bench/doc-{}", i % 16),
                i,
                1_700_000_000_000 + i,
                "a",
            ))
        })
        .collect();
    let env = Envelope {
        v: 1,
        id: 1,
        body: Body::Request(Request::Push(Push {
            job_id: JobId::from_random_bytes([1; 16]),
            strands: StrandUpdate::group(&ops),
        })),
    };
    Bytes::from(Codec::Binary.encode(&env).expect("encodes"))
}

fn rate(ops: usize, started: Instant) -> f64 {
    ops as f64 / started.elapsed().as_secs_f64()
}

/// The best of three runs (a limit is what the medium can do at its best).
async fn best<F, Fut>(name: &str, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = AnyResult<f64>>,
{
    let mut best = 0.0f64;
    for _ in 0..3 {
        match f().await {
            Ok(r) => best = best.max(r),
            Err(e) => {
                eprintln!("{name}: failed: {e}");
                return 0.0;
            }
        }
    }
    eprintln!("{name}: {:.0} ops/s", best);
    best
}

async fn channel(frames: usize, frame: &Bytes) -> AnyResult<f64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT);
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while let Some(f) = rx.recv().await {
            n += f.len().min(1);
        }
        n
    });
    for _ in 0..frames {
        // A copy per batch, as a sender that built the frame would hand over a fresh buffer.
        tx.send(Bytes::copy_from_slice(frame)).await?;
    }
    drop(tx);
    assert_eq!(consumer.await?, frames);
    Ok(rate(frames * BATCH, started))
}

async fn http(frames: usize, frame: &Bytes) -> AnyResult<f64> {
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let app = axum::Router::new()
        .route(
            "/ingest",
            axum::routing::post(move |body: Bytes| {
                let r = r.clone();
                async move {
                    r.fetch_add(body.len(), Ordering::Relaxed);
                    "ok"
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/ingest");
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::new();
    for _ in 0..frames {
        let permit = sem.clone().acquire_owned().await?;
        let (client, url, body) = (client.clone(), url.clone(), frame.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).body(body).send().await;
            drop(permit);
            r.map(|r| r.status().is_success())
        }));
    }
    for t in tasks {
        assert!(t.await??);
    }
    let r = rate(frames * BATCH, started);
    assert_eq!(received.load(Ordering::Relaxed), frames * frame.len());
    server.abort();
    Ok(r)
}

async fn websocket(frames: usize, frame: &Bytes) -> AnyResult<f64> {
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        let mut ws = tokio_tungstenite::accept_async(stream).await?;
        let mut n = 0;
        while n < frames {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => n += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        ws.send(Message::text("done")).await?;
        AnyResult::Ok(n)
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}")).await?;
    let started = Instant::now();
    for _ in 0..frames {
        ws.feed(Message::binary(frame.clone())).await?;
    }
    ws.flush().await?;
    // The server answers once it received everything.
    while let Some(m) = ws.next().await {
        if matches!(m?, Message::Text(_)) {
            break;
        }
    }
    let r = rate(frames * BATCH, started);
    assert_eq!(server.await??, frames);
    Ok(r)
}

async fn quic(frames: usize, frame: &Bytes) -> AnyResult<f64> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key)?;
    let server = quinn::Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.ok_or("no connection")?.await?;
        let mut n = 0;
        let mut reads = Vec::new();
        while n < frames {
            let mut recv = conn.accept_uni().await?;
            n += 1;
            reads.push(tokio::spawn(
                async move { recv.read_to_end(64 << 20).await },
            ));
        }
        let mut bytes = 0;
        for r in reads {
            bytes += r.await??.len();
        }
        let mut done = conn.open_uni().await?;
        done.write_all(b"done").await?;
        done.finish()?;
        conn.closed().await;
        AnyResult::Ok(bytes)
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    client.set_default_client_config(quinn::ClientConfig::with_root_certificates(Arc::new(
        roots,
    ))?);
    let conn = client.connect(addr, "localhost")?.await?;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    for _ in 0..frames {
        let permit = sem.clone().acquire_owned().await?;
        let (conn, body) = (conn.clone(), frame.clone());
        tokio::spawn(async move {
            if let Ok(mut s) = conn.open_uni().await {
                let _ = s.write_all(&body).await;
                let _ = s.finish();
                let _ = s.stopped().await;
            }
            drop(permit);
        });
    }
    let mut done = conn.accept_uni().await?;
    done.read_to_end(16).await?;
    let r = rate(frames * BATCH, started);
    conn.close(0u32.into(), b"bye");
    assert_eq!(receiver.await??, frames * frame.len());
    client.wait_idle().await;
    Ok(r)
}

async fn redis_pubsub(frames: usize, frame: &Bytes, url: &str) -> AnyResult<f64> {
    let client = redis::Client::open(url)?;
    let mut sub = client.get_async_pubsub().await?;
    sub.subscribe("limits").await?;
    let receiver = tokio::spawn(async move {
        let mut stream = sub.on_message();
        let mut n = 0;
        while n < frames {
            let Some(m) = stream.next().await else { break };
            n += usize::from(!m.get_payload_bytes().is_empty());
        }
        n
    });
    let mut conn = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    for chunk in (0..frames).collect::<Vec<_>>().chunks(IN_FLIGHT) {
        let mut pipe = redis::pipe();
        for _ in chunk {
            pipe.publish("limits", frame.as_ref()).ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
    }
    assert_eq!(receiver.await?, frames);
    Ok(rate(frames * BATCH, started))
}

fn records(ops: usize, size: usize) -> impl Iterator<Item = ([u8; 16], Vec<u8>)> {
    (0..ops).map(move |i| {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&(i as u64).to_be_bytes());
        (k, vec![(i % 251) as u8; size])
    })
}

fn memory_store(ops: usize, size: usize) -> f64 {
    let started = Instant::now();
    let mut m = BTreeMap::new();
    for (k, v) in records(ops, size) {
        m.insert(k, v);
    }
    assert_eq!(m.len(), ops);
    rate(ops, started)
}

fn redb_store(ops: usize, size: usize) -> AnyResult<f64> {
    const T: redb::TableDefinition<'static, &[u8], &[u8]> = redb::TableDefinition::new("limits");
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("limits.redb"))?;
    let all: Vec<_> = records(ops, size).collect();
    let started = Instant::now();
    for chunk in all.chunks(BATCH) {
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(T)?;
            for (k, v) in chunk {
                t.insert(&k[..], &v[..])?;
            }
        }
        tx.commit()?;
    }
    Ok(rate(ops, started))
}

async fn redis_store(ops: usize, size: usize, url: &str) -> AnyResult<f64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let all: Vec<_> = records(ops, size).collect();
    let started = Instant::now();
    for chunk in all.chunks(BATCH) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, v) in chunk {
            pipe.set(&k[..], &v[..]).ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
    }
    let r = rate(ops, started);
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
    Ok(r)
}

fn main() -> AnyResult<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ops: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let frames = ops.div_ceil(BATCH);
    let ops = frames * BATCH;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let redis = RedisServer::start()?;
    let url = redis.url();
    let frame = frame();
    let size = frame.len() / BATCH;
    eprintln!("{ops} records of {size} bytes in batches of {BATCH}");
    let out = rt.block_on(async {
        let transports = json!({
            "memory": best("tokio channel", || channel(frames, &frame)).await,
            "http": best("HTTP POST", || http(frames, &frame)).await,
            "websocket": best("WebSocket", || websocket(frames, &frame)).await,
            "quic": best("QUIC", || quic(frames, &frame)).await,
            "redis": best("Redis PUBLISH", || redis_pubsub(frames, &frame, &url)).await,
        });
        let stores = json!({
            "memory": best("BTreeMap", || async { Ok(memory_store(ops, size)) }).await,
            "redb": best("redb", || async { redb_store(ops, size) }).await,
            "redis": best("Redis SET", || redis_store(ops, size, &url)).await,
        });
        json!({
            "ops": ops,
            "op_bytes": size,
            "batch": BATCH,
            "transports": transports,
            "stores": stores,
        })
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
