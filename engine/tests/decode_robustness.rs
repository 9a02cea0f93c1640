//! Decoders never panic: any bytes (random, or a valid object with bytes flipped, cut or
//! appended) give a value or a `Corrupt` error that names the object.

use chunkbak_engine::crypter::MasterKey;
use chunkbak_engine::format::index::IndexFile;
use chunkbak_engine::format::key::KeyFile;
use chunkbak_engine::format::pack::decode_header;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::format::tree::TreeBlob;
use chunkbak_engine::format::{config::Config, envelope, ObjectKind};
use proptest::prelude::*;

fn valid() -> Vec<(String, Vec<u8>)> {
    let v: std::collections::BTreeMap<String, String> =
        serde_json::from_str(include_str!("vectors.json")).unwrap();
    v.into_iter()
        .filter(|(k, _)| !k.starts_with("cuts") && !k.starts_with("gear"))
        .map(|(k, x)| (k, hex::decode(x).unwrap()))
        .collect()
}

fn mk() -> MasterKey {
    let mut m = [0u8; 32];
    for (i, b) in m.iter_mut().enumerate() {
        *b = i as u8;
    }
    MasterKey::from_material(m)
}

fn all_decoders(bytes: &[u8]) {
    let k = mk();
    let name = "object-under-test";
    for kind in [ObjectKind::DataPack, ObjectKind::TreePack] {
        if let Err(e) = decode_header(&k, kind, bytes, name) {
            assert!(e.to_string().contains(name), "{e}");
        }
    }
    for kind in [ObjectKind::Config, ObjectKind::Snapshot, ObjectKind::Index] {
        if let Err(e) = envelope::open(&k, kind, bytes, name) {
            assert!(e.to_string().contains(name), "{e}");
        }
    }
    let _ = IndexFile::decode(bytes, name);
    let _ = TreeBlob::decode(bytes, name);
    let _ = Snapshot::decode(bytes, name);
    let _ = Config::decode(bytes, name);
    if let Ok(kf) = KeyFile::decode(bytes, name) {
        // Opening runs argon2 with the parameters read: bounded by KeyFile::decode.
        if kf.params.m_cost_kib <= 1024 && kf.params.t_cost <= 2 {
            let _ = kf.open(b"password");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        all_decoders(&bytes);
    }

    #[test]
    fn mutated_objects_never_panic(which in 0usize..32, pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
        let objs = valid();
        let (_, mut b) = objs[which % objs.len()].clone();
        if !b.is_empty() {
            let p = pos % b.len();
            b[p] ^= val | 1;
            all_decoders(&b);
            b.truncate(cut % (b.len() + 1));
            all_decoders(&b);
        }
        b.extend_from_slice(&extra);
        all_decoders(&b);
    }
}

#[test]
fn inner_payloads_with_huge_counts_are_rejected_cheaply() {
    // An index declaring 2^32-1 packs in 8 bytes must fail without allocating for them.
    let mut b = vec![0u8, 0, 0, 0];
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    let e = IndexFile::decode(&b, "index/x").unwrap_err().to_string();
    assert!(e.contains("index/x") && e.contains("count"), "{e}");
    // A tree claiming a 2^60-entry vector.
    let mut t = vec![1u8, 0, 0, 0, 0];
    t.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(TreeBlob::decode(&t, "tree/x").is_err());
}
