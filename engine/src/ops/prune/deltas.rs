//! The bases the used deltas need, for a plan on disk: a chain depth at a time, each depth
//! sorted on disk and joined with the sort of the delta claims, the bases read back from their
//! run file ([`bases_of_used`]).

use std::collections::HashMap;

use crate::error::Result;
use crate::id::{BlobId, Id};
use crate::index::{blob_record_of, Bases, MAX_DELTA_DEPTH};
use crate::indexrun::{by_depth_from, Builder, Merge, Record, Sorted};
use crate::ops::claims::Verdict;
use crate::repo::Repository;

use super::judge::pack_pos;
use super::PrunePlan;

/// Records of delta claims sorted in memory at a time, at the least (an eighth of a small
/// budget would make runs of a few dozen records).
pub(super) const MIN_DELTA_RECORDS: usize = 4096;

/// The delta claims of ids asked in increasing order: one pass over their sort.
pub(super) struct DeltaClaims<'a> {
    pub(super) merge: Merge<'a>,
    pub(super) group: Vec<Record>,
    pub(super) done: bool,
}

impl<'a> DeltaClaims<'a> {
    fn new(deltas: &'a Sorted) -> Result<Self> {
        Ok(DeltaClaims {
            merge: deltas.merge()?,
            group: Vec::new(),
            done: false,
        })
    }

    /// The claims of `id` as a delta (one per pack listing it so); ids asked in order.
    fn of(&mut self, id: [u8; 32]) -> Result<&[Record]> {
        while !self.done && self.group.first().is_none_or(|r| r.id < id) {
            if !self.merge.next_group(&mut self.group)? {
                self.done = true;
            }
        }
        Ok(match self.group.first() {
            Some(r) if r.id == id => &self.group,
            _ => &[],
        })
    }
}

/// The bases the used blobs need, as a sort of ids (repeats allowed): of every claim of a used
/// delta that holds (a disputed pack's claims count only when its header confirms them), the
/// base; and theirs, down the chain, at most [`MAX_DELTA_DEPTH`] bases deep (no reader reads a
/// deeper chain). Late packs (indexed after the plan began) are in the loaded index only. A
/// depth at a time, each sorted on disk in `dir` and joined with the delta claims: nothing held
/// grows with the number of deltas (a map of them all took about 200 bytes a delta).
#[allow(clippy::too_many_arguments)]
pub(super) fn bases_of_used(
    repo: &Repository,
    plan: &PrunePlan,
    used: &Sorted,
    deltas: &Sorted,
    bases: &Bases,
    headers: &HashMap<u32, Verdict>,
    dir: &std::path::Path,
    mem: usize,
) -> Result<Sorted> {
    let quarter = (mem / 4).max(MIN_DELTA_RECORDS);
    let mut out = Builder::ids_only(&dir.join("bases-used"), quarter)?;
    let late: HashMap<BlobId, BlobId> = {
        let idx = repo.index().read().expect("index lock");
        plan.late_blobs
            .iter()
            .filter_map(|b| Some((*b, idx.base_of(b)?)))
            .collect()
    };
    if deltas.is_empty() && late.is_empty() {
        return out.into_sorted();
    }
    // A claim holds unless its pack's header (read for a disputed pack) refutes it, as
    // `keep_holding` judges the claims counted.
    let holds = |claim: &Record, base: BlobId| {
        let (pos, rec) = blob_record_of(claim, Some(base));
        headers.get(&pos).and_then(|v| v.holds(&rec)) != Some(false)
    };
    // The used blobs first, then each depth's bases; the delta claims joined anew at each.
    let mut claims: Option<(usize, DeltaClaims)> = None;
    by_depth_from(
        &dir.join("bases"),
        quarter,
        true,
        used,
        &mut |depth, r, next| {
            if crate::ops::interrupted() {
                return Err(crate::stop::error(String::new));
            }
            if claims.as_ref().is_none_or(|(d, _)| *d != depth) {
                claims = Some((depth, DeltaClaims::new(deltas)?));
            }
            let (_, of) = claims.as_mut().expect("set above");
            // The last depth's bases are not followed further.
            let follow = depth + 1 < MAX_DELTA_DEPTH;
            let mut found = |base: BlobId| -> Result<()> {
                if follow {
                    next.push(Record::of_id(base.0))?;
                }
                out.push(Record::of_id(base.0))
            };
            let id = Id(r.id);
            for c in of.of(r.id)? {
                let base = bases.get(pack_pos(c), &id)?.ok_or_else(|| {
                    crate::error::Error::Other(format!(
                        "prune's sort of delta bases lost the base of blob {id}"
                    ))
                })?;
                if holds(c, base) {
                    found(base)?;
                }
            }
            if let Some(base) = late.get(&id) {
                found(*base)?;
            }
            Ok(true)
        },
    )?;
    out.into_sorted()
}
