//! `copy`: snapshots from one repository into another (a bucket in another region, say),
//! uploading only the blobs the target lacks.
//!
//! When both repositories share their dedup secret and chunker parameters (the target was made
//! with `init --copy-chunker-params`), a blob has the same id in both: a data blob the target
//! holds in a live pack is referenced, not read, and only missing ones are downloaded. Otherwise
//! every blob is read once, re-hashed with the target's key, and trees are rewritten with the
//! new ids (dedup against the target still spares the uploads).
//!
//! In the target a copy is a writer like a backup: it uploads packs, writes an index file now
//! and then, and settles against prune's marks before each snapshot (format-spec.md 12).
//! Snapshots are committed one at a time, so an interrupted copy keeps the ones it finished and
//! a rerun skips them (a snapshot with the same time, host, user, paths and tags, and with
//! shared ids the same tree, is already there).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::packread::PackReader;
use super::writer::Writer;
use crate::backend::FileKind;
use crate::compressor::compress_delta;
use crate::error::{Error, Result};
use crate::format::pack::BlobKind;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Node, TreeBlob};
use crate::id::{BlobId, Id};
use crate::progress::Progress;
use crate::repo::Repository;

/// Ranges of source packs held in memory at once while copying.
const RANGE_BUDGET: u64 = 256 << 20;
/// Blob reads in flight at once (each a round trip on S3).
const READERS: usize = 8;
/// A long copy reloads the target's index before its next snapshot after this long, so what
/// it references was live at most this long before the snapshot's commit step (which only
/// sees marks written after the load; format-spec.md 12).
const RELOAD_AFTER: Duration = Duration::from_secs(15 * 60);

/// What a copy will do, from metadata only.
#[derive(Debug, Default)]
pub struct CopyPlan {
    /// Source snapshots to copy, oldest first.
    pub todo: Vec<(Id, Snapshot)>,
    /// Source snapshots the target holds already: (source id, target id).
    pub present: Vec<(Id, Id)>,
    /// Every source snapshot the target holds (chosen or not), source id → target id: the
    /// parent of a copy is named as the target knows it.
    pub known: HashMap<Id, Id>,
    /// Blob ids are the same in both repositories.
    pub same_ids: bool,
    /// Data blobs to read from the source.
    pub blobs: HashSet<BlobId>,
    /// Their stored (compressed, encrypted) size in the source.
    pub bytes: u64,
}

/// What a copy did.
#[derive(Debug, Default)]
pub struct CopyResult {
    /// Each snapshot copied: source id, target id, and the snapshot as written.
    pub copied: Vec<(Id, Id, Snapshot)>,
    /// Blobs read from the source, and their stored bytes.
    pub blobs_read: u64,
    pub bytes_read: u64,
    /// Blobs stored in the target, and their stored bytes.
    pub blobs_added: u64,
    pub bytes_added: u64,
    pub packs_written: u64,
    /// Data blobs stored as deltas (on the copy of their base in the source).
    pub deltas_added: u64,
    /// Blobs copied out of target packs a concurrent prune marked for deletion.
    pub blobs_copied: u64,
}

/// Whether `b` is the copy of `a` (same time, host, user, paths and tags; with shared blob ids,
/// the same tree too).
fn same_snapshot(a: &Snapshot, b: &Snapshot, same_ids: bool) -> bool {
    a.time == b.time
        && a.host == b.host
        && a.username == b.username
        && a.paths == b.paths
        && a.tags == b.tags
        && (!same_ids || a.tree == b.tree)
}

/// Plans copying `snaps` (chosen among the source's snapshots `all`) from `src` to `dst`.
/// Both indexes must be loaded.
pub fn plan(
    src: &Repository,
    dst: &Repository,
    all: &[(Id, Snapshot)],
    snaps: Vec<(Id, Snapshot)>,
) -> Result<CopyPlan> {
    let same_ids = src.config().same_dedup(dst.config());
    let existing = dst.snapshots()?;
    let mut p = CopyPlan {
        same_ids,
        ..CopyPlan::default()
    };
    let in_target = |s: &Snapshot| {
        existing
            .iter()
            .find(|(_, t)| same_snapshot(s, t, same_ids))
            .map(|(tid, _)| *tid)
    };
    for (id, s) in all {
        if let Some(tid) = in_target(s) {
            p.known.insert(*id, tid);
        }
    }
    for (id, s) in snaps {
        match in_target(&s) {
            Some(tid) => p.present.push((id, tid)),
            None => p.todo.push((id, s)),
        }
    }
    let idx = dst.index().read().expect("index lock");
    let has = |b: &BlobId| same_ids && idx.live_pack_of(b).is_some();
    let mut seen = (HashSet::new(), HashSet::new());
    let mut need = Vec::new();
    for (_, s) in &p.todo {
        collect(src, s.tree, &has, &mut seen, &mut need)?;
    }
    let sidx = src.index().read().expect("index lock");
    p.bytes = need
        .iter()
        .filter_map(|b| sidx.get(b).map(|(_, l)| u64::from(l.length)))
        .sum();
    p.blobs = need.into_iter().collect();
    Ok(p)
}

/// The data blobs under source tree `id` that are not in `seen` and that the target lacks
/// (`has` says which it holds), in walk order; every tree and blob visited goes into `seen`,
/// and every tree walked into `seen.1` too (a data blob of a tree's id, a file whose bytes
/// are the tree blob, must not stop the tree from being walked).
fn collect(
    src: &Repository,
    id: BlobId,
    has: &dyn Fn(&BlobId) -> bool,
    seen: &mut (HashSet<BlobId>, HashSet<BlobId>),
    need: &mut Vec<BlobId>,
) -> Result<()> {
    if !seen.1.insert(id) {
        return Ok(());
    }
    seen.0.insert(id);
    let want =
        |b: &BlobId, seen: &mut (HashSet<BlobId>, HashSet<BlobId>), need: &mut Vec<BlobId>| {
            if seen.0.insert(*b) && !has(b) {
                need.push(*b);
            }
        };
    match &*src.load_tree(&id)? {
        TreeBlob::Dir(nodes) => {
            for n in nodes {
                match &n.content {
                    Content::Chunks(c) => c.iter().for_each(|b| want(b, seen, need)),
                    Content::Indirect(lists) => {
                        for l in lists {
                            collect(src, *l, has, seen, need)?;
                        }
                    }
                }
                if let Some(t) = n.subtree {
                    collect(src, t, has, seen, need)?;
                }
            }
        }
        TreeBlob::Split(parts) => {
            for t in parts {
                collect(src, *t, has, seen, need)?;
            }
        }
        TreeBlob::ChunkList(c) => c.iter().for_each(|b| want(b, seen, need)),
    }
    Ok(())
}

/// One copy run into the target.
struct Run<'a> {
    src: &'a Repository,
    w: Writer,
    same: bool,
    /// Source blob id → target blob id, for every data blob this run stored or referenced.
    map: Mutex<HashMap<BlobId, BlobId>>,
    /// The same for trees, apart: a data blob may have a tree's id (a file whose bytes are the
    /// tree blob), and its copy is not the tree's re-encoded copy.
    trees: Mutex<HashMap<BlobId, BlobId>>,
    blobs_read: AtomicU64,
    bytes_read: AtomicU64,
    progress: &'a dyn Progress,
}

fn check() -> Result<()> {
    if crate::ops::interrupted() {
        return Err(crate::stop::error(String::new));
    }
    Ok(())
}

impl Run<'_> {
    /// Reloads the target's index (every pack this run wrote is indexed by then) and forgets
    /// the blobs it no longer holds live, so they are stored again if needed.
    fn reload(&self, dst: &Repository) -> Result<()> {
        dst.load_index()?;
        let idx = dst.index().read().expect("index lock");
        for map in [&self.map, &self.trees] {
            map.lock()
                .expect("map lock")
                .retain(|_, t| idx.live_pack_of(t).is_some());
        }
        Ok(())
    }

    fn mapped(&self, b: &BlobId) -> Option<BlobId> {
        self.map.lock().expect("map lock").get(b).copied()
    }

    /// Reads the data blobs the target lacks under `root` from the source (neighbours in one
    /// request) and stores them, several at once.
    fn data(&self, root: BlobId) -> Result<()> {
        let mut seen = (HashSet::new(), HashSet::new());
        let mut need = Vec::new();
        {
            // With shared ids, a blob the target holds live is referenced (and its pack
            // remembered for the commit step); done ones are skipped.
            let has = |b: &BlobId| {
                if self.mapped(b).is_some() {
                    return true;
                }
                let reused = self.same && self.w.saver.reuse(&[*b]);
                if reused {
                    self.map.lock().expect("map lock").insert(*b, *b);
                }
                reused
            };
            collect(self.src, root, &has, &mut seen, &mut need)?;
        }
        if need.is_empty() {
            return Ok(());
        }
        // In pack order, so the reader's merged ranges are used while held.
        {
            let idx = self.src.index().read().expect("index lock");
            let mut missing = Vec::new();
            need.sort_by_cached_key(|b| match idx.get(b) {
                Some((p, l)) => (p.id, l.offset),
                None => {
                    missing.push(*b);
                    (Id([0; 32]), 0)
                }
            });
            if let Some(b) = missing.first() {
                return Err(Error::NotFound(format!(
                    "blob {b} of the snapshot is not in the source's index ({} such blobs): \
                     run `chunkbak check` on the source, and `chunkbak repair snapshots` there",
                    missing.len()
                )));
            }
        }
        // Waves by depth in the source, so a delta is stored after its base: the base's copy
        // is in the target's index by then and the delta stays a delta on it.
        let mut waves: Vec<Vec<BlobId>> = Vec::new();
        {
            let idx = self.src.index().read().expect("index lock");
            for b in need {
                let depth = idx.chain_of(&b).map_or(0, |c| c.len());
                if waves.len() <= depth {
                    waves.resize_with(depth + 1, Vec::new);
                }
                waves[depth].push(b);
            }
        }
        let pool = crate::ops::thread_pool(READERS, "copy")?;
        // Source blobs this call stored in target packs that may still be open.
        let fresh = Mutex::new(HashSet::new());
        for wave in waves.iter().filter(|w| !w.is_empty()) {
            let needs_fresh_base = {
                let idx = self.src.index().read().expect("index lock");
                let fresh = fresh.lock().expect("fresh lock");
                wave.iter()
                    .any(|b| idx.base_of(b).is_some_and(|sb| fresh.contains(&sb)))
            };
            if needs_fresh_base {
                // Bases an earlier wave stored enter the target's index with their packs.
                self.w.saver.upload_open()?;
                fresh.lock().expect("fresh lock").clear();
            }
            let planned = crate::ops::packread::with_bases(self.src, wave.iter().copied());
            let reader = PackReader::new(self.src, &planned, RANGE_BUDGET)?;
            pool.install(|| {
                wave.par_iter()
                    .try_for_each(|b| self.blob(&reader, b, &fresh))
            })?;
        }
        Ok(())
    }

    /// Reads source data blob `b` and stores it in the target unless the target has it: a
    /// delta stays a delta when its base's copy is live in the target and not too deep there
    /// (otherwise it is stored whole).
    fn blob(&self, reader: &PackReader, b: &BlobId, fresh: &Mutex<HashSet<BlobId>>) -> Result<()> {
        check()?;
        let (data, base_plain) = reader
            .read_with_base(b)
            .map_err(|e| self.read_error(b, e))?;
        let saver = &self.w.saver;
        let t = if self.same {
            *b
        } else {
            saver.hasher().id(&data)
        };
        if saver.reserve(&t) {
            // The base's id in the target is the hash of the very plaintext the frame is made
            // on: with shared ids the source's, otherwise the base's copy (stored by this run
            // or an earlier one).
            let base = base_plain.and_then(|plain| {
                let tb = saver.hasher().id(&plain);
                saver.use_base(&tb).then_some((tb, plain))
            });
            match base {
                Some((tb, plain)) => {
                    let frame = compress_delta(&data, &plain, saver.level())?;
                    saver.store_delta(t, data.len(), frame, tb)?;
                }
                None => saver.store_reserved(BlobKind::Data, t, &data)?,
            }
            fresh.lock().expect("fresh lock").insert(*b);
        }
        self.map.lock().expect("map lock").insert(*b, t);
        let stored = self
            .src
            .locate(b)
            .map(|(_, l)| u64::from(l.length))
            .unwrap_or(0);
        self.blobs_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(stored, Ordering::Relaxed);
        self.progress.bytes(stored);
        self.w.checkpoint(false)
    }

    /// A failed read of a source blob, naming it and its pack (interrupts and archived packs
    /// keep their kind, for the exit code).
    fn read_error(&self, b: &BlobId, e: Error) -> Error {
        match e {
            Error::Interrupted | Error::StoreDown { .. } | Error::Archived { .. } => e,
            e => {
                let pack = self
                    .src
                    .locate(b)
                    .map(|(p, _)| FileKind::of_pack(p.kind).path_of(&p.id.to_hex()))
                    .unwrap_or_else(|_| "an unknown pack".into());
                Error::Other(format!(
                    "reading blob {b} from {pack} of the source: {e}. Nothing of this snapshot \
                     was committed to the target; run `chunkbak check --read-data` on the \
                     source, and `chunkbak repair` there"
                ))
            }
        }
    }

    fn data_id(&self, b: &BlobId) -> Result<BlobId> {
        self.mapped(b).ok_or_else(|| {
            Error::Other(format!(
                "copy: data blob {b} was neither stored nor found in the target"
            ))
        })
    }

    /// Stores source tree `id` in the target (children first, with their target ids); returns
    /// its target id.
    fn tree(&self, id: BlobId) -> Result<BlobId> {
        if let Some(t) = self.trees.lock().expect("map lock").get(&id).copied() {
            return Ok(t);
        }
        check()?;
        let t = self.src.load_tree(&id)?;
        let new = match &*t {
            TreeBlob::Dir(nodes) => {
                let mut out = Vec::with_capacity(nodes.len());
                for n in nodes {
                    let content = match &n.content {
                        Content::Chunks(c) => Content::Chunks(
                            c.iter().map(|b| self.data_id(b)).collect::<Result<_>>()?,
                        ),
                        Content::Indirect(l) => Content::Indirect(
                            l.iter().map(|t| self.tree(*t)).collect::<Result<_>>()?,
                        ),
                    };
                    let subtree = n.subtree.map(|t| self.tree(t)).transpose()?;
                    out.push(Node {
                        content,
                        subtree,
                        ..n.clone()
                    });
                }
                TreeBlob::Dir(out)
            }
            TreeBlob::Split(parts) => {
                TreeBlob::Split(parts.iter().map(|t| self.tree(*t)).collect::<Result<_>>()?)
            }
            TreeBlob::ChunkList(c) => {
                TreeBlob::ChunkList(c.iter().map(|b| self.data_id(b)).collect::<Result<_>>()?)
            }
        };
        let bytes = new.encode();
        let tid = self.w.saver.hasher().id(&bytes);
        if self.same && tid != id {
            return Err(Error::corrupt(
                format!("tree {id}"),
                "re-encoding the tree gives another id (a damaged or foreign tree blob)",
            ));
        }
        // Stored unless the target holds it live (then its pack is remembered as used).
        self.w.saver.save_with_id(BlobKind::Tree, tid, &bytes)?;
        self.trees.lock().expect("map lock").insert(id, tid);
        self.w.checkpoint(false)?;
        Ok(tid)
    }
}

/// Copies the snapshots of `plan` from `src` into `dst`, one committed snapshot at a time.
/// Both indexes must be loaded; archived source packs must be readable (thawed) first.
pub fn copy(
    src: &Repository,
    dst: &Arc<Repository>,
    plan: &CopyPlan,
    progress: &dyn Progress,
) -> Result<CopyResult> {
    let run = Run {
        src,
        w: Writer::new(dst)?,
        same: plan.same_ids,
        map: Mutex::new(HashMap::new()),
        trees: Mutex::new(HashMap::new()),
        blobs_read: AtomicU64::new(0),
        bytes_read: AtomicU64::new(0),
        progress,
    };
    progress.final_total(plan.todo.len() as u64, plan.bytes);
    let mut ids: HashMap<Id, Id> = plan.known.clone();
    let mut out = CopyResult::default();
    let mut loaded = Instant::now();
    let result = (|| -> Result<()> {
        for (sid, s) in &plan.todo {
            if loaded.elapsed() > RELOAD_AFTER {
                run.reload(dst)?;
                loaded = Instant::now();
            }
            run.data(s.tree)?;
            let tree = run.tree(s.tree)?;
            out.blobs_copied += run.w.commit_ready(&check)?;
            let copy = Snapshot {
                tree,
                // The parent as the target knows it, when it was copied too.
                parent: s.parent.and_then(|p| ids.get(&p).copied()),
                ..s.clone()
            };
            let tid = dst.write_snapshot(&copy)?;
            ids.insert(*sid, tid);
            out.copied.push((*sid, tid, copy));
            progress.file_done(std::path::Path::new(&sid.short()));
            progress.message(&format!(
                "snapshot {} copied as {}",
                sid.short(),
                tid.short()
            ));
        }
        Ok(())
    })();
    if let Err(e) = &result {
        run.w.abort(e);
    }
    result?;
    let st = &run.w.saver.stats;
    out.blobs_read = run.blobs_read.load(Ordering::Relaxed);
    out.bytes_read = run.bytes_read.load(Ordering::Relaxed);
    out.blobs_added = st.blobs_added.load(Ordering::Relaxed);
    out.bytes_added = st.bytes_added.load(Ordering::Relaxed);
    out.packs_written = st.packs_written.load(Ordering::Relaxed);
    out.deltas_added = st.deltas_added.load(Ordering::Relaxed);
    Ok(out)
}
