//! `diff`: what changed between two snapshots, path by path. Subtrees with the same id are
//! the same and are skipped without being read, so the cost follows the size of the change.

use crate::error::Result;
use crate::format::tree::{Node, NodeKind};
use crate::id::BlobId;
use crate::repo::Repository;

/// How one path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diff {
    /// Only in the second snapshot.
    Added,
    /// Only in the first.
    Removed,
    /// Content (or symlink target, or device number) changed.
    Modified,
    /// A different kind of entry (a file became a directory, ...).
    TypeChanged,
    /// Only metadata (mode, owner, times, xattrs) changed; reported with `metadata`.
    Metadata,
}

impl Diff {
    /// The one-letter code printed before the path (as restic and git do).
    pub fn code(self) -> char {
        match self {
            Diff::Added => '+',
            Diff::Removed => '-',
            Diff::Modified => 'M',
            Diff::TypeChanged => 'T',
            Diff::Metadata => 'U',
        }
    }
}

/// Receives each difference: (path, how, the entry in the first snapshot, in the second).
pub type Report<'a> = dyn FnMut(&[u8], Diff, Option<&Node>, Option<&Node>) + 'a;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiffStats {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub type_changed: u64,
    pub metadata: u64,
    /// Sizes of the files added and removed (a modified file counts its old size as removed
    /// and its new one as added).
    pub bytes_added: u64,
    pub bytes_removed: u64,
}

/// Calls `report(path, diff, old, new)` for every path that differs between the trees `a` and
/// `b`, depth first in name order; paths under an added or removed directory are reported too.
pub fn diff(
    repo: &Repository,
    a: BlobId,
    b: BlobId,
    metadata: bool,
    report: &mut Report<'_>,
) -> Result<DiffStats> {
    let mut d = Differ {
        repo,
        metadata,
        stats: DiffStats::default(),
        report,
    };
    d.trees(b"", Some(a), Some(b))?;
    Ok(d.stats)
}

struct Differ<'a, 'r> {
    repo: &'a Repository,
    metadata: bool,
    stats: DiffStats,
    report: &'r mut Report<'r>,
}

fn same_meta(a: &Node, b: &Node) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.user == b.user
        && a.group == b.group
        && a.mtime == b.mtime
        && a.xattrs == b.xattrs
}

impl Differ<'_, '_> {
    fn emit(&mut self, path: &[u8], d: Diff, old: Option<&Node>, new: Option<&Node>) {
        let s = &mut self.stats;
        let size = |n: Option<&Node>| n.filter(|n| n.kind == NodeKind::File).map_or(0, |n| n.size);
        match d {
            Diff::Added => s.added += 1,
            Diff::Removed => s.removed += 1,
            Diff::Modified => s.modified += 1,
            Diff::TypeChanged => s.type_changed += 1,
            Diff::Metadata => s.metadata += 1,
        }
        if d != Diff::Metadata {
            s.bytes_added += size(new);
            s.bytes_removed += size(old);
        }
        (self.report)(path, d, old, new);
    }

    fn trees(&mut self, prefix: &[u8], a: Option<BlobId>, b: Option<BlobId>) -> Result<()> {
        if a == b {
            return Ok(());
        }
        crate::format::tree::check_depth(prefix)?;
        let load = |t: Option<BlobId>| -> Result<Vec<Node>> {
            t.map_or(Ok(Vec::new()), |t| self.repo.load_dir(&t))
        };
        let (la, lb) = (load(a)?, load(b)?);
        let (mut i, mut j) = (0, 0);
        while i < la.len() || j < lb.len() {
            let ord = match (la.get(i), lb.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let (x, y) = match ord {
                std::cmp::Ordering::Less => {
                    i += 1;
                    (Some(&la[i - 1]), None)
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    (None, Some(&lb[j - 1]))
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    (Some(&la[i - 1]), Some(&lb[j - 1]))
                }
            };
            let name = &x.or(y).expect("one side").name;
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(name);
            self.entry(&path, x, y)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &[u8], x: Option<&Node>, y: Option<&Node>) -> Result<()> {
        let sub = |n: Option<&Node>| {
            n.filter(|n| n.kind == NodeKind::Dir)
                .and_then(|n| n.subtree)
        };
        match (x, y) {
            (Some(x), None) => {
                self.emit(path, Diff::Removed, Some(x), None);
                self.trees(path, sub(Some(x)), None)
            }
            (None, Some(y)) => {
                self.emit(path, Diff::Added, None, Some(y));
                self.trees(path, None, sub(Some(y)))
            }
            (Some(x), Some(y)) if x.kind != y.kind => {
                self.emit(path, Diff::TypeChanged, Some(x), Some(y));
                self.trees(path, sub(Some(x)), sub(Some(y)))
            }
            (Some(x), Some(y)) => {
                let changed = match x.kind {
                    NodeKind::File => x.content != y.content || x.size != y.size,
                    NodeKind::Symlink => x.link_target != y.link_target,
                    NodeKind::CharDevice | NodeKind::BlockDevice => x.rdev != y.rdev,
                    _ => false,
                };
                if changed {
                    self.emit(path, Diff::Modified, Some(x), Some(y));
                } else if self.metadata && !same_meta(x, y) {
                    self.emit(path, Diff::Metadata, Some(x), Some(y));
                }
                self.trees(path, sub(Some(x)), sub(Some(y)))
            }
            (None, None) => Ok(()),
        }
    }
}
