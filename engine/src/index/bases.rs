//! The bases of the index's delta blobs, by (pack position, blob id). An index in memory keeps
//! them in a map; an index on disk sorts them on disk while it loads and reads them back from
//! a run file of their own (`run-COVERS.bases` when kept), so that what a load holds does not
//! grow with the number of deltas either (format-spec 16). Deltas added after the load (a
//! backup's new packs) are in the map.
//!
//! A delta's base takes one record, whose 48 bytes are the key (the first 16 bytes of BLAKE3
//! of the pack position and the blob id) and the base: its id is the key and the base's first
//! 16 bytes, and `pack`, `offset`, `length`, `raw_len` carry the base's last 16. A lookup
//! reads the records whose id begins with the key: none, the index holds no such delta; two,
//! two bases were given for one delta (a forged listing of a pack twice), an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::{BlobId, Id};
use crate::indexrun::{self, Record, RunFile};

/// Records of bases sorted in memory at a time while they are collected: an eighth of what
/// the index may sort, at least this many (768 KiB). At the default budget, 10 million
/// deltas make 74 temporary runs to merge.
const MIN_SORT_RECORDS: usize = 1 << 14;

/// The domain of the keys (no blob id is a BLAKE3 of it).
const KEY_CONTEXT: &[u8] = b"chunkbak kept index delta base\0";

#[derive(Default)]
pub(crate) struct Bases {
    /// Of an index in memory, and of deltas added since an index on disk was sealed.
    mem: HashMap<(u32, BlobId), BlobId>,
    /// While an index on disk loads: its deltas' bases being sorted.
    builder: Option<indexrun::Builder>,
    /// An index on disk: the bases of the deltas it was sealed with, and the file's path.
    run: Option<(RunFile, PathBuf)>,
}

/// Bytes of a record's id that are the key; the rest of the record is the base.
const KEY: usize = 16;

/// The first 16 bytes of BLAKE3 of the pack position and blob id of a delta: the first bytes
/// of its record's id.
fn key(pos: u32, id: &BlobId) -> [u8; KEY] {
    let mut h = blake3::Hasher::new();
    h.update(KEY_CONTEXT);
    h.update(&pos.to_le_bytes());
    h.update(&id.0);
    h.finalize().as_bytes()[..KEY].try_into().expect("16")
}

/// The record of the base of blob `id` in the pack at `pos`: the key, then the base.
fn record(pos: u32, id: &BlobId, base: &BlobId) -> Record {
    let mut rid = [0u8; 32];
    rid[..KEY].copy_from_slice(&key(pos, id));
    rid[KEY..].copy_from_slice(&base.0[..32 - KEY]);
    let word = |i: usize| {
        let at = 32 - KEY + 4 * i;
        u32::from_le_bytes(base.0[at..at + 4].try_into().expect("4"))
    };
    Record {
        id: rid,
        pack: word(0),
        offset: word(1),
        length: word(2),
        raw_len: word(3),
    }
}

/// The base a record holds.
fn base_of(r: &Record) -> BlobId {
    let mut b = [0u8; 32];
    b[..32 - KEY].copy_from_slice(&r.id[KEY..]);
    for (i, w) in [r.pack, r.offset, r.length, r.raw_len]
        .into_iter()
        .enumerate()
    {
        let at = 32 - KEY + 4 * i;
        b[at..at + 4].copy_from_slice(&w.to_le_bytes());
    }
    Id(b)
}

impl Bases {
    /// Bases sorted on disk while they are collected, in `tmp` (a private folder), for an
    /// index that sorts `mem_records` in memory at a time.
    pub(crate) fn on_disk(tmp: &Path, mem_records: usize) -> Result<Bases> {
        let mem = (mem_records / 8).max(MIN_SORT_RECORDS);
        Ok(Bases {
            builder: Some(indexrun::Builder::distinct(tmp, mem)?),
            ..Bases::default()
        })
    }

    /// The bases of a kept index on disk, in the run file at `path`.
    pub(super) fn of_run(run: RunFile, path: PathBuf) -> Bases {
        Bases {
            run: Some((run, path)),
            ..Bases::default()
        }
    }

    pub(crate) fn insert(&mut self, pos: u32, id: BlobId, base: BlobId) -> Result<()> {
        match &mut self.builder {
            Some(b) => b.push(record(pos, &id, &base)),
            None => {
                self.mem.insert((pos, id), base);
                Ok(())
            }
        }
    }

    /// Ends the load of an index on disk: writes the sorted bases to `path` and opens it.
    pub(crate) fn finish(&mut self, path: &Path, covers: [u8; 32]) -> Result<()> {
        if let Some(b) = self.builder.take() {
            b.finish(path, covers, &|_| 0)?;
            self.run = Some((RunFile::open(path)?, path.to_path_buf()));
        }
        Ok(())
    }

    /// The base of the delta `id` in the pack at `pos`; `None` when the index holds no delta
    /// of that pack and id. An error when the file cannot be read, or holds two bases for the
    /// delta (a forged listing of its pack twice, differently).
    pub(crate) fn get(&self, pos: u32, id: &BlobId) -> Result<Option<BlobId>> {
        if let Some(b) = self.mem.get(&(pos, *id)) {
            return Ok(Some(*b));
        }
        let Some((run, path)) = &self.run else {
            return Ok(None);
        };
        match run.with_prefix(&key(pos, id), 2)?.as_slice() {
            [] => Ok(None),
            [r] => Ok(Some(base_of(r))),
            _ => Err(Error::corrupt(
                path.display().to_string(),
                format!("the delta base of blob {id} in pack {pos}: two bases are given for it"),
            )),
        }
    }

    /// The base of the blob a claim's record (of the pack at `pos`) places: looked up only
    /// when the record is a delta's, so a whole blob costs no read of the file.
    pub(crate) fn of_claim(&self, pos: u32, r: &Record) -> Result<Option<BlobId>> {
        if r.raw_len & super::TOP == 0 {
            return Ok(None);
        }
        self.get(pos, &Id(r.id))
    }

    /// Bases held in memory.
    #[cfg(test)]
    pub(super) fn in_memory(&self) -> usize {
        self.mem.len()
    }

    /// Deltas with a known base.
    pub(crate) fn len(&self) -> usize {
        self.mem.len() + self.run.as_ref().map_or(0, |(r, _)| r.len() as usize)
    }

    /// The footer hash of the run file (zero without one).
    pub(super) fn fingerprint(&self) -> [u8; 32] {
        self.run.as_ref().map_or([0; 32], |(r, _)| r.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// format-spec.md 16's vector of a delta base: the record of the base `20 x 32` of blob
    /// `21 x 32` in the pack at position 7; and a build of it answers it.
    #[test]
    fn the_spec_vector() {
        let (id, base) = (Id([0x21; 32]), Id([0x20; 32]));
        let mut bytes = Vec::new();
        record(7, &id, &base).encode(&mut bytes);
        assert_eq!(bytes.len(), 48);
        let mut odd = [0u8; 32];
        odd.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        assert_eq!(base_of(&record(7, &id, &Id(odd))), Id(odd));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        crate::synth::assert_in_spec(&hex, "16 delta base vector");
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bases::on_disk(&dir.path().join("tmp"), 0).unwrap();
        b.insert(7, id, base).unwrap();
        b.insert(8, base, Id([0x1f; 32])).unwrap();
        b.finish(&dir.path().join("b.run"), [0; 32]).unwrap();
        assert_eq!(b.get(7, &id).unwrap(), Some(base));
        assert_eq!(b.get(8, &id).unwrap(), None, "another pack's copy");
        assert_eq!(b.get(8, &base).unwrap(), Some(Id([0x1f; 32])));
        assert_eq!(b.len(), 2);
    }

    /// Two bases given for one delta (a pack listed twice, differently, by a forged index
    /// file), alike in their first 16 bytes or not: a lookup is an error naming the file,
    /// never one of them (nor a mix).
    #[test]
    fn two_bases_for_one_delta_are_an_error_not_a_choice() {
        let id = Id([0x21; 32]);
        let a = Id([0x30u8; 32]);
        let mut b = [0x30u8; 32];
        b[31] = 0x10;
        let b = Id(b);
        let other = Id([0x40u8; 32]);
        let dir = tempfile::tempdir().unwrap();
        let mut bases = Bases::on_disk(&dir.path().join("tmp"), 0).unwrap();
        bases.insert(7, id, a).unwrap();
        bases.insert(7, id, b).unwrap();
        let path = dir.path().join("b.run");
        bases.finish(&path, [0; 32]).unwrap();
        let e = bases.get(7, &id).unwrap_err().to_string();
        assert!(e.contains("two bases"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        let mut apart = Bases::on_disk(&dir.path().join("tmp3"), 0).unwrap();
        apart.insert(7, id, other).unwrap();
        apart.insert(7, id, a).unwrap();
        apart.finish(&dir.path().join("d.run"), [0; 32]).unwrap();
        let e = apart.get(7, &id).unwrap_err().to_string();
        assert!(e.contains("two bases"), "{e}");
        // One given twice alike is one base.
        let mut again = Bases::on_disk(&dir.path().join("tmp2"), 0).unwrap();
        again.insert(7, id, a).unwrap();
        again.insert(7, id, a).unwrap();
        again.finish(&dir.path().join("c.run"), [0; 32]).unwrap();
        assert_eq!(again.get(7, &id).unwrap(), Some(a));
    }
}
