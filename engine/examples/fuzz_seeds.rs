//! Writes the fuzz targets' seed corpora from real objects the engine writes:
//! `cargo run -p chunkbak-engine --example fuzz_seeds -- fuzz/seeds`. Sealed objects are
//! re-sealed with the fuzz key (`fuzzing::FUZZ_KEY`) so the fuzzer gets past authentication.

use std::path::Path;
use std::sync::Arc;

use chunkbak_engine::backend::mem::MemBackend;
use chunkbak_engine::backend::FileKind;
use chunkbak_engine::chunker::{splitmix_bytes, ChunkerParams};
use chunkbak_engine::compressor::compress;
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::format::pack::BlobKind;
use chunkbak_engine::format::{envelope, ObjectKind};
use chunkbak_engine::fuzzing;
use chunkbak_engine::ops::backup::{backup, BackupOptions};
use chunkbak_engine::packer::Packer;
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::Repository;

fn put(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), data).unwrap();
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    let out = Path::new(&out);
    let tmp = tempfile::tempdir().unwrap();

    // A small repository: two backups of a tree with text, binary and empty files.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "hello fuzz\n".repeat(300)).unwrap();
    std::fs::write(src.join("sub/b.bin"), splitmix_bytes(3, 40_000)).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    let mem = Arc::new(MemBackend::new());
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
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
    Repository::init(mem.clone(), b"pw", &opts).unwrap();
    let repo = Arc::new(Repository::open(mem.clone(), b"pw").unwrap());
    repo.load_index().unwrap();
    for _ in 0..2 {
        let o = BackupOptions {
            paths: vec![src.clone()],
            host: "seeds".into(),
            ..Default::default()
        };
        backup(&repo, o, Arc::new(NoProgress)).unwrap();
        std::fs::write(src.join("a.txt"), "changed\n".repeat(500)).unwrap();
    }

    let fk = fuzzing::key();
    let mk = repo.key();
    for ((kind, name), bytes) in mem.objects() {
        let short = &name[..name.len().min(12)];
        let ok = match kind {
            FileKind::Config => Some(ObjectKind::Config),
            FileKind::Snapshot => Some(ObjectKind::Snapshot),
            FileKind::Index => Some(ObjectKind::Index),
            _ => None,
        };
        if let Some(ok) = ok {
            let plain = envelope::open(mk, ok, &bytes, &name).unwrap();
            put(out, "objects", &format!("{ok:?}-{short}"), &plain);
            put(
                out,
                "envelope",
                &format!("{ok:?}-{short}"),
                &envelope::seal(&fk, ok, &plain),
            );
        }
        if kind == FileKind::Key {
            put(out, "objects", &format!("key-{short}"), &bytes);
        }
    }
    // Tree blobs, as stored (decrypted).
    for (_, s) in repo.snapshots().unwrap() {
        let plain = repo.read_blob(&s.tree).unwrap();
        put(
            out,
            "objects",
            &format!("tree-{}", &s.tree.to_hex()[..12]),
            &plain,
        );
    }

    // Packs sealed with the fuzz key: data and tree.
    for (i, kind) in [BlobKind::Data, BlobKind::Tree].into_iter().enumerate() {
        let mut p = Packer::new(&fk, kind, tmp.path()).unwrap();
        for j in 0..4u64 {
            let raw = if j % 2 == 0 {
                splitmix_bytes(j, 3000)
            } else {
                b"abc".repeat(1000)
            };
            let (c, stored) = compress(&raw, 3);
            let id = repo.hasher().id(&raw);
            p.add(id, c, raw.len() as u32, stored).unwrap();
        }
        let (_, path) = p.finish().unwrap();
        put(
            out,
            "pack_header",
            &format!("pack-{i}"),
            &std::fs::read(&path).unwrap(),
        );
    }

    // Blobs: compression flag, declared length, counter, stored bytes.
    for (i, raw) in [b"xyz".repeat(2000), splitmix_bytes(9, 500)]
        .iter()
        .enumerate()
    {
        let (c, stored) = compress(raw, 3);
        let mut seed = vec![c as u8];
        seed.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        seed.extend_from_slice(&0u64.to_le_bytes());
        seed.extend_from_slice(&stored);
        put(out, "blob", &format!("blob-{i}"), &seed);
    }

    // Deltas: base length, base, declared length, frame.
    for (i, (base, raw)) in [
        (
            b"row 1\tPAID\n".repeat(300),
            [
                b"row 1\tPAID\n".repeat(150),
                b"row 2\tNEW\n".to_vec(),
                b"row 1\tPAID\n".repeat(150),
            ]
            .concat(),
        ),
        (splitmix_bytes(3, 2000), splitmix_bytes(3, 1000)),
    ]
    .iter()
    .enumerate()
    {
        let frame = chunkbak_engine::compressor::compress_delta(raw, base, 3).unwrap();
        let mut seed = (base.len() as u16).to_le_bytes().to_vec();
        seed.extend_from_slice(base);
        seed.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        seed.extend_from_slice(&frame);
        put(out, "delta", &format!("delta-{i}"), &seed);
    }

    // Chunker and round trip: seed, read sizes, data.
    for (i, data) in [
        splitmix_bytes(1, 5000),
        b"line of text\n".repeat(400),
        vec![0; 3000],
    ]
    .iter()
    .enumerate()
    {
        let mut seed = (i as u64 * 77).to_le_bytes().to_vec();
        seed.extend_from_slice(&[3, 1, 200, 7]);
        seed.extend_from_slice(data);
        put(out, "chunker", &format!("input-{i}"), &seed);
        put(out, "roundtrip", &format!("input-{i}"), &seed);
    }

    // Model: op pairs (op, argument). Backup twice, check, prune; a crash in a backup;
    // forget then prune after a crash.
    for (i, ops) in [
        vec![0u8, 1, 0, 2, 4, 0, 3, 0],
        vec![0, 1, 9, 5, 0, 2, 4, 0],
        vec![0, 1, 1, 3, 2, 0, 9, 20, 3, 0, 4, 0],
    ]
    .iter()
    .enumerate()
    {
        put(out, "model", &format!("ops-{i}"), ops);
    }
    eprintln!("seeds written under {}", out.display());
}
