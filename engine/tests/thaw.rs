//! A restore that waits for archived packs writes every file whose packs are readable first,
//! then waits, then writes the rest: files come back progressively, not all at the end.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::id::ObjectId;
use chunkbak_engine::ops::backup::{self, BackupOptions};
use chunkbak_engine::ops::restore::PackGate;
use chunkbak_engine::ops::restore::{restore_gated, RestoreOptions};
use chunkbak_engine::ops::thaw;
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::{Repository, Result};

/// Packs in `blocked` are unreadable until the first `wait`, which records what the target
/// held at that moment.
struct Gate {
    blocked: Mutex<HashSet<ObjectId>>,
    seen_at_wait: Mutex<Vec<(bool, bool)>>,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
}

impl PackGate for Gate {
    fn readable(&self, pack: &ObjectId) -> bool {
        !self.blocked.lock().unwrap().contains(pack)
    }

    fn wait(&self) -> Result<()> {
        self.seen_at_wait
            .lock()
            .unwrap()
            .push((self.a.exists(), self.b.exists()));
        self.blocked.lock().unwrap().clear();
        Ok(())
    }
}

#[test]
fn files_are_restored_as_their_packs_become_readable() {
    let d = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        data_pack_size: 64 * 1024,
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
    // 10 MB each: at least three chunks (max 4 MiB), each but the last over the 64 KiB pack
    // size, so b has packs of its own whatever the key-dependent cut points are.
    let data_a = chunkbak_engine::chunker::splitmix_bytes(1, 10_000_000);
    let data_b = chunkbak_engine::chunker::splitmix_bytes(2, 10_000_000);
    std::fs::write(src.join("a"), &data_a).unwrap();
    std::fs::write(src.join("b"), &data_b).unwrap();
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
    let root = res.snapshot.tree;

    // The packs of b that a does not use stay unreadable until the gate's first wait.
    let rel = |name: &str| {
        let mut p = src.as_os_str().as_bytes().to_vec();
        p.extend_from_slice(b"/");
        p.extend_from_slice(name.as_bytes());
        p
    };
    let packs_of = |path: Vec<u8>| -> HashSet<ObjectId> {
        let o = RestoreOptions {
            includes: vec![path],
            ..Default::default()
        };
        thaw::plan(&repo, root, &o)
            .unwrap()
            .packs
            .iter()
            .map(|p| p.id)
            .collect()
    };
    let (pa, pb) = (packs_of(rel("a")), packs_of(rel("b")));
    let only_b: HashSet<ObjectId> = pb.difference(&pa).copied().collect();
    assert!(!only_b.is_empty(), "b has packs of its own: {pa:?} {pb:?}");

    let target = d.path().join("t");
    let inside = target.join(src.strip_prefix("/").unwrap());
    let gate = Gate {
        blocked: Mutex::new(only_b),
        seen_at_wait: Mutex::new(Vec::new()),
        a: inside.join("a"),
        b: inside.join("b"),
    };
    let r = restore_gated(
        &repo,
        root,
        &RestoreOptions {
            target: target.clone(),
            threads: 2,
            ..Default::default()
        },
        &NoProgress,
        Some(&gate),
    )
    .unwrap();
    assert_eq!(r.errors, 0);
    assert_eq!(r.files, 2);
    // At the wait, a was already restored and b not yet started.
    assert_eq!(*gate.seen_at_wait.lock().unwrap(), vec![(true, false)]);
    assert_eq!(std::fs::read(inside.join("a")).unwrap(), data_a);
    assert_eq!(std::fs::read(inside.join("b")).unwrap(), data_b);
}
