//! Snapshots: the commit point of a backup. Payload of an envelope of kind Snapshot:
//! `bincode(Snapshot)`.

use bincode::{Decode, Encode};

use super::tree::Timespec;
use super::{bincode_decode, bincode_encode};
use crate::error::Result;
use crate::id::{BlobId, Id};

#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unchanged: u64,
    /// Bytes read from files and stdin.
    pub bytes_read: u64,
    /// Logical size of all files in the snapshot.
    pub bytes_total: u64,
    /// Bytes of new blobs stored (after compression and encryption).
    pub bytes_added: u64,
    pub blobs_added: u64,
    /// Entries that could not be read and are missing from the snapshot.
    pub errors: u64,
    pub start: Timespec,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Snapshot {
    pub time: Timespec,
    pub host: String,
    pub username: String,
    pub uid: u32,
    pub gid: u32,
    /// The backed-up paths as given, absolute, raw bytes.
    pub paths: Vec<Vec<u8>>,
    pub tags: Vec<String>,
    pub excludes: Vec<String>,
    pub tree: BlobId,
    pub parent: Option<Id>,
    pub program_version: String,
    pub summary: Summary,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        bincode_encode(self)
    }

    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        bincode_decode(bytes, name)
    }

    pub fn paths_lossy(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}
