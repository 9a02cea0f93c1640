//! `repair index` and `repair snapshots`: bring back everything that is not physically lost.
//!
//! `repair index` rebuilds the index from the packs in the store: a pack the index lists with
//! the right size keeps its entry (with `read_all`, every pack is downloaded and checked); any
//! other pack is downloaded and its header decoded. A damaged pack (its bytes do not match
//! its name) is salvaged: every blob that still decrypts and matches its id is copied into a
//! new pack, and the damaged pack is left out of the index (a later prune deletes it). Index
//! entries of packs that are gone are dropped. The new index supersedes every old index file.
//!
//! `repair snapshots` rewrites each snapshot that references blobs the index lacks: a file
//! with missing chunks keeps its readable beginning and is renamed `NAME.damaged`; a directory
//! whose tree is missing becomes empty. The new snapshot carries the tag `repaired`; the
//! damaged one is removed.

use std::collections::{HashMap, HashSet};

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::format::index::PackEntry;
use crate::format::pack::{decode_header, BlobRecord};
use crate::format::tree::{Content, Node, NodeKind};
use crate::id::{BlobId, Id};
use crate::index::{BlobLocation, PackInfo};
use crate::progress::Progress;
use crate::repo::Repository;

#[derive(Debug, Default)]
pub struct IndexRepair {
    pub packs_kept: u64,
    /// Packs not (correctly) indexed before, read and indexed now.
    pub packs_added: u64,
    /// Damaged packs: salvaged blobs and lost ones.
    pub packs_damaged: u64,
    pub blobs_salvaged: u64,
    pub blobs_lost: u64,
    /// Index entries of packs that are not in the store (their blobs are lost).
    pub packs_missing: u64,
    /// Index files that could not be read.
    pub index_files_unreadable: u64,
    /// Claims of index files that the claimed packs' headers refute, left out.
    pub claims_dropped: u64,
    pub messages: Vec<String>,
}

pub fn repair_index(
    repo: &Repository,
    read_all: bool,
    progress: &dyn Progress,
) -> Result<IndexRepair> {
    let backend = repo.backend();
    let mut rep = IndexRepair::default();
    progress.message("reading index files");
    let names = backend.list(FileKind::Index)?;
    let mut old_files: Vec<Id> = Vec::new();
    let mut listed: Vec<PackEntry> = Vec::new();
    for (name, _) in &names {
        let Some(id) = Id::from_hex(name) else {
            continue;
        };
        old_files.push(id);
        match repo.read_index_file(name) {
            Ok(f) => listed.extend(f.packs),
            Err(e) => {
                rep.index_files_unreadable += 1;
                rep.messages
                    .push(format!("index/{name}: {e}; rebuilt from the packs"));
            }
        }
    }
    let known = crate::index::merge_entries(listed);
    progress.message("listing packs");
    let mut stored: Vec<(FileKind, String, u64)> = Vec::new();
    for fk in [FileKind::Data, FileKind::Tree] {
        for (name, size) in backend.list(fk)? {
            stored.push((fk, name, size));
        }
    }
    let stored_names: HashSet<&str> = stored.iter().map(|s| s.1.as_str()).collect();
    for p in known.values() {
        let name = p.id.to_hex();
        if !stored_names.contains(name.as_str()) && p.mark.is_none() {
            rep.packs_missing += 1;
            rep.messages.push(format!(
                "pack {} is missing from the store: its {} blobs are lost \
                 (`chunkbak repair snapshots` marks the files that used them)",
                FileKind::of_pack(p.kind).path_of(&name),
                p.blobs.len()
            ));
        }
    }
    let saver = repo.private_saver()?;
    let mut out: Vec<PackEntry> = Vec::new();
    progress.final_total(stored.len() as u64, stored.iter().map(|s| s.2).sum());
    for (fk, name, size) in &stored {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        progress.bytes(*size);
        progress.file_done(std::path::Path::new(&fk.path_of(name)));
        let Some(id) = Id::from_hex(name) else {
            continue;
        };
        let entry = known.get(&id);
        if let Some(e) = entry.filter(|e| e.size == *size && !read_all) {
            out.push(e.clone());
            rep.packs_kept += 1;
            continue;
        }
        let path = fk.path_of(name);
        let bytes = match backend.get(*fk, name) {
            Ok(b) => b,
            Err(e @ Error::Archived { .. }) => {
                // An archived pack cannot be read now; its entry stays if it had one.
                if let Some(e) = entry {
                    out.push(e.clone());
                    rep.packs_kept += 1;
                } else {
                    rep.messages
                        .push(format!("{e}; not indexed: thaw it and repair again"));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let intact = Id::of_object(&bytes) == id;
        let header = decode_header(repo.key(), fk.pack_kind(), &bytes, &path);
        if intact {
            match header {
                Ok((salt, blobs)) => {
                    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
                    crc.update(&bytes);
                    let e = PackEntry {
                        id,
                        kind: fk.pack_kind(),
                        size: bytes.len() as u64,
                        crc32c: crc.finalize() as u32,
                        salt,
                        mark: entry.and_then(|e| e.mark),
                        blobs,
                    };
                    if entry.is_some_and(|k| k.size == *size && k.blobs == e.blobs) {
                        rep.packs_kept += 1;
                    } else {
                        rep.packs_added += 1;
                    }
                    out.push(e);
                }
                Err(e) => rep.messages.push(format!(
                    "{e}: the pack matches its name but cannot be opened"
                )),
            }
            continue;
        }
        // Damaged: salvage what still opens, by the index's records or else the header's.
        rep.packs_damaged += 1;
        let (salt, recs): ([u8; 32], Vec<BlobRecord>) = match (entry, header) {
            (Some(e), _) => (e.salt, e.blobs.clone()),
            (None, Ok(h)) => h,
            (None, Err(e)) => {
                rep.messages.push(format!(
                    "pack {path} is damaged and neither the index nor its header lists its \
                     blobs: {e}"
                ));
                continue;
            }
        };
        let info = PackInfo {
            id,
            kind: fk.pack_kind(),
            size: *size,
            crc32c: 0,
            salt,
            mark: None,
        };
        let (mut ok, mut lost) = (0, 0);
        for b in &recs {
            let loc = BlobLocation::of_record(b);
            let plain = bytes
                .get(b.offset as usize..b.end() as usize)
                .ok_or_else(|| Error::corrupt(&path, "truncated"))
                .and_then(|ct| repo.open_blob(&b.id, &info, loc, ct));
            match plain {
                Ok(p) => {
                    saver.save_with_id(b.kind, b.id, &p)?;
                    ok += 1;
                }
                Err(_) => lost += 1,
            }
        }
        rep.blobs_salvaged += ok;
        rep.blobs_lost += lost;
        rep.messages.push(format!(
            "pack {path} is damaged: {ok} blobs copied to new packs, {lost} lost"
        ));
    }
    out.extend(saver.finish()?);
    // Claims that other packs dispute are checked against the packs' headers; those that do
    // not hold (a forged index file's) are left out of the new index.
    progress.message("checking disputed claims");
    let sizes: HashMap<String, u64> = stored.iter().map(|(_, n, s)| (n.clone(), *s)).collect();
    let mut by_id: HashMap<Id, PackEntry> = out.into_iter().map(|e| (e.id, e)).collect();
    let d = crate::ops::claims::check_disputes(repo, &by_id, &sizes)?;
    if !d.refuted.is_empty() {
        let files = repo.read_all_index_files().unwrap_or_default();
        rep.messages.extend(d.refuted.messages(&files));
        rep.claims_dropped += crate::ops::claims::drop_refuted(&mut by_id, &d.refuted) as u64;
    }
    rep.messages.extend(d.unverified_messages());
    let mut out: Vec<PackEntry> = by_id.into_values().collect();
    out.sort_by_key(|e| e.id);
    progress.message("writing the index");
    crate::ops::prune::write_index_files(repo, out, &old_files)?;
    for id in &old_files {
        match backend.delete(FileKind::Index, &id.to_hex()) {
            // Superseded by the file just written; Object Lock may keep it until prune can
            // delete it.
            Ok(()) | Err(Error::ObjectNotFound(_) | Error::Locked { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rep)
}

#[derive(Debug, Default)]
pub struct SnapshotRepair {
    pub snapshots_checked: u64,
    /// (old id, new id) of each rewritten snapshot (`None` on a dry run).
    pub rewritten: Vec<(Id, Option<Id>)>,
    /// Paths of damaged files and directories, by snapshot.
    pub damaged: Vec<(Id, String)>,
    /// Snapshot objects that cannot be read, and why: removed (kept on a dry run).
    pub unreadable: Vec<(String, String)>,
}

/// Rewrites snapshots that reference blobs the index lacks. The index must be loaded.
pub fn repair_snapshots(
    repo: &Repository,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<SnapshotRepair> {
    let mut rep = SnapshotRepair::default();
    let saver = repo.blob_saver()?;
    let (snaps, unreadable) = repo.snapshots_and_damaged()?;
    for (path, e) in unreadable {
        if !dry_run {
            let name = path.trim_start_matches("snapshots/");
            repo.backend().delete(FileKind::Snapshot, name)?;
        }
        rep.unreadable.push((path, e.to_string()));
    }
    for (sid, s) in &snaps {
        rep.snapshots_checked += 1;
        progress.message(&format!("snapshot {}", sid.short()));
        let mut fixer = Fixer {
            repo,
            saver: &saver,
            damaged: Vec::new(),
            memo: HashMap::new(),
            dry_run,
        };
        let root = fixer.dir(s.tree, "")?;
        if fixer.damaged.is_empty() {
            continue;
        }
        rep.damaged
            .extend(fixer.damaged.into_iter().map(|p| (*sid, p)));
        if dry_run {
            rep.rewritten.push((*sid, None));
            continue;
        }
        let mut new = s.clone();
        new.tree = root;
        if !new.tags.iter().any(|t| t == "repaired") {
            new.tags.push("repaired".into());
        }
        repo.write_index(saver.finish()?)?;
        let nid = repo.write_snapshot(&new)?;
        crate::ops::forget::remove(repo, &[*sid])?;
        rep.rewritten.push((*sid, Some(nid)));
    }
    Ok(rep)
}

struct Fixer<'a> {
    repo: &'a Repository,
    saver: &'a crate::packer::BlobSaver,
    damaged: Vec<String>,
    /// Trees already fixed (same id, same result) with the damage found under them.
    memo: HashMap<BlobId, (BlobId, Vec<String>)>,
    dry_run: bool,
}

impl Fixer<'_> {
    /// The id of the repaired directory tree (the same id when nothing under it is damaged).
    fn dir(&mut self, tree: BlobId, path: &str) -> Result<BlobId> {
        crate::format::tree::check_depth(path.as_bytes())?;
        if let Some((id, dmg)) = self.memo.get(&tree) {
            let (id, dmg) = (*id, dmg.clone());
            self.damaged.extend(dmg);
            return Ok(id);
        }
        let before = self.damaged.len();
        let nodes = if self
            .repo
            .index()
            .read()
            .expect("index lock")
            .contains(&tree)
        {
            self.repo.load_dir(&tree).ok()
        } else {
            None
        };
        let nodes = match nodes {
            Some(n) => n,
            None => {
                self.damaged.push(format!(
                    "{}/ (directory contents lost; now empty)",
                    if path.is_empty() { "" } else { path }
                ));
                Vec::new()
            }
        };
        let mut out = Vec::with_capacity(nodes.len());
        let mut changed = self.damaged.len() > before;
        for mut n in nodes {
            let p = format!("{path}/{}", n.name_lossy());
            match n.kind {
                NodeKind::Dir => {
                    if let Some(t) = n.subtree {
                        let nt = self.dir(t, &p)?;
                        changed |= nt != t;
                        n.subtree = Some(nt);
                    }
                }
                NodeKind::File => {
                    if let Some(fixed) = self.file(&n, &p)? {
                        changed = true;
                        n = fixed;
                    }
                }
                _ => {}
            }
            out.push(n);
        }
        let id = if !changed {
            tree
        } else if self.dry_run {
            // Any id that differs: nothing is written on a dry run.
            Id([0; 32])
        } else {
            out.sort_by(|a, b| a.name.cmp(&b.name));
            self.repo.save_dir(self.saver, out)?
        };
        self.memo
            .insert(tree, (id, self.damaged[before..].to_vec()));
        Ok(id)
    }

    /// `Some(node)` when the file references missing blobs: its readable beginning, renamed.
    fn file(&mut self, n: &Node, path: &str) -> Result<Option<Node>> {
        let idx = self.repo.index().read().expect("index lock");
        if let Content::Indirect(lists) = &n.content {
            if lists.iter().any(|l| !idx.contains(l)) {
                drop(idx);
                return self.damage(n, path, Vec::new()).map(Some);
            }
        }
        drop(idx);
        let chunks = match self.repo.file_chunks(&n.content) {
            Ok(c) => c,
            Err(_) => return self.damage(n, path, Vec::new()).map(Some),
        };
        let idx = self.repo.index().read().expect("index lock");
        let Some(first_missing) = chunks.iter().position(|c| !idx.contains(c)) else {
            return Ok(None);
        };
        drop(idx);
        self.damage(n, path, chunks[..first_missing].to_vec())
            .map(Some)
    }

    fn damage(&mut self, n: &Node, path: &str, keep: Vec<BlobId>) -> Result<Node> {
        let size: u64 = {
            let idx = self.repo.index().read().expect("index lock");
            keep.iter()
                .filter_map(|c| idx.get(c).map(|(_, l)| u64::from(l.raw_len)))
                .sum()
        };
        self.damaged.push(format!(
            "{path} (data lost after byte {size} of {}; kept as {}.damaged)",
            n.size,
            n.name_lossy()
        ));
        let mut out = n.clone();
        out.name.extend_from_slice(b".damaged");
        out.size = size;
        out.content = if self.dry_run {
            Content::Chunks(Vec::new())
        } else {
            self.repo.save_content(self.saver, keep)?
        };
        Ok(out)
    }
}
