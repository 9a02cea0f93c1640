//! Pack header decoding: any bytes give records or an error, never a panic.
#![no_main]
use chunkbak_engine::crypter::MasterKey;
use chunkbak_engine::format::{pack::decode_header, ObjectKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mk = MasterKey::from_material([0; 32]);
    let _ = decode_header(&mk, ObjectKind::DataPack, data, "fuzz");
    let _ = decode_header(&mk, ObjectKind::TreePack, data, "fuzz");
});
