//! `check` (structure): every snapshot's trees load and every blob they reference is in the
//! index; every indexed pack exists in the store with the size the index records. Reads only
//! metadata (index files, snapshots, tree packs) and listings: never a data pack, so it costs
//! no Glacier retrieval.

use std::collections::{HashMap, HashSet};

use crate::backend::FileKind;
use crate::error::Result;
use crate::format::tree::{Content, NodeKind};
use crate::id::BlobId;
use crate::repo::Repository;

/// What `check` found. `problems` name the object (and path) they concern.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub snapshots: u64,
    pub trees: u64,
    pub packs: u64,
    pub blobs: u64,
    /// Packs in the store that no index names (left by interrupted backups; prune removes
    /// them). Not a problem.
    pub unindexed_packs: u64,
    pub problems: Vec<String>,
}

/// Checks the repository's structure. The index must be loaded.
pub fn check(repo: &Repository) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let backend = repo.backend();
    let mut stored: HashMap<String, u64> = HashMap::new();
    for fk in [FileKind::Data, FileKind::Tree] {
        for o in backend.list_info(fk)? {
            stored.insert(o.name, o.size);
        }
    }
    {
        let idx = repo.index().read().expect("index lock");
        let mut indexed = HashSet::new();
        for p in idx.packs() {
            r.packs += 1;
            let name = p.id.to_hex();
            let path = FileKind::of_pack(p.kind).path_of(&name);
            match stored.get(&name) {
                None => r.problems.push(format!(
                    "pack {path} is in the index but missing from the repository \
                     (its blobs are lost: `chunkbak repair` can drop them from snapshots)"
                )),
                Some(&n) if n != p.size => r.problems.push(format!(
                    "pack {path} has {n} bytes, the index records {} (truncated or replaced?)",
                    p.size
                )),
                Some(_) => {}
            }
            indexed.insert(name);
        }
        r.unindexed_packs = stored.keys().filter(|n| !indexed.contains(*n)).count() as u64;
    }
    let snaps = repo.snapshots()?;
    let mut seen_trees: HashSet<BlobId> = HashSet::new();
    let mut seen_blobs: HashSet<BlobId> = HashSet::new();
    for (id, s) in &snaps {
        if crate::ops::interrupted() {
            return Err(crate::Error::Interrupted);
        }
        r.snapshots += 1;
        let what = format!("snapshot {}", id.short());
        let mut stack = vec![(s.tree, String::new())];
        while let Some((tree, path)) = stack.pop() {
            if !seen_trees.insert(tree) {
                continue;
            }
            r.trees += 1;
            if !repo.index().read().expect("index lock").contains(&tree) {
                r.problems.push(format!(
                    "{what}: tree {} of {} is not in the index",
                    tree.short(),
                    if path.is_empty() { "/" } else { &path }
                ));
                continue;
            }
            let nodes = match repo.load_dir(&tree) {
                Ok(n) => n,
                Err(e) => {
                    r.problems.push(format!(
                        "{what}: directory {}: {e}",
                        if path.is_empty() { "/" } else { &path }
                    ));
                    continue;
                }
            };
            for n in nodes {
                let p = format!("{path}/{}", n.name_lossy());
                match n.kind {
                    NodeKind::Dir => {
                        if let Some(t) = n.subtree {
                            stack.push((t, p));
                        }
                    }
                    NodeKind::File => {
                        if let Content::Indirect(lists) = &n.content {
                            for l in lists {
                                if !repo.index().read().expect("index lock").contains(l) {
                                    r.problems.push(format!(
                                        "{what}: {p}: chunk list {} is not in the index",
                                        l.short()
                                    ));
                                }
                            }
                        }
                        let chunks = match repo.file_chunks(&n.content) {
                            Ok(c) => c,
                            Err(e) => {
                                r.problems.push(format!("{what}: {p}: {e}"));
                                continue;
                            }
                        };
                        let idx = repo.index().read().expect("index lock");
                        for c in chunks {
                            if seen_blobs.insert(c) {
                                r.blobs += 1;
                                if !idx.contains(&c) {
                                    r.problems.push(format!(
                                        "{what}: {p}: chunk {} is not in the index",
                                        c.short()
                                    ));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(r)
}
