//! What every run that adds a snapshot shares (backup, copy): a blob saver, index files written
//! now and then so a killed run's uploads are reused, and the last step before the snapshot is
//! committed: make sure no pack it relies on can be deleted by a prune that ran meanwhile
//! (format-spec.md section 12).
//!
//! The backup lists the index files written since it loaded the index. A pack it reused or
//! wrote that a prune has marked for deletion is safe while less than half of the mark's
//! grace period has passed: the snapshot is written long before the pack may be deleted, and
//! the next prune sees the snapshot and revives the pack. A mark past that point is not
//! trusted: the blobs that have no live copy are copied into new packs first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::format::index::{IndexFile, PackEntry};
use crate::id::{BlobId, Id, ObjectId};
use crate::index::{BlobLocation, PackInfo};
use crate::packer::BlobSaver;
use crate::repo::Repository;

/// A run writes an index file for the packs it stored at least this often (by count and by
/// time), so a run killed midway leaves its uploads indexed and the next run reuses them.
const CHECKPOINT_PACKS: usize = 32;
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(120);

pub(crate) struct Writer {
    pub(crate) repo: Arc<Repository>,
    pub(crate) saver: BlobSaver,
    /// When the last index file was written, and the index files this run wrote.
    state: Mutex<(Instant, Vec<Id>)>,
    /// Marked packs whose blobs this run already copied (a run that commits several snapshots
    /// copies them once).
    copied_packs: Mutex<HashSet<ObjectId>>,
}

impl Writer {
    pub(crate) fn new(repo: &Arc<Repository>) -> Result<Self> {
        Ok(Writer {
            repo: repo.clone(),
            saver: repo.blob_saver()?,
            state: Mutex::new((Instant::now(), Vec::new())),
            copied_packs: Mutex::new(HashSet::new()),
        })
    }

    /// Writes an index file for the packs stored since the last one, when enough of them
    /// piled up or enough time passed (`force`: whenever there are any).
    pub(crate) fn checkpoint(&self, force: bool) -> Result<()> {
        // Workers finishing files do not queue behind a checkpoint already under way.
        let mut st = if force {
            self.state.lock().expect("index state")
        } else {
            match self.state.try_lock() {
                Ok(st) => st,
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
                Err(std::sync::TryLockError::Poisoned(_)) => panic!("index state poisoned"),
            }
        };
        let n = self.saver.finished_count();
        if n == 0 || (!force && n < CHECKPOINT_PACKS && st.0.elapsed() < CHECKPOINT_EVERY) {
            return Ok(());
        }
        let packs = self.saver.take_finished();
        if let Some(id) = self.repo.write_index(packs)? {
            st.1.push(id);
        }
        st.0 = Instant::now();
        Ok(())
    }

    /// Uploads what is open and indexes it, then [`settle`]s: the run may commit its snapshot
    /// once this returns. `check` stops it early (interrupt, failure elsewhere). Returns the
    /// number of blobs copied out of packs a prune marked.
    pub(crate) fn commit_ready(&self, check: &dyn Fn() -> Result<()>) -> Result<u64> {
        self.saver.upload_open()?;
        self.checkpoint(true)?;
        settle(self, check)
    }

    /// A failed or interrupted run: indexes the packs already uploaded (so the next run reuses
    /// them; not when the store itself failed, which would only add retries) and drops the
    /// unfinished ones.
    pub(crate) fn abort(&self, e: &Error) {
        if !matches!(e, Error::Backend { .. }) {
            let _ = self.checkpoint(true);
        }
        self.saver.abort();
    }
}

/// Rounds of "list, copy" before giving up (each copy takes time, in which a prune may act).
const ROUNDS: usize = 8;

/// Returns the number of blobs copied.
fn settle(ctx: &Writer, check: &dyn Fn() -> Result<()>) -> Result<u64> {
    let repo = &ctx.repo;
    let mut seen: HashSet<Id> = repo
        .index()
        .read()
        .expect("index lock")
        .files
        .iter()
        .copied()
        .collect();
    let mut copied = 0;
    // Every mark seen so far, and what the index files seen so far hold live (without the
    // files another one supersedes): re-judged each round, since copying takes time.
    let mut marks: HashMap<ObjectId, PackEntry> = HashMap::new();
    let mut files: Vec<(Id, IndexFile)> = Vec::new();
    let mut copied_packs = ctx.copied_packs.lock().expect("copied packs");
    for _ in 0..ROUNDS {
        seen.extend(ctx.state.lock().expect("index state").1.iter());
        files.extend(repo.read_new_index_files(&mut seen)?);
        for (_, f) in &files {
            for p in f.packs.iter().filter(|p| p.mark.is_some()) {
                marks.entry(p.id).or_insert_with(|| p.clone());
            }
        }
        let now = jiff::Timestamp::now().as_second();
        let used = ctx.saver.used_packs();
        let mut risky: Vec<&PackEntry> = marks
            .values()
            .filter(|p| {
                p.mark.is_some_and(|m| m.is_late(now))
                    && used.contains(&p.id)
                    && !copied_packs.contains(&p.id)
            })
            .collect();
        if risky.is_empty() {
            return Ok(copied);
        }
        risky.sort_by_key(|p| p.id);
        // Blobs a prune copied into live packs (repacking) need no copy of ours.
        let superseded: HashSet<Id> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let live: HashSet<BlobId> = files
            .iter()
            .filter(|(id, _)| !superseded.contains(id))
            .flat_map(|(_, f)| f.packs.iter())
            .filter(|p| p.mark.is_none() && !marks.contains_key(&p.id))
            .flat_map(|p| p.blobs.iter().map(|b| b.id))
            .collect();
        for p in risky {
            for b in p.blobs.iter().filter(|b| !live.contains(&b.id)) {
                check()?;
                let data = read_marked(repo, p, b).map_err(|e| {
                    Error::Other(format!(
                        "pack {} holds blobs this run relies on, and a prune marked it for \
                         deletion; copying them failed: {e}. Nothing was committed; run it \
                         again",
                        FileKind::of_pack(p.kind).path_of(&p.id.to_hex())
                    ))
                })?;
                ctx.saver.save_copy(b.kind, b.id, &data)?;
                copied += 1;
            }
            copied_packs.insert(p.id);
        }
        ctx.saver.upload_open()?;
        ctx.checkpoint(true)?;
    }
    Err(Error::Other(format!(
        "prunes kept marking packs this run relies on ({ROUNDS} rounds of copying); \
         nothing was committed: run it again"
    )))
}

fn read_marked(
    repo: &Repository,
    p: &PackEntry,
    b: &crate::format::pack::BlobRecord,
) -> Result<Vec<u8>> {
    let info = PackInfo::of_entry(p);
    let loc = BlobLocation::of_record(b);
    let ct = repo.backend().get_range(
        FileKind::of_pack(p.kind),
        &p.id.to_hex(),
        u64::from(b.offset),
        u64::from(b.length),
    )?;
    repo.open_blob(&b.id, &info, loc, &ct)
}
