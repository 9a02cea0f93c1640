//! A prune deletes the index files it supersedes right after it wrote the file that replaces
//! them, without a lock: a run that listed the index files may find one gone when it reads it.
//! Loading the index and reading every index file start over on a new listing, as long as the
//! listing changed, and name the file when it did not.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::backend::{Backend, FileKind};
use chunkbak_engine::error::{Error, Result};
use chunkbak_engine::format::index::IndexFile;
use chunkbak_engine::format::ObjectKind;
use chunkbak_engine::id::Id;
use chunkbak_engine::repo::INDEX_RACES;
use chunkbak_engine::Repository;

/// The store as a run sees it while prunes run beside it: the first read of an index file
/// after each listing finds it replaced just before (a file superseding it, with the same
/// packs, was written and it was deleted), `races` times. With `stale`, a read of an index
/// file finds it gone while the listing still names it (a store that lost it).
struct Racing {
    inner: Arc<LocalBackend>,
    races: AtomicU32,
    /// A listing of the index files was taken since the last race (one race per listing).
    armed: AtomicBool,
    /// Listings of the index files taken so far.
    lists: AtomicU32,
    /// A backup beside the run adds an index file just before the second listing.
    backup_adds: bool,
    stale: bool,
    /// The prune's view of the repository (the store without the races).
    pruner: OnceLock<Repository>,
}

impl Racing {
    fn prune_replaces(&self, name: &str) {
        let pruner = self.pruner.get().expect("the pruner's view");
        let old = pruner.read_index_file(name).unwrap();
        let new = IndexFile {
            supersedes: vec![Id::from_hex(name).unwrap()],
            packs: old.packs,
        };
        pruner
            .write_object(FileKind::Index, ObjectKind::Index, &new.encode())
            .unwrap();
        self.inner.delete(FileKind::Index, name).unwrap();
    }
}

impl Backend for Racing {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        self.inner.exists(kind, name)
    }
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.inner.put(kind, name, data)
    }
    fn refuses_overwrite(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<bool> {
        self.inner.refuses_overwrite(kind, name, data)
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        if kind == FileKind::Index {
            if self.stale {
                return Err(Error::ObjectNotFound(kind.path_of(name)));
            }
            let race = self.armed.swap(false, Ordering::SeqCst)
                && self
                    .races
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if race {
                self.prune_replaces(name);
            }
        }
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.get_range(kind, name, offset, len)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        if kind == FileKind::Index {
            self.armed.store(true, Ordering::SeqCst);
            if self.lists.fetch_add(1, Ordering::SeqCst) == 1 && self.backup_adds {
                let pruner = self.pruner.get().expect("the pruner's view");
                let any = pruner.index_file_ids().unwrap()[0];
                let f = IndexFile {
                    supersedes: Vec::new(),
                    packs: pruner.read_index_file(&any.to_hex()).unwrap().packs,
                };
                pruner
                    .write_object(FileKind::Index, ObjectKind::Index, &f.encode())
                    .unwrap();
            }
        }
        self.inner.list(kind)
    }
    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.inner.delete(kind, name)
    }
}

/// A repository of three backups (three index files), and the number of blobs its index holds.
fn stored(dir: &Path) -> usize {
    let repo = Arc::new(common::repo(dir));
    for round in 0..3u8 {
        let src = dir.join(format!("src{round}"));
        std::fs::create_dir_all(&src).unwrap();
        for f in 0..4u8 {
            let data: Vec<u8> = (0..50_000u32)
                .map(|i| (i as u8) ^ f ^ round.wrapping_mul(31))
                .collect();
            std::fs::write(src.join(format!("f{f}")), data).unwrap();
        }
        common::backup(&repo, &src);
    }
    repo.load_index().unwrap();
    let blobs = repo.index().read().unwrap().len();
    assert!(blobs > 0);
    assert_eq!(repo.index_file_ids().unwrap().len(), 3);
    blobs
}

fn racing(dir: &Path, races: u32, stale: bool) -> (Arc<Racing>, Repository) {
    racing_beside(dir, races, stale, false)
}

fn racing_beside(
    dir: &Path,
    races: u32,
    stale: bool,
    backup_adds: bool,
) -> (Arc<Racing>, Repository) {
    let inner = Arc::new(LocalBackend::new(dir.join("repo")));
    let store = Arc::new(Racing {
        inner: inner.clone(),
        races: AtomicU32::new(races),
        armed: AtomicBool::new(false),
        lists: AtomicU32::new(0),
        backup_adds,
        stale,
        pruner: OnceLock::new(),
    });
    let _ = store
        .pruner
        .set(Repository::open(inner.clone(), b"pw").unwrap());
    let repo = Repository::open(store.clone(), b"pw").unwrap();
    (store, repo)
}

/// Each race is a new prune (a new listing): more of them in a row than the load used to
/// outlast (4), still fewer than it gives up at.
const RACES: u32 = 6;

#[test]
fn a_load_outlasts_prunes_replacing_the_files_it_listed() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = stored(dir.path());
    let (store, repo) = racing(dir.path(), RACES, false);
    repo.load_index().unwrap();
    assert_eq!(
        store.races.load(Ordering::SeqCst),
        0,
        "every race was played"
    );
    assert_eq!(repo.index().read().unwrap().len(), blobs);
    // Each race superseded a file and deleted it: still three files in force.
    assert_eq!(repo.current_index_files().unwrap().len(), 3);
}

/// Loads the index through prunes racing it ([`RACES`] of them), kept on disk under `kept`
/// above `above` blobs: every race played, the index on disk; its number of blobs.
fn load_kept_racing(dir: &Path, kept: &Path, above: usize) -> (Arc<Racing>, usize) {
    let (store, repo) = racing(dir, RACES, false);
    repo.keep_index_on_disk(kept, above);
    repo.load_index().unwrap();
    assert_eq!(store.races.load(Ordering::SeqCst), 0);
    let idx = repo.index().read().unwrap();
    assert!(idx.on_disk());
    (store.clone(), idx.len())
}

#[test]
fn a_load_kept_on_disk_outlasts_them_too() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = stored(dir.path());
    let kept = dir.path().join("kept");
    // Above the budget (the whole index goes on disk) while the few blobs a backup adds later
    // fit it (the kept run is used then).
    let (store, loaded) = load_kept_racing(dir.path(), &kept, blobs - 1);
    assert_eq!(loaded, blobs);
    // The next load takes the kept run and reads only the files written since: one more
    // backup's, which the prunes now replace.
    let plain = Arc::new(Repository::open(store.inner.clone(), b"pw").unwrap());
    let src = dir.path().join("src3");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("new"), vec![7u8; 70_000]).unwrap();
    common::backup(&plain, &src);
    let more = plain.index().read().unwrap().len();
    assert!(more > blobs);
    let built = run_files(&kept);
    assert_eq!(built.len(), 1, "{built:?}");
    let (_, loaded) = load_kept_racing(dir.path(), &kept, blobs - 1);
    assert_eq!(loaded, more);
    // The kept run served it (the same file), with the new file added: not built again.
    assert_eq!(run_files(&kept), built);
}

/// The kept run files under `dir` (in the repository's folder), with their inode numbers.
fn run_files(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".run"))
        .map(|e| {
            let ino = e.metadata().unwrap().ino();
            (e.file_name().to_string_lossy().into_owned(), ino)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn reading_every_index_file_outlasts_them() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path());
    let (store, repo) = racing(dir.path(), RACES, false);
    let files = repo.read_all_index_files().unwrap();
    assert_eq!(store.races.load(Ordering::SeqCst), 0);
    // Each race replaced one file by another: every file stored now was read.
    let mut read: Vec<Id> = files.iter().map(|(id, _)| *id).collect();
    let mut stored = repo.index_file_ids().unwrap();
    read.sort();
    stored.sort();
    assert_eq!(read, stored);
    assert_eq!(read.len(), 3);
    assert!(files.iter().any(|(_, f)| !f.supersedes.is_empty()));
}

#[test]
fn prunes_that_never_stop_make_the_load_give_up_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path());
    let (store, repo) = racing(dir.path(), 1000, false);
    let e = repo.load_index().unwrap_err().to_string();
    assert!(e.contains("prunes are replacing them"), "{e}");
    assert!(e.contains(&format!("changed {INDEX_RACES} times")), "{e}");
    assert_eq!(store.races.load(Ordering::SeqCst), 1000 - INDEX_RACES);
}

#[test]
fn a_listed_file_the_store_lost_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path());
    let (store, repo) = racing(dir.path(), 0, true);
    let e = repo.load_index().unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound(_)), "{e}");
    assert!(e.to_string().contains("index/"), "{e}");
    // Listed once more to tell a race from a loss, not read again.
    assert_eq!(store.lists.load(Ordering::SeqCst), 2);
}

/// A backup adding an index file changes the listing too; that is no race: the lost file is
/// still named at once.
#[test]
fn a_lost_file_is_named_while_backups_add_files() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path());
    let (store, repo) = racing_beside(dir.path(), 0, true, true);
    let e = repo.load_index().unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound(_)), "{e}");
    assert_eq!(store.lists.load(Ordering::SeqCst), 2);
    assert_eq!(
        repo.index_file_ids().unwrap().len(),
        4,
        "the backup added one"
    );
}

/// A backup into an index with disputed blobs (a repack leaves blobs in two packs until the
/// old one goes) reads the index files it loaded again to judge the claims, sorted on disk: a
/// prune that replaced one since the load makes it load the index again and judge again, not
/// fail on the vanished file (what CI's concurrent backups and prunes met under a 64 KiB
/// budget).
#[test]
fn judging_disputed_claims_outlasts_a_prune_that_replaced_a_loaded_file() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path());
    // Some blobs stored a second time, in packs of their own: claimed twice.
    {
        let repo =
            Repository::open(Arc::new(LocalBackend::new(dir.path().join("repo"))), b"pw").unwrap();
        repo.load_index().unwrap();
        let ids: Vec<_> = repo.read_all_index_files().unwrap()[0].1.packs[0]
            .blobs
            .iter()
            .map(|b| (b.id, b.kind))
            .collect();
        let saver = repo.private_saver().unwrap();
        for (id, kind) in ids {
            saver.save(kind, &repo.read_blob(&id).unwrap()).unwrap();
        }
        repo.write_index(saver.finish().unwrap()).unwrap();
    }
    let (store, repo) = racing(dir.path(), 0, false);
    repo.keep_index_on_disk(&dir.path().join("kept"), 1);
    repo.load_index().unwrap();
    let disputed = repo.index().read().unwrap().disputed_blobs;
    assert!(disputed > 0);
    // A prune replaces the first file the judging reads.
    store.races.store(1, Ordering::SeqCst);
    store.armed.store(true, Ordering::SeqCst);
    let (messages, _) = chunkbak_engine::ops::claims::clean_index_for_dedup(&repo).unwrap();
    assert_eq!(store.races.load(Ordering::SeqCst), 0, "the race was played");
    assert!(messages.is_empty(), "both copies hold: {messages:?}");
    assert!(repo.index().read().unwrap().on_disk());
}
