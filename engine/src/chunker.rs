//! Stage 1: content-defined chunking (FastCDC 2020, normalized, with a gear table derived from
//! the repository's dedup secret: all 256 entries keyed, or in repositories made before
//! 2026-12-06 the public table XOR a 64-bit seed).
//!
//! The cut-point function is `fastcdc::v2020::cut_gear`; this module only feeds it from a reader
//! with a buffer of twice the maximum chunk size, so the result is independent of how the reader
//! splits its input (format-spec.md, "Chunking").

use std::borrow::Cow;
use std::io::{self, Read};
use std::sync::Arc;

use fastcdc::v2020::{self, Normalization};

use crate::error::{Error, Result};

/// Chunk size parameters, stored in the repository config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Normalization level 0..=3 (FastCDC "NC" level).
    pub normalization: u8,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 * 1024,
            avg_size: 1024 * 1024,
            max_size: 4 * 1024 * 1024,
            normalization: 1,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<()> {
        let (mn, avg, mx) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&mn)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&mx)
            && mn < avg
            && avg < mx
            && mn % 2 == 0
            && avg % 2 == 0
            && mx % 2 == 0
            && self.normalization <= 3;
        let bits = (avg as f64).log2().round() as i64;
        let level = i64::from(self.normalization);
        if !ok || bits - level < 6 || bits + level > 25 {
            return Err(Error::Config(format!(
                "invalid chunker parameters {self:?}: need even sizes with 64 <= min <= 1 MiB, \
                 256 <= avg <= 4 MiB, 1 KiB <= max <= 16 MiB, min < avg < max, normalization 0..=3"
            )));
        }
        Ok(())
    }
}

/// A chunker for one repository: parameters plus the keyed gear tables.
#[derive(Clone)]
pub struct Chunker {
    inner: Arc<Inner>,
}

struct Inner {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    /// The v1 chunker: the public gear table XOR `gear_seed` (repositories without config
    /// extension 2).
    pub fn new(params: ChunkerParams, gear_seed: u64) -> Result<Self> {
        let (gear, gear_ls) = v2020::get_gear_with_seed(gear_seed);
        Self::with_tables(params, gear, gear_ls)
    }

    /// A chunker whose gear table is `table` (every entry keyed: format-spec 5).
    pub fn with_table(params: ChunkerParams, table: &[u64; 256]) -> Result<Self> {
        let gear_ls: Vec<u64> = table.iter().map(|g| g << 1).collect();
        Self::with_tables(params, Cow::Owned(table.to_vec()), Cow::Owned(gear_ls))
    }

    fn with_tables(
        params: ChunkerParams,
        gear: Cow<'static, [u64]>,
        gear_ls: Cow<'static, [u64]>,
    ) -> Result<Self> {
        params.validate()?;
        let level = match params.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let (mask_s, mask_l) = v2020::select_masks(params.avg_size as usize, level);
        Ok(Chunker {
            inner: Arc::new(Inner {
                params,
                mask_s,
                mask_l,
                gear,
                gear_ls,
            }),
        })
    }

    pub fn params(&self) -> ChunkerParams {
        self.inner.params
    }

    /// Length of the first chunk of `data` (all of it if it is at most `min_size`).
    pub fn cut(&self, data: &[u8]) -> usize {
        let i = &self.inner;
        let p = i.params;
        let (_, n) = v2020::cut_gear(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            i.mask_s,
            i.mask_l,
            i.mask_s << 1,
            i.mask_l << 1,
            &i.gear,
            &i.gear_ls,
        );
        n
    }

    /// Cuts a whole in-memory buffer into chunk lengths.
    pub fn cut_all(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.cut(data);
            out.push(n);
            data = &data[n..];
        }
        out
    }

    /// Streams chunks out of a reader.
    pub fn chunks<R: Read>(&self, reader: R) -> Chunks<R> {
        self.chunks_sized(reader, None)
    }

    /// As [`chunks`](Self::chunks), with the expected input length (a file's size), so the read
    /// buffer of a small input is small. Only memory use depends on the hint, never the chunks.
    pub fn chunks_sized<R: Read>(&self, reader: R, size_hint: Option<u64>) -> Chunks<R> {
        self.chunks_reading(reader, size_hint, 0)
    }

    /// As [`chunks_sized`](Self::chunks_sized), reading `ahead` bytes ahead (at least two
    /// maximum chunk sizes), so each [`Chunks::next_batch`] lends more than `ahead - max_size`
    /// bytes of chunks: more chunks at a time for work done in parallel. Only memory use
    /// depends on `ahead`.
    pub fn chunks_reading<R: Read>(
        &self,
        reader: R,
        size_hint: Option<u64>,
        ahead: usize,
    ) -> Chunks<R> {
        let full = ahead.max(2 * self.inner.params.max_size as usize);
        let cap = size_hint.map_or(full, |h| (h as usize).saturating_add(1).min(full));
        Chunks {
            chunker: self.clone(),
            reader,
            buf: Vec::with_capacity(cap),
            ahead: full,
            pos: 0,
            eof: false,
        }
    }
}

/// Iterator of owned chunks read from `R`.
pub struct Chunks<R> {
    chunker: Chunker,
    reader: R,
    buf: Vec<u8>,
    /// Bytes read ahead: at least two maximum chunk sizes.
    ahead: usize,
    pos: usize,
    eof: bool,
}

impl<R: Read> Chunks<R> {
    fn fill(&mut self) -> io::Result<()> {
        let max = self.chunker.inner.params.max_size as usize;
        while !self.eof && self.buf.len() - self.pos < max {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let want = (self.ahead - self.buf.len()) as u64;
            let got = (&mut self.reader).take(want).read_to_end(&mut self.buf)?;
            if (got as u64) < want {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// The next run of chunks, cut in the read-ahead buffer and lent out without copying:
    /// every chunk whose cut point is final (at least `max_size` bytes follow its start, or
    /// the input ended), more than (bytes read ahead - `max_size`) bytes of input per call
    /// until the end. Empty at the end of the input. The chunks are those [`Iterator::next`]
    /// gives, one by one.
    pub fn next_batch(&mut self) -> io::Result<Vec<&[u8]>> {
        self.fill()?;
        let max = self.chunker.inner.params.max_size as usize;
        let mut cuts = Vec::new();
        let mut p = self.pos;
        loop {
            let rest = &self.buf[p..];
            if rest.is_empty() || (rest.len() < max && !self.eof) {
                break;
            }
            let n = self.chunker.cut(rest);
            cuts.push((p, n));
            p += n;
        }
        self.pos = p;
        Ok(cuts.into_iter().map(|(s, n)| &self.buf[s..s + n]).collect())
    }

    /// The reader, once iteration is done.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            return Some(Err(e));
        }
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let n = self.chunker.cut(rest);
        let chunk = rest[..n].to_vec();
        self.pos += n;
        Some(Ok(chunk))
    }
}

/// Deterministic test data: SplitMix64 with a seed, as defined in format-spec.md (appendix).
pub fn splitmix_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns at most `step` bytes per call, to exercise buffer boundaries.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn small() -> Chunker {
        let p = ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
        };
        Chunker::new(p, 42).unwrap()
    }

    #[test]
    fn streaming_matches_one_pass_and_concatenates() {
        let c = small();
        let data = splitmix_bytes(1, 300_000);
        let expect = c.cut_all(&data);
        for step in [1usize, 7, 4096, 100_000] {
            let chunks: Vec<Vec<u8>> = c
                .chunks(Dribble { data: &data, step })
                .map(|r| r.unwrap())
                .collect();
            let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            assert_eq!(lens, expect, "step {step}");
            assert_eq!(chunks.concat(), data);
        }
        assert!(expect.iter().all(|&n| n <= 16384));
        assert!(expect[..expect.len() - 1].iter().all(|&n| n >= 1024));
    }

    #[test]
    fn batches_are_the_chunks_of_one_pass() {
        let c = small();
        let data = splitmix_bytes(3, 250_000);
        let expect = c.cut_all(&data);
        for (step, span) in [
            (1usize, 2),
            (5000, 2),
            (1 << 20, 2),
            (5000, 5),
            (1 << 20, 9),
        ] {
            let d = Dribble { data: &data, step };
            let mut chunks = c.chunks_reading(d, None, span * 16384);
            let (mut lens, mut joined, mut batches) = (Vec::new(), Vec::new(), 0);
            loop {
                let b = chunks.next_batch().unwrap();
                if b.is_empty() {
                    break;
                }
                batches += 1;
                let bytes: usize = b.iter().map(|c| c.len()).sum();
                // Each batch but the last holds more than (span - 1) max_size bytes.
                assert!(
                    bytes > (span - 1) * 16384 || joined.len() + bytes == data.len(),
                    "{bytes}, span {span}"
                );
                for ch in b {
                    lens.push(ch.len());
                    joined.extend_from_slice(ch);
                }
            }
            assert_eq!(lens, expect, "step {step}, span {span}");
            assert_eq!(joined, data);
            assert!(
                batches < expect.len(),
                "batches {batches}, chunks {}",
                expect.len()
            );
            assert!(chunks.next_batch().unwrap().is_empty());
        }
    }

    #[test]
    fn size_hint_never_changes_chunks() {
        let c = small();
        let data = splitmix_bytes(5, 100_000);
        let expect = c.cut_all(&data);
        for hint in [None, Some(0), Some(10), Some(100_000), Some(1 << 40)] {
            let lens: Vec<usize> = c
                .chunks_sized(
                    Dribble {
                        data: &data,
                        step: 3000,
                    },
                    hint,
                )
                .map(|r| r.unwrap().len())
                .collect();
            assert_eq!(lens, expect, "hint {hint:?}");
        }
    }

    #[test]
    fn seed_changes_cut_points_and_insertion_is_local() {
        let data = splitmix_bytes(2, 200_000);
        let a = small().cut_all(&data);
        let other = Chunker::new(small().params(), 43).unwrap().cut_all(&data);
        assert_ne!(a, other);
        let mut shifted = vec![0xAAu8; 10];
        shifted.extend_from_slice(&data);
        let b = small().cut_all(&shifted);
        // After the first few chunks the cut points realign.
        let tail_a: Vec<usize> = a[3..].to_vec();
        assert!(b.ends_with(&tail_a));
    }

    #[test]
    fn rejects_bad_params() {
        let mut p = ChunkerParams::default();
        p.min_size = p.avg_size;
        assert!(Chunker::new(p, 0).is_err());
        let p = ChunkerParams {
            max_size: 3,
            ..Default::default()
        };
        assert!(Chunker::new(p, 0).is_err());
    }
}
