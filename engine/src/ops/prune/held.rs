//! What the store holds back: Object Lock retention (packs and orphans still retained are left
//! out, asked [`LOCK_BATCH`] at a time) and the minimum storage durations of archive classes.

use crate::backend::{FileKind, StorageClass};
use crate::error::{Error, Result};
use crate::format::index::Mark;
use crate::repo::Repository;

use super::decide::{Stored, Sums};
use super::objects::Object;
use super::{Decision, PruneOptions, PrunePlan};

/// Objects due for deletion whose retention [`skip_locked`] asks for at a time (one HEAD
/// each, in parallel).
pub(super) const LOCK_BATCH: usize = 4096;

/// Under Object Lock: packs due for deletion that are still retained stay (indexed and
/// marked, or orphans), and are counted with the date they become deletable. They are asked
/// about a batch at a time: what is due is never held whole.
pub(super) fn skip_locked(
    repo: &Repository,
    plan: &mut PrunePlan,
    sums: &dyn Sums,
    now: i64,
) -> Result<()> {
    let backend = repo.backend();
    // Retained beyond now: until when (none where the object is gone).
    let retained = |due: &[(FileKind, String)]| {
        crate::repo::parallel_map(due, |(fk, name)| match backend.retention(*fk, name) {
            Ok(u) => Ok(u.filter(|u| *u > now)),
            Err(Error::ObjectNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
    };
    // Indexed packs: (kind, name), and their key, size and mark.
    type Due = (Vec<(FileKind, String)>, Vec<(u32, u64, Option<Mark>)>);
    let held = |plan: &mut PrunePlan, (names, packs): &mut Due| -> Result<()> {
        let until = retained(names)?;
        plan.lock_heads += names.len() as u64;
        for (&(key, size, own), until) in packs.iter().zip(until) {
            let Some(until) = until else { continue };
            plan.locked.add_pack(size, until);
            plan.later.push(until, size);
            // Unmarked only with `delete_now`: marked as due, for the prune after the lock.
            let mark = own.unwrap_or(Mark {
                at: now,
                delete_after: now,
            });
            plan.delete.packs -= 1;
            plan.delete.bytes -= size;
            plan.decisions.set(key, Decision::Marked(mark), own);
        }
        names.clear();
        packs.clear();
        Ok(())
    };
    let mut due: Due = Default::default();
    sums.each(&mut |key, p, _| {
        if plan.decisions.get(key, p.mark) == Some(Decision::Delete) {
            due.0.push((FileKind::of_pack(p.kind), p.id.to_hex()));
            due.1.push((key, p.size, p.mark));
            if due.0.len() == LOCK_BATCH {
                held(plan, &mut due)?;
            }
        }
        Ok(())
    })?;
    held(plan, &mut due)?;

    // Orphans: those retained stay, and are left out of the list.
    let orphans = std::mem::take(&mut plan.orphan_names);
    let mut free = orphans.empty_like();
    let mut batch: Vec<Object> = Vec::new();
    let mut flush = |plan: &mut PrunePlan, batch: &mut Vec<Object>| -> Result<()> {
        let names: Vec<(FileKind, String)> =
            batch.iter().map(|o| (o.kind, o.name.clone())).collect();
        let until = retained(&names)?;
        plan.lock_heads += names.len() as u64;
        for (o, until) in batch.drain(..).zip(until) {
            match until {
                Some(until) => {
                    plan.orphans_locked.add_pack(o.size, until);
                    plan.orphans.packs -= 1;
                    plan.orphans.bytes -= o.size;
                }
                None => free.push(&o)?,
            }
        }
        Ok(())
    };
    orphans.each(&mut |o| {
        batch.push(o);
        if batch.len() == LOCK_BATCH {
            flush(plan, &mut batch)?;
        }
        Ok(())
    })?;
    flush(plan, &mut batch)?;
    plan.orphan_names = free;
    Ok(())
}

/// `Some(cost in USD)` when deleting this pack now would be billed for the rest of its class's
/// minimum storage duration and that is not allowed.
pub(super) fn held_by_min_duration(info: &Stored, now: i64, opts: &PruneOptions) -> Option<f64> {
    let days = i64::from(info.class.min_days());
    let age_days = (now - info.modified?) / 86_400;
    if days == 0 || age_days >= days || opts.ignore_min_duration {
        return None;
    }
    // AWS bills a "GB" of 2^30 bytes, as `stats` counts.
    let gib = info.size as f64 / (1u64 << 30) as f64;
    Some(gib * price_per_gb_month(info.class) * (days - age_days) as f64 / 30.0)
}

/// S3 storage price, us-east-1, USD per GB-month (2026 list prices; AWS's GB is 2^30 bytes).
pub fn price_per_gb_month(class: StorageClass) -> f64 {
    match class {
        StorageClass::Standard | StorageClass::IntelligentTiering | StorageClass::Other => 0.023,
        StorageClass::StandardIa => 0.0125,
        StorageClass::GlacierIr => 0.004,
        StorageClass::Glacier => 0.0036,
        StorageClass::DeepArchive => 0.00099,
    }
}
