//! The frame the index's cache files share (format-spec 16): the run file
//! ([`crate::indexrun`]) and the pack table ([`crate::packtable`]). A 64-byte header (magic,
//! version, records a block, count, blocks, covers), fixed-size records in blocks, a block
//! table with one entry a block ending in the first 16 bytes of the block's BLAKE3, and a
//! footer: BLAKE3 of the header and the block table, then the magic again.
//!
//! Opening checks the magic, the version, the sizes against the file's length (before
//! anything is allocated) and the footer; a block is checked against its hash the first time
//! it is read. A file that does not check out is an error naming it, which the caller answers
//! by rebuilding it from the repository's index files, never by trusting it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

pub const HEADER: usize = 64;
/// The footer: BLAKE3 of the header and the block table, then the magic again.
pub const FOOTER: usize = 40;
/// Blocks kept in memory by a reader.
const CACHED_BLOCKS: usize = 64;

/// What tells one kind of cache file from another.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub magic: &'static [u8; 8],
    pub version: u32,
    /// Bytes of one record.
    pub record: usize,
    /// Records in a full block.
    pub per_block: usize,
    /// Bytes of one block table entry (its last 16: the block's hash).
    pub entry: usize,
    /// What the file is, for errors ("a run file").
    pub what: &'static str,
}

pub fn hash16(b: &[u8]) -> [u8; 16] {
    blake3::hash(b).as_bytes()[..16].try_into().expect("16")
}

pub fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::corrupt(
        path.display().to_string(),
        format!("{what} (a cache file: it is rebuilt from the repository's index files)"),
    )
}

pub fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Other(format!("{}: {e}", path.display()))
}

impl Layout {
    /// The header of a file of `count` records in `blocks` blocks.
    pub fn header(&self, count: u64, blocks: u64, covers: [u8; 32]) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(self.magic);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(self.per_block as u32).to_le_bytes());
        h[16..24].copy_from_slice(&count.to_le_bytes());
        h[24..32].copy_from_slice(&blocks.to_le_bytes());
        h[32..64].copy_from_slice(&covers);
        h
    }

    /// The footer after the block table `table`.
    pub fn footer(&self, header: &[u8; HEADER], table: &[u8]) -> [u8; FOOTER] {
        let mut h = blake3::Hasher::new();
        h.update(header);
        h.update(table);
        let mut f = [0u8; FOOTER];
        f[..32].copy_from_slice(h.finalize().as_bytes());
        f[32..].copy_from_slice(self.magic);
        f
    }
}

/// The blocks read last (block number → its records), oldest first in the queue.
type BlockCache = (HashMap<u64, Arc<Vec<u8>>>, VecDeque<u64>);

/// An open cache file: its header and block table checked and in memory, blocks read on
/// demand.
pub struct Framed {
    layout: Layout,
    file: File,
    path: PathBuf,
    count: u64,
    covers: [u8; 32],
    /// The footer's hash: which build wrote the file.
    fingerprint: [u8; 32],
    table: Vec<u8>,
    cache: Mutex<BlockCache>,
    /// Blocks whose hash was checked (a block read again is not hashed again: `check` looks
    /// up every blob, block after block at random).
    verified: Vec<AtomicBool>,
}

impl Framed {
    pub fn open(path: &Path, layout: Layout) -> Result<Framed> {
        let what = layout.what;
        let file = File::open(path).map_err(|e| io(path, e))?;
        let len = file.metadata().map_err(|e| io(path, e))?.len();
        if len < (HEADER + FOOTER) as u64 {
            return Err(corrupt(path, format!("{len} bytes: too short for {what}")));
        }
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| io(path, e))?;
        if &header[..8] != layout.magic {
            return Err(corrupt(path, format!("not {what} (magic)")));
        }
        let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().expect("8"));
        let (version, per_block, count, blocks) = (u32_at(8), u32_at(12), u64_at(16), u64_at(24));
        if version != layout.version || per_block as usize != layout.per_block {
            return Err(corrupt(
                path,
                format!("version {version}, {per_block} records a block: not this build's"),
            ));
        }
        if blocks != count.div_ceil(layout.per_block as u64) {
            return Err(corrupt(
                path,
                format!("{count} records cannot fill {blocks} blocks"),
            ));
        }
        // Every size is checked against the file's length before anything is allocated.
        let want = (HEADER as u64)
            .checked_add(count.saturating_mul(layout.record as u64))
            .and_then(|n| n.checked_add(blocks.checked_mul(layout.entry as u64)?))
            .and_then(|n| n.checked_add(FOOTER as u64));
        if want != Some(len) {
            return Err(corrupt(
                path,
                format!("{len} bytes where {count} records need {want:?}"),
            ));
        }
        let mut table = vec![0u8; blocks as usize * layout.entry];
        file.read_exact_at(&mut table, HEADER as u64 + count * layout.record as u64)
            .map_err(|e| io(path, e))?;
        let mut footer = [0u8; FOOTER];
        file.read_exact_at(&mut footer, len - FOOTER as u64)
            .map_err(|e| io(path, e))?;
        if layout.footer(&header, &table) != footer {
            return Err(corrupt(path, "header or block table damaged (checksum)"));
        }
        Ok(Framed {
            layout,
            file,
            path: path.to_path_buf(),
            count,
            covers: header[32..64].try_into().expect("32"),
            fingerprint: footer[..32].try_into().expect("32"),
            verified: (0..blocks).map(|_| AtomicBool::new(false)).collect(),
            table,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the file.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn blocks(&self) -> usize {
        self.verified.len()
    }

    /// What the file was built from, as its builder named it.
    pub fn covers(&self) -> [u8; 32] {
        self.covers
    }

    /// The hash in the footer (of the header and the block table): tells this build's file
    /// from another build's of the same index files.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Block `b`'s entry in the block table.
    pub fn entry(&self, b: usize) -> &[u8] {
        &self.table[b * self.layout.entry..(b + 1) * self.layout.entry]
    }

    /// Bytes of memory the block table holds.
    pub fn table_bytes(&self) -> usize {
        self.table.len()
    }

    /// Block `b`'s records, checked by `fits` (with the block's entry) at every read and
    /// against the block's hash at the first.
    pub fn block(&self, b: u64, fits: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<Arc<Vec<u8>>> {
        if let Some(x) = self.cache.lock().expect("block cache").0.get(&b) {
            return Ok(x.clone());
        }
        let per = self.layout.per_block as u64;
        let records = (self.count - b * per).min(per);
        let mut buf = vec![0u8; records as usize * self.layout.record];
        self.file
            .read_exact_at(
                &mut buf,
                HEADER as u64 + b * per * self.layout.record as u64,
            )
            .map_err(|e| io(&self.path, e))?;
        let entry = self.entry(b as usize);
        let seen = &self.verified[b as usize];
        let sum = &entry[entry.len() - 16..];
        if !fits(&buf, entry) || (!seen.load(Ordering::Relaxed) && hash16(&buf) != sum) {
            return Err(corrupt(&self.path, format!("block {b} damaged (checksum)")));
        }
        seen.store(true, Ordering::Relaxed);
        let buf = Arc::new(buf);
        let mut c = self.cache.lock().expect("block cache");
        // Another thread may have read it meanwhile: cached once.
        if let Some(x) = c.0.get(&b) {
            return Ok(x.clone());
        }
        if c.1.len() >= CACHED_BLOCKS {
            if let Some(old) = c.1.pop_front() {
                c.0.remove(&old);
            }
        }
        c.0.insert(b, buf.clone());
        c.1.push_back(b);
        Ok(buf)
    }
}
