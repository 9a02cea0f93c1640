//! The claims of the index files for a plan on disk: read into sorts (every claim, the delta
//! claims apart, their bases into a run file), the disputed ones judged against the packs'
//! headers ([`judge`]), and what a backup does with them before it deduplicates
//! ([`clean_for_dedup`]).

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::format::index::PackEntry;
use crate::format::ObjectKind;
use crate::id::{BlobId, Id, ObjectId};
use crate::index::{blob_record_of, record_of, Bases, PackInfo};
use crate::indexrun::{Builder, Record, Sorted};
use crate::ops::claims::{Refuted, Verdict};
use crate::progress::Progress;
use crate::repo::{parallel_map_n, Repository, DECODERS};

use super::deltas::MIN_DELTA_RECORDS;
use super::objects::Objects;
use super::packs::{Listing, Table};

/// The claims of index files, read in listing order a few at a time.
pub(super) struct Claims {
    /// The pack table: every pack the files in force list, marks merged.
    pub(super) packs: Table,
    /// The base of each delta claim, by (pack position, blob id), on disk.
    pub(super) bases: Bases,
    /// The delta claims of the files in force, by blob id.
    pub(super) deltas: Sorted,
    /// Every claim of the files in force, by blob id.
    pub(super) sorted: Sorted,
    pub(super) in_force: Vec<(Id, String)>,
    /// Each file in force: the blobs it lists and the files it supersedes.
    pub(super) heads: HashMap<Id, (usize, Vec<Id>)>,
    /// What any file read supersedes.
    pub(super) supersedes: HashSet<Id>,
}

/// Reads `names`, taking all but `superseded` as in force: each pack's first listing gives its
/// claims (into a sort in `dir`, and its record into a table there), later ones only revive or
/// extend its mark.
pub(super) fn read_claims(
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

/// The claims of the index files the index was loaded from, sorted on disk, with the
/// disputed ones (two stored packs claim one blob) judged against the packs' headers.
pub(super) struct Judged {
    pub(super) scratch: tempfile::TempDir,
    pub(super) claims: Claims,
    /// What the store lists of each pack, and of the stored packs no file in force names.
    pub(super) listing: Listing,
    /// The files read that another supersedes.
    pub(super) superseded: Vec<(Id, String)>,
    /// The verdict on each disputed pack whose header was read (by position).
    pub(super) headers: HashMap<u32, Verdict>,
    /// Disputed packs whose header could not be read.
    pub(super) unverified: HashSet<u32>,
    /// Objects that are no pack (their claims are all refuted).
    pub(super) refuted: Refuted,
    pub(super) disputes: crate::ops::claims::Disputes,
    /// Header reads.
    pub(super) reads: u64,
}

/// Reads the claims (in a sort folder under `dir`, `mem` records in memory at a time) and
/// judges the disputed ones.
pub(super) fn judge(
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
pub(super) fn pack_pos(r: &Record) -> u32 {
    r.pack & !crate::index::TOP
}

/// Of one blob's claims, keeps those that hold: a pack's first listing of it, not refuted by
/// the pack's header (refuted ones are recorded), not of an object that is no pack.
pub(super) fn keep_holding(
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
            let (_, rec) = blob_record_of(&r, bases.of_claim(p, &r)?);
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
pub(super) fn merge_mark(known: &mut PackInfo, p: &PackEntry) -> bool {
    match (known.mark, p.mark) {
        (Some(_), None) => known.mark = None,
        (Some(a), Some(b)) if b.delete_after > a.delete_after => known.mark = Some(b),
        _ => return false,
    }
    true
}
