//! `restore`: recreate a snapshot (or part of it) under a target directory. Directories, links
//! and special files are created while walking the trees; file contents are written in parallel,
//! every chunk verified against its id; all-zero chunks become holes. Metadata of directories is
//! applied last, deepest first, so writing into them cannot disturb their times and modes.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::fsmeta;
use super::ls::{components, find, walk};
use super::packread::PackReader;
use super::thaw::PackGate;
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};
use crate::id::BlobId;
use crate::progress::Progress;
use crate::repo::Repository;

/// Memory a restore from a remote repository may hold in fetched pack ranges.
const RANGE_BUDGET: u64 = 128 << 20;

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

struct FileJob {
    path: PathBuf,
    node: Node,
}

struct Restorer<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    progress: &'a dyn Progress,
    root: bool,
    warnings: Mutex<Vec<(PathBuf, String)>>,
    errors: AtomicU64,
    bytes: AtomicU64,
    files: AtomicU64,
    /// Remote repositories: blobs come from pack ranges fetched once.
    reader: Option<PackReader<'a>>,
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
    fn apply_meta(&self, path: &Path, n: &Node) {
        if self.root {
            let uid = (!self.opts.numeric_owner)
                .then(|| n.user.as_deref().and_then(fsmeta::uid_of))
                .flatten()
                .unwrap_or(n.uid);
            let gid = (!self.opts.numeric_owner)
                .then(|| n.group.as_deref().and_then(fsmeta::gid_of))
                .flatten()
                .unwrap_or(n.gid);
            if let Err(e) = fsmeta::set_owner(path, uid, gid) {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        if n.kind != NodeKind::Symlink {
            if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(n.mode & 0o7777)) {
                self.warn(path, format!("cannot set mode {:o}: {e}", n.mode & 0o7777));
            }
        }
        for (k, v) in &n.xattrs {
            if let Err(e) = xattr::set(path, std::ffi::OsStr::from_bytes(k), v) {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        if let Err(e) = fsmeta::set_times(path, n.mtime) {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }

    /// Writes a file's chunks; `done` counts the chunks read (each once, even on error).
    fn write_contents(
        &self,
        job: &FileJob,
        ids: &[BlobId],
        done: &mut usize,
    ) -> Result<(fs::File, u64)> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&job.path)
            .map_err(|e| Error::io(&job.path, e))?;
        let mut off = 0u64;
        for id in ids {
            *done += 1;
            let data = match &self.reader {
                Some(r) => r.read(id)?,
                None => self.repo.read_blob(id)?,
            };
            write_sparse(&f, &data, off).map_err(|e| Error::io(&job.path, e))?;
            off += data.len() as u64;
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.progress.bytes(data.len() as u64);
        }
        Ok((f, off))
    }

    fn restore_file(&self, job: &FileJob) -> Result<()> {
        let ids: Vec<BlobId> = self.repo.file_chunks(&job.node.content)?;
        let mut done = 0usize;
        let written = self.write_contents(job, &ids, &mut done);
        if written.is_err() {
            // The file's remaining planned reads will not happen: release their ranges.
            if let Some(r) = &self.reader {
                r.skip(&ids[done..]);
            }
        }
        let (f, off) = written?;
        f.set_len(off).map_err(|e| Error::io(&job.path, e))?;
        if off != job.node.size {
            self.warn(
                &job.path,
                format!("restored {off} bytes, the snapshot recorded {} (file changed while backed up?)", job.node.size),
            );
        }
        drop(f);
        self.apply_meta(&job.path, &job.node);
        self.files.fetch_add(1, Ordering::Relaxed);
        self.progress.file_done(&job.path);
        Ok(())
    }
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
        opts,
        progress,
        root: fsmeta::is_root(),
        warnings: Mutex::new(Vec::new()),
        errors: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        files: AtomicU64::new(0),
        reader: None,
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
    fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;

    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut jobs: Vec<FileJob> = Vec::new();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut total_bytes = 0u64;
    let target = opts.target.clone();
    let mut handle = |rel: &[u8], n: &Node, res: &mut RestoreResult| -> Result<bool> {
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
                dirs.push((path, n.clone()));
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
                jobs.push(FileJob {
                    path,
                    node: n.clone(),
                });
            }
            NodeKind::Symlink => {
                let _ = fs::remove_file(&path);
                match std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&n.link_target), &path)
                {
                    Ok(()) => {
                        res.links += 1;
                        r.apply_meta(&path, n);
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
                        r.apply_meta(&path, n);
                    }
                    Err(e) => r.error(&path, format!("cannot create special file: {e}")),
                }
            }
            NodeKind::Socket => {}
        }
        Ok(false)
    };
    if let Some(n) = single {
        let name = n.name.clone();
        let mut rel = b"/".to_vec();
        rel.extend_from_slice(&name);
        handle(&rel, &n, &mut res)?;
    } else {
        walk(repo, start_tree, &prefix, &mut |p, n| {
            handle(p, n, &mut res)
        })?;
    }
    progress.total(res.files, total_bytes);
    let mut r = r;
    if repo.backend().is_remote() {
        // Every blob the restore reads, in planned order, so ranges are fetched once.
        let mut blobs = Vec::new();
        for job in &jobs {
            if let Ok(ids) = repo.file_chunks(&job.node.content) {
                blobs.extend(ids);
            }
        }
        r.reader = Some(PackReader::new(repo, &blobs, RANGE_BUDGET)?);
    }
    let r = r;

    let pool = crate::ops::thread_pool(opts.threads, "restore")?;
    let mut pending = jobs;
    loop {
        let (ready, waiting): (Vec<FileJob>, Vec<FileJob>) = match gate {
            None => (pending, Vec::new()),
            Some(g) => pending.into_iter().partition(|job| {
                repo.file_chunks(&job.node.content)
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
        pool.scope(|s| {
            for _ in 0..pool.current_num_threads() {
                s.spawn(|_| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = ready.get(i) else { break };
                    if crate::ops::interrupted() {
                        break;
                    }
                    if let Err(e) = r.restore_file(job) {
                        r.error(&job.path, format!("not restored: {e}"));
                    }
                });
            }
        });
        if crate::ops::interrupted() {
            return Err(Error::Interrupted);
        }
        pending = waiting;
        match gate {
            Some(g) if !pending.is_empty() => g.wait()?,
            _ => break,
        }
    }
    for (path, n) in dirs.iter().rev() {
        r.apply_meta(path, n);
    }
    res.bytes = r.bytes.load(Ordering::Relaxed);
    res.files = r.files.load(Ordering::Relaxed);
    res.errors = r.errors.load(Ordering::Relaxed);
    res.warnings = std::mem::take(&mut *r.warnings.lock().expect("warnings"));
    Ok(res)
}
