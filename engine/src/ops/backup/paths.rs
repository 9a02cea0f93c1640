//! Source paths: normalizing them, excludes, finding them in the parent snapshot, and the
//! trees above them in the snapshot's root.

use super::*;

/// Builds the exclude matcher (patterns as in [`crate::ops::pattern`]).
pub fn exclude_set(patterns: &[String]) -> Result<GlobSet> {
    crate::ops::pattern::pattern_set(patterns, "exclude")
}

/// Absolute, normalized source paths; nested duplicates dropped.
pub(super) fn normalize_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        let mut norm = PathBuf::new();
        for c in abs.components() {
            match c {
                std::path::Component::ParentDir => {
                    norm.pop();
                }
                std::path::Component::CurDir => {}
                c => norm.push(c),
            }
        }
        std::fs::symlink_metadata(&norm).map_err(|e| Error::io(&norm, e))?;
        out.push(norm);
    }
    out.sort();
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in out {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    Ok(kept)
}

/// Builds the trees above the source paths (their metadata read from the live file system).
/// `virtual_parents`: the folders above the paths are not on this host (an EBS snapshot's
/// `/ebs`): made up, owned by this user, mode 0700.
pub(super) fn build_root(
    ctx: &Ctx,
    paths: &[PathBuf],
    nodes: Vec<Node>,
    virtual_parents: bool,
) -> Result<BlobId> {
    // A tiny in-memory trie of path components.
    #[derive(Default)]
    struct Dir {
        children: std::collections::BTreeMap<Vec<u8>, Dir>,
        node: Option<Node>,
    }
    let mut top = Dir::default();
    let owners = Owners::default();
    let mut nodes = nodes.into_iter();
    for p in paths {
        let comps: Vec<&std::ffi::OsStr> = p
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        if comps.is_empty() {
            // Backing up `/` itself: its node's entries become the root.
            if let Some(n) = nodes.next() {
                top.node = Some(n);
            }
            continue;
        }
        let mut d = &mut top;
        let mut cur = PathBuf::from("/");
        for c in &comps[..comps.len() - 1] {
            cur.push(c);
            d = d.children.entry(c.as_bytes().to_vec()).or_default();
            if d.node.is_none() && virtual_parents {
                let now = super::timespec_of(jiff::Timestamp::now());
                let (uid, gid) = fsmeta::current_ids();
                d.node = Some(Node {
                    name: c.as_bytes().to_vec(),
                    kind: NodeKind::Dir,
                    mode: 0o40700,
                    uid,
                    gid,
                    user: owners.user(uid),
                    group: owners.group(gid),
                    mtime: now,
                    ctime: now,
                    nlink: 1,
                    ..Node::default()
                });
            } else if d.node.is_none() {
                // A symlink on the way to a source is resolved: the snapshot holds the folder
                // it leads to under the name given (the path recorded is the one given).
                let m = std::fs::metadata(&cur).map_err(|e| Error::io(&cur, e))?;
                d.node = Some(node_from_metadata(c, &m, &owners));
            }
        }
        if let Some(n) = nodes.next() {
            let name = n.name.clone();
            d.children.entry(name).or_default().node = Some(n);
        }
    }
    pub(super) fn save(ctx: &Ctx, d: Dir) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        for (_, child) in d.children {
            let Dir { children, node } = child;
            let mut n = node.expect("every trie entry has a node");
            if !children.is_empty() || (n.kind == NodeKind::Dir && n.subtree.is_none()) {
                let nodes = save(
                    ctx,
                    Dir {
                        children,
                        node: None,
                    },
                )?;
                n.subtree = Some(ctx.repo.save_dir(&ctx.w.saver, nodes)?);
            }
            out.push(n);
        }
        Ok(out)
    }
    if let Some(root_node) = top.node.take() {
        // `/` was a source: its subtree is the root.
        return root_node
            .subtree
            .ok_or_else(|| Error::Other("root has no tree".into()));
    }
    let nodes = save(ctx, top)?;
    ctx.repo.save_dir(&ctx.w.saver, nodes)
}
