//! The in-memory index: where every blob is, loaded from all index files. Restore planning and
//! structural checks use it alone, never reading a pack.

use std::collections::HashMap;

use crate::compressor::Compression;
use crate::format::index::{IndexFile, PackEntry};
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

    /// Adds every pack of an index file (packs already known are skipped).
    pub fn add_file(&mut self, id: Id, file: &IndexFile) {
        self.files.push(id);
        for p in &file.packs {
            self.add_pack(p);
        }
    }

    pub fn add_pack(&mut self, p: &PackEntry) {
        if self.pack_pos.contains_key(&p.id) {
            return;
        }
        let pos = self.packs.len() as u32;
        self.packs.push(PackInfo {
            id: p.id,
            kind: p.kind,
            size: p.size,
            salt: p.salt,
        });
        self.pack_pos.insert(p.id, pos);
        for b in &p.blobs {
            self.blobs.entry(b.id).or_insert(BlobLocation {
                pack: pos,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
                kind: b.kind,
                compression: b.compression,
            });
        }
    }

    pub fn get(&self, id: &BlobId) -> Option<(&PackInfo, BlobLocation)> {
        self.blobs
            .get(id)
            .map(|l| (&self.packs[l.pack as usize], *l))
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }
}
