//! The bodies of the fuzz targets in `fuzz/`, here so that the test replaying their seeds and
//! regression inputs (`engine/tests/fuzz_corpus.rs`) runs exactly the same code on stable.
//! Each takes any bytes and returns; a panic (or an allocation libFuzzer refuses) is a bug.
//! Objects are sealed with [`FUZZ_KEY`], so seeds made from real objects
//! (`cargo run -p chunkbak-engine --example fuzz_seeds`) get past authentication and the
//! fuzzer reaches what is decoded after it.

use std::sync::Arc;

use crate::backend::fault::{FaultBackend, Faults};
use crate::backend::mem::MemBackend;
use crate::backend::Backend;
use crate::chunker::{Chunker, ChunkerParams};
use crate::compressor::{compress, decompress, Compression};
use crate::crypter::DedupKey;
use crate::crypter::MasterKey;
use crate::format::config::Config;
use crate::format::index::IndexFile;
use crate::format::key::{KdfParams, KeyFile};
use crate::format::pack::{decode_header, parse_header};
use crate::format::snapshot::Snapshot;
use crate::format::tree::TreeBlob;
use crate::format::{envelope, ObjectKind};
use crate::packer::Packer;
use crate::repo::{InitOptions, Repository};

/// The master key of every fuzz target and seed.
pub const FUZZ_KEY: [u8; 32] = [7; 32];

pub fn key() -> MasterKey {
    MasterKey::from_material(FUZZ_KEY)
}

/// Pack framing and header: the sealed form, and the decrypted records on their own.
pub fn pack_header(data: &[u8]) {
    let mk = key();
    for kind in [ObjectKind::DataPack, ObjectKind::TreePack] {
        if let Ok((_, recs)) = decode_header(&mk, kind, data, "fuzz") {
            // Records that decode describe blobs inside the pack.
            for r in recs {
                assert!((r.end() as usize) < data.len());
            }
        }
    }
    if data.len() >= 8 {
        let start = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let _ = parse_header(&data[8..], start, "fuzz");
    }
}

/// Sealed objects (config, snapshot, index) and what their payloads decode to.
pub fn envelope(data: &[u8]) {
    let mk = key();
    for kind in [ObjectKind::Config, ObjectKind::Snapshot, ObjectKind::Index] {
        if let Ok(p) = envelope::open(&mk, kind, data, "fuzz") {
            objects(&p);
        }
    }
}

/// Plaintext decoders of index files, trees, snapshots, config and key files.
pub fn objects(data: &[u8]) {
    let _ = IndexFile::decode(data, "fuzz");
    let _ = IndexFile::peek(data, "fuzz");
    let _ = TreeBlob::decode(data, "fuzz");
    let _ = Snapshot::decode(data, "fuzz");
    if let Ok(c) = Config::decode(data, "fuzz") {
        let _ = c.validate();
    }
    if let Ok(k) = KeyFile::decode(data, "fuzz") {
        // Opening runs the KDF: only with parameters cheap enough for a fuzzer.
        if k.params.m_cost_kib <= 64 && k.params.t_cost <= 1 && k.params.p_cost <= 1 {
            let _ = k.open(b"pw");
        }
    }
}

/// A stored blob: decryption, then decompression to a length the input declares. Whatever the
/// declared length, the output is that long or an error, and no more is allocated than the
/// input can expand to.
pub fn blob(data: &[u8]) {
    if data.len() < 13 {
        return;
    }
    let c = Compression::from_u8(data[0] % 2).expect("0 or 1");
    let raw_len = u32::from_le_bytes(data[1..5].try_into().expect("4 bytes")) as usize;
    let counter = u64::from_le_bytes(data[5..13].try_into().expect("8 bytes"));
    let rest = &data[13..];
    if let Ok(out) = decompress(c, rest.to_vec(), raw_len, "fuzz") {
        assert_eq!(out.len(), raw_len);
    }
    let cipher = key().object_cipher(&[counter as u8; 32]);
    if let Some(p) = cipher.open(counter, &ObjectKind::DataPack.prefix(), rest) {
        let _ = decompress(c, p, raw_len, "fuzz");
    }
}

/// A delta blob: `u16` base length, the base, `u32` declared length, then the stored frame.
/// Decoding against the base gives exactly the declared length or an error, allocating no
/// more than the 16 MiB a delta may hold; a frame the encoder made decodes to its input.
pub fn delta(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let blen = u16::from_le_bytes([data[0], data[1]]) as usize;
    let Some(base) = data.get(2..2 + blen) else {
        return;
    };
    let Some(rest) = data.get(2 + blen..) else {
        return;
    };
    if rest.len() < 4 {
        return;
    }
    let raw_len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let frame = &rest[4..];
    if let Ok(out) = crate::compressor::decompress_delta(frame, base, raw_len, "fuzz") {
        assert_eq!(out.len(), raw_len);
    }
    // The frame's bytes as a plaintext: delta-encoded on the base, it decodes back.
    if let Ok(f) = crate::compressor::compress_delta(frame, base, 1) {
        let back = crate::compressor::decompress_delta(&f, base, frame.len(), "fuzz")
            .expect("own delta decodes");
        assert_eq!(back, frame);
    }
}

struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    i: usize,
}

impl std::io::Read for Pieces<'_> {
    /// Reads of the sizes the input chose, in turn: each pair of bytes is one size, 1 to 65536
    /// (a lone last byte, 1 to 256), so any read boundary can occur.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pairs = self.sizes.len().div_ceil(2).max(1);
        let k = (self.i % pairs) * 2;
        let step = match self.sizes.get(k..k + 2) {
            Some(b) => 1 + u16::from_le_bytes([b[0], b[1]]) as usize,
            None => 1 + *self.sizes.get(k).unwrap_or(&255) as usize,
        };
        self.i += 1;
        let n = step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Splits fuzz input into a seed, read sizes and data.
fn split(data: &[u8]) -> (u64, &[u8], &[u8]) {
    let seed = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let rest = data.get(8..).unwrap_or_default();
    let n = rest.first().map_or(0, |&n| (n % 16) as usize);
    let sizes = rest.get(1..1 + n).unwrap_or_default();
    (seed, sizes, rest.get(1 + n..).unwrap_or_default())
}

const SMALL: ChunkerParams = ChunkerParams {
    min_size: 64,
    avg_size: 256,
    max_size: 1024,
    normalization: 1,
};

/// Chunker parameters the fuzzer picks from: the smallest a repository may have, at three
/// normalization levels and average sizes.
const PARAMS: [ChunkerParams; 4] = [
    ChunkerParams {
        min_size: 64,
        avg_size: 256,
        max_size: 1024,
        normalization: 2,
    },
    SMALL,
    ChunkerParams {
        min_size: 256,
        avg_size: 1024,
        max_size: 8192,
        normalization: 2,
    },
    ChunkerParams {
        min_size: 64,
        avg_size: 4096,
        max_size: 16384,
        normalization: 0,
    },
];

/// The chunker: any input read in any piece sizes gives the chunks of one pass, and the
/// chunks concatenate to the input.
pub fn chunker(input: &[u8]) {
    let (seed, sizes, data) = split(input);
    let params = PARAMS[(seed >> 56) as usize % PARAMS.len()];
    let c = Chunker::new(params, seed).expect("valid parameters");
    let one: Vec<usize> = c.cut_all(data);
    let pieces = Pieces { data, sizes, i: 0 };
    let chunks: Vec<Vec<u8>> = c.chunks(pieces).map(|r| r.expect("in memory")).collect();
    assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), one);
    assert_eq!(chunks.concat(), data);
    assert!(one.iter().all(|&n| n <= params.max_size as usize));
}

/// Data → chunks → compressed, encrypted blobs in a pack → header decoded → blobs opened and
/// verified → the same data.
pub fn roundtrip(input: &[u8]) {
    let (seed, _, data) = split(input);
    let mk = key();
    let dk = DedupKey::from_secret(&[seed as u8; 32]);
    let hasher = dk.hasher();
    let c = Chunker::new(SMALL, dk.gear_seed()).expect("valid parameters");
    let tmp = std::env::temp_dir();
    let mut packer =
        Packer::new(&mk, crate::format::pack::BlobKind::Data, &tmp).expect("temp file");
    let mut ids = Vec::new();
    let mut off = 0;
    for n in c.cut_all(data) {
        let chunk = &data[off..off + n];
        off += n;
        let id = hasher.id(chunk);
        let (comp, stored) = compress(chunk, 1 + (seed % 5) as i32);
        packer
            .add(id, comp, chunk.len() as u32, stored)
            .expect("temp file");
        ids.push(id);
    }
    let (entry, path) = packer.finish().expect("temp file");
    let pack = std::fs::read(&path).expect("pack file");
    let _ = std::fs::remove_file(&path);
    let (salt, recs) = decode_header(&mk, ObjectKind::DataPack, &pack, "fuzz").expect("own pack");
    assert_eq!(recs.len(), entry.blobs.len());
    let mut back = Vec::new();
    for (r, id) in recs.iter().zip(&ids) {
        assert_eq!(r.id, *id);
        let ct = &pack[r.offset as usize..r.end() as usize];
        let stored = mk
            .object_cipher(&salt)
            .open(u64::from(r.offset), &ObjectKind::DataPack.prefix(), ct)
            .expect("authentic");
        let plain = decompress(r.compression, stored, r.raw_len as usize, "fuzz").expect("own");
        assert_eq!(hasher.id(&plain), *id);
        back.extend_from_slice(&plain);
    }
    assert_eq!(back, data);
}

/// One step of the model target.
#[derive(Debug)]
enum Op {
    /// Back up version `v` of the model file.
    Backup(u8),
    /// Forget the snapshot at this position (oldest first).
    Forget(u8),
    Prune,
    Check,
    /// The next operation runs over a store that dies after this many calls.
    Crash(u8),
}

fn ops(data: &[u8]) -> Vec<Op> {
    data.chunks(2)
        .take(12)
        .map(|p| {
            let a = p.get(1).copied().unwrap_or(0);
            match p[0] % 5 {
                0 | 1 => Op::Backup(a),
                2 => Op::Forget(a),
                3 => Op::Prune,
                _ if p[0] % 10 == 4 => Op::Check,
                _ => Op::Crash(a),
            }
        })
        .collect()
}

/// Version `v` of the one file the model backs up: a few KiB that share most chunks with
/// other versions.
fn version(v: u8) -> Vec<u8> {
    let mut d = crate::chunker::splitmix_bytes(1, 12_000);
    let at = (v as usize * 997) % d.len();
    let end = (at + 100).min(d.len());
    d[at..end].fill(v);
    d.truncate(6_000 + (v as usize % 7) * 900);
    d
}

/// Model-based: arbitrary sequences of backup / forget (by policy or by id) / prune / check,
/// any of them over a store that dies after N calls. After every step the repository opens,
/// `check` passes, and every snapshot the engine confirmed (and that was not forgotten)
/// restores identical to the in-memory model of what was backed up.
pub fn model(data: &[u8]) {
    let mem = Arc::new(MemBackend::new());
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size: 512,
            avg_size: 1024,
            max_size: 4096,
            normalization: 1,
        },
        data_pack_size: 64 * 1024,
        tree_pack_size: 64 * 1024,
        kdf: KdfParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    Repository::init(mem.clone(), b"pw", &opts).expect("init in memory");
    let dir = tempfile_dir();
    let file = dir.join("db.sql");
    // Snapshot id → the version it holds, for snapshots the engine confirmed.
    let mut confirmed: Vec<(crate::Id, u8)> = Vec::new();
    let mut crash: Option<u64> = None;
    let mut clock = 1_800_000_000i64;
    for op in ops(data) {
        let store: Arc<dyn Backend> = match crash.take() {
            Some(n) => Arc::new(FaultBackend::new(
                mem.clone(),
                Faults {
                    dead_after: Some(n),
                    ..Default::default()
                },
            )),
            None => mem.clone(),
        };
        clock += 1000;
        let r = (|| -> crate::Result<()> {
            let repo = Arc::new(Repository::open(store, b"pw")?);
            repo.load_index()?;
            match op {
                Op::Backup(v) => {
                    std::fs::write(&file, version(v)).expect("temp file");
                    let o = crate::ops::backup::BackupOptions {
                        paths: vec![file.clone()],
                        host: "fuzz".into(),
                        threads: 1,
                        time: jiff::Timestamp::from_second(clock).ok(),
                        ..Default::default()
                    };
                    let res = crate::ops::backup::backup(
                        &repo,
                        o,
                        Arc::new(crate::progress::NoProgress),
                    )?;
                    confirmed.push((res.snapshot_id, v));
                }
                Op::Forget(n) => {
                    // The retention policy keeps the n % 4 newest (and snapshots past it go);
                    // n >= 128 names one snapshot to remove instead.
                    let snaps = repo.snapshots()?;
                    let gone: Vec<crate::Id> = if n >= 128 {
                        snaps
                            .get(n as usize % snaps.len().max(1))
                            .map(|(id, _)| vec![*id])
                            .unwrap_or_default()
                    } else {
                        let policy = crate::ops::forget::Policy {
                            last: i64::from(n % 4),
                            tags: vec![vec!["none".into()]],
                            ..Default::default()
                        };
                        let groups = crate::ops::forget::apply(
                            &snaps,
                            &policy,
                            crate::ops::forget::GroupBy::default(),
                            &jiff::tz::TimeZone::UTC,
                            &model_clock(),
                        )?;
                        groups
                            .iter()
                            .flat_map(|g| &g.decisions)
                            .filter(|d| !d.keep)
                            .map(|d| d.id)
                            .collect()
                    };
                    // Once asked to go, a snapshot is no longer promised (the store may die
                    // before or after it is deleted).
                    confirmed.retain(|(id, _)| !gone.contains(id));
                    crate::ops::forget::remove(&repo, &gone)?;
                }
                Op::Prune => {
                    let o = crate::ops::prune::PruneOptions {
                        grace: 500,
                        max_unused: crate::ops::prune::MaxUnused::Bytes(0),
                        now: Some(clock),
                        ..Default::default()
                    };
                    let p = crate::ops::prune::plan(&repo, &o, &crate::progress::NoProgress)?;
                    crate::ops::prune::run(&repo, &p, &o, &crate::progress::NoProgress)?;
                }
                Op::Check => {
                    // Over a store that may die: an error, or problems that name the failed
                    // read; never damage that is not there.
                    let mut problems =
                        crate::ops::check::check_with(&repo, &model_clock())?.problems;
                    problems.extend(
                        crate::ops::check::read_data(
                            &repo,
                            crate::ops::check::Subset::All,
                            &crate::progress::NoProgress,
                        )?
                        .problems,
                    );
                    for p in problems {
                        assert!(p.contains("injected fault"), "check over the store: {p}");
                    }
                }
                Op::Crash(_) => {}
            }
            Ok(())
        })();
        if let Op::Crash(n) = op {
            crash = Some(u64::from(n % 64));
        }
        if let Err(e) = r {
            assert!(
                format!("{e}").contains("injected fault"),
                "{op:?} failed without an injected fault: {e}"
            );
        }
        verify(&mem, &file, &confirmed);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The model dates its snapshots in the years ahead: none counts as from the future.
fn model_clock() -> crate::ops::select::Clock {
    crate::ops::select::Clock {
        now: jiff::Timestamp::now(),
        skew_secs: i64::MAX,
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "chunkbak-model-{}",
        hex::encode(crate::crypter::random_bytes::<8>())
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The repository opens, `check` finds nothing wrong, and each confirmed snapshot restores
/// the version it was given.
fn verify(mem: &Arc<MemBackend>, file: &std::path::Path, confirmed: &[(crate::Id, u8)]) {
    let repo = Repository::open(mem.clone(), b"pw").expect("opens after any crash");
    repo.load_index().expect("index loads");
    let report = crate::ops::check::check_with(&repo, &model_clock()).expect("check runs");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let snaps = repo.snapshots().expect("snapshots");
    for (id, v) in confirmed {
        let (_, s) = snaps
            .iter()
            .find(|(i, _)| i == id)
            .unwrap_or_else(|| panic!("confirmed snapshot {id} is gone"));
        // Restored through the restore operation, as a user would.
        let out = tempfile_dir();
        let o = crate::ops::restore::RestoreOptions {
            target: out.clone(),
            numeric_owner: true,
            threads: 1,
            ..Default::default()
        };
        let r = crate::ops::restore::restore(&repo, s.tree, &o, &crate::progress::NoProgress)
            .expect("restore of a confirmed snapshot");
        assert_eq!(r.errors, 0, "snapshot {id}: {:?}", r.warnings);
        let back = std::fs::read(out.join(file.strip_prefix("/").expect("absolute")))
            .expect("restored file");
        assert_eq!(back, version(*v), "snapshot {id}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// Hostile trees: names, kinds, link targets and duplicates as anyone holding the password
/// could write them, restored into a scratch folder next to a folder `outside` holding a
/// `victim`: whatever the tree, nothing outside the target is created, written or changed, and
/// nothing panics (format-spec 14).
pub fn restore_tree(data: &[u8]) {
    use crate::format::pack::BlobKind;
    use crate::format::tree::{Content, Node, NodeKind};
    let mem = Arc::new(MemBackend::new());
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    let repo = Repository::init(mem, b"pw", &opts).expect("init in memory");
    let scratch = tempfile_dir();
    let outside = scratch.join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    let victim = outside.join("victim");
    std::fs::write(&victim, b"victim").expect("victim");
    let target = scratch.join("target");
    let names: [&[u8]; 10] = [
        b"a", b"b", b"x", b"..", b".", b"", b"a/b", b"victim", b"outside", b"d\0",
    ];
    let abs = victim.to_string_lossy().into_owned();
    let targets: [&[u8]; 5] = [
        b"../outside",
        b"../../outside/victim",
        abs.as_bytes(),
        b"a",
        b"/",
    ];
    let saver = repo.blob_saver().expect("saver");
    let (chunk, _) = saver.save(BlobKind::Data, b"written").expect("chunk");
    let mut bytes = data.iter().copied();
    fn dir(
        it: &mut dyn Iterator<Item = u8>,
        saver: &crate::packer::BlobSaver,
        chunk: crate::BlobId,
        names: &[&[u8]],
        targets: &[&[u8]],
        depth: u32,
    ) -> crate::BlobId {
        let mut nodes = Vec::new();
        let count = it.next().unwrap_or(0) % 6;
        for _ in 0..count {
            let b = it.next().unwrap_or(0);
            let name = names[usize::from(b) % names.len()].to_vec();
            let mut n = Node {
                name,
                mode: 0o100644,
                nlink: 1,
                ..Node::default()
            };
            match (b >> 4) % 4 {
                0 => {
                    n.kind = NodeKind::File;
                    n.size = 7;
                    n.content = Content::Chunks(vec![chunk]);
                }
                1 => {
                    n.kind = NodeKind::Dir;
                    n.mode = 0o040755;
                    n.subtree =
                        (depth < 4).then(|| dir(it, saver, chunk, names, targets, depth + 1));
                }
                2 => {
                    n.kind = NodeKind::Symlink;
                    n.mode = 0o120777;
                    n.link_target =
                        targets[usize::from(it.next().unwrap_or(0)) % targets.len()].to_vec();
                }
                _ => {
                    n.kind = NodeKind::Fifo;
                    n.mode = 0o010644;
                }
            }
            nodes.push(n);
        }
        // Half the trees are in the format's order (so the restore walks them); the others
        // as they come, duplicates included (refused by the decoder).
        if it.next().unwrap_or(0) & 1 == 0 {
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes.dedup_by(|a, b| a.name == b.name);
        }
        saver
            .save(BlobKind::Tree, &TreeBlob::Dir(nodes).encode())
            .expect("tree")
            .0
    }
    let root = dir(&mut bytes, &saver, chunk, &names, &targets, 0);
    repo.write_index(saver.finish().expect("finish"))
        .expect("index");
    let ropts = crate::ops::restore::RestoreOptions {
        target: target.clone(),
        threads: 1,
        ..Default::default()
    };
    let _ = crate::ops::restore::restore(&repo, root, &ropts, &crate::progress::NoProgress);
    let mut top: Vec<String> = std::fs::read_dir(&scratch)
        .expect("scratch")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let out: Vec<String> = std::fs::read_dir(&outside)
        .expect("outside")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let intact = std::fs::read(&victim).ok() == Some(b"victim".to_vec());
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        top.iter().all(|n| n == "outside" || n == "target"),
        "created beside the target: {top:?}"
    );
    assert_eq!(out, ["victim"], "created outside the target");
    assert!(intact, "the victim outside the target was written");
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunker_parameters_are_valid() {
        for p in super::PARAMS {
            p.validate().expect("valid");
        }
    }
}
