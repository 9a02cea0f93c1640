//! An index larger than the memory allowed: loaded into a sorted run file ([`indexrun`]) and
//! a pack table ([`packtable`]) in a private folder, a bounded number of records sorted in
//! memory at a time (format-spec 16).

use std::path::Path;

use super::bases::Bases;
use super::kept::covers_of;
use super::{Index, TOP};
use crate::error::{Error, Result};
use crate::id::{BlobId, Id};
use crate::indexrun::{self, RunFile};
use crate::packtable;

/// The pack table of an index on disk while it loads: the records (in a file), the packs'
/// positions by id, which are marked, and the ids' sort (written as a run file at the seal).
pub(super) struct TableOut {
    pub(super) writer: packtable::Writer,
    pub(super) positions: packtable::Positions,
    pub(super) marked: Vec<bool>,
    pub(super) ids: indexrun::Builder,
}

/// Ids of packs sorted in memory at a time for an index on disk's table (3 MiB).
pub(super) const TABLE_SORT_RECORDS: usize = 1 << 16;

impl Index {
    /// An index being loaded into a run file, in a new private folder under `dir` (removed
    /// with the index; one left by a process killed is removed by the next load). At most
    /// `mem_records` entries are sorted in memory at a time: what the index costs in memory
    /// then does not grow with the repository (format-spec 16). `blobs`: about how many the
    /// load adds (0: not known), so that it sorts them by ranges of ids instead of merging
    /// runs ([`indexrun::Builder::expect`]).
    pub fn loading_on_disk(dir: &Path, mem_records: usize, blobs: usize) -> Result<Self> {
        private_dir(dir)?;
        let run_dir = sort_folder(dir)?;
        let mut builder = indexrun::Builder::new(&run_dir.path().join("tmp"), mem_records)?;
        builder.expect(blobs as u64);
        let table_out = TableOut {
            writer: packtable::Writer::new(&run_dir.path().join("packs.tmp"))?,
            positions: packtable::Positions::default(),
            marked: Vec::new(),
            ids: indexrun::Builder::new(&run_dir.path().join("tmp-packs"), TABLE_SORT_RECORDS)?,
        };
        let bases = Bases::on_disk(&run_dir.path().join("tmp-bases"), mem_records)?;
        Ok(Index {
            loading: true,
            bases,
            run_dir: Some(run_dir),
            builder: Some(builder),
            table_out: Some(table_out),
            ..Self::default()
        })
    }

    /// The first error writing or reading the run file, if any.
    pub fn run_error(&self) -> Option<String> {
        self.run_error.lock().expect("run error").clone()
    }

    pub(super) fn note_run_error(&self, e: &Error) {
        let mut first = self.run_error.lock().expect("run error");
        if first.is_none() {
            *first = Some(e.to_string());
            use std::os::unix::fs::MetadataExt;
            for (f, dev, ino) in &self.kept_files {
                if std::fs::metadata(f).is_ok_and(|m| (m.dev(), m.ino()) == (*dev, *ino)) {
                    let _ = std::fs::remove_file(f);
                }
            }
        }
    }

    /// An error when a kept file could not be read (lookups since found nothing in it): the
    /// kept files are gone, and the next run builds them again.
    pub fn check_read(&self) -> Result<()> {
        match self.run_error() {
            None => Ok(()),
            Some(e) => Err(Error::Other(format!(
                "the index kept on disk cannot be read ({e}); it was removed: run again"
            ))),
        }
    }

    /// Merges what was collected into the run file and opens it.
    pub(super) fn seal_run(&mut self, builder: indexrun::Builder) {
        // A record that could not be sorted is lost: no file, above all none kept.
        if self.run_error().is_some() {
            return;
        }
        let Some(out) = self.table_out.take() else {
            return self.note_run_error(&Error::Other(
                "an index on disk without its pack table".into(),
            ));
        };
        let marked = &out.marked;
        // A copy in a pack marked for deletion is kept only when no live pack has one.
        let rank = |r: &indexrun::Record| u8::from(marked[(r.pack & !TOP) as usize]);
        let (base, covers) = match &self.keep {
            Some((dir, covered)) => {
                let covers = covers_of(covered);
                (dir.join(format!("run-{}", Id(covers).to_hex())), covers)
            }
            None => (
                self.run_dir
                    .as_ref()
                    .expect("a run has its folder")
                    .path()
                    .join("index"),
                [0u8; 32],
            ),
        };
        let [path, table_path, ids_path, bases_path] =
            ["run", "packs", "pids", "bases"].map(|ext| base.with_extension(ext));
        let done = builder
            .finish(&path, covers, &rank)
            .and_then(|built| Ok((built, RunFile::open(&path)?)))
            .and_then(|(built, file)| {
                let TableOut { writer, ids, .. } = out;
                // Of a pack pushed marked, one no longer marked was listed live since.
                writer.finish(&table_path, covers, &|p| !marked[p as usize])?;
                ids.finish(&ids_path, covers, &|_| 0)?;
                let table = packtable::Table::open(&table_path)?;
                self.bases.finish(&bases_path, covers)?;
                Ok((built, file, table, RunFile::open(&ids_path)?))
            });
        match done {
            Ok((built, file, table, ids)) => {
                self.disputed_blobs = built.disputed as usize;
                self.won = built.won;
                self.lost = built.lost;
                self.run = Some(file);
                self.table = Some(table);
                self.table_ids = Some(ids);
            }
            Err(e) => return self.note_run_error(&e),
        }
        if let Some((dir, covered)) = self.keep.clone() {
            let files = [path, table_path, ids_path, bases_path];
            self.keep_built(&dir, &covered, covers, files);
        }
    }

    /// The loaded blobs are in a run file on disk (the index is above the memory allowed).
    pub fn on_disk(&self) -> bool {
        self.run.is_some()
    }

    /// Every loaded blob in id order (the run file's, a block at a time, or the sorted
    /// entries'), with its pack's position in the table ([`pack`](Index::pack)); blobs added since the
    /// load are not among them. For passes in id order (check's).
    pub fn for_each_loaded(&self, f: &mut dyn FnMut(&BlobId, u32) -> Result<()>) -> Result<()> {
        if let Some(run) = &self.run {
            return run.for_each(|r| {
                let pack = r.pack & !TOP;
                if self.is_dead(pack) {
                    return Ok(());
                }
                f(&Id(r.id), pack)
            });
        }
        for e in &self.sorted {
            f(&e.id, e.pack())?;
        }
        Ok(())
    }
}

/// Makes `dir` (mode 0700) and checks that it is this user's alone: a run file decides what
/// a backup stores, so a folder another user made first (in a shared $TMPDIR) is refused.
pub(super) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    crate::fsperm::mkdir_private(dir)
        .map_err(|e| Error::Other(format!("{}: {e}", dir.display())))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // The folder and the one above it (whose owner could rename it away).
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let m = std::fs::symlink_metadata(d)
            .map_err(|e| Error::Other(format!("{}: {e}", d.display())))?;
        if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
            return Err(Error::Other(format!(
                "{}: not a folder private to this user (owner {}, mode {:o}): the index cannot \
                 be kept there; give --cache-dir a folder of your own",
                d.display(),
                m.uid(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// A new private folder `index-run-PID-XXXXXX` under `dir` for an external sort (removed when
/// dropped), after removing those of processes that are gone (a killed run's sorts).
pub(crate) fn sort_folder(dir: &Path) -> Result<tempfile::TempDir> {
    remove_left_by_dead_processes(dir);
    tempfile::Builder::new()
        .prefix(&format!("index-run-{}-", std::process::id()))
        .tempdir_in(dir)
        .map_err(|e| Error::Other(format!("{}: {e}", dir.display())))
}

/// Removes what processes that are gone left in `dir` when killed: their run folders
/// (`index-run-PID-…`) and temporary files (`…tmpPID`).
pub(super) fn remove_left_by_dead_processes(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let folder = name.strip_prefix("index-run-");
        let pid = match folder {
            Some(r) => r.split('-').next(),
            None => name.rsplit_once("tmp").map(|(_, p)| p),
        };
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = if folder.is_some() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
        }
    }
}
