//! Synthetic repositories for benchmarks and tests (issue 24): index files of many blobs in
//! packs that are never stored, which a load of the index, a backup and a prune's plan read
//! without reading any pack.

use crate::compressor::Compression;
use crate::error::Result;
use crate::format::index::PackEntry;
use crate::format::pack::{BlobKind, BlobRecord};
use crate::format::ObjectKind;
use crate::id::Id;
use crate::repo::Repository;

/// A made-up id, distinct for each `(i, what)`.
fn id(i: u64, what: u64) -> Id {
    let mut b = [0u8; 32];
    for (k, w) in b.chunks_exact_mut(8).enumerate() {
        let x = (i ^ (what << 40) ^ ((k as u64) << 56)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        w.copy_from_slice(&(x ^ (x >> 29)).to_le_bytes());
    }
    Id(b)
}

/// Indexes `n` data blobs, deltas (each on a blob of its own, which nothing indexes) or whole,
/// 1,000 a pack, `per_file` an index file (written one at a time, so what this holds does not
/// grow with `n`), in packs never stored (nothing reads them): a fleet's database dumps as a
/// load of the index sees them.
pub fn index_blobs(repo: &Repository, n: u64, per_file: u64, deltas: bool) -> Result<()> {
    for file in (0..n).step_by(per_file.max(1) as usize) {
        let end = (file + per_file.max(1)).min(n);
        let packs = (file..end)
            .step_by(1000)
            .map(|p| PackEntry {
                id: id(p, 3),
                kind: ObjectKind::DataPack,
                size: 38 + 100_000 + 4096,
                crc32c: 0,
                salt: [7; 32],
                mark: None,
                blobs: (p..(p + 1000).min(end))
                    .map(|i| BlobRecord {
                        id: id(i, 1),
                        offset: 38 + (i - p) as u32 * 100,
                        length: 100,
                        raw_len: 1 << 20,
                        kind: BlobKind::Data,
                        compression: if deltas {
                            Compression::Delta
                        } else {
                            Compression::Zstd
                        },
                        base: deltas.then(|| id(i, 2)),
                    })
                    .collect(),
            })
            .collect();
        repo.write_index(packs)?;
    }
    Ok(())
}

/// Test of format-spec.md: the spec, whitespace aside, holds `hex` (a test vector `what`).
#[cfg(test)]
pub(crate) fn assert_in_spec(hex: &str, what: &str) {
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../format-spec.md"),
    )
    .unwrap();
    let flat: String = spec.split_whitespace().collect();
    assert!(flat.contains(hex), "format-spec.md lacks the {what} {hex}");
}
