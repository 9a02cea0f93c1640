//! Prune's plan for an index above the memory allowed (`--memory`, format-spec 16), or too
//! large for planning in memory within it ([`sorts_pay`]): the same decisions as the
//! in-memory plan, with memory that does not grow with the number of blobs.
//!
//! - Every blob claim of the index files in force (one per pack listing, as
//!   [`crate::index::merge_entries`] keeps the first) is sorted on disk by blob id, and so is
//!   every blob the snapshots use ([`crate::indexrun::Builder`], at most as many records in
//!   memory at a time as the index may keep).
//! - One merge of the claims finds the disputed packs (they claim a blob another pack claims);
//!   their headers are read and judged as the in-memory plan does (`ops::claims`).
//! - One merge of the claims with the used blobs, both in id order, counts each used blob in
//!   one pack (live before marked, checked before unverified, then lowest pack id) and finds a
//!   used blob no stored pack holds.
//! - Running it, the repacked packs' used blobs come from one more merge, and the consolidated
//!   index is written while the index files are read again, one at a time.
//!
//! The claims are read and judged in `judge`; a backup into an index with disputed blobs (a
//! repack leaves blobs in two packs until the old one goes) judges them the same way before it
//! deduplicates ([`super::judge::clean_for_dedup`]).
//!
//! What stays in memory grows with packs, not blobs, by a few dozen bytes a pack: the pack
//! table is a scratch file ([`Table`]: 8 bytes a pack find a position), the store's listing is
//! kept by position ([`Listing`], 17 bytes a pack), the counts by position (16), a decision a
//! byte. It grows too with the repacked packs' used blobs, and the ids that superseded index
//! files name outside the index in force ([`orphans`]). The trees are walked a depth at a
//! time, each depth's sorted on disk ([`walk_by_depth`]), and so are the chains of the used
//! deltas, whose bases are read back from a run file (`deltas`); the stored objects no index
//! file in force names go to a temporary file beyond a buffer ([`super::objects`]).
//!
//! Trees are loaded through the index as loaded ([`Repository::load_index`]), before disputed
//! claims are judged: a tree a false claim hides stops the prune before it deletes anything
//! (the in-memory plan reads it through the true claim).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::Result;
use crate::format::pack::BlobRecord;
use crate::id::{BlobId, Id, ObjectId};
use crate::index::{blob_record_of, Bases, PackInfo};
use crate::indexrun::{Builder, Merge, Record, Sorted};
use crate::ops::claims::Refuted;

use super::deltas::bases_of_used;
use super::judge::{judge, keep_holding, pack_pos, Claims, Judged};
use super::objects::Objects;
use super::packs::{Listing, Table};
use super::{EachSum, Listed, Listings, Sums};
use crate::progress::Progress;
use crate::repo::Repository;

use super::{decide, PackSum, PruneOptions, PrunePlan};

/// What a bounded plan keeps for [`super::run`].
pub(super) struct State {
    /// The pack table: every pack the index files in force list, marks merged.
    packs: Table,
    /// Every claim (blob record) of the files in force, by blob id.
    claims: Sorted,
    /// Every blob the snapshots use, by id (repeats allowed), as records of pack 0.
    used: Sorted,
    /// Bases of used deltas, down their chains (ids, repeats allowed): used too.
    bases_used: Sorted,
    /// The base of each delta claim, by (pack position, blob id), on disk.
    bases: Bases,
    /// Judged claims: refuted blobs by pack, and packs that are no pack at all.
    refuted: Refuted,
    /// The index files in force, in listing order: read again to write the new index.
    in_force: Vec<(Id, String)>,
    /// The sorts' temporary folder (removed with the state).
    _scratch: tempfile::TempDir,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("bounded::State")
            .field("packs", &self.packs.len())
            .field("claim_runs", &self.claims.runs())
            .field("used_runs", &self.used.runs())
            .finish()
    }
}

/// Walks every snapshot's trees a depth at a time into `used` (the tree ids too): the trees
/// at one depth, of every snapshot, are sorted on disk (`dir`, `mem` records in memory at a
/// time), each is walked once, and the trees it names are the next depth's. Nothing held grows
/// with the number of directories: a set of the trees walked took 40-75 bytes a tree (prune
/// peaked at 546 MiB on 4 million directories). A tree found at two depths (a
/// directory moved up or down) is walked twice: time, never a blob missed. Nothing deeper
/// than 1024 levels is walked: such a tree (forged) stops the prune.
fn walk_by_depth(
    repo: &Repository,
    plan: &mut PrunePlan,
    used: &mut Builder,
    dir: &std::path::Path,
    mem: usize,
) -> Result<()> {
    let snaps = super::snapshots_to_walk(repo, plan)?;
    // Each depth's trees with the snapshot that reached them (a stop names it).
    let reached = |tree: BlobId, snap: u32| Record {
        pack: snap,
        ..Record::of_id(tree.0)
    };
    let roots = snaps
        .iter()
        .enumerate()
        .map(|(i, (_, s))| reached(s.tree, i as u32));
    crate::indexrun::by_depth(dir, mem, false, roots, &mut |depth, r, next| {
        let tree = BlobId::from_bytes(r.id);
        let snap = &snaps[r.pack as usize].0;
        // No backup nests deeper; a forged tree that does (or names one tree from many
        // depths) stops the prune, as it stops every reader.
        if depth > crate::format::tree::MAX_TREE_DEPTH {
            let e = crate::error::Error::corrupt(
                format!("tree {}", tree.short()),
                format!(
                    "directories nest deeper than {} levels (damaged or forged tree?)",
                    crate::format::tree::MAX_TREE_DEPTH
                ),
            );
            return Err(super::stop(snap, e));
        }
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        used.push(Record::of_id(tree.0))?;
        let mut blob = |id: BlobId| used.push(Record::of_id(id.0));
        let mut subtree = |id: BlobId| next.push(reached(id, r.pack));
        super::walk_tree(repo, &tree, &mut blob, &mut subtree)?
            .map_err(|e| super::stop(snap, e))?;
        Ok(true)
    })
}

/// The ids of a sort of used blobs, each once, merged with the bases they use (`extra`).
struct UsedIds<'a> {
    merge: Merge<'a>,
    extra: Merge<'a>,
    last: Option<[u8; 32]>,
}

impl UsedIds<'_> {
    fn next(&mut self) -> Result<Option<[u8; 32]>> {
        loop {
            let from_sort = self.merge.peek_id()?;
            let from_extra = self.extra.peek_id()?;
            let id = match (from_sort, from_extra) {
                (None, None) => return Ok(None),
                (Some(a), Some(b)) if b < a => {
                    self.extra.next_record()?;
                    b
                }
                (Some(a), _) => {
                    self.merge.next_record()?;
                    a
                }
                (None, Some(b)) => {
                    self.extra.next_record()?;
                    b
                }
            };
            if self.last != Some(id) {
                self.last = Some(id);
                return Ok(Some(id));
            }
        }
    }
}

/// The plan, when sorting on disk pays ([`sorts_pay`]: the index is on disk, or too large to
/// plan in memory within the budget); `None` otherwise (the caller plans in memory).
pub(super) fn plan(
    repo: &Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
    now: i64,
) -> Result<Option<PrunePlan>> {
    let Some((dir, mem)) = repo.index_scratch() else {
        return Ok(None);
    };
    progress.message("reading the index");
    // The index for loading trees (kept on disk when large: built now or used again).
    repo.load_index()?;
    if !sorts_pay(repo, mem) {
        return Ok(None);
    }
    let Judged {
        scratch,
        claims: read,
        mut listing,
        superseded,
        headers,
        unverified,
        mut refuted,
        mut disputes,
        reads,
    } = judge(repo, &dir, mem, progress)?;
    let Claims {
        packs,
        bases,
        deltas,
        sorted: claims,
        in_force,
        heads,
        ..
    } = read;
    let names = repo.index().read().expect("index lock").files.clone();
    let mut plan = PrunePlan {
        now,
        index_files: names.len() as u64,
        read_files: names,
        live_index: in_force.iter().map(|(id, _)| *id).collect(),
        heads,
        claim_reads: reads,
        ..Default::default()
    };
    disputes.unverified.sort();
    plan.claims_unverified = disputes.unverified_messages();

    // Used blobs, from every snapshot's trees, sorted on disk.
    progress.message("reading snapshots");
    let mut used = Builder::ids_only(&scratch.path().join("used"), mem)?;
    // A quarter of the records for each depth's trees (two depths' sorts are open at a time).
    let trees = (mem / 4).max(crate::ops::check::MIN_DEPTH_RECORDS);
    repo.walk_once(|| walk_by_depth(repo, &mut plan, &mut used, scratch.path(), trees))?;
    let used = used.into_sorted()?;

    let bases_used = bases_of_used(
        repo,
        &plan,
        &used,
        &deltas,
        &bases,
        &headers,
        scratch.path(),
        mem,
    )?;

    // Each used blob counted in one stored pack; claims counted per pack (refuted ones not).
    let n = packs.len() as usize;
    let mut counts = Counts {
        blobs: vec![0; n],
        used: vec![0; n],
        used_bytes: vec![0; n],
    };
    let mut ids = UsedIds {
        merge: used.merge()?,
        extra: bases_used.merge()?,
        last: None,
    };
    let mut next_used = ids.next()?;
    let mut m = claims.merge()?;
    let mut g = Vec::new();
    let missing = |id: [u8; 32], plan: &PrunePlan| -> Result<()> {
        if plan.late_blobs.contains(&Id(id)) {
            return Ok(());
        }
        Err(super::in_no_stored_pack(&Id(id)))
    };
    while m.next_group(&mut g)? {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let id = g[0].id;
        keep_holding(&mut g, &headers, &bases, &packs, &mut refuted)?;
        for r in &g {
            let b = &mut counts.blobs[pack_pos(r) as usize];
            *b = b.saturating_add(1);
        }
        while let Some(u) = next_used.filter(|u| *u < id) {
            missing(u, &plan)?;
            plan.used_blobs += 1;
            next_used = ids.next()?;
        }
        if next_used != Some(id) {
            continue;
        }
        plan.used_blobs += 1;
        next_used = ids.next()?;
        g.retain(|r| listing.is_stored(pack_pos(r)));
        if g.is_empty() {
            missing(id, &plan)?;
            continue;
        }
        // Live before marked, checked before unverified, then by pack id; every copy an
        // unverified pack claims counts as used too (nothing unverified decides).
        if g.len() > 1 {
            let mut keyed = Vec::with_capacity(g.len());
            for r in &g {
                let p = pack_pos(r);
                let info = packs.get(p)?;
                keyed.push(((info.mark.is_some(), unverified.contains(&p), info.id), *r));
            }
            keyed.sort_by_key(|k| k.0);
            g = keyed.into_iter().map(|k| k.1).collect();
        }
        for (i, r) in g.iter().enumerate() {
            let p = pack_pos(r) as usize;
            if i == 0 || unverified.contains(&(p as u32)) {
                counts.used[p] = counts.used[p].saturating_add(1);
                counts.used_bytes[p] += u64::from(r.length & !crate::index::TOP);
            }
        }
    }
    while let Some(u) = next_used {
        missing(u, &plan)?;
        plan.used_blobs += 1;
        next_used = ids.next()?;
    }
    drop(m);
    drop(ids);
    plan.claims_refuted = refuted.messages(&[]);
    plan.late_blobs = HashSet::new();

    let others = std::mem::take(&mut listing.others);
    let orphans = orphans(repo, &packs, others, &superseded)?;
    let sums = OnDisk {
        packs: &packs,
        listing: &listing,
        refuted: &refuted,
        counts: &counts,
    };
    decide(repo, &mut plan, opts, &sums, orphans)?;
    drop(counts);
    drop(listing);
    plan.bounded = Some(Arc::new(State {
        packs,
        claims,
        used,
        bases_used,
        bases,
        refuted,
        in_force,
        _scratch: scratch,
    }));
    Ok(Some(plan))
}

/// Claims and used blobs counted by pack position.
struct Counts {
    blobs: Vec<u32>,
    used: Vec<u32>,
    used_bytes: Vec<u64>,
}

/// The packs of a plan on disk for [`decide`], keyed by position: the table read in order
/// (objects that are no pack left out).
struct OnDisk<'a> {
    packs: &'a Table,
    listing: &'a Listing,
    refuted: &'a Refuted,
    counts: &'a Counts,
}

impl Sums for OnDisk<'_> {
    fn keys(&self) -> usize {
        self.packs.len() as usize
    }

    fn each(&self, f: &mut EachSum) -> Result<()> {
        self.packs.scan(&mut |pos, p| {
            if self.refuted.why.contains_key(&p.id) {
                return Ok(());
            }
            let i = pos as usize;
            let sum = PackSum {
                id: p.id,
                kind: p.kind,
                size: p.size,
                mark: p.mark,
                blobs: u64::from(self.counts.blobs[i]),
                used: u64::from(self.counts.used[i]),
                used_bytes: self.counts.used_bytes[i],
            };
            f(pos, &sum, self.listing.stored(pos))
        })
    }
}

/// Of the stored packs no index file in force names, those no superseded file names either
/// (their packs are not orphans: a forged file that supersedes the others cannot make their
/// packs orphans). The superseded files are read again only when there are both; what stays
/// in memory is the ids they name that no file in force does (packs a prune deleted, or
/// dropped from the index after such a forgery), 32 bytes each, deduplicated file by file.
fn orphans(
    repo: &Repository,
    packs: &Table,
    others: Objects,
    superseded: &[(Id, String)],
) -> Result<Objects> {
    if others.is_empty() || superseded.is_empty() {
        return Ok(others);
    }
    let mut named: Vec<ObjectId> = Vec::new();
    for (_, name) in superseded {
        // Gone since the plan read it (deleted by a prune that ran meanwhile) or unreadable:
        // what it named cannot be told from orphans now; none goes in this run.
        let Ok(f) = repo.read_index_file(name) else {
            return Ok(Objects::default());
        };
        for p in f.packs {
            if packs.pos_of(&p.id)?.is_none() {
                named.push(p.id);
            }
        }
        named.sort_unstable();
        named.dedup();
    }
    others.filter(&mut |o| {
        Ok(Id::of_name(&o.name).is_none_or(|id| named.binary_search(&id).is_err()))
    })
}

/// Whether a pass over the repository's blobs (prune's plan, check) should sort on disk: when
/// the index is kept on disk, or when the loaded index holds more than half of the `mem`
/// blobs it may keep in memory. Planning in memory costs about 300 bytes a blob (the merged
/// entries, a second index, the used set), six times the index's 48: above half of the index's
/// share, that is more than the whole budget (a million blobs took 340 MiB).
pub(crate) fn sorts_pay(repo: &Repository, mem: usize) -> bool {
    let idx = repo.index().read().expect("index lock");
    idx.on_disk() || idx.len() > mem / 2
}

impl State {
    /// The plan's pack table.
    pub(super) fn packs(&self) -> &Table {
        &self.packs
    }

    /// The packs the plan repacks, each with the used blobs it claims (in offset order).
    pub(super) fn repack_blobs(
        &self,
        plan: &PrunePlan,
    ) -> Result<Vec<(PackInfo, Vec<BlobRecord>)>> {
        let repack: HashSet<u32> = (0..self.packs.len())
            .filter(|p| plan.decisions.is_repack(*p))
            .collect();
        if repack.is_empty() {
            return Ok(Vec::new());
        }
        let mut wanted: HashMap<u32, Vec<BlobRecord>> = HashMap::new();
        let mut ids = UsedIds {
            merge: self.used.merge()?,
            extra: self.bases_used.merge()?,
            last: None,
        };
        let mut next_used = ids.next()?;
        let mut m = self.claims.merge()?;
        let mut g = Vec::new();
        while m.next_group(&mut g)? {
            let id = g[0].id;
            while next_used.is_some_and(|u| u < id) {
                next_used = ids.next()?;
            }
            if next_used != Some(id) {
                continue;
            }
            g.sort_by_key(|r| (pack_pos(r), *r));
            g.dedup_by_key(|r| pack_pos(r));
            for r in &g {
                let p = pack_pos(r);
                if !repack.contains(&p) {
                    continue;
                }
                let bad = !self.refuted.by_pack.is_empty()
                    && self
                        .refuted
                        .by_pack
                        .get(&self.packs.id_at(p)?)
                        .is_some_and(|b| b.contains(&Id(r.id)));
                if !bad {
                    let base = self.bases.of_claim(p, r)?;
                    if r.raw_len & crate::index::TOP != 0 && base.is_none() {
                        return Err(crate::error::Error::Other(format!(
                            "prune's sort of delta bases lost the base of blob {}",
                            Id(r.id)
                        )));
                    }
                    wanted.entry(p).or_default().push(blob_record_of(r, base).1);
                }
            }
        }
        let mut out: Vec<(PackInfo, Vec<BlobRecord>)> = Vec::with_capacity(repack.len());
        for p in repack {
            let mut w = wanted.remove(&p).unwrap_or_default();
            w.sort_by_key(|b| b.offset);
            out.push((self.packs.get(p)?, w));
        }
        out.sort_by_key(|(p, _)| p.id);
        Ok(out)
    }

    /// Every index file in force, read one at a time, with how it lists each pack and, for
    /// a pack's first listing, its entry (merged mark; refuted claims left out; `None` for
    /// a later listing, a refuted pack or an object that is no pack).
    pub(super) fn for_each_file(
        &self,
        repo: &Repository,
        f: &mut dyn FnMut(Id, Listings) -> Result<()>,
    ) -> Result<()> {
        // Whether a position's first listing was seen.
        let mut seen = vec![false; self.packs.len() as usize];
        for (id, name) in &self.in_force {
            let mut out = Vec::new();
            for mut p in repo.read_index_file(name)?.packs {
                let listed = Listed::of(&p);
                // Every pack of a file in force is in the table (index files do not change).
                let pos = self.packs.pos_of(&p.id)?.ok_or_else(|| {
                    crate::error::Error::Other(format!(
                        "index file {name}: pack {} not in prune's table: run prune again",
                        p.id
                    ))
                })?;
                let first = !std::mem::replace(&mut seen[pos as usize], true);
                if !first || self.refuted.why.contains_key(&p.id) {
                    out.push((listed, None));
                    continue;
                }
                if let Some(bad) = self.refuted.by_pack.get(&p.id) {
                    p.blobs.retain(|b| !bad.contains(&b.id));
                }
                p.mark = self.packs.get(pos)?.mark;
                out.push((listed, Some((pos, p))));
            }
            f(*id, out)?;
        }
        Ok(())
    }
}
