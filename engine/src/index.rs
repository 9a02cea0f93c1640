//! The in-memory index: where every blob is, loaded from all index files. Restore planning and
//! structural checks use it alone, never reading a pack.

use std::collections::HashMap;

use crate::compressor::Compression;
use crate::format::index::{IndexFile, Mark, PackEntry};
use crate::format::pack::BlobKind;
use crate::format::ObjectKind;
use crate::id::{BlobId, Id, ObjectId};

/// A pack known to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackInfo {
    pub id: ObjectId,
    pub kind: ObjectKind,
    pub size: u64,
    pub salt: [u8; 32],
    /// Marked for deletion by prune: readable, never reused.
    pub mark: Option<Mark>,
}

/// Where one blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
    pub kind: BlobKind,
    pub compression: Compression,
}

impl PackInfo {
    /// The pack an index entry describes.
    pub fn of_entry(p: &PackEntry) -> Self {
        PackInfo {
            id: p.id,
            kind: p.kind,
            size: p.size,
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
        }
    }
}

#[derive(Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_pos: HashMap<ObjectId, u32>,
    blobs: HashMap<BlobId, BlobLocation>,
    /// Index files loaded.
    pub files: Vec<Id>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every pack of an index file. A pack listed live anywhere is live ("live wins").
    pub fn add_file(&mut self, id: Id, file: &IndexFile) {
        self.files.push(id);
        for p in &file.packs {
            self.add_pack(p);
        }
    }

    /// Adds a pack. A pack already known is skipped, except that a live listing revives a
    /// marked one. A blob stored in several packs is located in a live one when there is one.
    pub fn add_pack(&mut self, p: &PackEntry) {
        let pos = match self.pack_pos.get(&p.id) {
            Some(&pos) => {
                let known = &mut self.packs[pos as usize];
                if known.mark.is_none() || p.mark.is_some() {
                    return;
                }
                known.mark = None;
                pos
            }
            None => {
                let pos = self.packs.len() as u32;
                self.packs.push(PackInfo {
                    id: p.id,
                    kind: p.kind,
                    size: p.size,
                    salt: p.salt,
                    mark: p.mark,
                });
                self.pack_pos.insert(p.id, pos);
                pos
            }
        };
        let live = p.mark.is_none();
        for b in &p.blobs {
            let loc = BlobLocation {
                pack: pos,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
                kind: b.kind,
                compression: b.compression,
            };
            match self.blobs.get_mut(&b.id) {
                None => {
                    self.blobs.insert(b.id, loc);
                }
                Some(old) if live && self.packs[old.pack as usize].mark.is_some() => {
                    *old = loc;
                }
                Some(_) => {}
            }
        }
    }

    /// Where a blob can be read (live packs first, then packs marked for deletion).
    pub fn get(&self, id: &BlobId) -> Option<(&PackInfo, BlobLocation)> {
        self.blobs
            .get(id)
            .map(|l| (&self.packs[l.pack as usize], *l))
    }

    /// The blob can be read (it is in a live or a marked pack).
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// The pack holding a live copy of the blob.
    pub fn live_pack_of(&self, id: &BlobId) -> Option<ObjectId> {
        let l = self.blobs.get(id)?;
        let p = &self.packs[l.pack as usize];
        p.mark.is_none().then_some(p.id)
    }

    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
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
