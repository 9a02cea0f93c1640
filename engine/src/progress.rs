//! Progress reporting: the engine calls these hooks; the CLI draws bars or prints JSON.
//! Every method has a no-op default.

use std::path::Path;

pub trait Progress: Send + Sync {
    /// Totals found by the scanner (may arrive while work is under way).
    fn total(&self, _files: u64, _bytes: u64) {}
    /// Bytes read from source files (backup) or written (restore).
    fn bytes(&self, _n: u64) {}
    /// A file was finished.
    fn file_done(&self, _path: &Path) {}
    /// A status line (e.g. waiting for archived packs to thaw).
    fn message(&self, _message: &str) {}
    /// Something went wrong with one entry; the run goes on.
    fn warning(&self, _path: &Path, _message: &str) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
