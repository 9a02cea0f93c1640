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

use super::{
    Decision, FilePacks, Listings, PruneOptions, PrunePlan, PruneResult, BLOBS_PER_INDEX_FILE,
    CARRIED_SUPERSEDES,
};
use crate::id::ObjectId;
use std::collections::HashMap;

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
    // The packs to repack, each with the used blobs to copy out of it.
    let repack: Vec<(PackInfo, Vec<BlobRecord>)> = match &plan.bounded {
        None => plan
            .packs
            .iter()
            .enumerate()
            .filter(|(key, _)| plan.decisions.is_repack(*key as u32))
            .map(|(_, p)| {
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

    // 2. The index. New marks carry the time they are written, not the time of the plan: a
    // backup's safety margin counts from when it can see them.
    let written_at = jiff::Timestamp::now().as_second().max(plan.now);
    let mark_now = Mark {
        at: written_at,
        delete_after: written_at + opts.grace,
    };
    progress.message("writing the index");
    let mut index = IndexWriter::new(repo);
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
        let pos = next.as_mut().map(|(n, _)| n.add_pack(&p));
        index.push(p, pos)?;
    }
    // The files read that another one supersedes go again; those in force go when one of
    // their listings changes or they are small; the others stay as they are.
    let in_force: std::collections::HashSet<&Id> = plan.live_index.iter().collect();
    let mut gone: Vec<Id> = plan
        .read_files
        .iter()
        .filter(|id| !in_force.contains(id))
        .copied()
        .collect();
    let superseded_read = gone.len();
    let mut stay: Vec<FilePacks> = Vec::new();
    // Small files are consolidated when there are two or more.
    let small = |id: &Id| {
        plan.heads
            .get(id)
            .is_some_and(|h| h.0 < opts.small_index_file)
    };
    let consolidate = plan.live_index.iter().filter(|id| small(id)).count() >= 2;
    // What the rewritten files superseded is superseded again (a host may cover those).
    let mut carried: Vec<Id> = Vec::new();
    let mut carried_set: std::collections::HashSet<Id> = std::collections::HashSet::new();
    let mut file = |id: Id, listings: Listings| -> Result<()> {
        let mut same = !(consolidate && small(&id));
        // The entries, each with its position in the index kept next.
        let mut entries = Vec::new();
        for (listed, merged) in listings {
            let Some((key, mut p)) = merged else {
                same = false;
                continue;
            };
            let decision = plan.decisions.get(key, p.mark);
            match decision.unwrap_or(Decision::Keep) {
                Decision::Keep => p.mark = None,
                Decision::Marked(m) => p.mark = Some(m),
                // With `delete_now`, Mark is only for packs a minimum storage duration holds.
                Decision::Mark => p.mark = Some(mark_now),
                Decision::Repack if !opts.delete_now => p.mark = Some(mark_now),
                // Deleted after the index is written (`PrunePlan::deleted`).
                Decision::Repack | Decision::Delete | Decision::Drop => {
                    same = false;
                    continue;
                }
            }
            same &= p.mark == listed.mark && p.blobs.len() == listed.blobs;
            let pos = next.as_mut().map(|(n, _)| n.add_pack(&p));
            entries.push((p, pos));
        }
        if same {
            stay.push((id, entries.iter().filter_map(|(_, pos)| *pos).collect()));
            return Ok(());
        }
        gone.push(id);
        if let Some((_, s)) = plan.heads.get(&id) {
            for old in s {
                if carried.len() < CARRIED_SUPERSEDES && carried_set.insert(*old) {
                    carried.push(*old);
                }
            }
        }
        for (p, pos) in entries {
            index.push(p, pos)?;
        }
        Ok(())
    };
    match &plan.bounded {
        None => {
            let keys: HashMap<ObjectId, usize> = plan
                .packs
                .iter()
                .enumerate()
                .map(|(key, p)| (p.id, key))
                .collect();
            let mut seen = std::collections::HashSet::new();
            for (id, listed) in &plan.listed {
                let listings = listed
                    .iter()
                    .map(|l| {
                        let first = seen.insert(l.id);
                        let merged = keys
                            .get(&l.id)
                            .filter(|_| first)
                            .map(|key| (*key as u32, plan.packs[*key].clone()));
                        (l.clone(), merged)
                    })
                    .collect();
                file(*id, listings)?;
            }
        }
        Some(b) => b.for_each_file(repo, &mut file)?,
    }
    // The files read that another supersedes need superseding again only with those it
    // rewrites (a file left as it was keeps superseding them): with nothing rewritten and no
    // pack written, nothing is written.
    let rewrote = gone.len() > superseded_read;
    let mut supersedes = Vec::new();
    if rewrote || index.has_written() {
        let known: std::collections::HashSet<Id> = gone.iter().copied().collect();
        carried.retain(|id| !known.contains(id));
        supersedes = gone.clone();
        supersedes.extend(carried);
    }
    let (count, written) = index.finish(&supersedes)?;
    res.index_files_written = count;
    res.index_files_kept = stay.len() as u64;

    // 3. Old index files, then packs.
    progress.message("deleting");
    for id in &gone {
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
        n.keep_as(&dir, stay.into_iter().chain(written).collect());
        n.seal();
    }
    let mut delete = |fk: FileKind, name: &str, size: u64| -> Result<()> {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        match backend.delete(fk, name) {
            Ok(()) | Err(Error::ObjectNotFound(_)) => {
                res.packs_deleted += 1;
                res.bytes_deleted += size;
            }
            // Locked after all (its retention was extended since the plan): an orphan the
            // next prune deletes once the lock ends.
            Err(Error::Locked { until, .. }) => res.locked.add_pack(size, until),
            Err(e) => return Err(e),
        }
        Ok(())
    };
    plan.deleted(opts.delete_now, &mut |p| {
        delete(FileKind::of_pack(p.kind), &p.id.to_hex(), p.size)
    })?;
    plan.orphan_names
        .each(&mut |o| delete(o.kind, &o.name, o.size))?;

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
        let targets = plan.retention_targets(repo, Some(&gone))?;
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
    let mut w = IndexWriter::new(repo);
    for p in packs {
        w.push(p, None)?;
    }
    w.finish(old).map(|(count, _)| count)
}

/// Writes index files of at most about [`BLOBS_PER_INDEX_FILE`] blobs as pack entries come,
/// the last one (written by [`finish`](IndexWriter::finish)) superseding the old ones.
struct IndexWriter<'a> {
    repo: &'a Repository,
    batch: Vec<PackEntry>,
    /// The positions of the batch's packs in the index kept next (those it has).
    batch_pos: Vec<u32>,
    blobs: usize,
    files: u64,
    /// The files written, with the positions of their packs in the index kept next.
    ids: Vec<FilePacks>,
    flushed: bool,
}

impl<'a> IndexWriter<'a> {
    fn new(repo: &'a Repository) -> Self {
        IndexWriter {
            repo,
            batch: Vec::new(),
            batch_pos: Vec::new(),
            blobs: 0,
            files: 0,
            ids: Vec::new(),
            flushed: false,
        }
    }

    /// Adds a pack, at `pos` in the index kept next (if one is).
    fn push(&mut self, p: PackEntry, pos: Option<u32>) -> Result<()> {
        if self.blobs >= BLOBS_PER_INDEX_FILE {
            self.write(&[])?;
        }
        self.blobs += p.blobs.len();
        self.batch.push(p);
        self.batch_pos.extend(pos);
        Ok(())
    }

    fn write(&mut self, supersedes: &[Id]) -> Result<()> {
        if !self.flushed {
            // An index names only packs that are stored.
            self.repo.backend().flush()?;
            self.flushed = true;
        }
        let f = IndexFile {
            supersedes: supersedes.to_vec(),
            packs: std::mem::take(&mut self.batch),
        };
        self.blobs = 0;
        if f.packs.is_empty() && f.supersedes.is_empty() {
            return Ok(());
        }
        let id = self
            .repo
            .write_object(FileKind::Index, ObjectKind::Index, &f.encode())?;
        self.files += 1;
        self.ids.push((id, std::mem::take(&mut self.batch_pos)));
        Ok(())
    }

    /// Some pack was pushed (the last file will list packs).
    fn has_written(&self) -> bool {
        self.files > 0 || !self.batch.is_empty()
    }

    /// Writes the last file, superseding `old`; returns how many were written, and their ids
    /// with the positions of their packs in the index kept next.
    fn finish(mut self, old: &[Id]) -> Result<(u64, Vec<FilePacks>)> {
        self.write(old)?;
        Ok((self.files, self.ids))
    }
}
