//! Test vectors of format-spec.md: every value here is printed in the spec's appendix, and this
//! test fails if the code, a dependency (fastcdc's gear table, zstd, BLAKE3, AES-GCM, argon2) or
//! the spec drifts. Regenerate the JSON with `CHUNKBAK_WRITE_VECTORS=1 cargo test --test vectors`
//! only together with a format version bump.

use std::collections::BTreeMap;

use chunkbak_engine::backend::{LockMode, ObjectLock};
use chunkbak_engine::chunker::{splitmix_bytes, Chunker, ChunkerParams};
use chunkbak_engine::compressor::Compression;
use chunkbak_engine::crypter::{DedupKey, MasterKey, CTX_ENC, CTX_GEAR, CTX_ID};
use chunkbak_engine::format::config::Config;
use chunkbak_engine::format::envelope;
use chunkbak_engine::format::index::{IndexFile, Mark, PackEntry};
use chunkbak_engine::format::key::{self, KdfParams, KeyFile};
use chunkbak_engine::format::pack::{decode_header, BlobKind};
use chunkbak_engine::format::tree::{Content, Node, NodeKind, Timespec, TreeBlob};
use chunkbak_engine::format::ObjectKind;
use chunkbak_engine::packer::Packer;
use chunkbak_engine::Id;

fn material() -> [u8; 32] {
    let mut m = [0u8; 32];
    for (i, b) in m.iter_mut().enumerate() {
        *b = i as u8;
    }
    m
}

fn compute() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let mk = MasterKey::from_material(material());
    // The vectors use the same 32 bytes as master key material and as dedup secret.
    let dk = DedupKey::from_secret(&material());
    v.insert("master_material".into(), hex::encode(material()));
    v.insert(
        "enc_key".into(),
        hex::encode(blake3::derive_key(CTX_ENC, &material())),
    );
    v.insert(
        "id_key".into(),
        hex::encode(blake3::derive_key(CTX_ID, &material())),
    );
    v.insert("gear_seed".into(), format!("{:#018x}", dk.gear_seed()));
    let _ = CTX_GEAR;

    let sm = splitmix_bytes(0, 32);
    v.insert("splitmix_seed0_first32".into(), hex::encode(&sm));

    // Chunk cut points over 1 MiB of SplitMix64(seed 1) data, small parameters.
    let small = ChunkerParams {
        min_size: 16384,
        avg_size: 65536,
        max_size: 262144,
        normalization: 1,
    };
    let data = splitmix_bytes(1, 1 << 20);
    let c = Chunker::new(small, dk.gear_seed()).unwrap();
    v.insert("cuts_small_1MiB".into(), join(&c.cut_all(&data)));
    let ck = dk.chunker(small, true).unwrap();
    v.insert("cuts_small_1MiB_keyed".into(), join(&ck.cut_all(&data)));
    v.insert(
        "gear_table_first4".into(),
        dk.gear_table()[..4]
            .iter()
            .map(|g| format!("{g:#018x}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    let c0 = Chunker::new(small, 0).unwrap();
    v.insert("cuts_small_1MiB_seed0".into(), join(&c0.cut_all(&data)));
    // Default parameters over 16 MiB.
    let data16 = splitmix_bytes(2, 16 << 20);
    let cd = Chunker::new(ChunkerParams::default(), dk.gear_seed()).unwrap();
    v.insert("cuts_default_16MiB".into(), join(&cd.cut_all(&data16)));

    v.insert(
        "blob_id_chunkbak".into(),
        dk.hasher().id(b"chunkbak").to_hex(),
    );
    v.insert("blob_id_empty".into(), dk.hasher().id(b"").to_hex());

    let cipher = mk.object_cipher(&[0x42; 32]);
    v.insert(
        "subkey_salt42".into(),
        hex::encode(
            blake3::keyed_hash(&blake3::derive_key(CTX_ENC, &material()), &[0x42; 32]).as_bytes(),
        ),
    );
    v.insert(
        "aead_hello_counter7".into(),
        hex::encode(cipher.seal(7, &ObjectKind::DataPack.prefix(), b"hello")),
    );

    let env = envelope::seal_with_salt(&mk, ObjectKind::Snapshot, b"payload", [0x24; 32]);
    v.insert("envelope_snapshot_payload".into(), hex::encode(&env));

    // A pack with two data blobs.
    let dir = tempfile::tempdir().unwrap();
    let mut p = Packer::with_salt(&mk, BlobKind::Data, dir.path(), [0x11; 32]).unwrap();
    let b1 = b"hello".to_vec();
    let b2 = "chunkbak ".repeat(12).into_bytes();
    let (c1, s1) = chunkbak_engine::compressor::compress(&b1, 3);
    p.add(dk.hasher().id(&b1), c1, b1.len() as u32, s1).unwrap();
    let (c2, s2) = chunkbak_engine::compressor::compress(&b2, 3);
    p.add(dk.hasher().id(&b2), c2, b2.len() as u32, s2).unwrap();
    let (entry, path) = p.finish().unwrap();
    let pack = std::fs::read(path).unwrap();
    v.insert("pack_two_blobs".into(), hex::encode(&pack));
    v.insert("pack_two_blobs_id".into(), entry.id.to_hex());
    assert_eq!(Id::of_object(&pack), entry.id);

    let idx = IndexFile {
        supersedes: vec![],
        packs: vec![PackEntry { ..entry.clone() }],
    };
    v.insert("index_payload".into(), hex::encode(idx.encode()));
    // Written by prune: replaces another index file and marks the pack for deletion.
    let marked = IndexFile {
        supersedes: vec![Id([0x55; 32])],
        packs: vec![PackEntry {
            mark: Some(Mark {
                at: 1_800_000_000,
                delete_after: 1_800_086_400,
            }),
            ..entry.clone()
        }],
    };
    v.insert("index_payload_marked".into(), hex::encode(marked.encode()));

    // A pack with one delta blob: "chunkbak " x 12 + "delta!" on the base "chunkbak " x 12
    // (the second blob of pack_two_blobs), zstd level 3 with the base as prefix.
    let mut p = Packer::with_salt(&mk, BlobKind::Data, dir.path(), [0x13; 32]).unwrap();
    let d = [b2.as_slice(), b"delta!"].concat();
    let frame = chunkbak_engine::compressor::compress_delta(&d, &b2, 3).unwrap();
    v.insert("delta_frame".into(), hex::encode(&frame));
    p.add_with_base(
        dk.hasher().id(&d),
        Compression::Delta,
        d.len() as u32,
        frame,
        Some(dk.hasher().id(&b2)),
    )
    .unwrap();
    let (dentry, path) = p.finish().unwrap();
    let dpack = std::fs::read(path).unwrap();
    v.insert("pack_delta".into(), hex::encode(&dpack));
    let didx = IndexFile {
        supersedes: vec![],
        packs: vec![dentry],
    };
    v.insert("index_payload_delta".into(), hex::encode(didx.encode()));

    let kf = key::seal_with_salt(
        &mk,
        b"password",
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        [0x33; 32],
    )
    .unwrap();
    v.insert("key_file_password".into(), hex::encode(&kf));

    let config = Config {
        version: 1,
        repo_id: [0x66; 32],
        chunk_min: 262_144,
        chunk_avg: 1_048_576,
        chunk_max: 4_194_304,
        chunk_normalization: 1,
        data_pack_size: 32 << 20,
        tree_pack_size: 4 << 20,
        compression_level: 3,
        created: 1_800_000_000,
        data_storage_class: 4,
        meta_storage_class: 0,
        dedup_secret: [0x77; 32],
        object_lock: None,
        keyed_gear: false,
    };
    v.insert("config_payload".into(), hex::encode(config.encode()));
    let locked = Config {
        object_lock: Some(ObjectLock {
            mode: LockMode::Compliance,
            days: 30,
        }),
        ..config.clone()
    };
    v.insert("config_payload_locked".into(), hex::encode(locked.encode()));
    let keyed = Config {
        keyed_gear: true,
        ..config.clone()
    };
    v.insert("config_payload_keyed".into(), hex::encode(keyed.encode()));

    let node = Node {
        name: b"a.txt".to_vec(),
        kind: NodeKind::File,
        mode: 0o100644,
        uid: 1000,
        gid: 1000,
        user: Some("alice".into()),
        group: None,
        mtime: Timespec {
            secs: 1_700_000_000,
            nanos: 5,
        },
        ctime: Timespec {
            secs: 1_700_000_001,
            nanos: 0,
        },
        size: 5,
        inode: 42,
        device: 7,
        nlink: 1,
        rdev: 0,
        link_target: vec![],
        xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        content: Content::Chunks(vec![dk.hasher().id(b"hello")]),
        subtree: None,
    };
    v.insert(
        "tree_one_file".into(),
        hex::encode(TreeBlob::Dir(vec![node.clone()]).encode()),
    );

    // Every node kind that carries more than a file: a directory, a character device, a file
    // with Indirect content, a symlink (names in increasing order).
    let base = Node {
        user: None,
        xattrs: vec![],
        size: 0,
        inode: 0,
        device: 0,
        content: Content::Chunks(vec![]),
        ..node.clone()
    };
    let kinds = vec![
        Node {
            name: b"d".to_vec(),
            kind: NodeKind::Dir,
            mode: 0o040755,
            subtree: Some(Id([0x51; 32])),
            ..base.clone()
        },
        Node {
            name: b"dev".to_vec(),
            kind: NodeKind::CharDevice,
            mode: 0o020666,
            rdev: 0x103,
            ..base.clone()
        },
        Node {
            name: b"f".to_vec(),
            kind: NodeKind::File,
            size: 1 << 40,
            content: Content::Indirect(vec![Id([0x61; 32]), Id([0x62; 32])]),
            ..base.clone()
        },
        Node {
            name: b"l".to_vec(),
            kind: NodeKind::Symlink,
            mode: 0o120777,
            link_target: b"../t".to_vec(),
            ..base.clone()
        },
    ];
    v.insert(
        "tree_node_kinds".into(),
        hex::encode(TreeBlob::Dir(kinds).encode()),
    );
    v.insert(
        "tree_split".into(),
        hex::encode(TreeBlob::Split(vec![Id([0x31; 32]), Id([0x32; 32])]).encode()),
    );
    v.insert(
        "tree_chunk_list".into(),
        hex::encode(TreeBlob::ChunkList(vec![Id([0x41; 32]), Id([0x42; 32])]).encode()),
    );

    // A snapshot payload, and whole envelopes of a config, an index and a compressible payload.
    let snap = chunkbak_engine::format::snapshot::Snapshot {
        time: Timespec {
            secs: 1_800_000_000,
            nanos: 500_000_000,
        },
        host: "web1".into(),
        username: "root".into(),
        uid: 0,
        gid: 0,
        paths: vec![b"/srv".to_vec()],
        tags: vec!["nightly".into()],
        excludes: vec!["*.log".into()],
        tree: Id([0x99; 32]),
        parent: Some(Id([0xaa; 32])),
        program_version: "0.1.0".into(),
        ..Default::default()
    };
    v.insert("snapshot_payload".into(), hex::encode(snap.encode()));
    v.insert(
        "config_object".into(),
        hex::encode(envelope::seal_with_salt(
            &mk,
            ObjectKind::Config,
            &config.encode(),
            [0x25; 32],
        )),
    );
    v.insert(
        "index_object".into(),
        hex::encode(envelope::seal_with_salt(
            &mk,
            ObjectKind::Index,
            &idx.encode(),
            [0x26; 32],
        )),
    );
    v.insert(
        "envelope_zstd".into(),
        hex::encode(envelope::seal_with_salt(
            &mk,
            ObjectKind::Snapshot,
            "chunkbak ".repeat(40).as_bytes(),
            [0x27; 32],
        )),
    );

    // A tree pack holding tree_one_file.
    let tree_blob = TreeBlob::Dir(vec![node]).encode();
    let mut tp = Packer::with_salt(&mk, BlobKind::Tree, dir.path(), [0x12; 32]).unwrap();
    let (ct, st) = chunkbak_engine::compressor::compress(&tree_blob, 3);
    tp.add(dk.hasher().id(&tree_blob), ct, tree_blob.len() as u32, st)
        .unwrap();
    let (_, path) = tp.finish().unwrap();
    v.insert(
        "pack_tree".into(),
        hex::encode(std::fs::read(path).unwrap()),
    );

    // A delta chain two deep: d2 on d (itself a delta on b2).
    let d2 = [d.as_slice(), b" and again"].concat();
    let frame2 = chunkbak_engine::compressor::compress_delta(&d2, &d, 3).unwrap();
    let mut p = Packer::with_salt(&mk, BlobKind::Data, dir.path(), [0x14; 32]).unwrap();
    p.add_with_base(
        dk.hasher().id(&d2),
        Compression::Delta,
        d2.len() as u32,
        frame2,
        Some(dk.hasher().id(&d)),
    )
    .unwrap();
    let (_, path) = p.finish().unwrap();
    v.insert(
        "pack_delta_depth2".into(),
        hex::encode(std::fs::read(path).unwrap()),
    );
    v
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn vectors_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.json")
}

#[test]
fn vectors_match_code_and_spec() {
    let got = compute();
    if std::env::var_os("CHUNKBAK_WRITE_VECTORS").is_some() {
        std::fs::write(vectors_path(), serde_json::to_string_pretty(&got).unwrap()).unwrap();
    }
    let want: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(vectors_path()).unwrap()).unwrap();
    assert_eq!(
        got, want,
        "the format changed: bump the version and update format-spec.md"
    );
    // Every vector is printed in the spec (long hex values wrapped at 64 characters per line).
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../format-spec.md"),
    )
    .unwrap();
    let flat: String = spec.split_whitespace().collect();
    for (k, val) in &want {
        assert!(
            flat.contains(&val.replace(char::is_whitespace, "")),
            "format-spec.md lacks vector {k}"
        );
    }
}

#[test]
fn vectors_decode() {
    let mk = MasterKey::from_material(material());
    let v = compute();
    let pack = hex::decode(&v["pack_two_blobs"]).unwrap();
    let (salt, recs) = decode_header(&mk, ObjectKind::DataPack, &pack, "vector").unwrap();
    assert_eq!(salt, [0x11; 32]);
    assert_eq!(recs.len(), 2);
    let env = hex::decode(&v["envelope_snapshot_payload"]).unwrap();
    assert_eq!(
        envelope::open(&mk, ObjectKind::Snapshot, &env, "v").unwrap(),
        b"payload"
    );
    let kf = KeyFile::decode(&hex::decode(&v["key_file_password"]).unwrap(), "k").unwrap();
    assert_eq!(
        kf.open(b"password").unwrap().unwrap().material(),
        &material()
    );
    assert!(kf.open(b"Password").unwrap().is_none());
    let idx = IndexFile::decode(&hex::decode(&v["index_payload"]).unwrap(), "i").unwrap();
    assert_eq!(idx.packs[0].blobs, recs);
    let c = Config::decode(&hex::decode(&v["config_payload"]).unwrap(), "c").unwrap();
    assert_eq!(c.dedup_secret, [0x77; 32]);
    assert_eq!(c.object_lock, None);
    let c = Config::decode(&hex::decode(&v["config_payload_locked"]).unwrap(), "c").unwrap();
    assert_eq!(
        c.object_lock,
        Some(ObjectLock {
            mode: LockMode::Compliance,
            days: 30
        })
    );
    let c = Config::decode(&hex::decode(&v["config_payload_keyed"]).unwrap(), "c").unwrap();
    assert!(c.keyed_gear && c.object_lock.is_none());
    // An extension record this version does not know is refused, not skipped.
    let mut unknown = hex::decode(&v["config_payload"]).unwrap();
    unknown.extend_from_slice(&[9, 1, 0, 0, 0, 0]);
    assert!(Config::decode(&unknown, "c")
        .unwrap_err()
        .to_string()
        .contains("does not know"));
    let t = TreeBlob::decode(&hex::decode(&v["tree_one_file"]).unwrap(), "t").unwrap();
    assert!(matches!(t, TreeBlob::Dir(ref n) if n[0].name == b"a.txt"));

    // The delta pack: its record names the base, and the blob decodes through it.
    let b2 = "chunkbak ".repeat(12).into_bytes();
    let dpack = hex::decode(&v["pack_delta"]).unwrap();
    let (salt, drecs) = decode_header(&mk, ObjectKind::DataPack, &dpack, "vector").unwrap();
    assert_eq!(drecs.len(), 1);
    let r = drecs[0];
    assert_eq!(r.compression, Compression::Delta);
    assert_eq!(r.base, Some(recs[1].id));
    let stored = mk
        .object_cipher(&salt)
        .open(
            u64::from(r.offset),
            &ObjectKind::DataPack.prefix(),
            &dpack[r.offset as usize..r.end() as usize],
        )
        .unwrap();
    assert_eq!(hex::encode(&stored), v["delta_frame"]);
    let plain =
        chunkbak_engine::compressor::decompress_delta(&stored, &b2, r.raw_len as usize, "v")
            .unwrap();
    assert_eq!(plain, [b2.as_slice(), b"delta!"].concat());
    let didx = IndexFile::decode(&hex::decode(&v["index_payload_delta"]).unwrap(), "i").unwrap();
    assert_eq!(didx.packs[0].blobs, drecs);
    let (_, n) = IndexFile::peek(&hex::decode(&v["index_payload_delta"]).unwrap(), "i").unwrap();
    assert_eq!(n, 1);

    // The depth-2 chain decodes from the whole blob up.
    let d1 = plain;
    let p2 = hex::decode(&v["pack_delta_depth2"]).unwrap();
    let (salt2, r2) = decode_header(&mk, ObjectKind::DataPack, &p2, "vector").unwrap();
    assert_eq!(r2[0].base, Some(dk_of().hasher().id(&d1)));
    let stored2 = mk
        .object_cipher(&salt2)
        .open(
            u64::from(r2[0].offset),
            &ObjectKind::DataPack.prefix(),
            &p2[r2[0].offset as usize..r2[0].end() as usize],
        )
        .unwrap();
    let top =
        chunkbak_engine::compressor::decompress_delta(&stored2, &d1, r2[0].raw_len as usize, "v")
            .unwrap();
    assert_eq!(top, [d1.as_slice(), b" and again"].concat());

    // Node kinds, Split, ChunkList, the snapshot payload and the whole objects decode.
    let t = TreeBlob::decode(&hex::decode(&v["tree_node_kinds"]).unwrap(), "t").unwrap();
    let TreeBlob::Dir(k) = t else {
        panic!("not a Dir")
    };
    assert_eq!(k.len(), 4);
    assert_eq!((k[1].kind, k[1].rdev), (NodeKind::CharDevice, 0x103));
    assert!(matches!(k[2].content, Content::Indirect(ref l) if l.len() == 2));
    assert_eq!(k[3].link_target, b"../t");
    assert!(matches!(
        TreeBlob::decode(&hex::decode(&v["tree_split"]).unwrap(), "t").unwrap(),
        TreeBlob::Split(ref p) if p.len() == 2
    ));
    assert!(matches!(
        TreeBlob::decode(&hex::decode(&v["tree_chunk_list"]).unwrap(), "t").unwrap(),
        TreeBlob::ChunkList(ref p) if p.len() == 2
    ));
    let snap = chunkbak_engine::format::snapshot::Snapshot::decode(
        &hex::decode(&v["snapshot_payload"]).unwrap(),
        "s",
    )
    .unwrap();
    assert_eq!((snap.host.as_str(), snap.time.nanos), ("web1", 500_000_000));
    let cobj = hex::decode(&v["config_object"]).unwrap();
    let c = Config::decode(
        &envelope::open(&mk, ObjectKind::Config, &cobj, "config").unwrap(),
        "config",
    )
    .unwrap();
    assert_eq!(c.repo_id, [0x66; 32]);
    let iobj = hex::decode(&v["index_object"]).unwrap();
    let i = IndexFile::decode(
        &envelope::open(&mk, ObjectKind::Index, &iobj, "index").unwrap(),
        "index",
    )
    .unwrap();
    assert_eq!(i.packs[0].blobs, recs);
    let z = hex::decode(&v["envelope_zstd"]).unwrap();
    assert_eq!(
        envelope::open(&mk, ObjectKind::Snapshot, &z, "z").unwrap(),
        "chunkbak ".repeat(40).as_bytes()
    );
    let tp = hex::decode(&v["pack_tree"]).unwrap();
    let (_, tr) = decode_header(&mk, ObjectKind::TreePack, &tp, "tree pack").unwrap();
    assert_eq!(tr.len(), 1);
}

fn dk_of() -> DedupKey {
    DedupKey::from_secret(&material())
}
