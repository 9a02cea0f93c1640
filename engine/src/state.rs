//! What this host remembers about the repositories it uses, outside them (format-spec 12,
//! "Trust"): the key file that opened a repository last time, and the ids of the snapshots
//! this host wrote. A repository is shared by a fleet, any host of which may be compromised:
//! a backup takes as its parent only a snapshot listed here, so a snapshot forged under this
//! host's name cannot make it skip reading files. Losing the state costs one full read of
//! every file, never data.
//!
//! Layout under the state folder (`$XDG_STATE_HOME/chunkbak` by default):
//! `keys/<blake3 of the location, hex>`: the name of the key file that opened it last;
//! `repos/<repository id, hex>/own-snapshots`: one snapshot id (hex) a line.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::id::Id;

#[derive(Clone, Debug)]
pub struct LocalState {
    dir: PathBuf,
}

impl LocalState {
    pub fn new(dir: &Path) -> LocalState {
        LocalState {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_file(&self, location: &str) -> PathBuf {
        self.dir
            .join("keys")
            .join(blake3::hash(location.as_bytes()).to_hex().as_str())
    }

    fn own_file(&self, repo_id: &[u8; 32]) -> PathBuf {
        self.dir
            .join("repos")
            .join(hex::encode(repo_id))
            .join("own-snapshots")
    }

    /// The key file that opened the repository at `location` last time, if remembered.
    pub fn last_key(&self, location: &str) -> Option<String> {
        let s = fs::read_to_string(self.key_file(location)).ok()?;
        let name = s.trim();
        // Key files are named by 64 hex digits; anything else is not ours.
        (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.into())
    }

    /// Remembers the key file that opened the repository (best effort: a state that cannot
    /// be written costs only the order keys are tried in).
    pub fn set_last_key(&self, location: &str, key: &str) {
        if self.last_key(location).as_deref() == Some(key) {
            return;
        }
        let p = self.key_file(location);
        let _ = write_atomic(&p, format!("{key}\n").as_bytes());
    }

    fn store_file(&self, location: &str) -> PathBuf {
        self.dir
            .join("stores")
            .join(blake3::hash(location.as_bytes()).to_hex().as_str())
    }

    /// What the store at `location` answered to the probes of uploads (`key=value` lines),
    /// if this host asked it before.
    pub fn store_capabilities(&self, location: &str) -> Option<String> {
        fs::read_to_string(self.store_file(location))
            .ok()
            .filter(|s| s.len() < 4096)
    }

    /// Remembers the store's answers (best effort: a state that cannot be written costs a
    /// few probe requests next time).
    pub fn set_store_capabilities(&self, location: &str, text: &str) {
        let _ = write_atomic(&self.store_file(location), text.as_bytes());
    }

    /// Ids of the snapshots this host wrote into repository `repo_id`.
    pub fn own_snapshots(&self, repo_id: &[u8; 32]) -> HashSet<Id> {
        let Ok(s) = fs::read_to_string(self.own_file(repo_id)) else {
            return HashSet::new();
        };
        s.lines().filter_map(|l| Id::from_hex(l.trim())).collect()
    }

    /// Records a snapshot this host wrote. An error is returned (not swallowed): the caller
    /// reports it, since the next backup then reads every file again.
    pub fn add_own_snapshot(&self, repo_id: &[u8; 32], id: &Id) -> std::io::Result<()> {
        let p = self.own_file(repo_id);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        // One short line in one append: concurrent backups of this host never interleave. Not
        // synced: a line lost to a crash costs the next backup one full read, nothing more.
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&p)?;
        f.write_all(format!("{}\n", id.to_hex()).as_bytes())
    }
}

fn write_atomic(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = p.parent().expect("state files have a parent");
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".tmp-{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_keys_by_location_and_own_snapshots_by_repository() {
        let d = tempfile::tempdir().unwrap();
        let st = LocalState::new(d.path());
        let k = "ab".repeat(32);
        assert_eq!(st.last_key("s3:b/p"), None);
        st.set_last_key("s3:b/p", &k);
        assert_eq!(st.last_key("s3:b/p").as_deref(), Some(k.as_str()));
        assert_eq!(st.last_key("s3:b/q"), None);
        let (r1, r2) = ([1u8; 32], [2u8; 32]);
        let (a, b) = (Id([7; 32]), Id([9; 32]));
        st.add_own_snapshot(&r1, &a).unwrap();
        st.add_own_snapshot(&r1, &b).unwrap();
        assert_eq!(st.own_snapshots(&r1), HashSet::from([a, b]));
        assert!(st.own_snapshots(&r2).is_empty());
        // A damaged line is skipped, the rest still counts.
        let f = st.own_file(&r1);
        let mut s = fs::read_to_string(&f).unwrap();
        s.push_str("not an id\n");
        fs::write(&f, s).unwrap();
        assert_eq!(st.own_snapshots(&r1).len(), 2);
        fs::write(st.key_file("s3:b/p"), "../../etc/passwd\n").unwrap();
        assert_eq!(st.last_key("s3:b/p"), None);
    }
}
