//! `find`: which snapshots hold paths matching patterns. A directory whose tree id (at the same
//! path) was searched in an earlier snapshot is not read again: its matches are remembered, so
//! searching a hundred snapshots of a mostly unchanged tree costs little more than one.

use std::collections::HashMap;

use globset::GlobSet;

use super::pattern::matches;
use crate::error::Result;
use crate::format::tree::{Node, NodeKind};
use crate::id::BlobId;
use crate::repo::Repository;

/// A matching path and its entry.
pub type Match = (Vec<u8>, Node);

/// Matches below one directory that are remembered for the next snapshot.
const MEMO_MAX: usize = 10_000;

/// Searches snapshot trees for paths matching a pattern set.
pub struct Finder<'a> {
    repo: &'a Repository,
    set: GlobSet,
    /// (tree id, its path) → the matches below it.
    memo: HashMap<(BlobId, Vec<u8>), Vec<Match>>,
}

impl<'a> Finder<'a> {
    pub fn new(repo: &'a Repository, set: GlobSet) -> Self {
        Finder {
            repo,
            set,
            memo: HashMap::new(),
        }
    }

    /// The matches in the snapshot tree `root`: (path, node), depth first in name order.
    pub fn search(&mut self, root: BlobId) -> Result<Vec<Match>> {
        self.below(root, b"")
    }

    fn below(&mut self, tree: BlobId, prefix: &[u8]) -> Result<Vec<Match>> {
        let key = (tree, prefix.to_vec());
        if let Some(m) = self.memo.get(&key) {
            return Ok(m.clone());
        }
        crate::format::tree::check_depth(prefix)?;
        let mut out = Vec::new();
        for n in self.repo.load_dir(&tree)? {
            if crate::ops::interrupted() {
                return Err(crate::stop::error(String::new));
            }
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(&n.name);
            let sub = (n.kind == NodeKind::Dir).then_some(n.subtree).flatten();
            if matches(&self.set, &path) {
                out.push((path.clone(), n));
            }
            if let Some(t) = sub {
                out.extend(self.below(t, &path)?);
            }
        }
        // Huge match lists (a pattern such as `*`) are not kept: they would cost more memory
        // than reading the trees again costs time.
        if out.len() <= MEMO_MAX {
            self.memo.insert(key, out.clone());
        }
        Ok(out)
    }
}
