//! What a plan decides for each pack from its sums (used blobs and bytes, what the store
//! lists, marks): keep, mark, revive, delete, repack, wait ([`decide`]).

use std::collections::HashMap;

use crate::backend::{FileKind, ObjectInfo, StorageClass};
use crate::error::Result;
use crate::format::index::Mark;
use crate::format::ObjectKind;
use crate::id::ObjectId;
use crate::repo::Repository;

use super::held::{held_by_min_duration, skip_locked};
use super::objects::Objects;
use super::{
    Decision, Decisions, MaxUnused, PruneOptions, PrunePlan, BLOBS_PER_INDEX_FILE, ORPHAN_MIN_AGE,
};

/// One pack as the decisions see it: the merged entry's id, kind, size and mark, its blob
/// records, and the used blobs counted in it (each used blob in one pack) and their bytes.
#[derive(Clone, Debug)]
pub(super) struct PackSum {
    pub(super) id: ObjectId,
    pub(super) kind: ObjectKind,
    pub(super) size: u64,
    pub(super) mark: Option<Mark>,
    pub(super) blobs: u64,
    pub(super) used: u64,
    pub(super) used_bytes: u64,
}

/// What the store lists of a pack (an [`ObjectInfo`] without its name).
#[derive(Clone, Copy, Debug)]
pub(super) struct Stored {
    pub(super) size: u64,
    pub(super) class: StorageClass,
    pub(super) modified: Option<i64>,
}

impl Stored {
    fn of(o: &ObjectInfo) -> Self {
        Stored {
            size: o.size,
            class: o.class,
            modified: o.modified,
        }
    }
}

/// What [`Sums::each`] calls for each pack: its key, its sums, what the store lists of it.
pub(super) type EachSum<'a> = dyn FnMut(u32, &PackSum, Option<Stored>) -> Result<()> + 'a;

/// The packs a plan decides on, each with its key ([`Decisions`]) and what the store lists of
/// it: in memory, or read from the plan's table on disk ([`bounded`]).
pub(super) trait Sums {
    /// One more than the largest key.
    fn keys(&self) -> usize;
    /// Each pack, in key order; `None`: not stored.
    fn each(&self, f: &mut EachSum) -> Result<()>;
}

/// The packs of a plan in memory, keyed by their place in `sums` (sorted by id).
pub(super) struct InMemory<'a> {
    pub(super) sums: &'a [PackSum],
    pub(super) stored: &'a HashMap<String, (FileKind, ObjectInfo)>,
}

impl Sums for InMemory<'_> {
    fn keys(&self) -> usize {
        self.sums.len()
    }

    fn each(&self, f: &mut EachSum) -> Result<()> {
        for (key, e) in self.sums.iter().enumerate() {
            let stored = self.stored.get(&e.id.to_hex()).map(|(_, o)| Stored::of(o));
            f(key as u32, e, stored)?;
        }
        Ok(())
    }
}

/// Decides every pack (keep, mark, delete, repack, drop), the orphans (stored packs no index
/// file names), and what Object Lock still holds; counts the requests.
pub(super) fn decide(
    repo: &Repository,
    plan: &mut PrunePlan,
    opts: &PruneOptions,
    sums: &dyn Sums,
    orphans: Objects,
) -> Result<()> {
    let now = plan.now;
    let lock = repo.config().object_lock.is_some();
    plan.decisions = Decisions::new(sums.keys());
    // Partly used packs: (key, unused, size, first 8 bytes of the id).
    let mut candidates: Vec<(u32, u64, u64, u64)> = Vec::new();
    let mut index_blobs = 0u64;
    sums.each(&mut |key, e, info| {
        index_blobs += e.blobs;
        let Some(info) = info else {
            plan.missing_unused.add(e.size);
            plan.decisions.set(key, Decision::Drop, e.mark);
            return Ok(());
        };
        plan.total.add(e.size);
        let (nused, used_bytes) = (e.used, e.used_bytes);
        let decision = if let Some(mark) = e.mark {
            if nused > 0 {
                plan.revive.add(e.size);
                Decision::Keep
            } else if now < mark.delete_after && !opts.delete_now {
                plan.waiting.add(e.size);
                Decision::Marked(mark)
            } else if let Some(cost) = held_by_min_duration(&info, now, opts) {
                plan.min_duration_held.add(e.size);
                plan.early_deletion_usd += cost;
                Decision::Marked(mark)
            } else {
                plan.delete.add(e.size);
                Decision::Delete
            }
        } else if nused == 0 {
            if !opts.delete_now {
                // Marked at once, whatever its age: a backup still running that stored it
                // commits within half the grace period or copies the blobs (section 12).
                plan.mark.add(e.size);
                Decision::Mark
            } else if let Some(cost) = held_by_min_duration(&info, now, opts) {
                plan.min_duration_held.add(e.size);
                plan.early_deletion_usd += cost;
                Decision::Mark
            } else {
                plan.delete.add(e.size);
                Decision::Delete
            }
        } else {
            let unused = e.size.saturating_sub(used_bytes + 38 + 4);
            if unused > 0 && e.blobs > nused {
                if info.class.is_archive() {
                    plan.cold_partly_used.add(e.size);
                } else {
                    let id8 = u64::from_be_bytes(e.id.0[..8].try_into().expect("8"));
                    candidates.push((key, e.size - used_bytes, e.size, id8));
                }
            }
            Decision::Keep
        };
        if matches!(decision, Decision::Keep) {
            plan.used_bytes += used_bytes;
        }
        if nused > 0 && lock {
            let fk = FileKind::of_pack(e.kind);
            plan.referenced.push((key, e.id, fk, info.modified));
        }
        plan.decisions.set(key, decision, e.mark);
        Ok(())
    })?;

    // Repack the packs with the most unused bytes until what is left is under the limit.
    let unused_total: u64 = candidates.iter().map(|c| c.1).sum();
    let live_total = plan.used_bytes + unused_total;
    let limit = match opts.max_unused {
        MaxUnused::Percent(p) => (live_total as f64 * p / 100.0) as u64,
        MaxUnused::Bytes(b) => b,
    };
    // Ties by id (the first 8 bytes tell ids apart), as the keys of a plan on disk are not
    // in id order.
    candidates.sort_by(|a, b| {
        (b.1 as f64 / b.2 as f64)
            .total_cmp(&(a.1 as f64 / a.2 as f64))
            .then(a.3.cmp(&b.3))
            .then(a.0.cmp(&b.0))
    });
    let mut unused_left = unused_total;
    for (key, unused, size, _) in candidates {
        let within_budget = opts
            .max_repack
            .is_none_or(|m| plan.repack.bytes + size <= m);
        if unused_left > limit && within_budget {
            unused_left -= unused;
            plan.repack.add(size);
            let used_bytes = size - unused;
            plan.repack_download += used_bytes;
            plan.repack_upload += used_bytes;
            plan.requests_get += 1;
            plan.decisions.set(key, Decision::Repack, None);
        }
    }
    plan.unused_after = unused_left;
    // What stays, and when what goes becomes deletable.
    let grace_end = now + if opts.delete_now { 0 } else { opts.grace };
    sums.each(&mut |key, e, info| {
        let min_duration_end =
            info.and_then(|i| Some(i.modified? + 86_400 * i64::from(i.class.min_days())));
        let at = |t: i64| match min_duration_end {
            Some(end) if !opts.ignore_min_duration => t.max(end),
            _ => t,
        };
        match plan.decisions.get(key, e.mark) {
            Some(Decision::Keep) => {
                plan.kept.add(e.size);
                // Saturating: a forged index may claim overlapping records.
                plan.kept_unused += e.size.saturating_sub(e.used_bytes);
            }
            Some(Decision::Marked(m)) => plan.later.push(at(m.delete_after), e.size),
            Some(Decision::Mark) => plan.later.push(at(grace_end), e.size),
            Some(Decision::Repack) if !opts.delete_now => plan.later.push(at(grace_end), e.size),
            _ => {}
        }
        Ok(())
    })?;

    // Orphans: packs no index file names.
    let (tally, young) = (&mut plan.orphans, &mut plan.orphans_young);
    plan.orphan_names = orphans.filter(&mut |o| {
        let old = opts.delete_now
            || o.modified
                .is_some_and(|m| now - m >= opts.grace.max(ORPHAN_MIN_AGE));
        if old {
            tally.add(o.size);
        } else {
            young.add(o.size);
        }
        Ok(old)
    })?;
    if lock {
        skip_locked(repo, plan, sums, now)?;
    }
    let repack_packs = plan
        .repack_upload
        .div_ceil(u64::from(repo.config().data_pack_size).max(1));
    plan.requests_put = repack_packs + 1 + index_blobs / BLOBS_PER_INDEX_FILE as u64;
    plan.requests_delete = plan.delete.packs + plan.orphans.packs + plan.index_files;
    if opts.delete_now {
        plan.requests_delete += plan.repack.packs;
    }
    Ok(())
}
