//! The repository's index: its files read (outlasting concurrent prunes), loaded into memory
//! or kept on disk within the memory budget, written, and read again for what is new.

use std::sync::{Arc, Mutex, RwLock};

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::format::index::{IndexFile, PackEntry};
use crate::format::ObjectKind;
use crate::id::Id;
use crate::index::Index;
use crate::packer::BlobSaver;

use super::{
    parallel_map, parallel_map_n, pause_after_race, prunes_replacing, Repository, DECODERS,
    INDEX_RACES, PARALLEL_READS,
};

impl Repository {
    /// Reads and decodes one index file.
    pub fn read_index_file(&self, name: &str) -> Result<IndexFile> {
        let plain = self.read_object(FileKind::Index, ObjectKind::Index, name)?;
        IndexFile::decode(&plain, &format!("index/{name}"))
    }

    /// Every index file in the repository (including superseded ones). A file a prune replaced
    /// between the listing and its read makes it start over on a new listing (up to
    /// [`INDEX_RACES`] times in a row).
    pub fn read_all_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        self.on_index_listing(|names| {
            parallel_map(names, |(id, name)| Ok((*id, self.read_index_file(name)?)))
        })
    }

    /// Lists the index files and runs `read` on the listing. A prune deletes the files it
    /// supersedes right after it wrote the one that replaces them, so a file may vanish between
    /// the listing and its read: then, after a pause that grows (a prune deletes its files one
    /// by one), the listing is taken again and `read` starts over on it at once, as long as a
    /// file the last listing named is gone from it. A file missing from a listing that still
    /// names every file read is the store's loss (the error names it); a read that meets a new
    /// prune [`INDEX_RACES`] times in a row is told to run again.
    fn on_index_listing<T>(&self, read: impl Fn(&[(Id, String)]) -> Result<T>) -> Result<T> {
        let listing = || -> Result<Vec<(Id, String)>> {
            let mut names = self.list_named(FileKind::Index)?;
            names.sort();
            Ok(names)
        };
        let mut names = listing()?;
        let mut races = 0;
        loop {
            let what = match read(&names) {
                Err(Error::ObjectNotFound(what)) => what,
                r => return r,
            };
            races += 1;
            pause_after_race(races);
            let again = listing()?;
            // Files a backup added meanwhile do not count: only one that went.
            if names.iter().all(|n| again.binary_search(n).is_ok()) {
                return Err(Error::ObjectNotFound(what));
            }
            if races >= INDEX_RACES {
                return Err(prunes_replacing(races, &what));
            }
            names = again;
        }
    }

    /// The index files that are in force: all but those another one supersedes.
    pub fn current_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let loaded = self.read_all_index_files()?;
        let superseded: std::collections::HashSet<Id> = loaded
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        Ok(loaded
            .into_iter()
            .filter(|(id, _)| !superseded.contains(id))
            .collect())
    }

    /// The names of the index files stored now.
    pub fn index_file_ids(&self) -> Result<Vec<Id>> {
        Ok(self
            .list_named(FileKind::Index)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The memory budget the buffers that scale with it follow (the delta path's read-ahead
    /// and its cache of bases; the index's share is set by
    /// [`keep_index_on_disk`](Self::keep_index_on_disk)). Default [`DEFAULT_MEMORY`].
    pub fn set_memory(&self, bytes: u64) {
        self.memory
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn memory(&self) -> u64 {
        self.memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps a loaded index of more than `above_blobs` blobs in a sorted run file in a private
    /// folder under `dir` (removed when the repository is dropped) instead of in memory, with
    /// at most `above_blobs` entries sorted in memory at a time (48 bytes each).
    pub fn keep_index_on_disk(&self, dir: &std::path::Path, above_blobs: usize) {
        let _ = self
            .index_on_disk
            .set((dir.to_path_buf(), above_blobs.max(1)));
    }

    /// Where this repository's index is kept on disk and how many entries may be sorted in
    /// memory at a time, when [`keep_index_on_disk`](Self::keep_index_on_disk) said so: the
    /// folder for other sorts of the same size (prune's).
    pub(crate) fn index_scratch(&self) -> Option<(std::path::PathBuf, usize)> {
        self.index_on_disk
            .get()
            .map(|(dir, above)| (dir.join(Id(self.config.repo_id).to_hex()), *above))
    }

    /// As [`keep_index_on_disk`](Self::keep_index_on_disk), in a new private folder under
    /// `tmp` (made with an unpredictable name, so no other user can have made it first) that
    /// goes with the repository: nothing is kept for a later run (`--no-cache`).
    pub fn index_on_disk_for_this_run(
        &self,
        tmp: &std::path::Path,
        above_blobs: usize,
    ) -> Result<()> {
        // A run killed leaves it behind (the index of the whole repository): the next one
        // removes it.
        let d = crate::tmp::RunFolder::new(tmp, "chunkbak-index-")
            .map_err(|e| Error::Other(format!("{}: {e}", tmp.display())))?;
        self.keep_index_on_disk(d.path(), above_blobs);
        let _ = self.index_tmp.set(d);
        Ok(())
    }

    /// Runs `read` on the index as loaded, which reads the files it was loaded from again (a
    /// backup judging disputed claims). A prune may have replaced one since the load: when a
    /// file the index was loaded from is gone from the store's listing, the index is loaded
    /// again after a pause that grows, and `read` starts over (up to [`INDEX_RACES`] times in
    /// a row). A file missing while the listing still names every file loaded is the store's
    /// loss (the error names it).
    pub(crate) fn on_loaded_index<T>(&self, read: impl Fn() -> Result<T>) -> Result<T> {
        let mut races = 0;
        loop {
            let what = match read() {
                Err(Error::ObjectNotFound(what)) => what,
                r => return r,
            };
            let listed: std::collections::HashSet<Id> =
                self.index_file_ids()?.into_iter().collect();
            let gone = self
                .index
                .read()
                .expect("index lock")
                .files
                .iter()
                .any(|id| !listed.contains(id));
            if !gone {
                return Err(Error::ObjectNotFound(what));
            }
            races += 1;
            if races >= INDEX_RACES {
                return Err(prunes_replacing(races, &what));
            }
            pause_after_race(races);
            self.load_index()?;
        }
    }

    /// Loads every index file into memory (or, when [`keep_index_on_disk`] says so, into a
    /// run file on disk). Returns the number of files read.
    ///
    /// [`keep_index_on_disk`]: Repository::keep_index_on_disk
    ///
    /// Two passes keep memory at the index itself (48 bytes a blob) plus a few files in
    /// flight: the first reads each file's header (what it supersedes, how many blobs), the
    /// second decodes the files in force one at a time into a presized array. (A remote
    /// repository's index files are read from the local cache the second time.)
    ///
    /// A file a prune replaced between the listing and its read makes the load start over on
    /// a new listing (up to [`INDEX_RACES`] times in a row).
    pub fn load_index(&self) -> Result<usize> {
        let (fresh, n) = self.on_index_listing(|names| self.load_index_once(names))?;
        let mut idx = self.index.write().expect("index lock");
        *idx = fresh;
        if let Some(c) = self.cache() {
            // Forget tree packs the repository no longer has (pruned): each cached one is
            // looked up (the table of every pack is not read).
            c.retain_by(FileKind::Tree, &|name| {
                Id::from_hex(name).is_some_and(|id| idx.has_pack(&id))
            });
        }
        idx.check_read()?;
        Ok(n)
    }

    fn load_index_once(&self, names: &[(Id, String)]) -> Result<(Index, usize)> {
        // A large index is kept on disk between runs, per repository.
        let keep = self.index_scratch();
        if let Some((dir, above)) = &keep {
            if let Some(idx) = self.load_kept(dir, *above, names)? {
                return Ok((idx, names.len()));
            }
        }
        // Many reads in flight pay off only over a network; each holds a whole file.
        let local = !self.backend.is_remote();
        let heads = parallel_map_n(
            if local { DECODERS } else { PARALLEL_READS },
            names,
            |(id, name)| {
                let plain = self.read_object(FileKind::Index, ObjectKind::Index, name)?;
                let (supersedes, blobs) = IndexFile::peek(&plain, &format!("index/{name}"))?;
                Ok((*id, supersedes, blobs))
            },
        )?;
        let superseded: std::collections::HashSet<Id> = heads
            .iter()
            .flat_map(|(_, s, _)| s.iter().copied())
            .collect();
        let in_force: Vec<&(Id, String)> = names
            .iter()
            .filter(|(id, _)| !superseded.contains(id))
            .collect();
        let blobs = heads
            .iter()
            .filter(|(id, _, _)| !superseded.contains(id))
            .map(|(_, _, n)| n)
            .sum();
        let on_disk = keep.as_ref().filter(|(_, above)| blobs > *above);
        let fresh = Mutex::new(match on_disk {
            Some((dir, above)) => Index::loading_to_keep(
                dir,
                *above,
                blobs,
                names.iter().map(|(id, _)| *id).collect(),
            )?,
            None => Index::loading(blobs),
        });
        // The first pass downloaded what was remote (into the cache): decoding is the work now.
        let threads = if self.cache().is_some() || local {
            DECODERS
        } else {
            PARALLEL_READS
        };
        parallel_map_n(threads, &in_force, |(id, name)| {
            let f = self.read_index_file(name)?;
            fresh.lock().expect("index lock").add_file(*id, &f);
            Ok(())
        })?;
        let mut fresh = fresh.into_inner().expect("index lock");
        fresh.seal();
        if let (Some(e), Some((dir, _))) = (fresh.run_error(), on_disk) {
            return Err(Error::Other(format!(
                "the index kept on disk under {}: {e}",
                dir.display()
            )));
        }
        // Superseded files count as read too, so a later look for new files skips them.
        fresh.files = names.iter().map(|(id, _)| *id).collect();
        Ok((fresh, names.len()))
    }

    /// The index from the run file an earlier load kept in `dir`, with the index files written
    /// since added (they go to memory). Covered files that new ones supersede (a prune
    /// rewrote them) are buried: their packs' records in the run file are passed by, and the
    /// files that replace them are added like any new one. `None` when there is none to use,
    /// when a covered file is gone that no file supersedes, when the new files hold more than
    /// `above` blobs, or when a superseded file lists a pack whose copy of a disputed blob the
    /// run file kept: the caller then builds it again.
    fn load_kept(
        &self,
        dir: &std::path::Path,
        above: usize,
        names: &[(Id, String)],
    ) -> Result<Option<Index>> {
        let ids: Vec<Id> = names.iter().map(|(id, _)| *id).collect();
        let Some((mut idx, covered)) = Index::open_kept(dir) else {
            return Ok(None);
        };
        let covered: std::collections::HashSet<Id> = covered.into_iter().collect();
        let new: Vec<&(Id, String)> = names
            .iter()
            .filter(|(id, _)| !covered.contains(id))
            .collect();
        let threads = if self.backend.is_remote() && self.cache().is_none() {
            PARALLEL_READS
        } else {
            DECODERS
        };
        // Headers first (what each supersedes, how many blobs): the files are decoded only
        // when they fit the budget, one at a time.
        let heads = parallel_map_n(threads, &new, |(id, name)| {
            let plain = self.read_object(FileKind::Index, ObjectKind::Index, name)?;
            let (supersedes, blobs) = IndexFile::peek(&plain, &format!("index/{name}"))?;
            Ok((*id, supersedes, blobs))
        })?;
        let superseded: std::collections::HashSet<Id> = heads
            .iter()
            .flat_map(|(_, s, _)| s.iter().copied())
            .collect();
        let listed: std::collections::HashSet<&Id> = ids.iter().collect();
        let mut gone = Vec::new();
        for id in &covered {
            match (superseded.contains(id), listed.contains(id)) {
                (true, _) => gone.push(*id),
                (false, true) => {}
                // Removed, and nothing says what replaces it.
                (false, false) => return Ok(None),
            }
        }
        let blobs: usize = heads
            .iter()
            .filter(|(id, _, _)| !superseded.contains(id))
            .map(|(_, _, n)| n)
            .sum();
        if blobs > above {
            return Ok(None);
        }
        if !idx.bury(&gone) {
            return Ok(None);
        }
        idx.forget_file_packs();
        for (id, name) in new.iter().filter(|(id, _)| !superseded.contains(id)) {
            let f = self.read_index_file(name)?;
            idx.add_file(*id, &f);
        }
        if let Some(e) = idx.run_error() {
            return Err(Error::Other(format!(
                "the index kept on disk under {}: {e}",
                dir.display()
            )));
        }
        idx.files = ids;
        Ok(Some(idx))
    }

    /// Writes an index file for packs a session stored.
    pub fn write_index(&self, packs: Vec<PackEntry>) -> Result<Option<Id>> {
        if packs.is_empty() {
            return Ok(None);
        }
        // An index names only packs that are stored.
        self.backend.flush()?;
        let f = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        self.write_object(FileKind::Index, ObjectKind::Index, &f.encode())
            .map(Some)
    }

    /// A saver for new blobs, deduplicating against the loaded index.
    pub fn blob_saver(&self) -> Result<BlobSaver> {
        BlobSaver::new(
            self.backend.clone(),
            self.cache().cloned(),
            (self.key.clone(), self.hasher.clone()),
            self.index.clone(),
            &self.config,
        )
    }

    /// A saver that deduplicates only against what it stores itself (repacking, salvage):
    /// every blob handed to it is written, once.
    pub fn private_saver(&self) -> Result<BlobSaver> {
        BlobSaver::new(
            self.backend.clone(),
            None,
            (self.key.clone(), self.hasher.clone()),
            Arc::new(RwLock::new(Index::new())),
            &self.config,
        )
    }

    /// The index files stored now that are not in `seen` (written since it was taken), added
    /// to it. A file removed between the listing and the read was superseded: skipped.
    pub fn read_new_index_files(
        &self,
        seen: &mut std::collections::HashSet<Id>,
    ) -> Result<Vec<(Id, IndexFile)>> {
        let mut out = Vec::new();
        for id in self.index_file_ids()? {
            if !seen.insert(id) {
                continue;
            }
            match self.read_index_file(&id.to_hex()) {
                Ok(f) => out.push((id, f)),
                Err(Error::ObjectNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
