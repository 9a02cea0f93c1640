//! Throughput of each stage of the chunk pipeline and of the whole pipeline on one core, over
//! deterministic data of several entropies. `cargo bench --bench pipeline`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use chunkbak_engine::chunker::{Chunker, ChunkerParams};
use chunkbak_engine::compressor::compress;
use chunkbak_engine::crypter::{DedupKey, MasterKey};
use chunkbak_engine::ops::benchmark::{sample, SAMPLES};

const LEN: usize = 32 << 20;

/// (name, data): random, zeros, text-like, and a mix of the three (the samples of
/// `chunkbak benchmark`).
fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    SAMPLES.iter().map(|k| (*k, sample(k, LEN))).collect()
}

fn stages(c: &mut Criterion) {
    let mk = MasterKey::from_material([7; 32]);
    let dk = DedupKey::from_secret(&[7; 32]);
    let chunker = Chunker::with_table(ChunkerParams::default(), dk.gear_table()).unwrap();
    let hasher = dk.hasher();
    let cipher = mk.object_cipher(&[9; 32]);
    let data = inputs();

    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for (name, d) in &data {
        g.bench_with_input(BenchmarkId::from_parameter(name), d, |b, d| {
            b.iter(|| chunker.cut_all(d).len())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for (name, d) in &data {
        g.bench_with_input(BenchmarkId::from_parameter(name), d, |b, d| {
            b.iter(|| {
                d.chunks(1 << 20)
                    .map(|c| hasher.id(c).0[0])
                    .fold(0u8, |a, x| a ^ x)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("compress");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for (name, d) in &data {
        g.bench_with_input(BenchmarkId::from_parameter(name), d, |b, d| {
            b.iter(|| {
                d.chunks(1 << 20)
                    .map(|c| compress(c, 3).1.len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encrypt");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    let (_, d) = &data[0];
    g.bench_function("random", |b| {
        b.iter(|| {
            d.chunks(1 << 20)
                .enumerate()
                .map(|(i, c)| cipher.seal(i as u64, b"prefix", c).len())
                .sum::<usize>()
        })
    });
    g.finish();

    // The whole pipeline on one core: cut, hash, compress, encrypt every chunk.
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for (name, d) in &data {
        g.bench_with_input(BenchmarkId::from_parameter(name), d, |b, d| {
            b.iter(|| {
                // Batches lent out of the chunker's buffer, as a backup reads them.
                let mut off = 0u64;
                let mut stream = chunker.chunks(&d[..]);
                loop {
                    let batch = stream.next_batch().unwrap();
                    if batch.is_empty() {
                        break off;
                    }
                    for c in batch {
                        let id = hasher.id(c);
                        let (_, mut s) = compress(c, 3);
                        cipher.seal_in_place(off, &id.0[..6], &mut s);
                        off += s.len() as u64;
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
