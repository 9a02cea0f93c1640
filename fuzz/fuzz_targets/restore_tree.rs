//! Hostile trees restored into a scratch folder: nothing outside the target changes. The body
//! is `chunkbak_engine::fuzzing::restore_tree`, which `engine/tests/fuzz_corpus.rs` also runs
//! on the seeds and regression inputs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chunkbak_engine::fuzzing::restore_tree(data));
