//! A backup into an index with disputed blobs judges the claims before it deduplicates
//! (`ops::claims::clean_index_for_dedup`). With the index kept on disk it does so by sorting
//! the claims on disk (`ops::prune::clean_for_dedup`), not by reading every index file into
//! memory, and must come to the same answer: forged claims named and dropped, the index still
//! on disk, every blob found where it truly is.

mod common;

use std::path::Path;
use std::sync::Arc;

use chunkbak_engine::backend::FileKind;
use chunkbak_engine::chunker::splitmix_bytes;
use chunkbak_engine::format::index::{IndexFile, PackEntry};
use chunkbak_engine::format::ObjectKind;
use chunkbak_engine::id::Id;
use chunkbak_engine::ops::backup::{backup, BackupOptions};
use chunkbak_engine::ops::claims::clean_index_for_dedup;
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::Repository;

/// A repository with a few files backed up, then one index file claiming that every data
/// blob lives in a small garbage object stored as a data pack whose name sorts first.
/// Returns the repository and the forged index file's name.
fn poisoned(d: &Path) -> (Arc<Repository>, String) {
    let repo = Arc::new(common::repo(d));
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6u64 {
        std::fs::write(src.join(format!("f{i}")), splitmix_bytes(i + 1, 150_000)).unwrap();
    }
    repo.load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![src],
        host: "h".into(),
        threads: 2,
        ..Default::default()
    };
    backup(&repo, opts, Arc::new(NoProgress)).unwrap();
    let mut claims = Vec::new();
    for (_, f) in repo.current_index_files().unwrap() {
        for p in f.packs {
            if p.kind == ObjectKind::DataPack {
                claims.extend(p.blobs);
            }
        }
    }
    assert!(claims.len() > 3);
    let name = format!("{:0>64}", 1);
    repo.backend()
        .put(FileKind::Data, &name, b"not a pack, just a few bytes")
        .unwrap();
    let forged = IndexFile {
        supersedes: Vec::new(),
        packs: vec![PackEntry {
            id: Id::from_hex(&name).unwrap(),
            kind: ObjectKind::DataPack,
            size: claims.iter().map(|b| b.end()).max().unwrap(),
            crc32c: 0,
            salt: [0; 32],
            mark: None,
            blobs: claims,
        }],
    };
    let file = repo
        .write_object(FileKind::Index, ObjectKind::Index, &forged.encode())
        .unwrap()
        .to_hex();
    (repo, file)
}

/// Cleans a fresh load of the poisoned repository (index on disk or in memory); returns the
/// messages and whether the index is on disk after.
fn clean(d: &Path, repo: &Repository, on_disk: bool) -> (Vec<String>, bool) {
    let r = Repository::open(repo.backend().clone(), b"pw").unwrap();
    if on_disk {
        r.keep_index_on_disk(&d.join(format!("index-{on_disk}")), 2);
    }
    r.load_index().unwrap();
    assert!(r.index().read().unwrap().disputed_blobs > 0);
    let (messages, reads) = clean_index_for_dedup(&r).unwrap();
    assert!(reads > 0);
    // Every data blob is found in a real pack, and reads back.
    let garbage = format!("{:0>64}", 1);
    let idx = r.index().read().unwrap();
    let ids: Vec<_> = idx
        .known_packs()
        .filter(|p| p.kind == ObjectKind::DataPack && p.id.to_hex() != garbage)
        .map(|p| p.id)
        .collect();
    assert!(!ids.is_empty());
    let on = idx.on_disk();
    drop(idx);
    for (_, f) in r.current_index_files().unwrap() {
        for p in f.packs.iter().filter(|p| p.id.to_hex() != garbage) {
            for b in &p.blobs {
                let (pack, _) = r.locate(&b.id).unwrap();
                assert_eq!(pack.id, p.id, "blob {} located in {}", b.id, pack.id);
                r.read_blob(&b.id).unwrap();
            }
        }
    }
    (messages, on)
}

#[test]
fn forged_claims_are_dropped_alike_with_the_index_on_disk_and_in_memory() {
    let d = tempfile::tempdir().unwrap();
    let (repo, forged) = poisoned(d.path());
    let (in_memory, on) = clean(d.path(), &repo, false);
    assert!(!on);
    let (on_disk, on) = clean(d.path(), &repo, true);
    assert!(on, "the cleaned index stays on disk");
    assert_eq!(on_disk, in_memory);
    assert_eq!(on_disk.len(), 1, "{on_disk:?}");
    assert!(
        on_disk[0].contains(&format!("index/{forged}")),
        "{on_disk:?}"
    );
}

/// A pack listed twice: first marked (its claims are the ones judged), then live with a claim
/// of a blob another pack holds. The later listing revives the pack but claims nothing (as
/// `merge_entries` keeps listings), also when the index is rebuilt on disk without refuted
/// claims: the blob stays located in the pack that holds it.
#[test]
fn a_later_listing_of_a_pack_adds_no_claims_when_the_index_is_rebuilt_on_disk() {
    use chunkbak_engine::format::index::Mark;
    for on_disk in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let repo = Arc::new(common::repo(d.path()));
        let opts = |src: &Path| BackupOptions {
            paths: vec![src.to_path_buf()],
            host: "h".into(),
            threads: 2,
            ..Default::default()
        };
        // Two backups, two data packs.
        for n in 0..2u64 {
            let src = d.path().join(format!("src{n}"));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("f"), splitmix_bytes(n + 7, 200_000)).unwrap();
            repo.load_index().unwrap();
            backup(&repo, opts(&src), Arc::new(NoProgress)).unwrap();
        }
        let files = repo.current_index_files().unwrap();
        let mut data: Vec<PackEntry> = Vec::new();
        let mut trees: Vec<PackEntry> = Vec::new();
        for (id, f) in &files {
            repo.backend()
                .delete(FileKind::Index, &id.to_hex())
                .unwrap();
            for p in &f.packs {
                match p.kind {
                    ObjectKind::DataPack => data.push(p.clone()),
                    _ => trees.push(p.clone()),
                }
            }
        }
        assert_eq!(data.len(), 2);
        let mark = Some(Mark {
            at: 1,
            delete_after: i64::MAX / 2,
        });
        let (p1, p2) = (data[0].clone(), data[1].clone());
        let x = p2.blobs[0];
        let b = *p2.blobs.last().unwrap();
        // The garbage object claims a blob of P2: a refuted claim, so the index is rebuilt.
        let garbage = format!("{:0>64}", 1);
        repo.backend()
            .put(FileKind::Data, &garbage, b"not a pack, just a few bytes")
            .unwrap();
        let mut packs = vec![
            PackEntry { mark, ..p1.clone() },
            PackEntry {
                mark: None,
                size: p1.size.max(x.end()),
                blobs: vec![x],
                ..p1.clone()
            },
            PackEntry { mark, ..p2.clone() },
            PackEntry {
                id: Id::from_hex(&garbage).unwrap(),
                kind: ObjectKind::DataPack,
                size: b.end(),
                crc32c: 0,
                salt: [0; 32],
                mark: None,
                blobs: vec![b],
            },
        ];
        packs.extend(trees);
        let forged = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        repo.write_object(FileKind::Index, ObjectKind::Index, &forged.encode())
            .unwrap();

        let r = Repository::open(repo.backend().clone(), b"pw").unwrap();
        if on_disk {
            r.keep_index_on_disk(&d.path().join("index"), 2);
        }
        r.load_index().unwrap();
        let (messages, _) = clean_index_for_dedup(&r).unwrap();
        assert!(
            messages.iter().any(|m| m.contains(&garbage)),
            "{messages:?}"
        );
        assert_eq!(r.index().read().unwrap().on_disk(), on_disk);
        for blob in [x.id, b.id] {
            let (pack, _) = r.locate(&blob).unwrap();
            assert_eq!(pack.id, p2.id, "on disk {on_disk}: blob {blob}");
            r.read_blob(&blob).unwrap();
        }
    }
}
