//! `check` with the index on disk walks the trees a depth at a time (each depth's trees
//! sorted on disk) and names problems with their paths by a walk of each snapshot: what it
//! reports is what the walk in memory reports, on a sound repository and on a damaged one.

mod common;

use std::path::Path;
use std::sync::Arc;

use chunkbak_engine::ops::check::{check, CheckReport};
use chunkbak_engine::Repository;

/// Two snapshots of nested folders; between them a folder moves deeper (the same tree at
/// two depths) and files are added.
fn repository(d: &Path) -> Arc<Repository> {
    let repo = Arc::new(common::repo(d));
    let src = d.join("src");
    for (i, sub) in ["a/b/c", "a/b/d", "e", "f/g"].iter().enumerate() {
        let dir = src.join(sub);
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..3u8 {
            let data = vec![i as u8 * 10 + f; 20_000 + usize::from(f)];
            std::fs::write(dir.join(format!("file{f}")), data).unwrap();
        }
    }
    common::backup(&repo, &src);
    std::fs::create_dir_all(src.join("h/i/j")).unwrap();
    std::fs::rename(src.join("a/b"), src.join("h/i/j/b")).unwrap();
    std::fs::write(src.join("e/new"), vec![99u8; 30_000]).unwrap();
    common::backup(&repo, &src);
    repo
}

/// `check` of the repository in `d`, the index in memory or on disk.
fn checked(d: &Path, on_disk: bool) -> CheckReport {
    let repo = Repository::open(
        Arc::new(chunkbak_engine::backend::local::LocalBackend::new(
            d.join("repo"),
        )),
        b"pw",
    )
    .unwrap();
    if on_disk {
        repo.keep_index_on_disk(&d.join(format!("index-{}", rand_suffix())), 2);
    }
    repo.load_index().unwrap();
    assert_eq!(repo.index().read().unwrap().on_disk(), on_disk);
    let mut r = check(&repo).unwrap();
    r.problems.sort();
    r
}

/// A fresh folder name for each kept index (one load builds, none reuses).
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn same(a: &CheckReport, b: &CheckReport) {
    assert_eq!(
        (a.snapshots, a.trees, a.blobs, a.packs),
        (b.snapshots, b.trees, b.blobs, b.packs)
    );
    assert_eq!(a.problems, b.problems);
}

#[test]
fn check_on_disk_reports_what_check_in_memory_does() {
    let d = tempfile::tempdir().unwrap();
    repository(d.path());
    let (mem, disk) = (checked(d.path(), false), checked(d.path(), true));
    assert!(mem.problems.is_empty(), "{:#?}", mem.problems);
    assert!(mem.trees >= 10, "{}", mem.trees);
    same(&mem, &disk);

    // Damage, each to a copy: a tree pack gone (trees missing; the chunks under them are not
    // reached), a data pack gone (chunks missing).
    for (kind, says) in [("tree", "tree "), ("data", ": chunk ")] {
        let copy = d.path().join(kind);
        std::fs::create_dir_all(&copy).unwrap();
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(d.path().join("repo"))
            .arg(&copy)
            .status()
            .unwrap();
        assert!(cp.success());
        let packs = common_files(&copy.join("repo").join(kind));
        std::fs::remove_file(&packs[0]).unwrap();
        let (mem, disk) = (checked(&copy, false), checked(&copy, true));
        assert!(
            mem.problems
                .iter()
                .any(|p| p.contains(says) && p.contains("is not in the index")),
            "{kind}: {:#?}",
            mem.problems
        );
        same(&mem, &disk);
    }
}

/// The files under `dir`, sorted.
fn common_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}
