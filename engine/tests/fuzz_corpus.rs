//! Replays the fuzz targets' committed seeds (`fuzz/seeds/`, made by
//! `cargo run -p chunkbak-engine --example fuzz_seeds -- fuzz/seeds`), their minimized corpora
//! (`fuzz/corpus/`, grown by `fuzz/run.sh` and shrunk by `cargo fuzz cmin`) and every
//! regression input (`fuzz/regressions/TARGET/NAME`, a crash the fuzzer found, named after what
//! it guards) through the same code the fuzz targets run, as ordinary tests on stable.

use std::path::{Path, PathBuf};

use chunkbak_engine::fuzzing;

fn inputs(target: &str) -> Vec<PathBuf> {
    inputs_in(target, &["seeds", "corpus", "regressions"])
}

fn inputs_in(target: &str, dirs: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in dirs {
        if let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) {
            out.extend(rd.map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for {target}: run the fuzz_seeds example"
    );
    for p in files {
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} fails", p.display());
    }
}

#[test]
fn pack_header() {
    replay("pack_header", fuzzing::pack_header);
}

#[test]
fn envelope() {
    replay("envelope", fuzzing::envelope);
}

#[test]
fn objects() {
    replay("objects", fuzzing::objects);
}

#[test]
fn blob() {
    replay("blob", fuzzing::blob);
}

#[test]
fn chunker() {
    replay("chunker", fuzzing::chunker);
}

#[test]
fn roundtrip() {
    replay("roundtrip", fuzzing::roundtrip);
}

#[test]
fn model() {
    replay("model", fuzzing::model);
}

/// The seeds reach past authentication: a sealed seed opens with the fuzz key, so mutations
/// exercise the decoders behind it.
#[test]
fn sealed_seeds_open_with_the_fuzz_key() {
    use chunkbak_engine::format::{envelope, pack, ObjectKind};
    let k = fuzzing::key();
    let mut opened = 0;
    for p in inputs_in("envelope", &["seeds"]) {
        let d = std::fs::read(&p).unwrap();
        if [ObjectKind::Config, ObjectKind::Snapshot, ObjectKind::Index]
            .into_iter()
            .any(|kind| envelope::open(&k, kind, &d, "seed").is_ok())
        {
            opened += 1;
        }
    }
    assert!(opened >= 3, "{opened} envelope seeds open");
    for p in inputs_in("pack_header", &["seeds"]) {
        let d = std::fs::read(&p).unwrap();
        let ok = [ObjectKind::DataPack, ObjectKind::TreePack]
            .into_iter()
            .any(|kind| pack::decode_header(&k, kind, &d, "seed").is_ok());
        assert!(ok, "{} does not decode", p.display());
    }
}
