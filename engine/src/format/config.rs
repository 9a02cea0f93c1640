//! The repository config. Payload of an envelope of kind Config: `bincode(Config)`.

use bincode::{Decode, Encode};

use super::bincode_encode;
use crate::backend::{LockMode, ObjectLock, StorageClass};
use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// S3 Object Lock every writer applies (format-spec 9, extension record 1).
    pub object_lock: Option<ObjectLock>,
    /// The chunker's gear table is keyed whole (format-spec 5; extension record 2). False in
    /// repositories made before 2026-12-06, which keep their chunker.
    pub keyed_gear: bool,
}

/// The fixed part of the config payload (format-spec 9), before its extension records.
#[derive(Encode, Decode)]
struct Base {
    version: u32,
    repo_id: [u8; 32],
    chunk_min: u32,
    chunk_avg: u32,
    chunk_max: u32,
    chunk_normalization: u8,
    data_pack_size: u32,
    tree_pack_size: u32,
    compression_level: i32,
    created: i64,
    data_storage_class: u8,
    meta_storage_class: u8,
    dedup_secret: [u8; 32],
}

/// Extension record tag of the Object Lock settings: `u8 mode || u32 days`.
const EXT_OBJECT_LOCK: u8 = 1;
/// Extension record tag of the keyed gear table (empty body).
const EXT_KEYED_GEAR: u8 = 2;
/// Longest extension record a reader accepts.
const MAX_EXT_LEN: u32 = 4096;

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
        if let Some(l) = self.object_lock {
            if !(1..=ObjectLock::MAX_DAYS).contains(&l.days) {
                return Err(Error::Config(format!(
                    "Object Lock retention of {} days outside 1..={}",
                    l.days,
                    ObjectLock::MAX_DAYS
                )));
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
        self.dedup_secret == other.dedup_secret
            && self.chunker_params() == other.chunker_params()
            && self.keyed_gear == other.keyed_gear
    }

    /// This repository's chunker.
    pub fn chunker(&self) -> Result<crate::chunker::Chunker> {
        self.dedup_key()
            .chunker(self.chunker_params(), self.keyed_gear)
    }

    pub fn data_class(&self) -> StorageClass {
        StorageClass::from_code(self.data_storage_class).unwrap_or_default()
    }

    pub fn meta_class(&self) -> StorageClass {
        StorageClass::from_code(self.meta_storage_class).unwrap_or_default()
    }

    /// The payload: the fixed part, then one record `u8 tag || u32 length || body` per
    /// setting that is on (none for a repository without Object Lock).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = bincode_encode(&Base {
            version: self.version,
            repo_id: self.repo_id,
            chunk_min: self.chunk_min,
            chunk_avg: self.chunk_avg,
            chunk_max: self.chunk_max,
            chunk_normalization: self.chunk_normalization,
            data_pack_size: self.data_pack_size,
            tree_pack_size: self.tree_pack_size,
            compression_level: self.compression_level,
            created: self.created,
            data_storage_class: self.data_storage_class,
            meta_storage_class: self.meta_storage_class,
            dedup_secret: self.dedup_secret,
        });
        if self.keyed_gear {
            out.push(EXT_KEYED_GEAR);
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        if let Some(l) = self.object_lock {
            out.push(EXT_OBJECT_LOCK);
            out.extend_from_slice(&5u32.to_le_bytes());
            out.push(l.mode.code());
            out.extend_from_slice(&l.days.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let (b, used): (Base, usize) =
            bincode::decode_from_slice(bytes, super::BINCODE.with_limit::<{ 64 << 10 }>())
                .map_err(|e| Error::corrupt(name, format!("decoding: {e}")))?;
        let mut c = Config {
            version: b.version,
            repo_id: b.repo_id,
            chunk_min: b.chunk_min,
            chunk_avg: b.chunk_avg,
            chunk_max: b.chunk_max,
            chunk_normalization: b.chunk_normalization,
            data_pack_size: b.data_pack_size,
            tree_pack_size: b.tree_pack_size,
            compression_level: b.compression_level,
            created: b.created,
            data_storage_class: b.data_storage_class,
            meta_storage_class: b.meta_storage_class,
            dedup_secret: b.dedup_secret,
            object_lock: None,
            keyed_gear: false,
        };
        let mut rest = &bytes[used..];
        while let [tag, l0, l1, l2, l3, tail @ ..] = rest {
            let len = u32::from_le_bytes([*l0, *l1, *l2, *l3]);
            if len > MAX_EXT_LEN || len as usize > tail.len() {
                return Err(Error::corrupt(
                    name,
                    format!("extension record {tag} of {len} bytes runs past the end"),
                ));
            }
            let (body, after) = tail.split_at(len as usize);
            match (*tag, body) {
                (EXT_OBJECT_LOCK, [mode, d0, d1, d2, d3]) if c.object_lock.is_none() => {
                    let mode = LockMode::from_code(*mode).ok_or_else(|| {
                        Error::corrupt(name, format!("unknown Object Lock mode {mode}"))
                    })?;
                    c.object_lock = Some(ObjectLock {
                        mode,
                        days: u32::from_le_bytes([*d0, *d1, *d2, *d3]),
                    });
                }
                (EXT_OBJECT_LOCK, _) => {
                    return Err(Error::corrupt(name, "malformed Object Lock record"))
                }
                (EXT_KEYED_GEAR, []) if !c.keyed_gear => c.keyed_gear = true,
                (EXT_KEYED_GEAR, _) => {
                    return Err(Error::corrupt(name, "malformed keyed gear record"))
                }
                // A setting this version does not know may oblige every writer (as the
                // Object Lock does): refuse rather than write without it.
                (t, _) => {
                    return Err(Error::Config(format!(
                        "the repository uses a setting (config extension {t}) this version \
                         of chunkbak does not know: upgrade chunkbak"
                    )))
                }
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(Error::corrupt(
                name,
                format!("{} trailing bytes", rest.len()),
            ));
        }
        c.validate()?;
        Ok(c)
    }
}
