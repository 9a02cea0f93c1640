//! Storage backends: where objects live. Every backend passes the same conformance tests
//! (`engine/tests/backend.rs`). The trait is synchronous; an async store (S3) runs its own runtime.

pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

use std::path::{Path, PathBuf};

use crate::error::Result;

/// The folders (key prefixes) of a repository. Only `Data` may ever move to an archive storage
/// class; everything else is metadata and stays readable at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Config,
    Key,
    Snapshot,
    Index,
    Data,
    Tree,
    Lock,
}

impl FileKind {
    pub const ALL: [FileKind; 7] = [
        FileKind::Config,
        FileKind::Key,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Data,
        FileKind::Tree,
        FileKind::Lock,
    ];

    /// The folder of this kind, relative to the repository root.
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Snapshot => "snapshots",
            FileKind::Index => "index",
            FileKind::Data => "data",
            FileKind::Tree => "tree",
            FileKind::Lock => "locks",
        }
    }

    /// The folder of packs of a kind (`DataPack` → `Data`, `TreePack` → `Tree`).
    pub fn of_pack(kind: crate::format::ObjectKind) -> FileKind {
        match kind {
            crate::format::ObjectKind::TreePack => FileKind::Tree,
            _ => FileKind::Data,
        }
    }

    /// The kind of the packs in this folder.
    pub fn pack_kind(self) -> crate::format::ObjectKind {
        match self {
            FileKind::Tree => crate::format::ObjectKind::TreePack,
            _ => crate::format::ObjectKind::DataPack,
        }
    }

    /// Packs are fanned out over 256 sub-folders named by the first two hex digits.
    pub fn fanned_out(self) -> bool {
        matches!(self, FileKind::Data | FileKind::Tree)
    }

    /// Relative path of an object: `config`, `keys/<name>`, `data/ab/<name>`, ...
    pub fn path_of(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            k if k.fanned_out() && name.len() >= 2 => {
                format!("{}/{}/{}", k.dir(), &name[..2], name)
            }
            k => format!("{}/{}", k.dir(), name),
        }
    }
}

/// An object store holding one repository.
pub trait Backend: Send + Sync {
    /// Where the repository is, for messages.
    fn location(&self) -> String;
    /// Creates the layout of a new repository (folders, where the store has them).
    fn create(&self) -> Result<()>;
    /// Whether an object exists.
    fn exists(&self, kind: FileKind, name: &str) -> Result<bool>;
    /// Stores an object atomically: readers see all of it or nothing.
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// Stores the contents of a local file (a finished pack), consuming the file.
    fn put_file(&self, kind: FileKind, name: &str, path: &Path) -> Result<()> {
        let data = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
        self.put(kind, name, &data)?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    /// `len` bytes from `offset`; an error if the object is shorter.
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Names and sizes of all objects of a kind.
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>>;
    fn delete(&self, kind: FileKind, name: &str) -> Result<()>;
    /// A local folder for temporary pack files, on the same file system as the repository
    /// where that makes `put_file` a rename.
    fn temp_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }
}
