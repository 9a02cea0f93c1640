//! A local cache of a remote repository's metadata: index files, snapshots and whole tree
//! packs, under `<root>/<repository id>/`. Objects are immutable and named by the BLAKE3 of
//! their bytes, so a cached copy never goes stale: it is checked against its name when read
//! whole, and every blob read from a cached pack is authenticated by AES-GCM as usual. A damaged
//! or missing file is a cache miss, never an error. With the cache, an unchanged backup or an
//! `ls` of a remote repository reads its trees from disk instead of one GET per directory.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::backend::FileKind;
use crate::id::Id;

pub struct Cache {
    dir: PathBuf,
    /// Only tree packs are read from and kept in it (`check`: index files and snapshots come
    /// from the repository, which it checks).
    trees_only: bool,
}

/// Files younger than this are never removed by [`Cache::retain`]: another process may have
/// just cached them for objects its index does not name yet.
const KEEP_YOUNG: Duration = Duration::from_secs(3600);

/// A temp file name unique across processes (pid), threads and calls (counter).
fn temp_name(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        ".tmp-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Cache {
    /// The cache of repository `repo_id` under `root` (created on first write).
    pub fn new(root: &Path, repo_id: &[u8; 32]) -> Cache {
        Cache {
            dir: root.join(hex::encode(repo_id)),
            trees_only: false,
        }
    }

    /// The same cache, used for tree packs only.
    pub fn trees_only(self) -> Cache {
        Cache {
            trees_only: true,
            ..self
        }
    }

    /// Whether objects of this kind go through the cache.
    fn keeps(&self, fk: FileKind) -> bool {
        !self.trees_only || fk == FileKind::Tree
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, fk: FileKind, name: &str) -> PathBuf {
        self.dir.join(fk.path_of(name))
    }

    /// The whole object, if cached and intact (its BLAKE3 is its name).
    pub fn get(&self, fk: FileKind, name: &str) -> Option<Vec<u8>> {
        if !self.keeps(fk) {
            return None;
        }
        let p = self.path(fk, name);
        let bytes = fs::read(&p).ok()?;
        if Id::of_object(&bytes).to_hex() == name {
            Some(bytes)
        } else {
            let _ = fs::remove_file(&p);
            None
        }
    }

    /// `len` bytes at `offset` of a cached object (a blob of a cached pack).
    pub fn get_range(&self, fk: FileKind, name: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        if !self.keeps(fk) {
            return None;
        }
        let f = fs::File::open(self.path(fk, name)).ok()?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// Stores an object (best effort: a cache that cannot be written is just not used).
    /// Returns whether it is stored.
    pub fn put(&self, fk: FileKind, name: &str, bytes: &[u8]) -> bool {
        if !self.keeps(fk) {
            return false;
        }
        let p = self.path(fk, name);
        let Some(parent) = p.parent() else {
            return false;
        };
        if crate::fsperm::mkdir_private(parent).is_err() {
            return false;
        }
        let tmp = parent.join(temp_name(name));
        if crate::fsperm::write_private(&tmp, bytes).is_ok() && fs::rename(&tmp, &p).is_ok() {
            return true;
        }
        let _ = fs::remove_file(&tmp);
        false
    }

    /// Forgets a cached object (found damaged).
    pub fn remove(&self, fk: FileKind, name: &str) {
        let _ = fs::remove_file(self.path(fk, name));
    }

    /// Stores a copy of a local file (a tree pack this process just wrote).
    pub fn put_file(&self, fk: FileKind, name: &str, src: &Path) {
        if !self.keeps(fk) {
            return;
        }
        let p = self.path(fk, name);
        let Some(parent) = p.parent() else { return };
        if crate::fsperm::mkdir_private(parent).is_err() {
            return;
        }
        let tmp = parent.join(temp_name(name));
        let copied = fs::read(src).and_then(|b| crate::fsperm::write_private(&tmp, &b));
        if copied.is_ok() && fs::rename(&tmp, &p).is_ok() {
            return;
        }
        let _ = fs::remove_file(&tmp);
    }

    /// Removes cached objects of a kind that are not in `keep` (deleted from the repository).
    pub fn retain(&self, fk: FileKind, keep: &HashSet<String>) {
        self.retain_by(fk, &|name| keep.contains(name));
    }

    /// As [`retain`](Cache::retain), keeping the objects `keep` says yes to.
    pub fn retain_by(&self, fk: FileKind, keep: &dyn Fn(&str) -> bool) {
        if !self.keeps(fk) {
            return;
        }
        let base = self.dir.join(fk.dir());
        let dirs: Vec<PathBuf> = if fk.fanned_out() {
            fs::read_dir(&base)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        } else {
            vec![base]
        };
        for d in dirs {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let young = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_none_or(|age| age < KEEP_YOUNG);
                // Temp files of crashed runs go when old; cached objects when gone and old.
                if !young && (name.starts_with(".tmp-") || !keep(&name)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_objects_are_checked_against_their_names() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path(), &[7; 32]);
        let bytes = b"an index file".to_vec();
        let name = Id::of_object(&bytes).to_hex();
        assert_eq!(c.get(FileKind::Index, &name), None);
        c.put(FileKind::Index, &name, &bytes);
        assert_eq!(c.get(FileKind::Index, &name), Some(bytes.clone()));
        assert_eq!(
            c.get_range(FileKind::Index, &name, 3, 5),
            Some(b"index".to_vec())
        );
        assert_eq!(c.get_range(FileKind::Index, &name, 10, 5), None);
        // A damaged copy is a miss, and is removed.
        std::fs::write(c.path(FileKind::Index, &name), b"garbage").unwrap();
        assert_eq!(c.get(FileKind::Index, &name), None);
        assert!(!c.path(FileKind::Index, &name).exists());
        // retain drops what the repository no longer has, once it is not brand new (another
        // process may have cached it for an index it has not written yet).
        c.put(FileKind::Tree, &name, &bytes);
        c.retain(FileKind::Tree, &HashSet::new());
        assert!(c.path(FileKind::Tree, &name).exists());
        let old = SystemTime::now() - KEEP_YOUNG - Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(c.path(FileKind::Tree, &name))
            .unwrap()
            .set_modified(old)
            .unwrap();
        c.retain(FileKind::Tree, &[name.clone()].into_iter().collect());
        assert!(c.path(FileKind::Tree, &name).exists());
        c.retain(FileKind::Tree, &HashSet::new());
        assert!(!c.path(FileKind::Tree, &name).exists());
    }
}
