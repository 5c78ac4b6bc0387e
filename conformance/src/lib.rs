//! syncline's conformance suites: every store and every transport must pass them.
//!
//! - [`store_suite`]: a [`store_suite::StoreHarness`] makes and reopens stores of one kind;
//!   [`store_suite::run`] checks the apply rules (atomic, idempotent, gap-free ordinals), the
//!   feed, strands, heads, sync records, concurrent appliers and reopening.
//! - [`transport_suite`]: a [`transport_suite::TransportHarness`] starts reactors serving a
//!   transport and says what the transport can do ([`transport_suite::Capabilities`]);
//!   [`transport_suite::run`] syncs reactors over it in every mode, restarts servers, cuts
//!   peers, and sends bad and JSON frames on raw links.
//!
//! - [`listening`]: [`listening::ListeningHarness`] for a transport that listens by itself
//!   (`Reactor::listen`, e.g. a plugin's) on `<scheme>://127.0.0.1:<port>`.
//!
//! The crate depends on the core only, so a backend written outside this workspace can add it
//! as a dev-dependency and run both suites; the workspace's own backends run them from
//! `testkit/tests/it/` (`stores.rs`, `transports.rs`, `plugins.rs`).

pub mod listening;
pub mod store_suite;
pub mod transport_suite;

use std::time::Duration;

use syncline_core::filter::ReadFilter;
use syncline_core::{
    DynStore, Ordinal, Reactor, ReactorConfig, Result, RetryPolicy, StoredOp, Submission, Written,
};

/// A configuration with short timeouts and backoffs, for tests.
pub fn fast_config() -> ReactorConfig {
    let mut c = ReactorConfig::default();
    c.sync.request_timeout = Duration::from_millis(500);
    c.sync.retry = RetryPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        multiplier: 2.0,
        max_attempts: Some(5),
    };
    c.sync.reconnect = RetryPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        multiplier: 2.0,
        max_attempts: None,
    };
    c
}

/// Submits `n` `increment` actions to `/n` of `document`, `per_job` at a time.
pub async fn submit_increments(
    reactor: &Reactor,
    document: &str,
    n: usize,
    per_job: usize,
) -> Result<Vec<Written>> {
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let k = left.min(per_job.max(1));
        let sub = Submission::json(
            document,
            (0..k).map(|_| ("increment", serde_json::json!({"path": "/n"}))),
        )?;
        out.extend(reactor.submit(sub).await?);
        left -= k;
    }
    Ok(out)
}

/// Every stored operation of a store, in ordinal order.
pub async fn read_all(store: &DynStore) -> Result<Vec<StoredOp>> {
    let mut out = Vec::new();
    let mut after = Ordinal::ZERO;
    loop {
        let page = store
            .read_since(after, 10_000, &ReadFilter::everything())
            .await?;
        if page.scanned_to == after {
            return Ok(out);
        }
        after = page.scanned_to;
        out.extend(page.ops);
    }
}

/// Waits until every store holds `count` operations, polling; fails with the counts.
pub async fn wait_for_count(reactors: &[&Reactor], count: u64, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut heads = Vec::new();
        for r in reactors {
            heads.push(r.store().head().await?.0);
        }
        if heads.iter().all(|h| *h == count) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(syncline_core::Error::new(
                syncline_core::ErrorKind::Timeout,
                format!("stores hold {heads:?} operations, expected {count} each"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
