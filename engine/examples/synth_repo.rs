//! Writes a local repository of many small blobs, for measuring prune and the index at scale
//! (`scripts/prune-scale.sh`, `scripts/index-scale.sh`): `synth_repo DIR BLOBS [PACK_SIZE
//! [BLOBS_PER_PACK [DIRS]]]` (a small pack size gives more blobs per pack than real 1 MiB
//! chunks do; BLOBS_PER_PACK closes each pack after that many blobs: 32, as 32 MiB packs of
//! 1 MiB chunks, gives a real repository's number of packs). Password: "bench".
//!
//! Two snapshots, each with its own half of the blobs (1000 files of BLOBS/2000 chunks each);
//! the script forgets one, so a prune finds half of the packs unused. DIRS: each snapshot also
//! holds DIRS/2 directories of one file of one chunk (a tree and a chunk each, beyond BLOBS),
//! as a fleet's hosts hold millions of directories.

use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::index::PackEntry;
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::format::pack::BlobKind;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::format::tree::{Node, NodeKind, Timespec};
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::Repository;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let blobs: u64 = args[2].parse().unwrap();
    let mut opts = InitOptions {
        kdf: KdfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    if let Some(size) = args.get(3) {
        opts.data_pack_size = size.parse().unwrap();
    }
    let repo = Repository::init(Arc::new(LocalBackend::new(dir)), b"bench", &opts).unwrap();
    let per_pack: u64 = args.get(4).map_or(0, |n| n.parse().unwrap());
    let dirs: u64 = args.get(5).map_or(0, |n| n.parse().unwrap());
    let files = 1000u64;
    let per_file = blobs / 2 / files;
    // Packs are indexed as they pile up, in files of at most 100,000 blobs (as prune writes
    // them; backups write smaller ones), and each file's blobs go through a saver of its own:
    // nothing held grows with BLOBS, so 100 million blobs fit in a few hundred MiB.
    let mut batch = Vec::new();
    let mut in_batch = 0;
    let mut index = |packs: Vec<PackEntry>, last: bool| {
        for p in packs {
            in_batch += p.blobs.len();
            batch.push(p);
            if in_batch >= 100_000 {
                repo.write_index(std::mem::take(&mut batch)).unwrap();
                in_batch = 0;
            }
        }
        if last {
            repo.write_index(std::mem::take(&mut batch)).unwrap();
            in_batch = 0;
        }
    };
    for half in 0..2u64 {
        let mut nodes = Vec::new();
        for f in 0..files {
            let saver = repo.private_saver().unwrap();
            let mut chunks = Vec::with_capacity(per_file as usize);
            for c in 0..per_file {
                // 64 bytes, unique per blob.
                let n = (half * files + f) * per_file + c;
                let data: Vec<u8> = (0..8u64)
                    .flat_map(|i| (n ^ (i << 56)).to_le_bytes())
                    .collect();
                chunks.push(saver.save(BlobKind::Data, &data).unwrap().0);
                if per_pack > 0 && (c + 1) % per_pack == 0 {
                    index(saver.finish().unwrap(), false);
                }
            }
            nodes.push(Node {
                name: format!("f{f:04}").into_bytes(),
                kind: NodeKind::File,
                mode: 0o100644,
                size: per_file * 64,
                content: repo.save_content(&saver, chunks).unwrap(),
                ..Default::default()
            });
            index(saver.finish().unwrap(), false);
        }
        // Directories of one file of one chunk, each chunk unique (numbered past the files').
        let saver = repo.private_saver().unwrap();
        for d in 0..dirs / 2 {
            let n = 2 * files * per_file + half * dirs + d;
            let data: Vec<u8> = (0..8u64)
                .flat_map(|i| (n ^ (i << 56)).to_le_bytes())
                .collect();
            let chunk = saver.save(BlobKind::Data, &data).unwrap().0;
            let file = Node {
                name: b"f".to_vec(),
                kind: NodeKind::File,
                mode: 0o100644,
                size: 64,
                content: repo.save_content(&saver, vec![chunk]).unwrap(),
                ..Default::default()
            };
            nodes.push(Node {
                name: format!("d{d:08}").into_bytes(),
                kind: NodeKind::Dir,
                mode: 0o40755,
                subtree: Some(repo.save_dir(&saver, vec![file]).unwrap()),
                ..Default::default()
            });
            if (d + 1) % 50_000 == 0 {
                index(saver.finish().unwrap(), false);
            }
        }
        index(saver.finish().unwrap(), false);
        // Entries in name order (format-spec 8.2): the directories' `d…` before the files' `f…`.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let saver = repo.private_saver().unwrap();
        let root = repo.save_dir(&saver, nodes).unwrap();
        let top = repo
            .save_dir(
                &saver,
                vec![Node {
                    name: format!("half{half}").into_bytes(),
                    kind: NodeKind::Dir,
                    mode: 0o40755,
                    subtree: Some(root),
                    ..Default::default()
                }],
            )
            .unwrap();
        index(saver.finish().unwrap(), true);
        let id = repo
            .write_snapshot(&Snapshot {
                time: Timespec {
                    // 2026-01-01: in the past, so check does not flag it as from the future.
                    secs: 1_767_225_600 + half as i64,
                    nanos: 0,
                },
                host: format!("synth{half}"),
                paths: vec![format!("/half{half}").into_bytes()],
                tree: top,
                ..Default::default()
            })
            .unwrap();
        println!("snapshot {} with {} blobs", id.to_hex(), files * per_file);
    }
}
