//! Pack ranges for restores: blobs planned together are fetched in few requests, each range
//! once, and read back identical to blob-by-blob reads; a zero budget falls back to single reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::ops::backup::{self, BackupOptions};
use chunkbak_engine::ops::packread::PackReader;
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::{Id, Repository};

#[test]
fn planned_blobs_are_read_by_range() {
    let d = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        chunker: chunkbak_engine::chunker::ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
            normalization: 1,
        },
        data_pack_size: 256 * 1024,
        ..Default::default()
    };
    let repo = Arc::new(
        Repository::init(
            Arc::new(LocalBackend::new(d.path().join("repo"))),
            b"pw",
            &opts,
        )
        .unwrap(),
    );
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..4u64 {
        std::fs::write(
            src.join(format!("f{i}")),
            chunkbak_engine::chunker::splitmix_bytes(i, 400_000),
        )
        .unwrap();
    }
    let res = backup::backup(
        &repo,
        BackupOptions {
            paths: vec![src.clone()],
            threads: 1,
            ..Default::default()
        },
        Arc::new(NoProgress),
    )
    .unwrap();
    assert!(res.packs_written >= 6, "{}", res.packs_written);
    let mut blobs: Vec<Id> = Vec::new();
    for name in ["f0", "f1", "f2", "f3"] {
        let mut p = src.to_string_lossy().into_owned().into_bytes();
        p.extend_from_slice(format!("/{name}").as_bytes());
        let n = chunkbak_engine::ops::ls::find(&repo, res.snapshot.tree, &p)
            .unwrap()
            .unwrap();
        blobs.extend(repo.file_chunks(&n.content).unwrap());
    }
    assert!(blobs.len() > 60, "{} chunks", blobs.len());
    let reader = PackReader::new(&repo, &blobs, 64 << 20).unwrap();
    for b in &blobs {
        assert_eq!(reader.read(b).unwrap(), repo.read_blob(b).unwrap());
    }
    let fetched = reader.fetched.load(Ordering::Relaxed);
    let data_packs = repo
        .backend()
        .list(chunkbak_engine::backend::FileKind::Data)
        .unwrap()
        .len();
    assert!(
        fetched as usize <= data_packs,
        "{fetched} range requests for {} blobs in {data_packs} packs",
        blobs.len()
    );
    // A range left with a single blob is read alone (not "served"): at most one per pack,
    // where the key-dependent cut points leave a lone chunk in a pack.
    let served = reader.served.load(Ordering::Relaxed) as usize;
    assert!(
        served <= blobs.len() && served + data_packs >= blobs.len(),
        "{served} of {} blobs served from ranges of {data_packs} packs",
        blobs.len()
    );
    assert_eq!(
        reader.held(),
        0,
        "every range is released after its last read"
    );
    // Reads that will not happen (a file that failed) release their ranges too.
    let partial = PackReader::new(&repo, &blobs, 64 << 20).unwrap();
    // Stop between two blobs of one pack, so the range holding both is still needed.
    let pack_of = |b: &Id| repo.locate(b).unwrap().0.id;
    let half = (blobs.len() / 2..blobs.len())
        .find(|&i| pack_of(&blobs[i - 1]) == pack_of(&blobs[i]))
        .expect("two neighbouring chunks share a pack");
    for b in &blobs[..half] {
        partial.read(b).unwrap();
    }
    assert!(partial.held() > 0);
    partial.skip(&blobs[half..]);
    assert_eq!(partial.held(), 0);
    // Without memory for ranges, every blob is read on its own, still correctly.
    let lean = PackReader::new(&repo, &blobs, 0).unwrap();
    for b in blobs.iter().take(10) {
        assert_eq!(lean.read(b).unwrap(), repo.read_blob(b).unwrap());
    }
    assert_eq!(lean.fetched.load(Ordering::Relaxed), 0);
}
