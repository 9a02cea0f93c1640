//! The metadata a restore applies: owners resolved to this system's ids, modes, extended
//! attributes and times, through a handle of the entry (or its parent's, for a symlink).

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{same_type, RestoreOptions, Restorer};
use crate::format::tree::{Node, NodeKind};
use crate::ops::fsmeta;

/// The metadata a restore applies to an entry, owners already resolved to this system's ids.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: crate::format::tree::Timespec,
    xattrs: Box<[(Vec<u8>, Vec<u8>)]>,
}

/// Resolves owner names to this system's ids once per name (the stored uid and gid when the
/// name is unknown here or `--numeric-owner` is given).
#[derive(Default)]
pub(super) struct OwnerIds {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
}

impl OwnerIds {
    pub(super) fn meta(&mut self, n: &Node, numeric: bool, opts: &RestoreOptions) -> Meta {
        /// The id of `name` on this system (looked up once per name), else `stored`.
        fn resolve(
            cache: &mut HashMap<String, Option<u32>>,
            name: Option<&String>,
            lookup: fn(&str) -> Option<u32>,
            stored: u32,
        ) -> u32 {
            name.and_then(|s| *cache.entry(s.clone()).or_insert_with(|| lookup(s)))
                .unwrap_or(stored)
        }
        let (uid, gid) = if numeric {
            (n.uid, n.gid)
        } else {
            (
                resolve(&mut self.users, n.user.as_ref(), fsmeta::uid_of, n.uid),
                resolve(&mut self.groups, n.group.as_ref(), fsmeta::gid_of, n.gid),
            )
        };
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = if opts.no_xattrs {
            Vec::new()
        } else {
            n.xattrs
                .iter()
                .filter(|(k, _)| !(opts.no_special && k.as_slice() == b"security.capability"))
                .cloned()
                .collect()
        };
        Meta {
            mode: if opts.no_special {
                n.mode & !0o7000
            } else {
                n.mode
            },
            uid,
            gid,
            mtime: n.mtime,
            xattrs: xattrs.into_boxed_slice(),
        }
    }
}

/// What metadata is applied through.
pub(super) enum On<'a> {
    /// A regular file or directory, open.
    File(&'a fs::File),
    /// A symlink (its parent's handle).
    Link,
    /// A FIFO or device node of this kind (an `O_PATH` handle of it).
    Node(NodeKind),
}

impl Restorer<'_> {
    /// chown (when root), chmod, xattrs, times: in this order, since chown clears set-id bits.
    /// Through a handle of the entry itself (files, directories, special files) or, for a
    /// symlink, through its parent's handle with calls that never follow it.
    pub(super) fn apply_meta(&self, path: &Path, on: On<'_>, n: &Meta) {
        if self.opts.dry_run {
            return;
        }
        match on {
            On::File(f) => self.meta_fd(path, f, n),
            On::Link => match self.entry(path) {
                Ok(e) => self.meta_link(path, &e.path, n),
                Err(err) => self.warn(path, format!("cannot set metadata: {err}")),
            },
            On::Node(kind) => {
                let fd = match self.entry(path).and_then(|e| e.dir.open_node(&e.name)) {
                    Ok(fd) => fd,
                    Err(err) => return self.warn(path, format!("cannot set metadata: {err}")),
                };
                let f = fs::File::from(fd);
                // The node made a moment ago, or nothing: never another file put in its place.
                match f.metadata() {
                    Ok(m) if same_type(kind, m.file_type()) => {}
                    _ => {
                        return self.error(
                            path,
                            "not restored: replaced by something else while being restored".into(),
                        )
                    }
                }
                self.meta_node(path, &f, n);
            }
        }
    }

    fn meta_fd(&self, path: &Path, f: &fs::File, n: &Meta) {
        if self.root {
            let (uid, gid) = (n.uid, n.gid);
            if let Err(e) = std::os::unix::fs::fchown(f, Some(uid), Some(gid)) {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        let mode = fs::Permissions::from_mode(n.mode & 0o7777);
        if let Err(e) = f.set_permissions(mode) {
            self.warn(path, format!("cannot set mode {:o}: {e}", n.mode & 0o7777));
        }
        for (k, v) in n.xattrs.iter() {
            let name = std::ffi::OsStr::from_bytes(k);
            if let Err(e) = xattr::FileExt::set_xattr(f, name, v) {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        if let Err(e) = fsmeta::set_times_fd(f, n.mtime) {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }

    /// A symlink's owner, xattrs and times, by a name resolved through its parent's handle
    /// with calls that act on the link itself.
    fn meta_link(&self, path: &Path, entry: &Path, n: &Meta) {
        if self.root {
            let (uid, gid) = (n.uid, n.gid);
            if let Err(e) = fsmeta::set_owner(entry, uid, gid) {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        for (k, v) in n.xattrs.iter() {
            if let Err(e) = xattr::set(entry, std::ffi::OsStr::from_bytes(k), v) {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        if let Err(e) = fsmeta::set_times(entry, n.mtime) {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }

    /// A special file's metadata through an `O_PATH` handle of it (FIFOs and devices are not
    /// opened for I/O): `/proc/self/fd/<handle>` reaches exactly that inode.
    fn meta_node(&self, path: &Path, f: &fs::File, n: &Meta) {
        use std::os::fd::AsRawFd;
        let node = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        if self.root {
            let (uid, gid) = (n.uid, n.gid);
            if let Err(e) = fsmeta::set_owner_fd(f, uid, gid) {
                self.warn(path, format!("cannot set owner {uid}:{gid}: {e}"));
            }
        }
        let mode = fs::Permissions::from_mode(n.mode & 0o7777);
        if let Err(e) = fs::set_permissions(&node, mode) {
            self.warn(path, format!("cannot set mode {:o}: {e}", n.mode & 0o7777));
        }
        for (k, v) in n.xattrs.iter() {
            if let Err(e) = xattr::set_deref(&node, std::ffi::OsStr::from_bytes(k), v) {
                self.warn(
                    path,
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(k)),
                );
            }
        }
        if let Err(e) = fsmeta::set_times_following(&node, n.mtime) {
            self.warn(path, format!("cannot set times: {e}"));
        }
    }
}
