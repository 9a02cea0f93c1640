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
//! A backup into an index with disputed blobs (a repack leaves blobs in two packs until the
//! old one goes) judges them the same way before it deduplicates ([`clean_for_dedup`]).
//!
//! What stays in memory grows with packs, not blobs, by a few dozen bytes a pack: the pack
//! table is a scratch file ([`Table`]: 8 bytes a pack find a position), the store's listing is
//! kept by position ([`Listing`], 17 bytes a pack), the counts by position (16), a decision a
//! byte. It grows too with the repacked packs' used blobs, and the ids that superseded index
//! files name outside the index in force ([`orphans`]). The trees are walked a depth at a
//! time, each depth's sorted on disk ([`walk_by_depth`]), and so are the chains of the used
//! deltas, whose bases are read back from a run file ([`bases_of_used`]); the stored objects
//! no index file in force names go to a temporary file beyond a buffer ([`super::objects`]).
//!
//! Trees are loaded through the index as loaded ([`Repository::load_index`]), before disputed
//! claims are judged: a tree a false claim hides stops the prune before it deletes anything
//! (the in-memory plan reads it through the true claim).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::Result;
use crate::format::index::PackEntry;
use crate::format::pack::BlobRecord;
use crate::format::ObjectKind;
use crate::id::{BlobId, Id, ObjectId};
use crate::index::{blob_record_of, record_of, Bases, PackInfo, MAX_DELTA_DEPTH};
use crate::indexrun::{Builder, Merge, Record, Sorted};
use crate::ops::claims::{Refuted, Verdict};

use super::objects::Objects;
use super::packs::{Listing, Table};
use super::{EachSum, Listed, Listings, Sums};
use crate::progress::Progress;
use crate::repo::{parallel_map_n, Repository, DECODERS};

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

/// Records of delta claims sorted in memory at a time, at the least (an eighth of a small
/// budget would make runs of a few dozen records).
const MIN_DELTA_RECORDS: usize = 4096;

/// The delta claims of ids asked in increasing order: one pass over their sort.
struct DeltaClaims<'a> {
    merge: Merge<'a>,
    group: Vec<Record>,
    done: bool,
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
fn bases_of_used(
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
    // The used blobs first, then each depth's bases.
    let mut level: Option<Sorted> = None;
    for depth in 0..MAX_DELTA_DEPTH {
        let mut next = Builder::ids_only(&dir.join(format!("bases-{}", depth % 2)), quarter)?;
        // The last depth's bases are not followed further.
        let last_depth = depth + 1 == MAX_DELTA_DEPTH;
        let mut found = |base: BlobId| -> Result<()> {
            if !last_depth {
                next.push(Record::of_id(base.0))?;
            }
            out.push(Record::of_id(base.0))
        };
        let mut any = false;
        {
            let mut claims = DeltaClaims::new(deltas)?;
            let mut m = level.as_ref().unwrap_or(used).merge()?;
            let mut last = None;
            while let Some(r) = m.next_record()? {
                if last == Some(r.id) {
                    continue;
                }
                last = Some(r.id);
                if crate::ops::interrupted() {
                    return Err(crate::stop::error(String::new));
                }
                let id = Id(r.id);
                for c in claims.of(r.id)? {
                    let base = bases.get(pack_pos(c), &id)?.ok_or_else(|| {
                        crate::error::Error::Other(format!(
                            "prune's sort of delta bases lost the base of blob {id}"
                        ))
                    })?;
                    if holds(c, base) {
                        found(base)?;
                        any = true;
                    }
                }
                if let Some(base) = late.get(&id) {
                    found(*base)?;
                    any = true;
                }
            }
        }
        if !any || last_depth {
            break;
        }
        // The depth before goes (its runs) before the one after next takes its folder.
        level = Some(next.into_sorted()?);
    }
    drop(level);
    out.into_sorted()
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

/// The claims of index files, read in listing order a few at a time.
struct Claims {
    /// The pack table: every pack the files in force list, marks merged.
    packs: Table,
    /// The base of each delta claim, by (pack position, blob id), on disk.
    bases: Bases,
    /// The delta claims of the files in force, by blob id.
    deltas: Sorted,
    /// Every claim of the files in force, by blob id.
    sorted: Sorted,
    in_force: Vec<(Id, String)>,
    /// Each file in force: the blobs it lists and the files it supersedes.
    heads: HashMap<Id, (usize, Vec<Id>)>,
    /// What any file read supersedes.
    supersedes: HashSet<Id>,
}

/// Reads `names`, taking all but `superseded` as in force: each pack's first listing gives its
/// claims (into a sort in `dir`, and its record into a table there), later ones only revive or
/// extend its mark.
fn read_claims(
    repo: &Repository,
    names: &[(Id, String)],
    superseded: &HashSet<Id>,
    dir: &std::path::Path,
    mem: usize,
) -> Result<Claims> {
    std::fs::create_dir_all(dir).map_err(|e| crate::cachefile::io(dir, e))?;
    let mut packs = Table::new(&dir.join("packs"))?;
    let mut bases = Bases::on_disk(&dir.join("bases"), mem)?;
    let mut deltas = Builder::new(&dir.join("deltas"), (mem / 8).max(MIN_DELTA_RECORDS))?;
    let mut supersedes: HashSet<Id> = HashSet::new();
    let mut claims = Builder::new(&dir.join("claims"), mem)?;
    let mut in_force = Vec::new();
    let mut heads = HashMap::new();
    for group in names.chunks(DECODERS * 2) {
        let files = parallel_map_n(DECODERS, group, |(id, name)| {
            Ok((*id, repo.read_index_file(name)?))
        })?;
        for ((id, f), (_, name)) in files.into_iter().zip(group) {
            supersedes.extend(f.supersedes.iter().copied());
            if superseded.contains(&id) {
                continue;
            }
            in_force.push((id, name.clone()));
            let blobs = f.packs.iter().map(|p| p.blobs.len()).sum();
            heads.insert(id, (blobs, f.supersedes.clone()));
            for p in f.packs {
                if let Some(pos) = packs.pos_of(&p.id)? {
                    let mut known = packs.get(pos)?;
                    if merge_mark(&mut known, &p) {
                        packs.set(pos, &known)?;
                    }
                    continue;
                }
                let pos = packs.push(&PackInfo::of_entry(&p))?;
                for b in &p.blobs {
                    claims.push(record_of(pos, b))?;
                    if let Some(base) = b.base {
                        bases.insert(pos, b.id, base)?;
                        deltas.push(record_of(pos, b))?;
                    }
                }
            }
        }
    }
    bases.finish(&dir.join("bases.run"), [0; 32])?;
    Ok(Claims {
        packs,
        bases,
        deltas: deltas.into_sorted()?,
        sorted: claims.into_sorted()?,
        in_force,
        heads,
        supersedes,
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

/// The claims of the index files the index was loaded from, sorted on disk, with the
/// disputed ones (two stored packs claim one blob) judged against the packs' headers.
pub(crate) struct Judged {
    scratch: tempfile::TempDir,
    claims: Claims,
    /// What the store lists of each pack, and of the stored packs no file in force names.
    listing: Listing,
    /// The files read that another supersedes.
    superseded: Vec<(Id, String)>,
    /// The verdict on each disputed pack whose header was read (by position).
    headers: HashMap<u32, Verdict>,
    /// Disputed packs whose header could not be read.
    unverified: HashSet<u32>,
    /// Objects that are no pack (their claims are all refuted).
    refuted: Refuted,
    disputes: crate::ops::claims::Disputes,
    /// Header reads.
    reads: u64,
}

/// Reads the claims (in a sort folder under `dir`, `mem` records in memory at a time) and
/// judges the disputed ones.
fn judge(
    repo: &Repository,
    dir: &std::path::Path,
    mem: usize,
    progress: &dyn Progress,
) -> Result<Judged> {
    // Sorts of a prune killed earlier (several GB at 100 million blobs) go first.
    let scratch = crate::index::sort_folder(dir)?;
    let backend = repo.backend();

    // The files are those the index was loaded from: one a backup writes from now on is read
    // by the walk (as the in-memory plan does), so its trees load.
    let names: Vec<(Id, String)> = repo
        .index()
        .read()
        .expect("index lock")
        .files
        .iter()
        .map(|id| (*id, id.to_hex()))
        .collect();
    // Read once, all taken as in force; read again without the superseded ones only when a
    // listed file is superseded (a prune killed before it deleted the files it replaced, or
    // Object Lock retaining them).
    let claims_dir = scratch.path().join("claims");
    let mut read = read_claims(repo, &names, &HashSet::new(), &claims_dir, mem)?;
    let superseded: HashSet<Id> = names
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| read.supersedes.contains(id))
        .collect();
    if !superseded.is_empty() {
        drop(read);
        read = read_claims(repo, &names, &superseded, &claims_dir, mem)?;
    }
    progress.message("listing packs");
    let listing = Listing::of(backend.as_ref(), &read.packs, Objects::of(repo))?;

    // Disputed claims (two stored packs claim one blob), judged against the packs' headers.
    progress.message("checking disputed claims");
    let mut disputed: HashSet<u32> = HashSet::new();
    {
        let mut m = read.sorted.merge()?;
        let mut g = Vec::new();
        while m.next_group(&mut g)? {
            if g.len() < 2 {
                continue;
            }
            let mut at: Vec<u32> = g
                .iter()
                .map(pack_pos)
                .filter(|p| listing.is_stored(*p))
                .collect();
            at.sort_unstable();
            at.dedup();
            if at.len() > 1 {
                disputed.extend(at);
            }
        }
    }
    let mut list: Vec<(ObjectId, ObjectKind, u64)> = Vec::with_capacity(disputed.len());
    for &p in &disputed {
        let info = read.packs.get(p)?;
        let size = listing.stored(p).map_or(0, |s| s.size);
        list.push((info.id, info.kind, size));
    }
    list.sort_by_key(|p| p.0);
    let (verdicts, reads) = crate::ops::claims::verify(repo, &list)?;
    let mut unverified: HashSet<u32> = HashSet::new();
    let mut headers: HashMap<u32, Verdict> = HashMap::new();
    let mut refuted = Refuted::default();
    let mut disputes = crate::ops::claims::Disputes::default();
    for (id, v) in verdicts {
        let pos = read.packs.pos_of(&id)?.ok_or_else(|| {
            crate::error::Error::Other(format!("pack {id} judged but not in the plan's table"))
        })?;
        match v {
            Verdict::Unreadable(why) => {
                disputes.unverified.push((id, why));
                unverified.insert(pos);
            }
            Verdict::NotAPack(why) => {
                refuted.why.insert(id, why);
                headers.insert(pos, Verdict::NotAPack(String::new()));
            }
            h @ Verdict::Header(_) => {
                headers.insert(pos, h);
            }
        }
    }
    disputes.unverified.sort();
    let superseded = names
        .into_iter()
        .filter(|(id, _)| superseded.contains(id))
        .collect();
    Ok(Judged {
        scratch,
        claims: read,
        listing,
        superseded,
        headers,
        unverified,
        refuted,
        disputes,
        reads,
    })
}

/// What a backup does before deduplicating against an index with disputed blobs
/// (`ops::claims::clean_index_for_dedup`), with the claims sorted on disk instead of every
/// index file in memory: the disputed claims judged, and when some do not hold, the index
/// loaded again without them (on disk, one index file in memory at a time). Returns the
/// messages (refuted claims, packs that could not be checked) and the header reads.
pub(crate) fn clean_for_dedup(
    repo: &Repository,
    dir: &std::path::Path,
    mem: usize,
) -> Result<(Vec<String>, u64)> {
    let j = judge(repo, dir, mem, &crate::progress::NoProgress)?;
    let mut refuted = j.refuted;
    if !j.headers.is_empty() {
        let mut m = j.claims.sorted.merge()?;
        let mut g = Vec::new();
        while m.next_group(&mut g)? {
            keep_holding(
                &mut g,
                &j.headers,
                &j.claims.bases,
                &j.claims.packs,
                &mut refuted,
            )?;
        }
    }
    let mut messages = Vec::new();
    if !refuted.is_empty() {
        let blobs = repo.index().read().expect("index lock").len();
        let mut fresh = crate::index::Index::loading_on_disk(dir, mem, blobs)?;
        let bad: HashMap<ObjectId, HashSet<BlobId>> = refuted
            .by_pack
            .iter()
            .map(|(p, ids)| (*p, ids.iter().copied().collect()))
            .collect();
        // A pack's first listing gives its claims (the ones judged); a later one only its
        // mark, as `merge_entries` keeps them.
        let mut listed: HashSet<ObjectId> = HashSet::new();
        // The files that make the refuted claims, with those claims only (for the messages).
        let mut makers: Vec<(Id, crate::format::index::IndexFile)> = Vec::new();
        for (id, name) in &j.claims.in_force {
            let f = repo.read_index_file(name)?;
            let mut made = Vec::new();
            for p in &f.packs {
                if let Some(bad) = bad.get(&p.id) {
                    let mut claimed = p.clone();
                    claimed.blobs.retain(|b| bad.contains(&b.id));
                    made.push(claimed);
                }
                if refuted.why.contains_key(&p.id) {
                    continue;
                }
                let mut p = p.clone();
                if !listed.insert(p.id) {
                    p.blobs.clear();
                } else if let Some(bad) = bad.get(&p.id) {
                    p.blobs.retain(|b| !bad.contains(&b.id));
                }
                fresh.add_pack(&p);
            }
            if !made.is_empty() {
                makers.push((
                    *id,
                    crate::format::index::IndexFile {
                        supersedes: Vec::new(),
                        packs: made,
                    },
                ));
            }
        }
        fresh.seal();
        if let Some(e) = fresh.run_error() {
            return Err(crate::error::Error::Other(format!(
                "the index kept on disk under {}: {e}",
                dir.display()
            )));
        }
        let mut idx = repo.index().write().expect("index lock");
        fresh.files = std::mem::take(&mut idx.files);
        *idx = fresh;
        messages = refuted.messages(&makers);
    }
    messages.extend(j.disputes.unverified_messages());
    Ok((messages, j.reads))
}

/// The position in the pack table of a claim.
fn pack_pos(r: &Record) -> u32 {
    r.pack & !crate::index::TOP
}

/// Of one blob's claims, keeps those that hold: a pack's first listing of it, not refuted by
/// the pack's header (refuted ones are recorded), not of an object that is no pack.
fn keep_holding(
    g: &mut Vec<Record>,
    headers: &HashMap<u32, Verdict>,
    bases: &Bases,
    packs: &Table,
    refuted: &mut Refuted,
) -> Result<()> {
    // A pack's records of one id together (a forged file may give them different kinds).
    g.sort_by_key(|r| (pack_pos(r), *r));
    g.dedup_by_key(|r| pack_pos(r));
    if headers.is_empty() {
        return Ok(());
    }
    let mut held = Vec::with_capacity(g.len());
    for r in g.drain(..) {
        let p = pack_pos(&r);
        if let Some(v) = headers.get(&p) {
            let (_, rec) = blob_record_of(&r, bases.get(p, &Id(r.id))?);
            if v.holds(&rec) == Some(false) {
                let id = packs.id_at(p)?;
                refuted.by_pack.entry(id).or_default().push(rec.id);
                continue;
            }
        }
        held.push(r);
    }
    *g = held;
    Ok(())
}

/// A later listing of a pack: live anywhere is live; of two marks the later deletion counts
/// (as [`crate::index::merge_entries`]). Whether the mark changed.
fn merge_mark(known: &mut PackInfo, p: &PackEntry) -> bool {
    match (known.mark, p.mark) {
        (Some(_), None) => known.mark = None,
        (Some(a), Some(b)) if b.delete_after > a.delete_after => known.mark = Some(b),
        _ => return false,
    }
    true
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
                    let base = self.bases.get(p, &Id(r.id))?;
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
