//! Progress reporting: the engine calls these hooks; the CLI draws bars or prints JSON.
//! Every method has a no-op default.

use std::path::Path;

pub trait Progress: Send + Sync {
    /// Totals found so far by the scanner (may arrive, growing, while work is under way).
    fn total(&self, _files: u64, _bytes: u64) {}
    /// The totals, complete: the work is `files` items (files, packs, snapshots) of `bytes`.
    fn final_total(&self, files: u64, bytes: u64) {
        self.total(files, bytes)
    }
    /// Work on one file begins (the path shown as the current one).
    fn started(&self, _path: &Path) {}
    /// Bytes read from source files (backup) or written (restore).
    fn bytes(&self, _n: u64) {}
    /// A file was finished.
    fn file_done(&self, _path: &Path) {}
    /// A status line (e.g. waiting for archived packs to thaw).
    fn message(&self, _message: &str) {}
    /// Something went wrong with one entry; the run goes on.
    fn warning(&self, _path: &Path, _message: &str) {}
    /// A restore creates, updates or deletes an entry of its target (with `--dry-run`: would);
    /// a backup reads a file that is new since the parent snapshot or changed (`New`,
    /// `Update`; unchanged files are not reported).
    fn change(&self, _change: Change, _path: &Path) {}
}

/// What a restore does to one entry of its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Not there yet: created.
    New,
    /// There, but different: brought to the snapshot's content.
    Update,
    /// There, and not in the snapshot: removed (`--delete`).
    Delete,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Update => "update",
            Change::Delete => "delete",
        }
    }
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
