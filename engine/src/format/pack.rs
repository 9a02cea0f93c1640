//! Pack files: `prefix(6) || salt(32) || blob_0 || ... || blob_{n-1} || header || header_len(u32)`.
//! A blob at offset `o` is `AES-256-GCM(subkey(salt), nonce(o), aad = prefix, stored)`; the header
//! is the same with counter `u64::MAX` over `count(u32) || record_0 || ...` (48-byte records).

use super::{check_prefix, ObjectKind, Reader};
use crate::compressor::Compression;
use crate::crypter::{MasterKey, HEADER_COUNTER, TAG_LEN};
use crate::error::{Error, Result};
use crate::id::BlobId;

pub const PACK_HEADER_OFFSET: usize = 6 + 32;
pub const RECORD_LEN: usize = 48;
/// Largest number of blobs one pack may hold.
pub const MAX_BLOBS: usize = 1 << 20;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }

    pub fn pack_kind(self) -> ObjectKind {
        match self {
            BlobKind::Data => ObjectKind::DataPack,
            BlobKind::Tree => ObjectKind::TreePack,
        }
    }
}

/// One blob's entry in a pack header and in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobRecord {
    pub id: BlobId,
    /// Offset of the blob's ciphertext from the start of the pack.
    pub offset: u32,
    /// Length of the ciphertext, tag included.
    pub length: u32,
    /// Length of the plaintext after decompression.
    pub raw_len: u32,
    pub kind: BlobKind,
    pub compression: Compression,
    /// The base of a delta blob (compression 2): a data blob stored whole. Not part of the
    /// 48-byte record: the bases follow the records (see [`encode_records`]).
    pub base: Option<BlobId>,
}

impl BlobRecord {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.compression as u8);
        out.extend_from_slice(&[0, 0]);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let id = r.id()?;
        let offset = r.u32()?;
        let length = r.u32()?;
        let raw_len = r.u32()?;
        let kind = BlobKind::from_u8(r.u8()?).ok_or_else(|| r.corrupt("unknown blob kind"))?;
        let compression =
            Compression::from_u8(r.u8()?).ok_or_else(|| r.corrupt("unknown blob compression"))?;
        if r.u16()? != 0 {
            return Err(r.corrupt("reserved bytes of a blob record are not zero"));
        }
        if (length as usize) < TAG_LEN {
            return Err(r.corrupt(format!("blob {} shorter than its tag", id.short())));
        }
        // No blob and no pack reaches 1 GiB (format-spec 6.2): larger lengths are forged, and
        // would overflow the flags the index keeps in their top bits.
        let cap = crate::format::config::MAX_PACK_SIZE;
        if length > cap || raw_len > cap {
            return Err(r.corrupt(format!(
                "blob {} claims {length} stored / {raw_len} plain bytes, above 1 GiB",
                id.short()
            )));
        }
        if compression == Compression::Delta && kind != BlobKind::Data {
            return Err(r.corrupt(format!("tree blob {} stored as a delta", id.short())));
        }
        Ok(BlobRecord {
            id,
            offset,
            length,
            raw_len,
            kind,
            compression,
            base: None,
        })
    }

    /// Offset just past the blob.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }
}

pub fn encode_header_plain(records: &[BlobRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + records.len() * RECORD_LEN);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    encode_records(records, &mut out);
    out
}

/// The records, then the base id of every delta record in record order (format-spec 6.2: the
/// bases section is empty, so absent, when no record is a delta).
pub fn encode_records(records: &[BlobRecord], out: &mut Vec<u8>) {
    for r in records {
        r.encode(out);
    }
    for r in records {
        if let Some(b) = r.base {
            out.extend_from_slice(&b.0);
        }
    }
}

/// Reads `n` records and the bases of their delta records (the inverse of [`encode_records`]).
pub fn decode_records(r: &mut Reader<'_>, n: usize) -> Result<Vec<BlobRecord>> {
    let mut recs = Vec::with_capacity(n);
    for _ in 0..n {
        recs.push(BlobRecord::decode(r)?);
    }
    for rec in recs.iter_mut() {
        if rec.compression == Compression::Delta {
            let base = r.id()?;
            if base == rec.id {
                return Err(r.corrupt(format!("blob {} is a delta on itself", rec.id.short())));
            }
            rec.base = Some(base);
        }
    }
    Ok(recs)
}

/// Decodes a pack's header from the pack's full bytes (or from its tail, given the total size).
/// Checks that blobs are in order, contiguous from offset 38 and end where the header starts.
pub fn decode_header(
    mk: &MasterKey,
    kind: ObjectKind,
    pack: &[u8],
    name: &str,
) -> Result<([u8; 32], Vec<BlobRecord>)> {
    check_prefix(pack, kind, name)?;
    if pack.len() < PACK_HEADER_OFFSET + 4 {
        return Err(Error::corrupt(name, "truncated pack"));
    }
    let salt: [u8; 32] = pack[6..38].try_into().expect("length checked");
    let hlen = u32::from_le_bytes(pack[pack.len() - 4..].try_into().expect("4 bytes")) as usize;
    let hstart = (pack.len() - 4)
        .checked_sub(hlen)
        .filter(|&s| s >= PACK_HEADER_OFFSET)
        .ok_or_else(|| {
            Error::corrupt(
                name,
                format!(
                    "header length {hlen} does not fit in a pack of {} bytes (truncated?)",
                    pack.len()
                ),
            )
        })?;
    let plain = mk
        .object_cipher(&salt)
        .open(
            HEADER_COUNTER,
            &kind.prefix(),
            &pack[hstart..pack.len() - 4],
        )
        .ok_or_else(|| {
            Error::corrupt(
                name,
                "pack header authentication failed (modified or truncated)",
            )
        })?;
    let recs = parse_header(&plain, hstart as u64, name)?;
    Ok((salt, recs))
}

/// The blob records of a decrypted pack header, whose blobs must fill the pack from the first
/// blob's offset up to `header_start`.
pub fn parse_header(plain: &[u8], header_start: u64, name: &str) -> Result<Vec<BlobRecord>> {
    let mut r = Reader::new(plain, name);
    let n = r.count(RECORD_LEN)?;
    let recs = decode_records(&mut r, n)?;
    let mut expect = PACK_HEADER_OFFSET as u64;
    for rec in &recs {
        if u64::from(rec.offset) != expect {
            return Err(Error::corrupt(
                name,
                format!(
                    "blob {} at offset {} where {} was expected",
                    rec.id.short(),
                    rec.offset,
                    expect
                ),
            ));
        }
        expect = rec.end();
    }
    r.finish()?;
    if expect != header_start {
        return Err(Error::corrupt(
            name,
            "blobs do not end where the header starts",
        ));
    }
    Ok(recs)
}
