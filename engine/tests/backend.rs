//! Backend conformance: every backend stores, lists, reads ranges and deletes alike, and reports
//! a missing object as not found. The S3 backend runs the suite against a real S3 server on
//! 127.0.0.1 (`.ci/s3-test-server`), which the SDK talks to over HTTP as it talks to AWS.

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::backend::mem::MemBackend;
use chunkbak_engine::backend::s3::{S3Backend, S3Config};
use chunkbak_engine::backend::{Backend, FileKind, StorageClass, ThawState, Tier};
use chunkbak_engine::Error;

fn crc32c(data: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(data);
    d.finalize() as u32
}

fn conformance(b: &dyn Backend) {
    b.create().unwrap();
    assert!(!b.exists(FileKind::Config, "config").unwrap());
    b.put(FileKind::Config, "config", b"cfg").unwrap();
    assert!(b.exists(FileKind::Config, "config").unwrap());
    assert_eq!(b.get(FileKind::Config, "config").unwrap(), b"cfg");

    let name = "ab".repeat(32);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for kind in [
        FileKind::Data,
        FileKind::Tree,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Key,
    ] {
        b.put(kind, &name, &data).unwrap();
        assert_eq!(b.get(kind, &name).unwrap(), data, "{kind:?}");
        assert_eq!(
            b.get_range(kind, &name, 1000, 10).unwrap(),
            &data[1000..1010]
        );
        assert_eq!(
            b.get_range(kind, &name, 99_990, 10).unwrap(),
            &data[99_990..]
        );
        assert!(
            b.get_range(kind, &name, 99_995, 10).is_err(),
            "range past the end must fail"
        );
        assert_eq!(
            b.list(kind).unwrap(),
            vec![(name.clone(), data.len() as u64)]
        );
    }
    // Storing a name again succeeds (content-addressed names: the content is the same).
    b.put(FileKind::Data, &name, &data).unwrap();
    assert_eq!(b.get(FileKind::Data, &name).unwrap(), data);
    // put_file moves a finished local file into place.
    let tmp = b.temp_dir();
    std::fs::create_dir_all(&tmp).unwrap();
    let f = tmp.join("pack-test");
    std::fs::write(&f, b"from a file").unwrap();
    let other = "cd".repeat(32);
    b.put_file(FileKind::Data, &other, &f, crc32c(b"from a file"))
        .unwrap();
    b.flush().unwrap();
    assert!(!f.exists(), "put_file consumes its file");
    assert_eq!(b.get(FileKind::Data, &other).unwrap(), b"from a file");
    assert_eq!(b.list(FileKind::Data).unwrap().len(), 2);
    let info = b.list_info(FileKind::Data).unwrap();
    assert_eq!(info.len(), 2);
    assert!(info.iter().all(|o| o.class == StorageClass::Standard));
    // A listing handed over an object at a time (prune, check): the same objects, in name
    // order across the folders of a fanned-out kind; the callback's error stops it.
    let more: Vec<String> = ["00", "7f", "ff"]
        .iter()
        .map(|p| format!("{p}{}", "11".repeat(31)))
        .collect();
    for n in &more {
        b.put(FileKind::Data, n, n.as_bytes()).unwrap();
    }
    let mut each = Vec::new();
    b.list_info_each(FileKind::Data, &mut |o| {
        each.push(o);
        Ok(())
    })
    .unwrap();
    assert_eq!(each.len(), 5, "{each:?}");
    assert!(each.windows(2).all(|w| w[0].name < w[1].name), "{each:?}");
    assert_eq!(each, b.list_info(FileKind::Data).unwrap());
    let mut calls = 0;
    let stopped = b.list_info_each(FileKind::Data, &mut |_| {
        calls += 1;
        Err(Error::Other("stop".into()))
    });
    assert!(matches!(stopped, Err(Error::Other(m)) if m == "stop"));
    assert_eq!(calls, 1);
    for n in &more {
        b.delete(FileKind::Data, n).unwrap();
    }
    assert_eq!(
        b.thaw_state(FileKind::Data, &other).unwrap(),
        ThawState::Hot
    );

    let missing = "ef".repeat(32);
    match b.get(FileKind::Snapshot, &missing) {
        Err(Error::ObjectNotFound(n)) => assert!(n.contains(&missing)),
        other => panic!("expected not found, got {other:?}"),
    }
    b.delete(FileKind::Data, &name).unwrap();
    b.delete(FileKind::Data, &name).unwrap(); // idempotent
    assert!(!b.exists(FileKind::Data, &name).unwrap());
    assert_eq!(b.list(FileKind::Data).unwrap(), vec![(other, 11)]);
    assert!(b.list(FileKind::Lock).unwrap().is_empty());
}

#[test]
fn local_backend_conforms() {
    let d = tempfile::tempdir().unwrap();
    conformance(&LocalBackend::new(d.path().join("repo")));
    // No temp files are left behind.
    let left: Vec<_> = std::fs::read_dir(d.path().join("repo/tmp"))
        .unwrap()
        .collect();
    assert!(left.is_empty());
}

#[test]
fn memory_backend_conforms() {
    let b = MemBackend::new();
    conformance(&b);
    assert_eq!(std::fs::read_dir(b.temp_dir()).unwrap().count(), 0);
}

/// The local backend syncs and installs finished packs in the background: many at once all
/// land, and one that cannot be installed fails the next `flush`, naming the path, instead of
/// being lost silently.
#[test]
fn local_put_file_installs_in_background_and_reports_failures() {
    let d = tempfile::tempdir().unwrap();
    let b = LocalBackend::new(d.path().join("repo"));
    b.create().unwrap();
    let tmp = b.temp_dir();
    let names: Vec<String> = (0..12u8).map(|i| format!("{i:02x}").repeat(32)).collect();
    for (i, n) in names.iter().enumerate() {
        let f = tmp.join(format!("pack-{i}"));
        std::fs::write(&f, n.as_bytes()).unwrap();
        b.put_file(FileKind::Data, n, &f, crc32c(n.as_bytes()))
            .unwrap();
    }
    b.flush().unwrap();
    for n in &names {
        assert_eq!(b.get(FileKind::Data, n).unwrap(), n.as_bytes());
    }
    // Nothing left in this process's staging folder but its lock.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["lock"]);

    // The folder a pack goes to cannot be created: `data` is a file.
    let data = d.path().join("repo/data");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"in the way").unwrap();
    let f = tmp.join("pack-x");
    std::fs::write(&f, b"x").unwrap();
    b.put_file(FileKind::Data, &"ee".repeat(32), &f, crc32c(b"x"))
        .unwrap();
    match b.flush() {
        Err(Error::Io { path, .. }) => {
            assert!(path.to_string_lossy().contains("repo/data"), "{path:?}")
        }
        other => panic!("expected the failed install, got {other:?}"),
    }
    assert!(f.exists(), "a pack that was not installed stays in tmp/");
    b.flush().unwrap();
}

#[path = "../../tests/common/s3_server.rs"]
mod s3_server;
use s3_server::{s3_endpoint, s3_server};

fn s3_at(endpoint: String, bucket: &str, prefix: &str) -> S3Backend {
    S3Backend::new(S3Config {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        static_credentials: Some(("test".into(), "test".into())),
        ..S3Config::default()
    })
    .unwrap()
}

fn s3(bucket: &str, prefix: &str) -> S3Backend {
    s3_at(s3_endpoint(), bucket, prefix)
}

#[test]
fn s3_backend_conforms() {
    let bucket = format!("conformance-{}", std::process::id());
    let one = s3(&bucket, "repos/one");
    conformance(&one);
    // S3 writes are conditional: a second config is refused, other names keep their object.
    match one.put(FileKind::Config, "config", b"another") {
        Err(Error::RepositoryExists(l)) => assert!(l.contains("repos/one")),
        other => panic!("expected RepositoryExists, got {other:?}"),
    }
    let snap = "77".repeat(32);
    one.put(FileKind::Snapshot, &snap, b"first").unwrap();
    one.put(FileKind::Snapshot, &snap, b"second").unwrap();
    assert_eq!(one.get(FileKind::Snapshot, &snap).unwrap(), b"first");
    // A second repository under another prefix of the same bucket is independent.
    let other = s3(&bucket, "repos/two");
    other.create().unwrap();
    assert!(other.list(FileKind::Data).unwrap().is_empty());
    assert!(!other.exists(FileKind::Config, "config").unwrap());
}

#[test]
fn s3_urls_parse() {
    let c = S3Config::parse("s3:bucket/some/prefix/").unwrap();
    assert_eq!(
        (c.bucket.as_str(), c.prefix.as_str()),
        ("bucket", "some/prefix")
    );
    let c = S3Config::parse("s3://bucket").unwrap();
    assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", ""));
    assert!(S3Config::parse("s3:").is_err());
    assert!(S3Config::parse("/local/path").is_err());
    // restic's forms: an endpoint of its own, or an AWS host naming the region.
    let parse = |u: &str| {
        let c = S3Config::parse(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        (c.endpoint, c.region, c.bucket, c.prefix)
    };
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        parse("s3:https://minio.example.com:9000/backups/hosts/web1"),
        (
            s("https://minio.example.com:9000"),
            None,
            "backups".into(),
            "hosts/web1".into()
        )
    );
    assert_eq!(
        parse("s3:http://127.0.0.1:8333/bk1"),
        (
            s("http://127.0.0.1:8333"),
            None,
            "bk1".into(),
            String::new()
        )
    );
    assert_eq!(
        parse("s3:s3.amazonaws.com/cbtest/x"),
        (None, None, "cbtest".into(), "x".into())
    );
    assert_eq!(
        parse("s3:s3.eu-west-1.amazonaws.com/cbtest/x/y"),
        (None, s("eu-west-1"), "cbtest".into(), "x/y".into())
    );
    assert_eq!(
        parse("S3:https://s3-us-west-2.amazonaws.com/my.bucket"),
        (None, s("us-west-2"), "my.bucket".into(), String::new())
    );
    assert_eq!(
        parse("s3://bucket-1/p"),
        (None, None, "bucket-1".into(), "p".into())
    );
    // Malformed: each names the accepted forms, at once.
    for bad in [
        "s3:https:",
        "s3:https:/bucket",
        "s3:https:///bucket",
        "s3:Bucket/x",
        "s3:ab",
        "s3:http://host",
        "s3:bucket_name/x",
        "s3:s3.amazonaws.com/",
    ] {
        let e = S3Config::parse(bad).unwrap_err().to_string();
        assert!(e.contains("s3:https://HOST[:PORT]/BUCKET"), "{bad}: {e}");
    }
}

/// An S3 backend that uploads objects over 6 MiB in 5 MiB parts.
fn s3_small_parts(bucket: &str) -> S3Backend {
    s3_small_parts_at(s3_endpoint(), bucket)
}

fn s3_small_parts_at(endpoint: String, bucket: &str) -> S3Backend {
    S3Backend::new(S3Config {
        bucket: bucket.into(),
        prefix: "r".into(),
        endpoint: Some(endpoint),
        static_credentials: Some(("test".into(), "test".into())),
        multipart_threshold: 6 << 20,
        part_size: 5 << 20,
        ..S3Config::default()
    })
    .unwrap()
}

#[test]
fn s3_multipart_uploads_checksums_and_request_counts() {
    let bucket = format!("multipart-{}", std::process::id());
    let b = s3_small_parts(&bucket);
    b.create().unwrap();
    let tmp = b.temp_dir();
    std::fs::create_dir_all(&tmp).unwrap();
    // 12 MiB + 1: three parts (5, 5, 2 MiB + 1 byte), uploaded from the file.
    let data: Vec<u8> = (0..(12u32 << 20) + 1)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let f = tmp.join(format!("pack-mp-{}", std::process::id()));
    std::fs::write(&f, &data).unwrap();
    let name = "12".repeat(32);
    let before = b.requests().unwrap();
    b.put_file(FileKind::Data, &name, &f, crc32c(&data))
        .unwrap();
    b.flush().unwrap();
    let after = b.requests().unwrap();
    // Create, three parts, complete: five PUT-class requests, no DELETE; one HEAD checks
    // that the store kept the size and composite CRC32C sent.
    assert_eq!(after.put - before.put, 5, "{after:?}");
    assert_eq!(after.head - before.head, 1, "{after:?}");
    assert_eq!(after.delete, 0);
    assert!(after.bytes_up - before.bytes_up >= data.len() as u64);
    assert_eq!(b.get(FileKind::Data, &name).unwrap(), data);
    assert_eq!(
        b.get_range(FileKind::Data, &name, (5 << 20) - 3, 10)
            .unwrap(),
        &data[(5 << 20) - 3..(5 << 20) + 7]
    );
    let got = b.requests().unwrap();
    assert_eq!(got.get - after.get, 2);
    assert!(got.bytes_down - after.bytes_down >= data.len() as u64 + 10);

    // A single-part upload with a wrong checksum is refused by the store (400 BadDigest).
    // A single PUT keeps the CRC32C the index records, readable without a download.
    let small = "56".repeat(32);
    let h = tmp.join(format!("pack-small-{}", std::process::id()));
    std::fs::write(&h, b"small pack").unwrap();
    b.put_file(FileKind::Data, &small, &h, crc32c(b"small pack"))
        .unwrap();
    b.flush().unwrap();
    assert_eq!(
        b.stored_crc32c(FileKind::Data, &small).unwrap(),
        Some(crc32c(b"small pack"))
    );
    let g = tmp.join(format!("pack-bad-{}", std::process::id()));
    std::fs::write(&g, b"some bytes").unwrap();
    let bad = "34".repeat(32);
    b.put_file(FileKind::Data, &bad, &g, crc32c(b"other bytes"))
        .unwrap();
    let e = b.flush().unwrap_err();
    assert!(
        e.to_string().contains(&bad) && e.to_string().contains("HTTP 400 BadDigest"),
        "{e}"
    );
    assert!(!b.exists(FileKind::Data, &bad).unwrap());
}

#[test]
fn s3_archived_objects_thaw_on_request() {
    let bucket = format!("glacier-{}", std::process::id());
    // The emulator: only it refuses to serve an archived object before a thaw.
    let b = s3_at(s3_server("ministack"), &bucket, "g");
    b.create().unwrap();
    let name = "56".repeat(32);
    b.put(FileKind::Data, &name, b"cold data").unwrap();
    b.transition(FileKind::Data, &name, StorageClass::Glacier)
        .unwrap();
    let info = b.list_info(FileKind::Data).unwrap();
    assert_eq!(info[0].class, StorageClass::Glacier);
    assert_eq!(
        b.thaw_state(FileKind::Data, &name).unwrap(),
        ThawState::Cold
    );
    match b.get_range(FileKind::Data, &name, 0, 4) {
        Err(Error::Archived { object, class }) => {
            assert!(object.contains(&name));
            assert_eq!(class, "GLACIER");
        }
        other => panic!("expected an archived-object error, got {other:?}"),
    }
    b.request_thaw(FileKind::Data, &name, Tier::Bulk, 2)
        .unwrap();
    // A second request while the first is in progress is not an error.
    b.request_thaw(FileKind::Data, &name, Tier::Bulk, 2)
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        match b.thaw_state(FileKind::Data, &name).unwrap() {
            ThawState::Thawed { .. } => break,
            ThawState::Thawing => {}
            s => panic!("unexpected state {s:?}"),
        }
        assert!(start.elapsed().as_secs() < 60, "thaw never finished");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(b.get(FileKind::Data, &name).unwrap(), b"cold data");
    let r = b.requests().unwrap();
    assert!(r.restore >= 2 && r.copy == 1, "{r:?}");
}

#[test]
fn s3_object_lock_at_upload_multipart_included_delete_hide_and_extend() {
    use chunkbak_engine::backend::{Extended, LockMode, ObjectLock};
    let b = s3_small_parts_at(
        s3_server("ministack"),
        &format!("objlock-{}", std::process::id()),
    );
    b.set_object_lock(Some(ObjectLock {
        mode: LockMode::Governance,
        days: 1,
    }));
    // The bucket is missing: supported (create makes it with Object Lock), then created so.
    b.supports_object_lock().unwrap();
    b.create().unwrap();
    b.supports_object_lock().unwrap();
    let now = jiff::Timestamp::now().as_second();
    let day = now + 86_400;

    // A single PUT and a multipart upload (the emulator drops the lock headers of
    // CreateMultipartUpload: the backend sets the retention after completion) are locked.
    let tmp = b.temp_dir();
    std::fs::create_dir_all(&tmp).unwrap();
    let data: Vec<u8> = (0..(7u32 << 20)).map(|i| (i >> 5) as u8).collect();
    let f = tmp.join(format!("pack-lock-{}", std::process::id()));
    std::fs::write(&f, &data).unwrap();
    let big = "ab".repeat(32);
    b.put_file(FileKind::Data, &big, &f, crc32c(&data)).unwrap();
    b.flush().unwrap();
    let snap = "cd".repeat(32);
    b.put(FileKind::Snapshot, &snap, b"snapshot").unwrap();
    b.put(FileKind::Lock, "l1", b"lock file").unwrap();
    for (kind, name) in [(FileKind::Data, &big), (FileKind::Snapshot, &snap)] {
        let until = b.retention(kind, name).unwrap().expect("locked");
        assert!((day - 5..=day + 60).contains(&until), "{name}: {until}");
    }
    assert_eq!(b.retention(FileKind::Lock, "l1").unwrap(), None);
    b.delete(FileKind::Lock, "l1").unwrap();

    // A retained object is not deleted: Locked, with its date, and it stays.
    match b.delete(FileKind::Data, &big) {
        Err(Error::Locked { object, until }) => {
            assert!(object.contains(&big));
            assert!(until >= day - 5);
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(b.exists(FileKind::Data, &big).unwrap());

    // Extension: longer is set, shorter is refused by S3 and read back as already longer.
    assert_eq!(
        b.extend_retention(FileKind::Data, &big, now + 3 * 86_400)
            .unwrap(),
        Extended::Extended
    );
    assert!(b.retention(FileKind::Data, &big).unwrap().unwrap() >= now + 3 * 86_400);
    assert_eq!(
        b.extend_retention(FileKind::Data, &big, now + 2 * 86_400)
            .unwrap(),
        Extended::AlreadyLonger
    );

    // Hidden: gone from the listing, its version kept; nothing to purge while retained.
    b.hide(FileKind::Snapshot, &snap).unwrap();
    assert!(b.list(FileKind::Snapshot).unwrap().is_empty());
    let p = b.purge_hidden(FileKind::Snapshot).unwrap();
    assert_eq!((p.deleted, p.locked), (0, 1));
    assert!(p.last_until.unwrap() >= day - 5);
    assert_eq!(
        b.extend_retention(FileKind::Snapshot, &snap, now + 5 * 86_400)
            .unwrap(),
        Extended::Gone
    );
}
