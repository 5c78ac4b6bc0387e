//! The `extern "C"` functions `export_plugin!` puts in the table (see the module's doc in
//! `lib.rs`).

use super::*;
use std::sync::OnceLock;

pub use serde_json;

/// The host's services, set once by the entry point.
pub static HOST: OnceLock<Host> = OnceLock::new();

pub fn host() -> Host {
    HOST.get().copied().unwrap_or(Host::detached())
}

pub unsafe fn set_host(api: *const HostApi) {
    if api.is_null() {
        return;
    }
    // SAFETY: the host passes a pointer to a `HostApi` that lives as long as the plugin.
    let api = unsafe { &*api };
    let _ = HOST.set(Host { log: Some(api.log) });
    // A plugin library carries its own copy of the standard library, so this hook only sees
    // the plugin's panics: they go to the host's log instead of the node's standard error,
    // and `guard` turns them into error codes.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        host().log(1, &format!("plugin panicked{at}: {what}"));
    }));
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn set_err(err: *mut OwnedBytes, message: &str) {
    if !err.is_null() {
        // SAFETY: the host passes a valid out-pointer (or null, checked above).
        unsafe { *err = OwnedBytes::from_vec(message.as_bytes().to_vec()) };
    }
}

/// Runs `f`, turning errors and panics into codes and messages.
pub fn guard(err: *mut OwnedBytes, f: impl FnOnce() -> Result<(), PluginError>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => OK,
        Ok(Err(e)) => {
            set_err(err, &e.message);
            e.code
        }
        Err(p) => {
            set_err(err, &format!("the plugin panicked: {}", panic_message(p)));
            ERR_PANIC
        }
    }
}

/// Runs `f` where no error can be reported; panics are swallowed.
pub fn guard_quiet(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

pub unsafe extern "C" fn free(buf: OwnedBytes) {
    guard_quiet(|| {
        // SAFETY: the host returns buffers this library handed out, once each.
        drop(unsafe { buf.into_vec() });
    });
}

fn put_out(out: *mut OwnedBytes, v: Vec<u8>) {
    if !out.is_null() {
        // SAFETY: the host passes a valid out-pointer.
        unsafe { *out = OwnedBytes::from_vec(v) };
    }
}

// -- store ----------------------------------------------------------------------------

pub unsafe extern "C" fn store_open<P: StorePlugin>(
    options: Bytes,
    out: *mut *mut c_void,
    err: *mut OwnedBytes,
) -> i32 {
    guard(err, || {
        // SAFETY: the host passes a valid buffer for the call.
        let text = unsafe { options.as_slice() };
        let opts: serde_json::Value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(text)
                .map_err(|e| PluginError::invalid(format!("the options are not JSON: {e}")))?
        };
        let store = P::open(&opts, &host())?;
        let boxed: Box<Box<dyn KvStore>> = Box::new(store);
        // SAFETY: `out` is a valid out-pointer from the host.
        unsafe { *out = Box::into_raw(boxed) as *mut c_void };
        Ok(())
    })
}

/// # Safety
/// `h` must come from `store_open` and not be closed.
unsafe fn store<'a>(h: *mut c_void) -> &'a dyn KvStore {
    // SAFETY: guaranteed by the caller.
    unsafe { &**(h as *mut Box<dyn KvStore>) }
}

pub unsafe extern "C" fn store_get(
    h: *mut c_void,
    key: Bytes,
    found: *mut u8,
    out: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    guard(err, || {
        // SAFETY: the host passes a live handle and buffers valid for the call.
        let (s, key) = unsafe { (store(h), key.as_slice()) };
        match s.get(key)? {
            Some(v) => {
                // SAFETY: valid out-pointers from the host.
                unsafe { *found = 1 };
                put_out(out, v);
            }
            // SAFETY: as above.
            None => unsafe { *found = 0 },
        }
        Ok(())
    })
}

pub unsafe extern "C" fn store_scan(
    h: *mut c_void,
    start: Bytes,
    end: Bytes,
    limit: u32,
    out: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    guard(err, || {
        // SAFETY: the host passes a live handle and buffers valid for the call.
        let (s, start, end) = unsafe { (store(h), start.as_slice(), end.as_slice()) };
        let end = (!end.is_empty()).then_some(end);
        let rows = s.scan(start, end, limit as usize)?;
        let mut buf = Vec::with_capacity(rows.iter().map(|(k, v)| 8 + k.len() + v.len()).sum());
        for (k, v) in rows {
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(&k);
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(&v);
        }
        put_out(out, buf);
        Ok(())
    })
}

pub unsafe extern "C" fn store_write_batch(
    h: *mut c_void,
    batch: Bytes,
    err: *mut OwnedBytes,
) -> i32 {
    guard(err, || {
        // SAFETY: the host passes a live handle and a buffer valid for the call.
        let (s, bytes) = unsafe { (store(h), batch.as_slice()) };
        let ops = super::decode_batch(bytes)?;
        s.write_batch(&ops)
    })
}

pub unsafe extern "C" fn store_close(h: *mut c_void) {
    guard_quiet(|| {
        if !h.is_null() {
            // SAFETY: the host closes a handle from `store_open` once.
            drop(unsafe { Box::from_raw(h as *mut Box<dyn KvStore>) });
        }
    });
}

// -- transport ------------------------------------------------------------------------

fn text(b: Bytes) -> Result<String, PluginError> {
    // SAFETY: the host passes a buffer valid for the call.
    String::from_utf8(unsafe { b.as_slice() }.to_vec())
        .map_err(|_| PluginError::invalid("the URL is not UTF-8"))
}

pub unsafe extern "C" fn t_connect<P: TransportPlugin>(
    url: Bytes,
    out: *mut *mut c_void,
    err: *mut OwnedBytes,
) -> i32 {
    guard(err, || {
        let link = P::connect(&text(url)?, &host())?;
        // SAFETY: valid out-pointer from the host.
        unsafe { *out = Box::into_raw(Box::new(link)) as *mut c_void };
        Ok(())
    })
}

pub unsafe extern "C" fn t_listen<P: TransportPlugin>(
    url: Bytes,
    out: *mut *mut c_void,
    local: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    guard(err, || {
        let l = P::listen(&text(url)?, &host())?;
        put_out(local, l.local_url().into_bytes());
        // SAFETY: valid out-pointer from the host.
        unsafe { *out = Box::into_raw(Box::new(l)) as *mut c_void };
        Ok(())
    })
}

pub unsafe extern "C" fn t_accept(
    l: *mut c_void,
    timeout_ms: u32,
    out: *mut *mut c_void,
    err: *mut OwnedBytes,
) -> i32 {
    let mut timed_out = false;
    let code = guard(err, || {
        // SAFETY: the host passes a live listener handle.
        let l = unsafe { &**(l as *mut Box<dyn FrameListener>) };
        match l.accept(Duration::from_millis(u64::from(timeout_ms)))? {
            Some(link) => {
                // SAFETY: valid out-pointer from the host.
                unsafe { *out = Box::into_raw(Box::new(link)) as *mut c_void };
            }
            None => timed_out = true,
        }
        Ok(())
    });
    if code == OK && timed_out {
        ERR_TIMEOUT
    } else {
        code
    }
}

pub unsafe extern "C" fn t_close_listener(l: *mut c_void) {
    guard_quiet(|| {
        if !l.is_null() {
            // SAFETY: the host frees a listener from `t_listen` once.
            let l = unsafe { Box::from_raw(l as *mut Box<dyn FrameListener>) };
            l.close();
        }
    });
}

/// # Safety
/// `link` must come from `t_connect`/`t_accept` and not be freed.
unsafe fn link<'a>(link: *mut c_void) -> &'a dyn FrameLink {
    // SAFETY: guaranteed by the caller.
    unsafe { &**(link as *mut Box<dyn FrameLink>) }
}

pub unsafe extern "C" fn t_send(l: *mut c_void, frame: Bytes, err: *mut OwnedBytes) -> i32 {
    // SAFETY: the host passes a live link and a buffer valid for the call.
    guard(err, || unsafe { link(l).send(frame.as_slice()) })
}

pub unsafe extern "C" fn t_recv(
    l: *mut c_void,
    timeout_ms: u32,
    out: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    let mut code = OK;
    let g = guard(err, || {
        // SAFETY: the host passes a live link.
        let link = unsafe { link(l) };
        match link.recv(Duration::from_millis(u64::from(timeout_ms)))? {
            Received::Frame(f) => put_out(out, f),
            Received::Timeout => code = ERR_TIMEOUT,
            Received::Closed => code = ERR_CLOSED,
        }
        Ok(())
    });
    if g == OK { code } else { g }
}

pub unsafe extern "C" fn t_shutdown(l: *mut c_void) {
    // SAFETY: the host passes a live link.
    guard_quiet(|| unsafe { link(l).shutdown() });
}

unsafe extern "C" fn none_open(_: Bytes, _: *mut *mut c_void, err: *mut OwnedBytes) -> i32 {
    set_err(err, "this plugin provides no store");
    ERR_INVALID
}
unsafe extern "C" fn none_get(
    _: *mut c_void,
    _: Bytes,
    _: *mut u8,
    _: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    set_err(err, "this plugin provides no store");
    ERR_INVALID
}
unsafe extern "C" fn none_scan(
    _: *mut c_void,
    _: Bytes,
    _: Bytes,
    _: u32,
    _: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    set_err(err, "this plugin provides no store");
    ERR_INVALID
}
unsafe extern "C" fn none_batch(_: *mut c_void, _: Bytes, err: *mut OwnedBytes) -> i32 {
    set_err(err, "this plugin provides no store");
    ERR_INVALID
}
unsafe extern "C" fn none_close(_: *mut c_void) {}
unsafe extern "C" fn none_listen(
    _: Bytes,
    _: *mut *mut c_void,
    _: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    set_err(err, "this plugin provides no transport");
    ERR_INVALID
}
unsafe extern "C" fn none_accept(
    _: *mut c_void,
    _: u32,
    _: *mut *mut c_void,
    err: *mut OwnedBytes,
) -> i32 {
    set_err(err, "this plugin provides no transport");
    ERR_INVALID
}
unsafe extern "C" fn none_send(_: *mut c_void, _: Bytes, err: *mut OwnedBytes) -> i32 {
    set_err(err, "this plugin provides no transport");
    ERR_INVALID
}
unsafe extern "C" fn none_recv(
    _: *mut c_void,
    _: u32,
    _: *mut OwnedBytes,
    err: *mut OwnedBytes,
) -> i32 {
    set_err(err, "this plugin provides no transport");
    ERR_INVALID
}

/// The store table of a plugin that has no store.
pub const NO_STORE: StoreVTable = StoreVTable {
    open: none_open,
    get: none_get,
    scan: none_scan,
    write_batch: none_batch,
    close: none_close,
};

/// The transport table of a plugin that has no transport.
pub const NO_TRANSPORT: TransportVTable = TransportVTable {
    scheme: Bytes {
        ptr: std::ptr::null(),
        len: 0,
    },
    connect: none_open,
    listen: none_listen,
    accept: none_accept,
    close_listener: none_close,
    send: none_send,
    recv: none_recv,
    shutdown: none_close,
    free_link: none_close,
};

pub unsafe extern "C" fn t_free_link(l: *mut c_void) {
    guard_quiet(|| {
        if !l.is_null() {
            // SAFETY: the host frees a link once, after its last call.
            drop(unsafe { Box::from_raw(l as *mut Box<dyn FrameLink>) });
        }
    });
}
