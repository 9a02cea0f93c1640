//! The snapshots' trees walked for the used blobs (in memory), and the tree step both plans
//! share ([`walk_tree`]).

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::format::tree::NodeKind;
use crate::id::{BlobId, Id};
use crate::repo::Repository;

use super::PrunePlan;

/// Every blob the snapshots use: trees, chunk lists and data chunks (a plan in memory: its
/// index is small, and the trees are in it). The trees walked are kept apart from the used
/// blobs: a file whose bytes are a directory's tree blob has that tree's id (ids hash the
/// plaintext, whatever the kind), and reached first as a chunk it must not stop the tree from
/// being walked, or everything under the directory would look unused (tests/prune_walk.rs).
pub(super) fn used_blobs(repo: &Repository, plan: &mut PrunePlan) -> Result<HashSet<BlobId>> {
    let snaps = snapshots_to_walk(repo, plan)?;
    let mut trees: HashSet<BlobId> = HashSet::new();
    let mut used: HashSet<BlobId> = HashSet::new();
    for (sid, s) in &snaps {
        let mut stack = vec![s.tree];
        while let Some(tree) = stack.pop() {
            if crate::ops::interrupted() {
                return Err(crate::stop::error(String::new));
            }
            if !trees.insert(tree) {
                continue;
            }
            used.insert(tree);
            let mut blob = |id| {
                used.insert(id);
                Ok(())
            };
            let mut subtree = |id| {
                stack.push(id);
                Ok(())
            };
            walk_tree(repo, &tree, &mut blob, &mut subtree)?.map_err(|e| stop(sid, e))?;
        }
    }
    Ok(used)
}

/// The snapshots to walk (counted into the plan), once the index files that backups
/// committed after the index was read are read too, so their trees load. Their packs are not
/// prune's to decide (the files stay in force); their blobs are accounted for.
pub(super) fn snapshots_to_walk(
    repo: &Repository,
    plan: &mut PrunePlan,
) -> Result<Vec<(Id, crate::format::snapshot::Snapshot)>> {
    let snaps = repo.snapshots()?;
    plan.snapshots = snaps.len() as u64;
    let mut read: HashSet<Id> = plan.read_files.iter().copied().collect();
    for (_, f) in repo.read_new_index_files(&mut read)? {
        let mut idx = repo.index().write().expect("index lock");
        for p in &f.packs {
            idx.add_pack(p);
            plan.late_blobs.extend(p.blobs.iter().map(|b| b.id));
        }
    }
    Ok(snaps)
}

/// One tree of a walk: the parts of a split directory, its files' chunk lists and chunks go
/// to `blob`, its subdirectories' trees to `subtree`. A part at a time, a chunk list at a
/// time: a directory of large files is hundreds of MB decoded, a volume's chunk list millions
/// of ids. `Err`: an error of `blob` or `subtree` (their sorts), as it is; `Ok(Err)`: a read
/// error, which the caller words as a stop.
pub(super) fn walk_tree(
    repo: &Repository,
    tree: &BlobId,
    blob: &mut dyn FnMut(BlobId) -> Result<()>,
    subtree: &mut dyn FnMut(BlobId) -> Result<()>,
) -> Result<Result<()>> {
    let mut work = crate::repo::WorkError::default();
    let walked = repo.each_dir_part(tree, &mut |part, nodes| {
        if let Some(p) = part {
            work.keep(blob(p))?;
        }
        for n in nodes {
            match n.kind {
                NodeKind::Dir => {
                    if let Some(t) = n.subtree {
                        work.keep(subtree(t))?;
                    }
                }
                NodeKind::File => {
                    if let crate::format::tree::Content::Indirect(lists) = &n.content {
                        for l in lists {
                            work.keep(blob(*l))?;
                        }
                    }
                    repo.each_file_chunk(&n.content, &mut |c| work.keep(blob(c)))?;
                }
                _ => {}
            }
        }
        Ok(())
    });
    work.split(walked)
}

pub(super) fn stop(sid: &Id, e: Error) -> Error {
    Error::Other(format!(
        "snapshot {}: {e}; prune stops before it deletes anything: run `chunkbak check`, \
         then `chunkbak repair index` / `chunkbak repair snapshots`",
        sid.short()
    ))
}
