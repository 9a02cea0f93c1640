//! Index files: which blobs each pack holds. Payload of an envelope of kind Index:
//! `n_supersedes(u32) || ids || n_packs(u32) || pack_0 || ...`, each pack
//! `id(32) || kind(1) || flags(1) || 0(2) || size(u64) || crc32c(u32) || marked_at(i64) ||
//! delete_after(i64) || salt(32) || n_blobs(u32) || records (48 bytes each)`.

use super::pack::{BlobRecord, RECORD_LEN};
use super::{ObjectKind, Reader};
use crate::error::Result;
use crate::id::{Id, ObjectId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ObjectId,
    pub kind: ObjectKind,
    pub size: u64,
    /// CRC32C (Castagnoli) of the pack's bytes: the checksum sent with the upload, which the
    /// object store keeps, so a pack can be checked without downloading it.
    pub crc32c: u32,
    /// The pack's salt (bytes 6..38 of the pack), so a blob can be opened with one ranged read.
    pub salt: [u8; 32],
    /// Set when prune marked the pack for deletion (two-phase deletion, format-spec.md
    /// section 12): its blobs are readable but not reused by backups.
    pub mark: Option<Mark>,
    pub blobs: Vec<BlobRecord>,
}

/// A pack marked for deletion: when, and the earliest time a prune may delete it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Unix seconds.
    pub at: i64,
    /// Unix seconds; at least `at`.
    pub delete_after: i64,
}

impl Mark {
    /// Half the grace period has passed: a backup that reuses the pack copies its blobs
    /// instead of counting on the next prune to see its snapshot in time.
    pub fn is_late(&self, now: i64) -> bool {
        now >= self.at + (self.delete_after - self.at) / 2
    }
}

/// Flag bit of a pack entry: the pack is marked for deletion.
pub const FLAG_MARKED: u8 = 1;
/// Bytes of a pack entry before its records.
pub const PACK_ENTRY_LEN: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune; empty after a backup).
    pub supersedes: Vec<Id>,
    pub packs: Vec<PackEntry>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut out = Vec::with_capacity(
            8 + 32 * self.supersedes.len() + PACK_ENTRY_LEN * self.packs.len() + RECORD_LEN * blobs,
        );
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            out.extend_from_slice(&id.0);
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            let flags = if p.mark.is_some() { FLAG_MARKED } else { 0 };
            out.extend_from_slice(&[p.kind as u8, flags, 0, 0]);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&p.crc32c.to_le_bytes());
            let m = p.mark.unwrap_or(Mark {
                at: 0,
                delete_after: 0,
            });
            out.extend_from_slice(&m.at.to_le_bytes());
            out.extend_from_slice(&m.delete_after.to_le_bytes());
            out.extend_from_slice(&p.salt);
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            super::pack::encode_records(&p.blobs, &mut out);
        }
        out
    }

    /// What an index file supersedes and how many blob records it holds, without decoding
    /// them (a first pass over many files, so only files in force are decoded in full).
    pub fn peek(bytes: &[u8], name: &str) -> Result<(Vec<Id>, usize)> {
        let mut r = Reader::new(bytes, name);
        let n = r.count(32)?;
        let mut supersedes = Vec::with_capacity(n);
        for _ in 0..n {
            supersedes.push(r.id()?);
        }
        let mut blobs = 0;
        for _ in 0..r.count(PACK_ENTRY_LEN)? {
            // The pack's fixed part, up to its blob count.
            r.bytes(PACK_ENTRY_LEN - 4)?;
            let nb = r.count(RECORD_LEN)?;
            let recs = r.bytes(nb * RECORD_LEN)?;
            // Each delta record (compression byte 2, at offset 45) has a base id after them.
            let deltas = recs
                .chunks_exact(RECORD_LEN)
                .filter(|rec| rec[45] == crate::compressor::Compression::Delta as u8)
                .count();
            r.bytes(deltas * 32)?;
            blobs += nb;
        }
        r.finish()?;
        Ok((supersedes, blobs))
    }

    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let mut r = Reader::new(bytes, name);
        let n = r.count(32)?;
        let mut supersedes = Vec::with_capacity(n);
        for _ in 0..n {
            supersedes.push(r.id()?);
        }
        let n = r.count(PACK_ENTRY_LEN)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.id()?;
            let kind = match ObjectKind::from_u8(r.u8()?) {
                Some(k @ (ObjectKind::DataPack | ObjectKind::TreePack)) => k,
                _ => return Err(r.corrupt("index names a pack of unknown kind")),
            };
            let flags = r.u8()?;
            if flags & !FLAG_MARKED != 0 || r.array::<2>()? != [0, 0] {
                return Err(r.corrupt("unknown flags or reserved bytes are not zero"));
            }
            let size = r.u64()?;
            let crc32c = r.u32()?;
            let (at, delete_after) = (r.i64()?, r.i64()?);
            let mark = if flags & FLAG_MARKED != 0 {
                if delete_after < at {
                    return Err(r.corrupt("a pack's deletion time precedes its mark"));
                }
                Some(Mark { at, delete_after })
            } else if at != 0 || delete_after != 0 {
                return Err(r.corrupt("deletion times on a pack that is not marked"));
            } else {
                None
            };
            let salt = r.array()?;
            let nb = r.count(RECORD_LEN)?;
            let blobs = super::pack::decode_records(&mut r, nb)?;
            for b in &blobs {
                if b.end() > size {
                    return Err(r.corrupt(format!(
                        "blob {} ends at {} past the end of pack {} ({size} bytes)",
                        b.id.short(),
                        b.end(),
                        id
                    )));
                }
            }
            packs.push(PackEntry {
                id,
                kind,
                size,
                crc32c,
                salt,
                mark,
                blobs,
            });
        }
        r.finish()?;
        Ok(IndexFile { supersedes, packs })
    }
}
