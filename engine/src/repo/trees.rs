//! Trees: loaded (cached), walked a directory part and a chunk list at a time, and saved.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::pack::BlobKind;
use crate::format::tree::{Content, Node, TreeBlob};
use crate::id::BlobId;
use crate::packer::BlobSaver;

use super::{DirPart, Repository, TREE_CACHE_ENTRIES};

impl Repository {
    /// Loads a tree blob (cached).
    pub fn load_tree(&self, id: &BlobId) -> Result<Arc<TreeBlob>> {
        if let Some(t) = self.tree_cache.lock().expect("tree cache").0.get(id) {
            return Ok(t.clone());
        }
        let bytes = self.read_blob(id)?;
        let t = Arc::new(TreeBlob::decode(&bytes, &format!("tree {id}"))?);
        if !self.tree_caching.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(t);
        }
        let mut c = self.tree_cache.lock().expect("tree cache");
        // Bounded by bytes too: chunk lists of large files are up to hundreds of KiB each, and
        // 4096 of them held 1.1 GB in a walk of 100 million chunks.
        let most = (self.memory() / 5).clamp(4 << 20, 512 << 20) as usize;
        if c.0.len() >= TREE_CACHE_ENTRIES || c.1 + bytes.len() > most {
            c.0.clear();
            c.1 = 0;
        }
        if c.0.insert(*id, t.clone()).is_none() {
            c.1 += bytes.len();
        }
        Ok(t)
    }

    /// Runs `f`, a walk that loads each tree once (prune's of every snapshot), with the
    /// cache of trees emptied and left empty: kept, the trees of a walk of 100 million chunks
    /// held a hundred MB and more, decoded, for nothing.
    pub(crate) fn walk_once<R>(&self, f: impl FnOnce() -> R) -> R {
        use std::sync::atomic::Ordering;
        *self.tree_cache.lock().expect("tree cache") = (HashMap::new(), 0);
        self.tree_caching.store(false, Ordering::Relaxed);
        let r = f();
        self.tree_caching.store(true, Ordering::Relaxed);
        crate::alloc::trim();
        r
    }

    /// The entries of a directory, following splits.
    pub fn load_dir(&self, id: &BlobId) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        self.each_dir_part(id, &mut |_, nodes| {
            out.extend(nodes.iter().cloned());
            Ok(())
        })?;
        Ok(out)
    }

    /// The entries of a directory a part at a time (with the part's id, for a split one),
    /// checked in order across parts: a directory of a thousand files of 5 GB is 160 MB
    /// decoded, a part about [`crate::format::tree::PART_BYTES`].
    pub fn each_dir_part(&self, id: &BlobId, f: &mut DirPart) -> Result<()> {
        let parts = match &*self.load_tree(id)? {
            TreeBlob::Dir(nodes) => return f(None, nodes),
            TreeBlob::Split(parts) => parts.clone(),
            TreeBlob::ChunkList(_) => {
                return Err(Error::corrupt(
                    format!("tree {id}"),
                    "a chunk list where a directory was expected",
                ))
            }
        };
        let mut last: Option<Node> = None;
        for p in parts {
            match &*self.load_tree(&p)? {
                TreeBlob::Dir(nodes) => {
                    if let (Some(last), Some(first)) = (&last, nodes.first()) {
                        crate::format::tree::check_order(
                            &[last.clone(), first.clone()],
                            &format!("tree {id}"),
                        )?;
                    }
                    f(Some(p), nodes)?;
                    last = nodes.last().cloned().or(last);
                }
                _ => {
                    return Err(Error::corrupt(
                        format!("tree {p}"),
                        "a split part is not a directory",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The full chunk list of a file.
    pub fn file_chunks(&self, content: &Content) -> Result<Vec<BlobId>> {
        let mut out = Vec::new();
        self.each_file_chunk(content, &mut |c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// Each chunk of a file, in order, a chunk list at a time: the list of a file of
    /// terabytes (an EBS volume's image) is millions of ids, never held whole here.
    pub fn each_file_chunk(
        &self,
        content: &Content,
        f: &mut dyn FnMut(BlobId) -> Result<()>,
    ) -> Result<()> {
        match content {
            Content::Chunks(c) => c.iter().try_for_each(|c| f(*c)),
            Content::Indirect(lists) => {
                for l in lists {
                    match &*self.load_tree(l)? {
                        TreeBlob::ChunkList(c) => c.iter().try_for_each(|c| f(*c))?,
                        _ => return Err(Error::corrupt(format!("tree {l}"), "not a chunk list")),
                    }
                }
                Ok(())
            }
        }
    }

    /// Saves a directory's nodes as tree blobs (split when huge); returns the top tree id.
    pub fn save_dir(&self, saver: &BlobSaver, nodes: Vec<Node>) -> Result<BlobId> {
        use crate::format::tree::{encoded_size, PART_BYTES, SPLIT_THRESHOLD};
        let total: usize = nodes.iter().map(encoded_size).sum();
        if nodes.len() <= SPLIT_THRESHOLD && total <= PART_BYTES {
            return Ok(saver
                .save(BlobKind::Tree, &TreeBlob::Dir(nodes).encode())?
                .0);
        }
        // Content-defined split points over entry names, so one new entry changes one part.
        let mut parts = Vec::new();
        let mut cur = Vec::new();
        let mut bytes = 0usize;
        for n in nodes {
            let h = blake3::hash(&n.name);
            let cut = u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]).is_multiple_of(2048);
            bytes += encoded_size(&n);
            cur.push(n);
            if cut || cur.len() >= 4 * SPLIT_THRESHOLD / 2 || bytes >= PART_BYTES {
                bytes = 0;
                parts.push(
                    saver
                        .save(
                            BlobKind::Tree,
                            &TreeBlob::Dir(std::mem::take(&mut cur)).encode(),
                        )?
                        .0,
                );
            }
        }
        if !cur.is_empty() {
            parts.push(saver.save(BlobKind::Tree, &TreeBlob::Dir(cur).encode())?.0);
        }
        Ok(saver
            .save(BlobKind::Tree, &TreeBlob::Split(parts).encode())?
            .0)
    }

    /// Stores a file's chunk list, moving it to `ChunkList` blobs when long.
    pub fn save_content(&self, saver: &BlobSaver, chunks: Vec<BlobId>) -> Result<Content> {
        use crate::format::tree::INLINE_CHUNKS;
        if chunks.len() <= INLINE_CHUNKS {
            return Ok(Content::Chunks(chunks));
        }
        let mut lists = Vec::new();
        for part in chunks.chunks(INLINE_CHUNKS) {
            lists.push(
                saver
                    .save(BlobKind::Tree, &TreeBlob::ChunkList(part.to_vec()).encode())?
                    .0,
            );
        }
        Ok(Content::Indirect(lists))
    }
}
