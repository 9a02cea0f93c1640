//! The walk over the snapshot's trees: directories, links and special files are created as it
//! goes, `--delete` removes what the snapshot does not hold, and files go to the writers.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::meta::{Meta, On, OwnerIds};
use super::write::FileJob;
use super::{
    same_type, Deletion, Overwrite, RestoreOptions, RestoreResult, Restorer, DELETIONS_LISTED,
};
use crate::error::Result;
use crate::format::tree::{Node, NodeKind};
use crate::ops::fsmeta;
use crate::ops::pattern::Selection;
use crate::progress::Change;

/// Whether `--delete` may remove extras from the restored folder at snapshot path `rel`:
/// at or below one of `delete_within` (a path of the snapshot, or `:PATH` when given).
pub(super) fn deletes_in(opts: &RestoreOptions, rel: &[u8]) -> bool {
    opts.delete_within.is_empty()
        || opts.delete_within.iter().any(|root| {
            let root = root.strip_suffix(b"/").unwrap_or(root);
            rel == root || (rel.starts_with(root) && rel.get(root.len()) == Some(&b'/'))
        })
}

/// The entries under folder `dir` (itself included) and the bytes of its files, never
/// following a symlink.
pub(super) fn held(dir: &Path) -> (u64, u64) {
    let mut n = (0u64, 0u64);
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        n.0 += 1;
        if e.file_type().is_file() {
            n.1 += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}

/// The walk over the snapshot's trees: creates directories, links and special files, and hands
/// files on to the writers.
pub(super) struct Walker<'w, 'a> {
    pub(super) r: &'w Restorer<'a>,
    pub(super) sel: Selection,
    /// The snapshot's own exclude patterns: `--delete` keeps what they match.
    pub(super) keeps: Option<globset::GlobSet>,
    /// The snapshot path of the tree the restore starts at ("" for the root).
    pub(super) prefix: Vec<u8>,
    pub(super) owners: OwnerIds,
    pub(super) numeric: bool,
    /// Directories created (or found), with the metadata they get at the end.
    pub(super) dirs: Vec<(Box<Path>, Meta)>,
    /// Directories walked into but not created yet: created once something below is restored.
    pub(super) pending: HashMap<PathBuf, Meta>,
    /// First restored name of each hard link group.
    pub(super) links: HashMap<(u64, u64), PathBuf>,
    /// Directories this run created: nothing is in them yet, so nothing needs comparing.
    pub(super) new_dirs: std::collections::HashSet<PathBuf>,
    pub(super) res: RestoreResult,
    pub(super) queued: u64,
    pub(super) total_bytes: u64,
    /// Files for the writers: sent to the streaming workers, or kept for later.
    pub(super) tx: Option<std::sync::mpsc::SyncSender<FileJob>>,
    pub(super) jobs: Vec<FileJob>,
}

impl Walker<'_, '_> {
    pub(super) fn opts(&self) -> &RestoreOptions {
        self.r.opts
    }

    /// The target path of snapshot path `rel`.
    fn target_path(&self, rel: &[u8]) -> PathBuf {
        let rel_in = rel.strip_prefix(self.prefix.as_slice()).unwrap_or(rel);
        self.opts()
            .target
            .join(Path::new(std::ffi::OsStr::from_bytes(
                rel_in.strip_prefix(b"/").unwrap_or(rel_in),
            )))
    }

    /// What is at `path` now (nothing, below a folder this run created: no lookup).
    fn look(&self, path: &Path) -> std::io::Result<fs::Metadata> {
        match path.parent() {
            Some(p) if self.new_dirs.contains(p) => Err(std::io::ErrorKind::NotFound.into()),
            _ => fs::symlink_metadata(self.r.entry(path)?.path),
        }
    }

    /// Creates the directories above `path` that were put off.
    fn ensure_parents(&mut self, path: &Path) {
        let mut chain = Vec::new();
        let mut p = path.parent();
        while let Some(d) = p {
            match self.pending.remove(d) {
                Some(m) => chain.push((d.to_path_buf(), m)),
                None => break,
            }
            p = d.parent();
        }
        for (d, m) in chain.into_iter().rev() {
            self.make_dir(d, m);
        }
    }

    /// Creates (or finds) a directory; whether to walk into it.
    fn make_dir(&mut self, path: PathBuf, meta: Meta) -> bool {
        let (r, opts) = (self.r, self.r.opts);
        match self.look(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) if opts.overwrite == Overwrite::Never => {
                self.r.skipped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            found => {
                let exists = found.is_ok();
                r.progress
                    .change(if exists { Change::Update } else { Change::New }, &path);
                if !opts.dry_run {
                    let made = r.entry(&path).and_then(|e| {
                        if exists {
                            let _ = fs::remove_file(&e.path);
                        }
                        fs::create_dir(&e.path)
                    });
                    if let Err(e) = made {
                        r.io_error(&path, "cannot create directory", &e);
                        return false;
                    }
                }
                self.new_dirs.insert(path.clone());
            }
        }
        if !opts.dry_run {
            // Its handle (never through a symlink): private until its own mode is set last
            // (where this user may change it).
            match r.dir(&path) {
                Ok(d) => {
                    let _ = d
                        .file()
                        .and_then(|f| f.set_permissions(fs::Permissions::from_mode(0o700)));
                }
                Err(e) => {
                    r.io_error(&path, "cannot enter directory", &e);
                    return false;
                }
            }
        }
        self.res.dirs += 1;
        self.dirs.push((path.into_boxed_path(), meta));
        true
    }

    /// `--delete`: removes what the target folder `dir` (snapshot path `rel`) holds that is not
    /// among `kids` (or is of another type), except entries matching an exclude pattern.
    pub(super) fn delete_extras(&mut self, dir: &Path, rel: &[u8], kids: &[Node]) {
        let r = self.r;
        let want: HashMap<&[u8], NodeKind> =
            kids.iter().map(|n| (n.name.as_slice(), n.kind)).collect();
        let handle = match r.dir(dir) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                r.error(dir, format!("cannot list for --delete: {e}"));
                return;
            }
        };
        let rd = match fs::read_dir(handle.entry(std::ffi::OsStr::new("."))) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                r.error(dir, format!("cannot list for --delete: {e}"));
                return;
            }
        };
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    r.error(dir, format!("cannot list for --delete: {err}"));
                    return;
                }
            };
            let name = e.file_name();
            let Ok(ft) = e.file_type() else { continue };
            if want.get(name.as_bytes()).is_some_and(|&k| same_type(k, ft)) {
                continue;
            }
            let mut child = rel.to_vec();
            child.push(b'/');
            child.extend_from_slice(name.as_bytes());
            if self.sel.excluded(&child)
                || self
                    .keeps
                    .as_ref()
                    .is_some_and(|k| crate::ops::pattern::matches(k, &child))
            {
                continue;
            }
            let p = dir.join(&name);
            r.progress.change(Change::Delete, &p);
            self.res.deleted += 1;
            if self.res.deletions.len() < DELETIONS_LISTED {
                // A dry run says what a folder holds; a real one removes it.
                let (entries, bytes) = if self.opts().dry_run && ft.is_dir() {
                    held(&handle.entry(&name))
                } else {
                    (
                        1,
                        e.metadata()
                            .map(|m| if ft.is_file() { m.len() } else { 0 })
                            .unwrap_or(0),
                    )
                };
                self.res.deletions.push(Deletion {
                    path: p.clone(),
                    entries,
                    bytes,
                });
            }
            if !self.opts().dry_run {
                // std's remove_dir_all never follows a symlink inside what it removes.
                let at = handle.entry(&name);
                let gone = if ft.is_dir() {
                    let gone = fs::remove_dir_all(&at);
                    if let Some(t) = &r.target {
                        t.forget_dirs();
                    }
                    gone
                } else {
                    fs::remove_file(&at)
                };
                if let Err(err) = gone {
                    r.error(&p, format!("cannot delete: {err}"));
                }
            }
        }
    }

    /// Handles one entry of the walk; whether to walk into it.
    pub(super) fn visit(&mut self, rel: &[u8], n: &Node) -> Result<bool> {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let r = self.r;
        let opts = r.opts;
        if !n.has_safe_name() {
            r.error(
                &opts.target,
                format!("refusing to restore an entry named {:?}: not a plain file name (damaged or forged tree?)", n.name_lossy()),
            );
            return Ok(false);
        }
        let (take, descend) = self.sel.decide(rel, n.kind == NodeKind::Dir);
        if !take && !descend {
            return Ok(false);
        }
        let path = self.target_path(rel);
        let meta = self.owners.meta(n, self.numeric, opts);
        if n.kind == NodeKind::Dir {
            if !take {
                self.pending.insert(path, meta);
                return Ok(true);
            }
            self.ensure_parents(&path);
            if !self.make_dir(path.clone(), meta) {
                return Ok(false);
            }
            if opts.delete && deletes_in(opts, rel) {
                let kids = match n.subtree {
                    Some(t) => self.r.repo.load_dir(&t)?,
                    None => Vec::new(),
                };
                self.delete_extras(&path, rel, &kids);
            }
            return Ok(true);
        }
        if !take {
            return Ok(false);
        }
        self.ensure_parents(&path);
        let found = self.look(&path);
        if found.is_ok() && opts.overwrite == Overwrite::Never {
            r.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        match n.kind {
            NodeKind::File => self.file(path, n, meta, found.ok()),
            NodeKind::Symlink => {
                let target = std::ffi::OsStr::from_bytes(&n.link_target);
                if found.as_ref().is_ok_and(|m| m.is_symlink())
                    && r.entry(&path)
                        .and_then(|e| fs::read_link(&e.path))
                        .is_ok_and(|t| t.as_os_str() == target)
                {
                    self.res.links += 1;
                    r.apply_meta(&path, On::Link, &meta);
                    return Ok(false);
                }
                if !self.replace(&path, found) {
                    return Ok(false);
                }
                if opts.dry_run {
                    return Ok(false);
                }
                match r
                    .entry(&path)
                    .and_then(|e| std::os::unix::fs::symlink(target, &e.path))
                {
                    Ok(()) => {
                        self.res.links += 1;
                        r.apply_meta(&path, On::Link, &meta);
                    }
                    Err(e) => r.io_error(&path, "cannot create symlink", &e),
                }
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                if opts.no_special {
                    r.skipped.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
                if n.kind != NodeKind::Fifo && !r.root {
                    r.warn(&path, "device node not restored (needs root)".into());
                    return Ok(false);
                }
                if let Ok(m) = &found {
                    if same_type(n.kind, m.file_type())
                        && (n.kind == NodeKind::Fifo || m.rdev() == n.rdev)
                    {
                        self.res.specials += 1;
                        r.apply_meta(&path, On::Node(n.kind), &meta);
                        return Ok(false);
                    }
                }
                if !self.replace(&path, found) || opts.dry_run {
                    return Ok(false);
                }
                match r
                    .entry(&path)
                    .and_then(|e| fsmeta::make_special(&e.path, n))
                {
                    Ok(()) => {
                        self.res.specials += 1;
                        r.apply_meta(&path, On::Node(n.kind), &meta);
                    }
                    Err(e) => r.io_error(&path, "cannot create special file", &e),
                }
            }
            NodeKind::Socket | NodeKind::Dir => {}
        }
        Ok(false)
    }

    /// Reports a link or special file about to be created and removes what is in its place;
    /// false when that is a directory (an error, unless `--delete` removed it first).
    pub(super) fn replace(&mut self, path: &Path, found: std::io::Result<fs::Metadata>) -> bool {
        let r = self.r;
        match found {
            Ok(m) if m.is_dir() => {
                r.error(
                    path,
                    "not restored: a directory is in the way (restore with --delete to replace it)"
                        .into(),
                );
                false
            }
            Ok(_) => {
                r.progress.change(Change::Update, path);
                if !r.opts.dry_run {
                    if let Ok(e) = r.entry(path) {
                        let _ = fs::remove_file(&e.path);
                    }
                }
                true
            }
            Err(_) => {
                r.progress.change(Change::New, path);
                true
            }
        }
    }

    pub(super) fn file(
        &mut self,
        path: PathBuf,
        n: &Node,
        meta: Meta,
        found: Option<fs::Metadata>,
    ) {
        let (r, opts) = (self.r, self.r.opts);
        // Nothing at the path: written without looking again.
        let mut fresh = found.is_none();
        let mut created = None;
        if let Some(k) = n.hardlink_key() {
            if let Some(first) = self.links.get(&k) {
                // Another name of a file restored already.
                let first_now = r.entry(first).and_then(|e| fs::symlink_metadata(&e.path));
                if let (Some(a), Ok(b)) = (&found, first_now) {
                    if a.ino() == b.ino() && a.dev() == b.dev() {
                        // Already right: counted with the files already right.
                        r.unchanged.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                r.progress.change(
                    if found.is_some() {
                        Change::Update
                    } else {
                        Change::New
                    },
                    &path,
                );
                if opts.dry_run {
                    // Counted as the real run would count it.
                    self.res.links += 1;
                    self.res.hardlinks += 1;
                    return;
                }
                if found.as_ref().is_some_and(|m| m.is_dir()) {
                    r.error(&path, "not restored: a directory is in the way (restore with --delete to replace it)".into());
                    return;
                }
                let linked = r.entry(first).and_then(|from| {
                    let to = r.entry(&path)?;
                    let _ = fs::remove_file(&to.path);
                    fs::hard_link(&from.path, &to.path)
                });
                match linked {
                    Ok(()) => {
                        self.res.links += 1;
                        self.res.hardlinks += 1;
                    }
                    Err(e) => r.error(
                        &path,
                        format!("cannot create hard link to {}: {e}", first.display()),
                    ),
                }
                return;
            }
            // Create the first name now, so later names can link to it. A name that is there
            // already is kept (a rerun may find it complete) and compared as any file is.
            if found.is_none() && !opts.dry_run {
                let made = r
                    .entry(&path)
                    .and_then(|e| e.dir.create_new(&e.name))
                    .and_then(|f| f.metadata());
                match made {
                    Ok(m) => created = Some((m.dev(), m.ino())),
                    Err(e) => {
                        r.io_error(&path, "cannot create file", &e);
                        return;
                    }
                }
                fresh = true;
            }
            self.links.insert(k, path.clone());
        }
        self.total_bytes += n.size;
        let job = FileJob {
            links: if n.hardlink_key().is_some() {
                n.nlink
            } else {
                1
            },
            created,
            path: path.into_boxed_path(),
            content: n.content.clone(),
            size: n.size,
            meta,
            fresh,
            plan: None,
        };
        self.queued += 1;
        if self.queued.is_multiple_of(1000) {
            // The totals so far: files are written while the walk goes on.
            r.progress.total(self.queued, self.total_bytes);
        }
        match &self.tx {
            Some(t) => {
                let _ = t.send(job);
            }
            None => self.jobs.push(job),
        }
    }
}
