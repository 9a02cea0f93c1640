//! `backup`: walk the sources, chunk new and changed files in parallel, store new blobs, write
//! trees bottom-up, then the index, then the snapshot (the commit point).
//!
//! Threads: the calling thread walks (walkdir, pre-order, sorted by name) and hands each file
//! that must be read to one of N reader threads (N: `--threads`), which chunk it in batches
//! whose chunks a rayon pool of N threads hashes, compresses and encrypts; a finisher thread
//! receives finished directories in post-order, waits for their files, and stores their tree
//! blobs; a scanner thread counts the totals for the progress bar. Unchanged files (same size,
//! mtime, ctime and inode as in the parent snapshot, all chunks indexed) are never opened.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use globset::GlobSet;
use rayon::prelude::*;

use super::fsmeta::{self, node_from_metadata, Owners};
use super::select::{timespec_of, Filter};
use crate::error::{Error, Result};
use crate::format::pack::BlobKind;
use crate::format::snapshot::{Snapshot, Summary};
use crate::format::tree::{Content, Node, NodeKind};
use crate::id::{BlobId, Id};
use crate::progress::Progress;
use crate::repo::Repository;

#[cfg(feature = "aws-sources")]
pub mod awsconfig;
mod ctx;
mod delta;
#[cfg(feature = "aws-sources")]
pub mod ebs;
mod paths;
mod sparse;
mod stdin;
mod sync;
mod walk;

use ctx::*;
pub use paths::exclude_set;
use paths::*;
use stdin::*;
use sync::*;
use walk::*;

/// Where `backup --stdin` reads from.
pub enum StdinSource {
    /// The process's standard input.
    Stdin,
    /// The standard output of a command; no snapshot is written if it exits non-zero.
    Command(Vec<OsString>),
}

/// Which snapshot unchanged files are compared with.
#[derive(Clone, Debug, Default)]
pub enum ParentMode {
    /// The newest snapshot with the same host and paths.
    #[default]
    Auto,
    /// This one (id or prefix).
    Id(String),
    /// None: read every file.
    None,
}

pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub host: String,
    pub tags: Vec<String>,
    pub time: Option<jiff::Timestamp>,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    pub parent: ParentMode,
    /// With `stdin`, the name of the single file in the snapshot.
    pub stdin_filename: String,
    pub stdin: Option<StdinSource>,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Snapshots this host wrote itself (its local state): with `Some`, an automatic parent
    /// must be one of them, so a snapshot another host forged under this host's name is
    /// never trusted to skip reading files (format-spec 12, "Trust"). `None`: any.
    pub own_snapshots: Option<HashSet<Id>>,
    /// Snapshots dated later than now plus this many seconds are never a parent.
    pub clock_skew_secs: i64,
    /// An EBS snapshot instead of paths or a stream.
    #[cfg(feature = "aws-sources")]
    pub ebs: Option<ebs::EbsSource>,
    /// AWS configuration (Route53) instead of paths.
    #[cfg(feature = "aws-sources")]
    pub aws_config: Option<awsconfig::AwsConfigSource>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            paths: Vec::new(),
            host: fsmeta::hostname(),
            tags: Vec::new(),
            time: None,
            excludes: Vec::new(),
            one_file_system: false,
            parent: ParentMode::Auto,
            stdin_filename: "stdin".into(),
            stdin: None,
            threads: 0,
            own_snapshots: None,
            clock_skew_secs: crate::ops::select::DEFAULT_CLOCK_SKEW_SECS,
            #[cfg(feature = "aws-sources")]
            ebs: None,
            #[cfg(feature = "aws-sources")]
            aws_config: None,
        }
    }
}

/// What a backup did.
#[derive(Debug)]
pub struct BackupResult {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    pub parent: Option<Id>,
    /// The newest snapshot of this host and paths, when it was not taken as the parent
    /// because this host did not write it (not in `own_snapshots`): every file was read.
    pub untrusted_parent: Option<Id>,
    /// Index claims that other packs dispute and whose pack headers refute them: not
    /// deduplicated against (see ops::claims).
    pub claims_refuted: Vec<String>,
    /// Entries that were skipped or need attention, with the reason.
    pub warnings: Vec<(PathBuf, String)>,
    pub packs_written: u64,
    /// Blobs copied out of packs that a concurrent prune marked for deletion.
    pub blobs_copied: u64,
    /// Chunks stored as deltas against a previous version's chunks, their plaintext bytes
    /// and the bytes they take stored.
    pub deltas: u64,
    pub delta_raw_bytes: u64,
    pub delta_stored_bytes: u64,
}

/// Runs a backup. The repository's index must be loaded.
pub fn backup(
    repo: &Arc<Repository>,
    opts: BackupOptions,
    progress: Arc<dyn Progress>,
) -> Result<BackupResult> {
    let start = Instant::now();
    let start_time = jiff::Timestamp::now();
    let (claims_refuted, _) = super::claims::clean_index_for_dedup(repo)?;
    let pool = crate::ops::thread_pool(opts.threads, "worker")?;
    let ctx = Arc::new(Ctx {
        repo: repo.clone(),
        w: crate::ops::writer::Writer::new(repo)?,
        progress: progress.clone(),
        counters: Counters::default(),
        warnings: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        failed: AtomicBool::new(false),
        pool,
    });

    let mut untrusted_parent = None;
    let result = (|| -> Result<BackupResult> {
        #[cfg(feature = "aws-sources")]
        let ebs_source = opts.ebs.as_ref();
        #[cfg(not(feature = "aws-sources"))]
        let ebs_source: Option<&()> = None;
        #[cfg(feature = "aws-sources")]
        let aws_source = opts.aws_config.as_ref();
        #[cfg(not(feature = "aws-sources"))]
        let aws_source: Option<&()> = None;
        let (paths, root_nodes, parent_id) = if let Some(src) = aws_source {
            #[cfg(feature = "aws-sources")]
            {
                let paths = vec![PathBuf::from("/aws")];
                let parent = find_parent(repo, &opts, &paths, &mut untrusted_parent)?;
                let node = awsconfig::backup_aws_config(&ctx, src)?;
                (paths, vec![node], parent.map(|p| p.0))
            }
            #[cfg(not(feature = "aws-sources"))]
            {
                let _ = src;
                unreachable!()
            }
        } else if let Some(src) = ebs_source {
            #[cfg(feature = "aws-sources")]
            {
                let paths = vec![PathBuf::from(format!("/ebs/{}", src.volume))];
                let parent = find_parent(repo, &opts, &paths, &mut untrusted_parent)?;
                let node = ebs::backup_ebs(&ctx, src, parent.map(|p| p.1))?;
                (paths, vec![node], parent.map(|p| p.0))
            }
            #[cfg(not(feature = "aws-sources"))]
            {
                let _ = src;
                unreachable!()
            }
        } else if let Some(src) = &opts.stdin {
            let name = opts.stdin_filename.trim_start_matches('/').to_string();
            if name.is_empty() || name.contains('/') {
                return Err(Error::Invalid(format!(
                    "--stdin-filename {:?} must be a plain file name",
                    opts.stdin_filename
                )));
            }
            let paths = vec![PathBuf::from(format!("/{name}"))];
            // The same name in the parent snapshot: its chunks are candidate delta bases.
            let parent = find_parent(repo, &opts, &paths, &mut untrusted_parent)?;
            let prev = match &parent {
                Some((_, tree)) => repo
                    .load_dir(tree)?
                    .into_iter()
                    .find(|n| n.name == name.as_bytes() && n.kind == NodeKind::File)
                    .map(|n| n.content),
                None => None,
            };
            let node = backup_stdin(&ctx, src, &name, prev)?;
            (paths, vec![node], parent.map(|p| p.0))
        } else {
            if opts.paths.is_empty() {
                return Err(Error::Invalid(
                    "nothing to back up: give one or more paths, or --stdin".into(),
                ));
            }
            let paths = normalize_paths(&opts.paths)?;
            let excludes = exclude_set(&opts.excludes)?;
            let parent = find_parent(repo, &opts, &paths, &mut untrusted_parent)?;
            let nodes = backup_paths(
                &ctx,
                &paths,
                &excludes,
                opts.one_file_system,
                parent.as_ref().map(|p| p.1),
            )?;
            (paths, nodes, parent.map(|p| p.0))
        };
        ctx.check()?;

        // The root tree mirrors the absolute paths: /srv/data is root → srv → data.
        let root = build_root(&ctx, &paths, root_nodes, ebs_source.is_some())?;
        // No pack this snapshot relies on may be deleted by a prune running meanwhile.
        let copied = ctx.w.commit_ready(&|| ctx.check())?;
        let packs_written = ctx.w.saver.stats.packs_written.load(Ordering::Relaxed);

        let c = &ctx.counters;
        let (uid, gid) = fsmeta::current_ids();
        let snapshot = Snapshot {
            time: timespec_of(opts.time.unwrap_or(start_time)),
            host: opts.host.clone(),
            username: fsmeta::Owners::default().user(uid).unwrap_or_default(),
            uid,
            gid,
            paths: paths
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect(),
            tags: opts.tags.clone(),
            excludes: opts.excludes.clone(),
            tree: root,
            parent: parent_id,
            program_version: concat!("chunkbak ", env!("CARGO_PKG_VERSION")).to_string(),
            summary: Summary {
                files_new: c.files_new.load(Ordering::Relaxed),
                files_changed: c.files_changed.load(Ordering::Relaxed),
                files_unchanged: c.files_unchanged.load(Ordering::Relaxed),
                dirs_new: c.dirs_new.load(Ordering::Relaxed),
                dirs_changed: c.dirs_changed.load(Ordering::Relaxed),
                dirs_unchanged: c.dirs_unchanged.load(Ordering::Relaxed),
                bytes_read: c.bytes_read.load(Ordering::Relaxed),
                bytes_total: c.bytes_total.load(Ordering::Relaxed),
                bytes_added: ctx.w.saver.stats.bytes_added.load(Ordering::Relaxed),
                blobs_added: ctx.w.saver.stats.blobs_added.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                start: timespec_of(start_time),
                duration_ms: start.elapsed().as_millis() as u64,
            },
        };
        let snapshot_id = repo.write_snapshot(&snapshot)?;
        let st = &ctx.w.saver.stats;
        let warnings = std::mem::take(&mut *ctx.warnings.lock().expect("warnings"));
        Ok(BackupResult {
            snapshot_id,
            snapshot,
            parent: parent_id,
            untrusted_parent,
            claims_refuted,
            warnings,
            packs_written,
            blobs_copied: copied,
            deltas: st.deltas_added.load(Ordering::Relaxed),
            delta_raw_bytes: st.delta_raw_bytes.load(Ordering::Relaxed),
            delta_stored_bytes: st.delta_stored_bytes.load(Ordering::Relaxed),
        })
    })();
    if let Err(e) = &result {
        ctx.w.abort(e);
    }
    result
}

/// The parent: the snapshot given, or the newest of this host with the same paths that is
/// not from the future and (with `own_snapshots`) that this host wrote. `untrusted` gets the
/// newest matching snapshot this host did not write, when that made the difference.
fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    paths: &[PathBuf],
    untrusted: &mut Option<Id>,
) -> Result<Option<(Id, BlobId)>> {
    let snaps = match opts.parent {
        ParentMode::None => return Ok(None),
        _ => repo.snapshots()?,
    };
    let found = match &opts.parent {
        ParentMode::Id(p) => Some(super::select::find_id(&snaps, p)?),
        _ => {
            let want: Vec<Vec<u8>> = paths
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect();
            let f = Filter {
                hosts: vec![opts.host.clone()],
                ..Default::default()
            };
            let clock = super::select::Clock::system(opts.clock_skew_secs);
            let candidate = |s: &Snapshot| f.matches(s) && s.paths == want && !clock.is_future(s);
            let newest = snaps.iter().rposition(|(_, s)| candidate(s));
            let trusted = match &opts.own_snapshots {
                None => newest,
                Some(own) => snaps
                    .iter()
                    .rposition(|(id, s)| candidate(s) && own.contains(id)),
            };
            if let Some(n) = newest.filter(|&n| Some(n) != trusted) {
                *untrusted = Some(snaps[n].0);
            }
            trusted
        }
    };
    Ok(found.map(|i| (snaps[i].0, snaps[i].1.tree)))
}
