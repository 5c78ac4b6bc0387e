//! A harness for transports that listen by themselves, and the helpers other harnesses
//! share: a free loopback port, a reactor on a store and a transport, listening with retries.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use syncline_core::{DynStore, Error, Reactor, ReactorConfig, ReactorId, Result, Transport};

use crate::transport_suite::{Node, TransportHarness};

/// A TCP port free on loopback now.
pub fn free_tcp() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::internal(format!("no free port: {e}")))
}

/// Starts reactor `name` on `store` and `transport`, pulling on a fixed 200 ms interval.
pub async fn build(
    name: &str,
    store: DynStore,
    config: ReactorConfig,
    transport: Arc<dyn Transport>,
) -> Result<Reactor> {
    Reactor::builder(ReactorId::new(name)?)
        .store(store)
        .transport(transport)
        .config(config)
        .scheduler(Arc::new(syncline_core::FixedInterval::new(
            Duration::from_millis(200),
            syncline_core::RetryPolicy {
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(1),
                multiplier: 2.0,
                max_attempts: None,
            },
        )))
        .start()
        .await
}

/// Runs `attempt` until it succeeds, up to 100 times 50 ms apart, while a crashed node still
/// holds the address; returns the last error after that.
pub async fn retrying<T, E, F, Fut>(mut attempt: F) -> std::result::Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(_) if tries < 100 => tries += 1,
            done => return done,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `reactor` listen at `url` by itself, retrying while a crashed node still holds it.
pub async fn listening(reactor: Reactor, url: &str) -> Result<Node> {
    retrying(|| reactor.listen(url)).await?;
    Ok(Node {
        reactor,
        url: url.to_owned(),
        guard: Box::new(()),
    })
}

/// A transport that listens by itself (`Reactor::listen`), such as a plugin transport: URLs are
/// `<scheme>://127.0.0.1:<free port>`.
pub struct ListeningHarness {
    name: String,
    scheme: String,
    transport: Arc<dyn Transport>,
}

impl std::fmt::Debug for ListeningHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListeningHarness")
            .field("name", &self.name)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl ListeningHarness {
    /// A harness named `name` for `transport`, which serves `scheme`.
    pub fn new(name: &str, scheme: &str, transport: Arc<dyn Transport>) -> ListeningHarness {
        ListeningHarness {
            name: name.to_owned(),
            scheme: scheme.to_owned(),
            transport,
        }
    }
}

#[syncline_core::async_trait]
impl TransportHarness for ListeningHarness {
    fn name(&self) -> String {
        self.name.clone()
    }
    async fn fresh_url(&self, _name: &str) -> Result<String> {
        Ok(format!("{}://127.0.0.1:{}", self.scheme, free_tcp()?))
    }
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node> {
        let reactor = build(name, store, config, self.transport.clone()).await?;
        listening(reactor, url).await
    }
    fn dialer(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }
}
