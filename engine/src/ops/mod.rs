//! Operations, one per command.

#[cfg(feature = "aws-sources")]
pub mod awsapply;
pub mod backup;
pub mod benchmark;
pub mod check;
pub mod claims;
pub mod copy;
pub mod diff;
pub mod dump;
#[cfg(feature = "aws-sources")]
pub mod ebs;
pub mod find;
pub mod forget;
pub mod fsmeta;
pub mod ls;
#[cfg(feature = "mount")]
pub mod mount;
pub mod packread;
pub mod pattern;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod select;
pub mod stats;
pub mod thaw;
pub(crate) mod writer;

pub use crate::stop::{interrupt, interrupted};

/// Runs a worker thread's loop. A panic there is a bug, and the threads waiting on the worker
/// would wait forever, so it ends the process, as a panic in a rayon pool does.
pub(crate) fn abort_on_panic(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        std::process::abort();
    }
}

/// The number of worker threads `--threads N` asks for (0: one per core).
pub fn threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        threads
    }
}

/// A rayon pool of `threads` workers (0: one per core) named `chunkbak-<name>-<i>`, made once
/// per process and kept. Operations that follow one another in a process (a library user, the
/// fuzz model, tests) reuse its threads instead of starting new ones, and what a worker keeps
/// per thread (its zstd contexts) stays with a live thread: a dropped pool's threads exit after
/// the operation returned, so their per-thread memory looked leaked to libFuzzer's leak check
/// (the `model` target, 2026-12-06).
pub fn thread_pool(threads: usize, name: &str) -> crate::Result<std::sync::Arc<rayon::ThreadPool>> {
    type Pools = std::collections::BTreeMap<(usize, String), std::sync::Arc<rayon::ThreadPool>>;
    static POOLS: std::sync::Mutex<Pools> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let key = (self::threads(threads), name.to_string());
    let mut pools = POOLS.lock().expect("thread pools");
    if let Some(p) = pools.get(&key) {
        return Ok(p.clone());
    }
    let name = key.1.clone();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(key.0)
        .thread_name(move |i| format!("chunkbak-{name}-{i}"))
        .build()
        .map_err(|e| crate::Error::Other(format!("thread pool: {e}")))?;
    Ok(pools
        .entry(key)
        .or_insert(std::sync::Arc::new(pool))
        .clone())
}
