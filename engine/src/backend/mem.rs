//! A repository held in memory: for tests and fuzzing, where thousands of repositories are
//! made and thrown away. It behaves as the local and S3 backends do (the conformance suite in
//! `engine/tests/backend.rs` runs against it too); only its temp folder is on disk, for the
//! pack files a saver writes before handing them over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Backend, FileKind, ObjectInfo, StorageClass};
use crate::crypter::random_bytes;
use crate::error::{Error, Result};

/// An object's bytes and when it was stored (unix seconds).
type Stored = (Vec<u8>, i64);

pub struct MemBackend {
    objects: Mutex<BTreeMap<(FileKind, String), Stored>>,
    tmp: PathBuf,
}

impl MemBackend {
    pub fn new() -> Self {
        let tmp =
            std::env::temp_dir().join(format!("chunkbak-mem-{}", hex::encode(random_bytes::<8>())));
        MemBackend {
            objects: Mutex::new(BTreeMap::new()),
            tmp,
        }
    }

    fn name(kind: FileKind, name: &str) -> String {
        kind.path_of(name)
    }

    /// Every object, by kind and name: what a test compares or damages.
    pub fn objects(&self) -> BTreeMap<(FileKind, String), Vec<u8>> {
        let o = self.objects.lock().expect("objects lock");
        o.iter().map(|(k, (d, _))| (k.clone(), d.clone())).collect()
    }

    /// Replaces an object's bytes (or removes it with `None`), stored now.
    pub fn set_raw(&self, kind: FileKind, name: &str, data: Option<Vec<u8>>) {
        let mut o = self.objects.lock().expect("objects lock");
        match data {
            Some(d) => o.insert((kind, name.to_string()), (d, now())),
            None => o.remove(&(kind, name.to_string())),
        };
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Backend for MemBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.tmp).map_err(|e| Error::io(&self.tmp, e))
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        let o = self.objects.lock().expect("objects lock");
        Ok(o.contains_key(&(kind, name.to_string())))
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        // Never overwrites, like a conditional PUT (objects are named by their contents).
        let mut o = self.objects.lock().expect("objects lock");
        o.entry((kind, name.to_string()))
            .or_insert_with(|| (data.to_vec(), now()));
        Ok(())
    }

    fn refuses_overwrite(&self, kind: FileKind, name: &str, _data: &[u8]) -> Result<bool> {
        self.exists(kind, name)
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path, _crc32c: u32) -> Result<()> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.put(kind, name, &data)?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let o = self.objects.lock().expect("objects lock");
        o.get(&(kind, name.to_string()))
            .map(|(d, _)| d.clone())
            .ok_or_else(|| Error::ObjectNotFound(Self::name(kind, name)))
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let o = self.objects.lock().expect("objects lock");
        let (d, _) = o
            .get(&(kind, name.to_string()))
            .ok_or_else(|| Error::ObjectNotFound(Self::name(kind, name)))?;
        let end = offset.checked_add(len).filter(|&e| e <= d.len() as u64);
        match end {
            Some(end) => Ok(d[offset as usize..end as usize].to_vec()),
            None => Err(Error::corrupt(
                Self::name(kind, name),
                format!(
                    "object is shorter than {} bytes (truncated?)",
                    offset.saturating_add(len)
                ),
            )),
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let o = self.objects.lock().expect("objects lock");
        Ok(o.iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, n), (d, _))| (n.clone(), d.len() as u64))
            .collect())
    }

    fn list_info(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        let o = self.objects.lock().expect("objects lock");
        Ok(o.iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, n), (d, t))| ObjectInfo {
                name: n.clone(),
                size: d.len() as u64,
                class: StorageClass::Standard,
                modified: Some(*t),
            })
            .collect())
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let mut o = self.objects.lock().expect("objects lock");
        o.remove(&(kind, name.to_string()));
        Ok(())
    }

    fn temp_dir(&self) -> PathBuf {
        self.tmp.clone()
    }
}
