//! `prune`: removes what no snapshot uses, safely while backups run (format-spec.md
//! section 12, two-phase deletion).
//!
//! The plan comes from the index, the snapshots' trees and the store's listing only: no data
//! pack is read to decide. Each run:
//! - marks live packs that hold no used blob for deletion after the grace period, whatever
//!   their age (a backup still running protects its own packs at its commit step);
//! - deletes packs whose mark is due and that still hold no used blob, and revives marked
//!   packs that a snapshot written meanwhile uses;
//! - repacks partly used packs (not archived ones) until the unused space left is below
//!   `--max-unused`: their used blobs are copied to new packs and the old pack is marked;
//! - deletes packs no index file names that are older than the grace period and an hour
//!   (left by killed backups or a killed prune);
//! - with `delete_now` (`prune --now`, for a repository no other command writes), deletes
//!   every unused pack at once instead of marking it;
//! - rewrites the index files whose listings change (a pack deleted, marked, revived or
//!   repacked away, a refuted claim, a pack listed twice) and the small ones (a backup's),
//!   consolidated into files of about `BLOBS_PER_INDEX_FILE` blobs that supersede them,
//!   then deletes them. Files that stay as they are stay in force: other hosts keep the index
//!   built from them (format-spec 16) and need only the rewritten ones.
//!
//! A killed prune leaves the old index files in force (the new ones are written last and
//! supersede them in one step) or the new ones in force; either way the next run finishes.
//!
//! Here: the options, the plan and the plan in memory. `walk`: the used blobs, from the
//! snapshots' trees. `decide`: each pack's decision from its sums. `held`: Object Lock
//! retention and archive classes' minimum durations. `bounded` (with `judge` and `deltas`):
//! the plan on disk. `run`: carrying a plan out. `objects`, `packs`: what the store lists.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::backend::{FileKind, ObjectInfo};
use crate::error::{Error, Result};
use crate::format::index::{Mark, PackEntry};
use crate::id::{BlobId, Id, ObjectId};
use crate::index::Index;
use crate::progress::Progress;
use crate::repo::Repository;
use objects::{Object, Objects};

mod bounded;
mod decide;
mod deltas;
mod held;
mod judge;
mod objects;
mod packs;
mod run;
mod walk;

pub(crate) use bounded::sorts_pay;
use decide::{decide, EachSum, InMemory, PackSum, Stored, Sums};
pub use held::price_per_gb_month;
pub(crate) use judge::clean_for_dedup;
use walk::{snapshots_to_walk, stop, used_blobs, walk_tree};

pub use run::{run, write_index_files};

/// Unindexed packs younger than this are never deleted, whatever the grace period: a backup
/// indexes its packs within minutes of storing them.
pub const ORPHAN_MIN_AGE: i64 = 3600;

/// Blobs per index file written by prune (about 5 MiB each).
const BLOBS_PER_INDEX_FILE: usize = 100_000;

/// Index files with fewer blobs are rewritten, consolidated, when there are two or more (a
/// backup writes a small file each run).
pub const SMALL_INDEX_FILE: usize = BLOBS_PER_INDEX_FILE / 2;

/// At most this many ids of files that rewritten files superseded are superseded again by the
/// last file a prune writes (128 KiB): a host whose kept index covers a file that two prunes
/// in a row rewrote learns from it what replaced that file, without building again.
const CARRIED_SUPERSEDES: usize = 4096;

/// How an index file in force lists a pack: enough to tell whether prune's entry for the pack
/// is the same (its claims are the first listing's, less refuted ones).
#[derive(Clone, Debug)]
struct Listed {
    id: ObjectId,
    mark: Option<Mark>,
    blobs: usize,
}

/// How an index file lists each of its packs and, for a pack's first listing, its key in the
/// plan ([`Decisions`]) and the entry prune starts from.
type Listings = Vec<(Listed, Option<(u32, PackEntry)>)>;

/// An index file and the positions of the packs it lists in the index kept next.
type FilePacks = (Id, Vec<u32>);

impl Listed {
    fn of(p: &PackEntry) -> Self {
        Listed {
            id: p.id,
            mark: p.mark,
            blobs: p.blobs.len(),
        }
    }
}

/// How much unused space may stay in partly used packs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxUnused {
    /// Percent of the repository's pack bytes.
    Percent(f64),
    Bytes(u64),
}

impl std::str::FromStr for MaxUnused {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(p) = s.trim().strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: expected a percentage like 5% or a size"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s:?}: a percentage from 0% to 100%"));
            }
            Ok(MaxUnused::Percent(v))
        } else {
            crate::timeparse::parse_size(s)
                .map(MaxUnused::Bytes)
                .map_err(|e| e.to_string())
        }
    }
}

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Seconds between marking a pack and deleting it; longer than any backup's final step.
    pub grace: i64,
    pub max_unused: MaxUnused,
    /// At most this many pack bytes are repacked in one run.
    pub max_repack: Option<u64>,
    /// Delete archived packs before their class's minimum storage duration.
    pub ignore_min_duration: bool,
    /// The current time (unix seconds); the clock when `None` (tests set it).
    pub now: Option<i64>,
    /// Delete unused packs (and unindexed ones) in this run, without a grace period: safe only
    /// while no other command writes to the repository.
    pub delete_now: bool,
    /// Index files in force with fewer blobs are rewritten, consolidated, even when none of
    /// their listings changes, when there are two or more ([`SMALL_INDEX_FILE`]; tests set
    /// it).
    pub small_index_file: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: 24 * 3600,
            max_unused: MaxUnused::Percent(5.0),
            max_repack: None,
            ignore_min_duration: false,
            now: None,
            delete_now: false,
            small_index_file: SMALL_INDEX_FILE,
        }
    }
}

/// A number of packs and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub packs: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.packs += 1;
        self.bytes += bytes;
    }
}

/// Objects S3 Object Lock retains, which prune therefore leaves (format-spec 14): packs
/// (indexed ones stay indexed and marked; orphans stay orphans) and superseded index files.
/// A later prune deletes them once their retention has ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Locked {
    pub packs: u64,
    pub bytes: u64,
    pub index_files: u64,
    /// When the first and the last of them become deletable (seconds since the epoch).
    pub first_until: Option<i64>,
    pub last_until: Option<i64>,
}

impl Locked {
    fn until(&mut self, until: i64) {
        self.first_until = Some(self.first_until.map_or(until, |f| f.min(until)));
        self.last_until = Some(self.last_until.map_or(until, |l| l.max(until)));
    }

    pub fn add_pack(&mut self, bytes: u64, until: i64) {
        self.packs += 1;
        self.bytes += bytes;
        self.until(until);
    }

    pub fn add_index(&mut self, until: i64) {
        self.index_files += 1;
        self.until(until);
    }

    pub fn is_empty(&self) -> bool {
        self.packs == 0 && self.index_files == 0
    }
}

/// What a prune will do and what it costs. Counts are packs and bytes.
#[derive(Clone, Debug, Default)]
pub struct PrunePlan {
    pub now: i64,
    pub snapshots: u64,
    pub used_blobs: u64,
    pub index_files: u64,
    /// Every indexed pack that exists: the sum of `kept`, `repack`, `mark`, `delete`,
    /// `waiting`, `min_duration_held` and `locked`, each pack in exactly one of them.
    pub total: Tally,
    /// Used bytes in packs that stay (live packs only).
    pub used_bytes: u64,
    /// Packs that stay live (they hold used blobs), and the unused bytes in them.
    pub kept: Tally,
    pub kept_unused: u64,
    /// Newly marked for deletion: hold no used blob.
    pub mark: Tally,
    /// Marked packs that a snapshot uses again: live again (counted in `kept`).
    pub revive: Tally,
    /// Marked packs whose grace period has ended: deleted now.
    pub delete: Tally,
    /// Marked packs still in their grace period.
    pub waiting: Tally,
    /// Unused packs in a class with a minimum storage duration that has not passed.
    pub min_duration_held: Tally,
    /// What deleting those now would cost, in USD (S3 bills the rest of the minimum duration).
    pub early_deletion_usd: f64,
    /// Archived packs with unused blobs that are never repacked (they would need a thaw).
    pub cold_partly_used: Tally,
    /// Packs nobody indexes: deleted when old enough.
    pub orphans: Tally,
    pub orphans_young: Tally,
    /// Partly used packs to repack, and the bytes downloaded (used blobs) and uploaded.
    pub repack: Tally,
    pub repack_download: u64,
    pub repack_upload: u64,
    /// Unused bytes left in live packs after this run.
    pub unused_after: u64,
    /// Indexed packs missing from the store that held no used blob (dropped from the index).
    pub missing_unused: Tally,
    /// Requests this run will send: GET (ranges of repacked packs), PUT, DELETE.
    pub requests_get: u64,
    pub requests_put: u64,
    pub requests_delete: u64,
    /// Ranged reads of disputed packs' headers, and what they found: claims that did not hold
    /// (ignored, naming the index files that made them) and packs that could not be checked.
    pub claim_reads: u64,
    pub claims_refuted: Vec<String>,
    pub claims_unverified: Vec<String>,
    /// Indexed packs due for deletion that S3 Object Lock still retains (one HEAD each to
    /// learn it); they stay marked.
    pub locked: Locked,
    /// Unindexed packs old enough to delete that Object Lock still retains (not in `total`).
    pub orphans_locked: Locked,
    pub lock_heads: u64,
    /// Packs that stay marked or are marked by this run (`mark`, `waiting`, `repack`,
    /// `min_duration_held`, `locked`): when a prune may delete them (unix seconds; new marks
    /// count from the plan's time), and their sizes.
    later: Later,
    /// Decisions, by pack.
    decisions: Decisions,
    /// Every pack of the index in force, marks resolved ("live wins").
    packs: Vec<PackEntry>,
    used: HashSet<BlobId>,
    /// Blobs of index files written after prune read the index (by backups that ran meanwhile).
    late_blobs: HashSet<BlobId>,
    /// Every index file read (superseded by the new one).
    read_files: Vec<Id>,
    /// The index files read that no other supersedes.
    live_index: Vec<Id>,
    /// How each of them lists its packs, in reading order (a plan in memory).
    listed: Vec<(Id, Vec<Listed>)>,
    /// Each of them: the blobs it lists and the files it supersedes.
    heads: HashMap<Id, (usize, Vec<Id>)>,
    /// Under Object Lock, packs that hold a used blob (the one copy counted): key, id, kind
    /// and upload time.
    referenced: Vec<(u32, ObjectId, FileKind, Option<i64>)>,
    /// The orphans this run deletes (beyond a buffer, in a temporary file).
    orphan_names: Objects,
    /// For a plan sorted on disk (an index too large to plan in memory): what it sorted instead of
    /// `packs` and `used` (which stay empty).
    bounded: Option<Arc<bounded::State>>,
}

/// When packs that stay marked can be deleted: the earliest time and what is deletable then,
/// and the latest and the total.
#[derive(Clone, Copy, Debug, Default)]
struct Later {
    first: Option<(i64, Tally)>,
    last: Option<(i64, Tally)>,
}

impl Later {
    fn push(&mut self, at: i64, bytes: u64) {
        match &mut self.first {
            Some((t, tally)) if *t == at => tally.add(bytes),
            Some((t, _)) if *t < at => {}
            first => *first = Some((at, Tally { packs: 1, bytes })),
        }
        let (t, all) = self.last.get_or_insert((at, Tally::default()));
        *t = (*t).max(at);
        all.add(bytes);
    }
}

/// The decision on each pack, a byte by key (its position in a plan on disk, its place in
/// `packs` in memory): a repository of millions of packs holds no map of them. A mark other
/// than the pack's own (Object Lock's) is kept aside.
#[derive(Clone, Debug, Default)]
struct Decisions {
    codes: Vec<u8>,
    marks: HashMap<u32, Mark>,
}

impl Decisions {
    fn new(keys: usize) -> Self {
        Decisions {
            codes: vec![0; keys],
            marks: HashMap::new(),
        }
    }

    /// Decides the pack at `key`, whose own mark is `own`.
    fn set(&mut self, key: u32, d: Decision, own: Option<Mark>) {
        self.marks.remove(&key);
        self.codes[key as usize] = match d {
            Decision::Keep => 1,
            Decision::Marked(m) if own == Some(m) => 2,
            Decision::Marked(m) => {
                self.marks.insert(key, m);
                3
            }
            Decision::Mark => 4,
            Decision::Delete => 5,
            Decision::Repack => 6,
            Decision::Drop => 7,
        };
    }

    /// The decision on the pack at `key`, whose own mark is `own` (as given to `set`); `None`
    /// for a pack not decided.
    fn get(&self, key: u32, own: Option<Mark>) -> Option<Decision> {
        Some(match *self.codes.get(key as usize)? {
            1 => Decision::Keep,
            // Given its own mark when it was decided: keeping it live is the safe side.
            2 => own.map_or(Decision::Keep, Decision::Marked),
            3 => Decision::Marked(self.marks[&key]),
            4 => Decision::Mark,
            5 => Decision::Delete,
            6 => Decision::Repack,
            7 => Decision::Drop,
            _ => return None,
        })
    }

    fn is_repack(&self, key: u32) -> bool {
        self.codes.get(key as usize) == Some(&6)
    }

    /// Deleted by this run: due, or repacked without a grace period.
    fn deletes(&self, key: u32, delete_now: bool) -> bool {
        match self.codes.get(key as usize) {
            Some(5) => true,
            Some(6) => delete_now,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Keep,
    /// Keep, with the mark it has.
    Marked(Mark),
    /// Mark now (times taken when the index is written).
    Mark,
    Delete,
    /// Copy its used blobs, then mark it.
    Repack,
    /// Missing from the store and unused: leave it out of the index.
    Drop,
}

/// What a finished prune did.
#[derive(Clone, Debug, Default)]
pub struct PruneResult {
    pub packs_written: u64,
    pub blobs_repacked: u64,
    pub packs_deleted: u64,
    pub bytes_deleted: u64,
    pub index_files_written: u64,
    /// Index files in force left as they were (none of their listings changed).
    pub index_files_kept: u64,
    pub index_files_deleted: u64,
    /// Objects found retained only when deleted (the plan's HEAD saw them deletable).
    pub locked: Locked,
    /// Hidden snapshots and key files: versions deleted, and still retained.
    pub hidden: crate::backend::Purge,
    /// Retention extended on what the kept snapshots reference (Object Lock repositories).
    pub retention: Option<crate::ops::retention::Extension>,
}

/// Plans a prune. The repository's index is loaded by this call.
pub fn plan(repo: &Repository, opts: &PruneOptions, progress: &dyn Progress) -> Result<PrunePlan> {
    let now = opts
        .now
        .unwrap_or_else(|| jiff::Timestamp::now().as_second());
    if let Some(plan) = bounded::plan(repo, opts, progress, now)? {
        return Ok(plan);
    }
    let backend = repo.backend();
    // The index is read before the store is listed: every pack an index file read here names
    // is in the listing unless it is really gone (a pack stored later and indexed later looks
    // unindexed, and is too young to be deleted as such).
    progress.message("reading the index");
    let files = repo.read_all_index_files()?;
    // Every pack any file names (superseded files too: their packs are not orphans).
    let named: HashSet<String> = files
        .iter()
        .flat_map(|(_, f)| f.packs.iter().map(|p| p.id.to_hex()))
        .collect();
    progress.message("listing packs");
    let (stored, orphans) = list_packs(backend, &named, Objects::of(repo))?;
    drop(named);
    let superseded: HashSet<Id> = files
        .iter()
        .flat_map(|(_, f)| f.supersedes.iter().copied())
        .collect();
    let mut plan = PrunePlan {
        now,
        index_files: files.len() as u64,
        read_files: files.iter().map(|(id, _)| *id).collect(),
        ..Default::default()
    };
    plan.live_index = plan
        .read_files
        .iter()
        .filter(|id| !superseded.contains(id))
        .copied()
        .collect();
    plan.listed = files
        .iter()
        .filter(|(id, _)| !superseded.contains(id))
        .map(|(id, f)| (*id, f.packs.iter().map(Listed::of).collect()))
        .collect();
    plan.heads = files
        .iter()
        .filter(|(id, _)| !superseded.contains(id))
        .map(|(id, f)| {
            (
                *id,
                (
                    f.packs.iter().map(|p| p.blobs.len()).sum(),
                    f.supersedes.clone(),
                ),
            )
        })
        .collect();
    let mut packs = crate::index::merge_entries(
        files
            .into_iter()
            .filter(|(id, _)| !superseded.contains(id))
            .flat_map(|(_, f)| f.packs),
    );
    // Claims two packs make for one blob are checked against the packs' headers before any
    // pack is judged unused because of them: a forged index file cannot make prune delete
    // the packs that really hold the data (format-spec 12, "Trust").
    progress.message("checking disputed claims");
    let sizes: HashMap<String, u64> = stored
        .iter()
        .map(|(n, (_, o))| (n.clone(), o.size))
        .collect();
    let disputes = crate::ops::claims::check_disputes(repo, &packs, &sizes)?;
    plan.claim_reads = disputes.reads;
    if !disputes.refuted.is_empty() {
        let all_files = repo.read_all_index_files().unwrap_or_default();
        plan.claims_refuted = disputes.refuted.messages(&all_files);
        crate::ops::claims::drop_refuted(&mut packs, &disputes.refuted);
    }
    plan.claims_unverified = disputes.unverified_messages();
    let unverified: HashSet<ObjectId> = disputes.unverified.iter().map(|u| u.0).collect();
    let index = Index::of_packs(packs.values());
    *repo.index().write().expect("index lock") = index;

    // Used blobs, from every snapshot's trees. Snapshots are listed after the time `now` is
    // taken: a snapshot written before `now` is seen.
    progress.message("reading snapshots");
    let mut used = used_blobs(repo, &mut plan)?;
    // A used delta needs its bases, down its chain, at most MAX_DELTA_DEPTH bases deep (no
    // reader reads a deeper chain): with every copy's base kept, whichever copy stays opens.
    // Late packs (indexed after the plan began) are in the index only. A depth at a time, as
    // the plan on disk does (the same blobs: those at most that many bases from a used one).
    let mut bases_of: HashMap<BlobId, Vec<BlobId>> = HashMap::new();
    for b in packs.values().flat_map(|p| &p.blobs) {
        if let Some(base) = b.base {
            bases_of.entry(b.id).or_default().push(base);
        }
    }
    {
        let idx = repo.index().read().expect("index lock");
        let mut level: Vec<BlobId> = used.iter().copied().collect();
        for _ in 0..crate::index::MAX_DELTA_DEPTH {
            let mut next = Vec::new();
            for id in &level {
                let more = bases_of.get(id).into_iter().flatten().copied();
                for base in more.chain(idx.base_of(id)) {
                    if used.insert(base) {
                        next.push(base);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
    }
    plan.used_blobs = used.len() as u64;

    // Each used blob is counted in one pack: a live one that exists, when there is one.
    let mut order: Vec<&PackEntry> = packs
        .values()
        .filter(|p| stored.contains_key(&p.id.to_hex()))
        .collect();
    // Packs whose disputed claims could not be checked (archived) come last, and keep every
    // used blob they claim: nothing unverified decides that another pack is unused.
    order.sort_by_key(|p| (p.mark.is_some(), unverified.contains(&p.id), p.id));
    let mut assigned: HashSet<BlobId> = HashSet::with_capacity(used.len());
    let mut used_in: HashMap<ObjectId, (u64, u64)> = HashMap::new(); // (used blobs, used bytes)
    for p in &order {
        let mut u = (0u64, 0u64);
        let keep_all = unverified.contains(&p.id);
        for b in &p.blobs {
            if used.contains(&b.id) && (assigned.insert(b.id) || keep_all) {
                u.0 += 1;
                u.1 += u64::from(b.length);
            }
        }
        used_in.insert(p.id, u);
    }
    if let Some(b) = used
        .iter()
        .find(|b| !assigned.contains(*b) && !plan.late_blobs.contains(*b))
    {
        return Err(in_no_stored_pack(b));
    }
    drop(assigned);
    plan.late_blobs = HashSet::new();

    let mut all: Vec<PackEntry> = packs.into_values().collect();
    all.sort_by_key(|p| p.id);
    let sums: Vec<PackSum> = all
        .iter()
        .map(|e| {
            let (used, used_bytes) = used_in.get(&e.id).copied().unwrap_or((0, 0));
            PackSum {
                id: e.id,
                kind: e.kind,
                size: e.size,
                mark: e.mark,
                blobs: e.blobs.len() as u64,
                used,
                used_bytes,
            }
        })
        .collect();
    let in_memory = InMemory {
        sums: &sums,
        stored: &stored,
    };
    decide(repo, &mut plan, opts, &in_memory, orphans)?;
    plan.packs = all;
    plan.used = used;
    Ok(plan)
}

/// What the store lists of the packs index files name, by name.
type NamedPacks = HashMap<String, (FileKind, ObjectInfo)>;

/// Every data and tree pack the store lists that an index file names, by name (a name
/// under both kinds: the tree one), and the other objects there, into `others`.
fn list_packs(
    backend: &Arc<dyn crate::backend::Backend>,
    named: &HashSet<String>,
    mut others: Objects,
) -> Result<(NamedPacks, Objects)> {
    let mut stored = HashMap::new();
    for fk in [FileKind::Data, FileKind::Tree] {
        backend.list_info_each(fk, &mut |o| {
            if named.contains(&o.name) {
                stored.insert(o.name.clone(), (fk, o));
            } else {
                others.push(&Object {
                    kind: fk,
                    name: o.name,
                    size: o.size,
                    modified: o.modified,
                })?;
            }
            Ok(())
        })?;
    }
    Ok((stored, others))
}

/// A used blob that no stored pack holds: prune stops.
fn in_no_stored_pack(b: &BlobId) -> Error {
    Error::Other(format!(
        "blob {b} is used by a snapshot but is in no stored pack: prune stops before it \
         deletes anything. Run `chunkbak check`, then `chunkbak repair index` and \
         `chunkbak repair snapshots`"
    ))
}

impl PrunePlan {
    /// Planned by sorting on disk, in bounded memory (the index is above the memory allowed,
    /// or planning in memory would be).
    pub fn on_disk(&self) -> bool {
        self.bounded.is_some()
    }

    /// Each pack this run deletes (due, or repacked without a grace period).
    fn deleted(
        &self,
        delete_now: bool,
        f: &mut dyn FnMut(&crate::index::PackInfo) -> Result<()>,
    ) -> Result<()> {
        match &self.bounded {
            None => {
                for (key, p) in self.packs.iter().enumerate() {
                    if self.decisions.deletes(key as u32, delete_now) {
                        f(&crate::index::PackInfo::of_entry(p))?;
                    }
                }
                Ok(())
            }
            Some(b) => b.packs().scan(&mut |pos, p| {
                if self.decisions.deletes(pos, delete_now) {
                    f(&p)?;
                }
                Ok(())
            }),
        }
    }

    /// When what stays marked can go: the earliest time a prune may delete some of it and
    /// what it frees then, and the time by which all of it is deletable and the total.
    pub fn frees_later(&self) -> Option<((i64, Tally), (i64, Tally))> {
        Some((self.later.first?, self.later.last?))
    }

    /// What the kept snapshots reference, for [`crate::ops::retention::extend`]: the packs
    /// that hold a used blob (after [`run`], given the index files it superseded: those that
    /// stay; packs it repacked are marked and run out) and the metadata every reader needs.
    pub fn retention_targets(
        &self,
        repo: &Repository,
        after_run: Option<&[Id]>,
    ) -> Result<Vec<crate::ops::retention::Target>> {
        let live_index: Vec<Id> = if let Some(gone) = after_run {
            // The files prune wrote or left as they were, and those backups wrote meanwhile.
            let gone: HashSet<&Id> = gone.iter().collect();
            repo.backend()
                .list(FileKind::Index)?
                .iter()
                .filter_map(|(n, _)| Id::from_hex(n))
                .filter(|id| !gone.contains(id))
                .collect()
        } else {
            self.live_index.clone()
        };
        let after_run = after_run.is_some();
        let mut out = crate::ops::retention::metadata_targets(repo, Some(&live_index))?;
        out.extend(
            self.referenced
                .iter()
                .filter(|(key, ..)| !after_run || !self.decisions.is_repack(*key))
                .map(|(_, id, fk, m)| (*fk, id.to_hex(), *m)),
        );
        Ok(out)
    }
}
