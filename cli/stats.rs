//! `chunkbak stats`: size, dedup and compression ratios of the chosen snapshots; bytes per
//! storage class and the monthly bill for the whole repository.

use serde_json::{json, Map, Value};

use chunkbak_engine::backend::StorageClass;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::ops::stats::{self, Prices};
use chunkbak_engine::Id;

use crate::args::{Global, StatsArgs};
use crate::exit;
use crate::open::open_repo;
use crate::output::{human_bytes, Out};
use crate::snapshots::{choose, filter_of, readable_snapshots};

pub fn cmd_stats(g: &Global, out: &Out, a: &StatsArgs) -> anyhow::Result<i32> {
    let mut prices = Prices::default();
    for p in &a.prices {
        prices.set(p)?;
    }
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (snaps, damaged): (Vec<(Id, Snapshot)>, bool) = if a.snapshot.is_some() || a.at.is_some() {
        let (id, s, _) = choose(
            &repo,
            a.snapshot.as_deref(),
            a.at.as_deref(),
            &a.filter,
            out,
        )?;
        (vec![(id, s)], false)
    } else {
        let filter = filter_of(&a.filter);
        let (all, damaged) = readable_snapshots(&repo, out)?;
        (
            all.into_iter().filter(|(_, s)| filter.matches(s)).collect(),
            !damaged.is_empty(),
        )
    };
    let st = stats::stats(&repo, &snaps)?;
    let classes: Vec<(StorageClass, stats::ClassUsage, f64)> = st
        .classes
        .iter()
        .map(|(c, u)| (*c, *u, prices.monthly(*c, *u)))
        .collect();
    let monthly: f64 = classes.iter().map(|c| c.2).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let whole_ratio = ratio(
        st.chunk_bytes - st.delta_bytes,
        st.chunk_stored_bytes - st.delta_stored_bytes,
    );
    let delta_ratio = ratio(st.delta_bytes, st.delta_stored_bytes);
    if out.json {
        let mut by_class = Map::new();
        for (c, u, usd) in &classes {
            by_class.insert(
                c.name().into(),
                json!({"objects": u.objects, "bytes": u.bytes, "usd_per_month": usd,
                       "usd_per_gib_month": prices.of(*c)}),
            );
        }
        let mut by_kind = Map::new();
        for (k, u) in &st.kinds {
            by_kind.insert((*k).into(), json!({"objects": u.objects, "bytes": u.bytes}));
        }
        out.json_line(
            "stats",
            json!({
                "snapshots": st.snapshots, "files": st.files,
                "logical_bytes": st.logical_bytes, "chunks": st.chunks,
                "chunk_bytes": st.chunk_bytes, "chunk_stored_bytes": st.chunk_stored_bytes,
                "chunks_missing": st.chunks_missing,
                "delta_chunks": st.delta_chunks, "delta_bytes": st.delta_bytes,
                "delta_stored_bytes": st.delta_stored_bytes,
                "delta_max_depth": st.delta_max_depth,
                "base_only_chunks": st.base_only_chunks,
                "base_only_stored_bytes": st.base_only_stored_bytes,
                "dedup_ratio": st.dedup_ratio(), "compression_ratio": st.compression_ratio(),
                "whole_chunk_compression_ratio": whole_ratio, "delta_ratio": delta_ratio,
                "total_ratio": st.total_ratio(),
                "repository_bytes": st.repository_bytes(),
                "storage_classes": Value::Object(by_class),
                "kinds": Value::Object(by_kind),
                "usd_per_month": monthly,
            }),
        );
    } else {
        out.line(format!(
            "{}, {}, {} as restored",
            crate::output::count(st.snapshots, "snapshot"),
            crate::output::count(st.files, "file"),
            human_bytes(st.logical_bytes)
        ));
        out.line(format!(
            "distinct chunks: {} ({}), stored as {}",
            st.chunks,
            human_bytes(st.chunk_bytes),
            human_bytes(st.chunk_stored_bytes)
        ));
        if st.delta_chunks > 0 {
            out.line(format!(
                "deltas: {} chunks ({}) stored as {}, chains at most {} deep; {} more base \
                 chunks ({}) that only deltas use",
                st.delta_chunks,
                human_bytes(st.delta_bytes),
                human_bytes(st.delta_stored_bytes),
                st.delta_max_depth,
                st.base_only_chunks,
                human_bytes(st.base_only_stored_bytes)
            ));
        }
        // Deltas are stored at a few percent of their size: counted apart, so the compression
        // ratio is zstd's on whole chunks.
        let deltas = if st.delta_chunks > 0 {
            format!(", deltas {delta_ratio:.2}")
        } else {
            String::new()
        };
        out.line(format!(
            "dedup ratio {:.2}, compression ratio {whole_ratio:.2}{deltas}, together {:.2}",
            st.dedup_ratio(),
            st.total_ratio()
        ));
        out.line(format!(
            "repository: {} in all ({})",
            human_bytes(st.repository_bytes()),
            st.kinds
                .iter()
                .map(|(k, u)| format!("{k} {}", human_bytes(u.bytes)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.line(format!(
            "{:<20} {:>10} {:>12} {:>14} {:>12}",
            "storage class", "objects", "bytes", "USD/GiB-month", "USD/month"
        ));
        for (c, u, usd) in &classes {
            out.line(format!(
                "{:<20} {:>10} {:>12} {:>14} {:>12.2}",
                c.name(),
                u.objects,
                human_bytes(u.bytes),
                prices.of(*c),
                usd
            ));
        }
        out.line(format!(
            "{:<20} {:>10} {:>12} {:>14} {:>12.2}",
            "total",
            classes.iter().map(|c| c.1.objects).sum::<u64>(),
            human_bytes(st.repository_bytes()),
            "",
            monthly
        ));
        if !repo.backend().is_remote() {
            out.line("(a local repository: the bill is what the same objects would cost in S3)");
        }
    }
    if st.chunks_missing > 0 {
        crate::elog!(
            "chunkbak: {} chunks the snapshots reference are in no pack of the index: run `chunkbak check`",
            st.chunks_missing
        );
        return Ok(exit::PARTIAL);
    }
    Ok(if damaged { exit::PARTIAL } else { exit::OK })
}
