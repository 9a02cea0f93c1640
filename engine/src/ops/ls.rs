//! Walking a snapshot's trees: `ls`, and the planning walk of `restore`.

use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};
use crate::id::BlobId;
use crate::repo::Repository;

/// Splits a path inside a snapshot into its components (empty for the root).
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

/// The node at `path` (None for the root itself, whose tree is `root`).
pub fn find(repo: &Repository, root: BlobId, path: &[u8]) -> Result<Option<Node>> {
    let comps = components(path);
    let mut tree = root;
    let mut found = None;
    for (i, c) in comps.iter().enumerate() {
        let nodes = repo.load_dir(&tree)?;
        let n = nodes.into_iter().find(|n| n.name == *c).ok_or_else(|| {
            Error::NotFound(format!(
                "{} is not in the snapshot",
                String::from_utf8_lossy(path)
            ))
        })?;
        if i + 1 < comps.len() {
            tree = match (n.kind, n.subtree) {
                (NodeKind::Dir, Some(t)) => t,
                _ => {
                    return Err(Error::NotFound(format!(
                        "{} is not in the snapshot ({} is not a directory)",
                        String::from_utf8_lossy(path),
                        n.name_lossy()
                    )))
                }
            };
        }
        found = Some(n);
    }
    Ok(found)
}

/// Calls `visit(path, node)` for every entry below `tree`, depth first in name order; `prefix`
/// is the path of `tree` itself ("" or "/a/b"). `visit` returns whether to descend into a dir.
pub fn walk(
    repo: &Repository,
    tree: BlobId,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<()> {
    crate::format::tree::check_depth(prefix)?;
    for n in repo.load_dir(&tree)? {
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(&n.name);
        let descend = visit(&path, &n)?;
        if descend && n.kind == NodeKind::Dir {
            if let Some(t) = n.subtree {
                walk(repo, t, &path, visit)?;
            }
        }
    }
    Ok(())
}
