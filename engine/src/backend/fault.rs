//! A backend decorator that injects faults: failed calls, a store that dies after N calls (a
//! crash or a lost connection), calls that time out, short reads, slow responses. Integration
//! tests and the fuzz targets put it in front of a real backend to show that every operation either completes
//! or fails with a clear error, and never leaves a snapshot that references data that was not
//! stored.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Backend, FileKind, ObjectInfo, StorageClass};
use crate::error::{Error, Result};

/// Which faults to inject. The default injects none.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Calls from this one on (counting from 0) all fail: the store is gone.
    pub dead_after: Option<u64>,
    /// One call in `n` fails (chosen by a generator seeded with `seed`).
    pub fail_one_in: Option<u64>,
    /// One `get_range` in `n` returns fewer bytes than asked.
    pub short_read_one_in: Option<u64>,
    /// Every call waits this long first (a slow store).
    pub delay: Option<Duration>,
    /// One call in `n` hangs for `timeout` and then fails as timed out (a request that got no
    /// answer in time).
    pub timeout_one_in: Option<u64>,
    /// How long a timed-out call hangs before it fails.
    pub timeout: Duration,
    pub seed: u64,
}

pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    faults: Faults,
    calls: AtomicU64,
    injected: AtomicU64,
    rng: Mutex<u64>,
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>, faults: Faults) -> Self {
        let seed = faults.seed;
        FaultBackend {
            inner,
            faults,
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            rng: Mutex::new(seed ^ 0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Calls made so far (failed ones included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn one_in(&self, n: Option<u64>) -> bool {
        let Some(n) = n.filter(|&n| n > 0) else {
            return false;
        };
        // splitmix64: deterministic for a seed, whatever the thread interleaving of callers.
        let mut s = self.rng.lock().expect("rng lock");
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).is_multiple_of(n)
    }

    /// Counts a call and decides whether it fails.
    fn enter(&self, op: &str, what: &str) -> Result<()> {
        if let Some(d) = self.faults.delay {
            std::thread::sleep(d);
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let dead = self.faults.dead_after.is_some_and(|a| n >= a);
        let fault = if dead {
            Some((std::io::ErrorKind::Other, "store gone".to_string()))
        } else if self.one_in(self.faults.timeout_one_in) {
            std::thread::sleep(self.faults.timeout);
            let t = self.faults.timeout;
            Some((
                std::io::ErrorKind::TimedOut,
                format!("timed out after {t:?}"),
            ))
        } else if self.one_in(self.faults.fail_one_in) {
            Some((std::io::ErrorKind::Other, "transient".to_string()))
        } else {
            None
        };
        if let Some((kind, why)) = fault {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Error::backend(
                format!("{op} {what}"),
                std::io::Error::new(kind, format!("injected fault ({why}, call {n})")),
            ));
        }
        Ok(())
    }
}

impl Backend for FaultBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn create(&self) -> Result<()> {
        self.enter("create", "repository")?;
        self.inner.create()
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        self.enter("HEAD", &kind.path_of(name))?;
        self.inner.exists(kind, name)
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.enter("PUT", &kind.path_of(name))?;
        self.inner.put(kind, name, data)
    }

    fn refuses_overwrite(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<bool> {
        self.enter("PUT", &kind.path_of(name))?;
        self.inner.refuses_overwrite(kind, name, data)
    }

    fn stored_crc32c(&self, kind: FileKind, name: &str) -> Result<Option<u32>> {
        self.enter("HEAD", &kind.path_of(name))?;
        self.inner.stored_crc32c(kind, name)
    }

    fn has_checksums(&self) -> bool {
        self.inner.has_checksums()
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path, crc32c: u32) -> Result<()> {
        self.enter("PUT", &kind.path_of(name))?;
        self.inner.put_file(kind, name, path, crc32c)
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.enter("GET", &kind.path_of(name))?;
        self.inner.get(kind, name)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.enter("GET", &kind.path_of(name))?;
        let mut d = self.inner.get_range(kind, name, offset, len)?;
        if !d.is_empty() && self.one_in(self.faults.short_read_one_in) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            d.truncate(d.len() / 2);
        }
        Ok(d)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        self.enter("LIST", kind.dir())?;
        self.inner.list(kind)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.enter("DELETE", &kind.path_of(name))?;
        self.inner.delete(kind, name)
    }

    fn flush(&self) -> Result<()> {
        self.enter("flush", "uploads")?;
        self.inner.flush()
    }

    fn set_storage_class(&self, kind: FileKind, class: StorageClass) {
        self.inner.set_storage_class(kind, class)
    }

    fn set_object_lock(&self, lock: Option<super::ObjectLock>) {
        self.inner.set_object_lock(lock)
    }

    fn supports_object_lock(&self) -> Result<()> {
        self.inner.supports_object_lock()
    }

    fn retention(&self, kind: FileKind, name: &str) -> Result<Option<i64>> {
        self.enter("HEAD", &kind.path_of(name))?;
        self.inner.retention(kind, name)
    }

    fn extend_retention(&self, kind: FileKind, name: &str, until: i64) -> Result<super::Extended> {
        self.enter("PUT", &kind.path_of(name))?;
        self.inner.extend_retention(kind, name, until)
    }

    fn purge_hidden(&self, kind: FileKind) -> Result<super::Purge> {
        self.enter("LIST", kind.dir())?;
        self.inner.purge_hidden(kind)
    }

    fn tighten(&self) -> Vec<String> {
        self.inner.tighten()
    }

    fn hide(&self, kind: FileKind, name: &str) -> Result<()> {
        self.enter("DELETE", &kind.path_of(name))?;
        self.inner.hide(kind, name)
    }

    fn list_info(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        self.enter("LIST", kind.dir())?;
        self.inner.list_info(kind)
    }

    fn list_info_each(
        &self,
        kind: FileKind,
        f: &mut dyn FnMut(ObjectInfo) -> Result<()>,
    ) -> Result<()> {
        self.enter("LIST", kind.dir())?;
        self.inner.list_info_each(kind, f)
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    fn temp_dir(&self) -> PathBuf {
        self.inner.temp_dir()
    }
}
