//! The index kept on disk between runs (format-spec 16) is used again only while it describes
//! the index files in force.

mod common;

use chunkbak_engine::format::pack::BlobKind;
use chunkbak_engine::id::Id;
use chunkbak_engine::Repository;

/// Stores `blobs` distinct blobs and indexes them in a file of their own; their ids.
fn indexed(repo: &Repository, seed: u64, blobs: u64) -> Vec<Id> {
    let saver = repo.private_saver().unwrap();
    let ids = (0..blobs)
        .map(|i| {
            let data = format!("blob {seed} {i}").repeat(10);
            saver.save(BlobKind::Data, data.as_bytes()).unwrap().0
        })
        .collect();
    repo.write_index(saver.finish().unwrap()).unwrap();
    ids
}

/// A file that supersedes files the kept run covers (a prune or `repair index` wrote it, and
/// the old files are still there: the prune was killed before it deleted them, or Object Lock
/// retains them) means the kept run no longer tells what is in force: it is built again.
#[test]
fn a_file_superseding_covered_files_makes_the_kept_index_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    let repo = common::repo(d.path());
    let kept = d.path().join("index");
    let a = indexed(&repo, 1, 20);
    let file_a = repo.index_file_ids().unwrap();
    let b = indexed(&repo, 2, 20);
    let file_b: Vec<Id> = repo
        .index_file_ids()
        .unwrap()
        .into_iter()
        .filter(|id| !file_a.contains(id))
        .collect();
    repo.keep_index_on_disk(&kept, 5);
    repo.load_index().unwrap();
    let idx = repo.index().read().unwrap();
    assert!(idx.on_disk());
    assert!(idx.contains(&a[0]) && idx.contains(&b[0]));
    drop(idx);
    // A file that supersedes B's and lists nothing (B's pack was deleted): few enough blobs
    // (none) to be added to a kept index; B's file stays.
    chunkbak_engine::ops::prune::write_index_files(&repo, Vec::new(), &file_b).unwrap();
    assert_eq!(repo.index_file_ids().unwrap().len(), 3);
    // Fresh repository objects, as the next runs open it.
    for _ in 0..2 {
        let again = Repository::open(repo.backend().clone(), b"pw").unwrap();
        again.keep_index_on_disk(&kept, 5);
        again.load_index().unwrap();
        let idx = again.index().read().unwrap();
        assert!(idx.on_disk());
        assert!(a.iter().all(|id| idx.contains(id)));
        assert!(
            b.iter().all(|id| !idx.contains(id)),
            "blobs of a superseded file only are not indexed"
        );
    }
}
