//! Delta encoding of a changed file's new chunks against its previous version's chunks.
//!
//! A file (or `--stdin` stream) whose parent snapshot holds a previous version keeps that
//! version's chunks, in order, as candidate bases: a chunk of yesterday's dump is the closest
//! base for today's, so chains grow a step a day, up to [`MAX_DELTA_DEPTH`] (where a chunk as
//! deep as that stands in with its base). Changes in a database dump are scattered every few KB, so few chunks
//! match exactly, but each new chunk resembles the old chunk at about the same place: the
//! candidates are the few old chunks just after the last one matched (exactly, or as a base),
//! and the one sharing most sketch features wins. Old chunks are read once each, in order, a
//! window ahead of the cursor.

use std::collections::HashMap;

use super::*;
use crate::compressor::{compress, DeltaCompressor, MAX_DELTA_LEN};
use crate::index::MAX_DELTA_DEPTH;
use crate::resemble::{sketch, Sketch};

/// Old chunks looked at behind and ahead of the cursor.
const BEHIND: usize = 2;
const AHEAD: usize = 8;
/// Old chunks read ahead of the cursor, in parallel, when the window needs one not read yet:
/// the window and 2 beyond it, at most 13 chunks held. Reading a whole batch's worth at once
/// (about 25 chunks of 1.3 MiB for a dump) held as much again as the batch, and day after day
/// more as the chains they are decoded through grew: 30 daily dumps peaked at 217-275 MB RSS
/// from day 3 on; with 4 beyond the window, 16 MiB batches and the allocator trimmed after
/// each batch, at 85-97 MB; with 2 beyond it and batches of a sixteenth of the memory budget
/// (9.4 MiB), at 74-82 MiB, day 30 as day 2 (docs/benchmarks.md).
const PRELOAD: usize = AHEAD + 2;
/// Features a candidate must share with the new chunk.
const MIN_SHARED: usize = 3;
/// Files smaller than this are stored whole (too little to gain per file).
pub(super) const MIN_FILE: u64 = 256 << 10;

/// An old chunk read: its plaintext and sketch (`None`: not usable as a base).
type Loaded = Option<(Arc<Vec<u8>>, Sketch)>;

pub(super) struct Bases {
    /// The previous version's chunks resolved to whole blobs, in file order.
    old: Vec<BlobId>,
    /// Where each previous chunk was (for re-anchoring on exact matches).
    at: HashMap<BlobId, usize>,
    /// Old chunks read so far, by position: plaintext and sketch (`None`: not usable).
    loaded: HashMap<usize, Loaded>,
    cursor: usize,
}

/// What to do with one chunk of a batch.
pub(super) enum Plan {
    /// Stored already (or by another thread of this run).
    Known,
    Whole,
    Delta(BlobId, Arc<Vec<u8>>),
}

impl Bases {
    /// The candidates of a file whose previous version has `chunks`; `None` when there are none.
    pub(super) fn new(repo: &Repository, chunks: Vec<BlobId>) -> Option<Bases> {
        if chunks.is_empty() {
            return None;
        }
        // Each old chunk, or where its chain is as deep as chains go, its base.
        let idx = repo.index().read().expect("index lock");
        let old: Vec<BlobId> = chunks
            .iter()
            .map(|c| match idx.chain_of(c) {
                Some(chain) if chain.len() >= MAX_DELTA_DEPTH => chain[0],
                _ => *c,
            })
            .collect();
        drop(idx);
        let at = chunks.iter().enumerate().map(|(i, c)| (*c, i)).collect();
        Some(Bases {
            old,
            at,
            loaded: HashMap::new(),
            cursor: 0,
        })
    }

    /// Reads the old chunks in `range` not read yet, in parallel; when one is missing, those up
    /// to [`PRELOAD`] ahead of the cursor too.
    fn load(&mut self, ctx: &Ctx, range: std::ops::Range<usize>) {
        let missing = |i: &usize| *i < self.old.len() && !self.loaded.contains_key(i);
        if !range.clone().any(|i| missing(&i)) {
            return;
        }
        let end = range.end.max(self.cursor + PRELOAD + 1);
        let want: Vec<usize> = (range.start..end).filter(missing).collect();
        let read = |i: &usize| {
            let id = self.old[*i];
            // Only a live whole data blob may be a base (the saver records its pack as used).
            if !ctx.w.saver.use_base(&id) {
                return (*i, None);
            }
            // Checked against its id: today's deltas will be decoded through it.
            match ctx.repo.read_blob(&id) {
                Ok(b) if b.len() <= MAX_DELTA_LEN => {
                    let s = sketch(&b);
                    (*i, Some((Arc::new(b), s)))
                }
                _ => (*i, None),
            }
        };
        let got: Vec<_> = ctx.pool.install(|| want.par_iter().map(read).collect());
        self.loaded.extend(got);
        // Keep only the window: what lies well behind the cursor is not looked at again.
        let low = self.cursor.saturating_sub(BEHIND);
        self.loaded.retain(|i, _| *i >= low);
    }

    /// Plans a batch: `reserved[i]` says chunk i must be stored, `sketches[i]` is its sketch.
    pub(super) fn plan(
        &mut self,
        ctx: &Ctx,
        ids: &[BlobId],
        reserved: &[bool],
        sketches: &[Option<Sketch>],
    ) -> Vec<Plan> {
        if reserved.iter().any(|r| *r) {
            let start = self.cursor.saturating_sub(BEHIND);
            self.load(ctx, start..self.cursor + AHEAD + 1);
        }
        let mut out = Vec::with_capacity(ids.len());
        for ((id, r), sk) in ids.iter().zip(reserved).zip(sketches) {
            if !*r {
                if let Some(&i) = self.at.get(id) {
                    self.cursor = i + 1;
                }
                out.push(Plan::Known);
                continue;
            }
            let Some(sk) = sk else {
                out.push(Plan::Whole);
                continue;
            };
            let lo = self.cursor.saturating_sub(BEHIND);
            let hi = (self.cursor + AHEAD + 1).min(self.old.len());
            self.load(ctx, lo..hi);
            let best = (lo..hi)
                .filter_map(|i| {
                    let (b, s) = self.loaded.get(&i)?.as_ref()?;
                    Some((s.shared(sk), i, b))
                })
                .filter(|(n, _, _)| *n >= MIN_SHARED)
                .max_by_key(|(n, i, _)| (*n, std::cmp::Reverse(*i)));
            match best {
                Some((_, i, b)) => {
                    let p = Plan::Delta(self.old[i], b.clone());
                    self.cursor = i + 1;
                    out.push(p);
                }
                None => out.push(Plan::Whole),
            }
        }
        out
    }
}

/// Stores one reserved chunk as planned: as a delta when that is clearly smaller than the
/// chunk compressed alone, otherwise whole. `dc` is the worker's delta compressor, made at
/// its first delta and kept for the next ones.
pub(super) fn store<'a>(
    ctx: &Ctx,
    id: BlobId,
    data: &[u8],
    plan: &'a Plan,
    dc: &mut Option<DeltaCompressor<'a>>,
) -> Result<()> {
    let saver = &ctx.w.saver;
    if let Plan::Delta(base, b) = plan {
        let dc = match dc {
            Some(dc) => dc,
            None => dc.insert(DeltaCompressor::new(saver.level())?),
        };
        let frame = dc.compress(data, b)?;
        // Well under what compression alone reaches on text (3-5x): no need to compare.
        if frame.len() * 8 <= data.len() {
            return saver.store_delta(id, data.len(), frame, *base);
        }
        let (c, whole) = compress(data, saver.level());
        if frame.len() * 4 < whole.len() * 3 {
            return saver.store_delta(id, data.len(), frame, *base);
        }
        return saver.store_compressed(BlobKind::Data, id, data.len(), (c, whole));
    }
    saver.store_reserved(BlobKind::Data, id, data)
}
