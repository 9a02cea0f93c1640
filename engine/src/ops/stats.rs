//! `stats`: what the repository holds and what it costs. For the chosen snapshots, the size
//! of their files as a restore writes them, the distinct chunks they reference (so the dedup
//! ratio), and how much smaller those chunks are stored (the compression ratio); for the whole
//! repository, the bytes in each storage class and what they cost per month at a price table.
//! A subtree shared by several snapshots is read once.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::backend::{FileKind, StorageClass};
use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::format::tree::NodeKind;
use crate::id::BlobId;
use crate::repo::Repository;
use crate::Id;

/// Bytes and objects of one storage class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassUsage {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub snapshots: u64,
    /// Files (one per name: a hard link counts as a file), over all chosen snapshots.
    pub files: u64,
    /// Their sizes added up: what restoring every chosen snapshot would write.
    pub logical_bytes: u64,
    /// Distinct data chunks the chosen snapshots reference.
    pub chunks: u64,
    /// Those chunks' plaintext sizes added up.
    pub chunk_bytes: u64,
    /// Those chunks as stored (compressed and encrypted) added up.
    pub chunk_stored_bytes: u64,
    /// Chunks referenced that the index does not locate (the repository needs a check).
    pub chunks_missing: u64,
    /// Of those chunks, the ones stored as deltas: how many, their plaintext and stored bytes.
    pub delta_chunks: u64,
    pub delta_bytes: u64,
    pub delta_stored_bytes: u64,
    /// The deepest of those deltas' chains (format-spec 6.1: at most 6): the most frames a
    /// restore decodes for one chunk.
    pub delta_max_depth: u64,
    /// Chunks kept only as the bases of those deltas, down their chains (no chosen snapshot
    /// references them itself), and their stored bytes.
    pub base_only_chunks: u64,
    pub base_only_stored_bytes: u64,
    /// Every object of the repository, by storage class.
    pub classes: BTreeMap<StorageClass, ClassUsage>,
    /// Every object of the repository, by its folder (data, tree, index, snapshots, keys; and
    /// config).
    pub kinds: BTreeMap<&'static str, ClassUsage>,
}

impl Stats {
    /// Files' bytes per distinct chunk byte: how much deduplication saves (2.0: half).
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.chunk_bytes)
    }

    /// Plaintext per stored byte of the distinct chunks.
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.chunk_bytes, self.chunk_stored_bytes)
    }

    /// Files' bytes per stored byte: both savings together.
    pub fn total_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.chunk_stored_bytes)
    }

    pub fn repository_bytes(&self) -> u64 {
        self.classes.values().map(|c| c.bytes).sum()
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// Monthly storage prices in USD per GiB-month, by class.
#[derive(Clone, Debug)]
pub struct Prices(pub BTreeMap<StorageClass, f64>);

impl Default for Prices {
    /// AWS list prices for us-east-1, first 50 TB tier (`docs/operations.md` gives their date).
    fn default() -> Self {
        Prices(
            StorageClass::CONFIGURABLE
                .into_iter()
                .map(|c| (c, crate::ops::prune::price_per_gb_month(c)))
                .collect(),
        )
    }
}

/// Per-object overhead S3 bills for objects in GLACIER and DEEP_ARCHIVE: 32 KiB at the class's
/// price (its index) and 8 KiB at STANDARD's (the name and metadata).
pub const ARCHIVE_OVERHEAD_ARCHIVE: u64 = 32 << 10;
pub const ARCHIVE_OVERHEAD_STANDARD: u64 = 8 << 10;

impl Prices {
    /// Overrides from `CLASS=USD` (USD per GiB-month).
    pub fn set(&mut self, spec: &str) -> Result<()> {
        let (name, usd) = spec.split_once('=').ok_or_else(|| {
            Error::Invalid(format!(
                "price {spec:?}: CLASS=USD_PER_GIB_MONTH, e.g. GLACIER=0.0036"
            ))
        })?;
        let class = StorageClass::from_name(name.trim());
        if class == StorageClass::Other {
            let known: Vec<&str> = StorageClass::CONFIGURABLE
                .iter()
                .map(|c| c.name())
                .collect();
            return Err(Error::Invalid(format!(
                "price {spec:?}: {} is not a storage class ({})",
                name.trim(),
                known.join(", ")
            )));
        }
        let usd: f64 = usd
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| Error::Invalid(format!("price {spec:?}: not a price in USD")))?;
        self.0.insert(class, usd);
        Ok(())
    }

    pub fn of(&self, class: StorageClass) -> f64 {
        self.0
            .get(&class)
            .or_else(|| self.0.get(&StorageClass::Standard))
            .copied()
            .unwrap_or(0.0)
    }

    /// USD per month for one class's objects, archive overheads included.
    pub fn monthly(&self, class: StorageClass, u: ClassUsage) -> f64 {
        const GIB: f64 = (1u64 << 30) as f64;
        let mut usd = u.bytes as f64 / GIB * self.of(class);
        if matches!(class, StorageClass::Glacier | StorageClass::DeepArchive) {
            usd += (u.objects * ARCHIVE_OVERHEAD_ARCHIVE) as f64 / GIB * self.of(class);
            usd += (u.objects * ARCHIVE_OVERHEAD_STANDARD) as f64 / GIB
                * self.of(StorageClass::Standard);
        }
        usd
    }
}

/// Statistics of the chosen snapshots and of the whole repository. The index must be loaded.
pub fn stats(repo: &Repository, snaps: &[(Id, Snapshot)]) -> Result<Stats> {
    let mut st = Stats {
        snapshots: snaps.len() as u64,
        ..Default::default()
    };
    let mut seen_chunks: HashSet<BlobId> = HashSet::new();
    // Files and bytes below each tree, so a subtree shared by snapshots is read once.
    let mut sizes: HashMap<BlobId, (u64, u64)> = HashMap::new();
    for (_, s) in snaps {
        let (files, bytes) = tree_size(repo, s.tree, &mut sizes, &mut seen_chunks, 0)?;
        st.files += files;
        st.logical_bytes += bytes;
    }
    {
        let idx = repo.index().read().expect("index lock");
        let mut bases: HashSet<BlobId> = HashSet::new();
        for id in &seen_chunks {
            match idx.get(id) {
                Some((_, loc)) => {
                    st.chunks += 1;
                    st.chunk_bytes += u64::from(loc.raw_len);
                    st.chunk_stored_bytes += u64::from(loc.length);
                    if loc.base.is_some() {
                        st.delta_chunks += 1;
                        st.delta_bytes += u64::from(loc.raw_len);
                        st.delta_stored_bytes += u64::from(loc.length);
                        let chain = idx.chain_of(id).unwrap_or_default();
                        st.delta_max_depth = st.delta_max_depth.max(chain.len() as u64);
                        bases.extend(chain);
                    }
                }
                None => st.chunks_missing += 1,
            }
        }
        for b in bases.difference(&seen_chunks) {
            if let Some((_, loc)) = idx.get(b) {
                st.base_only_chunks += 1;
                st.base_only_stored_bytes += u64::from(loc.length);
            }
        }
    }
    let backend = repo.backend();
    for kind in FileKind::ALL {
        if kind == FileKind::Lock {
            continue;
        }
        for o in backend.list_info(kind)? {
            let c = st.classes.entry(o.class).or_default();
            c.objects += 1;
            c.bytes += o.size;
            let k = st
                .kinds
                .entry(match kind.dir() {
                    "" => "config",
                    dir => dir,
                })
                .or_default();
            k.objects += 1;
            k.bytes += o.size;
        }
    }
    Ok(st)
}

fn tree_size(
    repo: &Repository,
    tree: BlobId,
    sizes: &mut HashMap<BlobId, (u64, u64)>,
    chunks: &mut HashSet<BlobId>,
    depth: usize,
) -> Result<(u64, u64)> {
    if let Some(s) = sizes.get(&tree) {
        return Ok(*s);
    }
    if depth > crate::format::tree::MAX_TREE_DEPTH {
        return Err(Error::corrupt(
            format!("tree {tree}"),
            format!(
                "directories nest deeper than {} levels (damaged or forged tree?)",
                crate::format::tree::MAX_TREE_DEPTH
            ),
        ));
    }
    if crate::ops::interrupted() {
        return Err(crate::stop::error(String::new));
    }
    let (mut files, mut bytes) = (0, 0);
    for n in repo.load_dir(&tree)? {
        match n.kind {
            NodeKind::Dir => {
                if let Some(t) = n.subtree {
                    let (f, b) = tree_size(repo, t, sizes, chunks, depth + 1)?;
                    files += f;
                    bytes += b;
                }
            }
            NodeKind::File => {
                files += 1;
                bytes += n.size;
                chunks.extend(repo.file_chunks(&n.content)?);
            }
            _ => {}
        }
    }
    sizes.insert(tree, (files, bytes));
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_default_override_and_archive_overhead() {
        let mut p = Prices::default();
        assert_eq!(p.of(StorageClass::Standard), 0.023);
        assert_eq!(p.of(StorageClass::DeepArchive), 0.00099);
        p.set("glacier=0.004").unwrap();
        assert_eq!(p.of(StorageClass::Glacier), 0.004);
        assert!(p.set("TAPE=1").unwrap_err().to_string().contains("TAPE"));
        assert!(p.set("GLACIER=-1").is_err());
        assert!(p.set("GLACIER").is_err());
        let gib = ClassUsage {
            objects: 0,
            bytes: 1 << 30,
        };
        assert!((p.monthly(StorageClass::Standard, gib) - 0.023).abs() < 1e-12);
        // 32768 objects: 1 GiB of archive-priced index and 256 MiB of STANDARD-priced names.
        let many = ClassUsage {
            objects: 32_768,
            bytes: 0,
        };
        let want = 0.004 + 0.023 / 4.0;
        assert!((p.monthly(StorageClass::Glacier, many) - want).abs() < 1e-9);
        assert_eq!(p.monthly(StorageClass::GlacierIr, many), 0.0);
    }
}
