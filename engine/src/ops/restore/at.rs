//! Restore's access to the target: every entry is reached through an open handle of its
//! parent directory, never through a path the kernel resolves again from the target down
//! (format-spec.md 14, "A local user racing a restore").
//!
//! - Directories are opened one component at a time from the target's handle with
//!   `O_DIRECTORY | O_NOFOLLOW`: a symlink anywhere below the target (planted by a local user
//!   between two steps, or listed by a crafted tree before a same-name entry) stops the open
//!   instead of being followed out of the target.
//! - An entry is named to the kernel as `/proc/self/fd/<parent handle>/<name>`: the kernel
//!   jumps to the directory the handle holds (whatever was renamed or replaced on the way to
//!   it since) and looks up the one last component there. Only calls that never follow that
//!   last component are made with such a name (lstat, mkdir, symlink, mknod, link, unlink,
//!   rename, readlink, `O_CREAT | O_EXCL` or `O_NOFOLLOW` opens, lchown, `lsetxattr`); modes,
//!   owners, times and extended attributes of files, directories and special files are set
//!   through a handle of the entry itself.
//! - A file is written in place only when it is a regular file with one link; anything else
//!   at its name is removed and the file created anew with `O_EXCL`.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An open directory.
#[derive(Debug)]
pub(super) struct Dir(OwnedFd);

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn openat(dir: &Dir, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid C string and the descriptor is open for the call.
    let fd = unsafe {
        libc::openat(
            dir.0.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `fd` is a new descriptor this process owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// A symlink met where a directory must be: `O_NOFOLLOW` answers ELOOP (or ENOTDIR).
fn not_followed(e: io::Error, name: &OsStr) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} is not a directory (a symlink or file in the way is never followed)",
                name
            ),
        ),
        _ => e,
    }
}

impl Dir {
    /// The restore target, as the user named it (symlinks in that path are followed, as
    /// `tar -C` does: the user chose it).
    pub fn open_target(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: `c` is a valid C string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor this process owns.
        let d = Dir(unsafe { OwnedFd::from_raw_fd(fd) });
        // Entries are named through /proc/self/fd: refuse to start without it.
        std::fs::symlink_metadata(d.entry(OsStr::new(".")))?;
        Ok(d)
    }

    /// The child directory `name`, never through a symlink.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        openat(self, name, DIR_FLAGS, 0)
            .map(Dir)
            .map_err(|e| not_followed(e, name))
    }

    /// `name` in this directory, as a path the kernel resolves through this handle: valid
    /// while `self` is open (keep the handle alive while the path is used).
    pub fn entry(&self, name: &OsStr) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()));
        p.push(name);
        p
    }

    /// This directory itself as a file, for its metadata (fchown, fchmod, futimens, ...).
    pub fn file(&self) -> io::Result<File> {
        Ok(File::from(self.0.try_clone()?))
    }

    /// Creates file `name`, which must not exist (`O_EXCL`: a name that appeared meanwhile,
    /// a symlink included, is an error).
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        openat(
            self,
            name,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .map(File::from)
    }

    /// Opens the existing file `name` to read it or rewrite it in place: only a regular file
    /// with at most `links` links (1, or the snapshot's count for a hard link group), never
    /// through a symlink; a FIFO is not waited for.
    pub fn open_plain(&self, name: &OsStr, write: bool, links: u64) -> io::Result<File> {
        let access = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let fd = openat(self, name, access | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::new(io::ErrorKind::InvalidInput, "a symlink"),
                _ => e,
            },
        )?;
        let f = File::from(fd);
        let m = f.metadata()?;
        if !m.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        if m.nlink() > links.max(1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a file with {} links", m.nlink()),
            ));
        }
        // Back to blocking I/O for a regular file (O_NONBLOCK only kept a FIFO from hanging).
        // SAFETY: the descriptor is open for the call.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, access) };
        Ok(f)
    }

    /// A handle of the entry `name` itself (`O_PATH | O_NOFOLLOW`), for the metadata of a
    /// special file: set through `/proc/self/fd/<handle>`, which reaches exactly that inode.
    pub fn open_node(&self, name: &OsStr) -> io::Result<OwnedFd> {
        openat(self, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
    }
}

/// The directory `rel` (components relative to `root`), opened one component at a time
/// without following symlinks.
pub(super) fn open_beneath(root: &Dir, rel: &Path) -> io::Result<Dir> {
    let mut cur: Option<Dir> = None;
    for c in rel.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} leaves the restore target", rel.display()),
                ))
            }
        };
        let next = cur.as_ref().unwrap_or(root).open_dir(name)?;
        cur = Some(next);
    }
    match cur {
        Some(d) => Ok(d),
        None => Ok(Dir(root.0.try_clone()?)),
    }
}

/// An entry of the target as the kernel reaches it: the handle of its parent, kept open while
/// [`path`](Self::path) is used.
pub(super) struct Entry {
    pub dir: Arc<Dir>,
    pub name: std::ffi::OsString,
    pub path: PathBuf,
}

/// The target's handle and recently used directory handles (bounded: a few hundred
/// descriptors at most, whatever the tree).
pub(super) struct Target {
    path: PathBuf,
    root: Arc<Dir>,
    dirs: Mutex<HashMap<PathBuf, Arc<Dir>>>,
}

const CACHED_DIRS: usize = 256;

impl Target {
    pub fn open(path: &Path) -> io::Result<Target> {
        Ok(Target {
            path: path.to_path_buf(),
            root: Arc::new(Dir::open_target(path)?),
            dirs: Mutex::new(HashMap::new()),
        })
    }

    fn rel<'p>(&self, path: &'p Path) -> io::Result<&'p Path> {
        path.strip_prefix(&self.path).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is outside the restore target", path.display()),
            )
        })
    }

    /// The directory at target path `path` (the target itself included).
    pub fn dir(&self, path: &Path) -> io::Result<Arc<Dir>> {
        let rel = self.rel(path)?;
        if rel.as_os_str().is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(d) = self.dirs.lock().expect("dir cache").get(rel) {
            return Ok(d.clone());
        }
        let d = Arc::new(open_beneath(&self.root, rel)?);
        let mut cache = self.dirs.lock().expect("dir cache");
        if cache.len() >= CACHED_DIRS {
            cache.clear();
        }
        cache.insert(rel.to_path_buf(), d.clone());
        Ok(d)
    }

    /// The entry at target path `path`, through its parent's handle.
    pub fn entry(&self, path: &Path) -> io::Result<Entry> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no entry of the restore target", path.display()),
            ));
        };
        let dir = self.dir(parent)?;
        Ok(Entry {
            path: dir.entry(name),
            name: name.to_os_string(),
            dir,
        })
    }

    /// Forgets cached handles (a directory was removed: its path may be made anew).
    pub fn forget_dirs(&self) {
        self.dirs.lock().expect("dir cache").clear();
    }
}
