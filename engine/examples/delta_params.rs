//! Measures zstd parameter sets for delta frames on two versions of a file (two days of a
//! database dump): pairs each new chunk with the most similar old chunk near the same place,
//! as a backup does, then compresses every pair with each parameter set (one reused context,
//! one thread) and prints the time, the total frame size and the time to decode them.
//! usage: cargo run --release -p chunkbak-engine --example delta_params -- OLD NEW [NAME]
//! (NAME: only the parameter sets whose name contains it)
use chunkbak_engine::chunker::{Chunker, ChunkerParams};
use chunkbak_engine::resemble::sketch;
use std::time::Instant;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let c = Chunker::new(ChunkerParams::default(), 7).unwrap();
    let mut out = vec![];
    let mut off = 0;
    for n in c.cut_all(data) {
        out.push(&data[off..off + n]);
        off += n;
    }
    out
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let old = std::fs::read(&a[1]).unwrap();
    let new = std::fs::read(&a[2]).unwrap();
    let oc = chunks(&old);
    let nc = chunks(&new);
    let os: Vec<_> = oc.iter().map(|c| sketch(c)).collect();
    let mut pairs = vec![];
    let mut cur = 0usize;
    for c in &nc {
        let s = sketch(c);
        let lo = cur.saturating_sub(2);
        let hi = (cur + 9).min(oc.len());
        if let Some((n, i)) = (lo..hi)
            .map(|i| (os[i].shared(&s), i))
            .max_by_key(|(n, i)| (*n, std::cmp::Reverse(*i)))
        {
            if n >= 3 {
                pairs.push((*c, oc[i]));
                cur = i + 1;
            }
        }
    }
    eprintln!("{} new chunks, {} paired", nc.len(), pairs.len());
    let t = Instant::now();
    let s: usize = pairs.iter().map(|(_, b)| sketch(b).0[0] as usize & 1).sum();
    eprintln!("sketch of bases: {:.3}s ({s})", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let whole: usize = pairs
        .iter()
        .map(|(c, _)| zstd::bulk::compress(c, 3).unwrap().len())
        .sum();
    eprintln!(
        "whole level 3: {:.3}s {} bytes",
        t.elapsed().as_secs_f64(),
        whole
    );
    use CParameter::*;
    let configs: Vec<(&str, Vec<CParameter>)> = vec![
        (
            "l3 ldm",
            vec![CompressionLevel(3), EnableLongDistanceMatching(true)],
        ),
        ("l1 h21", vec![CompressionLevel(1), HashLog(21)]),
        ("l1 h20", vec![CompressionLevel(1), HashLog(20)]),
        ("l1 h19", vec![CompressionLevel(1), HashLog(19)]),
        ("l2 h21", vec![CompressionLevel(2), HashLog(21)]),
        ("l3 h21", vec![CompressionLevel(3), HashLog(21)]),
        (
            "l3 h21c18",
            vec![CompressionLevel(3), HashLog(21), ChainLog(18)],
        ),
        (
            "l1 h21 ldm",
            vec![
                CompressionLevel(1),
                HashLog(21),
                EnableLongDistanceMatching(true),
            ],
        ),
        (
            "l1 h21 mm6",
            vec![CompressionLevel(1), HashLog(21), MinMatch(6)],
        ),
        (
            "l1 h21 mm5",
            vec![CompressionLevel(1), HashLog(21), MinMatch(5)],
        ),
    ];
    let only: Option<&String> = a.get(3);
    let mut reuse = CCtx::create();
    for (name, params) in configs {
        if only.is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        for fresh in [true, false] {
            let t = Instant::now();
            let mut frames = vec![];
            for (c, b) in &pairs {
                let mut fc;
                let cx: &mut CCtx = if fresh {
                    fc = CCtx::create();
                    &mut fc
                } else {
                    reuse
                        .reset(zstd::zstd_safe::ResetDirective::SessionAndParameters)
                        .unwrap();
                    &mut reuse
                };
                for p in &params {
                    cx.set_parameter(*p).unwrap();
                }
                let need = (c.len() + b.len()).next_power_of_two().trailing_zeros();
                cx.set_parameter(CParameter::WindowLog(need.clamp(10, 25)))
                    .unwrap();
                cx.ref_prefix(b).unwrap();
                let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(c.len()));
                cx.compress2(&mut out, c).unwrap();
                frames.push(out);
            }
            let ct = t.elapsed().as_secs_f64();
            let size: usize = frames.iter().map(|f| f.len()).sum();
            let t = Instant::now();
            let mut d = DCtx::create();
            for ((c, b), f) in pairs.iter().zip(&frames) {
                d.reset(zstd::zstd_safe::ResetDirective::SessionAndParameters)
                    .unwrap();
                d.set_parameter(DParameter::WindowLogMax(25)).unwrap();
                d.ref_prefix(b).unwrap();
                let mut out = Vec::with_capacity(c.len());
                d.decompress(&mut out, f).unwrap();
                assert_eq!(&out[..], *c);
            }
            let dt = t.elapsed().as_secs_f64();
            println!(
                "{name:14} fresh={fresh:5} compress {ct:.3}s  decompress {dt:.3}s  {size} bytes"
            );
        }
    }
}
