//! Private temporary folders of a run, and what runs killed left behind.
//!
//! Packs waiting for upload and other scratch files go into a folder of this process (mode
//! 0700, a random name), never into a fixed shared path another local user could create first
//! or replace with a symlink. [`dir`] is the one under the system's temporary folder; [`remove`]
//! deletes it (the CLI calls it before it exits). A local repository stages its files in a
//! [`RunFolder`] under its `tmp/`.
//!
//! A run killed (kill -9, out of memory, a power cut) cannot remove its folder, and what it
//! staged may be hundreds of megabytes. Each run therefore holds a lock (`flock`) on the file
//! `lock` in its folder for as long as it lives; the kernel drops it when the process dies,
//! in whatever PID namespace. The next run that makes a folder beside it takes the lock of
//! each folder it finds: a folder whose lock it gets belongs to a run that is gone and is
//! removed. Only folders of the same user whose name has the shape of a run's (prefix, pid,
//! `-`, random) and whose `lock` says it is one ([`MAGIC`], then the host's name) are touched,
//! never symlinks. A folder another host made (a repository on a network filesystem whose
//! locks may not reach across hosts) goes only when its lock is free and it is more than a
//! day old. A folder without `lock` (made by an older version, or by a run in the instant
//! before it took its lock) goes only when the process its name carries is gone and the folder
//! is more than a day old.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The name of the lock file in a run's folder.
const LOCK: &str = "lock";
/// What a run's lock file starts with; the host's name follows.
pub const MAGIC: &str = "chunkbak run folder\n";
/// How old a folder must be to be removed on other grounds than this host's free lock.
const OLD: Duration = Duration::from_secs(24 * 3600);
/// The prefix of the folder [`dir`] makes.
const PREFIX: &str = "chunkbak-";

/// A folder of this process, its prefix + pid + `-` + random (0700), locked while it lives
/// and removed (with what is in it) when dropped.
pub struct RunFolder {
    // Closed before the folder is removed (declaration order): on NFS an open file would be
    // renamed to `.nfs…` and keep the folder.
    _lock: File,
    dir: tempfile::TempDir,
}

impl RunFolder {
    /// A new folder under `parent` whose name starts with `prefix`; then the folders under
    /// `parent` with that prefix that runs now gone left are removed.
    pub fn new(parent: &Path, prefix: &str) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}{}-", std::process::id()))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)?;
        // Locked before it takes the name others look for: a `lock` file is always held
        // while its run lives.
        let tmp = dir.path().join("lock.new");
        let mut lock = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        io::Write::write_all(&mut lock, format!("{MAGIC}{}", host()).as_bytes())?;
        lock.lock()?;
        std::fs::rename(&tmp, dir.path().join(LOCK))?;
        remove_left_by_dead_runs(parent, prefix, dir.path());
        Ok(RunFolder { _lock: lock, dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// This host's name (Linux), to tell the folders other hosts made in a shared folder.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether `rest` (a folder's name after the prefix) has the shape of a run's: pid, `-`, and
/// the random part; the pid.
fn run_pid(rest: &str) -> Option<u32> {
    let (pid, random) = rest.split_once('-')?;
    let shaped = !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && random.len() >= 6
        && random.bytes().all(|b| b.is_ascii_alphanumeric());
    shaped.then(|| pid.parse().ok()).flatten()
}

/// Removes the folders under `parent` that runs now gone left, as the module says, of the
/// user that owns `mine` (this run's folder).
pub fn remove_left_by_dead_runs(parent: &Path, prefix: &str, mine: &Path) {
    let Ok(me) = std::fs::symlink_metadata(mine) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let now = SystemTime::now();
    let this_host = host();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(run_pid) else {
            continue;
        };
        let path = e.path();
        if path == mine {
            continue;
        }
        // Not following a symlink: only a real folder of this user.
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !md.is_dir() || md.uid() != me.uid() {
            continue;
        }
        let old = md
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > OLD);
        let lock = path.join(LOCK);
        let gone = match std::fs::symlink_metadata(&lock) {
            Ok(l) if l.is_file() && l.len() <= 1024 => {
                // Read and write: an exclusive lock emulated over NFS needs both.
                let opened = File::options().read(true).write(true).open(&lock);
                opened.is_ok_and(|mut f| {
                    let mut said = String::new();
                    let ours = io::Read::read_to_string(&mut f, &mut said).is_ok()
                        && said
                            .strip_prefix(MAGIC)
                            .is_some_and(|h| h == this_host || old);
                    ours && f.try_lock().is_ok()
                })
            }
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                old && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            }
            Err(_) => false,
        };
        if gone {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

static DIR: Mutex<Option<RunFolder>> = Mutex::new(None);

/// The folder under the system's temporary folder, created on first use.
pub fn dir() -> io::Result<PathBuf> {
    let mut d = DIR.lock().expect("temp dir lock");
    if let Some(t) = d.as_ref() {
        if t.path().is_dir() {
            return Ok(t.path().to_path_buf());
        }
    }
    let t = RunFolder::new(&std::env::temp_dir(), PREFIX)?;
    let p = t.path().to_path_buf();
    *d = Some(t);
    Ok(p)
}

/// Deletes the folder and what is left in it.
pub fn remove() {
    if let Ok(mut d) = DIR.lock() {
        d.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_folder_is_private_locked_and_removed() {
        let d = super::dir().unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(super::dir().unwrap(), d);
        // Held: another open file description cannot take it.
        let other = File::open(d.join(LOCK)).unwrap();
        assert!(other.try_lock().is_err());
        super::remove();
        assert!(!d.exists());
    }

    fn aged(p: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        File::open(p).unwrap().set_modified(t).unwrap();
    }

    /// What a run finds beside its new folder: the folders of runs gone go, everything else
    /// stays.
    #[test]
    fn folders_of_runs_gone_are_removed_and_nothing_else() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let mk = |name: &str| {
            let d = p.join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("pack-1"), b"staged").unwrap();
            d
        };
        let lock = |d: &Path, said: &str| {
            std::fs::write(d.join(LOCK), said).unwrap();
            File::options()
                .read(true)
                .write(true)
                .open(d.join(LOCK))
                .unwrap()
        };
        let here = format!("{MAGIC}{}", host());
        let elsewhere = format!("{MAGIC}another-host");
        // A run of this host killed: its lock file is there, nobody holds it.
        let killed = mk("run-1-aaaaaa");
        lock(&killed, &here);
        // A run alive: it holds its lock.
        let alive = mk("run-2-bbbbbb");
        let held = lock(&alive, &here);
        held.lock().unwrap();
        // Another host's runs (a shared network folder): its lock may not reach here, so a
        // free one counts only on a folder a day old.
        let far_new = mk("run-3-cccccc");
        lock(&far_new, &elsewhere);
        let far_old = mk("run-4-dddddd");
        lock(&far_old, &elsewhere);
        aged(&far_old, 2 * 86_400);
        // Older versions' folders (no lock): of a process gone, old; gone, but new; of a
        // live process (this one), old.
        let old_gone = mk("run-999999999-eeeeee");
        aged(&old_gone, 2 * 86_400);
        let new_gone = mk("run-999999998-ffffff");
        let old_live = mk(&format!("run-{}-gggggg", std::process::id()));
        aged(&old_live, 2 * 86_400);
        // Not a run's: a lock that does not say so, a name of another shape, a symlink to a
        // run's folder, a file, another prefix.
        let not_said = mk("run-5-hhhhhh");
        lock(&not_said, "my own lock file");
        let shape = mk("run-results");
        lock(&shape, &here);
        let target = tempfile::tempdir().unwrap();
        lock(target.path(), &here);
        std::os::unix::fs::symlink(target.path(), p.join("run-6-iiiiii")).unwrap();
        std::fs::write(p.join("run-7-jjjjjj"), b"a file").unwrap();
        let other = mk("other-8-kkkkkk");
        lock(&other, &here);

        let mine = RunFolder::new(p, "run-").unwrap();
        assert!(std::fs::read_to_string(mine.path().join(LOCK))
            .unwrap()
            .starts_with(MAGIC));
        for gone in [&killed, &far_old, &old_gone] {
            assert!(!gone.exists(), "{gone:?} stays");
        }
        for stays in [
            &alive, &far_new, &new_gone, &old_live, &not_said, &shape, &other,
        ] {
            assert!(stays.join("pack-1").exists(), "{stays:?} went");
        }
        assert!(target.path().join(LOCK).exists());
        assert!(p.join("run-6-iiiiii").exists());
        assert!(p.join("run-7-jjjjjj").exists());
        // The live run's lock was not taken from it, and its folder goes once it is gone.
        drop(held);
        let again = RunFolder::new(p, "run-").unwrap();
        assert!(!alive.exists());
        // Two live runs leave each other alone.
        assert!(mine.path().join(LOCK).exists() && again.path().exists());
        let path = mine.path().to_path_buf();
        drop(mine);
        assert!(!path.exists(), "a run's folder goes with it");
    }
}
