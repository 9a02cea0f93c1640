//! `restore`: recreate a snapshot (or part of it) under a target directory. Directories, links
//! and special files are created while walking the trees; file contents are written in parallel,
//! every chunk verified against its id; all-zero chunks become holes. Metadata of directories is
//! applied last, deepest first, so writing into them cannot disturb their times and modes.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::fsmeta;
use super::ls::{components, find, walk};
use super::packread::PackReader;
use super::thaw::PackGate;
use crate::error::{Error, Result};
use crate::format::tree::{Content, Node, NodeKind};
use crate::id::BlobId;
use crate::progress::Progress;
use crate::repo::Repository;

/// Memory a restore from a remote repository may hold in fetched pack ranges.
const RANGE_BUDGET: u64 = 128 << 20;

/// Files of at least this many chunks are written by all threads at once.
const PARALLEL_CHUNKS: usize = 4;

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Path inside the snapshot to restore (its contents go into the target); empty for all.
    pub subpath: Vec<u8>,
    /// Restore only these paths (inside the snapshot) and what is below them.
    pub includes: Vec<Vec<u8>>,
    /// Use the numeric uid/gid instead of looking up the stored user and group names.
    pub numeric_owner: bool,
    pub threads: usize,
}

#[derive(Debug, Default)]
pub struct RestoreResult {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub specials: u64,
    pub bytes: u64,
    /// Entries that could not be restored (the run went on without them).
    pub errors: u64,
    pub warnings: Vec<(PathBuf, String)>,
}

/// A file to write, kept until the walk is over: only what writing it needs, since a restore
/// holds one per file of the snapshot (a `Node` costs about twice as much).
struct FileJob {
    path: Box<Path>,
    content: Content,
    size: u64,
    meta: Meta,
}

/// The metadata a restore applies to an entry, owners already resolved to this system's ids.
struct Meta {
    symlink: bool,
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
    fn meta(&mut self, n: &Node, numeric: bool) -> Meta {
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
        Meta {
            symlink: n.kind == NodeKind::Symlink,
            mode: n.mode,
            uid,
            gid,
            mtime: n.mtime,
            xattrs: n.xattrs.clone().into_boxed_slice(),
        }
    }
}

struct Restorer<'a> {
    repo: &'a Repository,
    progress: &'a dyn Progress,
    root: bool,
    warnings: Mutex<Vec<(PathBuf, String)>>,
    errors: AtomicU64,
    bytes: AtomicU64,
    files: AtomicU64,
    /// Remote repositories: blobs come from pack ranges fetched once.
    reader: Option<PackReader<'a>>,
    /// Threads that write the chunks of one large file at once.
    pool: rayon::ThreadPool,
}

/// Writes `data` at `off`, leaving 4 KiB blocks that are all zero as holes (the file is
/// created empty and its final length set afterwards).
fn write_sparse(f: &fs::File, data: &[u8], off: u64) -> std::io::Result<()> {
    const BLOCK: u64 = 4096;
    let mut i = 0usize;
    while i < data.len() {
        // Block boundaries follow file offsets, so holes align with the file system's blocks.
        let block_end = (((off + i as u64) / BLOCK + 1) * BLOCK - off) as usize;
        let end = block_end.min(data.len());
        if data[i..end].iter().any(|&b| b != 0) {
            // Extend over following non-zero blocks to write in large pieces.
            let mut j = end;
            while j < data.len() {
                let next = (j + BLOCK as usize).min(data.len());
                if data[j..next].iter().all(|&b| b == 0) {
                    break;
                }
                j = next;
            }
            f.write_all_at(&data[i..j], off + i as u64)?;
            i = j;
        } else {
            i = end;
        }
    }
    Ok(())
}

impl Restorer<'_> {
    fn warn(&self, path: &Path, msg: String) {
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

    /// chown (when root), chmod, xattrs, times: in this order, since chown clears set-id bits.
    /// With `file` (a regular file just written) through its descriptor: a restore of many
    /// small files would otherwise spend much of its kernel time looking up their paths.
    fn apply_meta(&self, path: &Path, file: Option<&fs::File>, n: &Meta) {
        if self.root {
            let (uid, gid) = (n.uid, n.gid);
            let r = match file {
                Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid)),
                None => fsmeta::set_owner(path, uid, gid),
            };
            if let Err(e) = r {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        if !n.symlink {
            let mode = fs::Permissions::from_mode(n.mode & 0o7777);
            let r = match file {
                Some(f) => f.set_permissions(mode),
                None => fs::set_permissions(path, mode),
            };
            if let Err(e) = r {
                self.warn(path, format!("cannot set mode {:o}: {e}", n.mode & 0o7777));
            }
        }
        for (k, v) in n.xattrs.iter() {
            let name = std::ffi::OsStr::from_bytes(k);
            let r = match file {
                Some(f) => xattr::FileExt::set_xattr(f, name, v),
                None => xattr::set(path, name, v),
            };
            if let Err(e) = r {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        let r = match file {
            Some(f) => fsmeta::set_times_fd(f, n.mtime),
            None => fsmeta::set_times(path, n.mtime),
        };
        if let Err(e) = r {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }

    fn read_chunk(&self, id: &BlobId) -> Result<Vec<u8>> {
        match &self.reader {
            Some(r) => r.read(id),
            None => self.repo.read_blob(id),
        }
    }

    /// The plaintext length of each chunk, from the index (None if one is missing: the file
    /// then fails as it is written, with the reason).
    fn raw_lens(&self, ids: &[BlobId]) -> Option<Vec<u64>> {
        let idx = self.repo.index().read().expect("index lock");
        ids.iter()
            .map(|id| idx.get(id).map(|(_, l)| u64::from(l.raw_len)))
            .collect()
    }

    /// Writes a file's chunks; `read[i]` is set once chunk `i` was read (or tried). A file of
    /// [`PARALLEL_CHUNKS`] chunks or more is written by every thread of the pool at once, each
    /// chunk with a positioned write at its offset, so one huge file (a disk image, a dump) is
    /// restored in parallel.
    fn write_contents(
        &self,
        job: &FileJob,
        ids: &[BlobId],
        read: &[AtomicBool],
    ) -> Result<(fs::File, u64)> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&job.path)
            .map_err(|e| Error::io(&*job.path, e))?;
        let put = |i: usize, off: u64| -> Result<u64> {
            if crate::ops::interrupted() {
                return Err(Error::Interrupted);
            }
            read[i].store(true, Ordering::Relaxed);
            let data = self.read_chunk(&ids[i])?;
            write_sparse(&f, &data, off).map_err(|e| Error::io(&*job.path, e))?;
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.progress.bytes(data.len() as u64);
            Ok(data.len() as u64)
        };
        let lens = if ids.len() >= PARALLEL_CHUNKS {
            self.raw_lens(ids)
        } else {
            None
        };
        let Some(lens) = lens else {
            let mut off = 0u64;
            for i in 0..ids.len() {
                off += put(i, off)?;
            }
            return Ok((f, off));
        };
        let mut offs = Vec::with_capacity(lens.len());
        let mut end = 0u64;
        for l in &lens {
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

    /// Restores one file; a failure is reported and counted, and the restore goes on.
    fn write_file(&self, job: &FileJob) {
        if let Err(e) = self.restore_file(job) {
            self.error(&job.path, format!("not restored: {e}"));
        }
    }

    fn restore_file(&self, job: &FileJob) -> Result<()> {
        let ids: Vec<BlobId> = self.repo.file_chunks(&job.content)?;
        let read: Vec<AtomicBool> = ids.iter().map(|_| AtomicBool::new(false)).collect();
        let written = self.write_contents(job, &ids, &read);
        if written.is_err() {
            // The file's remaining planned reads will not happen: release their ranges.
            if let Some(r) = &self.reader {
                let unread: Vec<BlobId> = ids
                    .iter()
                    .zip(&read)
                    .filter(|(_, d)| !d.load(Ordering::Relaxed))
                    .map(|(id, _)| *id)
                    .collect();
                r.skip(&unread);
            }
        }
        let (f, off) = written?;
        f.set_len(off).map_err(|e| Error::io(&*job.path, e))?;
        if off != job.size {
            self.warn(
                &job.path,
                format!("restored {off} bytes, the snapshot recorded {} (file changed while backed up?)", job.size),
            );
        }
        self.apply_meta(&job.path, Some(&f), &job.meta);
        drop(f);
        self.files.fetch_add(1, Ordering::Relaxed);
        self.progress.file_done(&job.path);
        Ok(())
    }
}

/// Creates the restore target if needed; an error before anything is written when it is not a
/// folder or cannot be written into (instead of one error per file).
fn prepare_target(t: &Path) -> Result<()> {
    if fs::metadata(t).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::Invalid(format!(
            "restore target {} exists and is not a folder",
            t.display()
        )));
    }
    fs::create_dir_all(t).map_err(|e| Error::io(t, e))?;
    let c = std::ffi::CString::new(t.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("restore target {} holds a NUL byte", t.display())))?;
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(Error::Invalid(format!(
            "cannot write into restore target {}: {}",
            t.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

pub(crate) fn is_included(path: &[u8], includes: &[Vec<u8>]) -> (bool, bool) {
    // (restore this entry, descend into it)
    if includes.is_empty() {
        return (true, true);
    }
    let pc = components(path);
    let mut descend = false;
    for inc in includes {
        let ic = components(inc);
        if pc.len() >= ic.len() && pc[..ic.len()] == ic[..] {
            return (true, true);
        }
        if ic.len() > pc.len() && ic[..pc.len()] == pc[..] {
            descend = true;
        }
    }
    (descend, descend)
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

/// The packs a file's contents are in (None when a chunk is not in the index).
fn packs_of(repo: &Repository, ids: &[BlobId]) -> Option<Vec<crate::id::ObjectId>> {
    let idx = repo.index().read().expect("index lock");
    let mut out: Vec<_> = ids
        .iter()
        .map(|id| idx.get(id).map(|(p, _)| p.id))
        .collect::<Option<_>>()?;
    out.sort();
    out.dedup();
    Some(out)
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
    let r = Restorer {
        repo,
        progress,
        root: fsmeta::is_root(),
        warnings: Mutex::new(Vec::new()),
        errors: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        files: AtomicU64::new(0),
        reader: None,
        pool: crate::ops::thread_pool(opts.threads, "restore")?,
    };
    let mut res = RestoreResult::default();
    let (start_tree, prefix, single) = resolve_start(repo, root, &opts.subpath)?;
    // An --include that names nothing is a typo, not a request to restore nothing.
    for inc in &opts.includes {
        if find(repo, root, inc).is_err() {
            return Err(Error::NotFound(format!(
                "--include {}: no such path in the snapshot (paths are absolute, as `chunkbak ls` shows them)",
                String::from_utf8_lossy(inc)
            )));
        }
    }
    prepare_target(&opts.target)?;

    let mut dirs: Vec<(Box<Path>, Meta)> = Vec::new();
    let mut owners = OwnerIds::default();
    // Owners are only set by root: nobody else needs the names looked up.
    let numeric = opts.numeric_owner || !r.root;
    let mut jobs: Vec<FileJob> = Vec::new();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut total_bytes = 0u64;
    let target = opts.target.clone();
    // A local restore writes files while the walk goes on: workers take them in tree order
    // from a bounded queue. A remote or gated one plans every read before it writes.
    let streaming = !repo.backend().is_remote() && gate.is_none();
    let (tx, rx) = std::sync::mpsc::sync_channel::<FileJob>(1024);
    let tx = Mutex::new(streaming.then_some(tx));
    let rx = Mutex::new(rx);
    let mut queued = 0u64;
    let mut handle = |rel: &[u8], n: &Node, res: &mut RestoreResult| -> Result<bool> {
        if crate::ops::interrupted() {
            return Err(Error::Interrupted);
        }
        if !n.has_safe_name() {
            r.error(
                &target,
                format!("refusing to restore an entry named {:?}: not a plain file name (damaged or forged tree?)", n.name_lossy()),
            );
            return Ok(false);
        }
        let (restore_it, descend) = is_included(rel, &opts.includes);
        if !restore_it && !descend {
            return Ok(false);
        }
        let rel_in = rel.strip_prefix(prefix.as_slice()).unwrap_or(rel);
        let path = target.join(Path::new(std::ffi::OsStr::from_bytes(
            rel_in.strip_prefix(b"/").unwrap_or(rel_in),
        )));
        match n.kind {
            NodeKind::Dir => {
                match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
                    Err(e) => {
                        r.error(&path, format!("cannot create directory: {e}"));
                        return Ok(false);
                    }
                }
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
                res.dirs += 1;
                dirs.push((path.into_boxed_path(), owners.meta(n, numeric)));
                return Ok(true);
            }
            _ if !restore_it => return Ok(false),
            NodeKind::File => {
                if let Some(k) = n.hardlink_key() {
                    if let Some(first) = links.get(&k) {
                        let _ = fs::remove_file(&path);
                        match fs::hard_link(first, &path) {
                            Ok(()) => res.links += 1,
                            Err(e) => r.error(
                                &path,
                                format!("cannot create hard link to {}: {e}", first.display()),
                            ),
                        }
                        return Ok(false);
                    }
                    // Create the first name now so later names can link to it.
                    if let Err(e) = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&path)
                    {
                        r.error(&path, format!("cannot create file: {e}"));
                        return Ok(false);
                    }
                    links.insert(k, path.clone());
                }
                total_bytes += n.size;
                let job = FileJob {
                    path: path.into_boxed_path(),
                    content: n.content.clone(),
                    size: n.size,
                    meta: owners.meta(n, numeric),
                };
                queued += 1;
                if queued.is_multiple_of(1000) {
                    // The totals so far: files are written while the walk goes on.
                    progress.total(queued, total_bytes);
                }
                match &*tx.lock().expect("file queue") {
                    Some(t) => {
                        let _ = t.send(job);
                    }
                    None => jobs.push(job),
                }
            }
            NodeKind::Symlink => {
                let _ = fs::remove_file(&path);
                match std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&n.link_target), &path)
                {
                    Ok(()) => {
                        res.links += 1;
                        r.apply_meta(&path, None, &owners.meta(n, numeric));
                    }
                    Err(e) => r.error(&path, format!("cannot create symlink: {e}")),
                }
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                if n.kind != NodeKind::Fifo && !r.root {
                    r.warn(&path, "device node not restored (needs root)".into());
                    return Ok(false);
                }
                let _ = fs::remove_file(&path);
                match fsmeta::make_special(&path, n) {
                    Ok(()) => {
                        res.specials += 1;
                        r.apply_meta(&path, None, &owners.meta(n, numeric));
                    }
                    Err(e) => r.error(&path, format!("cannot create special file: {e}")),
                }
            }
            NodeKind::Socket => {}
        }
        Ok(false)
    };
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
                handle(&rel, n, &mut res).map(|_| ())
            }
            None => walk(repo, start_tree, &prefix, &mut |p, n| {
                handle(p, n, &mut res)
            }),
        }));
        if !matches!(walked, Ok(Ok(()))) {
            stop.store(true, Ordering::Relaxed);
        }
        // The workers end once the queue is empty and closed.
        tx.lock().expect("file queue").take();
        walked.unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    walked?;
    progress.total(queued, total_bytes);
    let mut r = r;
    if repo.backend().is_remote() {
        // Every blob the restore reads, in planned order, so ranges are fetched once.
        let mut blobs = Vec::new();
        for job in &jobs {
            if let Ok(ids) = repo.file_chunks(&job.content) {
                blobs.extend(ids);
            }
        }
        r.reader = Some(PackReader::new(repo, &blobs, RANGE_BUDGET)?);
    }
    let r = r;

    let mut pending = jobs;
    // (A streaming restore wrote its files during the walk.)
    while !pending.is_empty() {
        let (ready, waiting): (Vec<FileJob>, Vec<FileJob>) = match gate {
            None => (pending, Vec::new()),
            Some(g) => pending.into_iter().partition(|job| {
                repo.file_chunks(&job.content)
                    .ok()
                    .and_then(|ids| packs_of(repo, &ids))
                    // A file whose chunks cannot be located fails when restored, with a reason.
                    .is_none_or(|packs| packs.iter().all(|p| g.readable(p)))
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
            return Err(Error::Interrupted);
        }
        pending = waiting;
        if let (Some(g), false) = (gate, pending.is_empty()) {
            g.wait()?;
        }
    }
    if crate::ops::interrupted() {
        return Err(Error::Interrupted);
    }
    for (path, n) in dirs.iter().rev() {
        r.apply_meta(path, None, n);
    }
    res.bytes = r.bytes.load(Ordering::Relaxed);
    res.files = r.files.load(Ordering::Relaxed);
    res.errors = r.errors.load(Ordering::Relaxed);
    res.warnings = std::mem::take(&mut *r.warnings.lock().expect("warnings"));
    Ok(res)
}
