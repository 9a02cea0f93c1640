//! What the engine's integration tests share.

use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::key::KdfParams;
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
