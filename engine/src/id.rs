//! 32-byte identifiers: blob ids (keyed BLAKE3 of plaintext) and object ids (BLAKE3 of stored bytes).

use std::fmt;

/// A 32-byte identifier, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, bincode::Encode, bincode::Decode)]
pub struct Id(pub [u8; 32]);

/// Byte order (lexicographic, as the hex), compared as two big-endian 128-bit words: sorting
/// and merging the index's tens of millions of ids spent a sixth of their time in `memcmp`.
pub fn cmp_bytes(a: &[u8; 32], b: &[u8; 32]) -> std::cmp::Ordering {
    let w = |x: &[u8; 32], i: usize| u128::from_be_bytes(x[i..i + 16].try_into().expect("16"));
    w(a, 0).cmp(&w(b, 0)).then_with(|| w(a, 16).cmp(&w(b, 16)))
}

impl Ord for Id {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_bytes(&self.0, &other.0)
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

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

    /// The id a stored object's name spells, in the one spelling names have (lower-case
    /// hex): another spelling of an id is another object.
    pub fn of_name(name: &str) -> Option<Id> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Id::from_hex(name)
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
