//! Plaintext decoders of index files, trees, snapshots, config and key files.
#![no_main]
use chunkbak_engine::format::{config::Config, index::IndexFile, key::KeyFile, snapshot::Snapshot, tree::TreeBlob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = IndexFile::decode(data, "fuzz");
    let _ = TreeBlob::decode(data, "fuzz");
    let _ = Snapshot::decode(data, "fuzz");
    let _ = Config::decode(data, "fuzz");
    let _ = KeyFile::decode(data, "fuzz");
});
