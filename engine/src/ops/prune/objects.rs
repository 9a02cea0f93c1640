//! The stored objects no index file in force names (orphan candidates, then the orphans a
//! prune deletes), as a list that keeps at most a buffer in memory and the rest in an
//! unnamed temporary file (gone with the process, even a killed one), in the cache's index
//! folder where there is one (`TMPDIR` is often in memory), else under `TMPDIR`.
//!
//! They are few in a repository a prune looks after (packs a killed backup left), but a
//! fleet host that holds the bucket's credentials can upload millions of objects under
//! `data/` and `tree/`: held as names in memory (about 200 bytes each, twice over), they would
//! stop every later prune of a small host, and with it the repository's retention.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::FileKind;
use crate::error::{Error, Result};

/// Bytes of records kept in memory before they are written out, at most.
const MAX_BUFFER: usize = 256 << 10;

/// One stored object: its kind, name, size and upload time (where the store says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Object {
    pub kind: FileKind,
    pub name: String,
    pub size: u64,
    pub modified: Option<i64>,
}

/// Objects in the order they were pushed. Records: kind (1 byte: 0 data, 1 tree), size (u64),
/// upload time (i64, `i64::MIN` unknown), the name's length (u32) and the name, little endian.
/// Clones share the file: each writes its batches at the file's end, never over the other's.
#[derive(Clone, Default)]
pub(super) struct Objects {
    /// Records not written out yet.
    buf: Vec<u8>,
    /// Written out: the file and where each batch lies in it (offset, length).
    file: Option<Arc<File>>,
    batches: Vec<(u64, usize)>,
    len: u64,
    /// `buf` is written out when it holds this many bytes; 0: [`MAX_BUFFER`].
    buffer: usize,
    /// The folder of the temporary file; `None`: `TMPDIR`.
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("len", &self.len)
            .field("batches_written", &self.batches.len())
            .finish()
    }
}

impl Objects {
    /// An empty list that keeps about `memory / 512` bytes of records in memory (between
    /// 4 KiB and 256 KiB), the rest in a file in `dir` (when it is a folder) or `TMPDIR`.
    pub(super) fn new(memory: u64, dir: Option<PathBuf>) -> Objects {
        Objects {
            dir: dir.filter(|d| d.is_dir()),
            ..Objects::with_buffer((memory / 512).clamp(4096, MAX_BUFFER as u64) as usize)
        }
    }

    /// An empty list as `repo` asks for: its memory budget, and the folder of its index on
    /// disk.
    pub(super) fn of(repo: &crate::repo::Repository) -> Objects {
        Objects::new(repo.memory(), repo.index_scratch().map(|(d, _)| d))
    }

    /// An empty list of the same buffer and folder.
    pub(super) fn empty_like(&self) -> Objects {
        Objects {
            buffer: self.buffer,
            dir: self.dir.clone(),
            ..Default::default()
        }
    }

    fn with_buffer(buffer: usize) -> Objects {
        Objects {
            buffer,
            ..Default::default()
        }
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many batches of records were written out to the file.
    #[cfg(test)]
    fn written(&self) -> usize {
        self.batches.len()
    }

    pub(super) fn push(&mut self, o: &Object) -> Result<()> {
        let kind = match o.kind {
            FileKind::Data => 0u8,
            FileKind::Tree => 1,
            other => {
                return Err(Error::Other(format!(
                    "internal: {} objects are no packs",
                    other.dir()
                )))
            }
        };
        self.buf.push(kind);
        self.buf.extend_from_slice(&o.size.to_le_bytes());
        self.buf
            .extend_from_slice(&o.modified.unwrap_or(i64::MIN).to_le_bytes());
        self.buf
            .extend_from_slice(&(o.name.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(o.name.as_bytes());
        self.len += 1;
        let limit = if self.buffer == 0 {
            MAX_BUFFER
        } else {
            self.buffer
        };
        if self.buf.len() >= limit {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<()> {
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let failed =
            |e: std::io::Error| Error::Other(format!("a temporary file in {}: {e}", dir.display()));
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(tempfile::tempfile_in(&dir).map_err(failed)?);
                self.file = Some(f.clone());
                f
            }
        };
        // At the end: a clone that writes does not overwrite what another wrote.
        let at = file.metadata().map_err(failed)?.len();
        file.write_all_at(&self.buf, at).map_err(failed)?;
        self.batches.push((at, self.buf.len()));
        self.buf.clear();
        Ok(())
    }

    /// Every object, in the order pushed.
    pub(super) fn each(&self, f: &mut dyn FnMut(Object) -> Result<()>) -> Result<()> {
        let mut batch = Vec::new();
        for &(at, n) in &self.batches {
            let file = self.file.as_ref().expect("batches are in the file");
            batch.resize(n, 0);
            file.read_exact_at(&mut batch, at)
                .map_err(|e| Error::Other(format!("reading a temporary list of objects: {e}")))?;
            decode(&batch, f)?;
        }
        decode(&self.buf, f)
    }

    /// The objects `keep` keeps, in order.
    pub(super) fn filter(&self, keep: &mut dyn FnMut(&Object) -> Result<bool>) -> Result<Objects> {
        let mut out = self.empty_like();
        self.each(&mut |o| {
            if keep(&o)? {
                out.push(&o)?;
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// The records of `b` (a batch this process wrote: a record that does not decode is an error,
/// never a guess).
fn decode(mut b: &[u8], f: &mut dyn FnMut(Object) -> Result<()>) -> Result<()> {
    let bad = || Error::Other("internal: a temporary list of objects does not decode".into());
    while !b.is_empty() {
        if b.len() < 21 {
            return Err(bad());
        }
        let kind = match b[0] {
            0 => FileKind::Data,
            1 => FileKind::Tree,
            _ => return Err(bad()),
        };
        let size = u64::from_le_bytes(b[1..9].try_into().expect("8 bytes"));
        let modified = i64::from_le_bytes(b[9..17].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(b[17..21].try_into().expect("4 bytes")) as usize;
        let name = b.get(21..21 + n).ok_or_else(bad)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad())?;
        f(Object {
            kind,
            name,
            size,
            modified: Some(modified).filter(|m| *m != i64::MIN),
        })?;
        b = &b[21 + n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(i: u64) -> Object {
        Object {
            kind: if i.is_multiple_of(3) {
                FileKind::Tree
            } else {
                FileKind::Data
            },
            name: format!("{:x}", i * 7919).repeat(1 + (i % 5) as usize),
            size: i * 1000,
            modified: (!i.is_multiple_of(4)).then_some(1_700_000_000 + i as i64),
        }
    }

    fn all(l: &Objects) -> Vec<Object> {
        let mut v = Vec::new();
        l.each(&mut |o| {
            v.push(o);
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn objects_come_back_in_order_from_memory_and_from_the_file() {
        let mut l = Objects::with_buffer(256);
        let n = 1000;
        for i in 0..n {
            l.push(&object(i)).unwrap();
        }
        assert_eq!(l.len(), n);
        assert!(l.written() > 10, "most are in the file: {}", l.written());
        assert!(l.buf.len() < 256 + 64, "memory holds one batch at most");
        let expected: Vec<Object> = (0..n).map(object).collect();
        assert_eq!(all(&l), expected);
        // A clone reads the same file.
        assert_eq!(all(&l.clone()), expected);
        let odd = l.filter(&mut |o| Ok(o.size % 2000 != 0)).unwrap();
        assert_eq!(odd.len(), n / 2);
        let expected: Vec<Object> = (0..n).filter(|i| i % 2 == 1).map(object).collect();
        assert_eq!(all(&odd), expected);
    }

    #[test]
    fn a_small_list_stays_in_memory_and_other_kinds_are_refused() {
        let mut l = Objects::new(150 << 20, None);
        for i in 0..100 {
            l.push(&object(i)).unwrap();
        }
        assert_eq!(l.written(), 0);
        assert!(l.file.is_none());
        assert_eq!(all(&l).len(), 100);
        assert!(Objects::default().is_empty());
        let mut o = object(1);
        o.kind = FileKind::Index;
        assert!(l.push(&o).is_err());
    }
}
