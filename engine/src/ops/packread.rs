//! Reading many blobs of remote packs with few requests. A restore knows every blob it will
//! read before it starts; this groups them by pack into byte ranges (neighbours merged when the
//! gap between them is small), fetches each range once when its first blob is needed, serves
//! the range's other blobs from memory, and drops it when its last planned read is done. Memory
//! is bounded: a range that would exceed the budget is not kept, and its blobs are read one by
//! one, as without this reader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::id::{BlobId, ObjectId};
use crate::repo::Repository;

/// Gaps up to this size between needed blobs are downloaded rather than split into requests.
pub(crate) const MERGE_GAP: u64 = 256 * 1024;
/// Largest range fetched at once.
const MAX_RANGE: u64 = 16 << 20;
/// Remote reads cover whole aligned windows of this size (or run to the pack's end), so a
/// request's length tells whoever sees it nothing about the blobs inside (format-spec 14).
pub const READ_WINDOW: u64 = 1 << 20;

/// The aligned window around bytes `start..end` of a pack of `size` bytes.
pub fn window(start: u64, end: u64, size: u64) -> (u64, u64) {
    let s = start - start % READ_WINDOW;
    let e = end
        .div_ceil(READ_WINDOW)
        .saturating_mul(READ_WINDOW)
        .min(size.max(end));
    (s, e)
}

struct Range {
    start: u64,
    end: u64,
    /// Planned blob reads not done yet.
    remaining: AtomicUsize,
    /// The range's bytes while some reads remain (None before the first and after the last).
    data: Mutex<Option<Arc<Vec<u8>>>>,
}

pub struct PackReader<'a> {
    repo: &'a Repository,
    ranges: HashMap<ObjectId, Vec<Range>>,
    budget: u64,
    held: AtomicU64,
    /// Requests this reader sent (ranges) and blobs it served from them, for tests and tuning.
    pub fetched: AtomicU64,
    pub served: AtomicU64,
}

/// `blobs` with each delta's bases before it, deepest first: the reads a [`PackReader`] makes
/// for them.
pub fn with_bases(repo: &Repository, blobs: impl Iterator<Item = BlobId>) -> Vec<BlobId> {
    let idx = repo.index().read().expect("index lock");
    let mut out = Vec::new();
    for b in blobs {
        out.extend(idx.chain_of(&b).unwrap_or_default().into_iter().rev());
        out.push(b);
    }
    out
}

impl<'a> PackReader<'a> {
    /// Plans the ranges for reading `blobs` (a blob read N times appears N times; a delta's
    /// base once more per read of the delta, see [`with_bases`]), keeping at most `budget`
    /// bytes of ranges in memory.
    pub fn new(repo: &'a Repository, blobs: &[BlobId], budget: u64) -> Result<Self> {
        let mut by_pack: HashMap<ObjectId, Vec<(u64, u64)>> = HashMap::new();
        {
            let idx = repo.index().read().expect("index lock");
            for id in blobs {
                if let Some((p, l)) = idx.get(id) {
                    let off = u64::from(l.offset);
                    // Whole windows: the ranges requested never show one blob's length.
                    by_pack.entry(p.id).or_default().push(window(
                        off,
                        off + u64::from(l.length),
                        p.size,
                    ));
                }
            }
        }
        let mut ranges = HashMap::with_capacity(by_pack.len());
        for (pack, mut spans) in by_pack {
            spans.sort_unstable();
            let mut out: Vec<Range> = Vec::new();
            for (s, e) in spans {
                match out.last_mut() {
                    Some(r) if s <= r.end + MERGE_GAP && e.max(r.end) - r.start <= MAX_RANGE => {
                        r.end = r.end.max(e);
                        *r.remaining.get_mut() += 1;
                    }
                    _ => out.push(Range {
                        start: s,
                        end: e,
                        remaining: AtomicUsize::new(1),
                        data: Mutex::new(None),
                    }),
                }
            }
            ranges.insert(pack, out);
        }
        Ok(PackReader {
            repo,
            ranges,
            budget,
            held: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            served: AtomicU64::new(0),
        })
    }

    /// Reads, decrypts and verifies one blob (a delta through its base, read first: its
    /// planned read comes right before the delta's, see [`with_bases`]).
    pub fn read(&self, id: &BlobId) -> Result<Vec<u8>> {
        self.read_checked(id, true)
    }

    /// As [`read`](Self::read), with the plaintext of the blob's direct base when it is a
    /// delta (a copy stores it as a delta on the same base in another repository).
    pub fn read_with_base(&self, id: &BlobId) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        self.read_parts(id, true)
    }

    /// Reads a blob; `verify`: check its id (a base is not checked: the delta read through
    /// it is).
    fn read_checked(&self, id: &BlobId, verify: bool) -> Result<Vec<u8>> {
        self.read_parts(id, verify).map(|(plain, _)| plain)
    }

    /// A blob's plaintext and its direct base's, if it has one.
    fn read_parts(&self, id: &BlobId, verify: bool) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let (pack, loc) = self.repo.locate(id)?;
        let base = match loc.base {
            Some(b) => {
                // Bounded (and free of loops) before anything recurses down it.
                if self
                    .repo
                    .index()
                    .read()
                    .expect("index lock")
                    .chain_of(id)
                    .is_none()
                {
                    return Err(Error::corrupt(
                        format!("blob {}", id.short()),
                        "its chain of delta bases is broken or too deep",
                    ));
                }
                Some(self.read_checked(&b, false)?)
            }
            None => None,
        };
        let off = u64::from(loc.offset);
        let Some(range) = self.range_of(&pack.id, off, u64::from(loc.length)) else {
            return Ok((self.repo.read_blob(id)?, base));
        };
        let plain = match self.range_bytes(&pack, range) {
            Ok(Some(b)) => {
                self.served.fetch_add(1, Ordering::Relaxed);
                let s = (off - range.start) as usize;
                let ct = &b[s..s + loc.length as usize];
                if verify {
                    self.repo.open_blob_on(id, &pack, loc, ct, base.as_deref())
                } else {
                    self.repo.decode(id, &pack, loc, ct, base.as_deref())
                }
            }
            Ok(None) => self.repo.read_blob(id),
            Err(e) => Err(e),
        };
        // Counted done whatever happened, so the range's memory is released in time.
        self.done(range);
        Ok((plain?, base))
    }

    /// The bytes of a range: held, or fetched now when worth it and within the budget; None
    /// means "read the blob alone".
    fn range_bytes(
        &self,
        pack: &crate::index::PackInfo,
        range: &Range,
    ) -> Result<Option<Arc<Vec<u8>>>> {
        let mut slot = range.data.lock().expect("range lock");
        if let Some(b) = &*slot {
            return Ok(Some(b.clone()));
        }
        let len = range.end - range.start;
        if range.remaining.load(Ordering::Relaxed) <= 1 {
            return Ok(None);
        }
        // Reserve the memory before fetching, so concurrent fetches cannot overshoot.
        let reserved = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h + len <= self.budget).then_some(h + len)
            })
            .is_ok();
        if !reserved {
            return Ok(None);
        }
        // Fetched while holding the slot: other readers of this range wait for it instead of
        // sending the same request.
        let fk = FileKind::of_pack(pack.kind);
        match self
            .repo
            .backend()
            .get_range(fk, &pack.id.to_hex(), range.start, len)
        {
            Ok(b) => {
                self.fetched.fetch_add(1, Ordering::Relaxed);
                let b = Arc::new(b);
                *slot = Some(b.clone());
                Ok(Some(b))
            }
            Err(e) => {
                self.held.fetch_sub(len, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// One planned read of `range` is over; the last one releases the range's memory.
    fn done(&self, range: &Range) {
        let before = range
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .unwrap_or(0);
        if before == 1 {
            if let Some(b) = range.data.lock().expect("range lock").take() {
                self.held.fetch_sub(b.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Planned reads that will not happen (the rest of a file that failed): their ranges are
    /// released as if read.
    pub fn skip(&self, ids: &[BlobId]) {
        for id in ids {
            let Ok((pack, loc)) = self.repo.locate(id) else {
                continue;
            };
            let chain = self.repo.index().read().expect("index lock").chain_of(id);
            self.skip_ranges(&chain.unwrap_or_default());
            if let Some(r) = self.range_of(&pack.id, u64::from(loc.offset), u64::from(loc.length)) {
                self.done(r);
            }
        }
    }

    /// Releases one planned read of each blob (no recursion down chains: `ids` is one).
    fn skip_ranges(&self, ids: &[BlobId]) {
        for id in ids {
            if let Ok((pack, loc)) = self.repo.locate(id) {
                let (off, len) = (u64::from(loc.offset), u64::from(loc.length));
                if let Some(r) = self.range_of(&pack.id, off, len) {
                    self.done(r);
                }
            }
        }
    }

    /// Bytes of fetched ranges held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    fn range_of(&self, pack: &ObjectId, off: u64, len: u64) -> Option<&Range> {
        self.ranges.get(pack).and_then(|v| {
            let i = v.partition_point(|r| r.start <= off);
            i.checked_sub(1)
                .map(|i| &v[i])
                .filter(|r| off + len <= r.end)
        })
    }
}
