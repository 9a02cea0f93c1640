//! A repository whose index holds many chunks stored as deltas (a fleet's database dumps), for
//! measuring what a backup and a prune hold of their bases (issue 24, docs/benchmarks.md):
//! `synth_deltas DIR BLOBS [whole]` writes BLOBS blob records, each a delta on a blob of its
//! own (or whole chunks with `whole`, to compare), 1,000 a pack and 100,000 an index file, in
//! packs that are never stored (nothing reads them). Password `bench`.

use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::compressor::Compression;
use chunkbak_engine::format::index::PackEntry;
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::format::pack::{BlobKind, BlobRecord};
use chunkbak_engine::format::ObjectKind;
use chunkbak_engine::id::Id;
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::Repository;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let blobs: u64 = args[2].parse().unwrap();
    let deltas = args.get(3).map(String::as_str) != Some("whole");
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    let repo = Repository::init(Arc::new(LocalBackend::new(dir)), b"bench", &opts).unwrap();
    let id = |i: u64, what: u64| {
        let mut b = [0u8; 32];
        for (k, w) in b.chunks_exact_mut(8).enumerate() {
            let x = (i ^ (what << 40) ^ ((k as u64) << 56)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            w.copy_from_slice(&(x ^ (x >> 29)).to_le_bytes());
        }
        Id(b)
    };
    for file in (0..blobs).step_by(100_000) {
        let end = (file + 100_000).min(blobs);
        let packs = (file..end)
            .step_by(1000)
            .map(|p| PackEntry {
                id: id(p, 3),
                kind: ObjectKind::DataPack,
                size: 38 + 100_000 + 4096,
                crc32c: 0,
                salt: [7; 32],
                mark: None,
                blobs: (p..(p + 1000).min(end))
                    .map(|i| BlobRecord {
                        id: id(i, 1),
                        offset: 38 + (i - p) as u32 * 100,
                        length: 100,
                        raw_len: 1 << 20,
                        kind: BlobKind::Data,
                        compression: if deltas {
                            Compression::Delta
                        } else {
                            Compression::Zstd
                        },
                        base: deltas.then(|| id(i, 2)),
                    })
                    .collect(),
            })
            .collect();
        repo.write_index(packs).unwrap();
    }
    println!(
        "{blobs} {} indexed",
        if deltas { "deltas" } else { "whole blobs" }
    );
}
