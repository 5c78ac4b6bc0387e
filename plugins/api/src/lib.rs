//! The syncline plugin ABI, and the safe traits plugin authors implement.
//!
//! Rust has no stable ABI, so a plugin is a shared library (`cdylib`) exporting one
//! `extern "C"` function, [`ENTRY_SYMBOL`], that returns a pointer to a `#[repr(C)]`
//! [`PluginTable`]. Only C-compatible data crosses the boundary: byte buffers with lengths,
//! status codes, and opaque handles. The table's first field is the ABI version, which the host
//! reads before anything else.
//!
//! A plugin author implements [`StorePlugin`] (an ordered key-value store with atomic write
//! batches) and/or [`TransportPlugin`] (framed links by URL), and exports them with
//! [`export_plugin!`]; the generated code catches every panic and turns it into an error
//! code, and never lets a Rust type cross the boundary. The host (`syncline-plugin-host`)
//! adapts these interfaces to syncline's `Store` and `Transport`, so all sync logic stays in
//! the host. `docs/plugins.md` is the author's guide.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// The plugin author's guide (`docs/plugins.md`); its minimal plugin is compiled as a doc test.
#[doc = include_str!("../../../docs/plugins.md")]
pub mod guide {}

/// The ABI version this crate speaks. A host refuses a plugin of another version.
pub const ABI_VERSION: u32 = 1;

/// The name of the one symbol a plugin exports.
pub const ENTRY_SYMBOL: &[u8] = b"syncline_plugin_entry\0";

/// The plugin provides a store.
pub const KIND_STORE: u32 = 1;
/// The plugin provides a transport.
pub const KIND_TRANSPORT: u32 = 2;

/// A call succeeded.
pub const OK: i32 = 0;
/// A call failed; the error buffer says why.
pub const ERR_FAILED: i32 = 1;
/// The plugin panicked; the error buffer holds the panic message.
pub const ERR_PANIC: i32 = 2;
/// Nothing arrived in time (`recv`, `accept`).
pub const ERR_TIMEOUT: i32 = 3;
/// The link or listener is closed.
pub const ERR_CLOSED: i32 = 4;
/// The input was refused as invalid.
pub const ERR_INVALID: i32 = 5;
/// The peer or resource is unavailable right now (may succeed later).
pub const ERR_UNAVAILABLE: i32 = 6;

/// A borrowed byte buffer, valid for the duration of the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    /// Start (may be dangling when `len` is 0).
    pub ptr: *const u8,
    /// Length.
    pub len: usize,
}

impl Bytes {
    /// Borrows a slice.
    pub fn from_slice(s: &[u8]) -> Bytes {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// The slice.
    ///
    /// # Safety
    /// `ptr` must point at `len` readable bytes that outlive the returned slice.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr` points at `len` live bytes.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A byte buffer allocated by the plugin and handed to the host, which gives it back to
/// [`PluginTable::free`] when done.
#[repr(C)]
#[derive(Debug)]
pub struct OwnedBytes {
    /// Start.
    pub ptr: *mut u8,
    /// Length.
    pub len: usize,
    /// Capacity (for freeing).
    pub cap: usize,
}

impl OwnedBytes {
    /// An empty buffer (nothing to free).
    pub const EMPTY: OwnedBytes = OwnedBytes {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// Hands a vector over.
    pub fn from_vec(v: Vec<u8>) -> OwnedBytes {
        let mut v = std::mem::ManuallyDrop::new(v);
        OwnedBytes {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }

    /// Takes the vector back (only in the library that allocated it).
    ///
    /// # Safety
    /// The buffer must come from [`OwnedBytes::from_vec`] in this same library, once.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the caller guarantees this came from `from_vec` here, and gives it up.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }
}

/// Key-value rows, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Services the host passes in explicitly.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// The host's ABI version.
    pub abi_version: u32,
    /// Logs a message: level 1 error, 2 warn, 3 info, 4 debug.
    pub log: unsafe extern "C" fn(level: u32, message: Bytes),
}

/// The store functions; `handle` is the plugin's opaque store.
#[repr(C)]
#[derive(Debug)]
pub struct StoreVTable {
    /// Opens a store with JSON options.
    pub open:
        unsafe extern "C" fn(options: Bytes, out: *mut *mut c_void, err: *mut OwnedBytes) -> i32,
    /// Reads a key; `found` is set to 0 or 1.
    pub get: unsafe extern "C" fn(
        handle: *mut c_void,
        key: Bytes,
        found: *mut u8,
        out: *mut OwnedBytes,
        err: *mut OwnedBytes,
    ) -> i32,
    /// Keys in `[start, end)` (an empty `end` is unbounded), at most `limit`, encoded as
    /// repeated `u32 LE key length, key, u32 LE value length, value`.
    pub scan: unsafe extern "C" fn(
        handle: *mut c_void,
        start: Bytes,
        end: Bytes,
        limit: u32,
        out: *mut OwnedBytes,
        err: *mut OwnedBytes,
    ) -> i32,
    /// Applies a batch atomically: repeated `u8 op (1 put, 2 delete), u32 LE key length, key`
    /// and, for puts, `u32 LE value length, value`.
    pub write_batch:
        unsafe extern "C" fn(handle: *mut c_void, batch: Bytes, err: *mut OwnedBytes) -> i32,
    /// Closes the store.
    pub close: unsafe extern "C" fn(handle: *mut c_void),
}

/// The transport functions; `link` and `listener` are the plugin's opaque handles. Calls may
/// block; the host calls them from its own threads, and `send` and `recv` of one link from two
/// threads at once.
#[repr(C)]
#[derive(Debug)]
pub struct TransportVTable {
    /// The URL scheme, as UTF-8 (static for the library's lifetime).
    pub scheme: Bytes,
    /// Dials a URL.
    pub connect:
        unsafe extern "C" fn(url: Bytes, out: *mut *mut c_void, err: *mut OwnedBytes) -> i32,
    /// Listens on a URL; `local_url` receives the URL peers dial.
    pub listen: unsafe extern "C" fn(
        url: Bytes,
        out: *mut *mut c_void,
        local_url: *mut OwnedBytes,
        err: *mut OwnedBytes,
    ) -> i32,
    /// Waits up to `timeout_ms` for a link; `ERR_TIMEOUT` if none came.
    pub accept: unsafe extern "C" fn(
        listener: *mut c_void,
        timeout_ms: u32,
        out: *mut *mut c_void,
        err: *mut OwnedBytes,
    ) -> i32,
    /// Stops listening and frees the listener.
    pub close_listener: unsafe extern "C" fn(listener: *mut c_void),
    /// Sends one frame.
    pub send: unsafe extern "C" fn(link: *mut c_void, frame: Bytes, err: *mut OwnedBytes) -> i32,
    /// Waits up to `timeout_ms` for one frame; `ERR_TIMEOUT` or `ERR_CLOSED` otherwise.
    pub recv: unsafe extern "C" fn(
        link: *mut c_void,
        timeout_ms: u32,
        out: *mut OwnedBytes,
        err: *mut OwnedBytes,
    ) -> i32,
    /// Closes the link (both directions; a blocked `recv` returns `ERR_CLOSED`).
    pub shutdown: unsafe extern "C" fn(link: *mut c_void),
    /// Frees the link; called once, after every other call on it returned.
    pub free_link: unsafe extern "C" fn(link: *mut c_void),
}

/// What the entry point returns. `abi_version` must stay the first field in every version.
#[repr(C)]
#[derive(Debug)]
pub struct PluginTable {
    /// The ABI version the plugin was built for.
    pub abi_version: u32,
    /// [`KIND_STORE`] and/or [`KIND_TRANSPORT`].
    pub kinds: u32,
    /// The plugin's name (the store kind in configuration), UTF-8.
    pub name: Bytes,
    /// Frees a buffer the plugin handed out.
    pub free: unsafe extern "C" fn(buf: OwnedBytes),
    /// Store functions, if `kinds` has [`KIND_STORE`].
    pub store: *const StoreVTable,
    /// Transport functions, if `kinds` has [`KIND_TRANSPORT`].
    pub transport: *const TransportVTable,
}

// SAFETY: the table is immutable static data plus function pointers.
unsafe impl Sync for PluginTable {}
// SAFETY: as above.
unsafe impl Sync for StoreVTable {}
// SAFETY: as above.
unsafe impl Sync for TransportVTable {}

/// The entry point's type.
pub type EntryFn = unsafe extern "C" fn(host: *const HostApi) -> *const PluginTable;

// ---- the safe side ---------------------------------------------------------------------------

/// An error a plugin reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    /// One of the `ERR_*` codes.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

impl PluginError {
    /// A failure.
    pub fn failed(message: impl Into<String>) -> Self {
        PluginError {
            code: ERR_FAILED,
            message: message.into(),
        }
    }

    /// Invalid input.
    pub fn invalid(message: impl Into<String>) -> Self {
        PluginError {
            code: ERR_INVALID,
            message: message.into(),
        }
    }

    /// Unavailable for now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        PluginError {
            code: ERR_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// Closed.
    pub fn closed(message: impl Into<String>) -> Self {
        PluginError {
            code: ERR_CLOSED,
            message: message.into(),
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Put a value.
    Put(Vec<u8>, Vec<u8>),
    /// Delete a key.
    Delete(Vec<u8>),
}

/// An ordered key-value store with atomic write batches.
pub trait KvStore: Send + Sync {
    /// Reads a key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PluginError>;
    /// Keys in `[start, end)` in order (`end: None` is unbounded), at most `limit`.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Rows, PluginError>;
    /// Applies every write or none, durably when it returns.
    fn write_batch(&self, ops: &[BatchOp]) -> Result<(), PluginError>;
}

/// A store plugin: opens stores from JSON options.
pub trait StorePlugin {
    /// Opens a store.
    fn open(options: &serde_json::Value, host: &Host) -> Result<Box<dyn KvStore>, PluginError>;
}

/// What `recv` got.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A frame.
    Frame(Vec<u8>),
    /// Nothing within the timeout.
    Timeout,
    /// The link is closed.
    Closed,
}

/// A framed link: whole frames both ways. `send` and `recv` may run at once on two threads.
pub trait FrameLink: Send + Sync {
    /// Sends one frame.
    fn send(&self, frame: &[u8]) -> Result<(), PluginError>;
    /// Waits up to `timeout` for one frame.
    fn recv(&self, timeout: Duration) -> Result<Received, PluginError>;
    /// Closes both directions; a blocked `recv` returns `Closed`.
    fn shutdown(&self);
}

/// Accepts framed links.
pub trait FrameListener: Send + Sync {
    /// Waits up to `timeout` for a link.
    fn accept(&self, timeout: Duration) -> Result<Option<Box<dyn FrameLink>>, PluginError>;
    /// The URL peers dial.
    fn local_url(&self) -> String;
    /// Stops listening.
    fn close(&self);
}

/// A transport plugin.
pub trait TransportPlugin {
    /// The URL scheme it handles.
    const SCHEME: &'static str;
    /// Dials.
    fn connect(url: &str, host: &Host) -> Result<Box<dyn FrameLink>, PluginError>;
    /// Listens.
    fn listen(url: &str, host: &Host) -> Result<Box<dyn FrameListener>, PluginError>;
}

/// The host's services as the plugin sees them.
#[derive(Clone, Copy)]
pub struct Host {
    log: Option<unsafe extern "C" fn(u32, Bytes)>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Host")
    }
}

impl Host {
    /// A host without services (plugins used directly, compiled in).
    pub fn detached() -> Host {
        Host { log: None }
    }

    /// Logs through the host: level 1 error, 2 warn, 3 info, 4 debug.
    pub fn log(&self, level: u32, message: &str) {
        if let Some(log) = self.log {
            // SAFETY: the host's log function reads `message` during the call only.
            unsafe { log(level, Bytes::from_slice(message.as_bytes())) };
        }
    }
}

// ---- the generated side ----------------------------------------------------------------------

/// The `extern "C"` functions `export_plugin!` puts in the table. They are `unsafe` because the
/// host must pass the handles this library returned (not yet freed) and valid out-pointers; each
/// catches panics and reports them as [`ERR_PANIC`].
#[doc(hidden)]
#[allow(clippy::missing_safety_doc)] // The contract above, shared by every function here.
#[path = "generated.rs"]
pub mod __private;

/// Encodes a write batch for [`StoreVTable::write_batch`].
pub fn encode_batch(ops: &[BatchOp]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            BatchOp::Put(k, v) => {
                out.push(1);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            BatchOp::Delete(k) => {
                out.push(2);
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
            }
        }
    }
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], PluginError> {
    if b.len() < n {
        return Err(PluginError::invalid("a batch or scan buffer is truncated"));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_len(b: &mut &[u8]) -> Result<usize, PluginError> {
    let raw = take(b, 4)?;
    Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
}

/// Decodes a write batch.
pub fn decode_batch(mut b: &[u8]) -> Result<Vec<BatchOp>, PluginError> {
    let mut ops = Vec::new();
    while !b.is_empty() {
        let op = take(&mut b, 1)?[0];
        let klen = take_len(&mut b)?;
        let k = take(&mut b, klen)?.to_vec();
        match op {
            1 => {
                let vlen = take_len(&mut b)?;
                ops.push(BatchOp::Put(k, take(&mut b, vlen)?.to_vec()));
            }
            2 => ops.push(BatchOp::Delete(k)),
            other => {
                return Err(PluginError::invalid(format!("unknown batch op {other}")));
            }
        }
    }
    Ok(ops)
}

/// Decodes a scan result.
pub fn decode_rows(mut b: &[u8]) -> Result<Rows, PluginError> {
    let mut rows = Vec::new();
    while !b.is_empty() {
        let klen = take_len(&mut b)?;
        let k = take(&mut b, klen)?.to_vec();
        let vlen = take_len(&mut b)?;
        rows.push((k, take(&mut b, vlen)?.to_vec()));
    }
    Ok(rows)
}

/// Exports a plugin: `export_plugin!(name = "kvfile", store = FileStore);`,
/// `export_plugin!(name = "tcp", transport = TcpPlugin);`, or
/// `export_plugin!(name = "both", store = S, transport = T);`.
#[macro_export]
macro_rules! export_plugin {
    (name = $name:literal, store = $store:ty) => {
        $crate::export_plugin!(@emit $name, $crate::KIND_STORE,
            $crate::export_plugin!(@store $store), $crate::__private::NO_TRANSPORT);
    };
    (name = $name:literal, transport = $transport:ty) => {
        $crate::export_plugin!(@emit $name, $crate::KIND_TRANSPORT,
            $crate::__private::NO_STORE, $crate::export_plugin!(@transport $transport));
    };
    (name = $name:literal, store = $store:ty, transport = $transport:ty) => {
        $crate::export_plugin!(@emit $name, $crate::KIND_STORE | $crate::KIND_TRANSPORT,
            $crate::export_plugin!(@store $store), $crate::export_plugin!(@transport $transport));
    };
    (@emit $name:literal, $kinds:expr, $store:expr, $transport:expr) => {
        const _: () = {
            static STORE: $crate::StoreVTable = $store;
            static TRANSPORT: $crate::TransportVTable = $transport;
            static TABLE: $crate::PluginTable = $crate::PluginTable {
                abi_version: $crate::ABI_VERSION,
                kinds: $kinds,
                name: $crate::Bytes { ptr: $name.as_ptr(), len: $name.len() },
                free: $crate::__private::free,
                store: &STORE,
                transport: &TRANSPORT,
            };

            /// The plugin's entry point.
            ///
            /// # Safety
            ///
            /// `host` is null or points to a `HostApi` that lives as long as the library.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn syncline_plugin_entry(
                host: *const $crate::HostApi,
            ) -> *const $crate::PluginTable {
                // SAFETY: the host passes its `HostApi` (or null), alive as long as the plugin.
                unsafe { $crate::__private::set_host(host) };
                &TABLE
            }
        };
    };
    (@store $t:ty) => {
        $crate::StoreVTable {
            open: $crate::__private::store_open::<$t>,
            get: $crate::__private::store_get,
            scan: $crate::__private::store_scan,
            write_batch: $crate::__private::store_write_batch,
            close: $crate::__private::store_close,
        }
    };
    (@transport $t:ty) => {
        $crate::TransportVTable {
            scheme: $crate::Bytes {
                ptr: <$t as $crate::TransportPlugin>::SCHEME.as_ptr(),
                len: <$t as $crate::TransportPlugin>::SCHEME.len(),
            },
            connect: $crate::__private::t_connect::<$t>,
            listen: $crate::__private::t_listen::<$t>,
            accept: $crate::__private::t_accept,
            close_listener: $crate::__private::t_close_listener,
            send: $crate::__private::t_send,
            recv: $crate::__private::t_recv,
            shutdown: $crate::__private::t_shutdown,
            free_link: $crate::__private::t_free_link,
        }
    };
}
