//! What the engine's integration tests share.

use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::id::Id;
use chunkbak_engine::ops::backup::{backup as run, BackupOptions};
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::Repository;

/// A new local repository in `dir/repo`, with a cheap key derivation.
pub fn repo(dir: &std::path::Path) -> Repository {
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    Repository::init(Arc::new(LocalBackend::new(dir.join("repo"))), b"pw", &opts).unwrap()
}

/// Backs `src` up as host "h" on two threads, the index loaded first; the newest snapshot's id.
#[allow(dead_code)] // not every test crate backs up
pub fn backup(repo: &Arc<Repository>, src: &std::path::Path) -> Id {
    repo.load_index().unwrap();
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        host: "h".into(),
        threads: 2,
        ..Default::default()
    };
    run(repo, opts, Arc::new(NoProgress)).unwrap();
    let snaps = repo.snapshots().unwrap();
    snaps.iter().map(|(id, s)| (s.time, *id)).max().unwrap().1
}
