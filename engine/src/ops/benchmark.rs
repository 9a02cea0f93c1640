//! `benchmark`: the throughput of each stage of the chunk pipeline (chunk, hash, compress,
//! encrypt) and of the whole pipeline on this host, on one core and on all of them, over
//! deterministic data of several entropies. It needs no repository: an operator sizes instances
//! and picks settings with it. The criterion benches (`benches/pipeline.rs`) use the same data.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunker::{splitmix_bytes, Chunker, ChunkerParams};
use crate::compressor::compress;
use crate::crypter::{DedupKey, MasterKey};
use crate::error::Result;

/// What [`run`] measures, as [`Figure::stage`] names it.
pub const STAGES: [&str; 6] = [
    "chunk",
    "hash",
    "compress",
    "encrypt",
    "pipeline",
    "pipeline-all",
];

/// The kinds of sample data.
pub const SAMPLES: [&str; 4] = ["random", "text", "zeros", "mixed"];

/// `len` bytes of sample data of one kind: `random` (incompressible), `text` (words, about 4x
/// compressible), `zeros`, or `mixed` (1 MiB runs of the other three in turn).
pub fn sample(kind: &str, len: usize) -> Vec<u8> {
    match kind {
        "random" => splitmix_bytes(1, len),
        "zeros" => vec![0u8; len],
        "text" => {
            const WORDS: [&str; 9] = [
                "backup ",
                "chunk ",
                "the ",
                "repository ",
                "snapshot ",
                "of ",
                "data\n",
                "and ",
                "restore ",
            ];
            let r = splitmix_bytes(2, len / 4 + 1);
            let mut text = Vec::with_capacity(len + 16);
            let mut i = 0;
            while text.len() < len {
                text.extend_from_slice(WORDS[r[i % r.len()] as usize % WORDS.len()].as_bytes());
                i += 1;
            }
            text.truncate(len);
            text
        }
        _ => {
            let parts = [sample("random", len), sample("text", len)];
            let mut out = Vec::with_capacity(len);
            let mut k = 0;
            while out.len() < len {
                let n = (1 << 20).min(len - out.len());
                let s = out.len();
                match k % 3 {
                    0 => out.extend_from_slice(&parts[0][s..s + n]),
                    1 => out.extend_from_slice(&parts[1][s..s + n]),
                    _ => out.resize(s + n, 0),
                }
                k += 1;
            }
            out
        }
    }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Bytes of each sample.
    pub size: usize,
    /// Threads for the all-cores pipeline (0: one per core).
    pub threads: usize,
    pub level: i32,
    pub chunker: ChunkerParams,
    /// Sample kinds to measure.
    pub samples: Vec<String>,
    /// Each figure is the best of this many runs.
    pub rounds: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            size: 64 << 20,
            threads: 0,
            level: 3,
            chunker: ChunkerParams::default(),
            samples: vec!["random".into(), "text".into()],
            rounds: 3,
        }
    }
}

/// One measured figure: bytes of input per second.
#[derive(Clone, Debug)]
pub struct Figure {
    /// `chunk`, `hash`, `compress`, `encrypt`, `pipeline` (one core) or `pipeline-all`.
    pub stage: &'static str,
    pub sample: String,
    pub threads: usize,
    pub bytes_per_sec: f64,
}

#[derive(Clone, Debug)]
pub struct BenchReport {
    pub figures: Vec<Figure>,
    pub threads: usize,
    /// Per sample: the one-core pipeline over its slowest stage, and over the four stages run
    /// one after the other (1.0: no time lost between stages).
    pub efficiency: Vec<(String, f64, f64)>,
}

/// The best time of `rounds` runs of `f`.
fn best(rounds: usize, mut f: impl FnMut() -> usize) -> Duration {
    let mut best = Duration::MAX;
    let mut sink = 0usize;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        sink = sink.wrapping_add(f());
        best = best.min(t.elapsed());
    }
    std::hint::black_box(sink);
    best.max(Duration::from_nanos(1))
}

/// Runs every measurement; `progress(what)` is called before each.
pub fn run(opts: &BenchOptions, progress: &dyn Fn(&str)) -> Result<BenchReport> {
    let mk = MasterKey::from_material([7; 32]);
    let dk = DedupKey::from_secret(&[7; 32]);
    let chunker = Chunker::with_table(opts.chunker, dk.gear_table())?;
    let hasher = dk.hasher();
    let cipher = mk.object_cipher(&[9; 32]);
    let pool = crate::ops::thread_pool(opts.threads, "bench")?;
    let threads = pool.current_num_threads();
    let mut figures = Vec::new();
    let mut efficiency = Vec::new();
    for kind in &opts.samples {
        let data = sample(kind, opts.size);
        let cuts = chunker.cut_all(&data);
        let mut chunks = Vec::with_capacity(cuts.len());
        let mut off = 0;
        for n in &cuts {
            chunks.push(&data[off..off + n]);
            off += n;
        }
        let len = data.len() as f64;
        let mut fig = |stage: &'static str, threads: usize, d: Duration| {
            figures.push(Figure {
                stage,
                sample: kind.clone(),
                threads,
                bytes_per_sec: len / d.as_secs_f64(),
            });
        };
        progress(&format!("chunk {kind}"));
        let chunk = best(opts.rounds, || chunker.cut_all(&data).len());
        fig("chunk", 1, chunk);
        progress(&format!("hash {kind}"));
        let hash = best(opts.rounds, || {
            chunks.iter().map(|c| hasher.id(c).0[0] as usize).sum()
        });
        fig("hash", 1, hash);
        progress(&format!("compress {kind}"));
        let comp = best(opts.rounds, || {
            chunks.iter().map(|c| compress(c, opts.level).1.len()).sum()
        });
        fig("compress", 1, comp);
        progress(&format!("encrypt {kind}"));
        // What the pipeline encrypts: the compressed chunks (per byte of input, like the rest).
        let compressed: Vec<Vec<u8>> = chunks.iter().map(|c| compress(c, opts.level).1).collect();
        let enc = best(opts.rounds, || {
            compressed
                .iter()
                .enumerate()
                .map(|(i, c)| cipher.seal(i as u64, b"prefix", c).len())
                .sum()
        });
        fig("encrypt", 1, enc);
        // The whole pipeline, one chunk after the other, reading through the chunker's stream
        // in batches lent out of its buffer, as a backup does.
        let one = |c: &[u8], i: u64| -> usize {
            let id = hasher.id(c);
            let (_, mut s) = compress(c, opts.level);
            cipher.seal_in_place(i, &id.0[..6], &mut s);
            s.len()
        };
        progress(&format!("pipeline {kind}"));
        let pipe = best(opts.rounds, || {
            let (mut n, mut i) = (0, 0u64);
            let mut stream = chunker.chunks(&data[..]);
            while let Ok(batch) = stream.next_batch() {
                if batch.is_empty() {
                    break;
                }
                for c in batch {
                    n += one(c, i);
                    i += 1;
                }
            }
            n
        });
        fig("pipeline", 1, pipe);
        let stages = [chunk, hash, comp, enc];
        let slowest = stages.into_iter().max().unwrap_or(pipe);
        let serial: f64 = stages.iter().map(Duration::as_secs_f64).sum();
        efficiency.push((
            kind.clone(),
            slowest.as_secs_f64() / pipe.as_secs_f64(),
            serial / pipe.as_secs_f64(),
        ));
        // All cores: chunking is sequential per stream (as in a backup of one big file); the
        // chunks are hashed, compressed and encrypted in parallel batches.
        progress(&format!("pipeline on {threads} threads {kind}"));
        let all = best(opts.rounds, || {
            pool.install(|| {
                let cuts = chunker.cut_all(&data);
                let mut off = 0;
                let mut v = Vec::with_capacity(cuts.len());
                for (i, n) in cuts.iter().enumerate() {
                    v.push((i as u64, off, *n));
                    off += n;
                }
                v.par_iter().map(|&(i, o, n)| one(&data[o..o + n], i)).sum()
            })
        });
        fig("pipeline-all", threads, all);
    }
    Ok(BenchReport {
        figures,
        threads,
        efficiency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_have_their_entropy() {
        for k in SAMPLES {
            assert_eq!(sample(k, 3 << 20).len(), 3 << 20, "{k}");
        }
        let ratio = |k: &str| {
            let d = sample(k, 4 << 20);
            compress(&d, 3).1.len() as f64 / d.len() as f64
        };
        assert!(ratio("random") > 0.99);
        assert!(ratio("text") < 0.5);
        assert!(ratio("zeros") < 0.01);
        let m = ratio("mixed");
        assert!(m > 0.3 && m < 0.7, "{m}");
    }

    #[test]
    fn every_stage_is_measured() {
        let r = run(
            &BenchOptions {
                size: 2 << 20,
                rounds: 1,
                threads: 2,
                ..BenchOptions::default()
            },
            &|_| {},
        )
        .unwrap();
        let stages: Vec<_> = r.figures.iter().map(|f| f.stage).collect();
        for s in STAGES {
            assert_eq!(stages.iter().filter(|x| **x == s).count(), 2, "{s}");
        }
        assert!(r.figures.iter().all(|f| f.bytes_per_sec > 0.0));
        assert_eq!(r.efficiency.len(), 2);
    }
}
