//! A repository whose index holds many chunks stored as deltas (a fleet's database dumps), for
//! measuring what a backup and a prune hold of their bases (issue 24, docs/benchmarks.md):
//! `synth_deltas DIR BLOBS [whole]` writes BLOBS blob records, each a delta on a blob of its
//! own (or whole chunks with `whole`, to compare), 1,000 a pack and 100,000 an index file, in
//! packs that are never stored (nothing reads them). Password `bench`.

use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::key::KdfParams;
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
    chunkbak_engine::synth::index_blobs(&repo, blobs, 100_000, deltas).unwrap();
    println!(
        "{blobs} {} indexed",
        if deltas { "deltas" } else { "whole blobs" }
    );
}
