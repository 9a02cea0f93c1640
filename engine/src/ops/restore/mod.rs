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
//!
//! The walk over the trees (directories, links, special files, and the files to write) is in
//! `plan`; writing a file's contents (planned against what the target holds, verified, sparse)
//! in `write`; owners, modes, extended attributes and times in `meta`; handles below the target
//! in `at`. The gate a restore from cold storage waits on is [`PackGate`] (`thaw` implements it).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

mod at;
mod meta;
mod plan;
mod write;

use super::fsmeta;
use super::ls::{components, find, walk};
use super::packread::PackReader;
use super::pattern::Selection;
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};
use crate::id::{BlobId, ObjectId};
use crate::progress::Progress;
use crate::repo::Repository;

use meta::{On, OwnerIds};
use plan::{deletes_in, Walker};
use write::{packs_of, FileJob};

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
/// Decides which packs a restore may read now, and waits for more (`thaw::Thaw` waits for
/// archived packs to thaw).
pub trait PackGate: Sync {
    fn readable(&self, pack: &ObjectId) -> bool;
    /// Blocks until at least one more pack is readable; Err on interrupt or timeout.
    fn wait(&self) -> Result<()>;
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

/// What a stopped restore finished, for its error.
fn restored_so_far(r: &Restorer) -> String {
    format!(
        ", after {} files were restored ({} already right)",
        r.files.load(Ordering::Relaxed),
        r.unchanged.load(Ordering::Relaxed)
    )
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
