//! Reading blobs: located through the index, read from their packs (or the cache), delta
//! bases resolved, decrypted, decompressed and verified.

use std::sync::Arc;

use crate::backend::FileKind;
use crate::compressor::{decompress, decompress_delta, Compression};
use crate::error::{Error, Result};
use crate::format::pack::BlobKind;
use crate::id::{BlobId, Id};
use crate::index::{BlobLocation, PackInfo, MAX_DELTA_DEPTH};

use super::Repository;

impl Repository {
    /// Reads, decrypts, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let (pack, loc) = self.locate(id)?;
        let fk = FileKind::of_pack(pack.kind);
        let pname = pack.id.to_hex();
        let (off, len) = (u64::from(loc.offset), u64::from(loc.length));
        if let Some(c) = self.cache().filter(|_| fk == FileKind::Tree) {
            // Tree packs are read whole once and kept: later tree reads are local.
            if let Some(ct) = c.get_range(fk, &pname, off, len) {
                match self.open_blob(id, &pack, loc, &ct) {
                    Ok(plain) => return Ok(plain),
                    // A damaged local copy: drop it and read from the repository.
                    Err(_) => c.remove(fk, &pname),
                }
            } else if let Ok(whole) = self.backend.get(fk, &pname) {
                // Kept only when intact; a damaged pack still serves its intact blobs below.
                if Id::of_object(&whole).to_hex() == pname {
                    c.put(fk, &pname, &whole);
                    if let Some(ct) = whole.get(off as usize..(off + len) as usize) {
                        return self.open_blob(id, &pack, loc, ct);
                    }
                }
            }
        }
        if self.backend.is_remote() {
            // A whole aligned window, so the request does not show the blob's length.
            let (s, e) = crate::ops::packread::window(off, off + len, pack.size);
            let w = self.backend.get_range(fk, &pname, s, e - s)?;
            let ct = w
                .get((off - s) as usize..(off - s + len) as usize)
                .ok_or_else(|| Error::corrupt(fk.path_of(&pname), "shorter than the index says"))?;
            return self.open_blob(id, &pack, loc, ct);
        }
        let ct = self.backend.get_range(fk, &pname, off, len)?;
        self.open_blob(id, &pack, loc, &ct)
    }

    /// Where a blob is: its pack and location (an error naming the blob when not indexed).
    pub fn locate(&self, id: &BlobId) -> Result<(PackInfo, BlobLocation)> {
        let idx = self.index.read().expect("index lock");
        let (p, l) = idx.get(id).ok_or_else(|| match idx.run_error() {
            Some(e) => Error::Other(format!(
                "blob {id}: the index kept on disk cannot be read ({e}); run again"
            )),
            None => Error::NotFound(format!(
                "blob {id} is not in the index (missing data: run `chunkbak check`)"
            )),
        })?;
        Ok((p.clone(), l))
    }

    /// Decrypts, decompresses and verifies a blob read from its pack (`ct`: its stored bytes).
    pub fn open_blob(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        let base = self.base_for(id, pack, loc)?;
        self.open_blob_on(id, pack, loc, ct, base.as_ref().map(|b| b.as_slice()))
    }

    /// As [`open_blob`](Self::open_blob) without checking the plaintext against its id: for
    /// the bases of a delta, whose own id check covers them.
    fn open_blob_unverified(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        let base = self.base_for(id, pack, loc)?;
        self.decode(id, pack, loc, ct, base.as_ref().map(|b| b.as_slice()))
    }

    /// The plaintext of a delta's base (`None` for a whole blob), the error naming the delta.
    fn base_for(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
    ) -> Result<Option<Arc<Vec<u8>>>> {
        match (loc.compression, loc.base) {
            (Compression::Delta, Some(b)) => self.read_base(&b).map(Some).map_err(|e| {
                Error::corrupt(
                    Self::blob_name(id, pack, loc),
                    format!("its delta base {} cannot be read: {e}", b.short()),
                )
            }),
            _ => Ok(None),
        }
    }

    /// As [`open_blob`](Self::open_blob), with a delta's base plaintext given (`base`, read
    /// and verified by the caller).
    pub fn open_blob_on(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
        base: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let plain = self.decode(id, pack, loc, ct, base)?;
        if self.hasher.id(&plain) != *id {
            return Err(Error::corrupt(
                Self::blob_name(id, pack, loc),
                "content does not match its id",
            ));
        }
        Ok(plain)
    }

    /// Decrypts and decompresses a blob (a delta on `base`), without the id check.
    pub fn decode(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
        base: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let what = Self::blob_name(id, pack, loc);
        // Bounded before anything is allocated for it: a data blob is one chunk, a tree blob
        // at most MAX_TREE_BLOB (format-spec 6.1 and 8.2).
        let limit = match loc.kind {
            BlobKind::Data => self.config.chunk_max,
            BlobKind::Tree => crate::format::tree::MAX_TREE_BLOB,
        };
        if loc.raw_len > limit {
            return Err(Error::corrupt(
                &what,
                format!(
                    "its plaintext length {} is above the limit of a {} blob ({limit} bytes): \
                     damaged or forged header",
                    loc.raw_len,
                    if loc.kind == BlobKind::Data {
                        "data"
                    } else {
                        "tree"
                    }
                ),
            ));
        }
        let stored = self.open_stored(id, pack, loc, ct)?;
        let plain = match (loc.compression, base) {
            (Compression::Delta, Some(b)) => {
                decompress_delta(&stored, b, loc.raw_len as usize, &what)?
            }
            (Compression::Delta, None) => {
                return Err(Error::corrupt(&what, "a delta blob without a base"))
            }
            (c, _) => decompress(c, stored, loc.raw_len as usize, &what)?,
        };
        Ok(plain)
    }

    /// How errors name a blob: its pack's path and the blob's offset.
    fn blob_name(id: &BlobId, pack: &PackInfo, loc: BlobLocation) -> String {
        format!(
            "{} (blob {} at offset {})",
            FileKind::of_pack(pack.kind).path_of(&pack.id.to_hex()),
            id.short(),
            loc.offset
        )
    }

    /// Decrypts a blob read from its pack to its stored form (compressed, or a delta frame),
    /// without decoding it.
    pub fn open_stored(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        self.key
            .object_cipher(&pack.salt)
            .open(u64::from(loc.offset), &pack.kind.prefix(), ct)
            .ok_or_else(|| {
                Error::corrupt(
                    Self::blob_name(id, pack, loc),
                    "authentication failed (the pack was modified or damaged)",
                )
            })
    }

    /// The plaintext of a delta's base: a data blob stored whole or a delta itself, read
    /// through its own bases (format-spec 6.1: no chain is deeper than [`MAX_DELTA_DEPTH`]).
    pub fn read_base(&self, base: &BlobId) -> Result<Arc<Vec<u8>>> {
        // Bytes of plaintext kept, whatever the chunk sizes: a delta chain is mostly read
        // once (each of a dump's chunks has its own), so the cache serves bases shared by
        // nearby deltas, and a count of entries would hold up to 32 maximum chunks. A 64th
        // of the budget: 2.3 MiB at the default (no cache at all measured about the same).
        let keep_bytes = (self.memory() / 64).clamp(1 << 20, 16 << 20) as usize;
        if let Some((_, b)) = self
            .base_cache
            .lock()
            .expect("base cache")
            .iter()
            .find(|(id, _)| id == base)
        {
            return Ok(b.clone());
        }
        let (pack, loc) = self.locate(base)?;
        let chain = self.index.read().expect("index lock").chain_of(base);
        if loc.kind != BlobKind::Data || chain.is_none_or(|c| c.len() >= MAX_DELTA_DEPTH) {
            return Err(Error::corrupt(
                format!("blob {}", base.short()),
                format!(
                    "a delta base must be a data blob whole or at most {} deltas deep",
                    MAX_DELTA_DEPTH - 1
                ),
            ));
        }
        // Not hashed: a base is only ever a step to the blob that was asked for, whose id is
        // checked (AES-GCM has authenticated every step's stored bytes).
        let ct = self.backend.get_range(
            FileKind::of_pack(pack.kind),
            &pack.id.to_hex(),
            u64::from(loc.offset),
            u64::from(loc.length),
        )?;
        let b = Arc::new(self.open_blob_unverified(base, &pack, loc, &ct)?);
        let mut c = self.base_cache.lock().expect("base cache");
        c.push_back((*base, b.clone()));
        let mut held: usize = c.iter().map(|(_, b)| b.len()).sum();
        while held > keep_bytes && c.len() > 1 {
            held -= c.pop_front().map_or(0, |(_, b)| b.len());
        }
        Ok(b)
    }

    /// Reads a whole pack, checks that it matches its name, and decodes its header.
    pub fn read_pack(
        &self,
        fk: FileKind,
        name: &str,
    ) -> Result<(Vec<u8>, Vec<crate::format::pack::BlobRecord>)> {
        let bytes = self.get_verified(fk, name)?;
        let path = fk.path_of(name);
        let (_, recs) =
            crate::format::pack::decode_header(&self.key, fk.pack_kind(), &bytes, &path)?;
        Ok((bytes, recs))
    }
}
