//! The bases of the index's delta blobs, by (pack position, blob id). An index in memory keeps
//! them in a map; an index on disk sorts them on disk while it loads and reads them back from
//! a run file of their own (`run-COVERS.bases` when kept), so that what a load holds does not
//! grow with the number of deltas either (format-spec 16). Deltas added after the load (a
//! backup's new packs) are in the map.
//!
//! A base is 32 bytes and a run record carries 16 besides its id, so a delta's base takes
//! three records: the key of each is BLAKE3 of the pack position and the blob id, its last
//! byte replaced by the part (0, 1, 2), so the three sort next to each other; the record's
//! `pack` is the position, and `offset`, `length`, `raw_len` carry 12 bytes of the base each
//! (the last part 8, then the first 4 bytes of BLAKE3 of the base: parts of two different
//! bases given for one delta, which a sort could pair, do not pass for a base).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::{BlobId, Id};
use crate::indexrun::{self, Record, RunFile};

/// Records of bases sorted in memory at a time while they are collected: an eighth of what
/// the index may sort, at least this many (768 KiB). A base takes three records: at the
/// default budget, 10 million deltas make 220 temporary runs to merge.
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

/// BLAKE3 of the pack position and blob id of a delta: its records' keys, each with its last
/// byte replaced by the part ([`part_key`]).
fn key(pos: u32, id: &BlobId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(KEY_CONTEXT);
    h.update(&pos.to_le_bytes());
    h.update(&id.0);
    *h.finalize().as_bytes()
}

/// The key of part `part` of a delta's base.
fn part_key(key: &[u8; 32], part: u8) -> [u8; 32] {
    let mut k = *key;
    k[31] = part;
    k
}

/// The three records of the base of blob `id` in the pack at `pos`.
fn records(pos: u32, id: &BlobId, base: &BlobId) -> [Record; 3] {
    let mut b = [0u8; 36];
    b[..32].copy_from_slice(&base.0);
    b[32..].copy_from_slice(&blake3::hash(&base.0).as_bytes()[..4]);
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    let k = key(pos, id);
    [0u8, 1, 2].map(|part| {
        let at = part as usize * 12;
        Record {
            id: part_key(&k, part),
            pack: pos,
            offset: word(at),
            length: word(at + 4),
            raw_len: word(at + 8),
        }
    })
}

impl Bases {
    /// Bases sorted on disk while they are collected, in `tmp` (a private folder), for an
    /// index that sorts `mem_records` in memory at a time.
    pub(crate) fn on_disk(tmp: &Path, mem_records: usize) -> Result<Bases> {
        let mem = (mem_records / 8).max(MIN_SORT_RECORDS);
        Ok(Bases {
            builder: Some(indexrun::Builder::new(tmp, mem)?),
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
            Some(b) => records(pos, &id, &base)
                .into_iter()
                .try_for_each(|r| b.push(r)),
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
    /// of that pack and id. An error when the file cannot be read or what it holds is no base:
    /// part of one missing, a record of another pack, a checksum that does not match (a
    /// damaged or forged file, or two bases given for one delta).
    pub(crate) fn get(&self, pos: u32, id: &BlobId) -> Result<Option<BlobId>> {
        if let Some(b) = self.mem.get(&(pos, *id)) {
            return Ok(Some(*b));
        }
        let Some((run, path)) = &self.run else {
            return Ok(None);
        };
        let bad = |what: String| {
            Error::corrupt(
                path.display().to_string(),
                format!("the delta base of blob {id} in pack {pos}: {what}"),
            )
        };
        let mut b = [0u8; 36];
        let k = key(pos, id);
        for part in 0..3u8 {
            let Some(r) = run.get(&part_key(&k, part))? else {
                if part == 0 {
                    return Ok(None);
                }
                return Err(bad(format!("part {part} of 3 is missing")));
            };
            if r.pack != pos {
                return Err(bad(format!("a record of pack {}", r.pack)));
            }
            let at = part as usize * 12;
            for (i, w) in [r.offset, r.length, r.raw_len].into_iter().enumerate() {
                b[at + 4 * i..at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        if b[32..] != blake3::hash(&b[..32]).as_bytes()[..4] {
            return Err(bad("its checksum does not match".into()));
        }
        Ok(Some(Id(b[..32].try_into().expect("32"))))
    }

    /// Bases held in memory.
    #[cfg(test)]
    pub(super) fn in_memory(&self) -> usize {
        self.mem.len()
    }

    /// Deltas with a known base.
    pub(crate) fn len(&self) -> usize {
        self.mem.len() + self.run.as_ref().map_or(0, |(r, _)| (r.len() / 3) as usize)
    }

    /// The footer hash of the run file (zero without one).
    pub(super) fn fingerprint(&self) -> [u8; 32] {
        self.run.as_ref().map_or([0; 32], |(r, _)| r.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// format-spec.md 16's vector of a delta base: the three records of the base `20 x 32` of
    /// blob `21 x 32` in the pack at position 7; and a build of them answers it.
    #[test]
    fn the_spec_vector() {
        let (id, base) = (Id([0x21; 32]), Id([0x20; 32]));
        let mut bytes = Vec::new();
        for r in records(7, &id, &base) {
            r.encode(&mut bytes);
        }
        assert_eq!(bytes.len(), 144);
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
    /// file): the sort keeps the lowest record of each part, which can pair parts of both. The
    /// checksum refuses the pair; a lookup is an error naming the file, never a third base.
    #[test]
    fn two_bases_for_one_delta_are_an_error_not_a_mix() {
        let id = Id([0x21; 32]);
        // Part 0 lowest in `a`, part 1 lowest in `b`: a sort by record mixes them.
        let mut a = [0x30u8; 32];
        let mut b = [0x40u8; 32];
        a[12..24].fill(0x50);
        b[12..24].fill(0x10);
        let (a, b) = (Id(a), Id(b));
        let dir = tempfile::tempdir().unwrap();
        let mut bases = Bases::on_disk(&dir.path().join("tmp"), 0).unwrap();
        bases.insert(7, id, a).unwrap();
        bases.insert(7, id, b).unwrap();
        let path = dir.path().join("b.run");
        bases.finish(&path, [0; 32]).unwrap();
        let e = bases.get(7, &id).unwrap_err().to_string();
        assert!(e.contains("checksum does not match"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        // One given twice alike is one base.
        let mut again = Bases::on_disk(&dir.path().join("tmp2"), 0).unwrap();
        again.insert(7, id, a).unwrap();
        again.insert(7, id, a).unwrap();
        again.finish(&dir.path().join("c.run"), [0; 32]).unwrap();
        assert_eq!(again.get(7, &id).unwrap(), Some(a));
    }
}
