//! The AWS sources against moto server (pinned in its own venv by `.ci/s3-test-server`, on
//! 127.0.0.1): EBS snapshots read through the EBS direct APIs and written back.
//!
//! moto 5.2.5's ListChangedBlocks reports only blocks the first snapshot holds (a block written
//! for the first time in the second is missed) and ignores pagination; the changes below are
//! to blocks the first snapshot holds, as on AWS they would be reported either way.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use common::*;

const BLOCK: usize = 512 * 1024;

/// `c` with the moto server as the EBS endpoint and test credentials.
fn with_ebs(c: &mut Command, endpoint: &str) {
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_EBS", endpoint);
}

fn run_ebs(e: &Env, endpoint: &str, repo: &Path, args: &[&str]) -> Run {
    let mut c = e.cmd();
    with_ebs(&mut c, endpoint);
    c.env("CHUNKBAK_REPOSITORY", repo).args(args);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{args:?}: {}\n{}", r.out(), r.stderr);
    r
}

/// Writes `image` as a new EBS snapshot (through a scratch repository and `restore
/// --to-ebs-snapshot`) and returns its id and the blocks written.
fn ebs_snapshot_of(e: &Env, endpoint: &str, image: &Path) -> (String, u64) {
    let scratch = e.path("scratch-repo");
    if !scratch.join("config").exists() {
        let mut init = vec!["init"];
        init.extend(FAST_KDF);
        run_ebs(e, endpoint, &scratch, &init);
    }
    let dir = image.parent().unwrap().to_str().unwrap();
    run_ebs(e, endpoint, &scratch, &["backup", dir]);
    let spec = format!("latest:{}", image.display());
    let r = run_ebs(
        e,
        endpoint,
        &scratch,
        &["--json", "restore", &spec, "--to-ebs-snapshot"],
    );
    let d = &r.json("ebs_snapshot")[0];
    (
        d["snapshot_id"].as_str().unwrap().to_string(),
        d["blocks_written"].as_u64().unwrap(),
    )
}

/// The blocks of `image` holding a non-zero byte.
fn written_blocks(image: &Path) -> Vec<usize> {
    let data = fs::read(image).unwrap();
    data.chunks(BLOCK)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, _)| i)
        .collect()
}

/// A 1 GiB volume whose first 256 MiB hold random blocks (about half of them; the rest and
/// everything after never written) is backed up from its EBS snapshot, then a snapshot with
/// 2% of those blocks changed: the second backup fetches exactly the changed blocks and adds
/// about their size; both images dump byte-identical; `restore --to-ebs-snapshot` writes a
/// snapshot whose blocks read back identical.
#[test]
fn ebs_snapshots_by_changed_blocks_and_back() {
    let endpoint = s3_server("moto");
    let e = Env::new();
    // Chunks of at most 64 KiB: each block is stored as 8 pieces.
    e.init_small();
    let img_dir = e.path("img");
    fs::create_dir_all(&img_dir).unwrap();
    let image = img_dir.join("disk.img");
    {
        let mut f = fs::File::create(&image).unwrap();
        f.set_len(1 << 30).unwrap();
        for i in 0..512u64 {
            if splitmix(i, 1)[0].is_multiple_of(2) {
                f.seek(SeekFrom::Start(i * BLOCK as u64)).unwrap();
                f.write_all(&splitmix(1000 + i, BLOCK)).unwrap();
            }
        }
    }
    let written = written_blocks(&image);
    assert!(
        written.len() > 200 && written.len() < 320,
        "{}",
        written.len()
    );
    let (snap_a, n) = ebs_snapshot_of(&e, &endpoint, &image);
    assert_eq!(n, written.len() as u64, "only non-zero blocks are written");

    // The first backup reads every written block, and nothing else.
    let repo = e.repo.clone();
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &[
            "--json",
            "backup",
            "--ebs-snapshot",
            &snap_a,
            "--ebs-volume",
            "vol-test",
        ],
    );
    let req = &r.json("ebs_requests")[0];
    assert_eq!(req["GetSnapshotBlock"], written.len() as u64, "{req}");
    let sum = &r.json("summary")[0];
    assert_eq!(sum["bytes_read"], (written.len() * BLOCK) as u64);
    assert_eq!(sum["bytes_total"], 1u64 << 30);
    let img_a = format!("latest:/ebs/vol-test/{snap_a}.img");
    let d = run_ebs(&e, &endpoint, &repo, &["dump", &img_a]);
    assert!(d.stdout == fs::read(&image).unwrap(), "first image differs");
    let original = block_hashes(&d.stdout);

    // 2% of the blocks change (10 of the written ones, 100 bytes each).
    let changed: Vec<usize> = written
        .iter()
        .step_by(written.len() / 10)
        .take(10)
        .copied()
        .collect();
    {
        let mut f = fs::OpenOptions::new().write(true).open(&image).unwrap();
        for (k, &b) in changed.iter().enumerate() {
            f.seek(SeekFrom::Start((b * BLOCK + 4096) as u64)).unwrap();
            f.write_all(&splitmix(5000 + k as u64, 100)).unwrap();
        }
    }
    let (snap_b, _) = ebs_snapshot_of(&e, &endpoint, &image);
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &[
            "--json",
            "backup",
            "--ebs-snapshot",
            &snap_b,
            "--ebs-volume",
            "vol-test",
        ],
    );
    let req = &r.json("ebs_requests")[0];
    assert_eq!(
        req["GetSnapshotBlock"], 10,
        "only the changed blocks: {req}"
    );
    let sum = &r.json("summary")[0];
    assert_eq!(sum["bytes_read"], (10 * BLOCK) as u64, "{sum}");
    let added = sum["bytes_added"].as_u64().unwrap();
    assert!(
        added < (10 * BLOCK) as u64 + 200_000,
        "about the changed blocks' size: {added}"
    );
    let img_b = format!("latest:/ebs/vol-test/{snap_b}.img");
    let d = run_ebs(&e, &endpoint, &repo, &["dump", &img_b]);
    assert!(
        d.stdout == fs::read(&image).unwrap(),
        "second image differs"
    );
    let meta = run_ebs(
        &e,
        &endpoint,
        &repo,
        &["dump", &format!("latest:/ebs/vol-test/{snap_b}.json")],
    );
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(meta["parent_snapshot_id"], snap_a.as_str(), "{meta}");
    assert_eq!(meta["blocks_fetched"], 10);
    // The first image is still whole in its own snapshot.
    let first = run_ebs(&e, &endpoint, &repo, &["--json", "snapshots"]).json("snapshot");
    let first_id = first[0]["short_id"].as_str().unwrap();
    let d = run_ebs(
        &e,
        &endpoint,
        &repo,
        &["dump", &format!("{first_id}:/ebs/vol-test/{snap_a}.img")],
    );
    assert!(
        block_hashes(&d.stdout) == original,
        "the first image changed"
    );

    // Back to EBS: a new snapshot whose blocks, read back in full, are the image.
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &["--json", "restore", &img_b, "--to-ebs-snapshot"],
    );
    let w = &r.json("ebs_snapshot")[0];
    assert_eq!(w["blocks_written"], written.len() as u64, "{w}");
    let snap_c = w["snapshot_id"].as_str().unwrap().to_string();
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &[
            "--json",
            "backup",
            "--ebs-snapshot",
            &snap_c,
            "--ebs-volume",
            "vol-c",
            "--force",
        ],
    );
    assert_eq!(
        r.json("ebs_requests")[0]["GetSnapshotBlock"],
        written.len() as u64
    );
    let d = run_ebs(
        &e,
        &endpoint,
        &repo,
        &["dump", &format!("latest:/ebs/vol-c/{snap_c}.img")],
    );
    assert!(
        d.stdout == fs::read(&image).unwrap(),
        "written snapshot differs"
    );
    let c = run_ebs(&e, &endpoint, &repo, &["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
}

/// A hash of each block (to compare an image with one no longer on disk).
fn block_hashes(data: &[u8]) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    data.chunks(BLOCK)
        .map(|b| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            h.finish()
        })
        .collect()
}
