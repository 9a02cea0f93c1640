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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cachefile::{corrupt, hash16, io, Framed, Layout, HEADER};
use crate::error::{Error, Result};

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

/// What a build wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Built {
    /// Records in the file (one per id).
    pub records: u64,
    /// Ids given more than once with different packs (the first of each kept).
    pub disputed: u64,
    /// The packs (record `pack` fields, the top bit, a tree blob's flag, cleared) whose copy
    /// of such an id was kept.
    pub won: std::collections::HashSet<u32>,
    /// For ids given with exactly two packs: the copies of the pack not kept, by pack.
    pub lost: HashMap<u32, u64>,
    /// Temporary runs merged.
    pub runs: usize,
}

/// Collects records in any order, at most `mem_records` in memory at a time, and writes the
/// sorted run file. Of records with the same id, the one of lowest rank (a function of the
/// record given to [`Builder::finish`], then the lowest record) is kept, as `Index::seal`
/// keeps a live pack's copy over a marked one's: ranks are known only once every index file
/// has been read (a later file may revive a marked pack).
pub struct Builder {
    tmp: PathBuf,
    mem_records: usize,
    buf: Vec<Record>,
    runs: Vec<PathBuf>,
    /// Ranges of ids by their first bits ([`Builder::expect`]); empty: sorted runs.
    parts: Vec<Part>,
    /// Bits of the id that choose the range.
    part_bits: u32,
    /// Bytes a range collects before they are appended to its file.
    part_buffer: usize,
    /// Names temporary files apart from other builders' in the same folder.
    prefix: String,
    /// Bytes of each record written to temporary runs: all of it, or the id only.
    width: usize,
    /// The first error writing a temporary file: every later call fails with it (a range's
    /// file may hold part of a buffer, a run part of a batch).
    broken: Option<String>,
}

/// One range of ids of a partitioned build: its temporary file (appended to as its buffer
/// fills; not held open, so thousands of ranges need no more file descriptors) and the
/// records in it and in the buffer.
struct Part {
    path: PathBuf,
    buf: Vec<u8>,
    n: u64,
}

/// At most 2^12 ranges: ranges of their expected size up to about 560 million records at the
/// default budget (beyond that, each range is sorted by runs).
const MAX_PART_BITS: u32 = 12;

impl Builder {
    /// Temporary runs go to `tmp_dir` (the cache's folder, so they are removed with it).
    pub fn new(tmp_dir: &Path, mem_records: usize) -> Result<Builder> {
        std::fs::create_dir_all(tmp_dir).map_err(|e| io(tmp_dir, e))?;
        Ok(Builder {
            tmp: tmp_dir.to_path_buf(),
            mem_records: mem_records.max(1),
            buf: Vec::new(),
            runs: Vec::new(),
            parts: Vec::new(),
            part_bits: 0,
            part_buffer: 0,
            prefix: "run".into(),
            width: RECORD,
            broken: None,
        })
    }

    /// As [`new`](Builder::new), for a sort of ids only: temporary runs keep the 32-byte id
    /// of each record, and records come back with the other fields zero (a third less to
    /// write and read than whole records: prune's and check's sorts of used chunks).
    pub fn ids_only(tmp_dir: &Path, mem_records: usize) -> Result<Builder> {
        let mut b = Builder::new(tmp_dir, mem_records)?;
        b.width = 32;
        Ok(b)
    }

    /// Says about how many records will come, before the first: when they are more than
    /// fit in memory, [`finish`](Builder::finish) deals them by their ids' first bits into
    /// ranges of an eighth of `mem_records` expected, instead of merging sorted runs. Two
    /// ranges are in memory at a time, each sorted in memory up to a quarter of
    /// `mem_records`, beyond that by runs; the ranges' buffers hold about another quarter
    /// (at least 4 KiB each). It
    /// writes the same file with less work: no merge, and one range is read and sorted while
    /// the one before it is written. For a build [`finish`](Builder::finish)ed into a run
    /// file only ([`into_sorted`](Builder::into_sorted) refuses ranges).
    pub fn expect(&mut self, records: u64) {
        if !self.buf.is_empty() || !self.runs.is_empty() || !self.parts.is_empty() {
            return;
        }
        if records <= self.mem_records as u64 {
            return;
        }
        let want = records.div_ceil((self.mem_records as u64 / 8).max(1));
        let bits = (64 - (want - 1).leading_zeros()).clamp(1, MAX_PART_BITS);
        self.part_bits = bits;
        self.part_buffer = ((self.mem_records * RECORD / 4) >> bits).clamp(4 << 10, 1 << 20);
        self.parts = (0..1usize << bits)
            .map(|i| Part {
                path: self
                    .tmp
                    .join(format!("part-{}-{i}.tmp", std::process::id())),
                buf: Vec::new(),
                n: 0,
            })
            .collect();
    }

    pub fn push(&mut self, r: Record) -> Result<()> {
        self.check()?;
        let done = self.push_unchecked(r);
        if let Err(e) = &done {
            self.broken = Some(e.to_string());
        }
        done
    }

    /// The error that broke this builder, if any.
    fn check(&self) -> Result<()> {
        match &self.broken {
            Some(e) => Err(Error::Other(e.clone())),
            None => Ok(()),
        }
    }

    fn push_unchecked(&mut self, r: Record) -> Result<()> {
        if !self.parts.is_empty() {
            let i = (u32::from_be_bytes(r.id[..4].try_into().expect("4")) >> (32 - self.part_bits))
                as usize;
            let p = &mut self.parts[i];
            if p.buf.capacity() == 0 {
                p.buf.reserve_exact(self.part_buffer);
            }
            r.encode(&mut p.buf);
            p.n += 1;
            if p.buf.len() + RECORD > self.part_buffer {
                p.flush()?;
            }
            return Ok(());
        }
        if self.buf.len() == self.buf.capacity() {
            // Grown by doubling up to `mem_records` exactly, not past it (a doubling past it
            // held up to twice the memory allowed).
            let want = (self.buf.capacity() * 2)
                .max(1024)
                .min(self.mem_records.max(1));
            self.buf
                .reserve_exact(want.saturating_sub(self.buf.len()).max(1));
        }
        self.buf.push(r);
        if self.buf.len() >= self.mem_records {
            self.spill()?;
        }
        Ok(())
    }

    /// Sorts what is in memory into a temporary run of records.
    fn spill(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf.sort_unstable();
        let path = self.tmp.join(format!(
            "{}-{}-{}.tmp",
            self.prefix,
            std::process::id(),
            self.runs.len()
        ));
        let f = File::create(&path).map_err(|e| io(&path, e))?;
        let mut w = BufWriter::with_capacity(1 << 16, f);
        let mut b = Vec::with_capacity(RECORD);
        for r in self.buf.drain(..) {
            b.clear();
            r.encode(&mut b);
            w.write_all(&b[..self.width]).map_err(|e| io(&path, e))?;
        }
        w.flush().map_err(|e| io(&path, e))?;
        self.runs.push(path);
        Ok(())
    }

    /// Ends collecting: the records sorted, for as many passes in id order as the caller
    /// needs ([`Sorted::merge`]); in memory when they never exceeded `mem_records`, else in
    /// temporary runs (removed with the [`Sorted`]).
    pub fn into_sorted(mut self) -> Result<Sorted> {
        self.check()?;
        if !self.parts.is_empty() {
            // Ranges are for one pass, into a run file: `finish`.
            return Err(Error::Other(
                "a sort by ranges of ids is finished into a run file, not passed over".into(),
            ));
        }
        if self.runs.is_empty() {
            let mut mem = std::mem::take(&mut self.buf);
            mem.sort_unstable();
            if self.width < RECORD {
                for r in &mut mem {
                    *r = Record::of_id(r.id);
                }
            }
            return Ok(Sorted {
                runs: Vec::new(),
                mem,
                width: self.width,
            });
        }
        self.spill()?;
        Ok(Sorted {
            runs: std::mem::take(&mut self.runs),
            mem: Vec::new(),
            width: self.width,
        })
    }

    /// Merges everything into the run file `out` (written as `out.tmp`, synced, renamed);
    /// `covers` names what it was built from (the caller's choice, e.g. a hash of the index
    /// files' ids).
    pub fn finish(
        mut self,
        out: &Path,
        covers: [u8; 32],
        rank: &dyn Fn(&Record) -> u8,
    ) -> Result<Built> {
        self.check()?;
        // Two processes may build the same file at once: each writes its own.
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut w = Writer::new(BufWriter::with_capacity(1 << 16, f), &tmp)?;
        let mut built = Built::default();
        let mut write = |sorted: &Sorted| -> Result<()> {
            built.runs += sorted.runs.len();
            let mut merge = sorted.merge()?;
            let mut group: Vec<Record> = Vec::new();
            while merge.next_group(&mut group)? {
                // Of the records of one id, the best is written.
                let best = group
                    .iter()
                    .min_by_key(|r| (rank(r), **r))
                    .copied()
                    .expect("a group is not empty");
                built.records += 1;
                // Packs compare without the top bit (a tree blob's flag), as `Index::seal`.
                let pack = |r: &Record| r.pack & !(1 << 31);
                let mut lost = group.iter().filter(|r| pack(r) != pack(&best));
                if let Some(first) = lost.next() {
                    let n = 1 + lost.clone().count() as u64;
                    built.disputed += n;
                    built.won.insert(pack(&best));
                    if lost.all(|r| pack(r) == pack(first)) {
                        *built.lost.entry(pack(first)).or_default() += n;
                    }
                }
                w.push(&best)?;
            }
            Ok(())
        };
        if self.parts.is_empty() {
            write(&self.into_sorted()?)?;
        } else {
            // Each range read and sorted on a thread of its own while the one before it is
            // written: two ranges in memory at a time.
            let parts = std::mem::take(&mut self.parts);
            let (tmp_dir, mem) = (self.tmp.clone(), self.mem_records);
            std::thread::scope(|s| -> Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Sorted>>(0);
                let sorter = s.spawn(move || {
                    for (i, mut p) in parts.into_iter().enumerate() {
                        let r = Self::sort_part(&tmp_dir, &mut p, mem, i);
                        let stop = r.is_err();
                        if tx.send(r).is_err() || stop {
                            break;
                        }
                    }
                });
                let r = rx.iter().try_for_each(|sorted| write(&sorted?));
                drop(rx);
                sorter.join().expect("the range sorter does not panic");
                r
            })?;
        }
        let f = w.finish(covers)?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, out).map_err(|e| io(out, e))?;
        if let Some(dir) = out.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(built)
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Part {
    /// Appends the buffer to the range's file.
    fn flush(&mut self) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        f.write_all(&self.buf).map_err(|e| io(&self.path, e))?;
        self.buf.clear();
        Ok(())
    }
}

impl Builder {
    /// The records of one range of a partitioned build, sorted: in memory when they are no
    /// more than a quarter of `mem` (twice what is expected), else by runs of that size; its
    /// file removed.
    fn sort_part(tmp: &Path, p: &mut Part, mem: usize, i: usize) -> Result<Sorted> {
        let in_file = p.n - (p.buf.len() / RECORD) as u64;
        let mut file = match in_file {
            0 => None,
            _ => {
                let f = File::open(&p.path).map_err(|e| io(&p.path, e))?;
                let _ = std::fs::remove_file(&p.path);
                Some(BufReader::with_capacity(1 << 16, f))
            }
        };
        let tail = std::mem::take(&mut p.buf);
        let path = p.path.clone();
        let mut b = [0u8; RECORD];
        let mut records = (0..p.n).map(move |k| -> Result<Record> {
            match (&mut file, k < in_file) {
                (Some(f), true) => {
                    f.read_exact(&mut b).map_err(|e| io(&path, e))?;
                    Ok(Record::decode(&b))
                }
                _ => {
                    let at = (k - in_file) as usize * RECORD;
                    Ok(Record::decode(&tail[at..at + RECORD]))
                }
            }
        });
        let quarter = (mem / 4).max(1);
        if p.n <= quarter as u64 {
            // Sized at once: a collect through `Result` would grow it by doubling.
            let mut recs = Vec::with_capacity(p.n as usize);
            for r in records {
                recs.push(r?);
            }
            recs.sort_unstable();
            return Ok(Sorted {
                runs: Vec::new(),
                mem: recs,
                width: RECORD,
            });
        }
        // More than twice what was expected (ids chosen to fall in one range): by runs.
        let mut sub = Builder::new(tmp, quarter)?;
        sub.prefix = format!("part{i}-run");
        records
            .try_for_each(|r| sub.push(r?))
            .and_then(|()| sub.into_sorted())
    }
}

/// Ids a depth at a time, for the walks of trees with the index on disk (format-spec 16):
/// `roots` are the first depth's; each depth is sorted in `dir` (`trees-0` and `trees-1` by
/// turns, `mem` records in memory at a time, the id alone when `ids_only`), and `each` gets
/// each distinct id of it once, in id order (its first record), with the depth and the sort
/// of the next depth's. It ends after a depth with none, or when `each` returns false.
pub(crate) fn by_depth(
    dir: &Path,
    mem: usize,
    ids_only: bool,
    roots: impl IntoIterator<Item = Record>,
    each: &mut dyn FnMut(usize, Record, &mut Builder) -> Result<bool>,
) -> Result<()> {
    let sort = |depth: usize| {
        let folder = dir.join(format!("trees-{}", depth % 2));
        if ids_only {
            Builder::ids_only(&folder, mem)
        } else {
            Builder::new(&folder, mem)
        }
    };
    let mut level = sort(0)?;
    for r in roots {
        level.push(r)?;
    }
    let mut depth = 0;
    loop {
        let sorted = level.into_sorted()?;
        let mut next = sort(depth + 1)?;
        let mut merge = sorted.merge()?;
        let (mut last, mut any) = (None, false);
        while let Some(r) = merge.next_record()? {
            if last == Some(r.id) {
                continue;
            }
            last = Some(r.id);
            any = true;
            if !each(depth, r, &mut next)? {
                return Ok(());
            }
        }
        // This depth's runs go before the sort after next takes their folder.
        drop(merge);
        drop(sorted);
        if !any {
            return Ok(());
        }
        level = next;
        depth += 1;
    }
}

/// Records sorted by a [`Builder`]: in memory, or in temporary runs merged on every pass.
pub struct Sorted {
    runs: Vec<PathBuf>,
    mem: Vec<Record>,
    /// Bytes of each record in the runs.
    width: usize,
}

impl Sorted {
    /// A pass over every record in order (records of one id in record order).
    pub fn merge(&self) -> Result<Merge<'_>> {
        let mut m = Merge {
            sorted: self,
            readers: Vec::new(),
            heap: BinaryHeap::new(),
            at: 0,
            peeked: None,
        };
        for (i, p) in self.runs.iter().enumerate() {
            let f = File::open(p).map_err(|e| io(p, e))?;
            m.readers.push(BufReader::with_capacity(1 << 14, f));
            if let Some(x) = m.read(i)? {
                m.heap.push(Reverse((x, i)));
            }
        }
        Ok(m)
    }

    /// Temporary runs on disk (0: every record was sorted in memory).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// No record was sorted.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.mem.is_empty()
    }
}

impl Drop for Sorted {
    fn drop(&mut self) {
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One pass over a [`Sorted`]: a k-way merge of its runs.
pub struct Merge<'a> {
    sorted: &'a Sorted,
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(Record, usize)>>,
    /// The next record of an in-memory sort.
    at: usize,
    peeked: Option<Record>,
}

impl Merge<'_> {
    fn read(&mut self, i: usize) -> Result<Option<Record>> {
        let mut b = [0u8; RECORD];
        match self.readers[i].read_exact(&mut b[..self.sorted.width]) {
            Ok(()) => Ok(Some(Record::decode(&b))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io(&self.sorted.runs[i], e)),
        }
    }

    /// The next record in order.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if let Some(r) = self.peeked.take() {
            return Ok(Some(r));
        }
        if self.sorted.runs.is_empty() {
            let r = self.sorted.mem.get(self.at).copied();
            self.at += 1;
            return Ok(r);
        }
        let Some(Reverse((r, i))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(x) = self.read(i)? {
            self.heap.push(Reverse((x, i)));
        }
        Ok(Some(r))
    }

    /// The id of the next record, without taking it.
    pub fn peek_id(&mut self) -> Result<Option<[u8; 32]>> {
        if self.peeked.is_none() {
            self.peeked = self.next_record()?;
        }
        Ok(self.peeked.map(|r| r.id))
    }

    /// The records of the next id into `group` (cleared first); false at the end.
    pub fn next_group(&mut self, group: &mut Vec<Record>) -> Result<bool> {
        group.clear();
        let Some(first) = self.next_record()? else {
            return Ok(false);
        };
        group.push(first);
        while self.peek_id()? == Some(first.id) {
            group.push(self.peeked.take().expect("peeked"));
        }
        Ok(true)
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes blocks as records come, then the fence table and the footer.
struct Writer {
    w: BufWriter<File>,
    path: PathBuf,
    block: Vec<u8>,
    first: Option<[u8; 32]>,
    fence: Vec<u8>,
    count: u64,
    last: Option<[u8; 32]>,
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
        debug_assert!(self.last.is_none_or(|l| l < r.id), "records in order");
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

/// An open run file: its fence table in memory, blocks read on demand.
pub struct RunFile {
    f: Framed,
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

    /// The record of `id`, if the file holds one.
    pub fn get(&self, id: &[u8; 32]) -> Result<Option<Record>> {
        // The last block whose first id is not above `id`.
        let (mut lo, mut hi) = (0usize, self.f.blocks());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.f.entry(mid)[..32] <= id[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(None);
        }
        let block = self.block(lo as u64 - 1)?;
        let n = block.len() / RECORD;
        let at = |i: usize| &block[i * RECORD..i * RECORD + 32];
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match at(mid).cmp(&id[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return Ok(Some(Record::decode(
                        &block[mid * RECORD..(mid + 1) * RECORD],
                    )))
                }
            }
        }
        Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id_of(i: u64) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    fn rec(i: u64, pack: u32) -> Record {
        Record {
            id: id_of(i),
            pack,
            offset: (i % 1000) as u32,
            length: 100,
            raw_len: 200,
        }
    }

    fn no_rank(_: &Record) -> u8 {
        0
    }

    fn build(
        dir: &Path,
        recs: &[Record],
        mem: usize,
        rank: &dyn Fn(&Record) -> u8,
    ) -> (RunFile, Built) {
        let out = dir.join("index.run");
        let mut b = Builder::new(&dir.join("tmp"), mem).unwrap();
        for r in recs {
            b.push(*r).unwrap();
        }
        let built = b.finish(&out, [7u8; 32], rank).unwrap();
        // No temporary run is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        (RunFile::open(&out).unwrap(), built)
    }

    /// A sort gives every record in order, records of one id together, the same on every pass,
    /// whether it stayed in memory or went to temporary runs (removed with it).
    #[test]
    fn a_sort_passes_every_record_in_groups_as_often_as_asked() {
        let recs: Vec<Record> = (0..500u64).map(|i| rec(i % 170, (i % 7) as u32)).collect();
        let mut want = recs.clone();
        want.sort();
        for mem in [1, 13, 499, 500, 10_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = Builder::new(&dir.path().join("tmp"), mem).unwrap();
            for r in &recs {
                b.push(*r).unwrap();
            }
            let sorted = b.into_sorted().unwrap();
            assert_eq!(sorted.runs() == 0, mem > 500, "mem {mem}");
            for _ in 0..2 {
                let mut m = sorted.merge().unwrap();
                let mut all = Vec::new();
                let mut g = Vec::new();
                let mut groups = 0;
                while m.next_group(&mut g).unwrap() {
                    assert!(g.iter().all(|r| r.id == g[0].id));
                    assert!(all.last().is_none_or(|l: &Record| l.id < g[0].id));
                    all.extend_from_slice(&g);
                    groups += 1;
                }
                assert_eq!(all, want, "mem {mem}");
                assert_eq!(groups, 170);
            }
            drop(sorted);
            let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    #[test]
    fn every_record_is_found_and_others_are_not_whatever_the_memory() {
        for (n, mem) in [
            (0u64, 10),
            (1, 10),
            (1023, 100_000),
            (1025, 1024),
            (5000, 333),
            (5000, 100_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let recs: Vec<Record> = (0..n).map(|i| rec(i, (i % 7) as u32)).collect();
            let (f, built) = build(dir.path(), &recs, mem, &no_rank);
            assert_eq!(built.records, n);
            assert_eq!(
                built.runs,
                if n as usize >= mem {
                    (n as usize).div_ceil(mem)
                } else {
                    0
                }
            );
            assert_eq!(f.len(), n);
            assert_eq!(f.covers(), [7u8; 32]);
            assert_eq!(
                f.resident_bytes(),
                (n as usize).div_ceil(BLOCK_ENTRIES) * FENCE
            );
            for r in &recs {
                assert_eq!(f.get(&r.id).unwrap(), Some(*r), "{n} {mem}");
            }
            for i in n..n + 200 {
                assert_eq!(f.get(&id_of(i)).unwrap(), None);
            }
            assert_eq!(f.get(&[0u8; 32]).unwrap(), None);
            assert_eq!(f.get(&[0xffu8; 32]).unwrap(), None);
            let mut seen = Vec::new();
            f.for_each(|r| {
                seen.push(r.id);
                Ok(())
            })
            .unwrap();
            let mut want: Vec<[u8; 32]> = recs.iter().map(|r| r.id).collect();
            want.sort();
            assert_eq!(seen, want);
        }
    }

    /// Of several records of one id, the lowest rank wins (then the lowest record), across
    /// temporary runs; the others count as disputed when their pack differs.
    #[test]
    fn duplicates_keep_the_best_ranked_copy() {
        for mem in [2, 3, 1000] {
            let dir = tempfile::tempdir().unwrap();
            // Pack 9 is "marked" (rank 1): its copies lose to any other pack's.
            let rank = |r: &Record| u8::from(r.pack == 9);
            let recs = vec![
                rec(1, 9),
                rec(2, 4),
                rec(1, 5),
                rec(2, 4),
                rec(3, 9),
                rec(1, 6),
            ];
            let (f, built) = build(dir.path(), &recs, mem, &rank);
            assert_eq!(built.records, 3);
            // id 1: kept pack 5; packs 9 and 6 differ. id 2: the same pack twice.
            assert_eq!(built.disputed, 2);
            assert_eq!(f.get(&id_of(1)).unwrap().unwrap().pack, 5);
            assert_eq!(f.get(&id_of(2)).unwrap().unwrap().pack, 4);
            assert_eq!(f.get(&id_of(3)).unwrap().unwrap().pack, 9);
            // The winner of id 1's dispute; no loser of a two-pack dispute (three packs).
            assert_eq!(built.won, [5].into());
            assert!(built.lost.is_empty());
        }
    }

    /// The disputes' winners and losers: a pack's tree flag (the top bit) does not make it
    /// another pack, and the copies a pack loses add up over ids.
    #[test]
    fn disputes_name_their_packs_without_the_tree_flag() {
        let dir = tempfile::tempdir().unwrap();
        let tree = 1 << 31;
        let recs = vec![
            // One pack holding id 1 as a tree and as data: no dispute.
            rec(1, 3 | tree),
            rec(1, 3),
            // Pack 4 wins ids 2 (trees) and 3 (data) over pack 6.
            rec(2, 4 | tree),
            rec(2, 6 | tree),
            rec(3, 4),
            rec(3, 6),
        ];
        let (_, built) = build(dir.path(), &recs, 1000, &no_rank);
        assert_eq!(built.disputed, 2);
        assert_eq!(built.won, [4].into());
        assert_eq!(built.lost, [(6, 2)].into());
    }

    /// A damaged cache file is an error naming it, never a wrong answer: a changed byte in a
    /// block fails that block's lookups; in the header or the block table, the open.
    #[test]
    fn damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Record> = (0..3000).map(|i| rec(i, 1)).collect();
        let (_, _) = build(dir.path(), &recs, 1000, &no_rank);
        let path = dir.path().join("index.run");
        let good = std::fs::read(&path).unwrap();
        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 1;
            std::fs::write(&path, &b).unwrap();
        };
        // A record in block 1.
        flip(HEADER + (BLOCK_ENTRIES + 5) * RECORD + 40);
        let f = RunFile::open(&path).unwrap();
        let in_block_1: [u8; 32] = f.f.entry(1)[..32].try_into().unwrap();
        let e = f.get(&in_block_1).unwrap_err().to_string();
        assert!(
            e.contains("index.run") && e.contains("block 1 damaged"),
            "{e}"
        );
        // Block 0 still answers.
        assert!(f
            .get(&f.f.entry(0)[..32].try_into().unwrap())
            .unwrap()
            .is_some());
        for at in [3, 20, HEADER + 3000 * RECORD + 10, good.len() - 1] {
            flip(at);
            let e = RunFile::open(&path).err().expect("refused").to_string();
            assert!(e.contains("rebuilt"), "{at}: {e}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(RunFile::open(&path).is_err());
        std::fs::write(&path, b"short").unwrap();
        assert!(RunFile::open(&path).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Any records, any memory bound: the file answers as a map keeping each id's first
        /// record in order.
        #[test]
        fn answers_as_a_map(ids in proptest::collection::vec((0u64..300, 0u32..5), 0..600), mem in 1usize..200) {
            let dir = tempfile::tempdir().unwrap();
            let recs: Vec<Record> = ids.iter().map(|(i, p)| rec(*i, *p)).collect();
            let (f, built) = build(dir.path(), &recs, mem, &no_rank);
            let mut model: BTreeMap<[u8; 32], Record> = BTreeMap::new();
            for r in &recs {
                model.entry(r.id).and_modify(|m| if r < m { *m = *r }).or_insert(*r);
            }
            proptest::prop_assert_eq!(built.records, model.len() as u64);
            for i in 0..300u64 {
                proptest::prop_assert_eq!(f.get(&id_of(i)).unwrap(), model.get(&id_of(i)).copied());
            }
        }
    }

    /// Told how many records to expect, the builder deals them into ranges of ids and writes
    /// the very same file as a merge of runs: as expected, with fewer than expected, with
    /// more (ranges past twice their share are sorted by runs), and with every id in one
    /// range (chosen by someone who can pick ids). Nothing temporary is left.
    #[test]
    fn ranges_write_the_same_file_as_runs() {
        let spread: Vec<Record> = (0..3000u64)
            .map(|i| rec(i % 1900, (i % 5) as u32))
            .collect();
        let mut one_range = spread.clone();
        for r in &mut one_range {
            r.id[0] = 0x17;
        }
        let rank = |r: &Record| u8::from(r.pack == 2);
        for recs in [&spread, &one_range] {
            let plain = tempfile::tempdir().unwrap();
            let (_, want) = build(plain.path(), recs, 100, &rank);
            let want_bytes = std::fs::read(plain.path().join("index.run")).unwrap();
            for (mem, expect) in [(100, 3000), (100, 700), (100, 30_000), (40, 3000)] {
                let dir = tempfile::tempdir().unwrap();
                let mut b = Builder::new(&dir.path().join("tmp"), mem).unwrap();
                b.expect(expect);
                assert!(!b.parts.is_empty());
                for r in recs.iter() {
                    b.push(*r).unwrap();
                }
                let out = dir.path().join("index.run");
                let got = b.finish(&out, [7u8; 32], &rank).unwrap();
                assert_eq!((got.records, got.disputed), (want.records, want.disputed));
                assert_eq!(
                    std::fs::read(&out).unwrap(),
                    want_bytes,
                    "mem {mem} expect {expect}"
                );
                let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
                assert!(left.is_empty(), "{left:?}");
            }
        }
        // As many as fit in memory: no ranges.
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::new(dir.path(), 100).unwrap();
        b.expect(100);
        assert!(b.parts.is_empty());
    }

    /// A failed write to a range's file breaks the builder: every later push and the finish
    /// fail (a file of part of a buffer, read as whole records, would be garbage).
    #[test]
    fn a_failed_write_breaks_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let mut b = Builder::new(&tmp, 100).unwrap();
        b.expect(3000);
        // The folder replaced by a file: appending to a range's file fails.
        std::fs::remove_dir(&tmp).unwrap();
        std::fs::write(&tmp, b"in the way").unwrap();
        let mut failed = None;
        for i in 0..3000u64 {
            let mut r = rec(i, 1);
            r.id[0] = 0x17;
            if let Err(e) = b.push(r) {
                failed = Some(i);
                assert!(e.to_string().contains("part-"), "{e}");
                break;
            }
        }
        let failed = failed.expect("a push failed");
        std::fs::remove_file(&tmp).unwrap();
        std::fs::create_dir(&tmp).unwrap();
        // The folder is back, the builder stays broken.
        assert!(b.push(rec(failed + 1, 1)).is_err());
        let out = dir.path().join("index.run");
        assert!(b.finish(&out, [7u8; 32], &no_rank).is_err());
        assert!(!out.exists());
    }

    /// A sort of ids only gives the same ids in the same groups as a sort of records, with
    /// the other fields zero, in memory and in runs (whose files are two thirds as large).
    #[test]
    fn a_sort_of_ids_only_keeps_the_ids() {
        let recs: Vec<Record> = (0..500u64).map(|i| rec(i % 170, (i % 7) as u32)).collect();
        let mut want: Vec<Record> = recs.iter().map(|r| Record::of_id(r.id)).collect();
        want.sort();
        for mem in [7, 10_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = Builder::ids_only(&dir.path().join("tmp"), mem).unwrap();
            for r in &recs {
                b.push(*r).unwrap();
            }
            let sorted = b.into_sorted().unwrap();
            if mem == 7 {
                let bytes: u64 = std::fs::read_dir(dir.path().join("tmp"))
                    .unwrap()
                    .map(|e| e.unwrap().metadata().unwrap().len())
                    .sum();
                assert_eq!(bytes, 500 * 32);
            }
            let mut m = sorted.merge().unwrap();
            let (mut all, mut g, mut groups) = (Vec::new(), Vec::new(), 0);
            while m.next_group(&mut g).unwrap() {
                all.extend_from_slice(&g);
                groups += 1;
            }
            assert_eq!(all, want, "mem {mem}");
            assert_eq!(groups, 170);
        }
    }

    /// format-spec.md 16's test vector: three records, one block.
    #[test]
    fn the_spec_vector() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Record> = (1u8..=3)
            .map(|i| Record {
                id: [i; 32],
                pack: u32::from(i) - 1,
                offset: 100 * (u32::from(i) - 1),
                length: 10 * u32::from(i),
                raw_len: 10 * u32::from(i) + 1,
            })
            .collect();
        let out = dir.path().join("index.run");
        let mut b = Builder::new(&dir.path().join("tmp"), 10).unwrap();
        // In reverse: the builder sorts.
        for r in recs.iter().rev() {
            b.push(*r).unwrap();
        }
        b.finish(&out, [0u8; 32], &no_rank).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len(), 296);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let spec = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../format-spec.md"),
        )
        .unwrap();
        let flat: String = spec.split_whitespace().collect();
        assert!(
            flat.contains(&hex),
            "format-spec.md 16 lacks the run file vector {hex}"
        );
        let f = RunFile::open(&out).unwrap();
        assert_eq!(f.get(&[2; 32]).unwrap(), Some(recs[1]));
    }
}
