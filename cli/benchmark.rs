//! `chunkbak benchmark`: chunk, hash, compress and encrypt throughput on this host.

use anyhow::Context;
use chunkbak_engine::timeparse;
use serde_json::json;
use std::io::IsTerminal;

use crate::args::{self, Global};
use crate::output::Out;
use crate::{exit, usage};

pub fn cmd_benchmark(g: &Global, out: &Out, a: &args::BenchmarkArgs) -> anyhow::Result<i32> {
    use chunkbak_engine::ops::benchmark::{self, BenchOptions, SAMPLES};
    let samples: Vec<String> = a.samples.split(',').map(|s| s.trim().to_string()).collect();
    if let Some(bad) = samples.iter().find(|s| !SAMPLES.contains(&s.as_str())) {
        usage!("--samples: unknown sample {bad:?} (random, text, zeros, mixed)");
    }
    let size = timeparse::parse_size(&a.size).context("--size")?;
    if !(1 << 20..=4 << 30).contains(&size) {
        usage!("--size {}: between 1MiB and 4GiB", a.size);
    }
    let opts = BenchOptions {
        size: size as usize,
        threads: a.threads,
        level: a.compression,
        samples,
        rounds: a.rounds,
        ..BenchOptions::default()
    };
    let show = !out.json && !out.quiet && !g.no_progress && std::io::stderr().is_terminal();
    let r = benchmark::run(&opts, &|what| {
        if show {
            eprint!("\rmeasuring {what}...                    ");
        }
    })?;
    if show {
        eprint!("\r{:60}\r", "");
    }
    let mbs = |b: f64| b / 1e6;
    if out.json {
        for f in &r.figures {
            out.json_line(
                "benchmark",
                json!({"stage": f.stage, "sample": f.sample, "threads": f.threads,
                       "bytes_per_sec": f.bytes_per_sec.round()}),
            );
        }
        for (s, e, serial) in &r.efficiency {
            out.json_line(
                "benchmark_efficiency",
                json!({"sample": s, "pipeline_over_slowest_stage": (e * 1000.0).round() / 1000.0,
                       "pipeline_over_stages_in_sequence": (serial * 1000.0).round() / 1000.0}),
            );
        }
        return Ok(exit::OK);
    }
    out.line(format!(
        "chunk pipeline on this host, MB/s of input (best of {}; {} MiB samples; zstd level {}):",
        opts.rounds,
        opts.size >> 20,
        opts.level
    ));
    out.line(format!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>14} {:>9} {:>9}",
        "sample",
        "chunk",
        "hash",
        "compress",
        "encrypt",
        "pipeline",
        format!("on {} threads", r.threads),
        "/slowest",
        "/serial"
    ));
    for (s, e, serial) in &r.efficiency {
        let get = |stage: &str| {
            r.figures
                .iter()
                .find(|f| f.stage == stage && &f.sample == s)
                .map_or(0.0, |f| mbs(f.bytes_per_sec))
        };
        out.line(format!(
            "{:<8} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>14.0} {:>8.0}% {:>8.0}%",
            s,
            get("chunk"),
            get("hash"),
            get("compress"),
            get("encrypt"),
            get("pipeline"),
            get("pipeline-all"),
            e * 100.0,
            serial * 100.0
        ));
    }
    out.line(
        "pipeline: all four stages on one core; /slowest: its speed over the slowest stage's \
         alone; /serial: over the four stages timed alone, one after the other (100% = no time \
         lost between stages). A backup of new data runs at about the all-threads figure until \
         the disk or the network is slower. Encryption is timed on compressed chunks, as the \
         pipeline runs it.",
    );
    Ok(exit::OK)
}
