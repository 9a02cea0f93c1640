//! The index kept on disk between runs (format-spec 16) is used again only while it describes
//! the index files in force: files written since are added, and the packs of covered files a
//! prune rewrote are buried, unless that could hide a copy the kept file did not keep.

mod common;

use std::path::Path;
use std::sync::Arc;

use chunkbak_engine::backend::FileKind;
use chunkbak_engine::format::index::{Mark, PackEntry};
use chunkbak_engine::format::pack::BlobKind;
use chunkbak_engine::id::Id;
use chunkbak_engine::ops::prune::{self, MaxUnused, PruneOptions};
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::Repository;

/// The run files kept under `dir`, in the repository's folder (a build writes one named after
/// the files it covers).
fn runs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("run-") && n.ends_with(".run"))
        .collect();
    v.sort();
    v
}

/// The repository opened afresh, as the next run on a host opens it, with its index loaded
/// and kept in `kept` (above 5 blobs; at most 5 added from files written since).
fn reopened(repo: &Repository, kept: &Path) -> Repository {
    reopened_above(repo, kept, 5)
}

fn reopened_above(repo: &Repository, kept: &Path, above: usize) -> Repository {
    let again = Repository::open(repo.backend().clone(), b"pw").unwrap();
    again.keep_index_on_disk(kept, above);
    again.load_index().unwrap();
    assert!(again.index().read().unwrap().on_disk());
    again
}

/// The index files that are not among `before`.
fn files_since(repo: &Repository, before: &[Id]) -> Vec<Id> {
    let mut v = repo.index_file_ids().unwrap();
    v.retain(|id| !before.contains(id));
    v
}

/// The pack entries an index file lists.
fn entries(repo: &Repository, file: &Id) -> Vec<PackEntry> {
    repo.read_index_file(&file.to_hex()).unwrap().packs
}

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

/// A file that supersedes files the kept run covers (a prune or `repair index` wrote it; the
/// old files may still be there: a prune killed before it deleted them, or Object Lock
/// retains them) buries the packs they listed: the kept run is used again, without what they
/// alone listed, and with what the new file lists.
#[test]
fn a_file_superseding_covered_files_buries_their_packs() {
    let d = tempfile::tempdir().unwrap();
    let repo = common::repo(d.path());
    let kept = d.path().join("index");
    let a = indexed(&repo, 1, 20);
    let file_a = repo.index_file_ids().unwrap();
    let b = indexed(&repo, 2, 20);
    let file_b = files_since(&repo, &file_a);
    let c = indexed(&repo, 3, 20);
    let file_c = files_since(&repo, &[file_a.clone(), file_b.clone()].concat());
    let first = reopened_above(&repo, &kept, 25);
    assert!([&a, &b, &c].iter().all(|s| s.iter().all(|id| first
        .index()
        .read()
        .unwrap()
        .live_pack_of(id)
        .is_some())));
    drop(first);
    let built = runs(&kept);
    assert_eq!(built.len(), 1);
    // B's packs deleted: a file that supersedes B's and lists nothing. C's packs marked: a
    // file that lists them marked. Both old files are still there.
    let mut marked = entries(&repo, &file_c[0]);
    for p in &mut marked {
        p.mark = Some(Mark {
            at: 1,
            delete_after: 2,
        });
    }
    prune::write_index_files(&repo, Vec::new(), &file_b).unwrap();
    prune::write_index_files(&repo, marked, &file_c).unwrap();
    assert_eq!(repo.index_file_ids().unwrap().len(), 5);
    for _ in 0..2 {
        let again = reopened_above(&repo, &kept, 25);
        assert_eq!(runs(&kept), built, "the kept run is used again, not built");
        let idx = again.index().read().unwrap();
        assert!(a.iter().all(|id| idx.live_pack_of(id).is_some()));
        assert!(
            b.iter().all(|id| !idx.contains(id)),
            "blobs of a superseded file only are not indexed"
        );
        assert!(
            c.iter()
                .all(|id| idx.contains(id) && idx.live_pack_of(id).is_none()),
            "blobs of a pack listed marked again are readable, never reused"
        );
        assert_eq!(idx.known_packs().count(), 2, "A's pack and C's, not B's");
    }
}

/// A repository whose 20 blobs `a` are in A's pack (`pa`, in `file_a`), with `a[..10]` also
/// claimed live by a pack of id 7 (`other`, in `file_o`); a host's index kept in `kept` above
/// `above` blobs, and the pack whose copy of `a[0]` the run file kept.
struct TwoCopies {
    _d: tempfile::TempDir,
    repo: Repository,
    kept: std::path::PathBuf,
    a: Vec<Id>,
    pa: PackEntry,
    other: PackEntry,
    file_a: Vec<Id>,
    file_o: Vec<Id>,
    winner: Id,
    built: Vec<String>,
}

fn two_copies(above: usize) -> TwoCopies {
    let d = tempfile::tempdir().unwrap();
    let repo = common::repo(d.path());
    let kept = d.path().join("index");
    let a = indexed(&repo, 1, 20);
    let file_a = repo.index_file_ids().unwrap();
    let pa = entries(&repo, &file_a[0]).remove(0);
    let mut other = pa.clone();
    other.id = Id([7; 32]);
    other.blobs.retain(|b| a[..10].contains(&b.id));
    prune::write_index_files(&repo, vec![other.clone()], &[]).unwrap();
    let file_o = files_since(&repo, &file_a);
    let first = reopened_above(&repo, &kept, above);
    let idx = first.index().read().unwrap();
    assert!(idx.disputed_blobs > 0);
    let winner = idx.live_pack_of(&a[0]).unwrap();
    drop(idx);
    drop(first);
    let built = runs(&kept);
    TwoCopies {
        _d: d,
        repo,
        kept,
        a,
        pa,
        other,
        file_a,
        file_o,
        winner,
        built,
    }
}

/// A blob two packs claim: the kept run holds the copy that won. When the file that listed
/// the winner is rewritten without it, the other copy must be found: the run does not hold
/// it, so the index is built again.
#[test]
fn a_buried_winner_of_a_disputed_blob_makes_the_index_built_again() {
    let t = two_copies(5);
    let (gone, survivor) = if t.winner == t.other.id {
        (&t.file_o, t.pa.id)
    } else {
        (&t.file_a, t.other.id)
    };
    prune::write_index_files(&t.repo, Vec::new(), gone).unwrap();
    let again = reopened(&t.repo, &t.kept);
    let idx = again.index().read().unwrap();
    assert_eq!(idx.live_pack_of(&t.a[0]), Some(survivor));
    assert_ne!(runs(&t.kept), t.built, "built again");
}

/// As above, when the winner's file is rewritten listing it live again but without the
/// claim it won (prune dropped a claim it refuted): built again too.
#[test]
fn a_winner_listed_again_without_its_claim_makes_the_index_built_again() {
    let t = two_copies(25);
    let (mut again, gone, survivor) = if t.winner == t.other.id {
        (t.other.clone(), &t.file_o, t.pa.id)
    } else {
        (t.pa.clone(), &t.file_a, t.other.id)
    };
    again.blobs.retain(|b| b.id != t.a[0]);
    prune::write_index_files(&t.repo, vec![again], gone).unwrap();
    let host = reopened_above(&t.repo, &t.kept, 25);
    let idx = host.index().read().unwrap();
    assert_eq!(idx.live_pack_of(&t.a[0]), Some(survivor));
    assert_ne!(runs(&t.kept), t.built, "built again");
}

/// A dispute whose losing pack is buried is settled (no judging of claims for nothing), and
/// a new file that claims a blob the kept run holds elsewhere is a dispute: a backup judges
/// it before trusting it (a file forged by a compromised host, written after the host built
/// its kept index, is not taken on trust).
#[test]
fn disputes_are_counted_across_the_kept_run_and_new_files() {
    let d = tempfile::tempdir().unwrap();
    let repo = common::repo(d.path());
    let kept = d.path().join("index");
    let a = indexed(&repo, 1, 20);
    let file_a = repo.index_file_ids().unwrap();
    let copy = |id: u8, mark: Option<Mark>| {
        let mut p = entries(&repo, &file_a[0]).remove(0);
        p.id = Id([id; 32]);
        p.mark = mark;
        p.blobs.retain(|b| b.id == a[0]);
        p
    };
    let old = copy(
        7,
        Some(Mark {
            at: 1,
            delete_after: 2,
        }),
    );
    prune::write_index_files(&repo, vec![old], &[]).unwrap();
    let file_o = files_since(&repo, &file_a);
    let first = reopened(&repo, &kept);
    assert_eq!(first.index().read().unwrap().disputed_blobs, 1);
    drop(first);
    let built = runs(&kept);
    // The marked copy's pack deleted by a prune: settled, without a build.
    prune::write_index_files(&repo, Vec::new(), &file_o).unwrap();
    let again = reopened(&repo, &kept);
    assert_eq!(runs(&kept), built);
    assert_eq!(again.index().read().unwrap().disputed_blobs, 0);
    drop(again);
    // A new file claims a[0] in a stored pack that does not hold it.
    let saver = repo.private_saver().unwrap();
    saver.save(BlobKind::Data, b"another blob").unwrap();
    let mut forged = saver.finish().unwrap().remove(0);
    forged.blobs = copy(9, None).blobs;
    prune::write_index_files(&repo, vec![forged], &[]).unwrap();
    let again = reopened(&repo, &kept);
    assert_eq!(runs(&kept), built);
    assert_eq!(again.index().read().unwrap().disputed_blobs, 1);
    let (messages, _) = chunkbak_engine::ops::claims::clean_index_for_dedup(&again).unwrap();
    assert!(!messages.is_empty(), "the new claim is judged");
    let idx = again.index().read().unwrap();
    assert_eq!(
        idx.live_pack_of(&a[0]),
        Some(entries(&repo, &file_a[0])[0].id),
        "located in the pack that holds it"
    );
}

/// A host that missed a prune: its kept index covers a file the first prune rewrote and the
/// second rewrote again. The second's last file supersedes the first's files again, so the
/// host buries instead of building. A prune with nothing to change (one small file in force)
/// writes nothing.
#[test]
fn a_host_that_missed_a_prune_buries_what_two_prunes_rewrote() {
    let d = tempfile::tempdir().unwrap();
    let repo = common::repo(d.path());
    let kept = d.path().join("index");
    let a = indexed(&repo, 1, 20);
    let file_a = repo.index_file_ids().unwrap();
    let b = indexed(&repo, 2, 20);
    let file_b = files_since(&repo, &file_a);
    drop(reopened_above(&repo, &kept, 25));
    let built = runs(&kept);
    // The first prune (missed by the host): B's pack marked long ago, B's file replaced.
    let mut marked = entries(&repo, &file_b[0]);
    for p in &mut marked {
        p.mark = Some(Mark {
            at: 1,
            delete_after: 2,
        });
    }
    prune::write_index_files(&repo, marked, &file_b).unwrap();
    repo.backend()
        .delete(FileKind::Index, &file_b[0].to_hex())
        .unwrap();
    // The second: no snapshot uses anything; every pack goes, every file is rewritten.
    let opts = PruneOptions {
        grace: 0,
        delete_now: true,
        ..Default::default()
    };
    let pruner = Repository::open(repo.backend().clone(), b"pw").unwrap();
    let plan = prune::plan(&pruner, &opts, &NoProgress).unwrap();
    let res = prune::run(&pruner, &plan, &opts, &NoProgress).unwrap();
    assert_eq!(res.index_files_deleted, 2);
    let host = reopened_above(&repo, &kept, 25);
    assert_eq!(runs(&kept), built, "buried, not built again");
    let idx = host.index().read().unwrap();
    assert!(a.iter().chain(&b).all(|id| !idx.contains(id)));
    drop(idx);
    // Nothing left to change: nothing written, whatever the size of the one file left.
    let plan = prune::plan(&pruner, &opts, &NoProgress).unwrap();
    let res = prune::run(&pruner, &plan, &opts, &NoProgress).unwrap();
    assert_eq!((res.index_files_written, res.index_files_deleted), (0, 0));
}

/// prune rewrites only the index files whose listings change: another host's kept index
/// survives it (no build), finds what stays, not what went, and checks clean; a prune with
/// nothing to do writes no index file. With the plan in memory and sorted on disk.
fn prune_rewrites_only_what_changes(plan_on_disk: bool) {
    let d = tempfile::tempdir().unwrap();
    let repo = Arc::new(common::repo(d.path()));
    let kept = d.path().join("index");
    let src = d.path().join("src");
    for (dir, fill) in [("one", 1u8), ("two", 2u8)] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
        for i in 0..4u8 {
            let data = vec![fill * 16 + i; 5000 + usize::from(i)];
            std::fs::write(src.join(dir).join(format!("f{i}")), data).unwrap();
        }
    }
    let keep = common::backup(&repo, &src.join("one"));
    let file_keep = repo.index_file_ids().unwrap();
    let drop_snap = common::backup(&repo, &src.join("two"));
    let two: Vec<Id> = {
        let idx = repo.index().read().unwrap();
        files_since(&repo, &file_keep)
            .iter()
            .flat_map(|f| entries(&repo, f))
            .filter(|p| p.kind == chunkbak_engine::format::ObjectKind::DataPack)
            .flat_map(|p| p.blobs.into_iter().map(|b| b.id))
            .filter(|id| idx.contains(id))
            .collect()
    };
    assert!(!two.is_empty());
    drop(reopened(&repo, &kept));
    let built = runs(&kept);
    repo.backend()
        .delete(FileKind::Snapshot, &drop_snap.to_hex())
        .unwrap();
    let opts = PruneOptions {
        grace: 0,
        max_unused: MaxUnused::Bytes(0),
        delete_now: true,
        small_index_file: 0,
        ..Default::default()
    };
    let pruner = Repository::open(repo.backend().clone(), b"pw").unwrap();
    if plan_on_disk {
        pruner.keep_index_on_disk(&d.path().join("pruner"), 2);
    }
    let plan = prune::plan(&pruner, &opts, &NoProgress).unwrap();
    assert_eq!(plan.on_disk(), plan_on_disk);
    let res = prune::run(&pruner, &plan, &opts, &NoProgress).unwrap();
    assert!(res.packs_deleted > 0);
    assert_eq!(res.index_files_kept, 1, "the kept snapshot's file stays");
    assert!(repo.index_file_ids().unwrap().contains(&file_keep[0]));
    let host = reopened(&repo, &kept);
    assert_eq!(
        runs(&kept),
        built,
        "another host's kept index is used again"
    );
    {
        let idx = host.index().read().unwrap();
        assert!(
            two.iter().all(|id| !idx.contains(id)),
            "what was deleted is not found"
        );
    }
    let report = chunkbak_engine::ops::check::check(&host).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let snap = host
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|(id, _)| *id == keep)
        .unwrap()
        .1;
    for n in host.load_dir(&snap.tree).unwrap() {
        for c in host.file_chunks(&n.content).unwrap() {
            host.read_blob(&c).unwrap();
        }
    }
    // Nothing to do: nothing written.
    let pruner = Repository::open(repo.backend().clone(), b"pw").unwrap();
    let plan = prune::plan(&pruner, &opts, &NoProgress).unwrap();
    let res = prune::run(&pruner, &plan, &opts, &NoProgress).unwrap();
    assert_eq!((res.index_files_written, res.index_files_deleted), (0, 0));
}

#[test]
fn prune_rewrites_only_what_changes_in_memory() {
    prune_rewrites_only_what_changes(false);
}

#[test]
fn prune_rewrites_only_what_changes_on_disk() {
    prune_rewrites_only_what_changes(true);
}
