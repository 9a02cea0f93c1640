//! Carrying out a prune plan: repacking, the consolidated index, deleting.

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::format::index::{IndexFile, Mark, PackEntry};
use crate::format::pack::BlobRecord;
use crate::format::ObjectKind;
use crate::id::Id;
use crate::index::{BlobLocation, PackInfo};
use crate::ops::packread::MERGE_GAP;
use crate::progress::Progress;
use crate::repo::Repository;

use super::{Decision, PruneOptions, PrunePlan, PruneResult, BLOBS_PER_INDEX_FILE};

/// Carries out a plan.
pub fn run(
    repo: &Repository,
    plan: &PrunePlan,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneResult> {
    let mut res = PruneResult::default();
    let backend = repo.backend();
    let mut out: Vec<PackEntry> = Vec::new();
    let mut to_delete: Vec<(FileKind, String, u64)> = Vec::new();
    // The packs to repack, each with the used blobs to copy out of it.
    let repack: Vec<(PackInfo, Vec<BlobRecord>)> = match &plan.bounded {
        None => plan
            .packs
            .iter()
            .filter(|p| plan.decisions.get(&p.id) == Some(&Decision::Repack))
            .map(|p| {
                let wanted = p.blobs.iter().filter(|b| plan.used.contains(&b.id));
                (PackInfo::of_entry(p), wanted.cloned().collect())
            })
            .collect(),
        Some(b) => b.repack_blobs(plan)?,
    };

    // 1. Repack: used blobs of partly used packs into new packs.
    if !repack.is_empty() {
        progress.message("repacking");
        progress.final_total(
            repack.len() as u64,
            repack.iter().map(|(p, _)| p.size).sum(),
        );
        let saver = repo.private_saver()?;
        for (info, wanted) in &repack {
            if crate::ops::interrupted() {
                return Err(crate::stop::error(String::new));
            }
            let fk = FileKind::of_pack(info.kind);
            let name = info.id.to_hex();
            // Ranged reads of the used blobs, neighbours merged into one request.
            let mut i = 0;
            while i < wanted.len() {
                let mut j = i + 1;
                while j < wanted.len()
                    && u64::from(wanted[j].offset) <= wanted[j - 1].end() + MERGE_GAP
                {
                    j += 1;
                }
                let start = u64::from(wanted[i].offset);
                let end = wanted[i..j].iter().map(|b| b.end()).max().unwrap_or(start);
                let bytes = backend.get_range(fk, &name, start, end - start)?;
                for b in &wanted[i..j] {
                    let from = (u64::from(b.offset) - start) as usize;
                    let ct = bytes.get(from..from + b.length as usize).ok_or_else(|| {
                        Error::corrupt(fk.path_of(&name), "shorter than the index says")
                    })?;
                    let loc = BlobLocation::of_record(b);
                    // Opened in full either way: a repack copies only what verifies.
                    let plain = repo.open_blob(&b.id, info, loc, ct)?;
                    match b.base {
                        // A delta stays a delta (its base is used, so it stays too).
                        Some(base) if saver.reserve(&b.id) => {
                            let frame = repo.open_stored(&b.id, info, loc, ct)?;
                            saver.store_delta(b.id, plain.len(), frame, base)?;
                            res.blobs_repacked += 1;
                        }
                        Some(_) => {}
                        None => {
                            if saver.save_with_id(b.kind, b.id, &plain)? {
                                res.blobs_repacked += 1;
                            }
                        }
                    }
                }
                i = j;
            }
            progress.bytes(info.size);
            progress.file_done(std::path::Path::new(&fk.path_of(&name)));
            // New packs are indexed as they pile up, so none stays unindexed for long.
            if saver.finished_count() >= 32 {
                let done = saver.take_finished();
                repo.write_index(done.clone())?;
                out.extend(done);
            }
        }
        let written = saver.finish()?;
        backend.flush()?;
        out.extend(written);
        res.packs_written = out.len() as u64;
    }

    // 2. The consolidated index. New marks carry the time they are written, not the time of
    // the plan: a backup's safety margin counts from when it can see them.
    let written_at = jiff::Timestamp::now().as_second().max(plan.now);
    let mark_now = Mark {
        at: written_at,
        delete_after: written_at + opts.grace,
    };
    progress.message("writing the index");
    let mut index = IndexWriter::new(repo, &plan.read_files);
    // A plan sorted on disk keeps the index it writes on disk for the next load as well
    // (format-spec 16): the next run on this host need not build it from every index file.
    let mut next = match (&plan.bounded, repo.index_scratch()) {
        (Some(_), Some((dir, mem))) => {
            let blobs = repo.index().read().expect("index lock").len();
            crate::index::Index::loading_on_disk(&dir, mem, blobs)
                .ok()
                .map(|i| (i, dir))
        }
        _ => None,
    };
    for p in out {
        if let Some((n, _)) = next.as_mut() {
            n.add_pack(&p);
        }
        index.push(p)?;
    }
    let mut entry = |mut p: PackEntry| -> Result<()> {
        match plan.decisions.get(&p.id).copied().unwrap_or(Decision::Keep) {
            Decision::Keep => p.mark = None,
            Decision::Marked(m) => p.mark = Some(m),
            // With `delete_now`, Mark is only for packs a minimum storage duration holds.
            Decision::Mark => p.mark = Some(mark_now),
            Decision::Repack if !opts.delete_now => p.mark = Some(mark_now),
            Decision::Repack | Decision::Delete => {
                to_delete.push((FileKind::of_pack(p.kind), p.id.to_hex(), p.size));
                return Ok(());
            }
            Decision::Drop => return Ok(()),
        }
        if let Some((n, _)) = next.as_mut() {
            n.add_pack(&p);
        }
        index.push(p)
    };
    match &plan.bounded {
        None => {
            for p in &plan.packs {
                entry(p.clone())?;
            }
        }
        Some(b) => b.for_each_entry(repo, &mut entry)?,
    }
    let (count, written) = index.finish()?;
    res.index_files_written = count;

    // 3. Old index files, then packs.
    progress.message("deleting");
    for id in &plan.read_files {
        match backend.delete(FileKind::Index, &id.to_hex()) {
            Ok(()) | Err(Error::ObjectNotFound(_)) => res.index_files_deleted += 1,
            // Superseded by the file just written: harmless until a later prune deletes it.
            Err(Error::Locked { until, .. }) => res.locked.add_index(until),
            Err(e) => return Err(e),
        }
    }
    // Kept only when no superseded file stays: a later load takes the files it does not
    // cover as new ones. A failure leaves nothing usable behind; the next load builds.
    if let Some((mut n, dir)) = next.take().filter(|_| res.locked.index_files == 0) {
        n.keep_as(&dir, written);
        n.seal();
    }
    to_delete.extend(plan.orphan_names.iter().cloned());
    for (fk, name, size) in to_delete {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        match backend.delete(fk, &name) {
            Ok(()) | Err(Error::ObjectNotFound(_)) => {
                res.packs_deleted += 1;
                res.bytes_deleted += size;
            }
            // Locked after all (its retention was extended since the plan): an orphan the
            // next prune deletes once the lock ends.
            Err(Error::Locked { until, .. }) => res.locked.add_pack(size, until),
            Err(e) => return Err(e),
        }
    }

    // 4. Object Lock: snapshots and key files forget / key remove hid while they were
    // retained go for good once their retention has ended; what stays referenced stays
    // retained.
    if repo.config().object_lock.is_some() {
        for kind in [FileKind::Snapshot, FileKind::Key] {
            let p = backend.purge_hidden(kind)?;
            res.hidden.deleted += p.deleted;
            res.hidden.locked += p.locked;
            res.hidden.last_until = res.hidden.last_until.max(p.last_until);
        }
        progress.message("extending Object Lock retention");
        let targets = plan.retention_targets(repo, true)?;
        let now = jiff::Timestamp::now().as_second().max(plan.now);
        res.retention = Some(crate::ops::retention::extend(
            repo,
            &targets,
            None,
            now,
            &crate::progress::NoProgress,
        )?);
    }
    Ok(res)
}

/// Writes index files for `packs`, the last one superseding `old`: until it is stored the old
/// files stay in force, so a prune killed before it changes nothing that matters.
pub fn write_index_files(repo: &Repository, packs: Vec<PackEntry>, old: &[Id]) -> Result<u64> {
    let mut w = IndexWriter::new(repo, old);
    for p in packs {
        w.push(p)?;
    }
    w.finish().map(|(count, _)| count)
}

/// Writes index files of at most about [`BLOBS_PER_INDEX_FILE`] blobs as pack entries come,
/// the last one (written by [`finish`](IndexWriter::finish)) superseding `old`.
struct IndexWriter<'a> {
    repo: &'a Repository,
    old: &'a [Id],
    batch: Vec<PackEntry>,
    blobs: usize,
    files: u64,
    /// The files written.
    ids: Vec<Id>,
    flushed: bool,
}

impl<'a> IndexWriter<'a> {
    fn new(repo: &'a Repository, old: &'a [Id]) -> Self {
        IndexWriter {
            repo,
            old,
            batch: Vec::new(),
            blobs: 0,
            files: 0,
            ids: Vec::new(),
            flushed: false,
        }
    }

    fn push(&mut self, p: PackEntry) -> Result<()> {
        if self.blobs >= BLOBS_PER_INDEX_FILE {
            self.write(false)?;
        }
        self.blobs += p.blobs.len();
        self.batch.push(p);
        Ok(())
    }

    fn write(&mut self, last: bool) -> Result<()> {
        if !self.flushed {
            // An index names only packs that are stored.
            self.repo.backend().flush()?;
            self.flushed = true;
        }
        let f = IndexFile {
            supersedes: if last { self.old.to_vec() } else { Vec::new() },
            packs: std::mem::take(&mut self.batch),
        };
        self.blobs = 0;
        self.files += 1;
        if f.packs.is_empty() && f.supersedes.is_empty() {
            return Ok(());
        }
        let id = self
            .repo
            .write_object(FileKind::Index, ObjectKind::Index, &f.encode())?;
        self.ids.push(id);
        Ok(())
    }

    /// Writes the last file; returns how many were written, and their ids.
    fn finish(mut self) -> Result<(u64, Vec<Id>)> {
        self.write(true)?;
        Ok((self.files, self.ids))
    }
}
