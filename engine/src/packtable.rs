//! The pack table of an index on disk (format-spec 16): every pack's id, kind, size, CRC32C,
//! salt and mark in a fixed record of [`RECORD`] bytes, by position, in blocks of
//! [`BLOCK_ENTRIES`] records with a checksum each. A lookup reads one block (a few are
//! kept), so an index on disk holds no pack table in memory: a repository of 100 TB has
//! about 3 million packs of 32 MiB, 300 MB as a table in memory.
//!
//! While an index loads, [`Writer`] appends the records to a temporary file (a pack is found
//! again by its id through [`Positions`], a few bytes a pack), and writes the table when it
//! is sealed. The ids, sorted, go to a run file ([`crate::indexrun::RunFile`], the pack's
//! position in the record's `pack` field), through which a later load finds a pack's
//! position by its id.
//!
//! As the run file, this is the cache's format: a file that does not check out (magic,
//! version, sizes, the checksum of the header and block table, a block's checksum) is an
//! error the caller answers by rebuilding it, never by trusting it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cachefile::{corrupt, hash16, io, Framed, Layout};
use crate::error::{Error, Result};
use crate::format::index::Mark;
use crate::format::ObjectKind;
use crate::id::{Id, ObjectId};
use crate::index::PackInfo;

pub const MAGIC: &[u8; 8] = b"CBPACKT1";
pub const VERSION: u32 = 1;
/// Bytes of one record.
pub const RECORD: usize = 96;
/// Records in a block (12 KiB).
pub const BLOCK_ENTRIES: usize = 128;
/// The frame of a pack table (blocks of 12 KiB; a reader keeps 64, 768 KiB).
const LAYOUT: Layout = Layout {
    magic: MAGIC,
    version: VERSION,
    record: RECORD,
    per_block: BLOCK_ENTRIES,
    entry: 16,
    what: "a pack table",
};
/// Packs a table holds at most: positions are below 2^31 (a run record's top bit is a tree
/// blob's flag).
pub const MAX_PACKS: u64 = (1 << 31) - 1;

/// A pack's record: id, size, CRC32C, kind, marked (0 or 1), two zero bytes, the mark's
/// times (zero when not marked), salt; little-endian.
pub fn encode(p: &PackInfo) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..32].copy_from_slice(&p.id.0);
    r[32..40].copy_from_slice(&p.size.to_le_bytes());
    r[40..44].copy_from_slice(&p.crc32c.to_le_bytes());
    r[44] = p.kind as u8;
    if let Some(m) = p.mark {
        r[45] = 1;
        r[48..56].copy_from_slice(&m.at.to_le_bytes());
        r[56..64].copy_from_slice(&m.delete_after.to_le_bytes());
    }
    r[64..].copy_from_slice(&p.salt);
    r
}

/// `None` for a record no [`encode`] wrote (a kind that is not a pack's, a flag not 0 or 1).
pub fn decode(r: &[u8]) -> Option<PackInfo> {
    let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8"));
    if r.len() != RECORD {
        return None;
    }
    let kind = ObjectKind::from_u8(r[44])?;
    if !matches!(kind, ObjectKind::DataPack | ObjectKind::TreePack) || r[46..48] != [0, 0] {
        return None;
    }
    let mark = match r[45] {
        0 if r[48..64].iter().all(|b| *b == 0) => None,
        1 => Some(Mark {
            at: u64_at(48) as i64,
            delete_after: u64_at(56) as i64,
        }),
        _ => return None,
    };
    Some(PackInfo {
        id: Id(r[..32].try_into().expect("32")),
        size: u64_at(32),
        crc32c: u32::from_le_bytes(r[40..44].try_into().expect("4")),
        kind,
        salt: r[64..].try_into().expect("32"),
        mark,
    })
}

/// Collects a pack table's records in position order while an index loads (or while prune
/// plans), in a temporary file, appended a batch at a time; a record can be read or rewritten
/// by position meanwhile. Then writes the table ([`finish`](Writer::finish)).
pub struct Writer {
    tmp: PathBuf,
    file: File,
    /// Records appended after the `written` ones, not in the file yet.
    pending: Vec<u8>,
    written: u64,
}

/// Records appended are written in batches of this many bytes.
const BATCH: usize = RECORD * 1024;

impl Writer {
    pub fn new(tmp: &Path) -> Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(tmp)
            .map_err(|e| io(tmp, e))?;
        Ok(Writer {
            tmp: tmp.to_path_buf(),
            file,
            pending: Vec::with_capacity(BATCH),
            written: 0,
        })
    }

    /// Appends the record of the pack at position [`len`](Writer::len).
    pub fn push(&mut self, p: &PackInfo) -> Result<()> {
        if self.len() >= MAX_PACKS {
            return Err(Error::Other(format!(
                "{}: more than {MAX_PACKS} packs in one index",
                self.tmp.display()
            )));
        }
        self.pending.extend_from_slice(&encode(p));
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all_at(&self.pending, self.written * RECORD as u64)
            .map_err(|e| io(&self.tmp, e))?;
        self.written = self.len();
        self.pending.clear();
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.written + (self.pending.len() / RECORD) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn raw(&self, pos: u32) -> Result<[u8; RECORD]> {
        let mut r = [0u8; RECORD];
        let pos = u64::from(pos);
        if pos >= self.len() {
            return Err(corrupt(
                &self.tmp,
                format!("pack position {pos} past the {} packs", self.len()),
            ));
        }
        match pos.checked_sub(self.written) {
            Some(i) => {
                let i = i as usize * RECORD;
                r.copy_from_slice(&self.pending[i..i + RECORD]);
            }
            None => self
                .file
                .read_exact_at(&mut r, pos * RECORD as u64)
                .map_err(|e| io(&self.tmp, e))?,
        }
        Ok(r)
    }

    /// The id of the pack at `pos` (pushed before).
    pub fn id_at(&self, pos: u32) -> Result<ObjectId> {
        let r = self.raw(pos)?;
        Ok(Id(r[..32].try_into().expect("32")))
    }

    /// The pack at `pos` (pushed before).
    pub fn get(&self, pos: u32) -> Result<PackInfo> {
        decode(&self.raw(pos)?)
            .ok_or_else(|| corrupt(&self.tmp, format!("pack record {pos} invalid")))
    }

    /// Replaces the record at `pos` (the same pack, another mark).
    pub fn set(&mut self, pos: u32, p: &PackInfo) -> Result<()> {
        let r = encode(p);
        match u64::from(pos).checked_sub(self.written) {
            Some(i) => {
                let i = i as usize * RECORD;
                self.pending[i..i + RECORD].copy_from_slice(&r);
            }
            None => self
                .file
                .write_all_at(&r, u64::from(pos) * RECORD as u64)
                .map_err(|e| io(&self.tmp, e))?,
        }
        Ok(())
    }

    /// Every pack pushed, in position order.
    pub fn scan(&self, f: &mut dyn FnMut(u32, PackInfo) -> Result<()>) -> Result<()> {
        let mut buf = vec![0u8; BATCH];
        let mut pos = 0u64;
        let mut each = |block: &[u8], pos: &mut u64| -> Result<()> {
            for r in block.chunks_exact(RECORD) {
                let p = decode(r)
                    .ok_or_else(|| corrupt(&self.tmp, format!("pack record {pos} invalid")))?;
                f(*pos as u32, p)?;
                *pos += 1;
            }
            Ok(())
        };
        while pos < self.written {
            let n = ((self.written - pos) as usize).min(BATCH / RECORD);
            let block = &mut buf[..n * RECORD];
            self.file
                .read_exact_at(block, pos * RECORD as u64)
                .map_err(|e| io(&self.tmp, e))?;
            each(block, &mut pos)?;
        }
        each(&self.pending, &mut pos)
    }

    /// Writes the table to `path` (as a temporary file, synced, renamed into place), naming
    /// what it was built from with `covers`; `revived(pos)`: the pack at `pos` was listed
    /// live after it was pushed marked, and is written unmarked.
    pub fn finish(
        mut self,
        path: &Path,
        covers: [u8; 32],
        revived: &dyn Fn(u32) -> bool,
    ) -> Result<()> {
        self.flush()?;
        let n = self.written;
        let mut input = &self.file;
        let tmp = path.with_extension(format!("packs-tmp{}", std::process::id()));
        let written = (|| {
            use std::io::Seek;
            input
                .seek(std::io::SeekFrom::Start(0))
                .map_err(|e| io(&self.tmp, e))?;
            let mut input = std::io::BufReader::with_capacity(1 << 16, input);
            let f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
            let mut out = BufWriter::with_capacity(1 << 16, f);
            let blocks = n.div_ceil(BLOCK_ENTRIES as u64);
            let header = LAYOUT.header(n, blocks, covers);
            out.write_all(&header).map_err(|e| io(&tmp, e))?;
            let mut fence = Vec::with_capacity(blocks as usize * 16);
            let mut block = Vec::with_capacity(BLOCK_ENTRIES * RECORD);
            for b in 0..blocks {
                let records = (n - b * BLOCK_ENTRIES as u64).min(BLOCK_ENTRIES as u64);
                block.resize(records as usize * RECORD, 0);
                input.read_exact(&mut block).map_err(|e| io(&self.tmp, e))?;
                for (i, r) in block.chunks_exact_mut(RECORD).enumerate() {
                    if r[45] == 1 && revived((b * BLOCK_ENTRIES as u64) as u32 + i as u32) {
                        r[45..64].fill(0);
                    }
                }
                fence.extend_from_slice(&hash16(&block));
                out.write_all(&block).map_err(|e| io(&tmp, e))?;
            }
            out.write_all(&fence).map_err(|e| io(&tmp, e))?;
            out.write_all(&LAYOUT.footer(&header, &fence))
                .map_err(|e| io(&tmp, e))?;
            let f = out.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| io(path, e))
        })();
        let _ = std::fs::remove_file(&self.tmp);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// A pack table written by [`Writer::finish`], read a block at a time.
pub struct Table {
    f: Framed,
}

impl Table {
    /// Opens and checks a table: magic, version, sizes, and the checksum of its header and
    /// block table (each block is checked when it is first read).
    pub fn open(path: &Path) -> Result<Table> {
        let f = Framed::open(path, LAYOUT)?;
        if f.count() > MAX_PACKS {
            return Err(corrupt(path, format!("{} packs: too many", f.count())));
        }
        Ok(Table { f })
    }

    pub fn len(&self) -> u64 {
        self.f.count()
    }

    pub fn is_empty(&self) -> bool {
        self.f.count() == 0
    }

    /// What the table was built from, as given to [`Writer::finish`].
    pub fn covers(&self) -> [u8; 32] {
        self.f.covers()
    }

    /// The hash in the footer (of the header and the block table): tells this build's file
    /// from another build's of the same index files.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.f.fingerprint()
    }

    /// The pack at position `pos` (an error past the end, or for a damaged record).
    pub fn get(&self, pos: u32) -> Result<PackInfo> {
        let pos = u64::from(pos);
        if pos >= self.f.count() {
            return Err(corrupt(
                self.f.path(),
                format!(
                    "pack position {pos} past the table's {} packs",
                    self.f.count()
                ),
            ));
        }
        let block = self.f.block(pos / BLOCK_ENTRIES as u64, &|_, _| true)?;
        let i = (pos % BLOCK_ENTRIES as u64) as usize * RECORD;
        decode(&block[i..i + RECORD])
            .ok_or_else(|| corrupt(self.f.path(), format!("pack record {pos} invalid")))
    }
}

/// Pack ids to positions while an index loads, in 8 bytes a pack: the ids' first four bytes
/// (keyed hashes: they spread evenly), sorted, with those added since the last merge in a
/// small map. A key found is checked against the pack's id (by the caller's `id_at`); ids that
/// share their first four bytes with one already here are kept whole, aside.
#[derive(Default)]
pub struct Positions {
    keys: Vec<u32>,
    pos: Vec<u32>,
    recent: HashMap<u32, u32>,
    whole: HashMap<ObjectId, u32>,
}

/// Keys added before they are merged into the sorted ones.
const RECENT: usize = 1 << 16;

fn key(id: &ObjectId) -> u32 {
    u32::from_be_bytes(id.0[..4].try_into().expect("4"))
}

impl Positions {
    /// The position of pack `id`; `id_at(pos)` reads the id of the pack at `pos`.
    pub fn get(
        &self,
        id: &ObjectId,
        id_at: &mut dyn FnMut(u32) -> Result<ObjectId>,
    ) -> Result<Option<u32>> {
        if let Some(p) = self.whole.get(id) {
            return Ok(Some(*p));
        }
        let k = key(id);
        let found = match self.recent.get(&k) {
            Some(p) => Some(*p),
            None => self.keys.binary_search(&k).ok().map(|i| self.pos[i]),
        };
        match found {
            Some(p) if id_at(p)? == *id => Ok(Some(p)),
            _ => Ok(None),
        }
    }

    /// Adds pack `id` at `pos` (not added before: [`get`](Positions::get) found nothing).
    pub fn insert(&mut self, id: &ObjectId, pos: u32) {
        let k = key(id);
        if self.recent.contains_key(&k) || self.keys.binary_search(&k).is_ok() {
            self.whole.insert(*id, pos);
            return;
        }
        self.recent.insert(k, pos);
        if self.recent.len() >= RECENT {
            self.merge();
        }
    }

    /// Merges the recent keys into the sorted ones, in place from the back.
    fn merge(&mut self) {
        let mut add: Vec<(u32, u32)> = self.recent.drain().collect();
        add.sort_unstable();
        let old = self.keys.len();
        self.keys.resize(old + add.len(), 0);
        self.pos.resize(old + add.len(), 0);
        let (mut i, mut j) = (old, add.len());
        let mut w = self.keys.len();
        while j > 0 {
            w -= 1;
            if i > 0 && self.keys[i - 1] > add[j - 1].0 {
                i -= 1;
                self.keys[w] = self.keys[i];
                self.pos[w] = self.pos[i];
            } else {
                j -= 1;
                (self.keys[w], self.pos[w]) = add[j];
            }
        }
    }

    /// Bytes of memory held.
    pub fn resident_bytes(&self) -> usize {
        self.keys.capacity() * 8 + self.recent.capacity() * 9 + self.whole.capacity() * 37
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cachefile::{FOOTER, HEADER};

    fn pack(i: u32, marked: bool) -> PackInfo {
        PackInfo {
            id: Id(*blake3::hash(&i.to_le_bytes()).as_bytes()),
            kind: if i.is_multiple_of(3) {
                ObjectKind::TreePack
            } else {
                ObjectKind::DataPack
            },
            size: u64::from(i) * 1000 + 7,
            crc32c: i.wrapping_mul(2_654_435_761),
            salt: [i as u8; 32],
            mark: marked.then_some(Mark {
                at: i64::from(i),
                delete_after: i64::from(i) + 86_400,
            }),
        }
    }

    #[test]
    fn a_table_reads_back_every_pack_and_revived_ones_unmarked() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0u32, 1, 127, 128, 129, 1000] {
            let mut w = Writer::new(&dir.path().join("t.tmp")).unwrap();
            for i in 0..n {
                w.push(&pack(i, i % 2 == 1)).unwrap();
            }
            if n > 5 {
                assert_eq!(w.id_at(5).unwrap(), pack(5, true).id);
            }
            let path = dir.path().join("t.packs");
            w.finish(&path, [n as u8; 32], &|p| p % 4 == 1).unwrap();
            let t = Table::open(&path).unwrap();
            assert_eq!((t.len(), t.covers()), (u64::from(n), [n as u8; 32]));
            for i in 0..n {
                let marked = i % 2 == 1 && i % 4 != 1;
                assert_eq!(t.get(i).unwrap(), pack(i, marked), "{n} {i}");
            }
            assert!(t.get(n).is_err());
            assert!(!dir.path().join("t.tmp").exists());
        }
    }

    #[test]
    fn a_damaged_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.packs");
        let mut w = Writer::new(&dir.path().join("t.tmp")).unwrap();
        for i in 0..300 {
            w.push(&pack(i, false)).unwrap();
        }
        w.finish(&path, [0; 32], &|_| false).unwrap();
        let good = std::fs::read(&path).unwrap();
        // A record's byte: that block is refused, the others read.
        let mut b = good.clone();
        b[HEADER + 130 * RECORD + 40] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let t = Table::open(&path).unwrap();
        let e = t.get(130).unwrap_err().to_string();
        assert!(
            e.contains("block 1 damaged") && e.contains("t.packs"),
            "{e}"
        );
        assert_eq!(t.get(3).unwrap(), pack(3, false));
        // The header, the block table, a truncation: refused at open.
        for at in [20, good.len() - FOOTER - 3] {
            let mut b = good.clone();
            b[at] ^= 1;
            std::fs::write(&path, &b).unwrap();
            assert!(Table::open(&path).is_err(), "{at}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(Table::open(&path).is_err());
        // A record with a kind that is not a pack's, its block's checksum made good.
        let mut b = good.clone();
        b[HEADER + 2 * RECORD + 44] = ObjectKind::Index as u8;
        let sum = hash16(&b[HEADER..HEADER + BLOCK_ENTRIES * RECORD]);
        let fence = HEADER + 300 * RECORD;
        b[fence..fence + 16].copy_from_slice(&sum);
        let mut h = blake3::Hasher::new();
        h.update(&b[..HEADER]);
        h.update(&b[fence..fence + 3 * 16]);
        let foot = b.len() - FOOTER;
        b[foot..foot + 32].copy_from_slice(h.finalize().as_bytes());
        std::fs::write(&path, &b).unwrap();
        let t = Table::open(&path).unwrap();
        assert!(t
            .get(2)
            .unwrap_err()
            .to_string()
            .contains("record 2 invalid"));
        assert_eq!(t.get(1).unwrap(), pack(1, false));
    }

    /// format-spec.md 16's pack table vector: two packs, one marked, one block.
    #[test]
    fn the_spec_vector() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(&dir.path().join("t.tmp")).unwrap();
        let packs = [
            PackInfo {
                id: Id([0xa1; 32]),
                kind: ObjectKind::DataPack,
                size: 33_554_432,
                crc32c: 0x0102_0304,
                salt: [0x5a; 32],
                mark: None,
            },
            PackInfo {
                id: Id([0xb2; 32]),
                kind: ObjectKind::TreePack,
                size: 4096,
                crc32c: 0,
                salt: [0x6b; 32],
                mark: Some(Mark {
                    at: 1_767_225_600,
                    delete_after: 1_767_830_400,
                }),
            },
        ];
        for p in &packs {
            w.push(p).unwrap();
        }
        let path = dir.path().join("t.packs");
        w.finish(&path, [0; 32], &|_| false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER + 2 * RECORD + 16 + FOOTER);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        crate::synth::assert_in_spec(&hex, "16 pack table vector");
        let t = Table::open(&path).unwrap();
        assert_eq!(
            (t.get(0).unwrap(), t.get(1).unwrap()),
            (packs[0].clone(), packs[1].clone())
        );
    }

    #[test]
    fn positions_find_every_pack_and_tell_ids_that_share_a_key_apart() {
        let mut ids: Vec<ObjectId> = (0..200_000u32).map(|i| pack(i, false).id).collect();
        // Ids whose first four bytes are another's.
        for i in 0..50u32 {
            let mut x = ids[i as usize];
            x.0[31] ^= 0xff;
            ids.push(x);
        }
        let mut p = Positions::default();
        let mut id_at = |pos: u32| Ok(ids[pos as usize]);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(p.get(id, &mut id_at).unwrap(), None, "{i}");
            p.insert(id, i as u32);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(p.get(id, &mut id_at).unwrap(), Some(i as u32), "{i}");
        }
        let mut other = ids[7];
        other.0[20] ^= 1;
        assert_eq!(p.get(&other, &mut id_at).unwrap(), None);
        assert!(p.whole.len() >= 50);
        assert!(p.keys.windows(2).all(|w| w[0] < w[1]));
        assert!(p.resident_bytes() < 250_050 * 12 + (1 << 16) * 20);
    }
}
