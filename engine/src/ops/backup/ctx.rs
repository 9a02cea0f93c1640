//! The shared state of one backup run: counters, warnings, the blob saver, and the work on
//! one file (chunk and store) or one directory (store its tree).

use super::*;

/// Bytes read ahead in a file stored with delta bases: a sixteenth of the memory budget,
/// 4 to 32 MiB (9.4 MiB at the default 150 MiB: batches of about 7 chunks of a dump).
/// Larger batches balance the parallel steps better and hold more, with the bases read for
/// them: a budget of 300 MiB (18.75 MiB) backed a 460 MB dump's 30th day up in 0.86-0.92x
/// the time, peaking 20-23 MiB higher; 32 MiB once peaked at 147 MB RSS on a dump's second
/// day.
fn delta_read_ahead(repo: &Repository) -> usize {
    (repo.memory() / 16).clamp(4 << 20, 32 << 20) as usize
}

#[derive(Clone)]
pub(super) struct FileOut {
    pub(super) content: Content,
    pub(super) changed_while_reading: bool,
}

pub(super) type FileResult = std::result::Result<FileOut, String>;

/// Why storing a stream stopped: the source failed (skip the file) or the repository did (stop).
pub(super) enum StreamError {
    Read(std::io::Error),
    Repo(Error),
}

impl StreamError {
    pub(super) fn into_error(self, what: &str) -> Error {
        match self {
            StreamError::Read(e) => Error::Other(format!("reading {what}: {e}")),
            StreamError::Repo(e) => e,
        }
    }
}
pub(super) type DirResult = std::result::Result<BlobId, String>;

/// What [`Ctx::check`] says when the run failed and another thread holds its first error.
pub(super) const ABORTED: &str = "backup aborted";

pub(super) enum Pending {
    Ready(Node),
    File(Node, Slot<FileResult>, PathBuf),
    Dir(Node, Slot<DirResult>),
}

pub(super) struct Frame {
    pub(super) depth: usize,
    pub(super) path: PathBuf,
    pub(super) children: Vec<Pending>,
    /// The same directory's entries in the parent snapshot.
    pub(super) old: Option<Vec<Node>>,
    pub(super) old_subtree: Option<BlobId>,
    pub(super) is_new: bool,
    pub(super) slot: Slot<DirResult>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) files_new: AtomicU64,
    pub(super) files_changed: AtomicU64,
    pub(super) files_unchanged: AtomicU64,
    pub(super) dirs_new: AtomicU64,
    pub(super) dirs_changed: AtomicU64,
    pub(super) dirs_unchanged: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    pub(super) bytes_total: AtomicU64,
    pub(super) errors: AtomicU64,
}

pub(super) struct Ctx {
    pub(super) repo: Arc<Repository>,
    pub(super) w: crate::ops::writer::Writer,
    pub(super) progress: Arc<dyn Progress>,
    pub(super) counters: Counters,
    pub(super) warnings: Mutex<Vec<(PathBuf, String)>>,
    pub(super) fatal: Mutex<Option<Error>>,
    pub(super) failed: AtomicBool,
    pub(super) pool: Arc<rayon::ThreadPool>,
}

impl Ctx {
    pub(super) fn warn(&self, path: &Path, msg: String) {
        // A backup that is stopping (interrupted, its store down, or failed) ends with one
        // error saying why; the files it did not finish were never going to be in a snapshot.
        if self.failed.load(Ordering::Relaxed) || crate::stop::interrupted() {
            return;
        }
        self.progress.warning(path, &msg);
        self.warnings
            .lock()
            .expect("warnings")
            .push((path.to_path_buf(), msg));
    }

    /// An entry left out of the snapshot: counted as an error (exit 3) and reported.
    pub(super) fn skip(&self, path: &Path, msg: String) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        self.warn(path, msg);
    }

    /// `e`, or the run's first error in its place when `e` only says that the run stopped
    /// ([`ABORTED`]) and a worker has put the first error back since.
    pub(super) fn first_error(&self, e: Error) -> Error {
        match e {
            Error::Other(m) if m == ABORTED => self
                .fatal
                .lock()
                .expect("fatal")
                .take()
                .unwrap_or(Error::Other(m)),
            e => e,
        }
    }

    pub(super) fn fail(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut f = self.fatal.lock().expect("fatal");
        if f.is_none() {
            *f = Some(e);
        }
    }

    /// See [`Writer::checkpoint`](crate::ops::writer::Writer::checkpoint).
    pub(super) fn checkpoint(&self, force: bool) -> Result<()> {
        self.w.checkpoint(force)
    }

    /// As [`checkpoint`](Self::checkpoint), stopping the run on failure.
    pub(super) fn checkpoint_or_fail(&self) {
        if let Err(e) = self.checkpoint(false) {
            self.fail(e);
        }
    }

    /// The run's first error, once (a worker that takes it puts it back with
    /// [`fail`](Self::fail)): a caller that comes while another holds it gets the
    /// interruption, when that is what stopped the run, or [`ABORTED`] (see
    /// [`first_error`](Self::first_error)).
    pub(super) fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            let first = self.fatal.lock().expect("fatal").take();
            return Err(first.unwrap_or_else(|| {
                if crate::ops::interrupted() {
                    crate::stop::error(String::new)
                } else {
                    Error::Other(ABORTED.into())
                }
            }));
        }
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        Ok(())
    }

    /// Chunks a stream, storing new chunks; returns the chunk ids. The chunks of each batch
    /// (at least one maximum chunk size of input) are hashed, compressed and encrypted in
    /// parallel, straight out of the chunker's read buffer; a batch of one chunk (a small
    /// file) stays on the calling thread. A failing source gives `StreamError::Read` (skip the
    /// file), a failing repository `StreamError::Repo` (stop the run).
    ///
    /// With `bases` (the previous version's chunks), new chunks that resemble one of them are
    /// stored as deltas against it (see [`super::delta`]).
    pub(super) fn store_stream<R: Read>(
        &self,
        reader: R,
        size_hint: Option<u64>,
        mut bases: Option<super::delta::Bases>,
    ) -> std::result::Result<(Vec<BlobId>, R), StreamError> {
        let mut ids = Vec::new();
        // A file with bases is read further ahead: its batches go through three parallel
        // steps (ids and sketches, reading bases, compression), each better balanced over
        // more chunks.
        let ahead = if bases.is_some() {
            delta_read_ahead(&self.repo)
        } else {
            0
        };
        let mut chunks = self.repo.chunker().chunks_reading(reader, size_hint, ahead);
        let save = |c: &&[u8]| self.w.saver.save(BlobKind::Data, c).map(|(id, _)| id);
        loop {
            let batch = chunks.next_batch().map_err(StreamError::Read)?;
            let n: usize = batch.iter().map(|c| c.len()).sum();
            if n == 0 {
                break;
            }
            self.counters
                .bytes_read
                .fetch_add(n as u64, Ordering::Relaxed);
            self.progress.bytes(n as u64);
            if let Some(b) = bases.as_mut() {
                ids.extend(
                    self.store_batch_delta(&batch, b)
                        .map_err(StreamError::Repo)?,
                );
                // A batch frees tens of chunk-sized buffers (bases read, deltas decoded through
                // their chains, compressed frames): give the allocator's holes back, or a dump's
                // backup holds 20-30 MB more than it uses.
                crate::alloc::trim();
            } else {
                let got: Vec<Result<BlobId>> = if batch.len() == 1 {
                    vec![save(&batch[0])]
                } else {
                    self.pool.install(|| batch.par_iter().map(save).collect())
                };
                for r in got {
                    ids.push(r.map_err(StreamError::Repo)?);
                }
            }
            if n >= self.repo.chunker().params().max_size as usize {
                self.checkpoint(false).map_err(StreamError::Repo)?;
                self.check().map_err(StreamError::Repo)?;
            }
        }
        Ok((ids, chunks.into_inner()))
    }

    /// One batch of a file with candidate bases: ids and sketches in parallel, the choice of
    /// bases in order, then compression (delta or whole) in parallel.
    fn store_batch_delta(
        &self,
        batch: &[&[u8]],
        bases: &mut super::delta::Bases,
    ) -> Result<Vec<BlobId>> {
        let saver = &self.w.saver;
        let prep = |c: &&[u8]| {
            let id = saver.hasher().id(c);
            let reserved = saver.reserve(&id);
            let sk = (reserved && c.len() <= crate::compressor::MAX_DELTA_LEN)
                .then(|| crate::resemble::sketch(c));
            (id, reserved, sk)
        };
        let prepped: Vec<_> = self.pool.install(|| batch.par_iter().map(prep).collect());
        let ids: Vec<BlobId> = prepped.iter().map(|p| p.0).collect();
        let reserved: Vec<bool> = prepped.iter().map(|p| p.1).collect();
        let sketches: Vec<_> = prepped.into_iter().map(|p| p.2).collect();
        let plans = bases.plan(self, &ids, &reserved, &sketches);
        let work: Vec<usize> = (0..batch.len()).filter(|i| reserved[*i]).collect();
        let done: Vec<Result<()>> = self.pool.install(|| {
            work.par_iter()
                .map_init(
                    || None,
                    |dc, i| super::delta::store(self, ids[*i], batch[*i], &plans[*i], dc),
                )
                .collect()
        });
        for r in done {
            r?;
        }
        Ok(ids)
    }

    pub(super) fn read_file(
        &self,
        path: &Path,
        before: &std::fs::Metadata,
        old: Option<&Content>,
    ) -> FileResult {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
            .or_else(|_| File::open(path))
            .map_err(|e| format!("cannot open: {e}"))?;
        // Fewer blocks than the length needs: there are holes, skipped rather than read.
        let sparse = before.blocks() * 512 < before.size();
        let r = if sparse {
            Source::Sparse(super::sparse::HoleSkipping::new(f, before.size()))
        } else {
            Source::Plain(f)
        };
        let bases = old
            .filter(|_| before.size() >= super::delta::MIN_FILE)
            .and_then(|c| self.repo.file_chunks(c).ok())
            .and_then(|c| super::delta::Bases::new(&self.repo, c));
        let (ids, f) = match self.store_stream(r, Some(before.size()), bases) {
            Ok(r) => r,
            Err(StreamError::Read(e)) => return Err(format!("cannot read: {e}")),
            Err(StreamError::Repo(e)) => {
                let msg = e.to_string();
                self.fail(e);
                return Err(msg);
            }
        };
        let content = self.repo.save_content(&self.w.saver, ids).map_err(|e| {
            let msg = e.to_string();
            self.fail(e);
            msg
        })?;
        let f = match f {
            Source::Plain(f) => f,
            Source::Sparse(s) => s.file,
        };
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
    pub(super) fn finish_dir(&self, frame: Frame) {
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
                        self.skip(&path, format!("{msg}; not in this snapshot"));
                    }
                },
                Pending::Dir(mut n, slot) => match slot.wait() {
                    Ok(id) => {
                        n.subtree = Some(id);
                        nodes.push(n);
                    }
                    Err(msg) => {
                        self.skip(&frame.path, msg);
                    }
                },
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        match self.repo.save_dir(&self.w.saver, nodes) {
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
                self.checkpoint_or_fail();
            }
            Err(e) => {
                frame.slot.set(Err(e.to_string()));
                self.fail(e);
            }
        }
    }
}

/// A file being read: as it is, or with its holes skipped.
enum Source {
    Plain(File),
    Sparse(super::sparse::HoleSkipping),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Plain(f) => f.read(buf),
            Source::Sparse(s) => s.read(buf),
        }
    }
}

pub(super) fn same_file(old: &Node, n: &Node) -> bool {
    old.kind == NodeKind::File
        && old.size == n.size
        && old.mtime == n.mtime
        && old.ctime == n.ctime
        && old.inode == n.inode
}

pub(super) fn find_old<'a>(old: &'a Option<Vec<Node>>, name: &[u8]) -> Option<&'a Node> {
    let v = old.as_ref()?;
    v.binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()
        .map(|i| &v[i])
}
