//! Tree blobs: one per directory (split for huge directories), content-addressed and encoded
//! deterministically, so an unchanged directory has the same id in every snapshot.
//! Encoding: `version(1) = 1 || bincode(TreeBlob)` (format-spec.md, "Trees").

use bincode::{Decode, Encode};

use super::{bincode_decode, bincode_encode};
use crate::error::{Error, Result};
use crate::id::BlobId;

pub const TREE_VERSION: u8 = 1;
/// Directories with more entries than this are split into several `Dir` blobs.
pub const SPLIT_THRESHOLD: usize = 8192;
/// Largest plaintext of a tree blob (format-spec 8.2): readers refuse longer ones before they
/// allocate; writers cut a directory's parts well below it.
pub const MAX_TREE_BLOB: u32 = 64 << 20;
/// Writers start a new part of a split directory once a part's entries take this much.
pub const PART_BYTES: usize = 16 << 20;
/// Deepest directory nesting a snapshot may hold (format-spec 8.2); deeper trees are refused
/// by readers (a clean error, not a stack overflow) and never written by backups.
pub const MAX_TREE_DEPTH: usize = 1024;

/// Refuses a snapshot path deeper than [`MAX_TREE_DEPTH`] (names hold no `/`, so the slashes
/// count the levels).
pub fn check_depth(path: &[u8]) -> Result<()> {
    let depth = path.iter().filter(|&&b| b == b'/').count();
    if depth > MAX_TREE_DEPTH {
        let shown = String::from_utf8_lossy(&path[..path.len().min(120)]).into_owned();
        return Err(Error::corrupt(
            format!("tree at {shown}..."),
            format!(
                "directories nest deeper than {MAX_TREE_DEPTH} levels (damaged or forged tree?)"
            ),
        ));
    }
    Ok(())
}

/// About how many bytes a node takes encoded (for cutting parts by size).
pub fn encoded_size(n: &Node) -> usize {
    let ids = match &n.content {
        Content::Chunks(c) | Content::Indirect(c) => c.len(),
    };
    128 + n.name.len()
        + n.link_target.len()
        + n.xattrs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
        + 32 * ids
}
/// Files with more chunks than this keep their chunk list in `ChunkList` blobs.
pub const INLINE_CHUNKS: usize = 8192;

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Timespec {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub enum NodeKind {
    #[default]
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Where a file's chunk ids are.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Content {
    /// The ids of the file's data blobs, in order.
    Chunks(Vec<BlobId>),
    /// Ids of `ChunkList` tree blobs whose concatenation is the chunk list.
    Indirect(Vec<BlobId>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Chunks(Vec::new())
    }
}

/// One directory entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Node {
    /// File name as raw bytes (not necessarily UTF-8).
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// `st_mode` (file type bits and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub size: u64,
    pub inode: u64,
    pub device: u64,
    pub nlink: u64,
    /// Device number of character and block devices.
    pub rdev: u64,
    /// Target of a symlink, raw bytes.
    pub link_target: Vec<u8>,
    /// Extended attributes (name, value), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Content,
    /// Tree blob of a directory.
    pub subtree: Option<BlobId>,
}

impl Node {
    /// Files with more than one link and the same (device, inode) are one hardlink group.
    pub fn hardlink_key(&self) -> Option<(u64, u64)> {
        (self.kind == NodeKind::File && self.nlink > 1).then_some((self.device, self.inode))
    }

    /// A name a restore may create: not empty, `.` or `..`, and without `/` or NUL.
    pub fn has_safe_name(&self) -> bool {
        !self.name.is_empty()
            && self.name != b"."
            && self.name != b".."
            && !self.name.iter().any(|&b| b == b'/' || b == 0)
    }

    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum TreeBlob {
    /// Entries of a directory (or of one part of a split directory), sorted by name.
    Dir(Vec<Node>),
    /// A huge directory: the ids of its `Dir` parts, in name order.
    Split(Vec<BlobId>),
    /// A slice of a huge file's chunk list.
    ChunkList(Vec<BlobId>),
}

impl TreeBlob {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TREE_VERSION];
        out.extend_from_slice(&bincode_encode(self));
        out
    }

    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        match bytes.split_first() {
            Some((&TREE_VERSION, rest)) => {
                let t: TreeBlob = bincode_decode(rest, name)?;
                if let TreeBlob::Dir(nodes) = &t {
                    check_order(nodes, name)?;
                }
                Ok(t)
            }
            Some((v, _)) => Err(Error::corrupt(
                name,
                format!("tree version {v} not supported"),
            )),
            None => Err(Error::corrupt(name, "empty tree blob")),
        }
    }
}

/// A directory's entries must be in strictly increasing name order (format-spec 8.2): two
/// entries of one name (a symlink, then a file through it) are refused wherever the tree is
/// read.
pub fn check_order(nodes: &[Node], name: &str) -> Result<()> {
    match nodes.windows(2).find(|w| w[0].name >= w[1].name) {
        None => Ok(()),
        Some(w) => Err(Error::corrupt(
            name,
            format!(
                "entry {:?} follows {:?}: directory entries must be in strictly increasing \
                 name order, each name once (damaged or forged tree?)",
                w[1].name_lossy(),
                w[0].name_lossy()
            ),
        )),
    }
}
