//! `backup`: walk the sources, chunk new and changed files in parallel, store new blobs, write
//! trees bottom-up, then the index, then the snapshot (the commit point).
//!
//! Threads: the calling thread walks (walkdir, pre-order, sorted by name) and hands each file
//! that must be read to a rayon pool; a finisher thread receives finished directories in
//! post-order, waits for their files, and stores their tree blobs; a scanner thread counts the
//! totals for the progress bar. Unchanged files (same size, mtime, ctime and inode as in the
//! parent snapshot, all chunks indexed) are never opened.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use super::fsmeta::{self, node_from_metadata, Owners};
use super::select::{timespec_of, Filter};
use crate::error::{Error, Result};
use crate::format::pack::BlobKind;
use crate::format::snapshot::{Snapshot, Summary};
use crate::format::tree::{Content, Node, NodeKind};
use crate::id::{BlobId, Id};
use crate::packer::BlobSaver;
use crate::progress::Progress;
use crate::repo::Repository;

/// Where `backup --stdin` reads from.
pub enum StdinSource {
    /// The process's standard input.
    Stdin,
    /// The standard output of a command; no snapshot is written if it exits non-zero.
    Command(Vec<OsString>),
}

/// Which snapshot unchanged files are compared with.
#[derive(Clone, Debug, Default)]
pub enum ParentMode {
    /// The newest snapshot with the same host and paths.
    #[default]
    Auto,
    /// This one (id or prefix).
    Id(String),
    /// None: read every file.
    None,
}

pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub host: String,
    pub tags: Vec<String>,
    pub time: Option<jiff::Timestamp>,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    pub parent: ParentMode,
    /// With `stdin`, the name of the single file in the snapshot.
    pub stdin_filename: String,
    pub stdin: Option<StdinSource>,
    /// Worker threads (0 = one per core).
    pub threads: usize,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            paths: Vec::new(),
            host: fsmeta::hostname(),
            tags: Vec::new(),
            time: None,
            excludes: Vec::new(),
            one_file_system: false,
            parent: ParentMode::Auto,
            stdin_filename: "stdin".into(),
            stdin: None,
            threads: 0,
        }
    }
}

/// What a backup did.
#[derive(Debug)]
pub struct BackupResult {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    pub parent: Option<Id>,
    /// Entries that were skipped or need attention, with the reason.
    pub warnings: Vec<(PathBuf, String)>,
    pub packs_written: u64,
}

/// A value one thread produces and another waits for.
struct Slot<T>(Arc<(Mutex<Option<T>>, Condvar)>);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<T: Clone> Slot<T> {
    fn new() -> Self {
        Slot(Arc::new((Mutex::new(None), Condvar::new())))
    }
    fn set(&self, v: T) {
        *self.0 .0.lock().expect("slot lock") = Some(v);
        self.0 .1.notify_all();
    }
    fn wait(&self) -> T {
        let mut g = self.0 .0.lock().expect("slot lock");
        while g.is_none() {
            g = self.0 .1.wait(g).expect("slot lock");
        }
        g.clone().expect("checked")
    }
}

/// A counting semaphore bounding the files in flight.
struct Permits {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Permits {
    fn acquire(&self) {
        let mut n = self.n.lock().expect("permits");
        while *n == 0 {
            n = self.cv.wait(n).expect("permits");
        }
        *n -= 1;
    }
    fn release(&self) {
        *self.n.lock().expect("permits") += 1;
        self.cv.notify_all();
    }
    /// Waits until every permit is back: no file job is running or queued.
    fn wait_all(&self, total: usize) {
        let mut n = self.n.lock().expect("permits");
        while *n < total {
            n = self.cv.wait(n).expect("permits");
        }
    }
}

#[derive(Clone)]
struct FileOut {
    content: Content,
    changed_while_reading: bool,
}

type FileResult = std::result::Result<FileOut, String>;

/// Why storing a stream stopped: the source failed (skip the file) or the repository did (stop).
enum StreamError {
    Read(std::io::Error),
    Repo(Error),
}

impl StreamError {
    fn into_error(self, what: &str) -> Error {
        match self {
            StreamError::Read(e) => Error::Other(format!("reading {what}: {e}")),
            StreamError::Repo(e) => e,
        }
    }
}
type DirResult = std::result::Result<BlobId, String>;

enum Pending {
    Ready(Node),
    File(Node, Slot<FileResult>, PathBuf),
    Dir(Node, Slot<DirResult>),
}

struct Frame {
    depth: usize,
    path: PathBuf,
    children: Vec<Pending>,
    /// The same directory's entries in the parent snapshot.
    old: Option<Vec<Node>>,
    old_subtree: Option<BlobId>,
    is_new: bool,
    slot: Slot<DirResult>,
}

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unchanged: AtomicU64,
    dirs_new: AtomicU64,
    dirs_changed: AtomicU64,
    dirs_unchanged: AtomicU64,
    bytes_read: AtomicU64,
    bytes_total: AtomicU64,
    errors: AtomicU64,
}

struct Ctx {
    repo: Arc<Repository>,
    saver: BlobSaver,
    progress: Arc<dyn Progress>,
    counters: Counters,
    warnings: Mutex<Vec<(PathBuf, String)>>,
    fatal: Mutex<Option<Error>>,
    failed: AtomicBool,
    pool: rayon::ThreadPool,
}

impl Ctx {
    fn warn(&self, path: &Path, msg: String) {
        self.progress.warning(path, &msg);
        self.warnings
            .lock()
            .expect("warnings")
            .push((path.to_path_buf(), msg));
    }

    fn fail(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut f = self.fatal.lock().expect("fatal");
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self
                .fatal
                .lock()
                .expect("fatal")
                .take()
                .unwrap_or_else(|| Error::Other("backup aborted".into())));
        }
        if crate::ops::interrupted() {
            return Err(Error::Interrupted);
        }
        Ok(())
    }

    /// Chunks a stream, storing new chunks; returns the chunk ids. Chunks are hashed, compressed
    /// and encrypted in parallel batches.
    /// Errors reading the source are `Err(Ok(io))`; repository errors are `Err(Err(error))`.
    fn store_stream<R: Read>(
        &self,
        reader: R,
    ) -> std::result::Result<(Vec<BlobId>, R), StreamError> {
        const BATCH_BYTES: usize = 16 << 20;
        let mut ids = Vec::new();
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut batch_bytes = 0;
        let mut chunks = self.repo.chunker().chunks(reader);
        let flush = |batch: &mut Vec<Vec<u8>>, ids: &mut Vec<BlobId>| -> Result<()> {
            let got: Vec<Result<BlobId>> = self.pool.install(|| {
                batch
                    .par_iter()
                    .map(|c| self.saver.save(BlobKind::Data, c).map(|(id, _)| id))
                    .collect()
            });
            for r in got {
                ids.push(r?);
            }
            batch.clear();
            Ok(())
        };
        for c in chunks.by_ref() {
            let c = c.map_err(StreamError::Read)?;
            let n = c.len() as u64;
            self.counters.bytes_read.fetch_add(n, Ordering::Relaxed);
            self.progress.bytes(n);
            batch_bytes += c.len();
            batch.push(c);
            if batch_bytes >= BATCH_BYTES {
                flush(&mut batch, &mut ids).map_err(StreamError::Repo)?;
                batch_bytes = 0;
                self.check().map_err(StreamError::Repo)?;
            }
        }
        flush(&mut batch, &mut ids).map_err(StreamError::Repo)?;
        Ok((ids, chunks.into_inner()))
    }

    fn read_file(&self, path: &Path, before: &std::fs::Metadata) -> FileResult {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
            .or_else(|_| File::open(path))
            .map_err(|e| format!("cannot open: {e}"))?;
        let (ids, f) = match self.store_stream(f) {
            Ok(r) => r,
            Err(StreamError::Read(e)) => return Err(format!("cannot read: {e}")),
            Err(StreamError::Repo(e)) => {
                let msg = e.to_string();
                self.fail(e);
                return Err(msg);
            }
        };
        let content = self.repo.save_content(&self.saver, ids).map_err(|e| {
            let msg = e.to_string();
            self.fail(e);
            msg
        })?;
        let after = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
        let changed = after.size() != before.size()
            || after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.ctime() != before.ctime()
            || after.ctime_nsec() != before.ctime_nsec();
        Ok(FileOut {
            content,
            changed_while_reading: changed,
        })
    }

    /// Waits for a directory's children and stores its tree.
    fn finish_dir(&self, frame: Frame) {
        let mut nodes = Vec::with_capacity(frame.children.len());
        for p in frame.children {
            match p {
                Pending::Ready(n) => nodes.push(n),
                Pending::File(mut n, slot, path) => match slot.wait() {
                    Ok(out) => {
                        if out.changed_while_reading {
                            self.warn(&path, "file changed while it was read; the stored copy may be inconsistent".into());
                        }
                        n.content = out.content;
                        nodes.push(n);
                    }
                    Err(msg) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        self.warn(&path, format!("{msg}; not in this snapshot"));
                    }
                },
                Pending::Dir(mut n, slot) => match slot.wait() {
                    Ok(id) => {
                        n.subtree = Some(id);
                        nodes.push(n);
                    }
                    Err(msg) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        self.warn(&frame.path, msg);
                    }
                },
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        match self.repo.save_dir(&self.saver, nodes) {
            Ok(id) => {
                let c = &self.counters;
                if frame.is_new {
                    c.dirs_new.fetch_add(1, Ordering::Relaxed);
                } else if frame.old_subtree == Some(id) {
                    c.dirs_unchanged.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.dirs_changed.fetch_add(1, Ordering::Relaxed);
                }
                frame.slot.set(Ok(id));
            }
            Err(e) => {
                frame.slot.set(Err(e.to_string()));
                self.fail(e);
            }
        }
    }
}

/// Builds the exclude matcher: a pattern without `/` matches a name at any depth, one with `/`
/// matches the absolute path (`*` does not cross `/`, `**` does).
pub fn exclude_set(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let full = if p.contains('/') {
            p.clone()
        } else {
            format!("**/{p}")
        };
        let g = GlobBuilder::new(&full)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Invalid(format!("exclude pattern {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map_err(|e| Error::Invalid(format!("exclude patterns: {e}")))
}

fn same_file(old: &Node, n: &Node) -> bool {
    old.kind == NodeKind::File
        && old.size == n.size
        && old.mtime == n.mtime
        && old.ctime == n.ctime
        && old.inode == n.inode
}

fn find_old<'a>(old: &'a Option<Vec<Node>>, name: &[u8]) -> Option<&'a Node> {
    let v = old.as_ref()?;
    v.binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()
        .map(|i| &v[i])
}

/// Absolute, normalized source paths; nested duplicates dropped.
fn normalize_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        let mut norm = PathBuf::new();
        for c in abs.components() {
            match c {
                std::path::Component::ParentDir => {
                    norm.pop();
                }
                std::path::Component::CurDir => {}
                c => norm.push(c),
            }
        }
        std::fs::symlink_metadata(&norm).map_err(|e| Error::io(&norm, e))?;
        out.push(norm);
    }
    out.sort();
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in out {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    Ok(kept)
}

/// Runs a backup. The repository's index must be loaded.
pub fn backup(
    repo: &Arc<Repository>,
    opts: BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<BackupResult> {
    let start = Instant::now();
    let start_time = jiff::Timestamp::now();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("chunkbak-worker-{i}"))
        .build()
        .map_err(|e| Error::Other(format!("thread pool: {e}")))?;
    let ctx = Arc::new(Ctx {
        repo: repo.clone(),
        saver: repo.blob_saver()?,
        progress: progress.clone(),
        counters: Counters::default(),
        warnings: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        failed: AtomicBool::new(false),
        pool,
    });

    let result = (|| -> Result<BackupResult> {
        let (paths, root_nodes, parent_id) = if let Some(src) = &opts.stdin {
            let name = opts.stdin_filename.trim_start_matches('/').to_string();
            if name.is_empty() || name.contains('/') {
                return Err(Error::Invalid(format!(
                    "--stdin-filename {:?} must be a plain file name",
                    opts.stdin_filename
                )));
            }
            let node = backup_stdin(&ctx, src, &name)?;
            (vec![PathBuf::from(format!("/{name}"))], vec![node], None)
        } else {
            if opts.paths.is_empty() {
                return Err(Error::Invalid(
                    "nothing to back up: give one or more paths, or --stdin".into(),
                ));
            }
            let paths = normalize_paths(&opts.paths)?;
            let excludes = exclude_set(&opts.excludes)?;
            let parent = find_parent(repo, &opts, &paths)?;
            let nodes = backup_paths(
                &ctx,
                &paths,
                &excludes,
                opts.one_file_system,
                parent.as_ref().map(|p| p.1),
            )?;
            (paths, nodes, parent.map(|p| p.0))
        };
        ctx.check()?;

        // The root tree mirrors the absolute paths: /srv/data is root → srv → data.
        let root = build_root(&ctx, &paths, root_nodes)?;
        let packs = ctx.saver.finish()?;
        let packs_written = packs.len() as u64;
        repo.write_index(packs)?;

        let c = &ctx.counters;
        let (uid, gid) = fsmeta::current_ids();
        let snapshot = Snapshot {
            time: timespec_of(opts.time.unwrap_or(start_time)),
            host: opts.host.clone(),
            username: fsmeta::Owners::default().user(uid).unwrap_or_default(),
            uid,
            gid,
            paths: paths
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect(),
            tags: opts.tags.clone(),
            excludes: opts.excludes.clone(),
            tree: root,
            parent: parent_id,
            program_version: concat!("chunkbak ", env!("CARGO_PKG_VERSION")).to_string(),
            summary: Summary {
                files_new: c.files_new.load(Ordering::Relaxed),
                files_changed: c.files_changed.load(Ordering::Relaxed),
                files_unchanged: c.files_unchanged.load(Ordering::Relaxed),
                dirs_new: c.dirs_new.load(Ordering::Relaxed),
                dirs_changed: c.dirs_changed.load(Ordering::Relaxed),
                dirs_unchanged: c.dirs_unchanged.load(Ordering::Relaxed),
                bytes_read: c.bytes_read.load(Ordering::Relaxed),
                bytes_total: c.bytes_total.load(Ordering::Relaxed),
                bytes_added: ctx.saver.stats.bytes_added.load(Ordering::Relaxed),
                blobs_added: ctx.saver.stats.blobs_added.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                start: timespec_of(start_time),
                duration_ms: start.elapsed().as_millis() as u64,
            },
        };
        let snapshot_id = repo.write_snapshot(&snapshot)?;
        let warnings = std::mem::take(&mut *ctx.warnings.lock().expect("warnings"));
        Ok(BackupResult {
            snapshot_id,
            snapshot,
            parent: parent_id,
            warnings,
            packs_written,
        })
    })();
    if result.is_err() {
        ctx.saver.abort();
    }
    result
}

fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    paths: &[PathBuf],
) -> Result<Option<(Id, BlobId)>> {
    let snaps = match opts.parent {
        ParentMode::None => return Ok(None),
        _ => repo.snapshots()?,
    };
    let found = match &opts.parent {
        ParentMode::Id(p) => Some(super::select::find_id(&snaps, p)?),
        _ => {
            let want: Vec<Vec<u8>> = paths
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect();
            let f = Filter {
                hosts: vec![opts.host.clone()],
                ..Default::default()
            };
            snaps
                .iter()
                .rposition(|(_, s)| f.matches(s) && s.paths == want)
        }
    };
    Ok(found.map(|i| (snaps[i].0, snaps[i].1.tree)))
}

/// Walks every source path; returns the node of each (its subtree or content stored).
fn backup_paths(
    ctx: &Arc<Ctx>,
    paths: &[PathBuf],
    excludes: &GlobSet,
    one_fs: bool,
    parent_tree: Option<BlobId>,
) -> Result<Vec<Node>> {
    let owners = Owners::default();
    const IN_FLIGHT: usize = 64;
    let permits = Arc::new(Permits {
        n: Mutex::new(IN_FLIGHT),
        cv: Condvar::new(),
    });
    let scanner_stop = Arc::new(AtomicBool::new(false));
    let scanner = {
        let (paths, excludes, progress, stop) = (
            paths.to_vec(),
            excludes.clone(),
            ctx.progress.clone(),
            scanner_stop.clone(),
        );
        std::thread::spawn(move || scan(&paths, &excludes, one_fs, &*progress, &stop))
    };
    let (tx, rx) = mpsc::sync_channel::<Frame>(1024);
    let finisher = {
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("chunkbak-trees".into())
            .spawn(move || {
                for frame in rx {
                    ctx.finish_dir(frame);
                }
            })
            .map_err(|e| Error::Other(format!("thread: {e}")))?
    };
    let mut hardlinks: HashMap<(u64, u64), Slot<FileResult>> = HashMap::new();
    let mut roots: Vec<Pending> = Vec::new();
    let mut walk_result = Ok(());

    'paths: for root in paths {
        let old_root = match parent_tree {
            Some(t) => lookup_path(&ctx.repo, t, root).unwrap_or(None),
            None => None,
        };
        let mut stack: Vec<Frame> = Vec::new();
        let walker = walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
            .same_file_system(one_fs)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !excludes.is_match(e.path()));
        for entry in walker {
            if let Err(e) = ctx.check() {
                walk_result = Err(e);
                break 'paths;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let p = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.clone());
                    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    let msg = e
                        .io_error()
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| e.to_string());
                    ctx.warn(&p, format!("cannot read: {msg}; not in this snapshot"));
                    continue;
                }
            };
            let depth = entry.depth();
            while stack.last().is_some_and(|f| f.depth >= depth) {
                let f = stack.pop().expect("checked");
                let _ = tx.send(f);
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    ctx.warn(
                        entry.path(),
                        format!("cannot stat: {e}; not in this snapshot"),
                    );
                    continue;
                }
            };
            let name = entry.file_name();
            let mut node = node_from_metadata(name, &meta, &owners);
            node.xattrs = fsmeta::read_xattrs(entry.path());
            let old = match stack.last() {
                Some(f) => find_old(&f.old, &node.name).cloned(),
                None => old_root.clone(),
            };
            let pending = match node.kind {
                NodeKind::Dir => {
                    let slot = Slot::new();
                    let old_subtree = old
                        .as_ref()
                        .filter(|o| o.kind == NodeKind::Dir)
                        .and_then(|o| o.subtree);
                    let old_nodes = old_subtree.and_then(|t| ctx.repo.load_dir(&t).ok());
                    stack.push(Frame {
                        depth,
                        path: entry.path().to_path_buf(),
                        children: Vec::new(),
                        is_new: old.is_none(),
                        old: old_nodes,
                        old_subtree,
                        slot: slot.clone(),
                    });
                    Pending::Dir(node, slot)
                }
                NodeKind::Symlink => {
                    match std::fs::read_link(entry.path()) {
                        Ok(t) => node.link_target = t.as_os_str().as_bytes().to_vec(),
                        Err(e) => {
                            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                            ctx.warn(
                                entry.path(),
                                format!("cannot read link: {e}; not in this snapshot"),
                            );
                            continue;
                        }
                    }
                    Pending::Ready(node)
                }
                NodeKind::File => {
                    ctx.counters
                        .bytes_total
                        .fetch_add(node.size, Ordering::Relaxed);
                    let reuse = old.as_ref().filter(|o| same_file(o, &node)).filter(|o| {
                        let idx = ctx.repo.index().read().expect("index lock");
                        match &o.content {
                            Content::Chunks(c) | Content::Indirect(c) => {
                                c.iter().all(|id| idx.contains(id))
                            }
                        }
                    });
                    if let Some(o) = reuse {
                        ctx.counters.files_unchanged.fetch_add(1, Ordering::Relaxed);
                        node.content = o.content.clone();
                        ctx.progress.bytes(node.size);
                        ctx.progress.file_done(entry.path());
                        Pending::Ready(node)
                    } else {
                        if old.is_some() {
                            ctx.counters.files_changed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            ctx.counters.files_new.fetch_add(1, Ordering::Relaxed);
                        }
                        let key = node.hardlink_key();
                        if let Some(slot) = key.and_then(|k| hardlinks.get(&k)) {
                            Pending::File(node, slot.clone(), entry.path().to_path_buf())
                        } else {
                            let slot = Slot::new();
                            if let Some(k) = key {
                                hardlinks.insert(k, slot.clone());
                            }
                            permits.acquire();
                            let (c, s, p, m, pm) = (
                                ctx.clone(),
                                slot.clone(),
                                entry.path().to_path_buf(),
                                meta,
                                permits.clone(),
                            );
                            ctx.pool.spawn(move || {
                                let r = if c.failed.load(Ordering::Relaxed) {
                                    Err("backup aborted".to_string())
                                } else {
                                    c.read_file(&p, &m)
                                };
                                c.progress.file_done(&p);
                                s.set(r);
                                pm.release();
                            });
                            Pending::File(node, slot, entry.path().to_path_buf())
                        }
                    }
                }
                _ => Pending::Ready(node),
            };
            match stack.len() {
                // The entry just pushed its own frame: it belongs to the frame below.
                n if matches!(pending, Pending::Dir(..)) && n >= 2 => {
                    stack[n - 2].children.push(pending)
                }
                n if !matches!(pending, Pending::Dir(..)) && n >= 1 => {
                    stack[n - 1].children.push(pending)
                }
                _ => roots.push(pending),
            }
        }
        while let Some(f) = stack.pop() {
            let _ = tx.send(f);
        }
    }
    drop(tx);
    let _ = finisher.join();
    // After an early stop some jobs may still run: let them end before anything is cleaned up.
    permits.wait_all(IN_FLIGHT);
    scanner_stop.store(true, Ordering::SeqCst);
    let _ = scanner.join();
    walk_result?;
    ctx.check()?;

    let mut out = Vec::new();
    for p in roots {
        match p {
            Pending::Ready(n) => out.push(n),
            Pending::File(mut n, slot, path) => match slot.wait() {
                Ok(o) => {
                    n.content = o.content;
                    out.push(n);
                }
                Err(msg) => {
                    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    ctx.warn(&path, format!("{msg}; not in this snapshot"));
                }
            },
            Pending::Dir(mut n, slot) => {
                n.subtree = Some(slot.wait().map_err(Error::Other)?);
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Counts files and bytes for the progress bar's total.
fn scan(
    paths: &[PathBuf],
    excludes: &GlobSet,
    one_fs: bool,
    progress: &dyn Progress,
    stop: &AtomicBool,
) {
    let (mut files, mut bytes) = (0u64, 0u64);
    for root in paths {
        let w = walkdir::WalkDir::new(root)
            .follow_links(false)
            .same_file_system(one_fs)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !excludes.is_match(e.path()));
        for e in w.flatten() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if e.file_type().is_file() {
                files += 1;
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                if files % 1000 == 0 {
                    progress.total(files, bytes);
                }
            }
        }
    }
    progress.total(files, bytes);
}

/// The node at an absolute path inside a snapshot's root tree.
fn lookup_path(repo: &Repository, root: BlobId, path: &Path) -> Result<Option<Node>> {
    let mut tree = root;
    let comps: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let nodes = repo.load_dir(&tree)?;
        let Some(n) = nodes.into_iter().find(|n| n.name == c.as_bytes()) else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(n));
        }
        match n.subtree {
            Some(t) if n.kind == NodeKind::Dir => tree = t,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Builds the trees above the source paths (their metadata read from the live file system).
fn build_root(ctx: &Ctx, paths: &[PathBuf], nodes: Vec<Node>) -> Result<BlobId> {
    // A tiny in-memory trie of path components.
    #[derive(Default)]
    struct Dir {
        children: std::collections::BTreeMap<Vec<u8>, Dir>,
        node: Option<Node>,
    }
    let mut top = Dir::default();
    let owners = Owners::default();
    let mut nodes = nodes.into_iter();
    for p in paths {
        let comps: Vec<&std::ffi::OsStr> = p
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        if comps.is_empty() {
            // Backing up `/` itself: its node's entries become the root.
            if let Some(n) = nodes.next() {
                top.node = Some(n);
            }
            continue;
        }
        let mut d = &mut top;
        let mut cur = PathBuf::from("/");
        for c in &comps[..comps.len() - 1] {
            cur.push(c);
            d = d.children.entry(c.as_bytes().to_vec()).or_default();
            if d.node.is_none() {
                let m = std::fs::symlink_metadata(&cur).map_err(|e| Error::io(&cur, e))?;
                d.node = Some(node_from_metadata(c, &m, &owners));
            }
        }
        if let Some(n) = nodes.next() {
            let name = n.name.clone();
            d.children.entry(name).or_default().node = Some(n);
        }
    }
    fn save(ctx: &Ctx, d: Dir) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        for (_, child) in d.children {
            let Dir { children, node } = child;
            let mut n = node.expect("every trie entry has a node");
            if !children.is_empty() || (n.kind == NodeKind::Dir && n.subtree.is_none()) {
                let nodes = save(
                    ctx,
                    Dir {
                        children,
                        node: None,
                    },
                )?;
                n.subtree = Some(ctx.repo.save_dir(&ctx.saver, nodes)?);
            }
            out.push(n);
        }
        Ok(out)
    }
    if let Some(root_node) = top.node.take() {
        // `/` was a source: its subtree is the root.
        return root_node
            .subtree
            .ok_or_else(|| Error::Other("root has no tree".into()));
    }
    let nodes = save(ctx, top)?;
    ctx.repo.save_dir(&ctx.saver, nodes)
}

fn backup_stdin(ctx: &Ctx, src: &StdinSource, name: &str) -> Result<Node> {
    let now = timespec_of(jiff::Timestamp::now());
    let (uid, gid) = fsmeta::current_ids();
    let owners = Owners::default();
    let ids = match src {
        StdinSource::Stdin => {
            ctx.store_stream(std::io::stdin().lock())
                .map_err(|e| e.into_error("standard input"))?
                .0
        }
        StdinSource::Command(argv) => {
            let (prog, args) = argv
                .split_first()
                .ok_or_else(|| Error::Invalid("--stdin-from-command needs a command".into()))?;
            let shown = argv
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ");
            let mut child = Command::new(prog)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| Error::Other(format!("cannot start `{shown}`: {e}")))?;
            let out = child.stdout.take().expect("piped");
            let r = ctx.store_stream(out);
            let status = child
                .wait()
                .map_err(|e| Error::Other(format!("waiting for `{shown}`: {e}")))?;
            let ids = r
                .map_err(|e| e.into_error(&format!("the output of `{shown}`")))?
                .0;
            if !status.success() {
                return Err(Error::Other(format!(
                    "`{shown}` failed ({status}); no snapshot was written (the data read so far is \
                     stored and will be reused by the next run)"
                )));
            }
            ids
        }
    };
    let size = ctx.counters.bytes_read.load(Ordering::Relaxed);
    ctx.counters.bytes_total.store(size, Ordering::Relaxed);
    ctx.counters.files_new.fetch_add(1, Ordering::Relaxed);
    let content = ctx.repo.save_content(&ctx.saver, ids)?;
    Ok(Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o100600,
        uid,
        gid,
        user: owners.user(uid),
        group: owners.group(gid),
        mtime: now,
        ctime: now,
        size,
        nlink: 1,
        content,
        ..Node::default()
    })
}
