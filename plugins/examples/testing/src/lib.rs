//! A plugin for the host's failure tests. `TESTING_PLUGIN_MODE` picks its behaviour when
//! the host loads it:
//!
//! - `future`: claims plugin ABI version 999 (the host must refuse it before reading anything
//!   else);
//! - `panic`: a store whose `open` panics (the panic must come back as an error, not unwind);
//! - anything else: an in-memory store named `testing` that logs through the host.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use syncline_plugin_api::{
    __private as p, BatchOp, Bytes, HostApi, KIND_STORE, KvStore, PluginError, PluginTable,
    StorePlugin, StoreVTable,
};

struct Memory(RwLock<BTreeMap<Vec<u8>, Vec<u8>>>);

impl KvStore for Memory {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(self
            .0
            .read()
            .map_err(|_| PluginError::failed("poisoned"))?
            .get(key)
            .cloned())
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, PluginError> {
        let m = self.0.read().map_err(|_| PluginError::failed("poisoned"))?;
        let upper = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
        Ok(m.range((Bound::Included(start.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn write_batch(&self, ops: &[BatchOp]) -> Result<(), PluginError> {
        let mut m = self
            .0
            .write()
            .map_err(|_| PluginError::failed("poisoned"))?;
        for op in ops {
            match op {
                BatchOp::Put(k, v) => {
                    m.insert(k.clone(), v.clone());
                }
                BatchOp::Delete(k) => {
                    m.remove(k);
                }
            }
        }
        Ok(())
    }
}

struct Plugin;

impl StorePlugin for Plugin {
    fn open(
        _: &serde_json::Value,
        host: &syncline_plugin_api::Host,
    ) -> Result<Box<dyn KvStore>, PluginError> {
        if std::env::var("TESTING_PLUGIN_MODE").as_deref() == Ok("panic") {
            panic!("the testing plugin was asked to panic");
        }
        host.log(3, "testing plugin: store opened");
        Ok(Box::new(Memory(RwLock::new(BTreeMap::new()))))
    }
}

static STORE: StoreVTable = StoreVTable {
    open: p::store_open::<Plugin>,
    get: p::store_get,
    scan: p::store_scan,
    write_batch: p::store_write_batch,
    close: p::store_close,
};

static TABLE: PluginTable = PluginTable {
    abi_version: syncline_plugin_api::ABI_VERSION,
    kinds: KIND_STORE,
    name: Bytes {
        ptr: b"testing".as_ptr(),
        len: 7,
    },
    free: p::free,
    store: &STORE,
    transport: std::ptr::null(),
};

static FUTURE: PluginTable = PluginTable {
    abi_version: 999,
    kinds: 0xdead,
    name: Bytes {
        ptr: b"future".as_ptr(),
        len: 6,
    },
    free: p::free,
    store: std::ptr::null(),
    transport: std::ptr::null(),
};

/// The entry point.
///
/// # Safety
///
/// `host` is null or points to a `HostApi` that lives as long as the library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syncline_plugin_entry(host: *const HostApi) -> *const PluginTable {
    // SAFETY: the host passes its `HostApi` (or null), alive as long as the plugin.
    unsafe { p::set_host(host) };
    if std::env::var("TESTING_PLUGIN_MODE").as_deref() == Ok("future") {
        &FUTURE
    } else {
        &TABLE
    }
}
