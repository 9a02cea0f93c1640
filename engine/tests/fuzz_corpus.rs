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

/// Counts, per thread, the largest single allocation since the last reset: the decoders must
/// not allocate more than their input justifies (libFuzzer's -malloc_limit_mb checks the same
/// while fuzzing; this checks it for every corpus and regression input on stable).
struct Largest;

thread_local! {
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only notes the sizes.
unsafe impl std::alloc::GlobalAlloc for Largest {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        note(l.size());
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

fn replay(target: &str, f: fn(&[u8])) {
    replay_within(target, f, None)
}

/// As [`replay`], and no single allocation larger than `limit(input length)`.
fn replay_within(target: &str, f: fn(&[u8]), limit: Option<fn(usize) -> usize>) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for {target}: run the fuzz_seeds example"
    );
    for p in files {
        let data = std::fs::read(&p).unwrap();
        LARGEST.with(|l| l.set(0));
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} fails", p.display());
        if let Some(limit) = limit {
            let largest = LARGEST.with(|l| l.get());
            assert!(
                largest <= limit(data.len()),
                "{target}: {} ({} bytes) made an allocation of {largest} bytes",
                p.display(),
                data.len()
            );
        }
    }
}

/// What a decoder may allocate at once for n input bytes: a small multiple of the input (the
/// seeds' real objects are decoded into structures a few times their size) plus 1 MiB of
/// fixed buffers and tables.
fn decoder_limit(n: usize) -> usize {
    16 * n + (1 << 20)
}

/// A blob may expand as far as zstd can (32768x: a 128 KiB block from 4 bytes).
fn blob_limit(n: usize) -> usize {
    32_768 * n + (1 << 20)
}

#[test]
fn pack_header() {
    replay_within("pack_header", fuzzing::pack_header, Some(decoder_limit));
}

#[test]
fn envelope() {
    replay_within("envelope", fuzzing::envelope, Some(decoder_limit));
}

#[test]
fn objects() {
    replay_within("objects", fuzzing::objects, Some(decoder_limit));
}

#[test]
fn blob() {
    replay_within("blob", fuzzing::blob, Some(blob_limit));
}

/// A delta may hold up to 16 MiB, whatever its frame's size.
fn delta_limit(n: usize) -> usize {
    blob_limit(n).max((16 << 20) + (1 << 20))
}

#[test]
fn delta() {
    replay_within("delta", fuzzing::delta, Some(delta_limit));
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

#[test]
fn restore_tree() {
    replay("restore_tree", fuzzing::restore_tree);
}
