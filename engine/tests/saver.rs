//! The blob saver stores each blob of a run once: while its pack is open (the reserved set),
//! and after the pack is stored (the index), deltas whose base the saver's index does not
//! know included.

use chunkbak_engine::compressor::compress_delta;
use chunkbak_engine::format::pack::BlobKind;

mod common;

use common::repo;

#[test]
fn blobs_are_stored_once_before_and_after_their_pack_is_uploaded() {
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let base = b"chunkbak ".repeat(2000);
    let s = r.blob_saver().unwrap();
    let (bid, new) = s.save(BlobKind::Data, &base).unwrap();
    assert!(new);
    assert!(!s.reserve(&bid), "reserved while its pack is open");
    s.finish().unwrap();
    assert!(!s.reserve(&bid), "in the index once its pack is stored");

    // A repacking saver indexes only what it stores: the base is unknown to it.
    let p = r.private_saver().unwrap();
    let data = [base.as_slice(), b"delta!"].concat();
    let id = r.hasher().id(&data);
    assert!(p.reserve(&id));
    let frame = compress_delta(&data, &base, 3).unwrap();
    p.store_delta(id, data.len(), frame, bid).unwrap();
    assert!(!p.reserve(&id), "reserved while its pack is open");
    let packs = p.finish().unwrap();
    assert_eq!(packs.len(), 1);
    assert!(
        !p.reserve(&id),
        "stored again after its pack was uploaded, although its base is not in the index"
    );
    assert!(p.finish().unwrap().is_empty());
}
