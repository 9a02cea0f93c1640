//! Prune's pack table when it plans on disk ([`super::bounded`]): every pack of the index
//! files in force by position, in a scratch file of 96-byte records (the kept index's record,
//! format-spec 16), found again by id through [`Positions`] (8 bytes a pack); and what the
//! store lists of each pack, by position (17 bytes a pack). The store's listing is handed
//! over an object at a time ([`Backend::list_info_each`]), never held whole.
//!
//! A repository of 100 TB in 32 MiB packs has about 3 million packs: as maps of ids and
//! names (the plan in memory) they took about 880 bytes each, 2.6 GiB.

use std::path::Path;

use crate::backend::{Backend, FileKind, StorageClass};
use crate::error::Result;
use crate::id::{Id, ObjectId};
use crate::index::PackInfo;
use crate::packtable::{Positions, Writer};

use super::objects::{Object, Objects};
use super::Stored;

/// The plan's pack table: the records in a [`Writer`]'s file (appended while the index files
/// are read, a pack's mark rewritten when a later listing changes it, then read by position or
/// in order), found by id through [`Positions`].
pub(super) struct Table {
    records: Writer,
    positions: Positions,
}

impl Table {
    /// A new, empty table in the scratch file `path`.
    pub(super) fn new(path: &Path) -> Result<Table> {
        Ok(Table {
            records: Writer::new(path)?,
            positions: Positions::default(),
        })
    }

    pub(super) fn len(&self) -> u32 {
        self.records.len() as u32
    }

    /// The pack at `pos`.
    pub(super) fn get(&self, pos: u32) -> Result<PackInfo> {
        self.records.get(pos)
    }

    pub(super) fn id_at(&self, pos: u32) -> Result<ObjectId> {
        self.records.id_at(pos)
    }

    /// The position of pack `id`, if the table holds it.
    pub(super) fn pos_of(&self, id: &ObjectId) -> Result<Option<u32>> {
        self.positions.get(id, &mut |p| self.records.id_at(p))
    }

    /// Appends a pack the table does not hold; returns its position.
    pub(super) fn push(&mut self, p: &PackInfo) -> Result<u32> {
        let pos = self.len();
        self.records.push(p)?;
        self.positions.insert(&p.id, pos);
        Ok(pos)
    }

    /// Replaces the record at `pos` (the same pack, another mark).
    pub(super) fn set(&mut self, pos: u32, p: &PackInfo) -> Result<()> {
        self.records.set(pos, p)
    }

    /// Every pack, in position order.
    pub(super) fn scan(&self, f: &mut dyn FnMut(u32, PackInfo) -> Result<()>) -> Result<()> {
        self.records.scan(f)
    }
}

/// What the store lists of each pack of a [`Table`], by position, and the stored packs the
/// table does not hold (no index file in force names them: orphans, unless a superseded file
/// does), in a list that keeps them on disk beyond a buffer.
pub(super) struct Listing {
    /// `None`: not stored.
    class: Vec<Option<StorageClass>>,
    size: Vec<u64>,
    /// Upload times; `i64::MIN` where the store does not say.
    modified: Vec<i64>,
    pub(super) others: Objects,
}

impl Listing {
    /// Lists the store's data and tree packs against `table`, the others into `others`.
    pub(super) fn of(backend: &dyn Backend, table: &Table, others: Objects) -> Result<Listing> {
        let n = table.len() as usize;
        let mut l = Listing {
            class: vec![None; n],
            size: vec![0; n],
            modified: vec![i64::MIN; n],
            others,
        };
        for fk in [FileKind::Data, FileKind::Tree] {
            backend.list_info_each(fk, &mut |o| {
                // A pack's own name only (not another spelling of its id).
                let pos = match Id::of_name(&o.name) {
                    Some(id) => table.pos_of(&id)?,
                    None => None,
                };
                match pos {
                    Some(p) => {
                        let p = p as usize;
                        l.class[p] = Some(o.class);
                        l.size[p] = o.size;
                        l.modified[p] = o.modified.unwrap_or(i64::MIN);
                    }
                    None => l.others.push(&Object {
                        kind: fk,
                        name: o.name,
                        size: o.size,
                        modified: o.modified,
                    })?,
                }
                Ok(())
            })?;
        }
        Ok(l)
    }

    pub(super) fn is_stored(&self, pos: u32) -> bool {
        self.class[pos as usize].is_some()
    }

    /// What the store lists of the pack at `pos`; `None` when it is not stored.
    pub(super) fn stored(&self, pos: u32) -> Option<Stored> {
        let p = pos as usize;
        Some(Stored {
            class: self.class[p]?,
            size: self.size[p],
            modified: Some(self.modified[p]).filter(|m| *m != i64::MIN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index::Mark;
    use crate::format::ObjectKind;

    fn pack(i: u32) -> PackInfo {
        PackInfo {
            id: Id(*blake3::hash(&i.to_le_bytes()).as_bytes()),
            kind: ObjectKind::DataPack,
            size: u64::from(i) * 1000,
            crc32c: i,
            salt: [i as u8; 32],
            mark: None,
        }
    }

    #[test]
    fn packs_are_found_changed_and_read_back_in_order_across_batches() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Table::new(&d.path().join("packs")).unwrap();
        let n = 1024 * 3 + 17;
        for i in 0..n {
            assert_eq!(t.pos_of(&pack(i).id).unwrap(), None);
            assert_eq!(t.push(&pack(i)).unwrap(), i);
        }
        assert_eq!(t.len(), n);
        // One written to the file, one still pending.
        for pos in [5, n - 3] {
            let mut p = pack(pos);
            p.mark = Some(Mark {
                at: 7,
                delete_after: 9,
            });
            t.set(pos, &p).unwrap();
        }
        for i in [0, 5, 1500, n - 3, n - 1] {
            assert_eq!(t.pos_of(&pack(i).id).unwrap(), Some(i));
            assert_eq!(t.get(i).unwrap().size, u64::from(i) * 1000);
        }
        assert_eq!(t.pos_of(&pack(n).id).unwrap(), None);
        let mut seen = 0;
        t.scan(&mut |pos, p| {
            assert_eq!(pos, seen);
            assert_eq!(p.id, pack(pos).id);
            assert_eq!(p.mark.is_some(), pos == 5 || pos == n - 3, "{pos}");
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, n);
        assert!(t.get(n).is_err(), "past the end");
    }
}
