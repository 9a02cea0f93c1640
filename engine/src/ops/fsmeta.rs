//! File system metadata: building tree nodes from `lstat`, and applying them on restore.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use crate::format::tree::{Node, NodeKind, Timespec};

/// Caches uid → user name and gid → group name lookups.
#[derive(Default)]
pub struct Owners {
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<u32, Option<String>>>,
}

impl Owners {
    pub fn user(&self, uid: u32) -> Option<String> {
        let mut m = self.users.lock().expect("owners lock");
        m.entry(uid).or_insert_with(|| user_name(uid)).clone()
    }

    pub fn group(&self, gid: u32) -> Option<String> {
        let mut m = self.groups.lock().expect("owners lock");
        m.entry(gid).or_insert_with(|| group_name(gid)).clone()
    }
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers refer to live buffers of the sizes given.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name points to a NUL-terminated string inside buf.
    Some(
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in user_name.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: getgrgid_r succeeded.
    Some(
        unsafe { CStr::from_ptr(gr.gr_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// uid of a user name on this system.
pub fn uid_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in user_name.
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(pw.pw_uid)
}

/// gid of a group name on this system.
pub fn gid_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in user_name.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(gr.gr_gid)
}

pub fn kind_of(m: &Metadata) -> NodeKind {
    let t = m.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::File
    }
}

/// A node from `lstat` metadata (content, subtree and link target are filled in later).
pub fn node_from_metadata(name: &OsStr, m: &Metadata, owners: &Owners) -> Node {
    let kind = kind_of(m);
    Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        user: owners.user(m.uid()),
        group: owners.group(m.gid()),
        mtime: Timespec {
            secs: m.mtime(),
            nanos: m.mtime_nsec() as u32,
        },
        ctime: Timespec {
            secs: m.ctime(),
            nanos: m.ctime_nsec() as u32,
        },
        size: if kind == NodeKind::File { m.size() } else { 0 },
        inode: m.ino(),
        device: m.dev(),
        nlink: m.nlink(),
        rdev: if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
            m.rdev()
        } else {
            0
        },
        ..Node::default()
    }
}

/// Extended attributes of a path (not following symlinks), sorted by name. Errors (no xattr
/// support on the file system, permission) yield what could be read.
pub fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(names) = xattr::list(path) {
        for n in names {
            if let Ok(Some(v)) = xattr::get(path, &n) {
                out.push((n.as_bytes().to_vec(), v));
            }
        }
    }
    out.sort();
    out
}

/// atime and mtime, both `t`, as utimensat and futimens take them.
fn times_of(t: Timespec) -> [libc::timespec; 2] {
    let ts = libc::timespec {
        tv_sec: t.secs as libc::time_t,
        tv_nsec: t.nanos as libc::c_long,
    };
    [ts, ts]
}

/// Sets mtime and atime (= mtime) of a path without following symlinks.
pub fn set_times(path: &Path, t: Timespec) -> std::io::Result<()> {
    utimens(path, t, libc::AT_SYMLINK_NOFOLLOW)
}

/// As [`set_times`], following a last symlink (restore names a special file by
/// `/proc/self/fd/<handle>`, a link to exactly that inode).
pub fn set_times_following(path: &Path, t: Timespec) -> std::io::Result<()> {
    utimens(path, t, 0)
}

fn utimens(path: &Path, t: Timespec, flags: libc::c_int) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let times = times_of(t);
    // SAFETY: c is a valid C string, times has two entries.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// As [`set_times`], through an open file.
pub fn set_times_fd(f: &std::fs::File, t: Timespec) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let times = times_of(t);
    // SAFETY: the descriptor is open for the duration of the call, times has two entries.
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// lchown.
pub fn set_owner(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// The owner of the file a handle holds (an `O_PATH` handle too: fchownat with an empty path).
pub fn set_owner_fd(f: &std::fs::File, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the call; the path is a valid empty C string.
    let rc = unsafe {
        libc::fchownat(
            f.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// mkfifo / mknod for special files.
pub fn make_special(path: &Path, node: &Node) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let perm = node.mode & 0o7777;
    let rc = match node.kind {
        // SAFETY: c is a valid C string.
        NodeKind::Fifo => unsafe { libc::mkfifo(c.as_ptr(), perm as libc::mode_t) },
        NodeKind::CharDevice | NodeKind::BlockDevice => unsafe {
            libc::mknod(
                c.as_ptr(),
                node.mode as libc::mode_t,
                node.rdev as libc::dev_t,
            )
        },
        _ => return Ok(()),
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

pub fn current_ids() -> (u32, u32) {
    // SAFETY: no preconditions.
    unsafe { (libc::getuid(), libc::getgid()) }
}
