//! A repository in a local directory. Writes go to this process's folder under `tmp/` first
//! (one a killed run left is removed by the next writer: [`crate::tmp`]), are fsynced and
//! renamed into place, so a crash never leaves a partial object under its final name. A
//! rename never replaces an existing object (`renameat2(RENAME_NOREPLACE)`, else a hard
//! link): like a conditional PUT on S3, a write to a taken name leaves the object there as it
//! was.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use super::{Backend, FileKind};
use crate::crypter::random_bytes;
use crate::error::{Error, Result};

/// Packs being synced and moved into place at once: a worker that finished a pack goes back
/// to compressing while the disk syncs it.
const INSTALLS_IN_FLIGHT: usize = 4;

pub struct LocalBackend {
    root: PathBuf,
    /// Packs handed to `put_file` and still being synced and moved into place, oldest first.
    installs: Mutex<VecDeque<JoinHandle<Result<()>>>>,
    /// This process's folder under `tmp/`, made on the first write (the folders runs killed
    /// left there are removed then): see [`crate::tmp`]. `None`: it could not be made
    /// (`tmp/` itself is used, as older versions did).
    staging: std::sync::OnceLock<Option<crate::tmp::RunFolder>>,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            installs: Mutex::new(VecDeque::new()),
            staging: std::sync::OnceLock::new(),
        }
    }

    fn root_is_a_file(&self) -> Error {
        Error::Invalid(format!(
            "{} is a file: a local repository is a folder",
            self.root.display()
        ))
    }

    /// Joins the installs that are done (all of them with `all`); the first failure, if any.
    fn reap(&self, all: bool) -> Result<()> {
        let mut q = self.installs.lock().expect("installs lock");
        let mut first = None;
        let mut left = VecDeque::with_capacity(q.len());
        for h in q.drain(..) {
            if !all && !h.is_finished() {
                left.push_back(h);
                continue;
            }
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Other("a pack install thread panicked".into())));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        *q = left;
        first.map_or(Ok(()), Err)
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.root.join(kind.path_of(name))
    }

    /// The files of a kind, one folder at a time (a fanned-out kind's folders in name order),
    /// with their metadata: a listing of millions of packs is never held at once.
    fn list_folders(
        &self,
        kind: FileKind,
        f: &mut dyn FnMut(Vec<(String, fs::Metadata)>) -> Result<()>,
    ) -> Result<()> {
        if kind == FileKind::Config {
            if let Ok(m) = fs::metadata(self.root.join("config")) {
                f(vec![("config".to_string(), m)])?;
            }
            return Ok(());
        }
        let base = self.root.join(kind.dir());
        let mut dirs = vec![base.clone()];
        if kind.fanned_out() {
            dirs.clear();
            match fs::read_dir(&base) {
                Ok(rd) => {
                    for e in rd {
                        let e = e.map_err(|e| Error::io(&base, e))?;
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            dirs.push(e.path());
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(&base, e)),
            }
            dirs.sort();
        }
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&d, e)),
            };
            let mut out = Vec::new();
            for e in rd {
                let e = e.map_err(|e| Error::io(&d, e))?;
                let m = match e.metadata() {
                    Ok(m) => m,
                    // Deleted between reading the folder and looking at the entry (a prune
                    // replacing index files, another host's prune): not there any more.
                    Err(err) if err.kind() == ErrorKind::NotFound => continue,
                    Err(err) => return Err(Error::io(e.path(), err)),
                };
                if m.is_file() {
                    if let Some(n) = e.file_name().to_str() {
                        out.push((n.to_string(), m));
                    }
                }
            }
            f(out)?;
        }
        Ok(())
    }

    fn not_found_or(&self, kind: FileKind, name: &str, e: std::io::Error) -> Error {
        let p = self.path(kind, name);
        if e.kind() == ErrorKind::NotFound {
            Error::ObjectNotFound(p.display().to_string())
        } else {
            Error::io(p, e)
        }
    }

    fn fsync_dir(dir: &Path) {
        // Best effort: some file systems refuse to fsync directories.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }

    /// Moves a finished temp file to its final place, creating the folder if needed.
    fn install(&self, tmp: &Path, kind: FileKind, name: &str) -> Result<()> {
        Self::install_at(&self.path(kind, name), tmp)
    }

    fn install_at(dest: &Path, tmp: &Path) -> Result<()> {
        Self::install_new(dest, tmp).map(|_| ())
    }

    /// Moves a finished temp file to `dest` unless an object is there already (then the temp
    /// file is removed and the object left as it was). Returns whether it was installed.
    fn install_new(dest: &Path, tmp: &Path) -> Result<bool> {
        let dir = dest.parent().expect("objects live in a folder");
        let installed = match rename_noreplace(tmp, dest) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // The folder is missing, or another install created it a moment ago: creating
                // it again is harmless, and checking whether it exists first would race with
                // that install (two packs with the same first byte installed at once).
                crate::fsperm::mkdir_private(dir).map_err(|e| Error::io(dir, e))?;
                rename_noreplace(tmp, dest)
            }
            r => r,
        };
        match installed {
            Ok(()) => {
                Self::fsync_dir(dir);
                Ok(true)
            }
            // Nothing changed in the folder: nothing to sync.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(tmp);
                Ok(false)
            }
            Err(e) => Err(Error::io(dest, e)),
        }
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "path with a NUL byte"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, AT_FDCWD for both directories.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // A kernel or file system without RENAME_NOREPLACE: a hard link also refuses to
        // replace, then the temp name goes.
        Some(libc::ENOSYS) | Some(libc::EINVAL) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(e),
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self) -> Result<()> {
        if self.root.exists() && !self.root.is_dir() {
            return Err(self.root_is_a_file());
        }
        for k in FileKind::ALL {
            let d = self.root.join(k.dir());
            crate::fsperm::mkdir_private(&d).map_err(|e| Error::io(&d, e))?;
        }
        let t = self.temp_dir();
        crate::fsperm::mkdir_private(&t).map_err(|e| Error::io(&t, e))?;
        Ok(())
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        let p = self.path(kind, name);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotADirectory && !self.root.is_dir() => {
                Err(self.root_is_a_file())
            }
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let tmpdir = self.temp_dir();
        let tmp = tmpdir.join(format!("put-{}", hex::encode(random_bytes::<8>())));
        let write = || -> std::io::Result<()> {
            let mut f = crate::fsperm::create_private(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            if e.kind() == ErrorKind::NotFound && !self.root.join("config").exists() {
                return Err(Error::NoRepository(self.location()));
            }
            return Err(Error::io(&tmp, e));
        }
        self.install(&tmp, kind, name)
    }

    fn refuses_overwrite(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<bool> {
        let dir = self.temp_dir();
        crate::fsperm::mkdir_private(&dir).map_err(|e| Error::io(&dir, e))?;
        let tmp = dir.join(format!("probe-{}", hex::encode(random_bytes::<8>())));
        crate::fsperm::write_private(&tmp, data).map_err(|e| Error::io(&tmp, e))?;
        let installed = Self::install_new(&self.path(kind, name), &tmp);
        let _ = fs::remove_file(&tmp);
        Ok(!installed?)
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path, _crc32c: u32) -> Result<()> {
        // Fail fast when an earlier install failed.
        self.reap(false)?;
        if path.parent() == Some(self.temp_dir().as_path()) {
            let mut q = self.installs.lock().expect("installs lock");
            while q.len() >= INSTALLS_IN_FLIGHT {
                let oldest = q.pop_front().expect("not empty");
                oldest.join().unwrap_or_else(|_| {
                    Err(Error::Other("a pack install thread panicked".into()))
                })?;
            }
            let (tmp, dest) = (path.to_path_buf(), self.path(kind, name));
            let h = std::thread::Builder::new()
                .name("chunkbak-install".into())
                .spawn(move || {
                    File::open(&tmp)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| Error::io(&tmp, e))?;
                    Self::install_at(&dest, &tmp)
                })
                .map_err(|e| Error::Other(format!("cannot start a thread: {e}")))?;
            q.push_back(h);
            Ok(())
        } else {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(path, e))?;
            let data = fs::read(path).map_err(|e| Error::io(path, e))?;
            self.put(kind, name, &data)?;
            let _ = fs::remove_file(path);
            Ok(())
        }
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        fs::read(self.path(kind, name)).map_err(|e| self.not_found_or(kind, name, e))
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let f = File::open(self.path(kind, name)).map_err(|e| self.not_found_or(kind, name, e))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                Error::corrupt(
                    self.path(kind, name).display().to_string(),
                    format!("object is shorter than {} bytes (truncated?)", offset + len),
                )
            } else {
                Error::io(self.path(kind, name), e)
            }
        })?;
        Ok(buf)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        self.list_folders(kind, &mut |objects| {
            out.extend(objects.into_iter().map(|(n, m)| (n, m.len())));
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    fn list_info(&self, kind: FileKind) -> Result<Vec<super::ObjectInfo>> {
        super::sorted_listing(|f| self.list_info_each(kind, f))
    }

    fn list_info_each(
        &self,
        kind: FileKind,
        f: &mut dyn FnMut(super::ObjectInfo) -> Result<()>,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        self.list_folders(kind, &mut |mut objects| {
            objects.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, m) in objects {
                f(super::ObjectInfo {
                    name,
                    size: m.len(),
                    class: super::StorageClass::Standard,
                    modified: Some(m.mtime()),
                })?;
            }
            Ok(())
        })
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let p = self.path(kind, name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn temp_dir(&self) -> PathBuf {
        let tmp = self.root.join("tmp");
        // No repository here (yet): nothing is made, and a write fails naming it.
        if self.staging.get().is_none() && !tmp.is_dir() {
            return tmp;
        }
        // Decided once, so every pack staged is found there by `put_file`.
        let made = self
            .staging
            .get_or_init(|| crate::tmp::RunFolder::new(&tmp, "run-").ok());
        made.as_ref().map_or(tmp, |f| f.path().to_path_buf())
    }

    fn tighten(&self) -> Vec<String> {
        match crate::fsperm::tighten(&self.root) {
            Ok(true) => vec![format!(
                "repository folder {} was readable by other users: made private (0700)",
                self.root.display()
            )],
            _ => Vec::new(),
        }
    }

    fn flush(&self) -> Result<()> {
        self.reap(true)
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        // A run that failed before its flush: let the installs finish rather than cut them off.
        let _ = self.reap(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// Packs that share a first byte are installed at once into a folder that does not exist
    /// yet: every one of them lands (a check-then-create raced here and lost packs).
    #[test]
    fn concurrent_installs_into_a_missing_folder_all_land() {
        let root = std::env::temp_dir().join(format!(
            "chunkbak-install-race-{}",
            hex::encode(random_bytes::<8>())
        ));
        for round in 0..50 {
            let dir = root.join(format!("data/{round:02x}"));
            fs::create_dir_all(root.join("tmp")).unwrap();
            let n = 8;
            let barrier = Arc::new(Barrier::new(n));
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let tmp = root.join(format!("tmp/{round}-{i}"));
                    fs::write(&tmp, [i as u8]).unwrap();
                    let dest = dir.join(format!("{round:02x}{i:062x}"));
                    let b = barrier.clone();
                    std::thread::spawn(move || {
                        b.wait();
                        LocalBackend::install_at(&dest, &tmp)
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            assert_eq!(fs::read_dir(&dir).unwrap().count(), n);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    /// Objects deleted while a folder is listed (another host's prune replacing index files)
    /// are left out of the listing, not reported as a failed read: a backup that listed the
    /// index while a prune compacted it failed with "index/...: No such file or directory".
    #[test]
    fn objects_deleted_during_a_listing_are_left_out() {
        let root = std::env::temp_dir().join(format!(
            "chunkbak-list-race-{}",
            hex::encode(random_bytes::<8>())
        ));
        let b = LocalBackend::new(&root);
        b.create().unwrap();
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let churn = {
            let (dir, stop, made) = (root.join("index"), stop.clone(), made.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    let p = dir.join(format!("{i:064x}"));
                    fs::write(&p, b"x").unwrap();
                    if i >= 64 {
                        fs::remove_file(dir.join(format!("{:064x}", i - 64))).unwrap();
                    }
                    i += 1;
                    made.store(i, Relaxed);
                }
            })
        };
        // Listings overlap the churn: they start once it runs (on a busy machine the thread
        // may start late) and go on until it has replaced a few hundred files meanwhile.
        while made.load(Relaxed) < 64 {
            assert!(!churn.is_finished(), "the churn thread stopped");
            std::thread::yield_now();
        }
        let start = made.load(Relaxed);
        let mut listings = 0;
        while listings < 2000 || made.load(Relaxed) < start + 500 {
            assert!(!churn.is_finished(), "the churn thread stopped");
            let listed = b.list(FileKind::Index).unwrap();
            assert!(listed.len() <= 66, "{}", listed.len());
            listings += 1;
        }
        stop.store(true, Relaxed);
        churn.join().unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}
