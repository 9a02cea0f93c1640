//! `dump`: one file of a snapshot written to a stream (standard output), e.g. a database dump
//! piped straight into `psql`. Every chunk is verified against its id as it is read.

use std::io::Write;

use crate::error::{Error, Result};
use crate::format::tree::NodeKind;
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
            "{shown} is a {}, not a file: dump writes one file (restore a directory with \
             `chunkbak restore`)",
            match n.kind {
                NodeKind::Dir => "directory",
                NodeKind::Symlink => "symbolic link",
                _ => "special file",
            }
        )));
    }
    let mut written = 0u64;
    for id in repo.file_chunks(&n.content)? {
        if crate::ops::interrupted() {
            return Err(Error::Interrupted);
        }
        let data = repo.read_blob(&id)?;
        out.write_all(&data)
            .map_err(|e| Error::io("standard output", e))?;
        written += data.len() as u64;
    }
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
