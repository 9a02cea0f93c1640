//! The [`Builder`]: records collected in any order, sorted a bounded number at a time, into a
//! run file or a [`Sorted`] for passes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::cachefile::io;
use crate::error::{Error, Result};

use super::sort::Sorted;
use super::{Record, Writer, RECORD};

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
    pub(super) tmp: PathBuf,
    pub(super) mem_records: usize,
    pub(super) buf: Vec<Record>,
    pub(super) runs: Vec<PathBuf>,
    /// Ranges of ids by their first bits ([`Builder::expect`]); empty: sorted runs.
    pub(super) parts: Vec<Part>,
    /// Bits of the id that choose the range.
    pub(super) part_bits: u32,
    /// Bytes a range collects before they are appended to its file.
    pub(super) part_buffer: usize,
    /// Names temporary files apart from other builders' in the same folder.
    pub(super) prefix: String,
    /// Bytes of each record written to temporary runs: all of it, or the id only.
    pub(super) width: usize,
    /// The first error writing a temporary file: every later call fails with it (a range's
    /// file may hold part of a buffer, a run part of a batch).
    pub(super) broken: Option<String>,
    /// Of the records of one id, [`finish`](Builder::finish) writes the two lowest distinct
    /// ones ([`distinct`](Builder::distinct)) instead of the best.
    pub(super) distinct: bool,
}

/// One range of ids of a partitioned build: its temporary file (appended to as its buffer
/// fills; not held open, so thousands of ranges need no more file descriptors) and the
/// records in it and in the buffer.
pub(super) struct Part {
    pub(super) path: PathBuf,
    pub(super) buf: Vec<u8>,
    pub(super) n: u64,
}

/// At most 2^12 ranges: ranges of their expected size up to about 560 million records at the
/// default budget (beyond that, each range is sorted by runs).
pub(super) const MAX_PART_BITS: u32 = 12;

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
            distinct: false,
        })
    }

    /// As [`new`](Builder::new), for a file whose reader must see records of one id that
    /// differ: [`finish`](Builder::finish) writes up to two distinct records of each id (the
    /// lowest), not the best of them, and counts no disputes. The delta bases, whose records'
    /// ids are a key and part of the base: two bases given for one delta are both written, and
    /// a lookup sees them ([`RunFile::with_prefix`](super::RunFile::with_prefix)). Two at
    /// most: no block is all one id, however often a forged listing repeats it.
    pub fn distinct(tmp_dir: &Path, mem_records: usize) -> Result<Builder> {
        let mut b = Builder::new(tmp_dir, mem_records)?;
        b.distinct = true;
        Ok(b)
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
        let distinct = self.distinct;
        let mut write = |sorted: &Sorted| -> Result<()> {
            built.runs += sorted.runs.len();
            let mut merge = sorted.merge()?;
            let mut group: Vec<Record> = Vec::new();
            while merge.next_group(&mut group)? {
                if distinct {
                    // A group comes in record order: its first record and the next unlike it.
                    w.push(&group[0])?;
                    built.records += 1;
                    if let Some(other) = group.iter().find(|r| **r != group[0]) {
                        w.push(other)?;
                        built.records += 1;
                    }
                    continue;
                }
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
            // The range written goes back to the sorter as the next one's array: two arrays
            // alternate, where one allocated a range faulted in fresh pages (an array above
            // the allocator's mmap threshold is returned to the kernel when freed).
            std::thread::scope(|s| -> Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Sorted>>(0);
                let (back, spares) = std::sync::mpsc::channel::<Vec<Record>>();
                let sorter = s.spawn(move || {
                    for (i, mut p) in parts.into_iter().enumerate() {
                        let spare = spares.try_recv().unwrap_or_default();
                        let r = Self::sort_part(&tmp_dir, &mut p, mem, i, spare);
                        let stop = r.is_err();
                        if tx.send(r).is_err() || stop {
                            break;
                        }
                    }
                });
                let r = rx.iter().try_for_each(|sorted| {
                    let mut sorted = sorted?;
                    write(&sorted)?;
                    let _ = back.send(std::mem::take(&mut sorted.mem));
                    Ok(())
                });
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
    /// The records of one range of a partitioned build, sorted: in memory (in `spare`, an
    /// array to reuse, emptied here) when they are no more than a quarter of `mem` (twice what is
    /// expected), else by runs of that size; its file removed.
    fn sort_part(
        tmp: &Path,
        p: &mut Part,
        mem: usize,
        i: usize,
        mut spare: Vec<Record>,
    ) -> Result<Sorted> {
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
            spare.clear();
            spare.reserve_exact(p.n as usize);
            for r in records {
                spare.push(r?);
            }
            spare.sort_unstable();
            return Ok(Sorted {
                runs: Vec::new(),
                mem: spare,
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

impl Drop for Builder {
    fn drop(&mut self) {
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
    }
}
