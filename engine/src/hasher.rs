//! Stage 2: blob ids. A blob's id is BLAKE3 keyed with the repository's id key, so a reader of the
//! bucket cannot confirm that a known plaintext is stored. Dedup short-circuits right after this.

use crate::id::BlobId;

/// Computes keyed blob ids.
#[derive(Clone)]
pub struct Hasher {
    key: [u8; 32],
}

impl Hasher {
    pub fn new(key: [u8; 32]) -> Self {
        Hasher { key }
    }

    pub fn id(&self, plaintext: &[u8]) -> BlobId {
        BlobId::from_bytes(*blake3::keyed_hash(&self.key, plaintext).as_bytes())
    }
}
