//! `mount`: the repository as a read-only FUSE file system, browsable with ordinary tools.
//!
//! ```text
//! MOUNTPOINT/snapshots/<time>/...          every snapshot, by local time (oldest first)
//! MOUNTPOINT/snapshots/latest -> <time>
//! MOUNTPOINT/hosts/<host>/<time>/...       the same, by host
//! MOUNTPOINT/hosts/<host>/latest -> <time>
//! MOUNTPOINT/ids/<short id>/...            the same, by id
//! ```
//!
//! Inside a snapshot, entries keep their names, modes, owners, times, sizes and link targets.
//! Trees are read when a folder is first opened and file chunks when read (each verified
//! against its id); nothing is ever written.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request,
};

use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, NodeKind, Timespec};
use crate::id::{BlobId, Id};
use crate::repo::Repository;

/// Attributes never change: the kernel may keep them for long.
const TTL: Duration = Duration::from_secs(3600);

enum Entry {
    /// A folder of the layout (root, snapshots, hosts, a host, ids): its entries, and a time.
    Folder(Kids, Timespec),
    /// A `latest` link.
    Link(Vec<u8>, Timespec),
    /// An entry of a snapshot; folders list their entries once opened.
    Node(Box<Node>, Option<Kids>),
}

/// A folder's entries (name, inode), shared so a lookup copies nothing.
type Kids = Arc<Vec<(Vec<u8>, u64)>>;

/// A file's chunks and where each starts.
struct Layout {
    ids: Vec<BlobId>,
    starts: Vec<u64>,
}

pub struct SnapshotFs {
    repo: Arc<Repository>,
    entries: Vec<Entry>,
    layouts: HashMap<u64, Arc<Layout>>,
    /// The last chunks read (reads come in 128 KiB pieces of MiB-sized chunks).
    recent: Vec<(BlobId, Arc<Vec<u8>>)>,
    uid: u32,
    gid: u32,
}

fn time_of(t: Timespec) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
    }
}

/// A snapshot's folder name: its local time, with the short id when two share a second.
fn names(snaps: &[(Id, Snapshot)]) -> Vec<Vec<u8>> {
    let base: Vec<String> = snaps
        .iter()
        .map(|(_, s)| {
            crate::ops::select::timestamp_of(s.time)
                .to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%dT%H:%M:%S")
                .to_string()
        })
        .collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for b in &base {
        *count.entry(b).or_default() += 1;
    }
    base.iter()
        .zip(snaps)
        .map(|(b, (id, _))| {
            if count[b.as_str()] > 1 {
                format!("{b}-{}", id.short()).into_bytes()
            } else {
                b.clone().into_bytes()
            }
        })
        .collect()
}

impl SnapshotFs {
    /// The file system of `snaps` (oldest first). The repository's index must be loaded.
    pub fn new(repo: Arc<Repository>, snaps: &[(Id, Snapshot)]) -> Self {
        let (uid, gid) = crate::ops::fsmeta::current_ids();
        let mut fs = SnapshotFs {
            repo,
            // Inode n is entries[n - 1]; the root comes first.
            entries: vec![Entry::Folder(Arc::default(), Timespec::default())],
            layouts: HashMap::new(),
            recent: Vec::new(),
            uid,
            gid,
        };
        let newest = snaps.last().map_or(Timespec::default(), |(_, s)| s.time);
        let names = names(snaps);
        // One inode per snapshot root, shared by the three views.
        let roots: Vec<u64> = snaps
            .iter()
            .map(|(_, s)| {
                fs.add(Entry::Node(
                    Box::new(Node {
                        kind: NodeKind::Dir,
                        mode: 0o40755,
                        uid,
                        gid,
                        mtime: s.time,
                        ctime: s.time,
                        subtree: Some(s.tree),
                        ..Node::default()
                    }),
                    None,
                ))
            })
            .collect();
        let with_latest = |fs: &mut SnapshotFs, mut kids: Vec<(Vec<u8>, u64)>| {
            if let Some((name, _)) = kids.last().cloned() {
                let l = fs.add(Entry::Link(name, newest));
                kids.push((b"latest".to_vec(), l));
            }
            kids.sort();
            Arc::new(kids)
        };
        let all: Vec<(Vec<u8>, u64)> = names.iter().cloned().zip(roots.iter().copied()).collect();
        let all = with_latest(&mut fs, all);
        let snapshots = fs.add(Entry::Folder(all, newest));
        let mut by_host: std::collections::BTreeMap<&str, Vec<(Vec<u8>, u64)>> = Default::default();
        for (i, (_, s)) in snaps.iter().enumerate() {
            by_host
                .entry(s.host.as_str())
                .or_default()
                .push((names[i].clone(), roots[i]));
        }
        let mut hosts = Vec::new();
        for (h, kids) in by_host {
            let kids = with_latest(&mut fs, kids);
            let ino = fs.add(Entry::Folder(kids, newest));
            // A host name never holds '/', but a forged snapshot might.
            hosts.push((h.replace('/', "_").into_bytes(), ino));
        }
        let hosts = fs.add(Entry::Folder(Arc::new(hosts), newest));
        let mut ids: Vec<(Vec<u8>, u64)> = snaps
            .iter()
            .zip(&roots)
            .map(|((id, _), &r)| (id.short().into_bytes(), r))
            .collect();
        ids.sort();
        let ids = fs.add(Entry::Folder(Arc::new(ids), newest));
        fs.entries[0] = Entry::Folder(
            Arc::new(vec![
                (b"hosts".to_vec(), hosts),
                (b"ids".to_vec(), ids),
                (b"snapshots".to_vec(), snapshots),
            ]),
            newest,
        );
        fs
    }

    fn add(&mut self, e: Entry) -> u64 {
        self.entries.push(e);
        self.entries.len() as u64
    }

    fn entry(&self, ino: u64) -> Option<&Entry> {
        self.entries.get(ino.checked_sub(1)? as usize)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let a = |kind, perm: u32, size, t, uid, gid, rdev| FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time_of(t),
            mtime: time_of(t),
            ctime: time_of(t),
            crtime: time_of(t),
            kind,
            perm: (perm & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid,
            gid,
            rdev,
            blksize: 4096,
            flags: 0,
        };
        Some(match self.entry(ino)? {
            Entry::Folder(_, t) => a(FileType::Directory, 0o555, 0, *t, self.uid, self.gid, 0),
            Entry::Link(target, t) => a(
                FileType::Symlink,
                0o777,
                target.len() as u64,
                *t,
                self.uid,
                self.gid,
                0,
            ),
            Entry::Node(n, _) => {
                let size = match n.kind {
                    NodeKind::File => n.size,
                    NodeKind::Symlink => n.link_target.len() as u64,
                    _ => 0,
                };
                a(
                    file_type(n.kind),
                    n.mode,
                    size,
                    n.mtime,
                    n.uid,
                    n.gid,
                    n.rdev as u32,
                )
            }
        })
    }

    /// The entries of a folder (reading a snapshot folder's tree the first time).
    fn children(&mut self, ino: u64) -> Result<Kids, libc::c_int> {
        let subtree = match self.entry(ino) {
            Some(Entry::Folder(kids, _)) => return Ok(kids.clone()),
            Some(Entry::Node(_, Some(kids))) => return Ok(kids.clone()),
            Some(Entry::Node(n, None)) if n.kind == NodeKind::Dir => n.subtree,
            Some(_) => return Err(libc::ENOTDIR),
            None => return Err(libc::ENOENT),
        };
        let nodes = match subtree {
            Some(t) => self.repo.load_dir(&t).map_err(|_| libc::EIO)?,
            None => Vec::new(),
        };
        let mut kids = Vec::with_capacity(nodes.len());
        for n in nodes {
            if !n.has_safe_name() {
                continue;
            }
            let name = n.name.clone();
            let c = self.add(Entry::Node(Box::new(n), None));
            kids.push((name, c));
        }
        let kids = Arc::new(kids);
        if let Some(Entry::Node(_, slot)) = self.entries.get_mut(ino as usize - 1) {
            *slot = Some(kids.clone());
        }
        Ok(kids)
    }

    fn layout(&mut self, ino: u64) -> Result<Arc<Layout>, libc::c_int> {
        if let Some(l) = self.layouts.get(&ino) {
            return Ok(l.clone());
        }
        let Some(Entry::Node(n, _)) = self.entry(ino) else {
            return Err(libc::EISDIR);
        };
        if n.kind != NodeKind::File {
            return Err(libc::EINVAL);
        }
        let ids = self.repo.file_chunks(&n.content).map_err(|_| libc::EIO)?;
        let idx = self.repo.index().read().expect("index lock");
        let mut starts = Vec::with_capacity(ids.len());
        let mut end = 0u64;
        for id in &ids {
            starts.push(end);
            end += u64::from(idx.get(id).ok_or(libc::EIO)?.1.raw_len);
        }
        drop(idx);
        let l = Arc::new(Layout { ids, starts });
        self.layouts.insert(ino, l.clone());
        Ok(l)
    }

    fn chunk(&mut self, id: &BlobId) -> Result<Arc<Vec<u8>>, libc::c_int> {
        if let Some((_, d)) = self.recent.iter().find(|(i, _)| i == id) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.repo.read_blob(id).map_err(|_| libc::EIO)?);
        if self.recent.len() >= 8 {
            self.recent.remove(0);
        }
        self.recent.push((*id, d.clone()));
        Ok(d)
    }

    fn read_at(&mut self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>, libc::c_int> {
        let l = self.layout(ino)?;
        let mut out = Vec::with_capacity(size);
        let mut i = l.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let mut pos = offset;
        while out.len() < size && i < l.ids.len() {
            let data = self.chunk(&l.ids[i])?;
            let start = l.starts[i];
            let from = (pos - start) as usize;
            if from >= data.len() {
                i += 1;
                continue;
            }
            let n = (data.len() - from).min(size - out.len());
            out.extend_from_slice(&data[from..from + n]);
            pos += n as u64;
            i += 1;
        }
        Ok(out)
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.children(parent) {
            Ok(kids) => match kids.iter().find(|(n, _)| n.as_slice() == name.as_bytes()) {
                Some(&(_, ino)) => match self.attr(ino) {
                    Some(a) => reply.entry(&TTL, &a, 0),
                    None => reply.error(libc::ENOENT),
                },
                None => reply.error(libc::ENOENT),
            },
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.entry(ino) {
            Some(Entry::Link(t, _)) => reply.data(t),
            Some(Entry::Node(n, _)) if n.kind == NodeKind::Symlink => reply.data(&n.link_target),
            _ => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        match self.layout(ino) {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.read_at(ino, offset.max(0) as u64, size as usize) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let kids = match self.children(ino) {
            Ok(k) => k,
            Err(e) => return reply.error(e),
        };
        let dots = [(b".".to_vec(), ino), (b"..".to_vec(), ino)];
        let all = dots.iter().chain(kids.iter());
        for (i, (name, c)) in all.enumerate().skip(offset.max(0) as usize) {
            let kind = self.attr(*c).map_or(FileType::RegularFile, |a| a.kind);
            if reply.add(*c, (i + 1) as i64, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mounts `fs` read-only at `mountpoint` in the background; unmounted when the session is
/// dropped. Only the user who mounted it can look inside (no `allow_other`), whatever the
/// modes of the entries say, as with restic's and borg's mounts.
pub fn mount(
    fs: SnapshotFs,
    mountpoint: &std::path::Path,
) -> std::io::Result<fuser::BackgroundSession> {
    use fuser::MountOption;
    fuser::spawn_mount2(
        fs,
        mountpoint,
        &[
            MountOption::RO,
            MountOption::FSName("chunkbak".into()),
            MountOption::Subtype("chunkbak".into()),
        ],
    )
}

/// Whether a mounted session still serves (it ends when the file system is unmounted from
/// outside, with `umount` or `fusermount -u`).
pub fn serving(s: &fuser::BackgroundSession) -> bool {
    !s.guard.is_finished()
}
