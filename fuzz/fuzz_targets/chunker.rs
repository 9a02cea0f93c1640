//! The chunker: any read sizes give the chunks of one pass. The body is `chunkbak_engine::fuzzing::chunker`, which
//! `engine/tests/fuzz_corpus.rs` also runs on the seeds and regression inputs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chunkbak_engine::fuzzing::chunker(data));
