//! What prune counts as used when a file's bytes are a directory's tree blob: blob ids hash
//! the plaintext whatever the kind, so the file's chunk and the directory's tree share an id.
//! The directory must still be walked, or everything under it looks unused and is deleted.
//! And on disk, where prune walks the trees a depth at a time: a directory moved deeper. And
//! the bases a used delta keeps, a chain depth at a time on disk.

mod common;

use std::path::Path;
use std::sync::Arc;

use chunkbak_engine::backend::FileKind;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::format::tree::NodeKind;
use chunkbak_engine::id::{BlobId, Id};
use chunkbak_engine::ops::prune::{self, MaxUnused, PruneOptions};
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::Repository;

/// The repository opened afresh (with its index kept on disk in `d/index` above 2 blobs when
/// `on_disk`) and prune's plan with `opts`, planned on disk or in memory as asked.
fn plan_of(
    repo: &Repository,
    d: &Path,
    opts: &PruneOptions,
    on_disk: bool,
) -> (Repository, prune::PrunePlan) {
    let r = Repository::open(repo.backend().clone(), b"pw").unwrap();
    if on_disk {
        r.keep_index_on_disk(&d.join("index"), 2);
    }
    let plan = prune::plan(&r, opts, &NoProgress).unwrap();
    assert_eq!(plan.on_disk(), on_disk);
    (r, plan)
}

/// The subtree of the directory named `name` anywhere under `tree`.
fn find_dir(repo: &Repository, tree: BlobId, name: &[u8]) -> Option<BlobId> {
    for n in repo.load_dir(&tree).unwrap() {
        if n.kind == NodeKind::Dir {
            let sub = n.subtree?;
            if n.name == name {
                return Some(sub);
            }
            if let Some(found) = find_dir(repo, sub, name) {
                return Some(found);
            }
        }
    }
    None
}

/// A repository in `d` with two snapshots of `src`: the first of a directory of five files,
/// the second also of a sibling file (walked before the directory's subtree) holding the
/// directory's tree blob. Returns the repository, the first snapshot and the tree's id.
fn with_a_copy_of_a_tree(d: &Path, fill: u8) -> (Arc<Repository>, (Id, Snapshot), BlobId) {
    let repo = Arc::new(common::repo(d));
    let src = d.join("src");
    let dir = src.join("the-directory");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..5u8 {
        let data = vec![i + fill; 3000 + usize::from(i)];
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    common::backup(&repo, &src);
    let first = repo.snapshots().unwrap()[0].clone();
    let tree = find_dir(&repo, first.1.tree, b"the-directory").unwrap();
    std::fs::write(src.join("copy-of-a-tree"), repo.read_blob(&tree).unwrap()).unwrap();
    common::backup(&repo, &src);
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 2);
    let second = snaps
        .iter()
        .find(|(id, _)| *id != first.0)
        .unwrap()
        .1
        .clone();
    assert_eq!(find_dir(&repo, second.tree, b"the-directory"), Some(tree));
    (repo, first, tree)
}

fn a_file_equal_to_a_tree_blob_does_not_hide_the_tree(on_disk: bool) {
    let d = tempfile::tempdir().unwrap();
    let (repo, first, tree) = with_a_copy_of_a_tree(d.path(), 0);
    // Only the second snapshot stays; everything it does not use goes at once.
    repo.backend()
        .delete(FileKind::Snapshot, &first.0.to_hex())
        .unwrap();
    let again = Repository::open(repo.backend().clone(), b"pw").unwrap();
    if on_disk {
        again.keep_index_on_disk(&d.path().join("index"), 2);
    }
    let opts = PruneOptions {
        grace: 0,
        max_unused: MaxUnused::Bytes(0),
        delete_now: true,
        ..Default::default()
    };
    let plan = prune::plan(&again, &opts, &NoProgress).unwrap();
    assert_eq!(plan.on_disk(), on_disk);
    prune::run(&again, &plan, &opts, &NoProgress).unwrap();
    let after = Repository::open(repo.backend().clone(), b"pw").unwrap();
    after.load_index().unwrap();
    let report = chunkbak_engine::ops::check::check(&after).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    for n in after.load_dir(&tree).unwrap() {
        for c in after.file_chunks(&n.content).unwrap() {
            after.read_blob(&c).unwrap();
        }
    }
}

#[test]
fn a_file_equal_to_a_tree_blob_does_not_hide_the_tree_in_memory() {
    a_file_equal_to_a_tree_blob_does_not_hide_the_tree(false);
}

#[test]
fn a_file_equal_to_a_tree_blob_does_not_hide_the_tree_on_disk() {
    a_file_equal_to_a_tree_blob_does_not_hide_the_tree(true);
}

/// `copy` walks the directory too: the copied snapshot checks clean in the target and its
/// files there read back.
#[test]
fn a_file_equal_to_a_tree_blob_does_not_hide_the_tree_from_copy() {
    let d = tempfile::tempdir().unwrap();
    let (repo, first, _) = with_a_copy_of_a_tree(d.path(), 40);
    let target = Arc::new(common::repo(&d.path().join("target")));
    target.load_index().unwrap();
    repo.load_index().unwrap();
    let all = repo.snapshots().unwrap();
    let second: Vec<_> = all
        .iter()
        .filter(|(id, _)| *id != first.0)
        .cloned()
        .collect();
    let plan = chunkbak_engine::ops::copy::plan(&repo, &target, &all, second).unwrap();
    chunkbak_engine::ops::copy::copy(&repo, &target, &plan, &NoProgress).unwrap();
    let after = Repository::open(target.backend().clone(), b"pw").unwrap();
    after.load_index().unwrap();
    let report = chunkbak_engine::ops::check::check(&after).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

/// Prune on disk walks the trees a depth at a time: a directory moved deeper between two
/// snapshots is the same tree at depths 2 and 4, walked at each. Both plans count the same
/// used blobs; with the first snapshot gone, every blob of the directory stays.
#[test]
fn a_directory_moved_deeper_is_walked_at_each_depth_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let repo = Arc::new(common::repo(d.path()));
    let src = d.path().join("src");
    let dir = src.join("a/the-directory");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..5u8 {
        std::fs::write(dir.join(format!("f{i}")), vec![i + 90; 5000]).unwrap();
    }
    common::backup(&repo, &src);
    let first = repo.snapshots().unwrap()[0].clone();
    let tree = find_dir(&repo, first.1.tree, b"the-directory").unwrap();
    std::fs::create_dir_all(src.join("x/y/z")).unwrap();
    std::fs::rename(&dir, src.join("x/y/z/the-directory")).unwrap();
    common::backup(&repo, &src);
    let snaps = repo.snapshots().unwrap();
    let second = snaps
        .iter()
        .find(|(id, _)| *id != first.0)
        .unwrap()
        .1
        .clone();
    let a = find_dir(&repo, second.tree, b"a").unwrap();
    assert!(find_dir(&repo, a, b"the-directory").is_none(), "moved away");
    assert_eq!(find_dir(&repo, second.tree, b"the-directory"), Some(tree));

    let opts = PruneOptions {
        grace: 0,
        max_unused: MaxUnused::Bytes(0),
        delete_now: true,
        ..Default::default()
    };
    let (_, in_memory) = plan_of(&repo, d.path(), &opts, false);
    let (_, on_disk) = plan_of(&repo, d.path(), &opts, true);
    assert_eq!(on_disk.used_blobs, in_memory.used_blobs);
    assert_eq!(on_disk.kept, in_memory.kept);

    repo.backend()
        .delete(FileKind::Snapshot, &first.0.to_hex())
        .unwrap();
    let (again, plan) = plan_of(&repo, d.path(), &opts, true);
    prune::run(&again, &plan, &opts, &NoProgress).unwrap();
    let after = Repository::open(repo.backend().clone(), b"pw").unwrap();
    after.load_index().unwrap();
    let report = chunkbak_engine::ops::check::check(&after).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let nodes = after.load_dir(&tree).unwrap();
    assert_eq!(nodes.len(), 5);
    for n in nodes {
        for c in after.file_chunks(&n.content).unwrap() {
            after.read_blob(&c).unwrap();
        }
    }
}

/// A used delta keeps its bases down its chain, at most six deep (format-spec 6.1 and 12: no
/// reader reads a deeper chain), in both plans. A forged pack holds a used delta X on B1, B1
/// on B2, ... B7 on B8 (whole): X and B1..B6 are used, B7 and B8 are not. Lengths tell them
/// apart: X 100 bytes, Bi 100 (i + 1). The plan on disk finds the bases a depth at a time; the
/// one in memory went on down any chain.
#[test]
fn a_used_delta_keeps_six_bases_of_its_chain_in_both_plans() {
    use chunkbak_engine::compressor::Compression;
    use chunkbak_engine::format::index::PackEntry;
    use chunkbak_engine::format::pack::{BlobKind, BlobRecord};
    use chunkbak_engine::format::tree::{Node, Timespec};
    use chunkbak_engine::format::ObjectKind;

    let d = tempfile::tempdir().unwrap();
    let repo = Arc::new(common::repo(d.path()));
    let id = |i: u8| BlobId::from_bytes([0xd0 + i; 32]);
    // X is 0, Bi is i.
    let saver = repo.private_saver().unwrap();
    let file = Node {
        name: b"dump".to_vec(),
        kind: NodeKind::File,
        mode: 0o100644,
        size: 1 << 20,
        content: repo.save_content(&saver, vec![id(0)]).unwrap(),
        ..Default::default()
    };
    let tree = repo.save_dir(&saver, vec![file]).unwrap();
    let real = saver.finish().unwrap();
    let tree_bytes: u64 = real
        .iter()
        .flat_map(|p| &p.blobs)
        .map(|b| u64::from(b.length))
        .sum();
    repo.write_index(real).unwrap();
    repo.write_snapshot(&Snapshot {
        time: Timespec {
            secs: 1_767_225_600,
            nanos: 0,
        },
        host: "h".into(),
        paths: vec![b"/srv".to_vec()],
        tree,
        ..Default::default()
    })
    .unwrap();
    let pack = Id([0xee; 32]);
    let size = 10_000u64;
    repo.backend()
        .put(FileKind::Data, &pack.to_hex(), &vec![0x5a; size as usize])
        .unwrap();
    let blobs = (0..=8u8)
        .map(|i| BlobRecord {
            id: id(i),
            offset: 38 + 1000 * u32::from(i),
            length: 100 * (u32::from(i) + 1),
            raw_len: 1 << 20,
            kind: BlobKind::Data,
            compression: if i < 8 {
                Compression::Delta
            } else {
                Compression::Zstd
            },
            base: (i < 8).then(|| id(i + 1)),
        })
        .collect();
    repo.write_index(vec![PackEntry {
        id: pack,
        kind: ObjectKind::DataPack,
        size,
        crc32c: 0,
        salt: [1; 32],
        mark: None,
        blobs,
    }])
    .unwrap();
    let opts = PruneOptions {
        grace: 0,
        max_unused: MaxUnused::Bytes(0),
        ..Default::default()
    };
    // X and B1..B6: 100 + 200 + ... + 700 bytes.
    let used: u64 = (1..=7).map(|i| 100 * i).sum();
    for on_disk in [false, true] {
        let (_, plan) = plan_of(&repo, d.path(), &opts, on_disk);
        assert_eq!(
            plan.used_bytes,
            tree_bytes + used,
            "on disk: {on_disk}: {plan:#?}"
        );
    }
}
