//! A child process for the crash tests: applies batches to a store and prints `ack <n>` after
//! each commit returns, until it is killed.
//!
//! Usage: `syncline-store-child <redb PATH | redis URL DATASET> <writer> <batches> <per-batch>`

use std::io::Write;
use std::sync::Arc;

use syncline_core::store::{ApplyBatch, IncomingOp};
use syncline_core::sync::{Direction, SyncState};
use syncline_core::{DynStore, Ordinal, RemoteName};

fn usage() -> ! {
    eprintln!(
        "usage: syncline-store-child <redb PATH | redis URL DATASET> <writer> <batches> <per-batch>"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (store_args, rest) = match args.first().map(String::as_str) {
        Some("redb") if args.len() == 5 => (&args[..2], &args[2..]),
        Some("redis") if args.len() == 6 => (&args[..3], &args[3..]),
        _ => usage(),
    };
    let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| usage());
    let (writer, batches, per) = (num(&rest[0]), num(&rest[1]), num(&rest[2]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result: syncline_core::Result<()> = rt.block_on(async {
        let store: DynStore = match store_args[0].as_str() {
            "redb" => Arc::new(syncline_store_redb::RedbStore::open(&store_args[1]).await?),
            _ => Arc::new(
                syncline_store_redis::RedisStore::open(&store_args[1], &store_args[2]).await?,
            ),
        };
        let cursor = RemoteName::new(format!("w{writer}"))?;
        let mut out = std::io::stdout().lock();
        for b in 0..batches {
            let ops = syncline_testkit::crash::batch_ops(writer, b, per);
            let batch = ApplyBatch {
                ops: ops
                    .into_iter()
                    .map(|op| IncomingOp {
                        op: Arc::new(op),
                        source: None,
                    })
                    .collect(),
                meta: vec![SyncState::cursor_write(
                    &cursor,
                    Direction::Inbox,
                    Ordinal(b + 1),
                )],
            };
            store.apply(batch).await?;
            let _ = writeln!(out, "ack {b}");
            let _ = out.flush();
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("syncline-store-child: {e}");
        std::process::exit(1);
    }
}
