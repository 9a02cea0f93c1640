//! Records sorted for passes in id order ([`Sorted`], each pass a k-way [`Merge`] of its runs),
//! and the walks of trees a depth at a time ([`by_depth`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::cachefile::io;
use crate::error::Result;

use super::build::Builder;
use super::{Record, RECORD};

/// Ids a depth at a time, for the walks of trees with the index on disk (format-spec 16):
/// `roots` are the first depth's, sorted in `dir/depth-0`; then as [`by_depth_from`].
pub(crate) fn by_depth(
    dir: &Path,
    mem: usize,
    ids_only: bool,
    roots: impl IntoIterator<Item = Record>,
    each: &mut dyn FnMut(usize, Record, &mut Builder) -> Result<bool>,
) -> Result<()> {
    let mut first = depth_sort(dir, 0, mem, ids_only)?;
    for r in roots {
        first.push(r)?;
    }
    by_depth_from(dir, mem, ids_only, &first.into_sorted()?, each)
}

/// Ids a depth at a time from the sort `first` (the first depth; the trees of every snapshot,
/// or the used blobs whose delta bases are followed): `each` gets each distinct id of a depth
/// once, in id order (its first record), with the depth and the sort of the next depth's. The
/// next depths are sorted in `dir` (`depth-1` and `depth-2` by turns, `mem` records in memory at
/// a time, the id alone when `ids_only`). It ends after a depth with none, or when `each`
/// returns false.
pub(crate) fn by_depth_from(
    dir: &Path,
    mem: usize,
    ids_only: bool,
    first: &Sorted,
    each: &mut dyn FnMut(usize, Record, &mut Builder) -> Result<bool>,
) -> Result<()> {
    let mut level: Option<Sorted> = None;
    for depth in 0.. {
        let mut next = depth_sort(dir, 1 + depth % 2, mem, ids_only)?;
        let mut merge = level.as_ref().unwrap_or(first).merge()?;
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
        drop(merge);
        if !any {
            break;
        }
        // The depth before goes (its runs) before the sort after next takes its folder.
        level = Some(next.into_sorted()?);
    }
    Ok(())
}

/// The sort of one depth, in `dir/depth-N`.
fn depth_sort(dir: &Path, n: usize, mem: usize, ids_only: bool) -> Result<Builder> {
    let folder = dir.join(format!("depth-{n}"));
    if ids_only {
        Builder::ids_only(&folder, mem)
    } else {
        Builder::new(&folder, mem)
    }
}

/// Records sorted by a [`Builder`]: in memory, or in temporary runs merged on every pass.
pub struct Sorted {
    pub(super) runs: Vec<PathBuf>,
    pub(super) mem: Vec<Record>,
    /// Bytes of each record in the runs.
    pub(super) width: usize,
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
