//! Issue 20, part 2: whoever sees chunk lengths (the one ranged GET per blob of a restore, a
//! pack's record count) recovers the v1 chunker's secret, because its gear table is the public
//! one XOR a 64-bit seed and the gear hash only shifts and adds, so hash bit k depends on seed
//! bits 0..k alone ("Breaking and Fixing Content-Defined Chunking", RWC 2025). This test plays
//! that attack: it recovers the seed of a v1 chunker from one known file's chunk lengths and
//! predicts another file's cuts, and fails to against the keyed table of new repositories.

use chunkbak_engine::chunker::{splitmix_bytes, Chunker, ChunkerParams};
use chunkbak_engine::crypter::DedupKey;
use fastcdc::v2020::{self, Normalization};

const P: ChunkerParams = ChunkerParams {
    min_size: 4096,
    avg_size: 16384,
    max_size: 65536,
    normalization: 1,
};

/// One observed cut: the input from the chunk's start (the cut test reads one byte past the
/// chunk's end), and the chunk's length.
struct Cut<'a> {
    src: &'a [u8],
    len: usize,
}

struct Attack<'a> {
    gear: Vec<u64>,
    mask_s: u64,
    mask_l: u64,
    cuts: Vec<Cut<'a>>,
    top: u32,
    known: &'a [u8],
    observed: &'a [usize],
}

impl Attack<'_> {
    /// The mask tested where `c` was cut, and the hash there under seed `s` (exact in its low
    /// bits: steps more than 32 back are shifted out).
    fn at(&self, c: &Cut<'_>, s: u64) -> (u64, u64) {
        let n = c.len;
        let even = n.is_multiple_of(2);
        let end = if even { n / 2 } else { (n - 1) / 2 };
        let small = end < P.avg_size as usize / 2;
        let mask = if small { self.mask_s } else { self.mask_l };
        let mut h = 0u64;
        for i in end.saturating_sub(33).max(P.min_size as usize / 2)..=end {
            let a = 2 * i;
            h = (h << 2).wrapping_add((self.gear[c.src[a] as usize] << 1) ^ (s << 1));
            if i == end && even {
                return (h, mask << 1);
            }
            h = h.wrapping_add(self.gear[c.src[a + 1] as usize] ^ s);
        }
        (h, mask)
    }

    /// Seed bits `k..`, depth first, given bits `0..k` in `s`.
    fn search(&self, k: u32, s: u64) -> Option<u64> {
        if k > self.top {
            let c = Chunker::new(P, s).ok()?;
            return (c.cut_all(self.known) == self.observed).then_some(s);
        }
        for v in [0u64, 1] {
            let s2 = s | (v << k);
            let bit = 1u64 << k;
            let ok = self.cuts.iter().all(|c| {
                let (h, m) = self.at(c, s2);
                m & bit == 0 || h & bit == 0
            });
            if ok {
                if let Some(found) = self.search(k + 1, s2) {
                    return Some(found);
                }
            }
        }
        None
    }
}

/// Recovers a v1 seed that cuts `known` into `observed`, from those lengths alone.
fn recover(known: &[u8], observed: &[usize]) -> Option<u64> {
    let (mask_s, mask_l) = v2020::select_masks(P.avg_size as usize, Normalization::Level1);
    let (gear, _) = v2020::get_gear_with_seed(0);
    let mut cuts = Vec::new();
    let mut off = 0;
    for &n in observed {
        // Forced cuts (at max or the end) say nothing about the hash.
        if n < P.max_size as usize && off + P.max_size as usize <= known.len() {
            cuts.push(Cut {
                src: &known[off..],
                len: n,
            });
        }
        off += n;
    }
    let top = 63 - ((mask_s | mask_l) << 1).leading_zeros();
    Attack {
        gear: gear.to_vec(),
        mask_s,
        mask_l,
        cuts,
        top,
        known,
        observed,
    }
    .search(0, 0)
}

#[test]
fn chunk_lengths_give_away_the_v1_seed_but_not_the_keyed_table() {
    let known = splitmix_bytes(11, 1 << 20);
    let other = splitmix_bytes(12, 1 << 20);
    let dk = DedupKey::from_secret(&[0x5a; 32]);

    // v1: the observer learns a seed that cuts every other file as the repository does.
    let v1 = Chunker::new(P, dk.gear_seed()).unwrap();
    let observed = v1.cut_all(&known);
    assert!(observed.len() > 30, "{} chunks", observed.len());
    let s = recover(&known, &observed).expect("the attack recovers the v1 seed");
    assert_eq!(
        Chunker::new(P, s).unwrap().cut_all(&other),
        v1.cut_all(&other),
        "the recovered seed predicts another file's chunks"
    );

    // Keyed table (new repositories): no seed of the v1 form explains the lengths.
    let keyed = dk.chunker(P, true).unwrap();
    let observed = keyed.cut_all(&known);
    match recover(&known, &observed) {
        None => {}
        Some(s) => assert_ne!(
            Chunker::new(P, s).unwrap().cut_all(&other),
            keyed.cut_all(&other),
            "a v1 seed predicted the keyed chunker"
        ),
    }
}
