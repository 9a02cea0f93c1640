//! The index as an immutable sorted run file in the local cache: every blob's location in 48
//! bytes, sorted by id, in blocks of [`BLOCK_ENTRIES`] records with a checksum each, and a
//! table of each block's first id. Opening reads the header and that table (48 bytes a block:
//! 4.7 MB at 100 million blobs); a lookup reads one block (a few blocks are kept), so the
//! memory a lookup needs does not grow with the repository. Built by external sorting: records
//! are sorted in memory a bounded number at a time into temporary runs, which one k-way merge
//! writes out; or, when the builder is told how many records to expect
//! ([`Builder::expect`]), dealt by their id's first bits into ranges small enough to sort in
//! memory, which are sorted and written out in order, one range read and sorted while the one
//! before it is written (ids are keyed hashes, so ranges are about even; one that is not is
//! sorted by runs like the rest).
//!
//! This is the cache's format, not the repository's (format-spec 16): a file that does not
//! check out (magic, version, sizes, the table's checksum, a block's checksum) is an error the
//! caller answers by rebuilding it from the repository's index files, never by trusting it. It
//! is written to a temporary name and renamed into place after an fsync, so a crash leaves the
//! old file or the new one, and at worst a temporary file the next build removes.
//!
//! Here: the record and the file (its writer and reader). `build`: the [`Builder`] (by runs or
//! by ranges of ids). `sort`: sorts passed over more than once ([`Sorted`], [`Merge`]) and the
//! walks a depth at a time ([`by_depth`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cachefile::{corrupt, hash16, io, Framed, Layout, HEADER};
use crate::error::Result;

mod build;
mod sort;
#[cfg(test)]
mod tests;

pub use build::{Builder, Built};
pub(crate) use sort::{by_depth, by_depth_from};
pub use sort::{Merge, Sorted};

pub const MAGIC: &[u8; 8] = b"CBIXRUN1";
pub const VERSION: u32 = 1;
/// Bytes of one record.
pub const RECORD: usize = 48;
/// Records in a block (48 KiB).
pub const BLOCK_ENTRIES: usize = 1024;
/// A fence entry: the block's first id and the first 16 bytes of its BLAKE3 hash.
const FENCE: usize = 48;
/// The frame of a run file (blocks of 48 KiB; a reader keeps 64, 3 MiB).
const LAYOUT: Layout = Layout {
    magic: MAGIC,
    version: VERSION,
    record: RECORD,
    per_block: BLOCK_ENTRIES,
    entry: FENCE,
    what: "an index run file",
};

/// One blob's location, as the in-memory index keeps it: the id, the pack's position in the
/// pack table, offset, length and raw length (flags in the top bits, as `index::Entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: [u8; 32],
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
}

/// By id (byte order), then pack, offset, length and raw length.
impl Ord for Record {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        crate::id::cmp_bytes(&self.id, &o.id).then_with(|| {
            (self.pack, self.offset, self.length, self.raw_len)
                .cmp(&(o.pack, o.offset, o.length, o.raw_len))
        })
    }
}

impl PartialOrd for Record {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Record {
    /// A record of an id alone (the other fields zero).
    pub fn of_id(id: [u8; 32]) -> Record {
        Record {
            id,
            pack: 0,
            offset: 0,
            length: 0,
            raw_len: 0,
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id);
        for v in [self.pack, self.offset, self.length, self.raw_len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Record {
        let u = |i: usize| u32::from_le_bytes(b[32 + 4 * i..36 + 4 * i].try_into().expect("4"));
        Record {
            id: b[..32].try_into().expect("32"),
            pack: u(0),
            offset: u(1),
            length: u(2),
            raw_len: u(3),
        }
    }
}

/// Writes blocks as records come, then the fence table and the footer.
pub(super) struct Writer {
    pub(super) w: BufWriter<File>,
    pub(super) path: PathBuf,
    pub(super) block: Vec<u8>,
    pub(super) first: Option<[u8; 32]>,
    pub(super) fence: Vec<u8>,
    pub(super) count: u64,
    pub(super) last: Option<[u8; 32]>,
}

impl Writer {
    fn new(mut w: BufWriter<File>, path: &Path) -> Result<Writer> {
        // The header is written last, at offset 0, once the counts are known.
        w.write_all(&[0u8; HEADER]).map_err(|e| io(path, e))?;
        Ok(Writer {
            w,
            path: path.to_path_buf(),
            block: Vec::with_capacity(BLOCK_ENTRIES * RECORD),
            first: None,
            fence: Vec::new(),
            count: 0,
            last: None,
        })
    }

    fn push(&mut self, r: &Record) -> Result<()> {
        // Ids repeat only in a build that keeps distinct records ([`Builder::distinct`]).
        debug_assert!(self.last.is_none_or(|l| l <= r.id), "records in order");
        self.last = Some(r.id);
        if self.first.is_none() {
            self.first = Some(r.id);
        }
        r.encode(&mut self.block);
        self.count += 1;
        if self.block.len() == BLOCK_ENTRIES * RECORD {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.fence
            .extend_from_slice(&self.first.take().expect("a block has a first record"));
        self.fence.extend_from_slice(&hash16(&self.block));
        self.w
            .write_all(&self.block)
            .map_err(|e| io(&self.path, e))?;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self, covers: [u8; 32]) -> Result<File> {
        self.end_block()?;
        let blocks = (self.fence.len() / FENCE) as u64;
        let header = LAYOUT.header(self.count, blocks, covers);
        let p = self.path.clone();
        self.w.write_all(&self.fence).map_err(|e| io(&p, e))?;
        self.w
            .write_all(&LAYOUT.footer(&header, &self.fence))
            .map_err(|e| io(&p, e))?;
        let f = self.w.into_inner().map_err(|e| io(&p, e.into_error()))?;
        f.write_all_at(&header, 0).map_err(|e| io(&p, e))?;
        Ok(f)
    }
}

/// The position in a block of its first record whose id is not below `id` (the block's
/// length in records when there is none).
fn first_not_below(block: &[u8], id: &[u8; 32]) -> usize {
    let (mut lo, mut hi) = (0usize, block.len() / RECORD);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if block[mid * RECORD..mid * RECORD + 32] < id[..] {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// An open run file: its fence table in memory, blocks read on demand.
pub struct RunFile {
    pub(super) f: Framed,
}

impl RunFile {
    /// Opens and checks a run file: magic, version, sizes, and the checksum of its header and
    /// fence table (each block is checked when it is read).
    pub fn open(path: &Path) -> Result<RunFile> {
        let f = Framed::open(path, LAYOUT)?;
        if (1..f.blocks()).any(|b| f.entry(b - 1)[..32] >= f.entry(b)[..32]) {
            return Err(corrupt(path, "blocks out of order"));
        }
        Ok(RunFile { f })
    }

    pub fn len(&self) -> u64 {
        self.f.count()
    }

    pub fn is_empty(&self) -> bool {
        self.f.count() == 0
    }

    /// What the file was built from, as given to [`Builder::finish`].
    pub fn covers(&self) -> [u8; 32] {
        self.f.covers()
    }

    /// The hash in the footer (of the header and the block table): tells this build's file
    /// from another build's of the same index files.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.f.fingerprint()
    }

    /// Bytes of memory the open file holds (its fence table), blocks cached aside.
    pub fn resident_bytes(&self) -> usize {
        self.f.table_bytes()
    }

    /// Block `b`, checked against its first id and its hash.
    fn block(&self, b: u64) -> Result<std::sync::Arc<Vec<u8>>> {
        self.f.block(b, &|buf, entry| buf[..32] == entry[..32])
    }

    /// The number of blocks whose first id is not above `id`: the last of them is the one
    /// that can hold it (none: every id is above it).
    fn blocks_up_to(&self, id: &[u8; 32]) -> usize {
        let (mut lo, mut hi) = (0usize, self.f.blocks());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.f.entry(mid)[..32] <= id[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The record of `id`, if the file holds one.
    pub fn get(&self, id: &[u8; 32]) -> Result<Option<Record>> {
        let lo = self.blocks_up_to(id);
        if lo == 0 {
            return Ok(None);
        }
        let block = self.block(lo as u64 - 1)?;
        let r = block[first_not_below(&block, id) * RECORD..]
            .get(..RECORD)
            .filter(|r| r[..32] == id[..]);
        Ok(r.map(Record::decode))
    }

    /// The records whose id begins with `prefix`, in order, at most `max` of them (a build
    /// of [`Builder::distinct`] records: the delta bases).
    pub fn with_prefix(&self, prefix: &[u8], max: usize) -> Result<Vec<Record>> {
        let mut from = [0u8; 32];
        from[..prefix.len()].copy_from_slice(prefix);
        // The last block whose first id is not above the lowest id with the prefix: the first
        // such record is in it or begins the next.
        let mut out = Vec::new();
        for b in self.blocks_up_to(&from).saturating_sub(1)..self.f.blocks() {
            let block = self.block(b as u64)?;
            let start = first_not_below(&block, &from) * RECORD;
            for r in block[start..].chunks_exact(RECORD) {
                if !r.starts_with(prefix) || out.len() == max {
                    return Ok(out);
                }
                out.push(Record::decode(r));
            }
        }
        Ok(out)
    }

    /// Every record in id order, a block at a time (for check and prune).
    pub fn for_each(&self, mut f: impl FnMut(&Record) -> Result<()>) -> Result<()> {
        for b in 0..self.f.blocks() as u64 {
            let block = self.block(b)?;
            for r in block.chunks_exact(RECORD) {
                f(&Record::decode(r))?;
            }
        }
        Ok(())
    }
}
