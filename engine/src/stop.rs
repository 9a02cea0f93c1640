//! Stopping a run at its next safe point: on Ctrl-C (the CLI's signal handler calls
//! [`interrupt`]), or when a store stopped answering (the S3 backend calls [`store_down`]).
//! Operations check [`interrupted`] between units of work, say nothing more about the units
//! that failed meanwhile, and end with [`error`]: one error that says why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::error::Error;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static NEVER_STOP: AtomicBool = AtomicBool::new(false);
static DOWN: Mutex<Option<StoreDown>> = Mutex::new(None);
static FULL: Mutex<Option<DiskFull>> = Mutex::new(None);

/// A file system that ran out of space under a path the run writes to (a restore target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFull {
    /// The directory the run writes under.
    pub at: std::path::PathBuf,
    /// The first write refused, and how.
    pub first: String,
}

/// A store that stopped answering: which, how many attempts in a row got no answer, the last
/// failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreDown {
    pub store: String,
    pub failures: u32,
    pub last: String,
}

/// Asks every running operation to stop at the next safe point (async-signal-safe).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether the run is stopping (interrupted, or its store is down).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// For long-lived sessions (`mount`): a store that stops answering fails the requests of the
/// moment, and the session goes on (the next request tries again).
pub fn never_stop_on_silence() {
    NEVER_STOP.store(true, Ordering::SeqCst);
}

/// Whether a store that stopped answering stops the run.
pub fn stops_on_silence() -> bool {
    !NEVER_STOP.load(Ordering::Relaxed)
}

/// Stops the run because its store stopped answering (the first report wins).
pub fn store_down(d: StoreDown) {
    DOWN.lock().expect("stop lock").get_or_insert(d);
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Stops the run because the file system under `d.at` is full (the first report wins): every
/// later write there would fail the same way.
pub fn disk_full(d: DiskFull) {
    FULL.lock().expect("stop lock").get_or_insert(d);
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether `e` is the file system's "no space left" (ENOSPC) or "quota exceeded" (EDQUOT).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The store that stopped answering, if one did.
pub fn down() -> Option<StoreDown> {
    DOWN.lock().expect("stop lock").clone()
}

/// The error a stopped run ends with: [`Error::DiskFull`] naming where, or
/// [`Error::StoreDown`] naming the store, each with `done` (what the run finished before, e.g.
/// "412 of 2,300 files restored"; may be empty), or [`Error::Interrupted`].
pub fn error(done: impl FnOnce() -> String) -> Error {
    if let Some(f) = FULL.lock().expect("stop lock").clone() {
        return Error::DiskFull {
            at: f.at,
            first: f.first,
            done: done(),
        };
    }
    match down() {
        Some(d) => Error::StoreDown {
            store: d.store,
            failures: d.failures,
            last: d.last,
            done: done(),
        },
        None => Error::Interrupted,
    }
}
