//! The example plugins, loaded through the C boundary, pass the store and transport suites.

use syncline_core::{DynStore, Result};
use syncline_plugin_host::Plugin;
use syncline_testkit::harnesses::ListeningHarness;
use syncline_testkit::store_suite::{self, StoreHarness};
use syncline_testkit::transport_suite;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_plugin_passes_the_transport_suite() {
    let plugin = Plugin::load(&syncline_testkit::plugin_library("tcp")).unwrap();
    assert_eq!(plugin.scheme().as_deref(), Some("tcp"));
    assert_eq!(plugin.store_kind(), None);
    let h = ListeningHarness::new("tcp plugin", "tcp", plugin.transport().unwrap());
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
