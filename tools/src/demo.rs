//! `syncline demo`: three nodes on loopback with redb stores in a temporary directory,
//! connected by WebSocket, HTTP and QUIC; operations written through each node's HTTP API,
//! with progress; then the proof that they converged.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use syncline_core::{RemoteConfig, SyncMode};
use syncline_node::client::Client;
use syncline_node::config::Config;
use syncline_node::node::Node;

/// Options of the demo.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Operations written on each node.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Documents the operations are spread over.
    #[arg(long, default_value_t = 8)]
    documents: usize,
}

fn bar(multi: &MultiProgress, len: u64, label: &str) -> ProgressBar {
    let pb = multi.add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:36}] {pos:>7}/{len:7} {per_sec:>11} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}

fn node_config(name: &str, dir: &std::path::Path, quic: bool) -> Config {
    let mut c = Config {
        node_id: name.to_owned(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    if quic {
        c.listen.quic = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.transports.insert(
            "quic".into(),
            serde_json::json!({ "write_self_signed": dir.join(format!("{name}-cert.pem")) }),
        );
    }
    c.shutdown_grace = 2;
    c
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let a = Node::start(node_config("a", dir.path(), false)).await?;
    let b = Node::start(node_config("b", dir.path(), false)).await?;
    let c = Node::start(node_config("c", dir.path(), true)).await?;
    let c_quic = c.quic_addr.context("c listens on QUIC")?;
    let c_cert = dir.path().join("c-cert.pem");
    // a <-> b over WebSocket, b <-> c over HTTP, a <-> c over QUIC; all ping-pong.
    a.reactor
        .sync()
        .add_remote(
            RemoteConfig::new("b", &format!("ws://{}", b.http_addr))?.with_mode(SyncMode::PingPong),
        )
        .await?;
    b.reactor
        .sync()
        .add_remote(
            RemoteConfig::new("c", &format!("http://{}", c.http_addr))?
                .with_mode(SyncMode::PingPong),
        )
        .await?;
    a.reactor
        .sync()
        .add_remote(
            RemoteConfig::new("c", &format!("quic://{c_quic}?ca={}", c_cert.display()))?
                .with_mode(SyncMode::PingPong),
        )
        .await?;
    let nodes = [("a", &a), ("b", &b), ("c", &c)];
    println!(
        "syncline demo: three nodes on loopback, redb stores in {}",
        dir.path().display()
    );
    for (n, node) in &nodes {
        println!("  {n}: http://{}", node.http_addr);
    }
    println!("  a <-> b over WebSocket, b <-> c over HTTP, a <-> c over QUIC (ping-pong)");
    println!(
        "writing {} operations on each node through its HTTP API, over {} documents",
        args.ops, args.documents
    );
    let multi = MultiProgress::new();
    let total = (args.ops * nodes.len()) as u64;
    let started = Instant::now();
    let mut writers = Vec::new();
    for (name, node) in &nodes {
        let pb = bar(&multi, args.ops as u64, &format!("write {name}"));
        let client = Client::new(&format!("http://{}", node.http_addr))?;
        let (ops, docs) = (args.ops, args.documents.max(1));
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            let mut k = 0;
            while done < ops {
                let n = (ops - done).min(200);
                let doc = format!("demo/doc-{}", k % docs);
                let actions: Vec<(String, Value)> = (0..n)
                    .map(|_| ("increment".to_owned(), json!({"path": "/count"})))
                    .collect();
                client.apply(&doc, None, None, &actions).await?;
                done += n;
                k += 1;
                pb.set_position(done as u64);
            }
            pb.finish();
            anyhow::Ok(())
        }));
    }
    let held: Vec<ProgressBar> = nodes
        .iter()
        .map(|(n, _)| bar(&multi, total, &format!("held {n}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut all = true;
        for ((_, node), pb) in nodes.iter().zip(&held) {
            let h = node.reactor.store().head().await?.0;
            let lag: u64 = node
                .reactor
                .sync()
                .status()
                .remotes
                .iter()
                .map(|r| r.outbox_lag)
                .sum();
            pb.set_position(h);
            pb.set_message(format!("outbox lag {lag}"));
            all &= h == total;
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!("the nodes did not converge within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in writers {
        w.await.context("a writer panicked")??;
    }
    let elapsed = started.elapsed();
    for pb in &held {
        pb.finish();
    }
    println!();
    println!(
        "converged: {total} operations on every node in {:.2?} ({:.0} ops/s end to end, through \
         the HTTP API, redb commits and three transports)",
        elapsed,
        total as f64 / elapsed.as_secs_f64()
    );
    let mut mismatch = false;
    for d in 0..args.documents.max(1) {
        let doc = format!("demo/doc-{d}");
        let mut states = Vec::new();
        for (_, node) in &nodes {
            let client = Client::new(&format!("http://{}", node.http_addr))?;
            states.push(client.document(&doc, None, None, false).await?["state"].clone());
        }
        let same = states.windows(2).all(|w| w[0] == w[1]);
        mismatch |= !same;
        println!(
            "  {doc}: {} on a, b and c{}",
            states[0],
            if same { "" } else { "  <- DIFFERENT" }
        );
    }
    for (name, node) in &nodes {
        let s = node.reactor.sync().status();
        for r in &s.remotes {
            println!(
                "  {name} -> {}: {:?}, outbox lag {}, inbox lag {}, {} pulls, {} dead letters",
                r.name, r.connection, r.outbox_lag, r.inbox_lag, r.pulls, r.dead_letters
            );
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
    if mismatch {
        bail!("the nodes computed different document states");
    }
    println!("identical state on a, b and c");
    Ok(())
}
