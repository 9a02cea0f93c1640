//! Resemblance of chunks, for delta encoding: a chunk's sketch is a few features, each the
//! largest value of one linear transform of a rolling hash over sampled positions. Chunks that
//! share most of their bytes share most features; unrelated chunks share none (each feature
//! matches by chance with odds of 2^-64). Which chunks a writer compares and deltas against is
//! its own choice, not part of the format: only the delta blob is (format-spec 6.1).

/// Features per sketch.
pub const FEATURES: usize = 12;

/// Positions whose rolling hash has these bits clear are sampled (one in 256 on average: a
/// 64 KiB chunk still has about 256 samples, and the rare sample keeps the hash loop free of
/// mispredicted branches).
const SAMPLE_MASK: u64 = 0xff << 56;

/// A chunk's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sketch(pub [u64; FEATURES]);

/// The gear table of the rolling hash (a fixed SplitMix64 sequence).
static GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut s: u64 = 0x5eed_0fc4_u64;
    let mut i = 0;
    while i < 256 {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Odd multipliers and offsets of the transforms.
const TRANSFORMS: [(u64, u64); FEATURES] = {
    let mut t = [(0u64, 0u64); FEATURES];
    let mut s: u64 = 0xfea7_u64;
    let mut i = 0;
    while i < FEATURES {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = ((z ^ (z >> 31)) | 1, z.rotate_left(17));
        i += 1;
    }
    t
};

/// The sketch of `data`. The hash spans the last 64 bytes (a gear hash shifts one bit a byte),
/// so an edit changes only the features whose maxima lay within 64 bytes of it.
pub fn sketch(data: &[u8]) -> Sketch {
    let mut f = [0u64; FEATURES];
    let take = |f: &mut [u64; FEATURES], h: u64| {
        for (x, (m, a)) in f.iter_mut().zip(TRANSFORMS.iter()) {
            let v = h.wrapping_mul(*m).wrapping_add(*a);
            if v > *x {
                *x = v;
            }
        }
    };
    let mut h = 0u64;
    // Eight bytes at a time with one branch, taken about once in 32 blocks.
    let mut blocks = data.chunks_exact(8);
    for block in &mut blocks {
        let mut hs = [0u64; 8];
        let mut hit = false;
        for (slot, &b) in hs.iter_mut().zip(block) {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            *slot = h;
            hit |= h & SAMPLE_MASK == 0;
        }
        if hit {
            for &x in hs.iter().filter(|x| **x & SAMPLE_MASK == 0) {
                take(&mut f, x);
            }
        }
    }
    for &b in blocks.remainder() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & SAMPLE_MASK == 0 {
            take(&mut f, h);
        }
    }
    Sketch(f)
}

impl Sketch {
    /// How many features two sketches share (0 to [`FEATURES`]).
    pub fn shared(&self, other: &Sketch) -> usize {
        self.0
            .iter()
            .zip(other.0.iter())
            .filter(|(a, b)| a == b && **a != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seed: u64, n: usize) -> Vec<u8> {
        let words = [
            "alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "12.50\t", "PAID\t",
        ];
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(n + 16);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
            out.extend_from_slice(format!("{}", x % 100_000).as_bytes());
        }
        out.truncate(n);
        out
    }

    /// The blockwise loop computes exactly the definition: the maxima over every position.
    #[test]
    fn the_sketch_is_the_maxima_over_every_sampled_position() {
        let bytewise = |data: &[u8]| {
            let mut f = [0u64; FEATURES];
            let mut h = 0u64;
            for &b in data {
                h = (h << 1).wrapping_add(GEAR[b as usize]);
                if h & SAMPLE_MASK == 0 {
                    for (x, (m, a)) in f.iter_mut().zip(TRANSFORMS.iter()) {
                        *x = (*x).max(h.wrapping_mul(*m).wrapping_add(*a));
                    }
                }
            }
            Sketch(f)
        };
        for n in [0, 1, 7, 8, 9, 4095, 65_537, 300_003] {
            let t = text(n as u64, n);
            assert_eq!(sketch(&t), bytewise(&t), "{n} bytes");
        }
        assert_ne!(sketch(&text(9, 65_536)).0, [0; FEATURES], "nothing sampled");
    }

    /// A chunk with a row changed shares most features with the original; an unrelated chunk
    /// of the same kind of text shares none.
    #[test]
    fn an_edited_chunk_resembles_its_original_and_not_other_text() {
        let a = text(1, 64 << 10);
        let mut edited = a.clone();
        edited.splice(
            30_000..30_040,
            b"an updated row of about the same size!\n".iter().copied(),
        );
        edited.splice(
            50_000..50_000,
            b"an inserted row\t123\tNEW\n".iter().copied(),
        );
        let other = text(2, 64 << 10);
        let (sa, se, so) = (sketch(&a), sketch(&edited), sketch(&other));
        assert!(sa.shared(&se) >= 8, "{}", sa.shared(&se));
        assert_eq!(sa.shared(&so), 0);
        assert_eq!(sa.shared(&sa), FEATURES);
    }
}
