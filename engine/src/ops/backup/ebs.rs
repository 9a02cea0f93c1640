//! `backup --ebs-snapshot`: an EBS snapshot as one logically full image file,
//! `/ebs/VOLUME/SNAPSHOT.img`, with `SNAPSHOT.json` beside it (what was read, and from what).
//!
//! Each 512 KiB block of the volume is one chunk (or, where the repository's largest chunk is
//! smaller, the same number of equal pieces of every block), so a block that did not change is
//! the same chunks whatever changed around it. With a parent (the EBS snapshot the previous chunkbak
//! snapshot of the volume holds, or the one given), only the blocks ListChangedBlocks reports
//! are fetched; every other block is the previous image's chunk, taken without reading it.
//! Blocks never written are zeros: one chunk, stored once.

use std::sync::Arc;

use super::*;
use crate::ebs::{Ebs, BLOCK_SIZE};

/// Blocks fetched and stored per round (64 MiB in memory at most).
const BATCH: usize = 128;

/// Where an EBS backup reads from.
pub struct EbsSource {
    pub client: Arc<Ebs>,
    /// The EBS snapshot to back up (`snap-…`).
    pub snapshot: String,
    /// The EBS snapshot to compare with; `None`: the one the previous chunkbak snapshot of
    /// this volume holds.
    pub parent: Option<String>,
    /// The volume's name in the snapshot tree (`vol-…`).
    pub volume: String,
}

/// What the sidecar file records.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct EbsImage {
    pub snapshot_id: String,
    pub volume: String,
    pub volume_size_gib: u64,
    pub block_size: u64,
    /// The EBS snapshot whose changed blocks were fetched (the rest came from its image).
    pub parent_snapshot_id: Option<String>,
    /// Blocks fetched, and blocks taken from the parent's image.
    pub blocks_fetched: u64,
    pub blocks_reused: u64,
}

/// A name fit for one path component.
fn plain(kind: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.contains('/') || s.starts_with('.') || s.len() > 255 {
        return Err(Error::Invalid(format!("{kind} {s:?}: not a plain name")));
    }
    Ok(())
}

/// The previous image of the volume in `tree` (the root of a snapshot of `/ebs/VOLUME`): its
/// sidecar and its chunk ids.
fn previous(repo: &Repository, tree: BlobId, volume: &str) -> Option<(EbsImage, Vec<BlobId>)> {
    let dir = format!("/ebs/{volume}");
    let node = crate::ops::ls::find(repo, tree, dir.as_bytes()).ok()??;
    let kids = repo.load_dir(&node.subtree?).ok()?;
    let json = kids.iter().find(|n| n.name.ends_with(b".json"))?;
    let mut text = Vec::new();
    let path = format!("{dir}/{}", String::from_utf8_lossy(&json.name));
    crate::ops::dump::dump_file(repo, tree, path.as_bytes(), &mut text).ok()?;
    let meta: EbsImage = serde_json::from_slice(&text).ok()?;
    let img = format!("{}.img", meta.snapshot_id);
    let image = kids.iter().find(|n| n.name == img.as_bytes())?;
    let chunks = repo.file_chunks(&image.content).ok()?;
    Some((meta, chunks))
}

/// Backs up the EBS snapshot; returns the volume's folder node (`VOLUME` with the image and
/// its sidecar). `parent_tree` is the previous chunkbak snapshot of the same volume.
pub(super) fn backup_ebs(ctx: &Ctx, src: &EbsSource, parent_tree: Option<BlobId>) -> Result<Node> {
    plain("--ebs-volume", &src.volume)?;
    plain("--ebs-snapshot", &src.snapshot)?;
    let repo = &ctx.repo;
    let prev = parent_tree.and_then(|t| previous(repo, t, &src.volume));
    let ebs = &src.client;
    // Pieces per block: one, unless the repository's chunks are smaller than a block.
    let max = ctx.repo.chunker().params().max_size.max(1) as usize;
    let per = BLOCK_SIZE.div_ceil(max).next_power_of_two();
    let piece = BLOCK_SIZE / per;
    let zeros = vec![0u8; piece];
    let zero_id = ctx.w.saver.save(BlobKind::Data, &zeros)?.0;
    let blocks_of = |gib: u64| -> Result<usize> {
        // EBS volumes are 1 GiB to 64 TiB.
        if !(1..=65_536).contains(&gib) {
            return Err(Error::Other(format!(
                "EBS snapshot {}: the service reports a volume of {gib} GiB (1 GiB to 64 TiB \
                 expected): not read",
                src.snapshot
            )));
        }
        Ok((gib << 30) as usize / BLOCK_SIZE)
    };
    // The parent: the one given, or the one the previous image was read from. Its image is
    // used when it is that parent's, of the same size, and every blob of it is still live.
    if let (Some(given), Some((meta, _))) = (&src.parent, &prev) {
        if &meta.snapshot_id != given {
            ctx.warn(
                Path::new(&src.snapshot),
                format!(
                    "--ebs-parent-snapshot {given}: the previous backup of {} read {}, not \
                     {given}: every block is read",
                    src.volume, meta.snapshot_id
                ),
            );
        }
    }
    let parent_id = src
        .parent
        .clone()
        .or_else(|| prev.as_ref().map(|p| p.0.snapshot_id.clone()));
    let mut incremental = None;
    if let (Some(pid), Some((meta, chunks))) = (parent_id, prev) {
        if meta.snapshot_id == pid && pid != src.snapshot {
            match ebs.changed_blocks(&pid, &src.snapshot) {
                Ok((gib, changed)) => {
                    let n = blocks_of(gib)?;
                    let mut unique = chunks.clone();
                    unique.sort();
                    unique.dedup();
                    if chunks.len() == n * per && ctx.w.saver.reuse(&unique) {
                        incremental = Some((pid, gib, chunks, changed));
                    } else {
                        ctx.warn(
                            Path::new(&src.snapshot),
                            format!(
                                "the image of {pid} is not whole in the repository (another \
                                 size, or blobs no longer stored): every block is read"
                            ),
                        );
                    }
                }
                Err(e) => ctx.warn(
                    Path::new(&src.snapshot),
                    format!("cannot compare with {pid} ({e}): every block is read"),
                ),
            }
        }
    }
    // Start from the parent's image (or zeros), then fetch what differs.
    let (volume_gib, mut ids, fetch, parent_used) = match incremental {
        Some((pid, gib, mut ids, changed)) => {
            let mut fetch = Vec::new();
            for (i, token) in changed {
                let at = i as usize * per;
                match (token, ids.get_mut(at..at + per)) {
                    (Some(t), Some(_)) => fetch.push((i, t)),
                    (None, Some(slots)) => slots.fill(zero_id),
                    (_, None) => {}
                }
            }
            (gib, ids, fetch, Some(pid))
        }
        None => {
            let listed = ebs.list_blocks(&src.snapshot)?;
            let n = blocks_of(listed.volume_gib)?;
            let fetch: Vec<(u32, String)> = listed
                .blocks
                .into_iter()
                .filter(|(i, _)| (*i as usize) < n)
                .collect();
            (listed.volume_gib, vec![zero_id; n * per], fetch, None)
        }
    };
    let n_blocks = ids.len() / per;
    let image_bytes = (n_blocks * BLOCK_SIZE) as u64;
    ctx.progress.final_total(1, image_bytes);
    ctx.progress
        .started(Path::new(&format!("{}.img", src.snapshot)));
    // What is not fetched is done already.
    ctx.progress
        .bytes(image_bytes - (fetch.len() * BLOCK_SIZE) as u64);
    for batch in fetch.chunks(BATCH) {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let data = ebs.get_blocks(&src.snapshot, batch)?;
        let saved: Vec<Result<BlobId>> = ctx.pool.install(|| {
            data.par_iter()
                .flat_map(|b| b.par_chunks(piece))
                .map(|p| ctx.w.saver.save(BlobKind::Data, p).map(|r| r.0))
                .collect()
        });
        let mut saved = saved.into_iter();
        for (i, _) in batch {
            for slot in &mut ids[*i as usize * per..(*i as usize + 1) * per] {
                *slot = saved.next().expect("a piece per slot")?;
            }
        }
        let n = (batch.len() * BLOCK_SIZE) as u64;
        ctx.counters.bytes_read.fetch_add(n, Ordering::Relaxed);
        ctx.progress.bytes(n);
        ctx.checkpoint_or_fail();
    }
    ctx.counters
        .bytes_total
        .fetch_add(image_bytes, Ordering::Relaxed);
    let meta = EbsImage {
        snapshot_id: src.snapshot.clone(),
        volume: src.volume.clone(),
        volume_size_gib: volume_gib,
        block_size: BLOCK_SIZE as u64,
        parent_snapshot_id: parent_used.clone(),
        blocks_fetched: fetch.len() as u64,
        blocks_reused: if parent_used.is_some() {
            (n_blocks - fetch.len()) as u64
        } else {
            0
        },
    };
    let mut json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Other(e.to_string()))?;
    json.push(b'\n');
    let json_id = ctx.w.saver.save(BlobKind::Data, &json)?.0;
    let now = timespec_of(jiff::Timestamp::now());
    let (uid, gid) = fsmeta::current_ids();
    let owners = Owners::default();
    let file = |name: String, size: u64, content: Content| Node {
        name: name.into_bytes(),
        kind: NodeKind::File,
        mode: 0o100600,
        uid,
        gid,
        user: owners.user(uid),
        group: owners.group(gid),
        mtime: now,
        ctime: now,
        size,
        nlink: 1,
        content,
        ..Node::default()
    };
    let image = file(
        format!("{}.img", src.snapshot),
        image_bytes,
        repo.save_content(&ctx.w.saver, ids)?,
    );
    let sidecar = file(
        format!("{}.json", src.snapshot),
        json.len() as u64,
        Content::Chunks(vec![json_id]),
    );
    ctx.counters.files_new.fetch_add(2, Ordering::Relaxed);
    ctx.progress
        .file_done(Path::new(&format!("{}.img", src.snapshot)));
    let subtree = repo.save_dir(&ctx.w.saver, vec![image, sidecar])?;
    Ok(Node {
        name: src.volume.as_bytes().to_vec(),
        kind: NodeKind::Dir,
        mode: 0o40700,
        uid,
        gid,
        user: owners.user(uid),
        group: owners.group(gid),
        mtime: now,
        ctime: now,
        nlink: 1,
        subtree: Some(subtree),
        ..Node::default()
    })
}
