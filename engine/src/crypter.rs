//! Stage 4: authenticated encryption (AES-256-GCM) and the key hierarchy.
//!
//! Nonce policy (format-spec.md, "Cryptography"): every encrypted object (pack, index, snapshot,
//! config) starts with a fresh random 32-byte salt; its AES key is `keyed_blake3(enc_key, salt)`, so
//! each object has its own key. Items inside one object use the nonce `u64_le(counter) || 0u32`
//! where the counter is the blob's byte offset in its pack (unique), `u64::MAX` for a pack header
//! and 0 for a standalone object. A nonce therefore never repeats under one key.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use crate::hasher::Hasher;

/// Context strings for BLAKE3 `derive_key`; fixed by the spec, never change them.
pub const CTX_ENC: &str = "chunkbak 2026-11-22 v1 encryption key";
pub const CTX_ID: &str = "chunkbak 2026-11-22 v1 blob id key";
pub const CTX_GEAR: &str = "chunkbak 2026-11-22 v1 chunker gear seed";
/// The keyed gear table of repositories with config extension 2 (format-spec 5).
pub const CTX_GEAR_TABLE: &str = "chunkbak 2026-12-06 v1 chunker gear table";

/// Length of the AES-GCM authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;
/// Counter used for the header of a pack (blobs use their offset).
pub const HEADER_COUNTER: u64 = u64::MAX;

/// The repository's master key material and the encryption key derived from it.
#[derive(Clone)]
pub struct MasterKey {
    material: [u8; 32],
    enc_key: [u8; 32],
}

/// The keys that decide chunk boundaries and blob ids, derived from the config's dedup secret
/// (format-spec.md 4.2). Two repositories with the same secret and chunker parameters cut the
/// same data into the same blobs with the same ids, so `copy` between them moves only what the
/// target lacks.
#[derive(Clone)]
pub struct DedupKey {
    id_key: [u8; 32],
    gear_seed: u64,
    gear_table: Box<[u64; 256]>,
}

impl DedupKey {
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let g = blake3::derive_key(CTX_GEAR, secret);
        // 256 entries of 64 bits, all from the secret: the BLAKE3 XOF of the secret in
        // derive-key mode with its own context.
        let mut bytes = [0u8; 256 * 8];
        blake3::Hasher::new_derive_key(CTX_GEAR_TABLE)
            .update(secret)
            .finalize_xof()
            .fill(&mut bytes);
        let mut gear_table = Box::new([0u64; 256]);
        for (t, b) in gear_table.iter_mut().zip(bytes.chunks_exact(8)) {
            *t = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        DedupKey {
            id_key: blake3::derive_key(CTX_ID, secret),
            gear_seed: u64::from_le_bytes(g[..8].try_into().expect("8 bytes")),
            gear_table,
        }
    }

    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.id_key)
    }

    /// The seed of the v1 chunker: the public table XOR one 64-bit value (repositories
    /// without config extension 2).
    pub fn gear_seed(&self) -> u64 {
        self.gear_seed
    }

    /// The keyed gear table (repositories with config extension 2).
    pub fn gear_table(&self) -> &[u64; 256] {
        &self.gear_table
    }

    /// The chunker of a repository: keyed table or legacy seed, as its config says.
    pub fn chunker(
        &self,
        params: crate::chunker::ChunkerParams,
        keyed: bool,
    ) -> crate::Result<crate::chunker::Chunker> {
        if keyed {
            crate::chunker::Chunker::with_table(params, &self.gear_table)
        } else {
            crate::chunker::Chunker::new(params, self.gear_seed)
        }
    }
}

impl MasterKey {
    pub fn from_material(material: [u8; 32]) -> Self {
        MasterKey {
            enc_key: blake3::derive_key(CTX_ENC, &material),
            material,
        }
    }

    pub fn generate() -> Self {
        Self::from_material(random_bytes())
    }

    pub fn material(&self) -> &[u8; 32] {
        &self.material
    }

    /// The cipher of one object, from its salt.
    pub fn object_cipher(&self, salt: &[u8; 32]) -> ObjectCipher {
        let sub = blake3::keyed_hash(&self.enc_key, salt);
        ObjectCipher::new(sub.as_bytes())
    }
}

/// AES-256-GCM under one object's subkey.
pub struct ObjectCipher {
    cipher: Aes256Gcm,
}

/// The 12-byte nonce for item `counter` of an object.
pub fn nonce_for(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    n
}

impl ObjectCipher {
    pub fn new(key: &[u8; 32]) -> Self {
        let key = Key::<Aes256Gcm>::from(*key);
        ObjectCipher {
            cipher: Aes256Gcm::new(&key),
        }
    }

    /// Encrypts `buf` in place and appends the tag.
    pub fn seal_in_place(&self, counter: u64, aad: &[u8], buf: &mut Vec<u8>) {
        let nonce = Nonce::from(nonce_for(counter));
        self.cipher
            .encrypt_in_place(&nonce, aad, buf)
            .expect("AES-GCM encryption of a buffer in memory cannot fail");
    }

    pub fn seal(&self, counter: u64, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(counter, aad, &mut buf);
        buf
    }

    /// Decrypts and authenticates; `None` when the ciphertext or tag is wrong.
    pub fn open(&self, counter: u64, aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.len() < TAG_LEN {
            return None;
        }
        let mut buf = ciphertext.to_vec();
        let nonce = Nonce::from(nonce_for(counter));
        self.cipher.decrypt_in_place(&nonce, aad, &mut buf).ok()?;
        Some(buf)
    }
}

/// Fills a fresh array from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let mk = MasterKey::from_material([7u8; 32]);
        let c = mk.object_cipher(&[1u8; 32]);
        let ct = c.seal(3, b"aad", b"hello");
        assert_eq!(ct.len(), 5 + TAG_LEN);
        assert_eq!(c.open(3, b"aad", &ct).unwrap(), b"hello");
        assert!(c.open(4, b"aad", &ct).is_none(), "wrong counter must fail");
        assert!(c.open(3, b"aaD", &ct).is_none(), "wrong aad must fail");
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(c.open(3, b"aad", &bad).is_none(), "flipped bit must fail");
        let other = mk.object_cipher(&[2u8; 32]);
        assert!(other.open(3, b"aad", &ct).is_none(), "other salt must fail");
    }
}
