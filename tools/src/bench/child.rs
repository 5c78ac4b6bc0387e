//! One run of the matrix, in its own process: two real nodes (the same assembly as `syncline
//! node`, with their HTTP servers and listeners) on one transport and one store, one workload,
//! and what it measured as one JSON line on standard output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use syncline_core::{RemoteConfig, SyncMode};

use super::workloads::{self, OneWay, Pair};
use super::{Record, RunId};
use syncline_node::config::{Config, PluginConfig};
use syncline_node::node::Node;

/// A node of the pair and the URL the other one dials to reach it.
struct Side {
    node: Node,
    url: String,
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `base` with `key=value` added to its query.
fn with_query(base: &str, key: &str, value: &str) -> anyhow::Result<String> {
    let mut u = url::Url::parse(base).with_context(|| format!("{base:?} is not a URL"))?;
    u.query_pairs_mut().append_pair(key, value);
    Ok(u.to_string())
}

async fn start(
    name: &str,
    run: &RunId,
    dir: &Path,
    redis: Option<&str>,
    plugins: &[PathBuf],
) -> anyhow::Result<Side> {
    let id = format!("bench-{name}-{}", std::process::id());
    let mut c = Config {
        node_id: id.clone(),
        data_dir: dir.to_path_buf(),
        shutdown_grace: 2,
        plugins: plugins
            .iter()
            .map(|p| PluginConfig { path: p.clone() })
            .collect(),
        ..Config::default()
    };
    c.listen.http = ([127, 0, 0, 1], 0).into();
    let need_redis = || {
        redis.context("the Redis transport and store need a server: pass --redis URL or let the matrix start one")
    };
    c.store.kind = run.store.clone();
    match run.store.as_str() {
        "memory" | "redb" => {}
        "redis" => {
            c.store.sections.insert(
                "redis".into(),
                serde_json::json!({ "url": need_redis()?, "dataset": id }),
            );
        }
        plugin => {
            c.store.sections.insert(
                plugin.into(),
                serde_json::json!({ "path": dir.join(format!("{id}.{plugin}")) }),
            );
        }
    }
    let mut listen_url = None;
    match run.transport.as_str() {
        "memory" => c.listen.urls.push(format!("mem://{id}")),
        "http" | "websocket" => {}
        "quic" => {
            c.listen.quic = Some(([127, 0, 0, 1], 0).into());
            c.transports.insert(
                "quic".into(),
                serde_json::json!({ "write_self_signed": dir.join(format!("{id}.pem")) }),
            );
        }
        "redis" => c.listen.redis = Some(with_query(need_redis()?, "as", &id)?),
        scheme => {
            let url = format!("{scheme}://127.0.0.1:{}", free_tcp_port()?);
            c.listen.urls.push(url.clone());
            listen_url = Some(url);
        }
    }
    let node = Node::start(c)
        .await
        .with_context(|| format!("starting node {id}"))?;
    let url = match run.transport.as_str() {
        "memory" => format!("mem://{id}"),
        "http" => format!("http://{}", node.http_addr),
        "websocket" => format!("ws://{}", node.http_addr),
        "quic" => format!(
            "quic://{}?ca={}",
            node.quic_addr.context("the node listens on QUIC")?,
            dir.join(format!("{id}.pem")).display()
        ),
        "redis" => with_query(need_redis()?, "to", &id)?,
        _ => listen_url.context("a plugin transport URL")?,
    };
    Ok(Side { node, url })
}

/// Bytes of sync frames sent so far by every session in this process.
fn frame_bytes_out() -> Option<u64> {
    let text = syncline_node::node::metrics_handle().ok()?.render();
    // No line yet: nothing was sent yet.
    Some(
        text.lines()
            .find(|l| l.starts_with("syncline_frame_bytes_total{direction=\"out\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64),
    )
}

/// The process's peak resident set size (Linux: `VmHWM`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn add(side: &Side, to: &Side, mode: SyncMode) -> anyhow::Result<()> {
    side.node
        .reactor
        .sync()
        .add_remote(RemoteConfig::new("peer", &to.url)?.with_mode(mode))
        .await?;
    Ok(())
}

/// Runs `run` and prints its record.
pub(crate) async fn run(args: &super::BenchArgs, run: &RunId) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let redis = args.redis.as_deref();
    let a = start("a", run, dir.path(), redis, &args.plugins).await?;
    let b = start("b", run, dir.path(), redis, &args.plugins).await?;
    let pair = Pair {
        a: a.node.reactor.clone(),
        b: b.node.reactor.clone(),
    };
    let before = frame_bytes_out();
    let result = workload(args, run, &pair, &a, &b).await;
    let bytes = frame_bytes_out()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before));
    // Whatever happened, the nodes stop and a Redis server keeps nothing of the run.
    a.node.shutdown().await;
    b.node.shutdown().await;
    #[cfg(feature = "store-redis")]
    if run.store == "redis"
        && let Some(url) = redis
    {
        for name in ["a", "b"] {
            let dataset = format!("bench-{name}-{}", std::process::id());
            syncline_store_redis::RedisStore::open(url, &dataset)
                .await?
                .destroy()
                .await?;
        }
    }
    let result = result?;
    let latency = !result.p99.is_zero();
    let record = Record {
        transport: run.transport.clone(),
        store: run.store.clone(),
        workload: run.workload.clone(),
        ops: result.ops,
        seconds: result.elapsed.as_secs_f64(),
        ops_per_sec: result.ops_per_sec,
        p50_us: latency.then_some(result.p50.as_micros() as u64),
        p99_us: latency.then_some(result.p99.as_micros() as u64),
        max_us: latency.then_some(result.max.as_micros() as u64),
        frame_bytes_per_op: bytes.map(|b| b as f64 / result.ops.max(1) as f64),
        peak_rss_bytes: peak_rss(),
        error: None,
        samples: Vec::new(),
    };
    println!("{}", serde_json::to_string(&record)?);
    Ok(())
}

/// Connects the pair as `run`'s workload needs and runs it.
async fn workload(
    args: &super::BenchArgs,
    run: &RunId,
    pair: &Pair,
    a: &Side,
    b: &Side,
) -> anyhow::Result<workloads::RunResult> {
    Ok(match run.workload.as_str() {
        "one-way" => {
            add(a, b, SyncMode::Push).await?;
            workloads::one_way(
                pair,
                &OneWay {
                    ops: args.ops,
                    ..OneWay::default()
                },
            )
            .await?
        }
        "both-ways" => {
            add(a, b, SyncMode::PingPong).await?;
            workloads::both_ways(pair, args.ops).await?
        }
        "steady" => {
            add(a, b, SyncMode::Push).await?;
            // Let the connection settle so the first operations do not pay for the handshake.
            pair.a
                .sync()
                .wait_for_sync("peer", Duration::from_secs(30))
                .await?;
            workloads::steady(pair, args.rate, Duration::from_secs_f64(args.duration), 10).await?
        }
        "catch-up" => workloads::catch_up(pair, args.ops, &a.url).await?,
        other => bail!("unknown workload {other:?}"),
    })
}
