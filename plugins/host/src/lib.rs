//! Loads syncline plugins and adapts them to the core's `Store` and `Transport`.
//!
//! Safety rules, each tested:
//! - only files named in the configuration are loaded;
//! - the ABI version (the table's first field) and the plugin's kinds are checked before
//!   anything else, with an error naming the file and both versions;
//! - every function the plugin exports catches panics (the export macro does) and returns an
//!   error code; a panic never unwinds into the host;
//! - libraries are never unloaded (their code may still be referenced by handles);
//! - host services (logging) are passed in explicitly.
//!
//! The plugin's interfaces are small and blocking; all sync logic stays in the host: a store
//! plugin becomes a [`KvAdapter`], a transport plugin a [`LinkTransport`], both of which also
//! accept a plugin's Rust types directly (compiled in) for comparison.

#![allow(unsafe_code)]

pub mod kv;
mod link;

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use syncline_core::{DynStore, Error, ErrorKind, Result, Transport};
use syncline_plugin_api::{
    ABI_VERSION, BatchOp, Bytes, ENTRY_SYMBOL, EntryFn, FrameLink, FrameListener, HostApi,
    KIND_STORE, KIND_TRANSPORT, KvStore, OK, OwnedBytes, PluginError, PluginTable, Received,
    StoreVTable, TransportVTable,
};

pub use kv::{KvAdapter, PluginKv};
pub use link::{BlockingTransport, LinkTransport, Native};
pub use syncline_plugin_api::ABI_VERSION as PLUGIN_ABI_VERSION;

extern "C" fn host_log(level: u32, message: Bytes) {
    // SAFETY: the plugin passes a buffer valid for the call.
    let text = String::from_utf8_lossy(unsafe { message.as_slice() });
    match level {
        1 => tracing::error!(target: "syncline::plugin", "{text}"),
        2 => tracing::warn!(target: "syncline::plugin", "{text}"),
        3 => tracing::info!(target: "syncline::plugin", "{text}"),
        _ => tracing::debug!(target: "syncline::plugin", "{text}"),
    }
}

static HOST_API: HostApi = HostApi {
    abi_version: ABI_VERSION,
    log: host_log,
};

/// Every library loaded, for the life of the process.
static LOADED: parking_lot::Mutex<Vec<&'static libloading::Library>> =
    parking_lot::Mutex::new(Vec::new());

/// A loaded plugin. Its library stays loaded for the life of the process.
#[derive(Clone)]
pub struct Plugin {
    /// The file.
    pub path: PathBuf,
    /// The plugin's name (its store kind in configuration).
    pub name: String,
    kinds: u32,
    table: &'static PluginTable,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("kinds", &self.kinds)
            .finish()
    }
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("plugin {}: {why}", path.display()))
}

impl Plugin {
    /// Loads the plugin in `path`.
    pub fn load(path: &Path) -> Result<Plugin> {
        if !path.exists() {
            return Err(bad(path, "the file does not exist"));
        }
        // SAFETY: loading runs the library's initialisers. Only files the operator named in the
        // configuration are loaded; that is the trust boundary.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| bad(path, format!("cannot be loaded as a shared library: {e}")))?;
        // Never unloaded: handles and vtables keep pointing into it. The list keeps every
        // loaded library reachable for the life of the process.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        LOADED.lock().push(lib);
        // SAFETY: the symbol's type is fixed by the ABI (`EntryFn`), checked by name only; the
        // version is checked right after, before anything else is read.
        let entry: libloading::Symbol<'static, EntryFn> = unsafe { lib.get(ENTRY_SYMBOL) }
            .map_err(|_| {
                bad(
                    path,
                    "is not a syncline plugin: it exports no `syncline_plugin_entry` function",
                )
            })?;
        // SAFETY: calling the entry point with a host table that lives forever.
        let table = unsafe { entry(&HOST_API) };
        if table.is_null() {
            return Err(bad(path, "its entry point returned no plugin table"));
        }
        // SAFETY: every ABI version starts the table with a `u32` version; read only that first.
        let version = unsafe { std::ptr::read(table as *const u32) };
        if version != ABI_VERSION {
            return Err(bad(
                path,
                format!(
                    "was built for plugin ABI version {version}; this node speaks version \
                     {ABI_VERSION}; rebuild the plugin against syncline-plugin-api {ABI_VERSION}"
                ),
            ));
        }
        // SAFETY: the version matches, so the table has this layout and lives as long as the
        // library (forever).
        let table: &'static PluginTable = unsafe { &*table };
        if table.kinds & (KIND_STORE | KIND_TRANSPORT) == 0
            || table.kinds & !(KIND_STORE | KIND_TRANSPORT) != 0
        {
            return Err(bad(
                path,
                format!("declares unknown kinds {:#x}", table.kinds),
            ));
        }
        // SAFETY: the name is static data of the library.
        let name = String::from_utf8(unsafe { table.name.as_slice() }.to_vec())
            .map_err(|_| bad(path, "its name is not UTF-8"))?;
        syncline_core::types::DocumentType::new(&name).map_err(|e| {
            bad(
                path,
                format!("its name {name:?} is not usable: {}", e.message()),
            )
        })?;
        if table.kinds & KIND_STORE != 0 && table.store.is_null() {
            return Err(bad(path, "declares a store but has no store table"));
        }
        if table.kinds & KIND_TRANSPORT != 0 && table.transport.is_null() {
            return Err(bad(path, "declares a transport but has no transport table"));
        }
        tracing::info!(plugin = %name, path = %path.display(), "plugin loaded");
        Ok(Plugin {
            path: path.to_path_buf(),
            name,
            kinds: table.kinds,
            table,
        })
    }

    /// The store kind it provides, if it provides a store.
    pub fn store_kind(&self) -> Option<&str> {
        (self.kinds & KIND_STORE != 0).then_some(self.name.as_str())
    }

    /// The URL scheme it provides, if it provides a transport.
    pub fn scheme(&self) -> Option<String> {
        if self.kinds & KIND_TRANSPORT == 0 {
            return None;
        }
        // SAFETY: checked non-null at load; static data of the library.
        let vt = unsafe { &*self.table.transport };
        // SAFETY: as above.
        String::from_utf8(unsafe { vt.scheme.as_slice() }.to_vec()).ok()
    }

    /// Opens a store with `options`.
    pub async fn open_store(&self, options: &serde_json::Value) -> Result<DynStore> {
        if self.kinds & KIND_STORE == 0 {
            return Err(bad(&self.path, "provides no store"));
        }
        let opts = serde_json::to_vec(options)
            .map_err(|e| Error::internal(format!("encoding plugin options: {e}")))?;
        let plugin = self.clone();
        let kv = tokio::task::spawn_blocking(move || FfiKv::open(&plugin, &opts))
            .await
            .map_err(|e| Error::internal(format!("opening a plugin store panicked: {e}")))??;
        Ok(Arc::new(kv::open(Arc::new(kv), &self.name).await?))
    }

    /// The transport it provides.
    pub fn transport(&self) -> Result<Arc<dyn Transport>> {
        let scheme = self
            .scheme()
            .ok_or_else(|| bad(&self.path, "provides no transport"))?;
        Ok(Arc::new(LinkTransport::new(FfiTransport {
            table: self.table,
            scheme,
        })))
    }
}

impl Plugin {
    /// Registers what it provides: a store kind named after it (configured by
    /// `[store.<name>]`, handed to the plugin as JSON) and a transport for its scheme (configured
    /// by `[transports.<scheme>]`, which must be empty).
    pub fn register(&self, backends: &mut syncline_core::Backends) {
        use syncline_core::backend::{StoreKind, TransportKind};
        if let Some(kind) = self.store_kind() {
            let plugin = self.clone();
            backends.register_store(StoreKind::backend(
                kind,
                move |_, options: serde_json::Value| {
                    let plugin = plugin.clone();
                    async move {
                        plugin.open_store(&options).await.map_err(|e| {
                            Error::new(
                                e.kind(),
                                format!(
                                    "the {} plugin cannot open the store: {}",
                                    plugin.name,
                                    e.message()
                                ),
                            )
                        })
                    }
                },
            ));
        }
        if let Some(scheme) = self.scheme() {
            let plugin = self.clone();
            backends.register_transport(TransportKind::plain(&scheme, &[&scheme], move |_| {
                plugin.transport()
            }));
        }
    }
}

/// Turns an error code and buffer from the plugin into a `PluginError`.
fn take_error(table: &PluginTable, code: i32, err: OwnedBytes) -> PluginError {
    let message = if err.ptr.is_null() {
        format!("the plugin failed with code {code}")
    } else {
        // SAFETY: the plugin handed out `len` bytes at `ptr`; we give the buffer back below.
        let text = String::from_utf8_lossy(unsafe {
            Bytes {
                ptr: err.ptr,
                len: err.len,
            }
            .as_slice()
        })
        .into_owned();
        // SAFETY: the buffer came from this plugin and is given back once.
        unsafe { (table.free)(err) };
        text
    };
    PluginError { code, message }
}

/// Takes an output buffer from the plugin.
fn take_bytes(table: &PluginTable, buf: OwnedBytes) -> Vec<u8> {
    if buf.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the plugin handed out `len` bytes at `ptr`; copied, then given back.
    let v = unsafe {
        Bytes {
            ptr: buf.ptr,
            len: buf.len,
        }
        .as_slice()
    }
    .to_vec();
    // SAFETY: the buffer came from this plugin and is given back once.
    unsafe { (table.free)(buf) };
    v
}

// ---- stores ----------------------------------------------------------------------------------

struct FfiKv {
    table: &'static PluginTable,
    vt: &'static StoreVTable,
    handle: *mut c_void,
}

// SAFETY: the ABI requires plugin stores to be thread-safe (`KvStore: Send + Sync` on the
// plugin side); the handle is only passed back to the plugin.
unsafe impl Send for FfiKv {}
// SAFETY: as above.
unsafe impl Sync for FfiKv {}

impl FfiKv {
    fn open(p: &Plugin, options: &[u8]) -> Result<FfiKv> {
        // SAFETY: checked non-null at load; static data of the library.
        let vt: &'static StoreVTable = unsafe { &*p.table.store };
        let mut handle = std::ptr::null_mut();
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        let code = unsafe { (vt.open)(Bytes::from_slice(options), &mut handle, &mut err) };
        if code != OK {
            let e = take_error(p.table, code, err);
            return Err(Error::new(
                if e.code == syncline_plugin_api::ERR_INVALID {
                    ErrorKind::InvalidInput
                } else {
                    ErrorKind::Storage
                },
                format!(
                    "plugin {} ({}): cannot open the store: {}",
                    p.name,
                    p.path.display(),
                    e.message
                ),
            ));
        }
        Ok(FfiKv {
            table: p.table,
            vt,
            handle,
        })
    }
}

impl Drop for FfiKv {
    fn drop(&mut self) {
        // SAFETY: the handle came from this plugin and is not used after this call.
        unsafe { (self.vt.close)(self.handle) };
    }
}

impl KvStore for FfiKv {
    fn get(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, PluginError> {
        let mut found = 0u8;
        let mut out = OwnedBytes::EMPTY;
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        let code = unsafe {
            (self.vt.get)(
                self.handle,
                Bytes::from_slice(key),
                &mut found,
                &mut out,
                &mut err,
            )
        };
        if code != OK {
            return Err(take_error(self.table, code, err));
        }
        let v = take_bytes(self.table, out);
        Ok((found == 1).then_some(v))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> std::result::Result<Vec<(Vec<u8>, Vec<u8>)>, PluginError> {
        let mut out = OwnedBytes::EMPTY;
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        let code = unsafe {
            (self.vt.scan)(
                self.handle,
                Bytes::from_slice(start),
                Bytes::from_slice(end.unwrap_or(&[])),
                limit.min(u32::MAX as usize) as u32,
                &mut out,
                &mut err,
            )
        };
        if code != OK {
            return Err(take_error(self.table, code, err));
        }
        syncline_plugin_api::decode_rows(&take_bytes(self.table, out))
    }

    fn write_batch(&self, ops: &[BatchOp]) -> std::result::Result<(), PluginError> {
        let batch = syncline_plugin_api::encode_batch(ops);
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        let code =
            unsafe { (self.vt.write_batch)(self.handle, Bytes::from_slice(&batch), &mut err) };
        if code != OK {
            return Err(take_error(self.table, code, err));
        }
        Ok(())
    }
}

// ---- transports ------------------------------------------------------------------------------

struct FfiTransport {
    table: &'static PluginTable,
    scheme: String,
}

impl FfiTransport {
    fn vt(&self) -> &'static TransportVTable {
        // SAFETY: checked non-null at load; static data of the library.
        unsafe { &*self.table.transport }
    }
}

struct FfiLink {
    table: &'static PluginTable,
    vt: &'static TransportVTable,
    handle: *mut c_void,
}

// SAFETY: the ABI requires links to accept `send` and `recv` from different threads at once
// (`FrameLink: Send + Sync` on the plugin side).
unsafe impl Send for FfiLink {}
// SAFETY: as above.
unsafe impl Sync for FfiLink {}

impl Drop for FfiLink {
    fn drop(&mut self) {
        // SAFETY: the handle came from this plugin and is not used after this call.
        unsafe { (self.vt.free_link)(self.handle) };
    }
}

impl FrameLink for FfiLink {
    fn send(&self, frame: &[u8]) -> std::result::Result<(), PluginError> {
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        let code = unsafe { (self.vt.send)(self.handle, Bytes::from_slice(frame), &mut err) };
        if code != OK {
            return Err(take_error(self.table, code, err));
        }
        Ok(())
    }

    fn recv(&self, timeout: Duration) -> std::result::Result<Received, PluginError> {
        let mut out = OwnedBytes::EMPTY;
        let mut err = OwnedBytes::EMPTY;
        let ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        match unsafe { (self.vt.recv)(self.handle, ms, &mut out, &mut err) } {
            OK => Ok(Received::Frame(take_bytes(self.table, out))),
            syncline_plugin_api::ERR_TIMEOUT => Ok(Received::Timeout),
            syncline_plugin_api::ERR_CLOSED => Ok(Received::Closed),
            code => Err(take_error(self.table, code, err)),
        }
    }

    fn shutdown(&self) {
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        unsafe { (self.vt.shutdown)(self.handle) };
    }
}

struct FfiListener {
    table: &'static PluginTable,
    vt: &'static TransportVTable,
    handle: *mut c_void,
    local_url: String,
}

// SAFETY: listener calls come from one thread at a time in the host; the handle is only passed
// back to the plugin.
unsafe impl Send for FfiListener {}
// SAFETY: as above.
unsafe impl Sync for FfiListener {}

impl FrameListener for FfiListener {
    fn accept(
        &self,
        timeout: Duration,
    ) -> std::result::Result<Option<Box<dyn FrameLink>>, PluginError> {
        let mut link = std::ptr::null_mut();
        let mut err = OwnedBytes::EMPTY;
        let ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        match unsafe { (self.vt.accept)(self.handle, ms, &mut link, &mut err) } {
            OK => Ok(Some(Box::new(FfiLink {
                table: self.table,
                vt: self.vt,
                handle: link,
            }))),
            syncline_plugin_api::ERR_TIMEOUT => Ok(None),
            code => Err(take_error(self.table, code, err)),
        }
    }

    fn local_url(&self) -> String {
        self.local_url.clone()
    }

    fn close(&self) {}
}

impl Drop for FfiListener {
    fn drop(&mut self) {
        // SAFETY: the handle came from this plugin and is not used after this call.
        unsafe { (self.vt.close_listener)(self.handle) };
    }
}

impl BlockingTransport for FfiTransport {
    fn scheme(&self) -> String {
        self.scheme.clone()
    }

    fn connect(&self, url: &str) -> std::result::Result<Box<dyn FrameLink>, PluginError> {
        let vt = self.vt();
        let mut link = std::ptr::null_mut();
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        let code = unsafe { (vt.connect)(Bytes::from_slice(url.as_bytes()), &mut link, &mut err) };
        if code != OK {
            return Err(take_error(self.table, code, err));
        }
        Ok(Box::new(FfiLink {
            table: self.table,
            vt,
            handle: link,
        }))
    }

    fn listen(&self, url: &str) -> std::result::Result<Box<dyn FrameListener>, PluginError> {
        let vt = self.vt();
        let mut l = std::ptr::null_mut();
        let mut local = OwnedBytes::EMPTY;
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: the handle came from this plugin and is live; buffers and out-pointers are valid for the call.
        let code = unsafe {
            (vt.listen)(
                Bytes::from_slice(url.as_bytes()),
                &mut l,
                &mut local,
                &mut err,
            )
        };
        if code != OK {
            return Err(take_error(self.table, code, err));
        }
        let local_url = String::from_utf8_lossy(&take_bytes(self.table, local)).into_owned();
        Ok(Box::new(FfiListener {
            table: self.table,
            vt,
            handle: l,
            local_url,
        }))
    }
}
