//! `syncline demo`: three reactors write concurrently and converge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use syncline_core::{
    MemoryStore, Reactor, ReactorId, RemoteConfig, StrandId, Submission, SyncMode,
};
use syncline_transport_memory::MemoryNetwork;

/// Options of the demo.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Operations written on each reactor.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Documents the operations are spread over.
    #[arg(long, default_value_t = 8)]
    documents: usize,
}

fn bar(multi: &MultiProgress, len: u64, label: &str) -> ProgressBar {
    let pb = multi.add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:40}] {pos:>7}/{len:7} {per_sec:>12} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let net = MemoryNetwork::new();
    let names = ["a", "b", "c"];
    let mut reactors = Vec::new();
    for n in names {
        let r = Reactor::builder(ReactorId::new(n)?)
            .store(Arc::new(MemoryStore::new()))
            .transport(net.transport(n))
            .start()
            .await?;
        r.listen(&format!("mem://{n}")).await?;
        reactors.push(r);
    }
    // a <-> b ping-pong, b <-> c ping-pong, a -> c push.
    reactors[0]
        .sync()
        .add_remote(RemoteConfig::new("b", "mem://b")?.with_mode(SyncMode::PingPong))
        .await?;
    reactors[1]
        .sync()
        .add_remote(RemoteConfig::new("c", "mem://c")?.with_mode(SyncMode::PingPong))
        .await?;
    reactors[0]
        .sync()
        .add_remote(RemoteConfig::new("c", "mem://c")?.with_mode(SyncMode::Push))
        .await?;
    println!(
        "syncline demo: 3 reactors in this process (a <-> b ping-pong, b <-> c ping-pong, a -> c push), \
         {} operations each on {} documents",
        args.ops, args.documents
    );
    let multi = MultiProgress::new();
    let started = Instant::now();
    let mut writers = Vec::new();
    for (i, r) in reactors.iter().enumerate() {
        let pb = bar(&multi, args.ops as u64, &format!("write {}", names[i]));
        let r = r.clone();
        let (ops, docs) = (args.ops, args.documents.max(1));
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while done < ops {
                let k = (ops - done).min(100);
                let doc = format!("demo/doc-{}", (done / 100) % docs);
                let sub = Submission::json(
                    &doc,
                    (0..k).map(|_| ("increment", serde_json::json!({"path": "/count"}))),
                )?;
                r.submit(sub).await?;
                done += k;
                pb.set_position(done as u64);
            }
            pb.finish();
            anyhow::Ok(())
        }));
    }
    let total = (args.ops * names.len()) as u64;
    let held: Vec<ProgressBar> = names
        .iter()
        .map(|n| bar(&multi, total, &format!("held {n}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut all = true;
        for (r, pb) in reactors.iter().zip(&held) {
            let h = r.store().head().await?.0;
            pb.set_position(h);
            all &= h == total;
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!("the reactors did not converge within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        "converged: {total} operations on every reactor in {:.2?} ({:.0} ops/s end to end)",
        elapsed,
        total as f64 / elapsed.as_secs_f64()
    );
    let mut mismatch = false;
    for d in 0..args.documents.max(1) {
        let strand = StrandId::parse(&format!("demo/doc-{d}"), None, None)?;
        let states: Vec<_> = futures_states(&reactors, &strand).await?;
        let same = states.windows(2).all(|w| w[0] == w[1]);
        mismatch |= !same;
        println!(
            "  {strand}: {} on all three{}",
            states[0],
            if same { "" } else { "  <- DIFFERENT" }
        );
    }
    for r in &reactors {
        r.shutdown(Duration::from_secs(1)).await;
    }
    if mismatch {
        bail!("the reactors computed different document states");
    }
    println!("identical state on a, b and c");
    Ok(())
}

async fn futures_states(
    reactors: &[Reactor],
    strand: &StrandId,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for r in reactors {
        out.push(r.document(strand).await?.state);
    }
    Ok(out)
}
