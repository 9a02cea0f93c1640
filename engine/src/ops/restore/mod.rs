//! `restore`: recreate a snapshot (or part of it) under a target directory. Directories, links
//! and special files are created while walking the trees; file contents are written in parallel,
//! every chunk verified against its id before it is written; all-zero blocks become holes.
//! Metadata of directories is applied last, deepest first, so writing into them cannot disturb
//! their times and modes.
//!
//! A target that already holds files (a rerun after a kill, a restore over yesterday's copy) is
//! compared chunk by chunk: ranges that already hold the right bytes are neither read from the
//! repository nor written again, so an interrupted restore resumes where it stopped. A file gets
//! its final modification time only after all its bytes are in place, so a partly written file
//! never looks complete to `--overwrite if-changed`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

mod at;

use super::fsmeta;
use super::ls::{components, find, walk};
use super::packread::PackReader;
use super::pattern::Selection;
use super::thaw::PackGate;
use crate::error::{Error, Result};
use crate::format::tree::{Content, Node, NodeKind};
use crate::id::BlobId;
use crate::progress::{Change, Progress};
use crate::repo::Repository;

/// Memory a restore from a remote repository may hold in fetched pack ranges.
const RANGE_BUDGET: u64 = 128 << 20;

/// Files of at least this many chunks are written by all threads at once.
const PARALLEL_CHUNKS: usize = 4;

/// What a restore does with a file that is already in the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Bring it to the snapshot's content; chunks already right are kept (the default).
    #[default]
    Always,
    /// Leave it when its size and modification time match the snapshot's; else as `Always`.
    IfChanged,
    /// Leave it as it is.
    Never,
}

/// An entry `--delete` removes: its path in the target, and (dry run) the entries and file
/// bytes it holds, itself included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub path: PathBuf,
    pub entries: u64,
    pub bytes: u64,
}

/// How many deletions a restore result lists (the count goes on).
pub const DELETIONS_LISTED: usize = 1000;

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Path inside the snapshot to restore (its contents go into the target); empty for all.
    pub subpath: Vec<u8>,
    /// Restore only these paths (inside the snapshot; exact paths or patterns, see
    /// [`crate::ops::pattern`]) and what is below them.
    pub includes: Vec<Vec<u8>>,
    /// Leave out entries matching these patterns, with what is below them.
    pub excludes: Vec<String>,
    /// Use the numeric uid/gid instead of looking up the stored user and group names.
    pub numeric_owner: bool,
    pub threads: usize,
    pub overwrite: Overwrite,
    /// Remove what the target holds and the snapshot does not (in the restored folders;
    /// entries matching `excludes` are kept).
    pub delete: bool,
    /// With `delete`: only within these snapshot paths (the paths the snapshot was taken
    /// of, `/srv/www`), never in the folders above them (`target/`, `target/srv/`), which
    /// hold what the snapshot never saw. Empty: everywhere the restore writes.
    pub delete_within: Vec<Vec<u8>>,
    /// With `delete`: the exclude patterns the snapshot was taken with. What they match was
    /// never in the snapshot (a cache, `*.tmp`), so its absence says nothing: it is kept.
    pub delete_keeps: Vec<String>,
    /// Change nothing: report what would be created, updated and deleted.
    pub dry_run: bool,
    /// Re-read every restored file from the disk after writing it and compare it with the
    /// chunk ids (chunks are always verified before they are written).
    pub verify: bool,
    /// Restore no extended attributes (ACLs, capabilities, SELinux labels included).
    pub no_xattrs: bool,
    /// For snapshots not trusted: no device nodes or FIFOs, no set-user-id, set-group-id or
    /// sticky bits, no file capabilities (`security.capability`).
    pub no_special: bool,
}

#[derive(Debug, Default)]
pub struct RestoreResult {
    /// Files written (created or updated).
    pub files: u64,
    pub dirs: u64,
    /// Symbolic links, and further names of hard-linked files (not in `files`).
    pub links: u64,
    /// Of `links`: further names of hard-linked files (a backup counts them as files).
    pub hardlinks: u64,
    pub specials: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files that were already there with the snapshot's content (only metadata applied).
    pub files_unchanged: u64,
    /// Files left alone by `--overwrite never`.
    pub files_skipped: u64,
    /// Bytes of files already in the target that held the right chunks (not written again).
    pub bytes_reused: u64,
    /// Entries removed by `--delete` (a folder counts once).
    pub deleted: u64,
    /// What `--delete` removes, by entry it removes (a folder with all it holds): at most
    /// [`DELETIONS_LISTED`]; counted with what they hold in a dry run.
    pub deletions: Vec<Deletion>,
    /// Files re-read and found right by `--verify`.
    pub verified: u64,
    /// Entries that could not be restored (the run went on without them).
    pub errors: u64,
    pub warnings: Vec<(PathBuf, String)>,
}

/// A file to write, kept until the walk is over: only what writing it needs, since a restore
/// holds one per file of the snapshot (a `Node` costs about twice as much).
struct FileJob {
    /// Links the file may have to be rewritten in place: 1, or the snapshot's count for the
    /// first name of a hard link group.
    links: u64,
    /// (device, inode) of the empty file the walk created for the first name of a hard link
    /// group: the writer opens that very file or nothing.
    created: Option<(u64, u64)>,
    path: Box<Path>,
    content: Content,
    size: u64,
    meta: Meta,
    /// Nothing was at its path when the walk came by (or this restore created it empty, as the
    /// first name of a hard link group): written without comparing.
    fresh: bool,
    /// Planned ahead (remote repositories: only the chunks needed are fetched).
    plan: Option<std::result::Result<FilePlan, String>>,
}

/// What writing one file takes.
struct FilePlan {
    ids: Vec<BlobId>,
    /// Plaintext length of each chunk (None when one is not in the index: the file then fails
    /// as it is written, with the reason).
    lens: Option<Vec<u64>>,
    todo: Todo,
}

enum Todo {
    /// `--overwrite never` and the file is there.
    Skip,
    /// The file is there with the right content: only its metadata is applied.
    Keep,
    /// Write the chunks marked in `need`; `existing`: into the file that is there (not
    /// truncated), else a new one.
    Write { existing: bool, need: Vec<bool> },
}

impl FilePlan {
    /// The chunks this plan reads from the repository.
    fn needed(&self) -> impl Iterator<Item = &BlobId> {
        let need = match &self.todo {
            Todo::Write { need, .. } => need.as_slice(),
            _ => &[],
        };
        self.ids
            .iter()
            .zip(need)
            .filter(|(_, &n)| n)
            .map(|(id, _)| id)
    }
}

/// The metadata a restore applies to an entry, owners already resolved to this system's ids.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: crate::format::tree::Timespec,
    xattrs: Box<[(Vec<u8>, Vec<u8>)]>,
}

/// Resolves owner names to this system's ids once per name (the stored uid and gid when the
/// name is unknown here or `--numeric-owner` is given).
#[derive(Default)]
struct OwnerIds {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
}

impl OwnerIds {
    fn meta(&mut self, n: &Node, numeric: bool, opts: &RestoreOptions) -> Meta {
        /// The id of `name` on this system (looked up once per name), else `stored`.
        fn resolve(
            cache: &mut HashMap<String, Option<u32>>,
            name: Option<&String>,
            lookup: fn(&str) -> Option<u32>,
            stored: u32,
        ) -> u32 {
            name.and_then(|s| *cache.entry(s.clone()).or_insert_with(|| lookup(s)))
                .unwrap_or(stored)
        }
        let (uid, gid) = if numeric {
            (n.uid, n.gid)
        } else {
            (
                resolve(&mut self.users, n.user.as_ref(), fsmeta::uid_of, n.uid),
                resolve(&mut self.groups, n.group.as_ref(), fsmeta::gid_of, n.gid),
            )
        };
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = if opts.no_xattrs {
            Vec::new()
        } else {
            n.xattrs
                .iter()
                .filter(|(k, _)| !(opts.no_special && k.as_slice() == b"security.capability"))
                .cloned()
                .collect()
        };
        Meta {
            mode: if opts.no_special {
                n.mode & !0o7000
            } else {
                n.mode
            },
            uid,
            gid,
            mtime: n.mtime,
            xattrs: xattrs.into_boxed_slice(),
        }
    }
}

struct Restorer<'a> {
    repo: &'a Repository,
    /// Handles of the target and its directories (None on a dry run of a missing target).
    target: Option<at::Target>,
    opts: &'a RestoreOptions,
    progress: &'a dyn Progress,
    root: bool,
    warnings: Mutex<Vec<(PathBuf, String)>>,
    errors: AtomicU64,
    bytes: AtomicU64,
    files: AtomicU64,
    unchanged: AtomicU64,
    skipped: AtomicU64,
    reused: AtomicU64,
    verified: AtomicU64,
    /// Remote repositories: blobs come from pack ranges fetched once.
    reader: Option<PackReader<'a>>,
    /// Threads that write the chunks of one large file at once.
    pool: std::sync::Arc<rayon::ThreadPool>,
}

/// Writes `data` at `off`, leaving 4 KiB blocks that are all zero as holes: in a new file (created
/// empty, its final length set afterwards) by not writing them; in a file that was there
/// (`existing`) by punching them out, or writing the zeros where the file system cannot.
fn write_sparse(f: &fs::File, data: &[u8], off: u64, existing: bool) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let zero = |a: usize, b: usize| data[a..b].iter().all(|&b| b == 0);
    // Block boundaries follow file offsets, so holes align with the file system's blocks.
    let next = |i: usize| {
        ((((off + i as u64) / BLOCK as u64 + 1) * BLOCK as u64 - off) as usize).min(data.len())
    };
    let mut i = 0usize;
    while i < data.len() {
        let is_zero = zero(i, next(i));
        // Extend over following blocks of the same kind, to write (or punch) in large pieces.
        let mut j = next(i);
        while j < data.len() && zero(j, next(j)) == is_zero {
            j = next(j);
        }
        if !is_zero {
            f.write_all_at(&data[i..j], off + i as u64)?;
        } else if existing {
            punch(f, &data[i..j], off + i as u64)?;
        }
        i = j;
    }
    Ok(())
}

/// Makes the range of `zeros` (all zero) at `off` a hole, or writes the zeros.
fn punch(f: &fs::File, zeros: &[u8], off: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            zeros.len() as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        f.write_all_at(zeros, off)
    }
}

/// Whether `--delete` may remove extras from the restored folder at snapshot path `rel`:
/// at or below one of `delete_within` (a path of the snapshot, or `:PATH` when given).
fn deletes_in(opts: &RestoreOptions, rel: &[u8]) -> bool {
    opts.delete_within.is_empty()
        || opts.delete_within.iter().any(|root| {
            let root = root.strip_suffix(b"/").unwrap_or(root);
            rel == root || (rel.starts_with(root) && rel.get(root.len()) == Some(&b'/'))
        })
}

/// The entries under folder `dir` (itself included) and the bytes of its files, never
/// following a symlink.
fn held(dir: &Path) -> (u64, u64) {
    let mut n = (0u64, 0u64);
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        n.0 += 1;
        if e.file_type().is_file() {
            n.1 += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}

/// What a stopped restore finished, for its error.
fn restored_so_far(r: &Restorer) -> String {
    format!(
        ", after {} files were restored ({} already right)",
        r.files.load(Ordering::Relaxed),
        r.unchanged.load(Ordering::Relaxed)
    )
}

/// What metadata is applied through.
enum On<'a> {
    /// A regular file or directory, open.
    File(&'a fs::File),
    /// A symlink (its parent's handle).
    Link,
    /// A FIFO or device node of this kind (an `O_PATH` handle of it).
    Node(NodeKind),
}

fn same_type(kind: NodeKind, t: fs::FileType) -> bool {
    match kind {
        NodeKind::File => t.is_file(),
        NodeKind::Dir => t.is_dir(),
        NodeKind::Symlink => t.is_symlink(),
        NodeKind::Fifo => t.is_fifo(),
        NodeKind::Socket => t.is_socket(),
        NodeKind::CharDevice => t.is_char_device(),
        NodeKind::BlockDevice => t.is_block_device(),
    }
}

impl Restorer<'_> {
    fn warn(&self, path: &Path, msg: String) {
        // A run that is stopping ends with one error saying why; the files it could not
        // finish meanwhile are the rerun's.
        if crate::stop::interrupted() {
            return;
        }
        self.progress.warning(path, &msg);
        self.warnings
            .lock()
            .expect("warnings")
            .push((path.to_path_buf(), msg));
    }

    fn error(&self, path: &Path, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.warn(path, msg);
    }

    /// As [`Self::error`] for a failed file system call: a full disk stops the restore.
    fn io_error(&self, path: &Path, what: &str, e: &std::io::Error) {
        if crate::stop::is_disk_full(e) {
            crate::stop::disk_full(crate::stop::DiskFull {
                at: self.opts.target.clone(),
                first: format!("{what} {}: {e}", path.display()),
            });
        }
        self.error(path, format!("{what}: {e}"));
    }

    /// The entry at target path `path`, through its parent directory's handle.
    fn entry(&self, path: &Path) -> std::io::Result<at::Entry> {
        match &self.target {
            Some(t) => t.entry(path),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    /// The directory at target path `path`, opened without following any symlink below the
    /// target.
    fn dir(&self, path: &Path) -> std::io::Result<std::sync::Arc<at::Dir>> {
        match &self.target {
            Some(t) => t.dir(path),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    /// chown (when root), chmod, xattrs, times: in this order, since chown clears set-id bits.
    /// Through a handle of the entry itself (files, directories, special files) or, for a
    /// symlink, through its parent's handle with calls that never follow it.
    fn apply_meta(&self, path: &Path, on: On<'_>, n: &Meta) {
        if self.opts.dry_run {
            return;
        }
        match on {
            On::File(f) => self.meta_fd(path, f, n),
            On::Link => match self.entry(path) {
                Ok(e) => self.meta_link(path, &e.path, n),
                Err(err) => self.warn(path, format!("cannot set metadata: {err}")),
            },
            On::Node(kind) => {
                let fd = match self.entry(path).and_then(|e| e.dir.open_node(&e.name)) {
                    Ok(fd) => fd,
                    Err(err) => return self.warn(path, format!("cannot set metadata: {err}")),
                };
                let f = fs::File::from(fd);
                // The node made a moment ago, or nothing: never another file put in its place.
                match f.metadata() {
                    Ok(m) if same_type(kind, m.file_type()) => {}
                    _ => {
                        return self.error(
                            path,
                            "not restored: replaced by something else while being restored".into(),
                        )
                    }
                }
                self.meta_node(path, &f, n);
            }
        }
    }

    fn meta_fd(&self, path: &Path, f: &fs::File, n: &Meta) {
        if self.root {
            let (uid, gid) = (n.uid, n.gid);
            if let Err(e) = std::os::unix::fs::fchown(f, Some(uid), Some(gid)) {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        let mode = fs::Permissions::from_mode(n.mode & 0o7777);
        if let Err(e) = f.set_permissions(mode) {
            self.warn(path, format!("cannot set mode {:o}: {e}", n.mode & 0o7777));
        }
        for (k, v) in n.xattrs.iter() {
            let name = std::ffi::OsStr::from_bytes(k);
            if let Err(e) = xattr::FileExt::set_xattr(f, name, v) {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        if let Err(e) = fsmeta::set_times_fd(f, n.mtime) {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }

    /// A symlink's owner, xattrs and times, by a name resolved through its parent's handle
    /// with calls that act on the link itself.
    fn meta_link(&self, path: &Path, entry: &Path, n: &Meta) {
        if self.root {
            let (uid, gid) = (n.uid, n.gid);
            if let Err(e) = fsmeta::set_owner(entry, uid, gid) {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        for (k, v) in n.xattrs.iter() {
            if let Err(e) = xattr::set(entry, std::ffi::OsStr::from_bytes(k), v) {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        if let Err(e) = fsmeta::set_times(entry, n.mtime) {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }

    /// A special file's metadata through an `O_PATH` handle of it (FIFOs and devices are not
    /// opened for I/O): `/proc/self/fd/<handle>` reaches exactly that inode.
    fn meta_node(&self, path: &Path, f: &fs::File, n: &Meta) {
        use std::os::fd::AsRawFd;
        let node = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        if self.root {
            let (uid, gid) = (n.uid, n.gid);
            if let Err(e) = fsmeta::set_owner_fd(f, uid, gid) {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        let mode = fs::Permissions::from_mode(n.mode & 0o7777);
        if let Err(e) = fs::set_permissions(&node, mode) {
            self.warn(path, format!("cannot set mode {:o}: {e}", n.mode & 0o7777));
        }
        for (k, v) in n.xattrs.iter() {
            if let Err(e) = xattr::set_deref(&node, std::ffi::OsStr::from_bytes(k), v) {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        if let Err(e) = fsmeta::set_times_following(&node, n.mtime) {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }

    fn read_chunk(&self, id: &BlobId) -> Result<Vec<u8>> {
        match &self.reader {
            Some(r) => r.read(id),
            None => self.repo.read_blob(id),
        }
    }

    /// The plaintext length of each chunk, from the index (None if one is missing).
    fn raw_lens(&self, ids: &[BlobId]) -> Option<Vec<u64>> {
        let idx = self.repo.index().read().expect("index lock");
        ids.iter()
            .map(|id| idx.get(id).map(|(_, l)| u64::from(l.raw_len)))
            .collect()
    }

    /// Compares what is at a file's path with the snapshot: what must be written.
    fn plan_file(&self, job: &FileJob) -> Result<FilePlan> {
        let ids = self.repo.file_chunks(&job.content)?;
        let lens = self.raw_lens(&ids);
        let write_all = |existing| Todo::Write {
            existing,
            need: vec![true; ids.len()],
        };
        let path = &*job.path;
        if job.fresh {
            let todo = write_all(false);
            return Ok(FilePlan { ids, lens, todo });
        }
        let entry = match self.entry(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let todo = write_all(false);
                return Ok(FilePlan { ids, lens, todo });
            }
            Err(e) => return Err(Error::io(path, e)),
            Ok(e) => e,
        };
        let m = match fs::symlink_metadata(&entry.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let todo = write_all(false);
                return Ok(FilePlan { ids, lens, todo });
            }
            Err(e) => return Err(Error::io(path, e)),
            Ok(m) => m,
        };
        if self.opts.overwrite == Overwrite::Never {
            return Ok(FilePlan {
                ids,
                lens,
                todo: Todo::Skip,
            });
        }
        // Only a regular file with one link (or as many as its hard link group has in the
        // snapshot) is rewritten in place; anything else is replaced (a file with more links
        // shares its inode with a name outside this file's place).
        if !m.is_file() || m.nlink() > job.links.max(1) {
            if m.is_dir() {
                return Err(Error::Invalid(
                    "a directory is in the way (restore with --delete to replace it)".into(),
                ));
            }
            if !self.opts.dry_run {
                fs::remove_file(&entry.path).map_err(|e| Error::io(path, e))?;
            }
            let todo = write_all(false);
            return Ok(FilePlan { ids, lens, todo });
        }
        let same_stat = m.len() == job.size
            && m.mtime() == job.meta.mtime.secs
            && m.mtime_nsec() == i64::from(job.meta.mtime.nanos);
        if self.opts.overwrite == Overwrite::IfChanged && same_stat && !self.opts.verify {
            return Ok(FilePlan {
                ids,
                lens,
                todo: Todo::Keep,
            });
        }
        let Some(ls) = &lens else {
            let todo = write_all(true);
            return Ok(FilePlan { ids, lens, todo });
        };
        // Chunk by chunk: which ranges already hold the right bytes.
        let f = entry
            .dir
            .open_plain(&entry.name, false, job.links)
            .map_err(|e| Error::io(path, e))?;
        let mut need = Vec::with_capacity(ids.len());
        let (mut off, mut buf) = (0u64, Vec::new());
        for (id, &len) in ids.iter().zip(ls) {
            if crate::ops::interrupted() {
                return Err(crate::stop::error(String::new));
            }
            let right = off + len <= m.len() && {
                buf.resize(len as usize, 0);
                f.read_exact_at(&mut buf, off).is_ok() && self.repo.hasher().id(&buf) == *id
            };
            need.push(!right);
            off += len;
        }
        let todo = if m.len() == off && need.iter().all(|n| !n) {
            Todo::Keep
        } else {
            Todo::Write {
                existing: true,
                need,
            }
        };
        Ok(FilePlan { ids, lens, todo })
    }

    /// Writes a file's needed chunks; `read[i]` is set once chunk `i` was read (or tried). A file
    /// of [`PARALLEL_CHUNKS`] chunks or more is written by every thread of the pool at once, each
    /// chunk with a positioned write at its offset, so one huge file (a disk image, a dump) is
    /// restored in parallel.
    fn write_contents(
        &self,
        job: &FileJob,
        plan: &FilePlan,
        existing: bool,
        need: &[bool],
        read: &[AtomicBool],
    ) -> Result<(fs::File, u64)> {
        let ids = &plan.ids;
        let path = &*job.path;
        let e = self.entry(path).map_err(|e| Error::io(path, e))?;
        let f = match job.created {
            _ if existing => e.dir.open_plain(&e.name, true, job.links),
            // The first name of a hard link group, created empty by the walk: that file (its
            // other names may already link to it).
            Some((dev, ino)) => e.dir.open_plain(&e.name, true, u64::MAX).and_then(|f| {
                let m = f.metadata()?;
                if (m.dev(), m.ino()) == (dev, ino) {
                    Ok(f)
                } else {
                    Err(std::io::Error::other(
                        "replaced by another file while being restored",
                    ))
                }
            }),
            None => e.dir.create_new(&e.name),
        }
        .map_err(|e| Error::io(path, e))?;
        let put = |i: usize, off: u64| -> Result<u64> {
            if !need[i] {
                let len = plan
                    .lens
                    .as_ref()
                    .expect("chunks are kept only when lengths are known")[i];
                self.reused.fetch_add(len, Ordering::Relaxed);
                self.progress.bytes(len);
                return Ok(len);
            }
            if crate::ops::interrupted() {
                return Err(crate::stop::error(String::new));
            }
            read[i].store(true, Ordering::Relaxed);
            let data = self.read_chunk(&ids[i])?;
            write_sparse(&f, &data, off, existing).map_err(|e| Error::io(&*job.path, e))?;
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.progress.bytes(data.len() as u64);
            Ok(data.len() as u64)
        };
        let lens = match &plan.lens {
            Some(l) if ids.len() >= PARALLEL_CHUNKS => l,
            _ => {
                let mut off = 0u64;
                for i in 0..ids.len() {
                    off += put(i, off)?;
                }
                return Ok((f, off));
            }
        };
        let mut offs = Vec::with_capacity(lens.len());
        let mut end = 0u64;
        for l in lens {
            offs.push(end);
            end += l;
        }
        self.pool.install(|| {
            (0..ids.len())
                .into_par_iter()
                .with_max_len(1)
                .try_for_each(|i| match put(i, offs[i])? {
                    n if n == lens[i] => Ok(()),
                    n => Err(Error::corrupt(
                        format!("blob {}", ids[i]),
                        format!("it holds {n} bytes, the index says {}", lens[i]),
                    )),
                })
        })?;
        Ok((f, end))
    }

    /// `--verify`: reads the file back from the disk (not the page cache, where the file
    /// system lets go of it) and compares every chunk's range with its id.
    fn verify_file(&self, f: &fs::File, path: &Path, plan: &FilePlan) -> Result<()> {
        use std::os::fd::AsRawFd;
        let Some(lens) = &plan.lens else {
            return Ok(());
        };
        f.sync_data().map_err(|e| Error::io(path, e))?;
        // SAFETY: the descriptor is open for the duration of the call.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let (mut off, mut buf) = (0u64, Vec::new());
        for (id, &len) in plan.ids.iter().zip(lens) {
            buf.resize(len as usize, 0);
            f.read_exact_at(&mut buf, off)
                .map_err(|e| Error::io(path, e))?;
            if self.repo.hasher().id(&buf) != *id {
                return Err(Error::corrupt(
                    path.display().to_string(),
                    format!(
                        "read back after writing, the {len} bytes at offset {off} do not match chunk {id}"
                    ),
                ));
            }
            off += len;
        }
        self.verified.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Restores one file; a failure is reported and counted, and the restore goes on.
    fn write_file(&self, job: &FileJob) {
        self.progress.started(&job.path);
        let planned;
        let plan = match &job.plan {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(e.clone()),
            None => {
                planned = self.plan_file(job);
                planned.as_ref().map_err(|e| e.to_string())
            }
        };
        let r = plan.map_err(|e| e.to_string()).and_then(|p| {
            self.restore_file(job, p).map_err(|e| {
                if let Error::Io { cause, path } = &e {
                    if crate::stop::is_disk_full(cause) {
                        // Every later file would fail the same way: one error says it.
                        crate::stop::disk_full(crate::stop::DiskFull {
                            at: self.opts.target.clone(),
                            first: format!("writing {}: {cause}", path.display()),
                        });
                    }
                }
                e.to_string()
            })
        });
        if let Err(e) = r {
            self.error(&job.path, format!("not restored: {e}"));
        }
    }

    fn restore_file(&self, job: &FileJob, plan: &FilePlan) -> Result<()> {
        let path = &*job.path;
        let (existing, need) = match &plan.todo {
            Todo::Skip => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Todo::Keep => {
                self.unchanged.fetch_add(1, Ordering::Relaxed);
                self.reused.fetch_add(job.size, Ordering::Relaxed);
                self.progress.bytes(job.size);
                if !self.opts.dry_run {
                    let f = self
                        .entry(path)
                        .and_then(|e| e.dir.open_plain(&e.name, false, job.links))
                        .map_err(|e| Error::io(path, e))?;
                    if self.opts.verify {
                        self.verify_file(&f, path, plan)?;
                    }
                    self.apply_meta(path, On::File(&f), &job.meta);
                }
                return Ok(());
            }
            Todo::Write { existing, need } => (*existing, need),
        };
        let change = if existing {
            Change::Update
        } else {
            Change::New
        };
        self.progress.change(change, path);
        if self.opts.dry_run {
            self.files.fetch_add(1, Ordering::Relaxed);
            let n: u64 = match &plan.lens {
                Some(l) => l.iter().zip(need).filter(|(_, &n)| n).map(|(l, _)| l).sum(),
                None => job.size,
            };
            self.bytes.fetch_add(n, Ordering::Relaxed);
            self.reused
                .fetch_add(job.size.saturating_sub(n), Ordering::Relaxed);
            return Ok(());
        }
        let read: Vec<AtomicBool> = plan.ids.iter().map(|_| AtomicBool::new(false)).collect();
        let written = self.write_contents(job, plan, existing, need, &read);
        if written.is_err() {
            // The file's remaining planned reads will not happen: release their ranges.
            if let Some(r) = &self.reader {
                let unread: Vec<BlobId> = plan
                    .ids
                    .iter()
                    .zip(&read)
                    .zip(need)
                    .filter(|((_, d), &n)| n && !d.load(Ordering::Relaxed))
                    .map(|((id, _), _)| *id)
                    .collect();
                r.skip(&unread);
            }
        }
        let (f, off) = written?;
        f.set_len(off).map_err(|e| Error::io(path, e))?;
        if off != job.size {
            self.warn(
                path,
                format!("restored {off} bytes, the snapshot recorded {} (file changed while backed up?)", job.size),
            );
        }
        if self.opts.verify {
            self.verify_file(&f, path, plan)?;
        }
        // Last: the modification time tells a complete file from one a kill interrupted.
        self.apply_meta(path, On::File(&f), &job.meta);
        drop(f);
        self.files.fetch_add(1, Ordering::Relaxed);
        self.progress.file_done(path);
        Ok(())
    }
}

/// Creates the restore target if needed; an error before anything is written when it is not a
/// folder or cannot be written into (instead of one error per file). A dry run only checks.
fn prepare_target(t: &Path, dry_run: bool) -> Result<()> {
    if fs::metadata(t).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::Invalid(format!(
            "restore target {} exists and is not a folder",
            t.display()
        )));
    }
    if dry_run {
        return Ok(());
    }
    fs::create_dir_all(t).map_err(|e| Error::io(t, e))?;
    let c = std::ffi::CString::new(t.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("restore target {} holds a NUL byte", t.display())))?;
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        // What the host allows, not how chunkbak was called: an error (1), not a usage one.
        return Err(Error::Other(format!(
            "cannot write into restore target {}: {}",
            t.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Where a restore of `subpath` starts: the tree to walk and its path, or a single non-directory
/// node (restored into the target by its name).
pub(crate) fn resolve_start(
    repo: &Repository,
    root: BlobId,
    subpath: &[u8],
) -> Result<(BlobId, Vec<u8>, Option<Node>)> {
    if components(subpath).is_empty() {
        return Ok((root, Vec::new(), None));
    }
    let n = find(repo, root, subpath)?.expect("non-empty path gives a node");
    Ok(match (n.kind, n.subtree) {
        (NodeKind::Dir, Some(t)) => (t, subpath.to_vec(), None),
        _ => (root, Vec::new(), Some(n)),
    })
}

/// Restores a snapshot's tree `root`. The repository's index must be loaded.
pub fn restore(
    repo: &Repository,
    root: BlobId,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreResult> {
    restore_gated(repo, root, opts, progress, None)
}

/// The packs holding `ids` (None when a chunk is not in the index).
fn packs_of<'b>(
    repo: &Repository,
    ids: impl Iterator<Item = &'b BlobId>,
) -> Option<Vec<crate::id::ObjectId>> {
    let idx = repo.index().read().expect("index lock");
    let mut out = Vec::new();
    for id in ids {
        out.push(idx.get(id)?.0.id);
        // A delta is read through its bases, which may sit in other packs.
        for b in idx.chain_of(id)? {
            out.push(idx.get(&b)?.0.id);
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// The walk over the snapshot's trees: creates directories, links and special files, and hands
/// files on to the writers.
struct Walker<'w, 'a> {
    r: &'w Restorer<'a>,
    sel: Selection,
    /// The snapshot's own exclude patterns: `--delete` keeps what they match.
    keeps: Option<globset::GlobSet>,
    /// The snapshot path of the tree the restore starts at ("" for the root).
    prefix: Vec<u8>,
    owners: OwnerIds,
    numeric: bool,
    /// Directories created (or found), with the metadata they get at the end.
    dirs: Vec<(Box<Path>, Meta)>,
    /// Directories walked into but not created yet: created once something below is restored.
    pending: HashMap<PathBuf, Meta>,
    /// First restored name of each hard link group.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories this run created: nothing is in them yet, so nothing needs comparing.
    new_dirs: std::collections::HashSet<PathBuf>,
    res: RestoreResult,
    queued: u64,
    total_bytes: u64,
    /// Files for the writers: sent to the streaming workers, or kept for later.
    tx: Option<std::sync::mpsc::SyncSender<FileJob>>,
    jobs: Vec<FileJob>,
}

impl Walker<'_, '_> {
    fn opts(&self) -> &RestoreOptions {
        self.r.opts
    }

    /// The target path of snapshot path `rel`.
    fn target_path(&self, rel: &[u8]) -> PathBuf {
        let rel_in = rel.strip_prefix(self.prefix.as_slice()).unwrap_or(rel);
        self.opts()
            .target
            .join(Path::new(std::ffi::OsStr::from_bytes(
                rel_in.strip_prefix(b"/").unwrap_or(rel_in),
            )))
    }

    /// What is at `path` now (nothing, below a folder this run created: no lookup).
    fn look(&self, path: &Path) -> std::io::Result<fs::Metadata> {
        match path.parent() {
            Some(p) if self.new_dirs.contains(p) => Err(std::io::ErrorKind::NotFound.into()),
            _ => fs::symlink_metadata(self.r.entry(path)?.path),
        }
    }

    /// Creates the directories above `path` that were put off.
    fn ensure_parents(&mut self, path: &Path) {
        let mut chain = Vec::new();
        let mut p = path.parent();
        while let Some(d) = p {
            match self.pending.remove(d) {
                Some(m) => chain.push((d.to_path_buf(), m)),
                None => break,
            }
            p = d.parent();
        }
        for (d, m) in chain.into_iter().rev() {
            self.make_dir(d, m);
        }
    }

    /// Creates (or finds) a directory; whether to walk into it.
    fn make_dir(&mut self, path: PathBuf, meta: Meta) -> bool {
        let (r, opts) = (self.r, self.r.opts);
        match self.look(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) if opts.overwrite == Overwrite::Never => {
                self.r.skipped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            found => {
                let exists = found.is_ok();
                r.progress
                    .change(if exists { Change::Update } else { Change::New }, &path);
                if !opts.dry_run {
                    let made = r.entry(&path).and_then(|e| {
                        if exists {
                            let _ = fs::remove_file(&e.path);
                        }
                        fs::create_dir(&e.path)
                    });
                    if let Err(e) = made {
                        r.io_error(&path, "cannot create directory", &e);
                        return false;
                    }
                }
                self.new_dirs.insert(path.clone());
            }
        }
        if !opts.dry_run {
            // Its handle (never through a symlink): private until its own mode is set last
            // (where this user may change it).
            match r.dir(&path) {
                Ok(d) => {
                    let _ = d
                        .file()
                        .and_then(|f| f.set_permissions(fs::Permissions::from_mode(0o700)));
                }
                Err(e) => {
                    r.io_error(&path, "cannot enter directory", &e);
                    return false;
                }
            }
        }
        self.res.dirs += 1;
        self.dirs.push((path.into_boxed_path(), meta));
        true
    }

    /// `--delete`: removes what the target folder `dir` (snapshot path `rel`) holds that is not
    /// among `kids` (or is of another type), except entries matching an exclude pattern.
    fn delete_extras(&mut self, dir: &Path, rel: &[u8], kids: &[Node]) {
        let r = self.r;
        let want: HashMap<&[u8], NodeKind> =
            kids.iter().map(|n| (n.name.as_slice(), n.kind)).collect();
        let handle = match r.dir(dir) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                r.error(dir, format!("cannot list for --delete: {e}"));
                return;
            }
        };
        let rd = match fs::read_dir(handle.entry(std::ffi::OsStr::new("."))) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                r.error(dir, format!("cannot list for --delete: {e}"));
                return;
            }
        };
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    r.error(dir, format!("cannot list for --delete: {err}"));
                    return;
                }
            };
            let name = e.file_name();
            let Ok(ft) = e.file_type() else { continue };
            if want.get(name.as_bytes()).is_some_and(|&k| same_type(k, ft)) {
                continue;
            }
            let mut child = rel.to_vec();
            child.push(b'/');
            child.extend_from_slice(name.as_bytes());
            if self.sel.excluded(&child)
                || self
                    .keeps
                    .as_ref()
                    .is_some_and(|k| super::pattern::matches(k, &child))
            {
                continue;
            }
            let p = dir.join(&name);
            r.progress.change(Change::Delete, &p);
            self.res.deleted += 1;
            if self.res.deletions.len() < DELETIONS_LISTED {
                // A dry run says what a folder holds; a real one removes it.
                let (entries, bytes) = if self.opts().dry_run && ft.is_dir() {
                    held(&handle.entry(&name))
                } else {
                    (
                        1,
                        e.metadata()
                            .map(|m| if ft.is_file() { m.len() } else { 0 })
                            .unwrap_or(0),
                    )
                };
                self.res.deletions.push(Deletion {
                    path: p.clone(),
                    entries,
                    bytes,
                });
            }
            if !self.opts().dry_run {
                // std's remove_dir_all never follows a symlink inside what it removes.
                let at = handle.entry(&name);
                let gone = if ft.is_dir() {
                    let gone = fs::remove_dir_all(&at);
                    if let Some(t) = &r.target {
                        t.forget_dirs();
                    }
                    gone
                } else {
                    fs::remove_file(&at)
                };
                if let Err(err) = gone {
                    r.error(&p, format!("cannot delete: {err}"));
                }
            }
        }
    }

    /// Handles one entry of the walk; whether to walk into it.
    fn visit(&mut self, rel: &[u8], n: &Node) -> Result<bool> {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let r = self.r;
        let opts = r.opts;
        if !n.has_safe_name() {
            r.error(
                &opts.target,
                format!("refusing to restore an entry named {:?}: not a plain file name (damaged or forged tree?)", n.name_lossy()),
            );
            return Ok(false);
        }
        let (take, descend) = self.sel.decide(rel, n.kind == NodeKind::Dir);
        if !take && !descend {
            return Ok(false);
        }
        let path = self.target_path(rel);
        let meta = self.owners.meta(n, self.numeric, opts);
        if n.kind == NodeKind::Dir {
            if !take {
                self.pending.insert(path, meta);
                return Ok(true);
            }
            self.ensure_parents(&path);
            if !self.make_dir(path.clone(), meta) {
                return Ok(false);
            }
            if opts.delete && deletes_in(opts, rel) {
                let kids = match n.subtree {
                    Some(t) => self.r.repo.load_dir(&t)?,
                    None => Vec::new(),
                };
                self.delete_extras(&path, rel, &kids);
            }
            return Ok(true);
        }
        if !take {
            return Ok(false);
        }
        self.ensure_parents(&path);
        let found = self.look(&path);
        if found.is_ok() && opts.overwrite == Overwrite::Never {
            r.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        match n.kind {
            NodeKind::File => self.file(path, n, meta, found.ok()),
            NodeKind::Symlink => {
                let target = std::ffi::OsStr::from_bytes(&n.link_target);
                if found.as_ref().is_ok_and(|m| m.is_symlink())
                    && r.entry(&path)
                        .and_then(|e| fs::read_link(&e.path))
                        .is_ok_and(|t| t.as_os_str() == target)
                {
                    self.res.links += 1;
                    r.apply_meta(&path, On::Link, &meta);
                    return Ok(false);
                }
                if !self.replace(&path, found) {
                    return Ok(false);
                }
                if opts.dry_run {
                    return Ok(false);
                }
                match r
                    .entry(&path)
                    .and_then(|e| std::os::unix::fs::symlink(target, &e.path))
                {
                    Ok(()) => {
                        self.res.links += 1;
                        r.apply_meta(&path, On::Link, &meta);
                    }
                    Err(e) => r.io_error(&path, "cannot create symlink", &e),
                }
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                if opts.no_special {
                    r.skipped.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
                if n.kind != NodeKind::Fifo && !r.root {
                    r.warn(&path, "device node not restored (needs root)".into());
                    return Ok(false);
                }
                if let Ok(m) = &found {
                    if same_type(n.kind, m.file_type())
                        && (n.kind == NodeKind::Fifo || m.rdev() == n.rdev)
                    {
                        self.res.specials += 1;
                        r.apply_meta(&path, On::Node(n.kind), &meta);
                        return Ok(false);
                    }
                }
                if !self.replace(&path, found) || opts.dry_run {
                    return Ok(false);
                }
                match r
                    .entry(&path)
                    .and_then(|e| fsmeta::make_special(&e.path, n))
                {
                    Ok(()) => {
                        self.res.specials += 1;
                        r.apply_meta(&path, On::Node(n.kind), &meta);
                    }
                    Err(e) => r.io_error(&path, "cannot create special file", &e),
                }
            }
            NodeKind::Socket | NodeKind::Dir => {}
        }
        Ok(false)
    }

    /// Reports a link or special file about to be created and removes what is in its place;
    /// false when that is a directory (an error, unless `--delete` removed it first).
    fn replace(&mut self, path: &Path, found: std::io::Result<fs::Metadata>) -> bool {
        let r = self.r;
        match found {
            Ok(m) if m.is_dir() => {
                r.error(
                    path,
                    "not restored: a directory is in the way (restore with --delete to replace it)"
                        .into(),
                );
                false
            }
            Ok(_) => {
                r.progress.change(Change::Update, path);
                if !r.opts.dry_run {
                    if let Ok(e) = r.entry(path) {
                        let _ = fs::remove_file(&e.path);
                    }
                }
                true
            }
            Err(_) => {
                r.progress.change(Change::New, path);
                true
            }
        }
    }

    fn file(&mut self, path: PathBuf, n: &Node, meta: Meta, found: Option<fs::Metadata>) {
        let (r, opts) = (self.r, self.r.opts);
        // Nothing at the path: written without looking again.
        let mut fresh = found.is_none();
        let mut created = None;
        if let Some(k) = n.hardlink_key() {
            if let Some(first) = self.links.get(&k) {
                // Another name of a file restored already.
                let first_now = r.entry(first).and_then(|e| fs::symlink_metadata(&e.path));
                if let (Some(a), Ok(b)) = (&found, first_now) {
                    if a.ino() == b.ino() && a.dev() == b.dev() {
                        // Already right: counted with the files already right.
                        r.unchanged.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                r.progress.change(
                    if found.is_some() {
                        Change::Update
                    } else {
                        Change::New
                    },
                    &path,
                );
                if opts.dry_run {
                    // Counted as the real run would count it.
                    self.res.links += 1;
                    self.res.hardlinks += 1;
                    return;
                }
                if found.as_ref().is_some_and(|m| m.is_dir()) {
                    r.error(&path, "not restored: a directory is in the way (restore with --delete to replace it)".into());
                    return;
                }
                let linked = r.entry(first).and_then(|from| {
                    let to = r.entry(&path)?;
                    let _ = fs::remove_file(&to.path);
                    fs::hard_link(&from.path, &to.path)
                });
                match linked {
                    Ok(()) => {
                        self.res.links += 1;
                        self.res.hardlinks += 1;
                    }
                    Err(e) => r.error(
                        &path,
                        format!("cannot create hard link to {}: {e}", first.display()),
                    ),
                }
                return;
            }
            // Create the first name now, so later names can link to it. A name that is there
            // already is kept (a rerun may find it complete) and compared as any file is.
            if found.is_none() && !opts.dry_run {
                let made = r
                    .entry(&path)
                    .and_then(|e| e.dir.create_new(&e.name))
                    .and_then(|f| f.metadata());
                match made {
                    Ok(m) => created = Some((m.dev(), m.ino())),
                    Err(e) => {
                        r.io_error(&path, "cannot create file", &e);
                        return;
                    }
                }
                fresh = true;
            }
            self.links.insert(k, path.clone());
        }
        self.total_bytes += n.size;
        let job = FileJob {
            links: if n.hardlink_key().is_some() {
                n.nlink
            } else {
                1
            },
            created,
            path: path.into_boxed_path(),
            content: n.content.clone(),
            size: n.size,
            meta,
            fresh,
            plan: None,
        };
        self.queued += 1;
        if self.queued.is_multiple_of(1000) {
            // The totals so far: files are written while the walk goes on.
            r.progress.total(self.queued, self.total_bytes);
        }
        match &self.tx {
            Some(t) => {
                let _ = t.send(job);
            }
            None => self.jobs.push(job),
        }
    }
}

/// As [`restore`]; with a gate, files are written as soon as all their packs are readable, and
/// the restore waits on the gate for the rest (archived packs being thawed).
pub fn restore_gated(
    repo: &Repository,
    root: BlobId,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    gate: Option<&dyn PackGate>,
) -> Result<RestoreResult> {
    let sel = Selection::new(&opts.includes, &opts.excludes)?;
    let r = Restorer {
        target: None,
        repo,
        opts,
        progress,
        root: fsmeta::is_root(),
        warnings: Mutex::new(Vec::new()),
        errors: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        files: AtomicU64::new(0),
        unchanged: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        reused: AtomicU64::new(0),
        verified: AtomicU64::new(0),
        reader: None,
        pool: crate::ops::thread_pool(opts.threads, "restore")?,
    };
    let (start_tree, prefix, single) = resolve_start(repo, root, &opts.subpath)?;
    // An --include that names nothing is a typo, not a request to restore nothing.
    for inc in sel.exact_includes() {
        if find(repo, root, inc).is_err() {
            return Err(Error::NotFound(format!(
                "--include {}: no such path in the snapshot (paths are absolute, as `chunkbak ls` shows them)",
                String::from_utf8_lossy(inc)
            )));
        }
    }
    prepare_target(&opts.target, opts.dry_run)?;
    let mut r = r;
    r.target = match at::Target::open(&opts.target) {
        Ok(t) => Some(t),
        Err(e) if opts.dry_run && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&opts.target, e)),
    };
    let r = r;

    // The totals before the first write, so progress counts down against the real figures:
    // one walk of the trees (loaded once, kept in memory for the restore's own walk).
    // Hard links are counted by name here; the figures after the walk replace these.
    let (mut files, mut bytes) = (0u64, 0u64);
    match &single {
        Some(n) => (files, bytes) = (1, n.size),
        None => {
            let mut count = Selection::new(&opts.includes, &opts.excludes)?;
            walk(repo, start_tree, &prefix, &mut |p, n| {
                let (take, descend) = count.decide(p, n.kind == NodeKind::Dir);
                if take && n.kind == NodeKind::File {
                    files += 1;
                    bytes += n.size;
                }
                Ok(descend || take)
            })?;
        }
    }
    progress.final_total(files, bytes);

    // A local restore writes files while the walk goes on: workers take them in tree order
    // from a bounded queue. A remote or gated one plans every read before it writes.
    let streaming = !repo.backend().is_remote() && gate.is_none();
    let (tx, rx) = std::sync::mpsc::sync_channel::<FileJob>(1024);
    let rx = Mutex::new(rx);
    let mut w = Walker {
        r: &r,
        sel,
        keeps: (opts.delete && !opts.delete_keeps.is_empty())
            .then(|| super::pattern::pattern_set(&opts.delete_keeps, "exclude"))
            .transpose()?,
        prefix: prefix.clone(),
        owners: OwnerIds::default(),
        // Owners are only set by root: nobody else needs the names looked up.
        numeric: opts.numeric_owner || !r.root,
        dirs: Vec::new(),
        pending: HashMap::new(),
        links: HashMap::new(),
        new_dirs: Default::default(),
        res: RestoreResult::default(),
        queued: 0,
        total_bytes: 0,
        tx: streaming.then_some(tx),
        jobs: Vec::new(),
    };
    if opts.delete {
        match &single {
            Some(n) => w.delete_extras(&opts.target, b"", std::slice::from_ref(n)),
            None if opts.includes.is_empty() && deletes_in(opts, &prefix) => {
                let kids = repo.load_dir(&start_tree)?;
                w.delete_extras(&opts.target, &prefix, &kids);
            }
            // With includes, only the folders taken whole are made to match.
            None => {}
        }
    }
    // Set when the walk failed: the files still queued are left unwritten.
    let stop = AtomicBool::new(false);
    let walked = std::thread::scope(|sc| {
        if streaming {
            for _ in 0..r.pool.current_num_threads() {
                sc.spawn(|| {
                    crate::ops::abort_on_panic(|| loop {
                        let Ok(job) = rx.lock().expect("file queue").recv() else {
                            break;
                        };
                        // The queue is drained unwritten after an interrupt or a failed walk,
                        // so the walk can end.
                        if !crate::ops::interrupted() && !stop.load(Ordering::Relaxed) {
                            r.write_file(&job);
                        }
                    })
                });
            }
        }
        // A panic in the walk closes the queue too, so the workers end and the panic goes on.
        let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &single {
            Some(n) => {
                let mut rel = b"/".to_vec();
                rel.extend_from_slice(&n.name);
                w.visit(&rel, n).map(|_| ())
            }
            None => walk(repo, start_tree, &prefix, &mut |p, n| w.visit(p, n)),
        }));
        if !matches!(walked, Ok(Ok(()))) {
            stop.store(true, Ordering::Relaxed);
        }
        // The workers end once the queue is empty and closed.
        w.tx.take();
        walked.unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    walked?;
    if w.sel.patterns_matched_nothing() {
        r.warn(
            &opts.target,
            "no entry of the snapshot matches the --include patterns".into(),
        );
    }
    progress.final_total(w.queued, w.total_bytes);
    let mut jobs = std::mem::take(&mut w.jobs);
    let (dirs, mut res) = (std::mem::take(&mut w.dirs), std::mem::take(&mut w.res));
    drop(w);
    let mut r = r;
    if !jobs.is_empty() {
        // Compare with what the target holds first, so only the chunks needed are fetched.
        let plan_of = |j: &FileJob| Some(r.plan_file(j).map_err(|e| e.to_string()));
        let plans: Vec<_> = r.pool.install(|| jobs.par_iter().map(plan_of).collect());
        for (j, p) in jobs.iter_mut().zip(plans) {
            j.plan = p;
        }
    }
    if repo.backend().is_remote() && !opts.dry_run {
        // Every blob the restore reads, in planned order, so ranges are fetched once.
        let blobs = crate::ops::packread::with_bases(
            repo,
            jobs.iter()
                .filter_map(|j| j.plan.as_ref()?.as_ref().ok())
                .flat_map(|p| p.needed().copied()),
        );
        r.reader = Some(PackReader::new(repo, &blobs, RANGE_BUDGET)?);
    }
    let r = r;

    let mut pending = jobs;
    // (A streaming restore wrote its files during the walk.)
    while !pending.is_empty() {
        let (ready, waiting): (Vec<FileJob>, Vec<FileJob>) = match gate {
            None => (pending, Vec::new()),
            Some(g) => pending.into_iter().partition(|job| match &job.plan {
                Some(Ok(p)) => packs_of(repo, p.needed())
                    // A file whose chunks cannot be located fails when restored, with a reason.
                    .is_none_or(|packs| packs.iter().all(|p| g.readable(p))),
                _ => true,
            }),
        };
        // Workers take files in tree order from one queue (not rayon's split of the list into
        // distant halves), so reads move through the packs together and a fetched pack range
        // is used up soon after it arrives.
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..r.pool.current_num_threads() {
                sc.spawn(|| {
                    crate::ops::abort_on_panic(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = ready.get(i) else { break };
                        if crate::ops::interrupted() {
                            break;
                        }
                        r.write_file(job);
                    })
                });
            }
        });
        if crate::ops::interrupted() {
            return Err(crate::stop::error(|| restored_so_far(&r)));
        }
        pending = waiting;
        if let (Some(g), false) = (gate, pending.is_empty()) {
            g.wait()?;
        }
    }
    if crate::ops::interrupted() {
        return Err(crate::stop::error(|| restored_so_far(&r)));
    }
    if !opts.dry_run {
        for (path, n) in dirs.iter().rev() {
            match r.dir(path).and_then(|d| d.file()) {
                Ok(f) => r.apply_meta(path, On::File(&f), n),
                Err(e) => r.warn(path, format!("cannot set metadata: {e}")),
            }
        }
    }
    res.bytes = r.bytes.load(Ordering::Relaxed);
    res.files = r.files.load(Ordering::Relaxed);
    res.files_unchanged = r.unchanged.load(Ordering::Relaxed);
    res.files_skipped = r.skipped.load(Ordering::Relaxed);
    res.bytes_reused = r.reused.load(Ordering::Relaxed);
    res.verified = r.verified.load(Ordering::Relaxed);
    res.errors = r.errors.load(Ordering::Relaxed);
    res.warnings = std::mem::take(&mut *r.warnings.lock().expect("warnings"));
    Ok(res)
}
