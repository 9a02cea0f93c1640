//! Encrypted standalone objects (config, snapshot, index):
//! `prefix(6) || salt(32) || AES-256-GCM(subkey(salt), nonce(0), aad = prefix, body)` where
//! `body = compression(1) || raw_len(u64) || payload`.

use super::{check_prefix, ObjectKind, Reader};
use crate::compressor::{compress, decompress, Compression};
use crate::crypter::{random_bytes, MasterKey, TAG_LEN};
use crate::error::{Error, Result};

/// Largest plaintext an envelope may declare (bounds allocation on decode).
pub const MAX_RAW: u64 = 1 << 30;
pub const HEADER_LEN: usize = 6 + 32;

pub fn seal(mk: &MasterKey, kind: ObjectKind, payload: &[u8]) -> Vec<u8> {
    seal_with_salt(mk, kind, payload, random_bytes())
}

pub fn seal_with_salt(mk: &MasterKey, kind: ObjectKind, payload: &[u8], salt: [u8; 32]) -> Vec<u8> {
    let (c, data) = compress(payload, 3);
    let mut body = Vec::with_capacity(9 + data.len() + TAG_LEN);
    body.push(c as u8);
    body.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    body.extend_from_slice(&data);
    let prefix = kind.prefix();
    mk.object_cipher(&salt).seal_in_place(0, &prefix, &mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&body);
    out
}

pub fn open(mk: &MasterKey, kind: ObjectKind, bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    check_prefix(bytes, kind, name)?;
    let mut r = Reader::new(bytes, name);
    let prefix = r.bytes(6)?;
    let salt: [u8; 32] = r.array()?;
    let ct = r.bytes(r.remaining())?;
    let body = mk.object_cipher(&salt).open(0, prefix, ct).ok_or_else(|| {
        Error::corrupt(
            name,
            "authentication failed (the object was modified or truncated, or belongs to another repository)",
        )
    })?;
    let mut b = Reader::new(&body, name);
    let c = Compression::from_u8(b.u8()?).ok_or_else(|| b.corrupt("unknown compression"))?;
    let raw_len = b.u64()?;
    if raw_len > MAX_RAW {
        return Err(b.corrupt(format!("declared length {raw_len} too large")));
    }
    let payload = b.bytes(b.remaining())?.to_vec();
    decompress(c, payload, raw_len as usize, name)
}
