//! `dump`: one file of a snapshot written to a stream (standard output), e.g. a database dump
//! piped straight into `psql`. Every chunk is verified against its id as it is read.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};
use crate::id::BlobId;
use crate::repo::Repository;

/// Writes the file at `path` in the snapshot tree `root` to `out`; returns its size. The
/// repository's index must be loaded.
pub fn dump_file(repo: &Repository, root: BlobId, path: &[u8], out: &mut dyn Write) -> Result<u64> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let n = crate::ops::ls::find(repo, root, path)?.ok_or_else(|| {
        Error::Invalid(
            "give the path of a file inside the snapshot (e.g. latest:/srv/db.sql)".into(),
        )
    })?;
    if n.kind != NodeKind::File {
        return Err(Error::Invalid(format!(
            "{shown} is a {}, not a file: dump writes one file (add `--archive tar` for a directory, or \
             use `chunkbak restore`)",
            match n.kind {
                NodeKind::Dir => "directory",
                NodeKind::Symlink => "symbolic link",
                _ => "special file",
            }
        )));
    }
    let mut r = ChunkReader::new(repo, repo.file_chunks(&n.content)?);
    let written = std::io::copy(&mut r, out).map_err(io_error)?;
    out.flush().map_err(|e| Error::io("standard output", e))?;
    if written != n.size {
        return Err(Error::corrupt(
            shown,
            format!(
                "its chunks hold {written} bytes, the snapshot records {}",
                n.size
            ),
        ));
    }
    Ok(written)
}

/// Reads a file's content chunk by chunk from the repository, each chunk verified.
struct ChunkReader<'a> {
    repo: &'a Repository,
    ids: std::vec::IntoIter<BlobId>,
    buf: Vec<u8>,
    pos: usize,
    total: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(repo: &'a Repository, ids: Vec<BlobId>) -> Self {
        ChunkReader {
            repo,
            ids: ids.into_iter(),
            buf: Vec::new(),
            pos: 0,
            total: 0,
        }
    }
}

/// A repository error carried through `io::Read` back to itself; other I/O errors are the
/// output's.
fn io_error(e: std::io::Error) -> Error {
    match e.downcast::<Error>() {
        Ok(e) => e,
        Err(e) => Error::io("standard output", e),
    }
}

impl std::io::Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(id) = self.ids.next() else {
                return Ok(0);
            };
            if crate::ops::interrupted() {
                return Err(std::io::Error::other(crate::stop::error(String::new)));
            }
            self.buf = self.repo.read_blob(&id).map_err(std::io::Error::other)?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.total += n as u64;
        Ok(n)
    }
}

/// What `dump --archive tar` wrote.
#[derive(Debug, Default)]
pub struct TarStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Writes the snapshot path `path` (a directory with everything below it, or a single entry) as
/// a tar stream (GNU format, PAX headers for extended attributes) to `out`. Names in the archive
/// are relative to `path`'s parent, so `tar -x` recreates the directory by its name. The
/// repository's index must be loaded.
pub fn dump_tar(
    repo: &Repository,
    root: BlobId,
    path: &[u8],
    out: &mut dyn Write,
) -> Result<TarStats> {
    let mut b = tar::Builder::new(out);
    let mut stats = TarStats::default();
    let mut links: std::collections::HashMap<(u64, u64), Vec<u8>> = Default::default();
    let io = io_error;
    let mut add = |b: &mut tar::Builder<&mut dyn Write>, name: &[u8], n: &Node| -> Result<()> {
        let name_path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if n.mtime.nanos != 0 {
            // The header holds whole seconds; PAX carries the nanoseconds.
            let t = format!("{}.{:09}", n.mtime.secs, n.mtime.nanos);
            pax.push(("mtime".into(), t.into_bytes()));
        }
        for (k, v) in &n.xattrs {
            // PAX keys are UTF-8: an xattr name that is not is left out of the archive.
            if let Ok(k) = std::str::from_utf8(k) {
                pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
            }
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.mode & 0o7777);
        h.set_uid(u64::from(n.uid));
        h.set_gid(u64::from(n.gid));
        if let Some(u) = &n.user {
            let _ = h.set_username(u);
        }
        if let Some(g) = &n.group {
            let _ = h.set_groupname(g);
        }
        h.set_mtime(n.mtime.secs.max(0) as u64);
        h.set_size(0);
        stats.entries += 1;
        match n.kind {
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, name_path, std::io::empty())
                    .map_err(io)
            }
            NodeKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = std::path::Path::new(std::ffi::OsStr::from_bytes(&n.link_target));
                b.append_link(&mut h, name_path, target).map_err(io)
            }
            NodeKind::File => {
                if let Some(k) = n.hardlink_key() {
                    if let Some(first) = links.get(&k) {
                        h.set_entry_type(tar::EntryType::Link);
                        let target = std::path::Path::new(std::ffi::OsStr::from_bytes(first));
                        return b.append_link(&mut h, name_path, target).map_err(io);
                    }
                    links.insert(k, name.to_vec());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(n.size);
                let mut r = ChunkReader::new(repo, repo.file_chunks(&n.content)?);
                // A file whose chunks hold another length than recorded cannot be archived
                // (the header announced its size): an error, never a silently wrong archive.
                let sized = (&mut r).take(n.size);
                b.append_data(&mut h, name_path, sized).map_err(io)?;
                let more = std::io::Read::read(&mut r, &mut [0u8; 1]).map_err(io)?;
                if r.total != n.size || more != 0 {
                    return Err(Error::corrupt(
                        String::from_utf8_lossy(name).into_owned(),
                        format!(
                            "its chunks hold another length than the {} bytes the snapshot records",
                            n.size
                        ),
                    ));
                }
                stats.bytes += n.size;
                Ok(())
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                h.set_entry_type(match n.kind {
                    NodeKind::Fifo => tar::EntryType::Fifo,
                    NodeKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                if n.kind != NodeKind::Fifo {
                    let (maj, min) = (
                        libc::major(n.rdev as libc::dev_t),
                        libc::minor(n.rdev as libc::dev_t),
                    );
                    h.set_device_major(maj).map_err(io)?;
                    h.set_device_minor(min).map_err(io)?;
                }
                b.append_data(&mut h, name_path, std::io::empty())
                    .map_err(io)
            }
            // Sockets cannot be archived (nor restored).
            NodeKind::Socket => {
                stats.entries -= 1;
                Ok(())
            }
        }
    };
    let comps = crate::ops::ls::components(path);
    match crate::ops::ls::find(repo, root, path)? {
        // The whole snapshot: entries by their absolute paths, without the leading '/'.
        None => crate::ops::ls::walk(repo, root, b"", &mut |p, n| {
            add(&mut b, &p[1..], n)?;
            Ok(true)
        })?,
        Some(n) => {
            let base = comps.last().expect("a path names an entry").to_vec();
            add(&mut b, &base, &n)?;
            if let (NodeKind::Dir, Some(t)) = (n.kind, n.subtree) {
                crate::ops::ls::walk(repo, t, &base, &mut |p, n| {
                    add(&mut b, p, n)?;
                    Ok(true)
                })?;
            }
        }
    }
    let w = b.into_inner().map_err(io)?;
    w.flush().map_err(|e| Error::io("standard output", e))?;
    Ok(stats)
}
