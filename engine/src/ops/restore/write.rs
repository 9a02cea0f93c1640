//! Writing a file's contents: planned against what the target already holds (chunks already
//! right are neither read nor written), every chunk verified before it is written, all-zero
//! blocks left as holes, large files written by all threads at once.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::meta::{Meta, On};
use super::{Overwrite, Restorer, PARALLEL_CHUNKS};
use crate::error::{Error, Result};
use crate::format::tree::Content;
use crate::id::BlobId;
use crate::progress::Change;
use crate::repo::Repository;

/// A file to write, kept until the walk is over: only what writing it needs, since a restore
/// holds one per file of the snapshot (a `Node` costs about twice as much).
pub(super) struct FileJob {
    /// Links the file may have to be rewritten in place: 1, or the snapshot's count for the
    /// first name of a hard link group.
    pub(super) links: u64,
    /// (device, inode) of the empty file the walk created for the first name of a hard link
    /// group: the writer opens that very file or nothing.
    pub(super) created: Option<(u64, u64)>,
    pub(super) path: Box<Path>,
    pub(super) content: Content,
    pub(super) size: u64,
    pub(super) meta: Meta,
    /// Nothing was at its path when the walk came by (or this restore created it empty, as the
    /// first name of a hard link group): written without comparing.
    pub(super) fresh: bool,
    /// Planned ahead (remote repositories: only the chunks needed are fetched).
    pub(super) plan: Option<std::result::Result<FilePlan, String>>,
}

/// What writing one file takes.
pub(super) struct FilePlan {
    pub(super) ids: Vec<BlobId>,
    /// Plaintext length of each chunk (None when one is not in the index: the file then fails
    /// as it is written, with the reason).
    lens: Option<Vec<u64>>,
    todo: Todo,
}

pub(super) enum Todo {
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
    pub(super) fn needed(&self) -> impl Iterator<Item = &BlobId> {
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

impl Restorer<'_> {
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
    pub(super) fn plan_file(&self, job: &FileJob) -> Result<FilePlan> {
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
    pub(super) fn write_file(&self, job: &FileJob) {
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

/// The packs holding `ids` (None when a chunk is not in the index).
pub(super) fn packs_of<'b>(
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
