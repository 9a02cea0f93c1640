//! The run file, pack table, pack ids and delta bases kept in the cache for later loads: their
//! companion file (what they cover, the disputed copies), opening them again, and burying the
//! packs of the index files a prune rewrote since (format-spec 16).

use std::collections::HashMap;
use std::path::Path;

use super::bases::Bases;
use super::disk::private_dir;
use super::Index;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::indexrun::RunFile;
use crate::packtable;

impl Index {
    /// As [`loading_on_disk`](Index::loading_on_disk), keeping the run file in `dir` for later
    /// loads ([`open_kept`](Index::open_kept)) with what they need beside it: the index files
    /// it `covered`, the pack table, the delta bases (format-spec 16).
    pub fn loading_to_keep(
        dir: &Path,
        mem_records: usize,
        blobs: usize,
        covered: Vec<Id>,
    ) -> Result<Self> {
        let mut idx = Index::loading_on_disk(dir, mem_records, blobs)?;
        idx.keep = Some((dir.to_path_buf(), covered));
        Ok(idx)
    }

    /// Keeps the run file this index is being loaded into for later loads, as covering the
    /// index files `files`, each with the positions of the packs it lists (as
    /// [`add_pack`](Index::add_pack) returned them; before [`seal`](Index::seal), after the
    /// last pack is added; as [`loading_to_keep`](Index::loading_to_keep) when they are known
    /// only at the end).
    pub fn keep_as(&mut self, dir: &Path, files: Vec<(Id, Vec<u32>)>) {
        self.keep = Some((dir.to_path_buf(), files.iter().map(|(id, _)| *id).collect()));
        self.file_packs = files;
    }

    /// An index from the run file an earlier load kept in `dir`, when it and its companion
    /// file check out; with the index files it covers. Files that do not check out are
    /// removed. Covered files a prune rewrote since are then [`bury`](Index::bury)'d.
    pub fn open_kept(dir: &Path) -> Option<(Index, Vec<Id>)> {
        private_dir(dir).ok()?;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name
                .strip_prefix("run-")
                .and_then(|n| n.strip_suffix(".meta"))
            else {
                continue;
            };
            let run_path = dir.join(format!("run-{hex}.run"));
            let table_path = dir.join(format!("run-{hex}.packs"));
            let ids_path = dir.join(format!("run-{hex}.pids"));
            let bases_path = dir.join(format!("run-{hex}.bases"));
            let drop_both = || {
                for p in [
                    e.path(),
                    run_path.clone(),
                    table_path.clone(),
                    ids_path.clone(),
                    bases_path.clone(),
                ] {
                    let _ = std::fs::remove_file(p);
                }
            };
            let Ok(Some(meta)) = std::fs::read(e.path()).map(|b| Meta::decode(&b)) else {
                drop_both();
                continue;
            };
            let covered: Vec<Id> = meta.files.iter().map(|(id, _)| *id).collect();
            let covers = covers_of(&covered);
            if crate::id::Id(covers).to_hex() != hex {
                drop_both();
                continue;
            }
            let opened = (
                RunFile::open(&run_path),
                packtable::Table::open(&table_path),
                RunFile::open(&ids_path),
                RunFile::open(&bases_path),
            );
            let (Ok(run), Ok(table), Ok(ids), Ok(bases)) = opened else {
                drop_both();
                continue;
            };
            // Two builds of the same index files share COVERS but not positions: the five
            // files must be of one build (a crash or another process between the renames
            // could mix them).
            let prints = [
                run.fingerprint(),
                table.fingerprint(),
                ids.fingerprint(),
                bases.fingerprint(),
            ];
            if run.covers() != covers
                || table.covers() != covers
                || ids.covers() != covers
                || bases.covers() != covers
                || table.len() != meta.packs
                || ids.len() != meta.packs
                || prints != meta.prints
            {
                drop_both();
                continue;
            }
            let idx = Index {
                kept_files: identified(vec![
                    e.path(),
                    run_path,
                    table_path,
                    ids_path,
                    bases_path.clone(),
                ]),
                run: Some(run),
                table: Some(table),
                table_ids: Some(ids),
                disputed_blobs: meta.disputed as usize,
                bases: Bases::of_run(bases, bases_path),
                file_packs: meta.files,
                won: meta.won.into_iter().collect(),
                lost: meta.lost.into_iter().collect(),
                ..Index::default()
            };
            return Some((idx, covered));
        }
        None
    }

    /// Buries what the run file holds of the packs the index files `gone` list (a prune
    /// rewrote those files): lookups pass their records by, and a pack listed again (by the
    /// files that replaced them, added next) is added anew. A pack another covered file
    /// still lists stays. Blobs two packs claimed stop counting as disputed when the losing
    /// pack is buried. Returns `false`, burying nothing, when one of the files lists a pack
    /// whose copy of a disputed blob the run file kept: the file that made that claim may be
    /// the one rewritten without it (refuted, or the pack deleted), and the run file did not
    /// keep the other copies, so the caller builds the index again.
    pub fn bury(&mut self, gone: &[Id]) -> bool {
        let gone: std::collections::HashSet<&Id> = gone.iter().collect();
        // The packs of the files gone (few), less those another covered file lists (of
        // millions of packs, only these are collected).
        let mut buried: std::collections::HashSet<u32> = self
            .file_packs
            .iter()
            .filter(|(id, _)| gone.contains(id))
            .flat_map(|(_, packs)| packs.iter().copied())
            .collect();
        if buried.iter().any(|p| self.won.contains(p)) {
            return false;
        }
        let mut stays: std::collections::HashSet<u32> = std::collections::HashSet::new();
        for (_, packs) in self.file_packs.iter().filter(|(id, _)| !gone.contains(id)) {
            stays.extend(packs.iter().filter(|p| buried.contains(*p)).copied());
        }
        buried.retain(|p| !stays.contains(p));
        self.file_packs.retain(|(id, _)| !gone.contains(id));
        let count = self.pack_count();
        self.dead.resize(count, false);
        for pos in buried {
            if pos as usize >= count {
                continue;
            }
            self.dead[pos as usize] = true;
            if let Some(id) = self.packs_in_memory_at(pos).map(|p| p.id) {
                self.pack_pos.remove(&id);
            }
            let settled = self.lost.remove(&pos).unwrap_or(0) as usize;
            self.disputed_blobs = self.disputed_blobs.saturating_sub(settled);
        }
        true
    }

    /// Frees the packs each covered file lists, once [`bury`](Index::bury) has used them (4
    /// bytes a pack; a loaded kept index buries once).
    pub fn forget_file_packs(&mut self) {
        self.file_packs = Vec::new();
    }

    pub(super) fn is_dead(&self, pos: u32) -> bool {
        self.dead.get(pos as usize).copied().unwrap_or(false)
    }

    /// The companion of a kept run file.
    pub(super) fn meta(&self, covered: &[Id]) -> Meta {
        let packs_of: HashMap<&Id, &Vec<u32>> =
            self.file_packs.iter().map(|(id, p)| (id, p)).collect();
        let mut won: Vec<u32> = self.won.iter().copied().collect();
        won.sort_unstable();
        let mut lost: Vec<(u32, u64)> = self.lost.iter().map(|(p, n)| (*p, *n)).collect();
        lost.sort_unstable();
        Meta {
            disputed: self.disputed_blobs as u64,
            files: covered
                .iter()
                .map(|id| (*id, packs_of.get(id).map_or_else(Vec::new, |p| p.to_vec())))
                .collect(),
            won,
            lost,
            packs: self.pack_count() as u64,
            prints: [
                self.run.as_ref().map_or([0; 32], RunFile::fingerprint),
                self.table
                    .as_ref()
                    .map_or([0; 32], packtable::Table::fingerprint),
                self.table_ids
                    .as_ref()
                    .map_or([0; 32], RunFile::fingerprint),
                self.bases.fingerprint(),
            ],
        }
    }
}

impl Index {
    /// Writes the companion of the files a build kept in `dir` (covering the index files
    /// `covered`, hashed into `covers`): the run file, the pack table, the pack ids and the
    /// delta bases, in `files`; then removes the older kept files of the folder.
    pub(super) fn keep_built(
        &mut self,
        dir: &Path,
        covered: &[Id],
        covers: [u8; 32],
        files: [std::path::PathBuf; 4],
    ) {
        let meta = dir.join(format!("run-{}.meta", Id(covers).to_hex()));
        let tmp = meta.with_extension(format!("meta-tmp{}", std::process::id()));
        let written = std::fs::write(&tmp, self.meta(covered).encode())
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &meta));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return self.note_run_error(&Error::Other(format!("{}: {e}", meta.display())));
        }
        self.kept_files = identified([meta].into_iter().chain(files).collect());
        // Older kept files of this repository go (a reader that has one open keeps it).
        let ours = format!("run-{}.", Id(covers).to_hex());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("run-") && !n.starts_with(&ours) && !n.contains("tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Paths with their device and inode now (those that exist).
pub(super) fn identified(paths: Vec<std::path::PathBuf>) -> Vec<(std::path::PathBuf, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    paths
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.dev(), m.ino()))
        })
        .collect()
}

/// What the index files a kept run file covers hash to (sorted ids).
pub(super) fn covers_of(covered: &[Id]) -> [u8; 32] {
    let mut ids = covered.to_vec();
    ids.sort();
    let mut h = blake3::Hasher::new();
    for id in &ids {
        h.update(&id.0);
    }
    *h.finalize().as_bytes()
}

pub(super) const META_MAGIC: &[u8; 8] = b"CBIXMETA";
/// Version 6: a delta base takes one record of the `bases` file. Version 5 moved the delta
/// bases to a file of their own (`bases`). Version 4 moved the pack
/// table to a file of its own (`packtable`). Version 3 added each
/// covered file's packs and the disputes' winners and losers (version 2
/// was a layout of them that main carried for a day).
pub(super) const META_VERSION: u32 = 6;

/// The companion file of a kept run file (format-spec 16): the index files it covers with the
/// packs each lists, the disputed blobs with the packs that won and lost them, the number of
/// packs in the pack table, the footer hashes of the other four files, and a BLAKE3 of it all
/// at the end.
pub(super) struct Meta {
    pub(super) disputed: u64,
    pub(super) files: Vec<(Id, Vec<u32>)>,
    pub(super) won: Vec<u32>,
    pub(super) lost: Vec<(u32, u64)>,
    /// Packs in the pack table (`run-….packs`).
    pub(super) packs: u64,
    /// The footer hashes of the run file, the pack table, the pack ids and the delta bases of
    /// this build.
    pub(super) prints: [[u8; 32]; 4],
}

impl Meta {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let u32s = |out: &mut Vec<u8>, v: &[u32]| {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for p in v {
                out.extend_from_slice(&p.to_le_bytes());
            }
        };
        out.extend_from_slice(META_MAGIC);
        out.extend_from_slice(&META_VERSION.to_le_bytes());
        out.extend_from_slice(&self.disputed.to_le_bytes());
        out.extend_from_slice(&(self.files.len() as u64).to_le_bytes());
        for (id, packs) in &self.files {
            out.extend_from_slice(&id.0);
            u32s(&mut out, packs);
        }
        u32s(&mut out, &self.won);
        out.extend_from_slice(&(self.lost.len() as u64).to_le_bytes());
        for (p, n) in &self.lost {
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.packs.to_le_bytes());
        for p in &self.prints {
            out.extend_from_slice(p);
        }
        let h = blake3::hash(&out);
        out.extend_from_slice(h.as_bytes());
        out
    }

    /// `None` for anything that does not check out (every length against what remains, every
    /// pack position against the table).
    pub(super) fn decode(b: &[u8]) -> Option<Meta> {
        let (body, sum) = b.split_at_checked(b.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = body.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        if take(8)? != META_MAGIC || u32::from_le_bytes(take(4)?.try_into().ok()?) != META_VERSION {
            return None;
        }
        let u64_of = |s: &[u8]| s.try_into().ok().map(u64::from_le_bytes);
        let u32_of = |s: &[u8]| s.try_into().ok().map(u32::from_le_bytes);
        let disputed = u64_of(take(8)?)?;
        let n = usize::try_from(u64_of(take(8)?)?).ok()?;
        // Each file takes at least 40 bytes: no count beyond what remains is believed.
        let mut files = Vec::with_capacity(n.min(body.len() / 40));
        for _ in 0..n {
            let id = Id(take(32)?.try_into().ok()?);
            let k = usize::try_from(u64_of(take(8)?)?).ok()?;
            let packs = take(k.checked_mul(4)?)?
                .chunks_exact(4)
                .map(u32_of)
                .collect::<Option<_>>()?;
            files.push((id, packs));
        }
        let n = usize::try_from(u64_of(take(8)?)?).ok()?;
        let won: Vec<u32> = take(n.checked_mul(4)?)?
            .chunks_exact(4)
            .map(u32_of)
            .collect::<Option<_>>()?;
        let n = usize::try_from(u64_of(take(8)?)?).ok()?;
        let lost: Vec<(u32, u64)> = take(n.checked_mul(12)?)?
            .chunks_exact(12)
            .map(|c| Some((u32_of(&c[..4])?, u64_of(&c[4..])?)))
            .collect::<Option<_>>()?;
        let packs = u64_of(take(8)?)?;
        let mut prints = [[0u8; 32]; 4];
        for p in &mut prints {
            *p = take(32)?.try_into().ok()?;
        }
        let in_table = |p: &u32| u64::from(*p) < packs;
        if at != body.len()
            || !files.iter().flat_map(|(_, p)| p).all(in_table)
            || !won.iter().all(in_table)
            || !lost.iter().all(|(p, _)| in_table(p))
        {
            return None;
        }
        Some(Meta {
            disputed,
            files,
            won,
            lost,
            packs,
            prints,
        })
    }
}
