//! `restore --to-ebs-snapshot`: a disk image of a snapshot written as a new EBS snapshot
//! through StartSnapshot, PutSnapshotBlock and CompleteSnapshot. Only blocks holding a
//! non-zero byte are written (a new snapshot reads zeros elsewhere). The image's size is
//! rounded up to whole GiB, the unit of EBS volume sizes; the rest reads as zeros.

use std::io::Write;

use crate::ebs::{Ebs, BLOCK_SIZE};
use crate::error::{Error, Result};
use crate::format::tree::NodeKind;
use crate::id::BlobId;
use crate::repo::Repository;

/// Blocks sent per round (32 MiB in memory).
const BATCH: usize = 64;

/// What a write made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub snapshot_id: String,
    pub volume_gib: u64,
    /// Blocks written (non-zero ones), of all the volume's.
    pub blocks_written: u64,
    pub blocks_total: u64,
    /// CompleteSnapshot's answer (`pending` while EBS seals it, `completed`).
    pub status: String,
}

/// Collects the image into blocks and sends the non-zero ones in rounds.
struct Blocks<'a> {
    ebs: &'a Ebs,
    snapshot: &'a str,
    cur: Vec<u8>,
    index: u32,
    batch: Vec<(u32, Vec<u8>)>,
    written: u64,
    failed: Option<Error>,
}

impl Blocks<'_> {
    fn block_done(&mut self) -> std::io::Result<()> {
        let block = std::mem::replace(&mut self.cur, Vec::with_capacity(BLOCK_SIZE));
        if block.iter().any(|&b| b != 0) {
            let mut block = block;
            block.resize(BLOCK_SIZE, 0);
            self.batch.push((self.index, block));
        }
        self.index += 1;
        if self.batch.len() >= BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> std::io::Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.written += batch.len() as u64;
        if let Err(e) = self.ebs.put_blocks(self.snapshot, batch) {
            let msg = e.to_string();
            self.failed = Some(e);
            return Err(std::io::Error::other(msg));
        }
        Ok(())
    }
}

impl Write for Blocks<'_> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let take = (BLOCK_SIZE - self.cur.len()).min(buf.len());
            self.cur.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.cur.len() == BLOCK_SIZE {
                self.block_done()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the file at `path` of the snapshot tree `root` as a new EBS snapshot. The
/// repository's index must be loaded.
pub fn write_image(
    repo: &Repository,
    root: BlobId,
    path: &[u8],
    ebs: &Ebs,
    new: &crate::ebs::NewSnapshot,
) -> Result<Written> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let node = crate::ops::ls::find(repo, root, path)?
        .filter(|n| n.kind == NodeKind::File)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{shown}: not a file of the snapshot (give the image, e.g. latest:/ebs/vol-1/snap-1.img)"
            ))
        })?;
    if node.size == 0 {
        return Err(Error::Invalid(format!(
            "{shown} is empty: no volume to write"
        )));
    }
    let volume_gib = node.size.div_ceil(1 << 30);
    let snapshot_id = ebs.start_snapshot(volume_gib, new)?;
    let mut blocks = Blocks {
        ebs,
        snapshot: &snapshot_id,
        cur: Vec::with_capacity(BLOCK_SIZE),
        index: 0,
        batch: Vec::new(),
        written: 0,
        failed: None,
    };
    let dumped = crate::ops::dump::dump_file(repo, root, path, &mut blocks);
    if let Some(e) = blocks.failed.take() {
        return Err(e);
    }
    dumped?;
    if !blocks.cur.is_empty() {
        blocks
            .block_done()
            .map_err(|e| Error::Other(e.to_string()))?;
    }
    if !blocks.batch.is_empty() {
        blocks.send().map_err(|e| Error::Other(e.to_string()))?;
    }
    let written = blocks.written;
    let status = ebs.complete(&snapshot_id, written)?;
    Ok(Written {
        snapshot_id,
        volume_gib,
        blocks_written: written,
        blocks_total: volume_gib * (1 << 30) / BLOCK_SIZE as u64,
        status,
    })
}
