//! The walk: pre-order over each source path, parallel file jobs, post-order tree building.

use super::*;
use crate::progress::Change;

/// Walks every source path; returns the node of each (its subtree or content stored).
pub(super) fn backup_paths(
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
    // Files are read by their own threads, one file each at a time; the rayon pool only runs
    // the chunks of a file's batches. A pool thread waiting for its batch therefore never steals
    // another file and starts another read buffer: memory stays at one buffer per reader.
    let (jobs, readers) = {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = Arc::new(Mutex::new(rx));
        let mut readers = Vec::new();
        for i in 0..ctx.pool.current_num_threads() {
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("chunkbak-read-{i}"))
                .spawn(move || {
                    crate::ops::abort_on_panic(|| loop {
                        let job = rx.lock().expect("file jobs").recv();
                        let Ok(job) = job else { break };
                        job();
                    })
                })
                .map_err(|e| Error::Other(format!("thread: {e}")))?;
            readers.push(t);
        }
        (tx, readers)
    };
    let mut hardlinks: HashMap<(u64, u64), Slot<FileResult>> = HashMap::new();
    let mut roots: Vec<Pending> = Vec::new();
    let mut walk_result = Ok(());

    'paths: for root in paths {
        let old_root = match parent_tree {
            Some(t) => crate::ops::ls::find(&ctx.repo, t, root.as_os_str().as_bytes())
                .ok()
                .flatten(),
            None => None,
        };
        let mut stack: Vec<Frame> = Vec::new();
        let walker = walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
            .same_file_system(one_fs)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !excludes.is_match(e.path()));
        // Levels of the snapshot tree above this source's entries.
        let above = root.components().count().saturating_sub(1);
        let mut walker = walker;
        while let Some(entry) = walker.next() {
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
                    let msg = e
                        .io_error()
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| e.to_string());
                    let what = if p.is_dir() {
                        "its contents are missing from this snapshot"
                    } else {
                        "not in this snapshot"
                    };
                    ctx.skip(&p, format!("cannot read: {msg}; {what}"));
                    continue;
                }
            };
            let depth = entry.depth();
            if depth + above >= crate::format::tree::MAX_TREE_DEPTH && entry.file_type().is_dir() {
                walker.skip_current_dir();
                ctx.skip(
                    entry.path(),
                    format!(
                        "nested deeper than {} levels: not in this snapshot",
                        crate::format::tree::MAX_TREE_DEPTH
                    ),
                );
                continue;
            }
            while stack.last().is_some_and(|f| f.depth >= depth) {
                let f = stack.pop().expect("checked");
                let _ = tx.send(f);
            }
            // A source path that is a symlink is followed, as `find -H` does: the snapshot holds
            // what it points to under the name given (a dangling one is kept as a link).
            let followed = (depth == 0 && entry.path_is_symlink())
                .then(|| std::fs::metadata(entry.path()).ok())
                .flatten();
            let meta = match followed.map_or_else(|| entry.metadata(), Ok) {
                Ok(m) => m,
                Err(e) => {
                    ctx.skip(
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
                            ctx.skip(
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
                    let same = old.as_ref().filter(|o| same_file(o, &node));
                    let reuse = same.filter(|o| {
                        // Every blob must be live, chunk lists and the chunks they list.
                        match &o.content {
                            Content::Chunks(c) => ctx.w.saver.reuse(c),
                            Content::Indirect(lists) => {
                                ctx.w.saver.reuse(lists)
                                    && ctx
                                        .repo
                                        .file_chunks(&o.content)
                                        .is_ok_and(|c| ctx.w.saver.reuse(&c))
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
                        // Unchanged by its metadata, but some of its blobs are no longer
                        // stored (a repaired or damaged repository): it is read again to store
                        // them, and counted (and listed) by what the read finds.
                        let recheck = same.is_some();
                        match (recheck, old.is_some()) {
                            (true, _) => {}
                            (false, true) => {
                                ctx.counters.files_changed.fetch_add(1, Ordering::Relaxed);
                                ctx.progress.change(Change::Update, entry.path());
                            }
                            (false, false) => {
                                ctx.counters.files_new.fetch_add(1, Ordering::Relaxed);
                                ctx.progress.change(Change::New, entry.path());
                            }
                        }
                        let key = node.hardlink_key();
                        if let Some(slot) = key.and_then(|k| hardlinks.get(&k)) {
                            if recheck {
                                // Another name of a file read once: as unchanged as its metadata.
                                ctx.counters.files_unchanged.fetch_add(1, Ordering::Relaxed);
                            }
                            Pending::File(node, slot.clone(), entry.path().to_path_buf())
                        } else {
                            let slot = Slot::new();
                            if let Some(k) = key {
                                hardlinks.insert(k, slot.clone());
                            }
                            permits.acquire();
                            prefetch(entry.path(), meta.size());
                            // The previous version's chunks: candidate delta bases.
                            let prev = old
                                .as_ref()
                                .filter(|o| o.kind == NodeKind::File)
                                .map(|o| o.content.clone());
                            let (c, s, p, m, pm) = (
                                ctx.clone(),
                                slot.clone(),
                                entry.path().to_path_buf(),
                                meta,
                                permits.clone(),
                            );
                            let _ = jobs.send(Box::new(move || {
                                let r = if c.failed.load(Ordering::Relaxed)
                                    || crate::ops::interrupted()
                                {
                                    Err("backup aborted".to_string())
                                } else {
                                    c.progress.started(&p);
                                    c.read_file(&p, &m, prev.as_ref())
                                };
                                if let (true, Ok(out)) = (recheck, &r) {
                                    if prev.as_ref() == Some(&out.content) {
                                        c.counters.files_unchanged.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        c.counters.files_changed.fetch_add(1, Ordering::Relaxed);
                                        c.progress.change(Change::Update, &p);
                                    }
                                }
                                c.checkpoint_or_fail();
                                c.progress.file_done(&p);
                                s.set(r);
                                pm.release();
                            }));
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
    drop(jobs);
    for t in readers {
        let _ = t.join();
    }
    scanner_stop.store(true, Ordering::SeqCst);
    let _ = scanner.join();
    walk_result.map_err(|e| ctx.first_error(e))?;
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
                    ctx.skip(&path, format!("{msg}; not in this snapshot"));
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
pub(super) fn scan(
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
    progress.final_total(files, bytes);
}

/// Files up to this size are read ahead as they are queued.
const PREFETCH_MAX: u64 = 32 << 20;

/// Asks the kernel to start reading a queued file into the page cache, so the worker that
/// takes it finds it there instead of waiting on the disk (the walker runs up to 64 files
/// ahead). Larger files are read ahead by the kernel as they are read. Best effort.
fn prefetch(path: &Path, size: u64) {
    if size == 0 || size > PREFETCH_MAX {
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the duration of the call.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
        }
    }
}
