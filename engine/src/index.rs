//! The in-memory index: where every blob is, loaded from all index files. Restore planning and
//! structural checks use it alone, never reading a pack.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::compressor::Compression;
use crate::error::{Error, Result};
use crate::format::index::{IndexFile, Mark, PackEntry};
use crate::format::pack::BlobKind;
use crate::format::ObjectKind;
use crate::id::{BlobId, Id, ObjectId};
use crate::indexrun::{self, RunFile};
use crate::packtable;

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
/// [`Index::bases`]). Packs are at most about 1 GiB, so the top bits are free.
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

    /// Where the blob is; the base of a delta is looked up in `bases`.
    fn location(&self, bases: &HashMap<(u32, BlobId), BlobId>) -> BlobLocation {
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
            base: if delta {
                bases.get(&(self.pack(), self.id)).copied()
            } else {
                None
            },
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
    let l = Entry::of_record(r).location(&HashMap::new());
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
    bases: HashMap<(u32, BlobId), BlobId>,
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

/// The pack table of an index on disk while it loads: the records (in a file), the packs'
/// positions by id, which are marked, and the ids' sort (written as a run file at the seal).
struct TableOut {
    writer: packtable::Writer,
    positions: packtable::Positions,
    marked: Vec<bool>,
    ids: indexrun::Builder,
}

/// Ids of packs sorted in memory at a time for an index on disk's table (3 MiB).
const TABLE_SORT_RECORDS: usize = 1 << 16;

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

    /// An index being loaded into a run file, in a new private folder under `dir` (removed
    /// with the index; one left by a process killed is removed by the next load). At most
    /// `mem_records` entries are sorted in memory at a time: what the index costs in memory
    /// then does not grow with the repository (format-spec 16). `blobs`: about how many the
    /// load adds (0: not known), so that it sorts them by ranges of ids instead of merging
    /// runs ([`indexrun::Builder::expect`]).
    pub fn loading_on_disk(dir: &Path, mem_records: usize, blobs: usize) -> Result<Self> {
        private_dir(dir)?;
        let run_dir = sort_folder(dir)?;
        let mut builder = indexrun::Builder::new(&run_dir.path().join("tmp"), mem_records)?;
        builder.expect(blobs as u64);
        let table_out = TableOut {
            writer: packtable::Writer::new(&run_dir.path().join("packs.tmp"))?,
            positions: packtable::Positions::default(),
            marked: Vec::new(),
            ids: indexrun::Builder::new(&run_dir.path().join("tmp-packs"), TABLE_SORT_RECORDS)?,
        };
        Ok(Index {
            loading: true,
            run_dir: Some(run_dir),
            builder: Some(builder),
            table_out: Some(table_out),
            ..Self::default()
        })
    }

    /// As [`loading_on_disk`](Index::loading_on_disk), keeping the run file in `dir` for later
    /// loads ([`open_kept`](Index::open_kept)) with what they need beside it: the index files
    /// it `covered`, the pack table, the delta bases (format-spec 16).
    pub fn loading_to_keep(
        dir: &Path,
        mem_records: usize,
        blobs: usize,
        covered: Vec<Id>,
    ) -> Result<Self> {
        let mut idx = Index::loading_on_disk(dir, mem_records, blobs)?;
        idx.keep = Some((dir.to_path_buf(), covered));
        Ok(idx)
    }

    /// Keeps the run file this index is being loaded into for later loads, as covering the
    /// index files `files`, each with the positions of the packs it lists (as
    /// [`add_pack`](Index::add_pack) returned them; before [`seal`](Index::seal), after the
    /// last pack is added; as [`loading_to_keep`](Index::loading_to_keep) when they are known
    /// only at the end).
    pub fn keep_as(&mut self, dir: &Path, files: Vec<(Id, Vec<u32>)>) {
        self.keep = Some((dir.to_path_buf(), files.iter().map(|(id, _)| *id).collect()));
        self.file_packs = files;
    }

    /// An index from the run file an earlier load kept in `dir`, when it and its companion
    /// file check out; with the index files it covers. Files that do not check out are
    /// removed. Covered files a prune rewrote since are then [`bury`](Index::bury)'d.
    pub fn open_kept(dir: &Path) -> Option<(Index, Vec<Id>)> {
        private_dir(dir).ok()?;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name
                .strip_prefix("run-")
                .and_then(|n| n.strip_suffix(".meta"))
            else {
                continue;
            };
            let run_path = dir.join(format!("run-{hex}.run"));
            let table_path = dir.join(format!("run-{hex}.packs"));
            let ids_path = dir.join(format!("run-{hex}.pids"));
            let drop_both = || {
                for p in [
                    e.path(),
                    run_path.clone(),
                    table_path.clone(),
                    ids_path.clone(),
                ] {
                    let _ = std::fs::remove_file(p);
                }
            };
            let Ok(Some(meta)) = std::fs::read(e.path()).map(|b| Meta::decode(&b)) else {
                drop_both();
                continue;
            };
            let covered: Vec<Id> = meta.files.iter().map(|(id, _)| *id).collect();
            let covers = covers_of(&covered);
            if crate::id::Id(covers).to_hex() != hex {
                drop_both();
                continue;
            }
            let opened = (
                RunFile::open(&run_path),
                packtable::Table::open(&table_path),
                RunFile::open(&ids_path),
            );
            let (Ok(run), Ok(table), Ok(ids)) = opened else {
                drop_both();
                continue;
            };
            // Two builds of the same index files share COVERS but not positions: the four
            // files must be of one build (a crash or another process between the renames
            // could mix them).
            let prints = [run.fingerprint(), table.fingerprint(), ids.fingerprint()];
            if run.covers() != covers
                || table.covers() != covers
                || ids.covers() != covers
                || table.len() != meta.packs
                || ids.len() != meta.packs
                || prints != meta.prints
            {
                drop_both();
                continue;
            }
            let idx = Index {
                kept_files: identified(vec![e.path(), run_path, table_path, ids_path]),
                run: Some(run),
                table: Some(table),
                table_ids: Some(ids),
                disputed_blobs: meta.disputed as usize,
                bases: meta.bases,
                file_packs: meta.files,
                won: meta.won.into_iter().collect(),
                lost: meta.lost.into_iter().collect(),
                ..Index::default()
            };
            return Some((idx, covered));
        }
        None
    }

    /// Buries what the run file holds of the packs the index files `gone` list (a prune
    /// rewrote those files): lookups pass their records by, and a pack listed again (by the
    /// files that replaced them, added next) is added anew. A pack another covered file
    /// still lists stays. Blobs two packs claimed stop counting as disputed when the losing
    /// pack is buried. Returns `false`, burying nothing, when one of the files lists a pack
    /// whose copy of a disputed blob the run file kept: the file that made that claim may be
    /// the one rewritten without it (refuted, or the pack deleted), and the run file did not
    /// keep the other copies, so the caller builds the index again.
    pub fn bury(&mut self, gone: &[Id]) -> bool {
        let gone: std::collections::HashSet<&Id> = gone.iter().collect();
        // The packs of the files gone (few), less those another covered file lists (of
        // millions of packs, only these are collected).
        let mut buried: std::collections::HashSet<u32> = self
            .file_packs
            .iter()
            .filter(|(id, _)| gone.contains(id))
            .flat_map(|(_, packs)| packs.iter().copied())
            .collect();
        if buried.iter().any(|p| self.won.contains(p)) {
            return false;
        }
        let mut stays: std::collections::HashSet<u32> = std::collections::HashSet::new();
        for (_, packs) in self.file_packs.iter().filter(|(id, _)| !gone.contains(id)) {
            stays.extend(packs.iter().filter(|p| buried.contains(*p)).copied());
        }
        buried.retain(|p| !stays.contains(p));
        self.file_packs.retain(|(id, _)| !gone.contains(id));
        let count = self.pack_count();
        self.dead.resize(count, false);
        for pos in buried {
            if pos as usize >= count {
                continue;
            }
            self.dead[pos as usize] = true;
            if let Some(id) = self.packs_in_memory_at(pos).map(|p| p.id) {
                self.pack_pos.remove(&id);
            }
            let settled = self.lost.remove(&pos).unwrap_or(0) as usize;
            self.disputed_blobs = self.disputed_blobs.saturating_sub(settled);
        }
        true
    }

    /// Frees the packs each covered file lists, once [`bury`](Index::bury) has used them (4
    /// bytes a pack; a loaded kept index buries once).
    pub fn forget_file_packs(&mut self) {
        self.file_packs = Vec::new();
    }

    fn is_dead(&self, pos: u32) -> bool {
        self.dead.get(pos as usize).copied().unwrap_or(false)
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

    /// The companion of a kept run file.
    fn meta(&self, covered: &[Id]) -> Meta {
        let packs_of: HashMap<&Id, &Vec<u32>> =
            self.file_packs.iter().map(|(id, p)| (id, p)).collect();
        let mut won: Vec<u32> = self.won.iter().copied().collect();
        won.sort_unstable();
        let mut lost: Vec<(u32, u64)> = self.lost.iter().map(|(p, n)| (*p, *n)).collect();
        lost.sort_unstable();
        Meta {
            disputed: self.disputed_blobs as u64,
            files: covered
                .iter()
                .map(|id| (*id, packs_of.get(id).map_or_else(Vec::new, |p| p.to_vec())))
                .collect(),
            won,
            lost,
            bases: self.bases.clone(),
            packs: self.pack_count() as u64,
            prints: [
                self.run.as_ref().map_or([0; 32], RunFile::fingerprint),
                self.table
                    .as_ref()
                    .map_or([0; 32], packtable::Table::fingerprint),
                self.table_ids
                    .as_ref()
                    .map_or([0; 32], RunFile::fingerprint),
            ],
        }
    }

    /// An error when a kept file could not be read (lookups since found nothing in it): the
    /// kept files are gone, and the next run builds them again.
    pub fn check_read(&self) -> Result<()> {
        match self.run_error() {
            None => Ok(()),
            Some(e) => Err(Error::Other(format!(
                "the index kept on disk cannot be read ({e}); it was removed: run again"
            ))),
        }
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
        self.location(id).map(|l| l.pack)
    }

    /// The first error writing or reading the run file, if any.
    pub fn run_error(&self) -> Option<String> {
        self.run_error.lock().expect("run error").clone()
    }

    fn note_run_error(&self, e: &Error) {
        let mut first = self.run_error.lock().expect("run error");
        if first.is_none() {
            *first = Some(e.to_string());
            use std::os::unix::fs::MetadataExt;
            for (f, dev, ino) in &self.kept_files {
                if std::fs::metadata(f).is_ok_and(|m| (m.dev(), m.ino()) == (*dev, *ino)) {
                    let _ = std::fs::remove_file(f);
                }
            }
        }
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

    /// Merges what was collected into the run file and opens it.
    fn seal_run(&mut self, builder: indexrun::Builder) {
        // A record that could not be sorted is lost: no file, above all none kept.
        if self.run_error().is_some() {
            return;
        }
        let Some(out) = self.table_out.take() else {
            return self.note_run_error(&Error::Other(
                "an index on disk without its pack table".into(),
            ));
        };
        let marked = &out.marked;
        // A copy in a pack marked for deletion is kept only when no live pack has one.
        let rank = |r: &indexrun::Record| u8::from(marked[(r.pack & !TOP) as usize]);
        let (base, covers) = match &self.keep {
            Some((dir, covered)) => {
                let covers = covers_of(covered);
                (dir.join(format!("run-{}", Id(covers).to_hex())), covers)
            }
            None => (
                self.run_dir
                    .as_ref()
                    .expect("a run has its folder")
                    .path()
                    .join("index"),
                [0u8; 32],
            ),
        };
        let [path, table_path, ids_path] =
            ["run", "packs", "pids"].map(|ext| base.with_extension(ext));
        let done = builder
            .finish(&path, covers, &rank)
            .and_then(|built| Ok((built, RunFile::open(&path)?)))
            .and_then(|(built, file)| {
                let TableOut { writer, ids, .. } = out;
                // Of a pack pushed marked, one no longer marked was listed live since.
                writer.finish(&table_path, covers, &|p| !marked[p as usize])?;
                ids.finish(&ids_path, covers, &|_| 0)?;
                let table = packtable::Table::open(&table_path)?;
                Ok((built, file, table, RunFile::open(&ids_path)?))
            });
        match done {
            Ok((built, file, table, ids)) => {
                self.disputed_blobs = built.disputed as usize;
                self.won = built.won;
                self.lost = built.lost;
                self.run = Some(file);
                self.table = Some(table);
                self.table_ids = Some(ids);
            }
            Err(e) => return self.note_run_error(&e),
        }
        if let Some((dir, covered)) = &self.keep {
            let meta = dir.join(format!("run-{}.meta", Id(covers).to_hex()));
            let tmp = meta.with_extension(format!("meta-tmp{}", std::process::id()));
            let written = std::fs::write(&tmp, self.meta(covered).encode())
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &meta));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return self.note_run_error(&Error::Other(format!("{}: {e}", meta.display())));
            }
            self.kept_files = identified(vec![meta, path, table_path, ids_path]);
            // Older kept files of this repository go (a reader that has one open keeps it).
            let ours = format!("run-{}.", Id(covers).to_hex());
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("run-") && !n.starts_with(&ours) && !n.contains("tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// The loaded blobs are in a run file on disk (the index is above the memory allowed).
    pub fn on_disk(&self) -> bool {
        self.run.is_some()
    }

    /// Every loaded blob in id order (the run file's, a block at a time, or the sorted
    /// entries'), with its pack's position in the table ([`pack`](Index::pack)); blobs added since the
    /// load are not among them. For passes in id order (check's).
    pub fn for_each_loaded(&self, f: &mut dyn FnMut(&BlobId, u32) -> Result<()>) -> Result<()> {
        if let Some(run) = &self.run {
            return run.for_each(|r| {
                let pack = r.pack & !TOP;
                if self.is_dead(pack) {
                    return Ok(());
                }
                f(&Id(r.id), pack)
            });
        }
        for e in &self.sorted {
            f(&e.id, e.pack())?;
        }
        Ok(())
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
                self.bases.insert((pos, b.id), base);
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
            match self
                .location(&b.id)
                .map(|l| (self.is_marked(l.pack), l.pack))
            {
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

    fn location(&self, id: &BlobId) -> Option<BlobLocation> {
        debug_assert!(!self.loading, "index lookup before seal()");
        if let Some(l) = self.recent.get(id) {
            return Some(*l);
        }
        if let Some(run) = &self.run {
            return match run.get(&id.0) {
                Ok(r) => r
                    .filter(|r| !self.is_dead(r.pack & !TOP))
                    .map(|r| Entry::of_record(&r).location(&self.bases)),
                Err(e) => {
                    self.note_run_error(&e);
                    None
                }
            };
        }
        self.sorted
            .binary_search_by(|e| e.id.cmp(id))
            .ok()
            .map(|i| self.sorted[i].location(&self.bases))
    }

    /// Where a blob can be read (live packs first, then packs marked for deletion).
    pub fn get(&self, id: &BlobId) -> Option<(PackInfo, BlobLocation)> {
        let l = self.location(id)?;
        Some((self.pack(l.pack)?, l))
    }

    /// The blob can be read (it is in a live or a marked pack).
    pub fn contains(&self, id: &BlobId) -> bool {
        self.location(id).is_some()
    }

    /// The pack holding a live copy of the blob.
    pub fn live_pack_of(&self, id: &BlobId) -> Option<ObjectId> {
        let l = self.location(id)?;
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

/// Makes `dir` (mode 0700) and checks that it is this user's alone: a run file decides what
/// a backup stores, so a folder another user made first (in a shared $TMPDIR) is refused.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    crate::fsperm::mkdir_private(dir)
        .map_err(|e| Error::Other(format!("{}: {e}", dir.display())))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // The folder and the one above it (whose owner could rename it away).
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let m = std::fs::symlink_metadata(d)
            .map_err(|e| Error::Other(format!("{}: {e}", d.display())))?;
        if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
            return Err(Error::Other(format!(
                "{}: not a folder private to this user (owner {}, mode {:o}): the index cannot \
                 be kept there; give --cache-dir a folder of your own",
                d.display(),
                m.uid(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Paths with their device and inode now (those that exist).
fn identified(paths: Vec<std::path::PathBuf>) -> Vec<(std::path::PathBuf, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    paths
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.dev(), m.ino()))
        })
        .collect()
}

/// What the index files a kept run file covers hash to (sorted ids).
fn covers_of(covered: &[Id]) -> [u8; 32] {
    let mut ids = covered.to_vec();
    ids.sort();
    let mut h = blake3::Hasher::new();
    for id in &ids {
        h.update(&id.0);
    }
    *h.finalize().as_bytes()
}

const META_MAGIC: &[u8; 8] = b"CBIXMETA";
/// Version 4 moves the pack table to a file of its own (`packtable`). Version 3 added each
/// covered file's packs and the disputes' winners and losers (version 2
/// was a layout of them that main carried for a day).
const META_VERSION: u32 = 4;

/// The companion file of a kept run file (format-spec 16): the index files it covers with the
/// packs each lists, the delta bases, the disputed blobs with the packs that won and lost
/// them, the number of packs in the pack table, and a BLAKE3 of it all at the end.
struct Meta {
    disputed: u64,
    files: Vec<(Id, Vec<u32>)>,
    won: Vec<u32>,
    lost: Vec<(u32, u64)>,
    bases: HashMap<(u32, BlobId), BlobId>,
    /// Packs in the pack table (`run-….packs`).
    packs: u64,
    /// The footer hashes of the run file, the pack table and the pack ids of this build.
    prints: [[u8; 32]; 3],
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let u32s = |out: &mut Vec<u8>, v: &[u32]| {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for p in v {
                out.extend_from_slice(&p.to_le_bytes());
            }
        };
        out.extend_from_slice(META_MAGIC);
        out.extend_from_slice(&META_VERSION.to_le_bytes());
        out.extend_from_slice(&self.disputed.to_le_bytes());
        out.extend_from_slice(&(self.files.len() as u64).to_le_bytes());
        for (id, packs) in &self.files {
            out.extend_from_slice(&id.0);
            u32s(&mut out, packs);
        }
        u32s(&mut out, &self.won);
        out.extend_from_slice(&(self.lost.len() as u64).to_le_bytes());
        for (p, n) in &self.lost {
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        let mut bases: Vec<_> = self.bases.iter().collect();
        bases.sort();
        out.extend_from_slice(&(bases.len() as u64).to_le_bytes());
        for ((pos, id), base) in bases {
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&base.0);
        }
        out.extend_from_slice(&self.packs.to_le_bytes());
        for p in &self.prints {
            out.extend_from_slice(p);
        }
        let h = blake3::hash(&out);
        out.extend_from_slice(h.as_bytes());
        out
    }

    /// `None` for anything that does not check out (every length against what remains, every
    /// pack position against the table).
    fn decode(b: &[u8]) -> Option<Meta> {
        let (body, sum) = b.split_at_checked(b.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        if take(8)? != META_MAGIC || u32::from_le_bytes(take(4)?.try_into().ok()?) != META_VERSION {
            return None;
        }
        let u64_of = |s: &[u8]| s.try_into().ok().map(u64::from_le_bytes);
        let u32_of = |s: &[u8]| s.try_into().ok().map(u32::from_le_bytes);
        let disputed = u64_of(take(8)?)?;
        let n = usize::try_from(u64_of(take(8)?)?).ok()?;
        // Each file takes at least 40 bytes: no count beyond what remains is believed.
        let mut files = Vec::with_capacity(n.min(body.len() / 40));
        for _ in 0..n {
            let id = Id(take(32)?.try_into().ok()?);
            let k = usize::try_from(u64_of(take(8)?)?).ok()?;
            let packs = take(k.checked_mul(4)?)?
                .chunks_exact(4)
                .map(u32_of)
                .collect::<Option<_>>()?;
            files.push((id, packs));
        }
        let n = usize::try_from(u64_of(take(8)?)?).ok()?;
        let won: Vec<u32> = take(n.checked_mul(4)?)?
            .chunks_exact(4)
            .map(u32_of)
            .collect::<Option<_>>()?;
        let n = usize::try_from(u64_of(take(8)?)?).ok()?;
        let lost: Vec<(u32, u64)> = take(n.checked_mul(12)?)?
            .chunks_exact(12)
            .map(|c| Some((u32_of(&c[..4])?, u64_of(&c[4..])?)))
            .collect::<Option<_>>()?;
        let n = usize::try_from(u64_of(take(8)?)?).ok()?;
        let mut bases = HashMap::new();
        for c in take(n.checked_mul(68)?)?.chunks_exact(68) {
            let pos = u32::from_le_bytes(c[..4].try_into().ok()?);
            bases.insert(
                (pos, Id(c[4..36].try_into().ok()?)),
                Id(c[36..].try_into().ok()?),
            );
        }
        let packs = u64_of(take(8)?)?;
        let mut prints = [[0u8; 32]; 3];
        for p in &mut prints {
            *p = take(32)?.try_into().ok()?;
        }
        let in_table = |p: &u32| u64::from(*p) < packs;
        if at != body.len()
            || !bases.keys().all(|(p, _)| in_table(p))
            || !files.iter().flat_map(|(_, p)| p).all(in_table)
            || !won.iter().all(in_table)
            || !lost.iter().all(|(p, _)| in_table(p))
        {
            return None;
        }
        Some(Meta {
            disputed,
            files,
            won,
            lost,
            bases,
            packs,
            prints,
        })
    }
}

/// A new private folder `index-run-PID-XXXXXX` under `dir` for an external sort (removed when
/// dropped), after removing those of processes that are gone (a killed run's sorts).
pub(crate) fn sort_folder(dir: &Path) -> Result<tempfile::TempDir> {
    remove_left_by_dead_processes(dir);
    tempfile::Builder::new()
        .prefix(&format!("index-run-{}-", std::process::id()))
        .tempdir_in(dir)
        .map_err(|e| Error::Other(format!("{}: {e}", dir.display())))
}

/// Removes what processes that are gone left in `dir` when killed: their run folders
/// (`index-run-PID-…`) and temporary files (`…tmpPID`).
fn remove_left_by_dead_processes(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let folder = name.strip_prefix("index-run-");
        let pid = match folder {
            Some(r) => r.split('-').next(),
            None => name.rsplit_once("tmp").map(|(_, p)| p),
        };
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = if folder.is_some() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
        }
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
mod tests {
    use super::*;

    fn entry(id: u8, mark: Option<(i64, i64)>) -> PackEntry {
        PackEntry {
            id: Id([id; 32]),
            kind: ObjectKind::DataPack,
            size: 100,
            crc32c: 0,
            salt: [0; 32],
            mark: mark.map(|(at, delete_after)| Mark { at, delete_after }),
            blobs: Vec::new(),
        }
    }

    fn with_blobs(id: u8, mark: Option<(i64, i64)>, blobs: &[u8]) -> PackEntry {
        PackEntry {
            blobs: blobs
                .iter()
                .enumerate()
                .map(|(i, b)| crate::format::pack::BlobRecord {
                    id: BlobId::from_bytes([*b; 32]),
                    kind: if *b % 2 == 0 {
                        BlobKind::Data
                    } else {
                        BlobKind::Tree
                    },
                    compression: if *b % 3 == 0 {
                        Compression::Zstd
                    } else {
                        Compression::None
                    },
                    offset: 10 * i as u32,
                    length: 10,
                    raw_len: 7 + u32::from(*b),
                    base: None,
                })
                .collect(),
            ..entry(id, mark)
        }
    }

    /// An index loaded into a run file (2 entries sorted in memory at a time: several runs)
    /// in a folder that lives as long as the test.
    fn on_disk(dir: &tempfile::TempDir) -> Index {
        let idx = Index::loading_on_disk(&dir.path().join("index"), 2, 0).unwrap();
        assert!(idx.builder.is_some());
        idx
    }

    #[test]
    fn a_loaded_index_is_48_bytes_a_blob_and_finds_live_copies_first() {
        assert_eq!(BYTES_PER_BLOB, 48);
        live_copies_first(Index::loading(6));
    }

    /// The same answers from an index kept on disk, whose folder goes with it.
    #[test]
    fn an_index_on_disk_answers_alike() {
        let dir = tempfile::tempdir().unwrap();
        live_copies_first(on_disk(&dir));
        chains(on_disk(&dir));
        let runs: Vec<_> = std::fs::read_dir(dir.path().join("index"))
            .unwrap()
            .collect();
        assert!(runs.is_empty(), "run folders left: {runs:?}");
    }

    /// A folder another process left (it was killed) is removed by the next load; a live
    /// process's is not.
    #[test]
    fn run_folders_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("index");
        std::fs::create_dir_all(root.join("index-run-999999999-abc/tmp")).unwrap();
        let mine = format!("index-run-{}-kept", std::process::id());
        std::fs::create_dir_all(root.join(&mine)).unwrap();
        let _idx = on_disk(&dir);
        assert!(!root.join("index-run-999999999-abc").exists());
        assert!(root.join(&mine).exists());
    }

    /// A folder writable by others is refused (its run file decides what a backup stores).
    #[test]
    fn a_shared_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("index");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Index::loading_on_disk(&root, 2, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a folder private to this user"), "{e}");
    }

    /// A kept run file is opened again with the pack table and marks of the first, and the
    /// files it covers; a damaged companion file, pack table or table of pack ids is dropped
    /// with the run file.
    #[test]
    fn a_kept_run_is_used_again_and_a_damaged_one_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("kept");
        let covered = vec![Id([1; 32]), Id([2; 32])];
        let build = || {
            let mut idx = Index::loading_to_keep(&d, 2, 0, covered.clone()).unwrap();
            idx.add_pack(&with_blobs(1, Some((1, 2)), &[10, 11, 12]));
            idx.add_pack(&with_blobs(2, None, &[12, 13]));
            // Listed marked, then live: revived in the table written.
            idx.add_pack(&with_blobs(3, Some((1, 2)), &[14]));
            idx.add_pack(&with_blobs(3, None, &[14]));
            idx.seal();
            assert!(idx.run_error().is_none());
        };
        build();
        let id = |b: u8| BlobId::from_bytes([b; 32]);
        let (mut kept, cov) = Index::open_kept(&d).expect("kept");
        assert_eq!(cov, covered);
        assert_eq!(kept.len(), 5);
        assert_eq!(kept.live_pack_of(&id(12)), Some(Id([2; 32])));
        assert_eq!(kept.live_pack_of(&id(10)), None, "only in a marked pack");
        assert_eq!(kept.live_pack_of(&id(14)), Some(Id([3; 32])));
        assert!(kept.contains(&id(10)));
        assert_eq!(kept.pack_count(), 3);
        // A pack of the table found by its id: listed again, it is not added again; listed
        // live, a marked one is revived.
        assert_eq!(kept.add_pack(&with_blobs(2, None, &[12, 13])), 1);
        assert_eq!(kept.add_pack(&with_blobs(1, None, &[10])), 0);
        assert_eq!(kept.pack_count(), 3);
        assert_eq!(kept.live_pack_of(&id(10)), Some(Id([1; 32])));
        assert_eq!(kept.add_pack(&with_blobs(4, None, &[15])), 3);
        assert_eq!(kept.get(&id(15)).unwrap().0.id, Id([4; 32]));
        drop(kept);
        let files = || {
            let mut v: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
                .collect();
            v.sort();
            v
        };
        let meta = files()
            .into_iter()
            .find(|p| p.extension().unwrap() == "meta")
            .unwrap();
        for (ext, at) in [("meta", 20), ("packs", 20), ("pids", 20), ("run", 20)] {
            let f = meta.with_extension(ext);
            let mut b = std::fs::read(&f).unwrap();
            b[at] ^= 1;
            std::fs::write(&f, b).unwrap();
            assert!(Index::open_kept(&d).is_none(), "{ext}");
            assert!(files().is_empty(), "{ext}: {:?}", files());
            build();
            assert_eq!(files().len(), 4);
            assert!(Index::open_kept(&d).is_some());
        }
    }

    /// Two builds of the same index files (same COVERS, same counts) in another order give
    /// other positions: one build's pack table with the other's run file is refused (the
    /// files are renamed one by one; a crash between could mix them). A block found damaged
    /// after the open removes the kept files: the next load builds them again.
    #[test]
    fn kept_files_of_two_builds_are_not_mixed_and_damaged_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("kept");
        let covered = vec![Id([1; 32]), Id([2; 32])];
        let build = |order: &[u8]| {
            let mut idx = Index::loading_to_keep(&d, 2, 0, covered.clone()).unwrap();
            for p in order {
                idx.add_pack(&with_blobs(*p, None, &[10 * p, 10 * p + 1]));
            }
            idx.seal();
            assert!(idx.run_error().is_none());
        };
        let with = |ext: &str| {
            std::fs::read_dir(&d)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == ext))
                .unwrap()
        };
        build(&[1, 2]);
        let table_a = std::fs::read(with("packs")).unwrap();
        build(&[2, 1]);
        let id = |b: u8| BlobId::from_bytes([b; 32]);
        let (kept, _) = Index::open_kept(&d).expect("one build's files");
        assert_eq!(kept.live_pack_of(&id(10)), Some(Id([1; 32])));
        drop(kept);
        std::fs::write(with("packs"), &table_a).unwrap();
        assert!(Index::open_kept(&d).is_none(), "a table of another build");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);

        build(&[1, 2]);
        let (kept, _) = Index::open_kept(&d).unwrap();
        let path = with("packs");
        let mut b = std::fs::read(&path).unwrap();
        b[64 + 40] ^= 1;
        std::fs::write(&path, b).unwrap();
        assert_eq!(kept.known_packs().count(), 0, "the one block is damaged");
        let e = kept.check_read().unwrap_err().to_string();
        assert!(
            e.contains("block 0 damaged") && e.contains("run again"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "removed");
    }

    /// A companion file decodes only when every pack position it names is in its table and
    /// every count fits what remains (the hash alone does not make it so).
    #[test]
    fn a_companion_file_names_only_packs_of_its_table() {
        let meta = |files: Vec<u32>, won: Vec<u32>, lost: Vec<(u32, u64)>| Meta {
            disputed: 1,
            files: vec![(Id([1; 32]), files)],
            won,
            lost,
            bases: HashMap::new(),
            packs: 2,
            prints: [[7; 32], [8; 32], [9; 32]],
        };
        let ok = Meta::decode(&meta(vec![0, 1], vec![1], vec![(0, 3)]).encode()).unwrap();
        assert_eq!(ok.files, vec![(Id([1; 32]), vec![0, 1])]);
        assert_eq!((ok.won, ok.lost), (vec![1], vec![(0, 3)]));
        for bad in [
            meta(vec![2], vec![], vec![]),
            meta(vec![], vec![2], vec![]),
            meta(vec![], vec![], vec![(7, 1)]),
        ] {
            assert!(Meta::decode(&bad.encode()).is_none());
        }
        // A count beyond what remains, with a hash that matches.
        let mut b = meta(vec![0], vec![], vec![]).encode();
        b.truncate(b.len() - 32);
        b[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        let h = blake3::hash(&b);
        b.extend_from_slice(h.as_bytes());
        assert!(Meta::decode(&b).is_none());
    }

    fn live_copies_first(mut idx: Index) {
        idx.add_pack(&with_blobs(1, Some((1, 2)), &[10, 11, 12]));
        idx.add_pack(&with_blobs(2, None, &[12, 13]));
        // Listed marked, then live elsewhere: revived (live wins).
        idx.add_pack(&with_blobs(3, Some((1, 2)), &[14]));
        idx.add_pack(&with_blobs(3, None, &[14]));
        idx.seal();
        assert_eq!(idx.len(), 5);
        let id = |b: u8| BlobId::from_bytes([b; 32]);
        assert_eq!(idx.live_pack_of(&id(10)), None, "only in a marked pack");
        assert!(idx.contains(&id(10)));
        assert_eq!(
            idx.live_pack_of(&id(12)),
            Some(Id([2; 32])),
            "the live copy wins"
        );
        assert_eq!(idx.live_pack_of(&id(14)), Some(Id([3; 32])));
        let (p, l) = idx.get(&id(11)).unwrap();
        assert_eq!(p.id, Id([1; 32]));
        assert_eq!(
            (l.offset, l.length, l.raw_len, l.kind, l.compression),
            (10, 10, 18, BlobKind::Tree, Compression::None)
        );
        let (_, l) = idx.get(&id(12)).unwrap();
        assert_eq!((l.kind, l.compression), (BlobKind::Data, Compression::Zstd));
        assert!(idx.get(&id(99)).is_none());
        // Added after loading (a backup's new pack): found, and a live copy of a blob only a
        // marked pack held takes over.
        idx.add_pack(&with_blobs(4, None, &[10, 20]));
        assert_eq!(idx.live_pack_of(&id(10)), Some(Id([4; 32])));
        assert_eq!(idx.live_pack_of(&id(20)), Some(Id([4; 32])));
        assert_eq!(idx.live_pack_of(&id(13)), Some(Id([2; 32])));
        // Blob 10's live copy in pack 4 is a second entry for it.
        assert_eq!(idx.len(), 7);
        assert!(idx.run_error().is_none());
    }

    #[test]
    fn chains_are_followed_to_a_whole_blob_and_refused_past_the_maximum_depth_or_in_a_loop() {
        chains(Index::loading(1));
    }

    fn chains(mut idx: Index) {
        let id = |b: u8| BlobId::from_bytes([b; 32]);
        // Blob 20 whole; 21 a delta on 20, 22 on 21, ... 28 on 27 (depth 8). 40 and 41 are
        // deltas on each other; 50 is a delta on 51, which no pack holds.
        let mut pack = with_blobs(1, None, &[20, 21, 22, 23, 24, 25, 26, 27, 28, 40, 41, 50]);
        for r in &mut pack.blobs {
            let b = r.id.0[0];
            let base = match b {
                21..=28 => Some(b - 1),
                40 => Some(41),
                41 => Some(40),
                50 => Some(51),
                _ => None,
            };
            if let Some(base) = base {
                r.compression = Compression::Delta;
                r.kind = BlobKind::Data;
                r.base = Some(id(base));
            }
        }
        idx.add_pack(&pack);
        idx.add_pack(&with_blobs(2, Some((1, 2)), &[60]));
        idx.seal();
        assert_eq!(idx.chain_of(&id(20)), Some(vec![]));
        assert_eq!(idx.chain_of(&id(22)), Some(vec![id(21), id(20)]));
        let six: Vec<BlobId> = (20..26).rev().map(id).collect();
        assert_eq!(idx.chain_of(&id(26)), Some(six), "depth 6 is allowed");
        assert_eq!(idx.live_packs_of(&id(26)).map(|p| p.len()), Some(7));
        assert_eq!(idx.chain_of(&id(27)), None, "depth 7 is refused");
        assert_eq!(idx.live_packs_of(&id(27)), None);
        assert_eq!(idx.chain_of(&id(40)), None, "a loop is refused");
        assert_eq!(idx.live_packs_of(&id(41)), None);
        assert_eq!(idx.chain_of(&id(50)), None, "a missing base is refused");
        assert_eq!(
            idx.live_packs_of(&id(60)),
            None,
            "a marked pack is not live"
        );
        assert_eq!(idx.base_of(&id(21)), Some(id(20)));
    }

    #[test]
    fn merged_entries_live_wins_and_the_latest_mark_counts() {
        let m = merge_entries([
            entry(1, Some((10, 20))),
            entry(1, None),
            entry(2, Some((10, 20))),
            entry(2, Some((15, 40))),
            entry(2, Some((12, 30))),
            entry(3, None),
            entry(3, Some((10, 20))),
        ]);
        assert_eq!(m[&Id([1; 32])].mark, None, "listed live once: live");
        assert_eq!(m[&Id([2; 32])].mark.unwrap().delete_after, 40);
        assert_eq!(
            m[&Id([3; 32])].mark,
            None,
            "a later mark does not override live"
        );
    }
}
