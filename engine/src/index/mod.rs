//! The index: where every blob is, loaded from all index files. Restore planning and
//! structural checks use it alone, never reading a pack.
//!
//! Here: the index in memory (sorted entries, the pack table, lookups, blobs added since the
//! load). `disk`: an index larger than the memory allowed, loaded into a sorted run file and a
//! pack table on disk ([`indexrun`], [`packtable`]). `kept`: those files kept in the cache for
//! later loads, with their companion file, and the packs of rewritten index files buried
//! (format-spec 16).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::compressor::Compression;
use crate::format::index::{IndexFile, Mark, PackEntry};
use crate::format::pack::BlobKind;
use crate::format::ObjectKind;
use crate::id::{BlobId, Id, ObjectId};
use crate::indexrun::{self, RunFile};
use crate::packtable;

mod bases;
mod disk;
mod kept;

pub(crate) use bases::Bases;

pub(crate) use disk::sort_folder;
use disk::TableOut;

/// A pack known to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackInfo {
    pub id: ObjectId,
    pub kind: ObjectKind,
    pub size: u64,
    /// CRC32C of the pack's bytes, as sent with its upload (0 where unknown).
    pub crc32c: u32,
    pub salt: [u8; 32],
    /// Marked for deletion by prune: readable, never reused.
    pub mark: Option<Mark>,
}

/// Where one blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of the pack in the index's pack table ([`Index::pack`]).
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
    pub kind: BlobKind,
    pub compression: Compression,
    /// The base of a delta blob (compression [`Compression::Delta`]).
    pub base: Option<BlobId>,
}

impl PackInfo {
    /// The pack's index entry without blob records (the inverse of [`of_entry`](Self::of_entry)).
    pub fn entry(&self) -> PackEntry {
        PackEntry {
            id: self.id,
            kind: self.kind,
            size: self.size,
            crc32c: self.crc32c,
            salt: self.salt,
            mark: self.mark,
            blobs: Vec::new(),
        }
    }

    /// The pack an index entry describes.
    pub fn of_entry(p: &PackEntry) -> Self {
        PackInfo {
            id: p.id,
            kind: p.kind,
            size: p.size,
            crc32c: p.crc32c,
            salt: p.salt,
            mark: p.mark,
        }
    }
}

impl BlobLocation {
    /// A blob's location from its pack record (`pack` 0: for reads that carry the pack).
    pub fn of_record(b: &crate::format::pack::BlobRecord) -> Self {
        BlobLocation {
            pack: 0,
            offset: b.offset,
            length: b.length,
            raw_len: b.raw_len,
            kind: b.kind,
            compression: b.compression,
            base: b.base,
        }
    }
}

/// One indexed blob in 48 bytes: its id, its pack's position (top bit: tree blob), offset,
/// length (top bit: zstd-compressed) and raw length (top bit: a delta, whose base is in
/// `Index::bases`). Packs are at most about 1 GiB, so the top bits are free.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: BlobId,
    pack: u32,
    offset: u32,
    length: u32,
    raw_len: u32,
}

pub(crate) const TOP: u32 = 1 << 31;

/// The longest chain of deltas a blob may be read through (format-spec 6.1): a delta on a
/// whole blob has depth 1, a delta on that delta depth 2, and so on.
pub const MAX_DELTA_DEPTH: usize = 6;

impl Entry {
    fn new(id: BlobId, l: &BlobLocation) -> Self {
        debug_assert!(l.pack < TOP && l.length < TOP);
        Entry {
            id,
            pack: l.pack | if l.kind == BlobKind::Tree { TOP } else { 0 },
            offset: l.offset,
            length: l.length
                | if l.compression == Compression::Zstd {
                    TOP
                } else {
                    0
                },
            raw_len: l.raw_len
                | if l.compression == Compression::Delta {
                    TOP
                } else {
                    0
                },
        }
    }

    fn pack(&self) -> u32 {
        self.pack & !TOP
    }

    /// As a run file keeps it (the same fields and flags).
    fn record(&self) -> indexrun::Record {
        indexrun::Record {
            id: self.id.0,
            pack: self.pack,
            offset: self.offset,
            length: self.length,
            raw_len: self.raw_len,
        }
    }

    fn of_record(r: &indexrun::Record) -> Self {
        Entry {
            id: Id(r.id),
            pack: r.pack,
            offset: r.offset,
            length: r.length,
            raw_len: r.raw_len,
        }
    }

    /// Where the blob is, without the base of a delta (`Index::bases` holds it).
    fn location(&self) -> BlobLocation {
        let delta = self.raw_len & TOP != 0;
        BlobLocation {
            pack: self.pack(),
            offset: self.offset,
            length: self.length & !TOP,
            raw_len: self.raw_len & !TOP,
            kind: if self.pack & TOP != 0 {
                BlobKind::Tree
            } else {
                BlobKind::Data
            },
            compression: if delta {
                Compression::Delta
            } else if self.length & TOP != 0 {
                Compression::Zstd
            } else {
                Compression::None
            },
            base: None,
        }
    }
}

/// A pack's blob record as a run record of the pack at position `pos` (flags as in [`Entry`]).
pub(crate) fn record_of(pos: u32, b: &crate::format::pack::BlobRecord) -> indexrun::Record {
    Entry::new(
        b.id,
        &BlobLocation {
            pack: pos,
            ..BlobLocation::of_record(b)
        },
    )
    .record()
}

/// The pack position of a run record made by [`record_of`] and the blob record it stands for,
/// with `base` for a delta (run records do not hold bases).
pub(crate) fn blob_record_of(
    r: &indexrun::Record,
    base: Option<BlobId>,
) -> (u32, crate::format::pack::BlobRecord) {
    let l = Entry::of_record(r).location();
    let delta = l.compression == Compression::Delta;
    (
        l.pack,
        crate::format::pack::BlobRecord {
            id: Id(r.id),
            kind: l.kind,
            compression: l.compression,
            offset: l.offset,
            length: l.length,
            raw_len: l.raw_len,
            base: if delta { base } else { None },
        },
    )
}

/// Where every blob is. Loading an index collects its blobs into one sorted array of 48-byte
/// entries (binary search, no per-entry overhead), or, for a repository larger than the memory
/// allowed, into a sorted run file read a block at a time ([`Index::loading_on_disk`]), with
/// its pack table in a file too ([`packtable`]); blobs added afterwards (a backup's new packs)
/// go into a small hash map, searched first.
#[derive(Default)]
pub struct Index {
    /// The packs in memory: every pack of an index in memory; of an index on disk, those
    /// added after it was sealed, from position `table.len()` on.
    packs: Vec<PackInfo>,
    /// Positions of the packs in `packs`.
    pack_pos: HashMap<ObjectId, u32>,
    /// An index on disk: the packs it was sealed with, by position.
    table: Option<packtable::Table>,
    /// The ids of `table`'s packs, sorted, each with its position (record field `pack`).
    table_ids: Option<RunFile>,
    /// Packs of `table` listed live since it was written (their record is marked).
    revived: std::collections::HashSet<u32>,
    /// While an index on disk loads: its pack table being written.
    table_out: Option<TableOut>,
    /// Sorted by id, one entry per id (after [`seal`](Index::seal)).
    sorted: Vec<Entry>,
    /// While loading: entries are appended to `sorted` unsorted, and sorted once at the end.
    loading: bool,
    recent: HashMap<BlobId, BlobLocation>,
    /// The base of every delta blob, by (pack position, blob id): few blobs are deltas.
    bases: Bases,
    /// Index files loaded.
    pub files: Vec<Id>,
    /// Blobs that more than one pack claims (counted at [`seal`](Index::seal)): their claims
    /// are checked against pack headers before they are trusted (ops::claims).
    pub disputed_blobs: usize,
    /// The loaded blobs of a large repository, in a run file instead of `sorted`.
    run: Option<RunFile>,
    /// The run file's private folder, removed with the index.
    run_dir: Option<tempfile::TempDir>,
    /// While loading into a run file.
    builder: Option<indexrun::Builder>,
    /// The first error writing or reading the run file (a lookup then finds nothing).
    run_error: Mutex<Option<String>>,
    /// Where the run file is kept for later loads, and the index files it covers.
    keep: Option<(std::path::PathBuf, Vec<Id>)>,
    /// The kept files this index reads (companion first), with their device and inode:
    /// removed at its first read error, so that the next load builds them again instead of
    /// reading the damage again (unless another build replaced them meanwhile).
    kept_files: Vec<(std::path::PathBuf, u64, u64)>,
    /// The packs each index file added lists, by position (for a kept run file: a later load
    /// buries the packs of the files a prune rewrote).
    file_packs: Vec<(Id, Vec<u32>)>,
    /// Packs whose records in the run file are buried (their index files were rewritten
    /// since it was built): lookups pass them by, a pack listed again has a new position.
    dead: Vec<bool>,
    /// Of the run file's disputed blobs: the packs whose copy won (a lookup finds it) and,
    /// for blobs of two packs, how many copies each losing pack holds.
    won: std::collections::HashSet<u32>,
    lost: HashMap<u32, u64>,
}

/// Bytes of memory per indexed blob in the loaded (sorted) part of an index.
pub const BYTES_PER_BLOB: usize = std::mem::size_of::<Entry>();

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index being loaded: [`add_file`](Index::add_file) and
    /// [`add_pack`](Index::add_pack) only collect, until [`seal`](Index::seal). `blobs` is the
    /// number of blob records expected (memory is reserved for them at once).
    pub fn loading(blobs: usize) -> Self {
        Index {
            sorted: Vec::with_capacity(blobs),
            loading: true,
            ..Self::default()
        }
    }

    /// The packs of the index in force (those of index files a prune rewrote since the
    /// index was kept are not; [`pack`](Index::pack) reads the table by position).
    pub fn known_packs(&self) -> impl Iterator<Item = PackInfo> + '_ {
        self.known_packs_at().map(|(_, p)| p)
    }

    /// As [`known_packs`](Index::known_packs), each with its position.
    pub fn known_packs_at(&self) -> impl Iterator<Item = (u32, PackInfo)> + '_ {
        (0..self.pack_count() as u32)
            .filter(|p| !self.is_dead(*p))
            .filter_map(|p| Some((p, self.pack(p)?)))
    }

    /// Packs in the table (positions `0..pack_count()`).
    pub fn pack_count(&self) -> usize {
        self.disk_packs() as usize + self.packs.len()
    }

    /// Packs of the table in a file (the first positions).
    fn disk_packs(&self) -> u32 {
        match (&self.table, &self.table_out) {
            (Some(t), _) => t.len() as u32,
            (None, Some(o)) => o.writer.len() as u32,
            (None, None) => 0,
        }
    }

    fn packs_in_memory_at(&self, pos: u32) -> Option<&PackInfo> {
        let n = self.disk_packs();
        pos.checked_sub(n).and_then(|i| self.packs.get(i as usize))
    }

    /// The pack at position `pos` (`None` past the table, while loading for a pack in a
    /// file, or when the file cannot be read: [`run_error`](Index::run_error) says why).
    pub fn pack(&self, pos: u32) -> Option<PackInfo> {
        if pos >= self.disk_packs() {
            return self.packs_in_memory_at(pos).cloned();
        }
        match self.table.as_ref()?.get(pos) {
            Ok(mut p) => {
                if self.revived.contains(&pos) {
                    p.mark = None;
                }
                Some(p)
            }
            Err(e) => {
                self.note_run_error(&e);
                None
            }
        }
    }

    /// The pack at `pos` is marked for deletion (one that cannot be read counts as marked:
    /// nothing is stored through it).
    fn is_marked(&self, pos: u32) -> bool {
        if let Some(o) = &self.table_out {
            if let Some(m) = o.marked.get(pos as usize) {
                return *m;
            }
        }
        self.pack(pos).is_none_or(|p| p.mark.is_some())
    }

    /// The position of pack `id`, if the index in force has it.
    fn pos_of(&mut self, id: &ObjectId) -> Option<u32> {
        let Some(o) = &mut self.table_out else {
            return self.sealed_pos_of(id);
        };
        if let Some(p) = self.pack_pos.get(id) {
            return Some(*p);
        }
        let TableOut {
            writer, positions, ..
        } = o;
        positions
            .get(id, &mut |p| writer.id_at(p))
            .unwrap_or_else(|e| {
                self.note_run_error(&e);
                None
            })
    }

    /// [`pos_of`](Index::pos_of) once loaded: the packs in memory, then the table's ids (a
    /// dead pack's position does not count).
    fn sealed_pos_of(&self, id: &ObjectId) -> Option<u32> {
        if let Some(p) = self.pack_pos.get(id) {
            return Some(*p);
        }
        let found = self.table_ids.as_ref()?.get(&id.0).map(|r| {
            r.map(|r| r.pack)
                .filter(|p| *p < self.disk_packs() && !self.is_dead(*p))
        });
        found.unwrap_or_else(|e| {
            self.note_run_error(&e);
            None
        })
    }

    /// The index in force has pack `id` (one of the kept files' buried since does not count).
    pub fn has_pack(&self, id: &ObjectId) -> bool {
        self.position(id).is_some()
    }

    /// The position of pack `id` in the index in force, as [`known_packs_at`] gives it (one
    /// of the kept files' buried since does not count).
    ///
    /// [`known_packs_at`]: Index::known_packs_at
    pub fn position(&self, id: &ObjectId) -> Option<u32> {
        self.sealed_pos_of(id)
    }

    /// The position of the pack that blob `id` is located in.
    pub fn pack_position_of(&self, id: &BlobId) -> Option<u32> {
        self.place(id).map(|l| l.pack)
    }

    /// A sealed index of these pack entries.
    pub fn of_packs<'a>(packs: impl Iterator<Item = &'a PackEntry> + Clone) -> Self {
        let mut idx = Index::loading(packs.clone().map(|p| p.blobs.len()).sum());
        for p in packs {
            idx.add_pack(p);
        }
        idx.seal();
        idx
    }

    /// Ends loading: sorts the entries and keeps one per blob, in a live pack when there is
    /// one. Lookups are valid from here on.
    pub fn seal(&mut self) {
        if !self.loading {
            return;
        }
        self.loading = false;
        if let Some(builder) = self.builder.take() {
            self.seal_run(builder);
            return;
        }
        let packs = &self.packs;
        let marked = |e: &Entry| packs[e.pack() as usize].mark.is_some();
        self.sorted
            .sort_unstable_by(|a, b| a.id.cmp(&b.id).then(marked(a).cmp(&marked(b))));
        self.disputed_blobs = self
            .sorted
            .windows(2)
            .filter(|w| w[0].id == w[1].id && w[0].pack() != w[1].pack())
            .count();
        self.sorted.dedup_by(|a, b| a.id == b.id);
        self.sorted.shrink_to_fit();
    }

    /// The blob has a location added since the load (a file written since, a new pack):
    /// the one lookups find first.
    pub fn added_since_load(&self, id: &BlobId) -> bool {
        self.recent.contains_key(id)
    }

    /// Blobs indexed.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len() + self.run.as_ref().map_or(0, |r| r.len() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds every pack of an index file. A pack listed live anywhere is live ("live wins").
    pub fn add_file(&mut self, id: Id, file: &IndexFile) {
        self.files.push(id);
        let pos: Vec<u32> = file.packs.iter().map(|p| self.add_pack(p)).collect();
        if self.keep.is_some() {
            self.file_packs.push((id, pos));
        }
    }

    /// Adds a pack, and returns its position. A pack already known is skipped, except that a
    /// live listing revives a marked one. A blob stored in several packs is located in a
    /// live one when there is one.
    pub fn add_pack(&mut self, p: &PackEntry) -> u32 {
        let pos = match self.pos_of(&p.id) {
            Some(pos) => {
                if !self.is_marked(pos) || p.mark.is_some() {
                    return pos;
                }
                self.revive(pos);
                pos
            }
            None => self.push_pack(p),
        };
        let live = p.mark.is_none();
        for b in &p.blobs {
            let loc = BlobLocation {
                pack: pos,
                ..BlobLocation::of_record(b)
            };
            if let Some(base) = b.base {
                if let Err(e) = self.bases.insert(pos, b.id, base) {
                    self.note_run_error(&e);
                }
            }
            if self.loading {
                let e = Entry::new(b.id, &loc);
                match &mut self.builder {
                    Some(builder) => {
                        if let Err(err) = builder.push(e.record()) {
                            self.run_error
                                .lock()
                                .expect("run error")
                                .get_or_insert_with(|| err.to_string());
                        }
                    }
                    None => self.sorted.push(e),
                }
                continue;
            }
            match self.place(&b.id).map(|l| (self.is_marked(l.pack), l.pack)) {
                None => {
                    self.recent.insert(b.id, loc);
                }
                Some((marked, at)) => {
                    // Claimed by two packs: judged before a backup trusts it (ops::claims).
                    if at != pos {
                        self.disputed_blobs += 1;
                    }
                    if live && marked {
                        self.recent.insert(b.id, loc);
                    }
                }
            }
        }
        pos
    }

    /// A new pack at the table's end: in its file while an index on disk loads, else in
    /// memory.
    fn push_pack(&mut self, p: &PackEntry) -> u32 {
        let pos = self.pack_count() as u32;
        let info = PackInfo::of_entry(p);
        match &mut self.table_out {
            Some(o) => {
                let pushed = o.writer.push(&info).and_then(|()| {
                    o.ids.push(indexrun::Record {
                        pack: pos,
                        ..indexrun::Record::of_id(p.id.0)
                    })
                });
                if let Err(e) = pushed {
                    self.note_run_error(&e);
                    return pos;
                }
                o.positions.insert(&p.id, pos);
                o.marked.push(p.mark.is_some());
            }
            None => {
                self.packs.push(info);
                self.pack_pos.insert(p.id, pos);
            }
        }
        pos
    }

    /// A marked pack listed live: live from now on.
    fn revive(&mut self, pos: u32) {
        if let Some(m) = self
            .table_out
            .as_mut()
            .and_then(|o| o.marked.get_mut(pos as usize))
        {
            *m = false;
            return;
        }
        let n = self.disk_packs();
        match pos.checked_sub(n) {
            Some(i) => {
                if let Some(p) = self.packs.get_mut(i as usize) {
                    p.mark = None;
                }
            }
            None => {
                self.revived.insert(pos);
            }
        }
    }

    /// Where a blob is, with the base of a delta. A delta whose base cannot be found (a
    /// damaged or forged file of bases) is not located at all: a backup stores the chunk again
    /// instead of referencing it without the base, which a prune could then delete.
    fn location(&self, id: &BlobId) -> Option<BlobLocation> {
        let mut l = self.place(id)?;
        if l.compression == Compression::Delta && l.base.is_none() {
            let base = self.bases.get(l.pack, id).unwrap_or_else(|e| {
                self.note_run_error(&e);
                None
            });
            l.base = Some(base?);
        }
        Some(l)
    }

    /// Where a blob is; of a delta loaded into the index, without its base (looked up
    /// apart: on disk, that is one more block read).
    fn place(&self, id: &BlobId) -> Option<BlobLocation> {
        debug_assert!(!self.loading, "index lookup before seal()");
        if let Some(l) = self.recent.get(id) {
            return Some(*l);
        }
        if let Some(run) = &self.run {
            return match run.get(&id.0) {
                Ok(r) => r
                    .filter(|r| !self.is_dead(r.pack & !TOP))
                    .map(|r| Entry::of_record(&r).location()),
                Err(e) => {
                    self.note_run_error(&e);
                    None
                }
            };
        }
        self.sorted
            .binary_search_by(|e| e.id.cmp(id))
            .ok()
            .map(|i| self.sorted[i].location())
    }

    /// Where a blob can be read (live packs first, then packs marked for deletion).
    pub fn get(&self, id: &BlobId) -> Option<(PackInfo, BlobLocation)> {
        let l = self.location(id)?;
        Some((self.pack(l.pack)?, l))
    }

    /// The blob can be read (it is in a live or a marked pack).
    pub fn contains(&self, id: &BlobId) -> bool {
        self.place(id).is_some()
    }

    /// The pack holding a live copy of the blob.
    pub fn live_pack_of(&self, id: &BlobId) -> Option<ObjectId> {
        let l = self.place(id)?;
        let p = self.pack(l.pack)?;
        p.mark.is_none().then_some(p.id)
    }

    /// The packs a backup may reference the blob through: its live pack and, for a delta,
    /// the live packs of every base down its chain. `None` when one is missing or marked for
    /// deletion, or the chain is broken or deeper than [`MAX_DELTA_DEPTH`].
    pub fn live_packs_of(&self, id: &BlobId) -> Option<Vec<ObjectId>> {
        let mut out = Vec::new();
        let mut at = *id;
        for _ in 0..=MAX_DELTA_DEPTH {
            let l = self.location(&at)?;
            let p = self.pack(l.pack)?;
            if p.mark.is_some() {
                return None;
            }
            out.push(p.id);
            match l.base {
                None => return Some(out),
                Some(b) => at = b,
            }
        }
        None
    }

    /// The base of a delta blob (`None` for a whole blob or one not indexed).
    pub fn base_of(&self, id: &BlobId) -> Option<BlobId> {
        self.location(id)?.base
    }

    /// The bases a delta is read through, nearest first (empty for a whole blob); `None` when
    /// a base is not indexed or the chain is deeper than [`MAX_DELTA_DEPTH`] (or loops).
    pub fn chain_of(&self, id: &BlobId) -> Option<Vec<BlobId>> {
        let mut out = Vec::new();
        let mut at = *id;
        loop {
            match self.location(&at)?.base {
                None => return Some(out),
                Some(b) if out.len() < MAX_DELTA_DEPTH => {
                    out.push(b);
                    at = b;
                }
                Some(_) => return None,
            }
        }
    }

    /// Delta blobs indexed.
    pub fn deltas(&self) -> usize {
        self.bases.len()
    }
}

/// One entry per pack out of index files: a pack listed live in any of them is live ("live
/// wins"); of several marks, the one with the latest deletion time, so nothing is deleted
/// earlier than any backup was told.
pub fn merge_entries(entries: impl IntoIterator<Item = PackEntry>) -> HashMap<ObjectId, PackEntry> {
    let mut out: HashMap<ObjectId, PackEntry> = HashMap::new();
    for p in entries {
        match out.get_mut(&p.id) {
            None => {
                out.insert(p.id, p);
            }
            Some(known) => match (known.mark, p.mark) {
                (Some(_), None) => known.mark = None,
                (Some(a), Some(b)) if b.delete_after > a.delete_after => known.mark = Some(b),
                _ => {}
            },
        }
    }
    out
}

#[cfg(test)]
mod tests;
