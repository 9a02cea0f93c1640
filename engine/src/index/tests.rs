use super::kept::Meta;
use super::*;

fn entry(id: u8, mark: Option<(i64, i64)>) -> PackEntry {
    PackEntry {
        id: Id([id; 32]),
        kind: ObjectKind::DataPack,
        size: 100,
        crc32c: 0,
        salt: [0; 32],
        mark: mark.map(|(at, delete_after)| Mark { at, delete_after }),
        blobs: Vec::new(),
    }
}

fn with_blobs(id: u8, mark: Option<(i64, i64)>, blobs: &[u8]) -> PackEntry {
    PackEntry {
        blobs: blobs
            .iter()
            .enumerate()
            .map(|(i, b)| crate::format::pack::BlobRecord {
                id: BlobId::from_bytes([*b; 32]),
                kind: if *b % 2 == 0 {
                    BlobKind::Data
                } else {
                    BlobKind::Tree
                },
                compression: if *b % 3 == 0 {
                    Compression::Zstd
                } else {
                    Compression::None
                },
                offset: 10 * i as u32,
                length: 10,
                raw_len: 7 + u32::from(*b),
                base: None,
            })
            .collect(),
        ..entry(id, mark)
    }
}

/// An index loaded into a run file (2 entries sorted in memory at a time: several runs)
/// in a folder that lives as long as the test.
fn on_disk(dir: &tempfile::TempDir) -> Index {
    let idx = Index::loading_on_disk(&dir.path().join("index"), 2, 0).unwrap();
    assert!(idx.builder.is_some());
    idx
}

#[test]
fn a_loaded_index_is_48_bytes_a_blob_and_finds_live_copies_first() {
    assert_eq!(BYTES_PER_BLOB, 48);
    live_copies_first(Index::loading(6));
}

/// The same answers from an index kept on disk, whose folder goes with it.
#[test]
fn an_index_on_disk_answers_alike() {
    let dir = tempfile::tempdir().unwrap();
    live_copies_first(on_disk(&dir));
    chains(on_disk(&dir));
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .collect();
    assert!(runs.is_empty(), "run folders left: {runs:?}");
}

/// A folder another process left (it was killed) is removed by the next load; a live
/// process's is not.
#[test]
fn run_folders_of_dead_processes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("index");
    std::fs::create_dir_all(root.join("index-run-999999999-abc/tmp")).unwrap();
    let mine = format!("index-run-{}-kept", std::process::id());
    std::fs::create_dir_all(root.join(&mine)).unwrap();
    let _idx = on_disk(&dir);
    assert!(!root.join("index-run-999999999-abc").exists());
    assert!(root.join(&mine).exists());
}

/// A folder writable by others is refused (its run file decides what a backup stores).
#[test]
fn a_shared_folder_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("index");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Index::loading_on_disk(&root, 2, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a folder private to this user"), "{e}");
}

/// A kept run file is opened again with the pack table and marks of the first, and the
/// files it covers; a damaged companion file, pack table, table of pack ids or file of
/// delta bases is dropped with the run file.
#[test]
fn a_kept_run_is_used_again_and_a_damaged_one_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("kept");
    let covered = vec![Id([1; 32]), Id([2; 32])];
    let build = || {
        let mut idx = Index::loading_to_keep(&d, 2, 0, covered.clone()).unwrap();
        idx.add_pack(&with_blobs(1, Some((1, 2)), &[10, 11, 12]));
        idx.add_pack(&with_blobs(2, None, &[12, 13]));
        // Listed marked, then live: revived in the table written.
        idx.add_pack(&with_blobs(3, Some((1, 2)), &[14]));
        idx.add_pack(&with_blobs(3, None, &[14]));
        idx.seal();
        assert!(idx.run_error().is_none());
    };
    build();
    let id = |b: u8| BlobId::from_bytes([b; 32]);
    let (mut kept, cov) = Index::open_kept(&d).expect("kept");
    assert_eq!(cov, covered);
    assert_eq!(kept.len(), 5);
    assert_eq!(kept.live_pack_of(&id(12)), Some(Id([2; 32])));
    assert_eq!(kept.live_pack_of(&id(10)), None, "only in a marked pack");
    assert_eq!(kept.live_pack_of(&id(14)), Some(Id([3; 32])));
    assert!(kept.contains(&id(10)));
    assert_eq!(kept.pack_count(), 3);
    // A pack of the table found by its id: listed again, it is not added again; listed
    // live, a marked one is revived.
    assert_eq!(kept.add_pack(&with_blobs(2, None, &[12, 13])), 1);
    assert_eq!(kept.add_pack(&with_blobs(1, None, &[10])), 0);
    assert_eq!(kept.pack_count(), 3);
    assert_eq!(kept.live_pack_of(&id(10)), Some(Id([1; 32])));
    assert_eq!(kept.add_pack(&with_blobs(4, None, &[15])), 3);
    assert_eq!(kept.get(&id(15)).unwrap().0.id, Id([4; 32]));
    drop(kept);
    let files = || {
        let mut v: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
            .collect();
        v.sort();
        v
    };
    let meta = files()
        .into_iter()
        .find(|p| p.extension().unwrap() == "meta")
        .unwrap();
    for (ext, at) in [
        ("meta", 20),
        ("packs", 20),
        ("pids", 20),
        ("run", 20),
        ("bases", 20),
    ] {
        let f = meta.with_extension(ext);
        let mut b = std::fs::read(&f).unwrap();
        b[at] ^= 1;
        std::fs::write(&f, b).unwrap();
        assert!(Index::open_kept(&d).is_none(), "{ext}");
        assert!(files().is_empty(), "{ext}: {:?}", files());
        build();
        assert_eq!(files().len(), 5);
        assert!(Index::open_kept(&d).is_some());
    }
}

/// Two builds of the same index files (same COVERS, same counts) in another order give
/// other positions: one build's pack table with the other's run file is refused (the
/// files are renamed one by one; a crash between could mix them). A block found damaged
/// after the open removes the kept files: the next load builds them again.
#[test]
fn kept_files_of_two_builds_are_not_mixed_and_damaged_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("kept");
    let covered = vec![Id([1; 32]), Id([2; 32])];
    let build = |order: &[u8]| {
        let mut idx = Index::loading_to_keep(&d, 2, 0, covered.clone()).unwrap();
        for p in order {
            idx.add_pack(&with_blobs(*p, None, &[10 * p, 10 * p + 1]));
        }
        idx.seal();
        assert!(idx.run_error().is_none());
    };
    let with = |ext: &str| {
        std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap()
    };
    build(&[1, 2]);
    let table_a = std::fs::read(with("packs")).unwrap();
    build(&[2, 1]);
    let id = |b: u8| BlobId::from_bytes([b; 32]);
    let (kept, _) = Index::open_kept(&d).expect("one build's files");
    assert_eq!(kept.live_pack_of(&id(10)), Some(Id([1; 32])));
    drop(kept);
    std::fs::write(with("packs"), &table_a).unwrap();
    assert!(Index::open_kept(&d).is_none(), "a table of another build");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);

    build(&[1, 2]);
    let (kept, _) = Index::open_kept(&d).unwrap();
    let path = with("packs");
    let mut b = std::fs::read(&path).unwrap();
    b[64 + 40] ^= 1;
    std::fs::write(&path, b).unwrap();
    assert_eq!(kept.known_packs().count(), 0, "the one block is damaged");
    let e = kept.check_read().unwrap_err().to_string();
    assert!(
        e.contains("block 0 damaged") && e.contains("run again"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "removed");
}

/// A companion file decodes only when every pack position it names is in its table and
/// every count fits what remains (the hash alone does not make it so).
#[test]
fn a_companion_file_names_only_packs_of_its_table() {
    let meta = |files: Vec<u32>, won: Vec<u32>, lost: Vec<(u32, u64)>| Meta {
        disputed: 1,
        files: vec![(Id([1; 32]), files)],
        won,
        lost,
        packs: 2,
        prints: [[7; 32], [8; 32], [9; 32], [10; 32]],
    };
    let ok = Meta::decode(&meta(vec![0, 1], vec![1], vec![(0, 3)]).encode()).unwrap();
    assert_eq!(ok.files, vec![(Id([1; 32]), vec![0, 1])]);
    assert_eq!((ok.won, ok.lost), (vec![1], vec![(0, 3)]));
    for bad in [
        meta(vec![2], vec![], vec![]),
        meta(vec![], vec![2], vec![]),
        meta(vec![], vec![], vec![(7, 1)]),
    ] {
        assert!(Meta::decode(&bad.encode()).is_none());
    }
    // A count beyond what remains, with a hash that matches.
    let mut b = meta(vec![0], vec![], vec![]).encode();
    b.truncate(b.len() - 32);
    b[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
    let h = blake3::hash(&b);
    b.extend_from_slice(h.as_bytes());
    assert!(Meta::decode(&b).is_none());
}

fn live_copies_first(mut idx: Index) {
    idx.add_pack(&with_blobs(1, Some((1, 2)), &[10, 11, 12]));
    idx.add_pack(&with_blobs(2, None, &[12, 13]));
    // Listed marked, then live elsewhere: revived (live wins).
    idx.add_pack(&with_blobs(3, Some((1, 2)), &[14]));
    idx.add_pack(&with_blobs(3, None, &[14]));
    idx.seal();
    assert_eq!(idx.len(), 5);
    let id = |b: u8| BlobId::from_bytes([b; 32]);
    assert_eq!(idx.live_pack_of(&id(10)), None, "only in a marked pack");
    assert!(idx.contains(&id(10)));
    assert_eq!(
        idx.live_pack_of(&id(12)),
        Some(Id([2; 32])),
        "the live copy wins"
    );
    assert_eq!(idx.live_pack_of(&id(14)), Some(Id([3; 32])));
    let (p, l) = idx.get(&id(11)).unwrap();
    assert_eq!(p.id, Id([1; 32]));
    assert_eq!(
        (l.offset, l.length, l.raw_len, l.kind, l.compression),
        (10, 10, 18, BlobKind::Tree, Compression::None)
    );
    let (_, l) = idx.get(&id(12)).unwrap();
    assert_eq!((l.kind, l.compression), (BlobKind::Data, Compression::Zstd));
    assert!(idx.get(&id(99)).is_none());
    // Added after loading (a backup's new pack): found, and a live copy of a blob only a
    // marked pack held takes over.
    idx.add_pack(&with_blobs(4, None, &[10, 20]));
    assert_eq!(idx.live_pack_of(&id(10)), Some(Id([4; 32])));
    assert_eq!(idx.live_pack_of(&id(20)), Some(Id([4; 32])));
    assert_eq!(idx.live_pack_of(&id(13)), Some(Id([2; 32])));
    // Blob 10's live copy in pack 4 is a second entry for it.
    assert_eq!(idx.len(), 7);
    assert!(idx.run_error().is_none());
}

#[test]
fn chains_are_followed_to_a_whole_blob_and_refused_past_the_maximum_depth_or_in_a_loop() {
    chains(Index::loading(1));
}

fn chains(mut idx: Index) {
    idx.add_pack(&chain_pack());
    idx.add_pack(&with_blobs(2, Some((1, 2)), &[60]));
    idx.seal();
    check_chains(&idx);
}

/// Blob 20 whole; 21 a delta on 20, 22 on 21, ... 28 on 27 (depth 8). 40 and 41 are deltas
/// on each other; 50 is a delta on 51, which no pack holds: 11 deltas.
fn chain_pack() -> PackEntry {
    let id = |b: u8| BlobId::from_bytes([b; 32]);
    let mut pack = with_blobs(1, None, &[20, 21, 22, 23, 24, 25, 26, 27, 28, 40, 41, 50]);
    for r in &mut pack.blobs {
        let b = r.id.0[0];
        let base = match b {
            21..=28 => Some(b - 1),
            40 => Some(41),
            41 => Some(40),
            50 => Some(51),
            _ => None,
        };
        if let Some(base) = base {
            r.compression = Compression::Delta;
            r.kind = BlobKind::Data;
            r.base = Some(id(base));
        }
    }
    pack
}

/// What an index of [`chain_pack`] and a marked pack holding blob 60 answers.
fn check_chains(idx: &Index) {
    let id = |b: u8| BlobId::from_bytes([b; 32]);
    assert_eq!(idx.deltas(), 11);
    assert_eq!(idx.chain_of(&id(20)), Some(vec![]));
    assert_eq!(idx.chain_of(&id(22)), Some(vec![id(21), id(20)]));
    let six: Vec<BlobId> = (20..26).rev().map(id).collect();
    assert_eq!(idx.chain_of(&id(26)), Some(six), "depth 6 is allowed");
    assert_eq!(idx.live_packs_of(&id(26)).map(|p| p.len()), Some(7));
    assert_eq!(idx.chain_of(&id(27)), None, "depth 7 is refused");
    assert_eq!(idx.live_packs_of(&id(27)), None);
    assert_eq!(idx.chain_of(&id(40)), None, "a loop is refused");
    assert_eq!(idx.live_packs_of(&id(41)), None);
    assert_eq!(idx.chain_of(&id(50)), None, "a missing base is refused");
    assert_eq!(
        idx.live_packs_of(&id(60)),
        None,
        "a marked pack is not live"
    );
    assert_eq!(idx.base_of(&id(21)), Some(id(20)));
    assert_eq!(idx.get(&id(21)).unwrap().1.base, Some(id(20)));
    assert!(idx.contains(&id(50)));
}

/// An index on disk sorts its deltas' bases on disk and keeps them in a file of their own
/// (a record a delta), which a later load opens and answers from. A block of that file
/// damaged after the open is an error, never a base: the kept files go.
#[test]
fn delta_bases_on_disk_are_kept_in_a_file_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("kept");
    let mut idx = Index::loading_to_keep(&d, 2, 0, vec![Id([1; 32])]).unwrap();
    idx.add_pack(&chain_pack());
    idx.add_pack(&with_blobs(2, Some((1, 2)), &[60]));
    assert_eq!(idx.bases.in_memory(), 0, "sorted on disk while loading");
    idx.seal();
    check_chains(&idx);
    drop(idx);
    let (kept, _) = Index::open_kept(&d).expect("kept");
    check_chains(&kept);
    assert_eq!(kept.bases.in_memory(), 0);
    drop(kept);
    let bases = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "bases"))
        .unwrap();
    assert_eq!(RunFile::open(&bases).unwrap().len(), 11);
    let mut b = std::fs::read(&bases).unwrap();
    b[64 + 48 * 5 + 40] ^= 1;
    std::fs::write(&bases, b).unwrap();
    let (kept, _) = Index::open_kept(&d).expect("the block is checked when it is read");
    let id = |b: u8| BlobId::from_bytes([b; 32]);
    // A delta without its base is not located: a backup would reference it through its own
    // pack alone, and a prune could delete the base's.
    assert_eq!(kept.live_packs_of(&id(21)), None);
    assert!(kept.get(&id(21)).is_none());
    assert_eq!(kept.base_of(&id(21)), None);
    assert!(kept.check_read().is_err());
    assert!(!bases.exists(), "the damaged kept files are removed");
    assert!(Index::open_kept(&d).is_none());
}

#[test]
fn merged_entries_live_wins_and_the_latest_mark_counts() {
    let m = merge_entries([
        entry(1, Some((10, 20))),
        entry(1, None),
        entry(2, Some((10, 20))),
        entry(2, Some((15, 40))),
        entry(2, Some((12, 30))),
        entry(3, None),
        entry(3, Some((10, 20))),
    ]);
    assert_eq!(m[&Id([1; 32])].mark, None, "listed live once: live");
    assert_eq!(m[&Id([2; 32])].mark.unwrap().delete_after, 40);
    assert_eq!(
        m[&Id([3; 32])].mark,
        None,
        "a later mark does not override live"
    );
}
