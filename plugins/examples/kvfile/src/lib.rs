//! An example store plugin: an append-only file of write batches with an in-memory index.
//!
//! Every `write_batch` appends one record (`u32` LE length, `u32` LE CRC-32, the encoded batch)
//! and fsyncs before it returns; opening replays the file and cuts off a torn last record, so a
//! crash never leaves half a batch. The file only grows (compaction is left to a real store).
//!
//! Options: `{"path": "/where/the/file.log"}`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::PathBuf;

use std::sync::{Mutex, RwLock};

use syncline_plugin_api::{
    BatchOp, Host, KvStore, PluginError, StorePlugin, decode_batch, encode_batch, export_plugin,
};

/// The store.
#[derive(Debug)]
pub struct FileKv {
    path: PathBuf,
    file: Mutex<File>,
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

fn io(path: &std::path::Path, what: &str, e: std::io::Error) -> PluginError {
    PluginError::failed(format!("{}: {what}: {e}", path.display()))
}

fn apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: Vec<BatchOp>) {
    for op in ops {
        match op {
            BatchOp::Put(k, v) => {
                map.insert(k, v);
            }
            BatchOp::Delete(k) => {
                map.remove(&k);
            }
        }
    }
}

impl FileKv {
    /// Opens (creating) the file and replays it.
    pub fn open_path(path: PathBuf, host: &Host) -> Result<FileKv, PluginError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, "creating the directory", e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io(&path, "opening", e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| io(&path, "reading", e))?;
        let mut map = BTreeMap::new();
        let mut at = 0usize;
        let mut records = 0;
        while data.len() - at >= 8 {
            let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap_or_default());
            let Some(payload) = data.get(at + 8..at + 8 + len) else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                break;
            }
            let ops = decode_batch(payload)?;
            apply(&mut map, ops);
            at += 8 + len;
            records += 1;
        }
        if at < data.len() {
            host.log(
                2,
                &format!(
                    "{}: cutting off a torn record at byte {at} ({} bytes)",
                    path.display(),
                    data.len() - at
                ),
            );
            file.set_len(at as u64)
                .map_err(|e| io(&path, "truncating", e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| io(&path, "seeking", e))?;
        }
        host.log(
            3,
            &format!(
                "kvfile store {} opened: {records} batches, {} keys",
                path.display(),
                map.len()
            ),
        );
        Ok(FileKv {
            path,
            file: Mutex::new(file),
            map: RwLock::new(map),
        })
    }
}

impl KvStore for FileKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PluginError> {
        let map = self
            .map
            .read()
            .map_err(|_| PluginError::failed("a poisoned lock"))?;
        Ok(map.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, PluginError> {
        let map = self
            .map
            .read()
            .map_err(|_| PluginError::failed("a poisoned lock"))?;
        let upper = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        Ok(map
            .range((Bound::Included(start.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write_batch(&self, ops: &[BatchOp]) -> Result<(), PluginError> {
        let payload = encode_batch(ops);
        let mut record = Vec::with_capacity(8 + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let mut file = self
            .file
            .lock()
            .map_err(|_| PluginError::failed("a poisoned lock"))?;
        file.write_all(&record)
            .map_err(|e| io(&self.path, "appending", e))?;
        file.sync_data().map_err(|e| io(&self.path, "syncing", e))?;
        let mut map = self
            .map
            .write()
            .map_err(|_| PluginError::failed("a poisoned lock"))?;
        apply(&mut map, ops.to_vec());
        Ok(())
    }
}

/// The plugin.
#[derive(Debug)]
pub struct Plugin;

impl StorePlugin for Plugin {
    fn open(options: &serde_json::Value, host: &Host) -> Result<Box<dyn KvStore>, PluginError> {
        let path = options
            .get("path")
            .and_then(|p| p.as_str())
            .ok_or_else(|| {
                PluginError::invalid("the kvfile store needs options = { path = \"...\" }")
            })?;
        Ok(Box::new(FileKv::open_path(PathBuf::from(path), host)?))
    }
}

export_plugin!(name = "kvfile", store = Plugin);
