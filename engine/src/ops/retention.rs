//! Extends S3 Object Lock retention on everything the kept snapshots still reference
//! (format-spec 14), so a repository stays undeletable for `days` days from now: the config,
//! the key files, the snapshots, the index files in force, and every pack that holds a blob a
//! snapshot uses. Packs no snapshot uses (forgotten data, packs marked for deletion) are left
//! to run out, so prune can delete them once their retention ends.
//!
//! An object is renewed, to now + `days`, when its retention ends within `days / 2`: run the
//! extension (prune does, or `chunkbak lock extend`) more often than every `days / 2` days.
//! An object uploaded recently enough is skipped without a request (its upload set its
//! retention to upload time + the repository's days); the others cost one HEAD, plus one
//! PutObjectRetention when they are renewed.

use std::collections::HashSet;

use crate::backend::{Extended, FileKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::{parallel_map, Repository};

/// Objects handed to the store per batch (progress is reported between batches).
const BATCH: usize = 1000;

/// What an extension did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extension {
    /// The retention set on renewed objects (seconds since the epoch).
    pub until: i64,
    /// Objects whose retention ended before this were renewed.
    pub renew_before: i64,
    /// Referenced objects considered, by kind: config and keys, snapshots, index files, packs.
    pub objects: u64,
    pub packs: u64,
    /// Renewed to `until`.
    pub extended: u64,
    /// Retained long enough already (by their upload time, or as HEAD reported).
    pub retained: u64,
    /// Gone since they were listed (deleted or hidden by another run).
    pub gone: u64,
    /// Referenced objects whose retention had already ended (or that had none): they were
    /// deletable until now. More than zero means the extension runs too rarely.
    pub unprotected: u64,
    /// Requests sent: HEAD and PutObjectRetention.
    pub heads: u64,
    pub puts: u64,
}

/// A referenced object and its upload time, if the listing gave one.
pub type Target = (FileKind, String, Option<i64>);

/// The metadata every reader needs: config, key files, snapshots, and the index files in
/// force (not superseded by another).
pub fn metadata_targets(repo: &Repository, live_index: Option<&[Id]>) -> Result<Vec<Target>> {
    let b = repo.backend();
    let mut out: Vec<Target> = Vec::new();
    for kind in [FileKind::Config, FileKind::Key, FileKind::Snapshot] {
        out.extend(
            b.list_info(kind)?
                .into_iter()
                .map(|o| (kind, o.name, o.modified)),
        );
    }
    let live: HashSet<String> = match live_index {
        Some(ids) => ids.iter().map(|i| i.to_hex()).collect(),
        None => {
            let files = repo.read_all_index_files()?;
            let superseded: HashSet<Id> = files
                .iter()
                .flat_map(|(_, f)| f.supersedes.iter().copied())
                .collect();
            files
                .iter()
                .filter(|(id, _)| !superseded.contains(id))
                .map(|(id, _)| id.to_hex())
                .collect()
        }
    };
    out.extend(
        b.list_info(FileKind::Index)?
            .into_iter()
            .filter(|o| live.contains(&o.name))
            .map(|o| (FileKind::Index, o.name, o.modified)),
    );
    Ok(out)
}

/// Renews the retention of `targets` (see the module's rules). `days` overrides the
/// repository's retention for this run; `now` is the current time.
pub fn extend(
    repo: &Repository,
    targets: &[Target],
    days: Option<u32>,
    now: i64,
    progress: &dyn Progress,
) -> Result<Extension> {
    let Some(lock) = repo.config().object_lock else {
        return Err(Error::Invalid(format!(
            "{} has no Object Lock (`chunkbak init --object-lock-days N` sets it up)",
            repo.backend().location()
        )));
    };
    let days = i64::from(days.unwrap_or(lock.days).max(1));
    let mut ext = Extension {
        until: now + days * 86_400,
        renew_before: now + days * 86_400 / 2,
        objects: targets.len() as u64,
        packs: targets.iter().filter(|t| t.0.fanned_out()).count() as u64,
        ..Default::default()
    };
    // Uploaded after this, an object is retained past `renew_before` by its upload alone.
    let young_since = ext.renew_before - i64::from(lock.days) * 86_400;
    let (young, old): (Vec<&Target>, Vec<&Target>) = targets
        .iter()
        .partition(|t| t.2.is_some_and(|m| m > young_since));
    ext.retained += young.len() as u64;
    progress.final_total(old.len() as u64, 0);
    let backend = repo.backend();
    for batch in old.chunks(BATCH) {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let results = parallel_map(batch, |(kind, name, _)| {
            let current = match backend.retention(*kind, name) {
                Ok(u) => u,
                Err(Error::ObjectNotFound(_)) => return Ok((Extended::Gone, false, false)),
                Err(e) => return Err(e),
            };
            let unprotected = current.is_none_or(|u| u <= now);
            if current.is_some_and(|u| u >= ext.renew_before) {
                return Ok((Extended::AlreadyLonger, unprotected, false));
            }
            let r = backend.extend_retention(*kind, name, ext.until)?;
            Ok((r, unprotected, true))
        })?;
        for (r, unprotected, put) in results {
            ext.heads += 1;
            ext.puts += u64::from(put);
            ext.unprotected += u64::from(unprotected && r != Extended::Gone);
            match r {
                Extended::Extended => ext.extended += 1,
                Extended::AlreadyLonger => ext.retained += 1,
                Extended::Gone => ext.gone += 1,
            }
        }
        for _ in batch {
            progress.file_done(std::path::Path::new(""));
        }
    }
    Ok(ext)
}
