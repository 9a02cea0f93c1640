//! 32-byte identifiers: blob ids (keyed BLAKE3 of plaintext) and object ids (BLAKE3 of stored bytes).

use std::fmt;

/// A 32-byte identifier, shown as 64 lowercase hex digits.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, bincode::Encode, bincode::Decode,
)]
pub struct Id(pub [u8; 32]);

/// Id of a blob: keyed BLAKE3 of its plaintext.
pub type BlobId = Id;
/// Id of a stored object (pack, index, snapshot, key): BLAKE3 of its bytes.
pub type ObjectId = Id;

impl Id {
    pub const fn from_bytes(b: [u8; 32]) -> Id {
        Id(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn from_hex(s: &str) -> Option<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }

    /// BLAKE3 (unkeyed) of bytes: the name of a stored object.
    pub fn of_object(bytes: &[u8]) -> Id {
        Id(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}
