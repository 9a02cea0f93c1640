//! Index files: which blobs each pack holds. Payload of an envelope of kind Index:
//! `n_supersedes(u32) || ids || n_packs(u32) || pack_0 || ...`, each pack
//! `id(32) || kind(1) || 0(3) || size(u64) || crc32c(u32) || salt(32) || n_blobs(u32) ||
//! records (48 bytes each)`.

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
    pub blobs: Vec<BlobRecord>,
}

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
            8 + 32 * self.supersedes.len() + 84 * self.packs.len() + RECORD_LEN * blobs,
        );
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            out.extend_from_slice(&id.0);
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&[p.kind as u8, 0, 0, 0]);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&p.crc32c.to_le_bytes());
            out.extend_from_slice(&p.salt);
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                b.encode(&mut out);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let mut r = Reader::new(bytes, name);
        let n = r.count(32)?;
        let mut supersedes = Vec::with_capacity(n);
        for _ in 0..n {
            supersedes.push(r.id()?);
        }
        let n = r.count(84)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.id()?;
            let kind = match ObjectKind::from_u8(r.u8()?) {
                Some(k @ (ObjectKind::DataPack | ObjectKind::TreePack)) => k,
                _ => return Err(r.corrupt("index names a pack of unknown kind")),
            };
            if r.array::<3>()? != [0, 0, 0] {
                return Err(r.corrupt("reserved bytes are not zero"));
            }
            let size = r.u64()?;
            let crc32c = r.u32()?;
            let salt = r.array()?;
            let nb = r.count(RECORD_LEN)?;
            let mut blobs = Vec::with_capacity(nb);
            for _ in 0..nb {
                let b = BlobRecord::decode(&mut r)?;
                if b.end() > size {
                    return Err(r.corrupt(format!(
                        "blob {} ends at {} past the end of pack {} ({size} bytes)",
                        b.id.short(),
                        b.end(),
                        id
                    )));
                }
                blobs.push(b);
            }
            packs.push(PackEntry {
                id,
                kind,
                size,
                crc32c,
                salt,
                blobs,
            });
        }
        r.finish()?;
        Ok(IndexFile { supersedes, packs })
    }
}
