//! Delta blobs: decoding a zstd frame against a base to a declared length, and delta round
//! trips. The body is `chunkbak_engine::fuzzing::delta`, which `engine/tests/fuzz_corpus.rs`
//! also runs on the seeds and regression inputs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chunkbak_engine::fuzzing::delta(data));
