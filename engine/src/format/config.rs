//! The repository config. Payload of an envelope of kind Config: `bincode(Config)`.

use bincode::{Decode, Encode};

use super::{bincode_decode, bincode_encode};
use crate::backend::StorageClass;
use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Config {
    /// Repository format version (1).
    pub version: u32,
    /// Random id of the repository.
    pub repo_id: [u8; 32],
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    pub chunk_normalization: u8,
    /// Target size of data packs, bytes.
    pub data_pack_size: u32,
    /// Target size of tree packs, bytes.
    pub tree_pack_size: u32,
    /// zstd level for blobs; 0 stores everything uncompressed.
    pub compression_level: i32,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Storage class of data packs ([`StorageClass`] code): any class, archive classes included.
    pub data_storage_class: u8,
    /// Storage class of tree packs, index files and snapshots: a class readable at once.
    pub meta_storage_class: u8,
    /// Secret from which blob ids and the chunker's gear seed derive (format-spec.md 4.2):
    /// random, or another repository's (`init --copy-chunker-params`) so dedup carries over.
    pub dedup_secret: [u8; 32],
}

pub const DEFAULT_DATA_PACK_SIZE: u32 = 32 << 20;
pub const DEFAULT_TREE_PACK_SIZE: u32 = 4 << 20;
/// Largest pack size the format allows (offsets are u32).
pub const MAX_PACK_SIZE: u32 = 1 << 30;

impl Config {
    pub fn chunker_params(&self) -> ChunkerParams {
        ChunkerParams {
            min_size: self.chunk_min,
            avg_size: self.chunk_avg,
            max_size: self.chunk_max,
            normalization: self.chunk_normalization,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.version != 1 {
            return Err(Error::Config(format!(
                "repository format version {} is not supported (this chunkbak reads version 1)",
                self.version
            )));
        }
        self.chunker_params().validate()?;
        for (what, v) in [("data", self.data_pack_size), ("tree", self.tree_pack_size)] {
            if !(64 * 1024..=MAX_PACK_SIZE).contains(&v) {
                return Err(Error::Config(format!(
                    "{what} pack size {v} outside 64 KiB..=1 GiB"
                )));
            }
        }
        if !(0..=22).contains(&self.compression_level) {
            return Err(Error::Config(format!(
                "compression level {} outside 0..=22",
                self.compression_level
            )));
        }
        if StorageClass::from_code(self.data_storage_class).is_none() {
            return Err(Error::Config(format!(
                "unknown data storage class code {}",
                self.data_storage_class
            )));
        }
        match StorageClass::from_code(self.meta_storage_class) {
            Some(c) if !c.is_archive() => {}
            _ => {
                return Err(Error::Config(format!(
                    "metadata storage class code {} is not a class readable at once",
                    self.meta_storage_class
                )))
            }
        }
        Ok(())
    }

    /// The keys that decide chunk boundaries and blob ids.
    pub fn dedup_key(&self) -> crate::crypter::DedupKey {
        crate::crypter::DedupKey::from_secret(&self.dedup_secret)
    }

    /// Whether blobs of `other` have the same ids here: same secret and chunker parameters.
    pub fn same_dedup(&self, other: &Config) -> bool {
        self.dedup_secret == other.dedup_secret && self.chunker_params() == other.chunker_params()
    }

    pub fn data_class(&self) -> StorageClass {
        StorageClass::from_code(self.data_storage_class).unwrap_or_default()
    }

    pub fn meta_class(&self) -> StorageClass {
        StorageClass::from_code(self.meta_storage_class).unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode_encode(self)
    }

    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let c: Config = bincode_decode(bytes, name)?;
        c.validate()?;
        Ok(c)
    }
}
