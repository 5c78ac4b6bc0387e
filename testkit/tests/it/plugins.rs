//! The example plugins, loaded through the C boundary, pass the store and transport suites.

use std::sync::Arc;
use std::time::Duration;

use syncline_core::{DynStore, Reactor, ReactorConfig, ReactorId, Result, Transport};
use syncline_plugin_host::Plugin;
use syncline_testkit::store_suite::{self, StoreHarness};
use syncline_testkit::transport_suite::{self, Node, TransportHarness};

struct KvFile {
    plugin: Plugin,
    dir: tempfile::TempDir,
    next: std::sync::atomic::AtomicUsize,
    last: parking_lot::Mutex<std::path::PathBuf>,
}

#[syncline_core::async_trait]
impl StoreHarness for KvFile {
    fn name(&self) -> String {
        "kvfile plugin".into()
    }
    async fn fresh(&self) -> Result<DynStore> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = self.dir.path().join(format!("s{n}.log"));
        *self.last.lock() = path.clone();
        self.plugin
            .open_store(&serde_json::json!({ "path": path }))
            .await
    }
    async fn reopen(&self, store: DynStore) -> Result<DynStore> {
        drop(store);
        let path = self.last.lock().clone();
        self.plugin
            .open_store(&serde_json::json!({ "path": path }))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kvfile_plugin_passes_the_store_suite() {
    let plugin = Plugin::load(&syncline_testkit::plugin_library("kvfile")).unwrap();
    assert_eq!(plugin.store_kind(), Some("kvfile"));
    assert_eq!(plugin.scheme(), None);
    let h = KvFile {
        plugin,
        dir: tempfile::tempdir().unwrap(),
        next: Default::default(),
        last: Default::default(),
    };
    store_suite::run(&h).await.unwrap();
    // Options are checked by the plugin, and its error comes back through the boundary.
    let err = h
        .plugin
        .open_store(&serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(err.message().contains("needs options"), "{err}");
}

struct Tcp {
    transport: Arc<dyn Transport>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[syncline_core::async_trait]
impl TransportHarness for Tcp {
    fn name(&self) -> String {
        "tcp plugin".into()
    }
    async fn fresh_url(&self, _name: &str) -> Result<String> {
        Ok(format!("tcp://127.0.0.1:{}", free_port()))
    }
    async fn start_at(
        &self,
        name: &str,
        url: &str,
        store: DynStore,
        config: ReactorConfig,
    ) -> Result<Node> {
        let reactor = Reactor::builder(ReactorId::new(name)?)
            .store(store)
            .transport(self.transport.clone())
            .config(config)
            .scheduler(Arc::new(syncline_core::FixedInterval::new(
                Duration::from_millis(200),
                syncline_core::RetryPolicy::default(),
            )))
            .start()
            .await?;
        let mut last = None;
        for _ in 0..100 {
            match reactor.listen(url).await {
                Ok(_) => {
                    return Ok(Node {
                        reactor,
                        url: url.to_owned(),
                        guard: Box::new(()),
                    });
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last.unwrap())
    }
    fn dialer(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_plugin_passes_the_transport_suite() {
    let plugin = Plugin::load(&syncline_testkit::plugin_library("tcp")).unwrap();
    assert_eq!(plugin.scheme().as_deref(), Some("tcp"));
    assert_eq!(plugin.store_kind(), None);
    let h = Tcp {
        transport: plugin.transport().unwrap(),
    };
    transport_suite::run(&h).await.unwrap();
}

#[test]
fn loading_refuses_what_is_not_a_plugin() {
    let err = Plugin::load(std::path::Path::new("/nonexistent/libnothing.so")).unwrap_err();
    assert!(err.message().contains("does not exist"), "{err}");
    // A real shared library without the entry point.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libm");
    let err = Plugin::load(std::path::Path::new(libm)).unwrap_err();
    assert!(err.message().contains("not a syncline plugin"), "{err}");
    assert!(err.message().contains("libm"), "{err}");
    // A file that is no library at all.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"not an ELF file").unwrap();
    let err = Plugin::load(&junk).unwrap_err();
    assert!(
        err.message()
            .contains("cannot be loaded as a shared library"),
        "{err}"
    );
}
