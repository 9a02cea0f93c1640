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
//! removed. Only folders of the same user, never symlinks, are touched. A folder without
//! `lock` (made by an older version, or by a run in the instant before it took its lock) goes
//! only when the process its name carries is gone and the folder is more than a day old.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The name of the lock file in a run's folder.
const LOCK: &str = "lock";
/// How old a folder without a lock file must be (and its process gone) to be removed.
const UNLOCKED_AGE: Duration = Duration::from_secs(24 * 3600);
/// The prefix of the folder [`dir`] makes.
const PREFIX: &str = "chunkbak-";

/// A folder of this process, `PREFIX` + pid + `-` + random (0700), locked while it lives
/// and removed (with what is in it) when dropped.
pub struct RunFolder {
    dir: tempfile::TempDir,
    _lock: File,
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
        let lock = File::options().write(true).create_new(true).open(&tmp)?;
        lock.lock()?;
        std::fs::rename(&tmp, dir.path().join(LOCK))?;
        remove_left_by_dead_runs(parent, prefix, dir.path());
        Ok(RunFolder { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the folders under `parent` named `prefix…` that runs now gone left, of the user
/// that owns `mine` (this run's folder), as the module says.
pub fn remove_left_by_dead_runs(parent: &Path, prefix: &str, mine: &Path) {
    let Ok(me) = std::fs::symlink_metadata(mine) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
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
        let lock = path.join(LOCK);
        let gone = match std::fs::symlink_metadata(&lock) {
            Ok(l) if l.is_file() => File::open(&lock).is_ok_and(|f| f.try_lock().is_ok()),
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
                let old = md
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age > UNLOCKED_AGE);
                old && pid.is_some_and(|p| {
                    p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists()
                })
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
        // A run killed: its lock file is there, nobody holds it.
        let killed = mk("run-1-a");
        File::create(killed.join(LOCK)).unwrap();
        // A run alive: it holds its lock.
        let alive = mk("run-2-b");
        let held = File::create(alive.join(LOCK)).unwrap();
        held.lock().unwrap();
        // Older versions' folders (no lock): of a process gone, old; gone, but new; of a
        // live process (this one), old.
        let old_gone = mk("run-999999999-c");
        aged(&old_gone, 2 * 86_400);
        let new_gone = mk("run-999999998-d");
        let old_live = mk(&format!("run-{}-e", std::process::id()));
        aged(&old_live, 2 * 86_400);
        // Not ours to judge: a symlink to a folder of a run gone, a file, another prefix.
        let target = tempfile::tempdir().unwrap();
        File::create(target.path().join(LOCK)).unwrap();
        std::os::unix::fs::symlink(target.path(), p.join("run-3-f")).unwrap();
        std::fs::write(p.join("run-4-g"), b"a file").unwrap();
        let other = p.join("other-5-h");
        std::fs::create_dir(&other).unwrap();
        File::create(other.join(LOCK)).unwrap();

        let mine = RunFolder::new(p, "run-").unwrap();
        assert!(mine.path().join(LOCK).is_file());
        assert!(!killed.exists(), "a killed run's folder stays");
        assert!(!old_gone.exists());
        for stays in [&alive, &new_gone, &old_live, &other] {
            assert!(
                stays.join("pack-1").exists() || stays == &other,
                "{stays:?}"
            );
        }
        assert!(other.join(LOCK).exists());
        assert!(target.path().join(LOCK).exists());
        assert!(p.join("run-3-f").exists());
        assert!(p.join("run-4-g").exists());
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
