//! The last step before a backup commits its snapshot: make sure no pack it relies on can be
//! deleted by a prune that ran meanwhile (format-spec.md section 12).
//!
//! The backup lists the index files written since it loaded the index. A pack it reused or
//! wrote that a prune has marked for deletion is safe while less than half of the mark's
//! grace period has passed: the snapshot is written long before the pack may be deleted, and
//! the next prune sees the snapshot and revives the pack. A mark past that point is not
//! trusted: the blobs that have no live copy are copied into new packs first.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::backend::FileKind;
use crate::format::index::{IndexFile, PackEntry};
use crate::id::ObjectId;
use crate::index::{BlobLocation, PackInfo};

/// Rounds of "list, copy" before giving up (each copy takes time, in which a prune may act).
const ROUNDS: usize = 8;

/// Returns the number of blobs copied.
pub(super) fn settle(ctx: &Ctx) -> Result<u64> {
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
    let mut copied_packs: HashSet<ObjectId> = HashSet::new();
    for _ in 0..ROUNDS {
        seen.extend(ctx.index_state.lock().expect("index state").1.iter());
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
                ctx.check()?;
                let data = read_marked(repo, p, b).map_err(|e| {
                    Error::Other(format!(
                        "pack {} holds blobs this backup relies on, and a prune marked it for \
                         deletion; copying them failed: {e}. Nothing was committed; run the \
                         backup again",
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
        "prunes kept marking packs this backup relies on ({ROUNDS} rounds of copying); \
         nothing was committed: run the backup again"
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
