//! `check` (structure): every snapshot's trees load and every blob they reference is in the
//! index; every indexed pack exists in the store with the size the index records. Reads only
//! metadata (index files, snapshots, tree packs) and listings: never a data pack, so it costs
//! no Glacier retrieval.

use std::collections::HashSet;

use crate::backend::FileKind;
use crate::error::Result;
use crate::format::tree::{Content, NodeKind};
use crate::id::{BlobId, Id};
use crate::ops::select::{timestamp_of, Clock};
use crate::repo::Repository;

/// What `check` found. `problems` name the object (and path) they concern.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub snapshots: u64,
    pub trees: u64,
    pub packs: u64,
    pub blobs: u64,
    /// Packs in the store that no index names (left by interrupted backups; prune removes
    /// them). Not a problem.
    pub unindexed_packs: u64,
    /// Ranged reads of disputed packs' headers (see ops::claims).
    pub claim_reads: u64,
    /// Disputed packs whose claims could not be checked now (archived): not a problem.
    pub unverified_claims: Vec<String>,
    pub problems: Vec<String>,
}

/// Checks the repository's structure. The index must be loaded.
pub fn check(repo: &Repository) -> Result<CheckReport> {
    check_with(repo, &Clock::default())
}

/// As [`check`]; snapshots dated later than the clock allows are reported as problems.
pub fn check_with(repo: &Repository, clock: &Clock) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let backend = repo.backend();
    // What the store lists of each indexed pack, by position in the index (its size), and
    // how many stored packs no index names: the listing is read a page at a time, never held
    // as a map of millions of names.
    let stored = {
        let idx = repo.index().read().expect("index lock");
        let mut stored = StoredSizes(vec![NOT_STORED; idx.pack_count()]);
        // Objects no index names (a few, normally; counted, never held: a host with the
        // bucket's credentials can store millions).
        let mut unindexed = 0u64;
        for fk in [FileKind::Data, FileKind::Tree] {
            backend.list_info_each(fk, &mut |o| {
                // A pack's own name only (not another spelling of its id).
                let pos = Id::of_name(&o.name).and_then(|id| idx.position(&id));
                match pos.and_then(|p| stored.0.get_mut(p as usize)) {
                    Some(size) => *size = o.size,
                    None => unindexed += 1,
                }
                Ok(())
            })?;
        }
        idx.check_read()?;
        r.unindexed_packs = unindexed;
        stored
    };
    {
        let idx = repo.index().read().expect("index lock");
        for (pos, p) in idx.known_packs_at() {
            r.packs += 1;
            let name = p.id.to_hex();
            let path = FileKind::of_pack(p.kind).path_of(&name);
            match stored.size(pos).as_ref() {
                // Marked for deletion and deleted by a prune since: nothing uses it.
                None if p.mark.is_some() => {}
                None => r.problems.push(format!(
                    "pack {path} is in the index but missing from the repository \
                     (its blobs are lost: `chunkbak repair` can drop them from snapshots)"
                )),
                Some(&n) if n != p.size => r.problems.push(format!(
                    "pack {path} has {n} bytes, the index records {} (truncated or replaced?)",
                    p.size
                )),
                Some(_) => {}
            }
        }
        idx.check_read()?;
    }
    // Claims two packs make for one blob: checked against the packs' headers, naming the
    // index files whose claims do not hold.
    if repo.index().read().expect("index lock").disputed_blobs > 0 {
        let files = repo.current_index_files()?;
        let packs =
            crate::index::merge_entries(files.iter().flat_map(|(_, f)| f.packs.iter().cloned()));
        // Listed again (the claims are in memory here too): packs of index files written
        // since the index was loaded have no position in it.
        let sizes = crate::ops::claims::listed_packs(backend.as_ref(), &packs, |o| o.size)?;
        let d = crate::ops::claims::check_disputes(repo, &packs, &sizes)?;
        r.claim_reads = d.reads;
        r.problems.extend(d.refuted.messages(&files));
        r.unverified_claims = d.unverified_messages();
    }
    // A blob is there when the pack the index locates it in is stored.
    let present = |id: &BlobId| -> bool {
        let idx = repo.index().read().expect("index lock");
        idx.pack_position_of(id)
            .is_some_and(|p| stored.size(p).is_some())
    };
    let (snaps, damaged) = repo.snapshots_and_damaged()?;
    for (_, e) in damaged {
        r.problems.push(format!(
            "{e}: this snapshot is lost, the data it shares with others is not \
             (`chunkbak repair snapshots` removes the object)"
        ));
    }
    r.snapshots = snaps.len() as u64;
    for (id, s) in snaps.iter().filter(|(_, s)| clock.is_future(s)) {
        r.problems.push(format!(
            "snapshot {} of host {:?} is dated {}, later than now + the clock skew allowed \
             ({}): written by a host whose clock is wrong, or forged by a host that holds the \
             password; it is never taken as latest, by --at, as a parent or by \
             --keep-within (`chunkbak forget {}` removes it)",
            id.short(),
            s.host,
            timestamp_of(s.time),
            crate::timeparse::format_secs(clock.skew_secs),
            id.short()
        ));
    }
    let missing_chunk = |what: &str, p: &str, c: &BlobId| {
        format!(
            "{what}: {p}: chunk {} is not in the index (or its pack is gone)",
            c.short()
        )
    };
    let sort = repo
        .index_scratch()
        .filter(|(_, mem)| crate::ops::prune::sorts_pay(repo, *mem));
    // Each tree is walked once (in memory: a tree seen is not walked again) or once at each
    // depth it is found at (on disk); none is cached.
    repo.walk_once(|| -> Result<()> {
        match sort {
            None => {
                // Each chunk looked up once, as it is reached.
                let mut seen_blobs: HashSet<BlobId> = HashSet::new();
                walk(repo, &snaps, &mut r, &present, &mut |what, p, c, r| {
                    if seen_blobs.insert(c) {
                        r.blobs += 1;
                        if !present(&c) {
                            r.problems.push(missing_chunk(what, p, &c));
                        }
                    }
                    Ok(())
                })?;
            }
            Some((dir, mem)) => {
                // A large index: the trees are walked a depth at a time and the chunks sorted
                // on disk, then looked up in one pass over the index in the same order (no set
                // of every tree or chunk in memory; random lookups in a run file would read a
                // block each). Paths are named by a walk of each snapshot, only when something
                // is missing or does not read.
                let scratch = crate::index::sort_folder(&dir)?;
                let mut sort =
                    crate::indexrun::Builder::ids_only(&scratch.path().join("chunks"), mem)?;
                let troubled = walk_by_depth(
                    repo,
                    &snaps,
                    &mut r,
                    &present,
                    scratch.path(),
                    (mem / 4).max(MIN_DEPTH_RECORDS),
                    &mut |c| sort.push(crate::indexrun::Record::of_id(c.0)),
                )?;
                let sorted = sort.into_sorted()?;
                let (count, missing) = missing_in_order(repo, &sorted, &stored, &present)?;
                r.blobs = count;
                if troubled || !missing.is_empty() {
                    let mut named: HashSet<BlobId> = HashSet::new();
                    let mut again = CheckReport::default();
                    walk(repo, &snaps, &mut again, &present, &mut |what, p, c, _| {
                        if missing.contains(&c) && named.insert(c) {
                            r.problems.push(missing_chunk(what, p, &c));
                        }
                        Ok(())
                    })?;
                    r.problems.extend(again.problems);
                    // A chunk that walk did not reach (past a tree it judged) is still named.
                    let mut unnamed: Vec<&BlobId> =
                        missing.iter().filter(|c| !named.contains(*c)).collect();
                    unnamed.sort();
                    for c in unnamed {
                        r.problems.push(format!(
                            "chunk {} is referenced but not in the index (or its pack is gone)",
                            c.short()
                        ));
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(r)
}

/// Records a depth's sort of trees keeps in memory at least (a small budget would otherwise
/// make a merge open thousands of runs at once): 192 KiB.
pub(crate) const MIN_DEPTH_RECORDS: usize = 4096;

/// A size no listing gives: the pack is not stored.
const NOT_STORED: u64 = u64::MAX;

/// The listed size of each pack of the loaded index, by position ([`NOT_STORED`] where the
/// store does not list it): 8 bytes a pack.
struct StoredSizes(Vec<u64>);

impl StoredSizes {
    /// The listed size of the pack at `pos`; `None` when it is not stored (or was indexed
    /// after the listing).
    fn size(&self, pos: u32) -> Option<u64> {
        self.0
            .get(pos as usize)
            .copied()
            .filter(|s| *s != NOT_STORED)
    }
}

/// Of the sorted chunk ids, how many distinct ones there are and those that are not present,
/// from one pass over the loaded index in id order (an id the pass does not settle, one added
/// since it was loaded for instance, is looked up).
fn missing_in_order(
    repo: &Repository,
    sorted: &crate::indexrun::Sorted,
    stored: &StoredSizes,
    present: &dyn Fn(&BlobId) -> bool,
) -> Result<(u64, HashSet<BlobId>)> {
    let mut merge = sorted.merge()?;
    let mut count = 0u64;
    let mut last: Option<[u8; 32]> = None;
    let mut next = || -> Result<Option<[u8; 32]>> {
        while let Some(r) = merge.next_record()? {
            if last != Some(r.id) {
                last = Some(r.id);
                count += 1;
                return Ok(Some(r.id));
            }
        }
        Ok(None)
    };
    let mut unsettled: Vec<BlobId> = Vec::new();
    let mut at = next()?;
    {
        let idx = repo.index().read().expect("index lock");
        idx.for_each_loaded(&mut |id, pack| {
            while let Some(c) = at.filter(|c| *c < id.0) {
                unsettled.push(BlobId::from_bytes(c));
                at = next()?;
            }
            if at == Some(id.0) {
                // A copy added since the load is the one a lookup finds first: looked up.
                if stored.size(pack).is_none() || idx.added_since_load(id) {
                    unsettled.push(*id);
                }
                at = next()?;
            }
            Ok(())
        })?;
    }
    while let Some(c) = at {
        unsettled.push(BlobId::from_bytes(c));
        at = next()?;
    }
    let missing = unsettled.into_iter().filter(|c| !present(c)).collect();
    Ok((count, missing))
}

/// Walks every snapshot's trees: checks each tree and chunk list (present, loads), counts
/// trees into `r`, and hands each file chunk to `chunk` (with the snapshot and the file's
/// path), as often as files reference it.
fn walk(
    repo: &Repository,
    snaps: &[(crate::id::Id, crate::format::snapshot::Snapshot)],
    r: &mut CheckReport,
    present: &dyn Fn(&BlobId) -> bool,
    chunk: &mut dyn FnMut(&str, &str, BlobId, &mut CheckReport) -> Result<()>,
) -> Result<()> {
    let mut seen_trees: HashSet<BlobId> = HashSet::new();
    for (id, s) in snaps {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let what = format!("snapshot {}", id.short());
        let mut stack = vec![(s.tree, String::new())];
        while let Some((tree, path)) = stack.pop() {
            if let Err(e) = crate::format::tree::check_depth(path.as_bytes()) {
                r.problems.push(format!("{what}: {e}"));
                continue;
            }
            if !seen_trees.insert(tree) {
                continue;
            }
            r.trees += 1;
            if !present(&tree) {
                r.problems.push(format!(
                    "{what}: tree {} of {} is not in the index (or its pack is gone)",
                    tree.short(),
                    if path.is_empty() { "/" } else { &path }
                ));
                continue;
            }
            // A part of a split directory at a time, a chunk list at a time (a directory of
            // large files is hundreds of MB decoded). A read that fails is a problem; an
            // error of `chunk` (its sort) ends the check as it is.
            let mut work = crate::repo::WorkError::default();
            let walked = repo.each_dir_part(&tree, &mut |_, nodes| {
                for n in nodes {
                    let p = format!("{path}/{}", n.name_lossy());
                    match n.kind {
                        NodeKind::Dir => {
                            if let Some(t) = n.subtree {
                                stack.push((t, p));
                            }
                        }
                        NodeKind::File => {
                            if let Content::Indirect(lists) = &n.content {
                                for l in lists {
                                    if !present(l) {
                                        r.problems.push(format!(
                                            "{what}: {p}: chunk list {} is not in the index (or its pack is gone)",
                                            l.short()
                                        ));
                                    }
                                }
                            }
                            let read = repo.each_file_chunk(&n.content, &mut |c| {
                                work.keep(chunk(&what, &p, c, r))
                            });
                            match read {
                                Err(e) if work.failed() => return Err(e),
                                Err(e) => r.problems.push(format!("{what}: {p}: {e}")),
                                Ok(()) => {}
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            });
            if let Err(e) = work.split(walked)? {
                r.problems.push(format!(
                    "{what}: directory {}: {e}",
                    if path.is_empty() { "/" } else { &path }
                ));
            }
        }
    }
    Ok(())
}

/// As [`walk`], for an index on disk: the trees a depth at a time, each depth's sorted on
/// disk under `dir` (`mem` records in memory at a time), each walked once, the trees it names
/// the next depth's; every file chunk to `chunk`. Counts the distinct trees into `r` (one more
/// sort of their ids). Nothing held grows with the number of directories: a set of the trees
/// walked took 40-75 bytes a tree (check peaked at 684 MiB on 4 million directories). Returns whether a tree
/// or a chunk list is missing, a tree or a file's chunk list does not read, or trees nest
/// deeper than the limit: [`walk`] then words the problems with their paths.
fn walk_by_depth(
    repo: &Repository,
    snaps: &[(crate::id::Id, crate::format::snapshot::Snapshot)],
    r: &mut CheckReport,
    present: &dyn Fn(&BlobId) -> bool,
    dir: &std::path::Path,
    mem: usize,
    chunk: &mut dyn FnMut(BlobId) -> Result<()>,
) -> Result<bool> {
    use crate::indexrun::{Builder, Record};
    let mut troubled = false;
    let mut seen = Builder::ids_only(&dir.join("trees"), mem)?;
    let roots = snaps.iter().map(|(_, s)| Record::of_id(s.tree.0));
    crate::indexrun::by_depth(dir, mem, true, roots, &mut |depth, rec, next| {
        if depth > crate::format::tree::MAX_TREE_DEPTH {
            troubled = true;
            return Ok(false);
        }
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        seen.push(Record::of_id(rec.id))?;
        let tree = BlobId::from_bytes(rec.id);
        if !present(&tree) {
            troubled = true;
            return Ok(true);
        }
        let mut work = crate::repo::WorkError::default();
        let mut failed = false;
        let walked_tree = repo.each_dir_part(&tree, &mut |_, nodes| {
            for n in nodes {
                // A name holding `/` (forged) makes a path deeper than its depth, which the
                // walk of each snapshot judges.
                failed |= n.name.contains(&b'/');
                match n.kind {
                    NodeKind::Dir => {
                        if let Some(t) = n.subtree {
                            work.keep(next.push(Record::of_id(t.0)))?;
                        }
                    }
                    NodeKind::File => {
                        if let Content::Indirect(lists) = &n.content {
                            failed |= lists.iter().any(|l| !present(l));
                        }
                        let read = repo.each_file_chunk(&n.content, &mut |c| work.keep(chunk(c)));
                        match read {
                            Err(e) if work.failed() => return Err(e),
                            Err(_) => failed = true,
                            Ok(()) => {}
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        });
        troubled |= failed || work.split(walked_tree)?.is_err();
        Ok(true)
    })?;
    let seen = seen.into_sorted()?;
    let mut merge = seen.merge()?;
    let mut last = None;
    while let Some(rec) = merge.next_record()? {
        if last != Some(rec.id) {
            last = Some(rec.id);
            r.trees += 1;
        }
    }
    Ok(troubled)
}

/// What `check --s3-checksums` found.
#[derive(Debug, Default)]
pub struct ChecksumReport {
    /// Packs whose stored CRC32C was asked for.
    pub packs: u64,
    /// Packs whose stored CRC32C equals the one recorded at upload.
    pub matched: u64,
    /// Packs for which the store reports no CRC32C (or the index recorded none).
    pub unverified: u64,
    /// Mismatches and missing packs, naming the pack.
    pub problems: Vec<String>,
}

/// Compares, for every indexed pack, the CRC32C the store keeps (the one sent with its
/// upload, which S3 verified then) with the one the index recorded: a pack replaced in the
/// bucket shows, without reading any pack bytes (one HEAD a pack). Marked packs a prune has
/// deleted since are skipped. An error if the store reports no checksums at all.
pub fn s3_checksums(
    repo: &Repository,
    progress: &dyn crate::progress::Progress,
) -> Result<ChecksumReport> {
    let backend = repo.backend();
    if !backend.has_checksums() {
        return Err(crate::Error::Invalid(format!(
            "the store at {} keeps no checksums of its objects (a local folder): \
             --s3-checksums verifies nothing there; use --read-data",
            backend.location()
        )));
    }
    let packs: Vec<crate::index::PackInfo> = {
        let idx = repo.index().read().expect("index lock");
        let packs = idx.known_packs().collect();
        idx.check_read()?;
        packs
    };
    progress.message(&format!(
        "asking the store for the CRC32C of {} packs",
        packs.len()
    ));
    let results = crate::repo::parallel_map(&packs, |p: &crate::index::PackInfo| {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let fk = FileKind::of_pack(p.kind);
        let r = match backend.stored_crc32c(fk, &p.id.to_hex()) {
            Ok(c) => Ok(c),
            Err(crate::Error::ObjectNotFound(_)) => Err(()),
            Err(e) => return Err(e),
        };
        Ok((p.clone(), r))
    })?;
    let mut rep = ChecksumReport::default();
    for (p, r) in results {
        rep.packs += 1;
        let path = FileKind::of_pack(p.kind).path_of(&p.id.to_hex());
        match r {
            Err(()) if p.mark.is_some() => {}
            Err(()) => rep.problems.push(format!(
                "pack {path} is in the index but missing from the repository"
            )),
            Ok(None) => rep.unverified += 1,
            Ok(Some(_)) if p.crc32c == 0 => rep.unverified += 1,
            Ok(Some(c)) if c == p.crc32c => rep.matched += 1,
            Ok(Some(c)) => rep.problems.push(format!(
                "pack {path}: the store keeps CRC32C {c:08x}, the index recorded {:08x} at \
                 upload: the object was replaced or damaged in the store (`chunkbak check \
                 --read-data` reads it; `chunkbak repair index` rebuilds the index from what \
                 the packs hold)",
                p.crc32c
            )),
        }
    }
    Ok(rep)
}

/// Which packs `check --read-data-subset` reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subset {
    All,
    /// Part `n` of `m` (1-based): packs whose first id byte modulo `m` is `n - 1`. Running
    /// 1/m to m/m reads every pack once.
    Part(u32, u32),
    /// A random sample of this percentage of the packs.
    Percent(f64),
    /// Random packs up to this many bytes.
    Bytes(u64),
}

impl std::str::FromStr for Subset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        if let Some((n, m)) = t.split_once('/') {
            let (n, m): (u32, u32) = (
                n.trim()
                    .parse()
                    .map_err(|_| format!("{s:?}: expected n/m"))?,
                m.trim()
                    .parse()
                    .map_err(|_| format!("{s:?}: expected n/m"))?,
            );
            if m == 0 || n == 0 || n > m || m > 256 {
                return Err(format!("{s:?}: n/m needs 1 <= n <= m <= 256"));
            }
            return Ok(Subset::Part(n, m));
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: expected a percentage"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("{s:?}: a percentage above 0% and at most 100%"));
            }
            return Ok(Subset::Percent(v));
        }
        crate::timeparse::parse_size(t)
            .map(Subset::Bytes)
            .map_err(|_| format!("{s:?}: use n/m (1/10), a percentage (5%) or a size (2GiB)"))
    }
}

/// What reading pack data found.
#[derive(Debug, Default)]
pub struct ReadReport {
    pub packs_read: u64,
    pub bytes_read: u64,
    pub blobs_verified: u64,
    /// Packs in an archive storage class, not read (they would need a thaw).
    pub archived_skipped: u64,
    pub problems: Vec<String>,
}

/// Downloads packs and verifies every blob: the pack's bytes against its name, its header
/// against the index, and each blob (decrypt, decompress, re-hash).
pub fn read_data(
    repo: &Repository,
    subset: Subset,
    progress: &dyn crate::progress::Progress,
) -> Result<ReadReport> {
    let backend = repo.backend();
    let mut report = ReadReport::default();
    // Every pack's records as its index file lists them (the in-memory index locates each blob
    // once, in one pack).
    let entries = crate::index::merge_entries(
        repo.current_index_files()?
            .into_iter()
            .flat_map(|(_, f)| f.packs),
    );
    let classes = crate::ops::claims::listed_packs(backend.as_ref(), &entries, |o| o.class)?;
    let mut packs: Vec<crate::format::index::PackEntry> = entries
        .into_values()
        .filter(|p| classes.contains_key(&p.id.to_hex()))
        .collect();
    packs.sort_by_key(|p| p.id);
    // Archive-labelled packs are read when the store serves them (asked with the first one
    // that has no thaw) or when they are thawed (one HEAD each); the others would need a
    // thaw.
    let mut kept = Vec::with_capacity(packs.len());
    for p in packs {
        let name = p.id.to_hex();
        let labelled = classes.get(&name).is_some_and(|c| c.is_archive());
        let readable = !labelled
            || backend.archive_readable() == Some(true)
            || backend
                .thaw_state(FileKind::of_pack(p.kind), &name)?
                .readable();
        if readable {
            kept.push(p);
        } else {
            report.archived_skipped += 1;
        }
    }
    let mut packs = kept;
    // A random order (seeded from the OS), so repeated subsets cover different packs.
    let mut seed = u64::from_le_bytes(crate::crypter::random_bytes());
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let selected: Vec<crate::format::index::PackEntry> = match subset {
        Subset::All => packs,
        Subset::Part(n, m) => packs
            .into_iter()
            .filter(|p| u32::from(p.id.0[0]) % m == n - 1)
            .collect(),
        Subset::Percent(pct) => {
            let want = ((packs.len() as f64 * pct / 100.0).ceil() as usize).min(packs.len());
            shuffle(&mut packs, &mut rnd);
            packs.truncate(want);
            packs
        }
        Subset::Bytes(budget) => {
            shuffle(&mut packs, &mut rnd);
            let mut total = 0;
            packs
                .into_iter()
                .take_while(|p| {
                    total += p.size;
                    total <= budget
                })
                .collect()
        }
    };
    let total: u64 = selected.iter().map(|p| p.size).sum();
    progress.final_total(selected.len() as u64, total);
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4.min(selected.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = selected.get(i) else { break };
                if crate::ops::interrupted() {
                    break;
                }
                let r = verify_pack(repo, p);
                progress.bytes(p.size);
                progress.file_done(std::path::Path::new(
                    &FileKind::of_pack(p.kind).path_of(&p.id.to_hex()),
                ));
                results.lock().expect("results").push(r);
            });
        }
    });
    if crate::ops::interrupted() {
        return Err(crate::stop::error(String::new));
    }
    for r in results.into_inner().expect("results") {
        report.packs_read += 1;
        report.bytes_read += r.0;
        report.blobs_verified += r.1;
        report.problems.extend(r.2);
    }
    report.problems.sort();
    Ok(report)
}

fn shuffle<T>(v: &mut [T], rnd: &mut impl FnMut() -> u64) {
    for i in (1..v.len()).rev() {
        let j = (rnd() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// (bytes read, blobs verified, problems) of one pack.
fn verify_pack(repo: &Repository, p: &crate::format::index::PackEntry) -> (u64, u64, Vec<String>) {
    let fk = FileKind::of_pack(p.kind);
    let name = p.id.to_hex();
    let path = fk.path_of(&name);
    let mut problems = Vec::new();
    let bytes = match repo.backend().get(fk, &name) {
        Ok(b) => b,
        // Marked for deletion and deleted by a prune since the index was read.
        Err(crate::Error::ObjectNotFound(_)) if p.mark.is_some() => return (0, 0, Vec::new()),
        Err(e) => return (0, 0, vec![format!("pack {path}: cannot read: {e}")]),
    };
    if crate::id::Id::of_object(&bytes) != p.id {
        problems.push(format!(
            "pack {path}: content does not match its name (damaged, {} bytes)",
            bytes.len()
        ));
    }
    match crate::format::pack::decode_header(repo.key(), p.kind, &bytes, &path) {
        Ok((salt, recs)) => {
            if recs != p.blobs || salt != p.salt {
                problems.push(format!(
                    "pack {path}: its header does not match the index ({} blobs in the header, \
                     {} in the index): run `chunkbak repair index`",
                    recs.len(),
                    p.blobs.len()
                ));
            }
        }
        Err(e) => problems.push(format!("pack {path}: header: {e}")),
    }
    let info = crate::index::PackInfo::of_entry(p);
    let mut verified = 0;
    for b in &p.blobs {
        let loc = crate::index::BlobLocation::of_record(b);
        let r = match bytes.get(b.offset as usize..b.end() as usize) {
            Some(ct) => repo.open_blob(&b.id, &info, loc, ct).map(|_| ()),
            None => Err(crate::Error::corrupt(
                format!("{path} (blob {} at offset {})", b.id.short(), b.offset),
                "the pack is shorter than the index says (truncated)",
            )),
        };
        match r {
            Ok(()) => verified += 1,
            Err(e) => problems.push(format!("{e}")),
        }
    }
    (bytes.len() as u64, verified, problems)
}
