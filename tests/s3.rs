//! End-to-end tests of S3 repositories through the real binary, against the project's S3 test
//! server on 127.0.0.1 (`.ci/s3-test-server`): the same round trip as a local repository,
//! Glacier restores, lifecycle rules, and backups and restores through injected faults.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use chunkbak_engine::backend::s3::sdk::types::{
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, Transition,
    TransitionStorageClass,
};
use chunkbak_engine::backend::s3::{S3Backend, S3Config};
use chunkbak_engine::backend::{Backend, FileKind, StorageClass, ThawState};
use common::proxy::{Fault, FaultProxy};
use common::scenario;
use common::*;

/// A repository location plus the environment that reaches it.
struct Repo<'a> {
    e: &'a Env,
    /// `s3:BUCKET/PREFIX`, or None for the local repository of `e`.
    url: Option<String>,
    endpoint: String,
}

impl<'a> Repo<'a> {
    fn local(e: &'a Env) -> Repo<'a> {
        Repo {
            e,
            url: None,
            endpoint: String::new(),
        }
    }

    fn s3(e: &'a Env, endpoint: &str, bucket: &str, prefix: &str) -> Repo<'a> {
        Repo {
            e,
            url: Some(format!("s3:{bucket}/{prefix}")),
            endpoint: endpoint.to_string(),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        self.e.run_cmd(c)
    }

    /// A command that reaches this repository.
    fn cmd(&self) -> Command {
        let mut c = self.e.cmd();
        if let Some(u) = &self.url {
            c.env("CHUNKBAK_REPOSITORY", u)
                .env("CHUNKBAK_S3_ENDPOINT", &self.endpoint)
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_REGION", "us-east-1")
                .env_remove("AWS_PROFILE")
                .env_remove("AWS_ENDPOINT_URL");
        }
        c
    }

    fn ok(&self, args: &[&str]) -> Run {
        expect_ok(self.run(args), args)
    }

    /// The engine's view of the same bucket (to inspect objects and simulate lifecycle rules).
    fn backend(&self) -> S3Backend {
        let mut c = S3Config::parse(self.url.as_ref().expect("an S3 repository")).unwrap();
        c.endpoint = Some(self.endpoint.clone());
        c.static_credentials = Some(("test".into(), "test".into()));
        S3Backend::new(c).unwrap()
    }
}

fn requests(r: &Run) -> Value {
    let v = r.json("requests");
    assert_eq!(v.len(), 1, "one requests line per run: {}", r.out());
    v[0].clone()
}

const SMALL: [&str; 12] = [
    "--kdf-memory-kib",
    "256",
    "--kdf-iterations",
    "1",
    "--chunk-min",
    "4096",
    "--chunk-avg",
    "16384",
    "--chunk-max",
    "65536",
    "--data-pack-size",
    "65536",
];

/// The round trip every backend passes: init, backup of the torture tree, unchanged re-backup,
/// snapshots, ls, check, restore compared byte for byte.
fn round_trip(r: &Repo, src: &Path) {
    let mut init = vec!["init"];
    init.extend(SMALL);
    r.ok(&init);
    let first = r.ok(&["--json", "backup", src.to_str().unwrap()]);
    let sum = first.json("summary")[0].clone();
    assert!(sum["bytes_added"].as_u64().unwrap() > 3 << 20, "{sum}");
    let second = r.ok(&["--json", "backup", src.to_str().unwrap()]);
    let sum2 = second.json("summary")[0].clone();
    assert_eq!(sum2["bytes_read"], 0);
    assert!(
        sum2["bytes_added"].as_u64().unwrap() < ANCESTOR_TREES,
        "{sum2}"
    );
    if r.url.is_some() {
        // A backup needs no DeleteObject: append-only hosts can back up.
        for run in [&first, &second] {
            assert_eq!(requests(run)["DELETE"], 0, "{}", run.out());
        }
        assert!(requests(&first)["PUT"].as_u64().unwrap() > 10);
        // The metadata cache: the re-backup reads the parent's trees, index and snapshot from
        // disk; only the key file and the config are fetched.
        assert_eq!(requests(&second)["GET"], 2, "{}", second.out());
        let cached = requests(&r.ok(&["--json", "ls", "latest"]))["GET"].clone();
        let uncached = requests(&r.ok(&["--json", "--no-cache", "ls", "latest"]))["GET"].clone();
        assert!(
            cached.as_u64().unwrap() + 5 < uncached.as_u64().unwrap(),
            "ls GETs: cached {cached}, uncached {uncached}"
        );
        // A damaged cached tree pack is a cache miss, not an error: the trees come from the
        // repository and the listing is the same.
        let listing = r.ok(&["ls", "latest"]).out();
        let mut damaged = 0;
        for f in walk_files(&r.e.path("xdg-cache")) {
            if f.parent()
                .and_then(|p| p.parent())
                .is_some_and(|p| p.ends_with("tree"))
            {
                let len = fs::metadata(&f).unwrap().len() as usize;
                fs::write(&f, vec![0x5a; len]).unwrap();
                damaged += 1;
            }
        }
        assert!(damaged > 0, "tree packs are cached");
        assert_eq!(r.ok(&["ls", "latest"]).out(), listing);
        // check reads trees through the cache (was: one GET per directory, every time).
        let gets = |args: &[&str]| requests(&r.ok(args))["GET"].as_u64().unwrap();
        let (cached, uncached) = (
            gets(&["--json", "check"]),
            gets(&["--json", "--no-cache", "check"]),
        );
        assert!(
            cached + 5 < uncached,
            "check GETs: cached {cached}, uncached {uncached}"
        );
    } else {
        assert!(
            first.json("requests").is_empty(),
            "local runs send no requests"
        );
    }
    let snaps = r.ok(&["--json", "snapshots"]);
    assert_eq!(snaps.json("snapshot").len(), 2, "{}", snaps.out());
    let ls = r.ok(&["ls", "latest"]).out();
    assert!(
        ls.contains("/link-to-big") && ls.contains("/size-max+1"),
        "{ls}"
    );
    let check = r.ok(&["--json", "check"]).json("check")[0].clone();
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    assert_eq!(check["snapshots"], 2);
    assert!(check["blobs"].as_u64().unwrap() > 50, "{check}");
    let t = r.e.path("out");
    r.ok(&[
        "restore",
        &format!("latest:{}", src.display()),
        "--target",
        t.to_str().unwrap(),
    ]);
    r.e.compare(src, &t, &["--holes"]);
}

#[test]
fn local_round_trip() {
    let e = Env::new();
    let src = e.path("src");
    torture(&src);
    round_trip(&Repo::local(&e), &src);
}

#[test]
fn s3_round_trip() {
    let ep = s3_endpoint();
    let e = Env::new();
    let src = e.path("src");
    torture(&src);
    let r = Repo::s3(&e, &ep, &format!("rt-{}", std::process::id()), "hosts/web1");
    round_trip(&r, &src);
    // Nothing of the repository is in an archive class.
    let b = r.backend();
    for k in FileKind::ALL {
        for o in b.list_info(k).unwrap() {
            assert_eq!(o.class, StorageClass::Standard, "{k:?} {}", o.name);
        }
    }
}

/// A dump with a day of scattered changes, backed up to S3: stored as deltas, restored byte
/// for byte through ranged reads that fetch each delta's base too, and verified by
/// `check --read-data`.
#[test]
fn s3_dump_deltas_round_trip() {
    let ep = s3_endpoint();
    let e = Env::new();
    let r = Repo::s3(&e, &ep, &format!("delta-{}", std::process::id()), "db");
    r.ok(&[
        "init",
        "--kdf-memory-kib",
        "256",
        "--kdf-iterations",
        "1",
        "--chunk-min",
        "4096",
        "--chunk-avg",
        "16384",
        "--chunk-max",
        "65536",
        "--data-pack-size",
        "262144",
    ]);
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let db = src.join("db.sql");
    let days: Vec<Vec<u8>> = (1..=2).map(|d| table_dump(30_000, d, 7)).collect();
    let mut sums = Vec::new();
    for d in &days {
        fs::write(&db, d).unwrap();
        sums.push(
            r.ok(&["--json", "backup", src.to_str().unwrap()])
                .json("summary")[0]
                .clone(),
        );
    }
    assert!(sums[1]["deltas"].as_u64().unwrap() > 0, "{}", sums[1]);
    let t = e.path("t");
    let out = r.ok(&[
        "--json",
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
    ]);
    assert_eq!(out.json("summary")[0]["errors"], 0, "{}", out.out());
    assert!(
        fs::read(t.join(db.strip_prefix("/").unwrap())).unwrap() == days[1],
        "the restored dump differs"
    );
    let c = r.ok(&["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
}

/// Writes `n` files of `size` random bytes under `dir`, seeded by `seed`.
fn files(dir: &Path, seed: u64, n: usize, size: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(
            dir.join(format!("f{i}")),
            splitmix(seed * 1000 + i as u64, size),
        )
        .unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let s = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn s3_glacier_restore_thaws_exactly_the_needed_packs() {
    let ep = emulator_endpoint();
    let e = Env::new();
    let r = Repo::s3(&e, &ep, &format!("glacier-{}", std::process::id()), "r");
    let mut init = vec!["init"];
    init.extend(SMALL);
    r.ok(&init);
    let src = e.path("src");
    files(&src.join("x"), 1, 6, 120_000);
    files(&src.join("y"), 2, 6, 120_000);
    let s = src.to_str().unwrap();
    r.ok(&["backup", s, "--time", "2026-01-10T00:00:00Z"]);
    let old = e.path("old");
    copy_tree(&src, &old);
    let b = r.backend();
    let old_packs: Vec<String> = b
        .list(FileKind::Data)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(old_packs.len() >= 10, "{old_packs:?}");
    // Months later x changes; the new data goes to new packs.
    files(&src.join("x"), 3, 6, 120_000);
    r.ok(&["backup", s, "--time", "2026-06-10T00:00:00Z"]);

    // The lifecycle rule moves the old data packs to GLACIER (as AWS does: a copy in place).
    for p in &old_packs {
        b.transition(FileKind::Data, p, StorageClass::Glacier)
            .unwrap();
    }
    // Metadata never moves; listing and checking still work and read no data pack.
    r.ok(&["snapshots"]);
    r.ok(&["ls", "--at", "2026-02-01T00:00:00Z"]);
    let check = r.ok(&["--json", "check"]);
    assert_eq!(
        check.json("check")[0]["problems"].as_array().unwrap().len(),
        0
    );
    for k in FileKind::ALL.into_iter().filter(|k| *k != FileKind::Data) {
        for o in b.list_info(k).unwrap() {
            assert!(!o.class.is_archive(), "{k:?} {} is {:?}", o.name, o.class);
        }
    }

    // The plan for restoring the old x: only x's packs, all cold.
    let target = e.path("t");
    let t = target.to_str().unwrap();
    let include = format!("{s}/x");
    let restore_args = [
        "--json",
        "restore",
        "--at",
        "2026-02-01T00:00:00Z",
        "--include",
        &include,
        "--target",
        t,
        "--tier",
        "bulk",
        "--poll-interval",
        "1s",
    ];
    let mut plan_args = restore_args.to_vec();
    plan_args.push("--plan");
    let planned = r.ok(&plan_args);
    let plan = planned.json("plan")[0].clone();
    let cold = plan["cold"]["packs"].as_u64().unwrap();
    assert_eq!(plan["files"], 6, "{plan}");
    assert_eq!(cold, plan["packs"].as_u64().unwrap(), "{plan}");
    assert!(cold >= 5 && (cold as usize) < old_packs.len(), "{plan}");
    assert!(!plan["thaw_estimates"].as_array().unwrap().is_empty());
    assert_eq!(requests(&planned)["RESTORE"], 0);
    assert!(!target.exists(), "--plan writes nothing");

    // --no-wait requests the thaws and exits 13.
    let mut nowait = restore_args.to_vec();
    nowait.push("--no-wait");
    let first = r.run(&nowait);
    assert_eq!(first.code, 13, "{}", first.stderr);
    assert_eq!(requests(&first)["RESTORE"].as_u64().unwrap(), cold);
    // Exactly the needed packs are thawing; the other old packs stay cold.
    let states: Vec<ThawState> = old_packs
        .iter()
        .map(|p| b.thaw_state(FileKind::Data, p).unwrap())
        .collect();
    let requested = states.iter().filter(|s| **s != ThawState::Cold).count();
    assert_eq!(requested as u64, cold);

    // The rerun requests nothing again, waits through the thaw and restores.
    let done = r.ok(&restore_args);
    assert_eq!(requests(&done)["RESTORE"], 0, "{}", done.out());
    let replan = done.json("plan")[0].clone();
    let thawing = replan["thawing"]["packs"].as_u64().unwrap();
    assert_eq!(
        thawing + replan["thawed"]["packs"].as_u64().unwrap(),
        cold,
        "{replan}"
    );
    assert_eq!(replan["cold"]["packs"], 0, "{replan}");
    if thawing > 0 {
        assert!(!done.json("thaw_wait").is_empty(), "{}", done.out());
    }
    assert_eq!(done.json("summary")[0]["files"], 6);
    e.compare(
        &old.join("x"),
        &target.join(src.strip_prefix("/").unwrap().join("x")),
        &[],
    );
    assert!(
        !target
            .join(src.strip_prefix("/").unwrap().join("y"))
            .exists(),
        "only the included path is restored"
    );
}

#[test]
fn s3_deep_archive_data_class_restores_through_warmup_and_wait() {
    let ep = emulator_endpoint();
    let e = Env::new();
    let r = Repo::s3(&e, &ep, &format!("wait-{}", std::process::id()), "r");
    let mut init = vec!["init"];
    init.extend(SMALL);
    init.extend(["--data-storage-class", "DEEP_ARCHIVE"]);
    r.ok(&init);
    let src = e.path("src");
    files(&src, 4, 5, 100_000);
    let s = src.to_str().unwrap();
    let backup = r.ok(&["--json", "backup", s]);
    assert_eq!(requests(&backup)["DELETE"], 0);
    let b = r.backend();
    // Data packs are uploaded to DEEP_ARCHIVE; everything else stays readable at once.
    let data = b.list_info(FileKind::Data).unwrap();
    assert!(!data.is_empty());
    assert!(data.iter().all(|o| o.class == StorageClass::DeepArchive));
    for k in [
        FileKind::Tree,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Key,
    ] {
        assert!(b
            .list_info(k)
            .unwrap()
            .iter()
            .all(|o| o.class == StorageClass::Standard));
    }
    // Deep Archive has no expedited tier: a clear error, nothing requested.
    let exp = r.run(&["restore", "--target", "x", "--tier", "expedited"]);
    assert_eq!(exp.code, 2);
    assert!(
        exp.stderr.contains("DEEP_ARCHIVE has no expedited"),
        "{}",
        exp.stderr
    );
    // warmup alone thaws; restore waits for it (thaw_wait lines) and finishes.
    let w = r.run(&["--json", "warmup", "--tier", "bulk"]);
    assert_eq!(w.code, 13, "{}", w.stderr);
    let target = e.path("t");
    let done = r.ok(&[
        "--json",
        "restore",
        "--target",
        target.to_str().unwrap(),
        "--poll-interval",
        "1s",
    ]);
    assert_eq!(requests(&done)["RESTORE"], 0);
    assert!(!done.json("thaw_wait").is_empty(), "{}", done.out());
    e.compare(&src, &target.join(src.strip_prefix("/").unwrap()), &[]);
    let again = r.ok(&["--json", "warmup", "--wait", "--poll-interval", "1s"]);
    assert_eq!(again.json("thaw")[0]["pending"], 0);
}

fn rule(
    id: &str,
    prefix: &str,
) -> chunkbak_engine::backend::s3::sdk::types::builders::LifecycleRuleBuilder {
    LifecycleRule::builder()
        .id(id)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
}

#[test]
fn s3_lifecycle_apply_keeps_other_rules_and_check_finds_dangerous_ones() {
    let ep = emulator_endpoint();
    let e = Env::new();
    let bucket = format!("lifecycle-{}", std::process::id());
    let r = Repo::s3(&e, &ep, &bucket, "fleet/db1");
    let mut init = vec!["init"];
    init.extend(SMALL);
    r.ok(&init);
    let b = r.backend();
    let logs = rule("expire-logs", "logs/")
        .expiration(LifecycleExpiration::builder().days(14).build())
        .build()
        .unwrap();
    b.put_lifecycle_rules(vec![logs.clone()]).unwrap();

    let applied = r.ok(&[
        "--json",
        "lifecycle",
        "apply",
        "--transition-after",
        "30d",
        "--to",
        "GLACIER",
    ]);
    assert_eq!(applied.json("lifecycle_apply")[0]["other_rules_kept"], 1);
    let rules = b.lifecycle_rules().unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert_eq!(rules[0], logs, "the unrelated rule is kept unchanged");
    // Applying again updates this repository's rules instead of adding more.
    r.ok(&[
        "lifecycle",
        "apply",
        "--transition-after",
        "90d",
        "--to",
        "DEEP_ARCHIVE",
    ]);
    let rules = b.lifecycle_rules().unwrap();
    assert_eq!(rules.len(), 3);
    let show = r.ok(&["lifecycle", "show"]).out();
    assert!(
        show.contains("\"fleet/db1/data/\": transition to DEEP_ARCHIVE after 90 days"),
        "{show}"
    );
    assert!(show.contains("expire-logs"), "{show}");
    let check = r.ok(&["--json", "lifecycle", "check"]);
    assert_eq!(check.json("lifecycle_check")[0]["problems"], 0);

    // Someone adds a rule that archives everything under fleet/ and one that expires the bucket.
    let mut rules = b.lifecycle_rules().unwrap();
    rules.push(
        rule("archive-fleet", "fleet/")
            .transitions(
                Transition::builder()
                    .days(1)
                    .storage_class(TransitionStorageClass::Glacier)
                    .build(),
            )
            .build()
            .unwrap(),
    );
    rules.push(
        rule("expire-all", "")
            .expiration(LifecycleExpiration::builder().days(365).build())
            .build()
            .unwrap(),
    );
    b.put_lifecycle_rules(rules).unwrap();
    let bad = r.run(&["lifecycle", "check"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("archive-fleet") && bad.stderr.contains("fleet/db1/index/"),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("expire-all"), "{}", bad.stderr);
    // A local repository has no bucket.
    let local = Repo::local(&e).run(&["lifecycle", "show"]);
    assert_eq!(local.code, 2);
    assert!(local.stderr.contains("S3"), "{}", local.stderr);
}

#[test]
fn s3_backup_and_restore_complete_through_faults() {
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    let e = Env::new();
    let r = Repo::s3(
        &e,
        &proxy.endpoint,
        &format!("faults-{}", std::process::id()),
        "r",
    );
    let mut init = vec!["init"];
    init.extend(SMALL);
    r.ok(&init);
    let src = e.path("src");
    files(&src.join("a"), 5, 8, 150_000);
    files(&src.join("b"), 6, 30, 3_000);
    let all = [
        Fault::SlowDown,
        Fault::Reset,
        Fault::InternalError,
        Fault::Truncate,
    ];
    proxy.arm(4, &all);
    let b1 = r.ok(&["--json", "backup", src.to_str().unwrap()]);
    let req = requests(&b1);
    assert_eq!(req["DELETE"], 0);
    let inj = proxy.injected();
    assert!(
        inj.slowdown >= 3 && inj.reset >= 2 && inj.internal >= 2,
        "backup: {inj:?}"
    );
    // The restore reads pack ranges: every second request cut off, reset, refused, failed
    // or slow.
    proxy.arm(
        2,
        &[
            Fault::Truncate,
            Fault::Reset,
            Fault::Truncate,
            Fault::SlowDown,
            Fault::InternalError,
            Fault::Slow,
        ],
    );
    let target = e.path("t");
    r.ok(&["restore", "--target", target.to_str().unwrap()]);
    e.compare(&src, &target.join(src.strip_prefix("/").unwrap()), &[]);
    let after = proxy.injected();
    assert!(
        after.truncate - inj.truncate >= 3 && after.reset - inj.reset >= 2,
        "restore: {inj:?} -> {after:?}"
    );
    let inj = after;

    // With retries off, a fault fails the backup with a clear error and leaves no snapshot
    // that names data that was not stored.
    files(&src.join("c"), 7, 8, 150_000);
    let bucket = r
        .url
        .as_ref()
        .unwrap()
        .trim_start_matches("s3:")
        .to_string();
    proxy.arm_only(
        3,
        &[Fault::SlowDown],
        Some(&format!("PUT /{}/data/", bucket)),
    );
    let failed = r.run(&["--s3-max-attempts", "1", "backup", src.to_str().unwrap()]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("/r/data/") && failed.stderr.contains("SlowDown"),
        "the error names the pack and the cause: {}",
        failed.stderr
    );
    assert!(proxy.injected().slowdown > inj.slowdown);
    proxy.disarm();
    let snaps = r.ok(&["--json", "snapshots"]);
    assert_eq!(snaps.json("snapshot").len(), 1);
    let check = r.ok(&["--json", "check"]);
    assert_eq!(
        check.json("check")[0]["problems"].as_array().unwrap().len(),
        0
    );
    // The next run completes.
    r.ok(&["backup", src.to_str().unwrap()]);

    // Retention and verification through faults and slow responses: forget, two prunes (mark,
    // then delete and repack) and `check --read-data` complete by retrying, and what is kept
    // restores identical.
    let before = proxy.injected();
    proxy.arm(
        3,
        &[
            Fault::SlowDown,
            Fault::Slow,
            Fault::Reset,
            Fault::InternalError,
            Fault::Truncate,
        ],
    );
    r.ok(&["forget", "--keep-last", "1"]);
    r.ok(&["prune", "--grace", "0s", "--max-unused", "0%"]);
    r.ok(&["prune", "--grace", "0s", "--max-unused", "0%"]);
    let check = r.ok(&["--json", "check", "--read-data"]);
    assert_eq!(
        check.json("check")[0]["problems"].as_array().unwrap().len(),
        0,
        "{}",
        check.out()
    );
    let after = proxy.injected();
    assert!(
        after.slow > before.slow
            && after.reset > before.reset
            && after.slowdown > before.slowdown
            && after.truncate > before.truncate,
        "retention and check: {before:?} -> {after:?}"
    );
    proxy.disarm();
    let target = e.path("t2");
    r.ok(&["restore", "--target", target.to_str().unwrap()]);
    e.compare(&src, &target.join(src.strip_prefix("/").unwrap()), &[]);

    // With retries off, a restore and a `check --read-data` whose pack reads are refused say
    // so naming the pack and the cause, and change nothing in the repository.
    let data_gets = format!("GET /{bucket}/data/");
    proxy.arm_only(1, &[Fault::SlowDown], Some(&data_gets));
    let t3 = e.path("t3");
    let failed = r.run(&[
        "--s3-max-attempts",
        "1",
        "restore",
        "--target",
        t3.to_str().unwrap(),
    ]);
    assert!(failed.code == 1 || failed.code == 3, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("/r/data/") && failed.stderr.contains("SlowDown"),
        "the restore names the pack and the cause: {}",
        failed.stderr
    );
    let failed = r.run(&["--s3-max-attempts", "1", "--json", "check", "--read-data"]);
    assert_ne!(failed.code, 0, "{}", failed.out());
    assert!(
        failed.out().contains("SlowDown") || failed.stderr.contains("SlowDown"),
        "check names the cause: {}{}",
        failed.out(),
        failed.stderr
    );
    // A prune whose deletions are refused fails naming the object, and leaves a repository
    // that checks clean and restores; the next prune finishes.
    files(&src.join("a"), 8, 8, 150_000);
    r.ok(&["backup", src.to_str().unwrap()]);
    proxy.disarm();
    r.ok(&["forget", "--keep-last", "1"]);
    let deletes = format!("DELETE /{bucket}/");
    proxy.arm_only(1, &[Fault::InternalError], Some(&deletes));
    // Prune marks first and deletes on a later run: two runs, each refused at its deletions.
    let mut refused = 0;
    for _ in 0..2 {
        let failed = r.run(&[
            "--s3-max-attempts",
            "1",
            "prune",
            "--grace",
            "0s",
            "--max-unused",
            "0%",
        ]);
        if failed.code != 0 {
            assert!(
                failed.stderr.contains("/r/") && failed.stderr.contains("InternalError"),
                "the prune names the object and the cause: {}",
                failed.stderr
            );
            refused += 1;
        }
    }
    proxy.disarm();
    assert!(refused > 0, "no prune met a refused deletion");
    let check = r.ok(&["--json", "check", "--read-data"]);
    assert_eq!(
        check.json("check")[0]["problems"].as_array().unwrap().len(),
        0,
        "{}",
        check.out()
    );
    r.ok(&["prune", "--grace", "0s", "--max-unused", "0%"]);
    r.ok(&["prune", "--grace", "0s", "--max-unused", "0%"]);
    let t4 = e.path("t4");
    r.ok(&["restore", "--target", t4.to_str().unwrap()]);
    e.compare(&src, &t4.join(src.strip_prefix("/").unwrap()), &[]);
}

/// Several hosts back up into one S3 repository at once while the retention job prunes.
#[test]
fn s3_concurrent_backups_and_prunes() {
    let ep = s3_endpoint();
    let e = Env::new();
    let r = Repo::s3(&e, &ep, &format!("cc-{}", std::process::id()), "fleet");
    let mut init = vec!["init"];
    init.extend(SMALL);
    r.ok(&init);
    let mk = || r.cmd();
    scenario::concurrent_backups_and_prunes(&mk, e.dir.path(), 3, 5);
}

/// Backups into an S3 repository killed with SIGKILL at random moments, twenty times: after
/// each, `check` finds nothing wrong, the next backup completes and reuses what the killed one
/// had indexed, and every fourth snapshot restores identical (the same scenario as the local
/// repository's in tests/maintenance.rs, over the SDK's multipart uploads and retries).
#[test]
fn s3_killed_backups_leave_a_checkable_repository_and_their_uploads_are_reused() {
    let ep = s3_endpoint();
    let e = Env::new();
    let r = Repo::s3(&e, &ep, &format!("kb-{}", std::process::id()), "killed");
    // The scenario's reuse threshold counts packs of 256 KiB, as `Env::init_small` makes them.
    let mut init = vec!["init"];
    init.extend(INIT_SMALL);
    r.ok(&init);
    let b = r.backend();
    let data_bytes = || -> u64 { b.list(FileKind::Data).unwrap().iter().map(|o| o.1).sum() };
    let mk = || r.cmd();
    common::plant_dead_run(&e.path("tmp"), "chunkbak-");
    scenario::killed_backups(&mk, e.dir.path(), &data_bytes, &[e.path("tmp")], true);
}

/// Prunes of an S3 repository killed with SIGKILL at random moments, a dozen times, each with
/// new garbage to delete (deletes, repacks and index rewrites have no atomic rename there):
/// after each, `check` passes and the kept snapshot restores identical; prune run again
/// finishes the job and leaves nothing to do.
#[test]
fn s3_killed_prunes_leave_a_consistent_repository_and_the_next_prune_finishes() {
    use scenario::{files_of, kill_moment, run_and_kill_after, seed, time_complete_run, Rng};
    let ep = s3_endpoint();
    let e = Env::new();
    let bucket = format!("kp-{}", std::process::id());
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    // Four snapshots of changing files, three forgotten, their packs marked by a first prune.
    let with_garbage = |r: &Repo| {
        let mut init = vec!["init"];
        init.extend(SMALL);
        r.ok(&init);
        for round in 0..4u64 {
            for i in 0..10u64 {
                let data = splitmix(round * 100 + i * (round % 2), 1_000_000);
                fs::write(src.join(format!("f{i}")), data).unwrap();
            }
            r.ok(&["backup", src.to_str().unwrap()]);
        }
        r.ok(&["forget", "--keep-last", "1"]);
        r.ok(&["prune", "--grace", "0s"]);
    };
    let prune = ["prune", "--grace", "0s", "--max-unused", "0%"];
    // A repository of the same history times a complete prune: the kills fall inside it.
    let probe = Repo::s3(&e, &ep, &bucket, "probe");
    with_garbage(&probe);
    let mut c = probe.cmd();
    c.args(prune);
    let mut full = time_complete_run(c);
    let r = Repo::s3(&e, &ep, &bucket, "killed");
    with_garbage(&r);
    let mut rng = Rng(seed("s3_killed_prune"));
    let mut killed = 0;
    for attempt in 0..12u64 {
        if attempt > 0 {
            // Fresh garbage, marked like the probe's, so every attempt has a whole job to do.
            for i in 0..10u64 {
                let data = splitmix(1000 + attempt * 10 + i, 1_000_000);
                fs::write(src.join(format!("f{i}")), data).unwrap();
            }
            r.ok(&["backup", src.to_str().unwrap()]);
            r.ok(&["forget", "--keep-last", "1"]);
            r.ok(&["prune", "--grace", "0s"]);
        }
        let mut c = r.cmd();
        c.args(prune);
        let t = std::time::Instant::now();
        if run_and_kill_after(c, kill_moment(&mut rng, full)) {
            killed += 1;
        } else {
            // The S3 test server serves every test of this binary at once, so its pace
            // changes: a prune that finished in time is the newest measure of a complete one.
            full = t.elapsed();
        }
        let out = r.ok(&["check"]);
        assert!(
            out.out().contains(" 0 problems"),
            "after prune kill {attempt}: {}",
            out.out()
        );
        if attempt % 3 == 0 {
            let t = e.path(&format!("r{attempt}"));
            r.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
            assert!(files_of(&t.join(src.strip_prefix("/").unwrap())) == files_of(&src));
        }
    }
    eprintln!("{killed} S3 prunes killed (a complete one took {full:?} last)");
    assert!(killed >= 4, "only {killed} of 12 prunes were killed");
    r.ok(&prune);
    r.ok(&prune);
    let mut dry = vec!["--json"];
    dry.extend(prune);
    dry.push("--dry-run");
    let plan = r.ok(&dry);
    let p = &plan.json("prune_plan")[0];
    for k in ["mark", "delete", "repack", "waiting"] {
        assert_eq!(p[k]["packs"], 0, "{k} after a finished prune: {p}");
    }
    let out = r.ok(&["check", "--read-data"]);
    assert!(out.out().contains(" 0 problems"), "{}", out.out());
}

/// `copy` with S3 at both ends: a local repository to a GLACIER-class bucket repository made
/// with the same chunker parameters, then out of it into another local repository (thawing
/// exactly what it reads, and waiting), then copies into the bucket while it backs up and
/// prunes.
#[test]
fn s3_copy_in_and_out_of_a_glacier_bucket() {
    let ep = emulator_endpoint();
    let e = Env::new();
    let local = Repo::local(&e);
    let mut init = vec!["init"];
    init.extend(SMALL);
    local.ok(&init);
    let src = e.path("src");
    files(&src, 5, 6, 100_000);
    let s = src.to_str().unwrap();
    local.ok(&["backup", s, "--host", "h0"]);

    let r = Repo::s3(&e, &ep, &format!("copy-{}", std::process::id()), "dr");
    let url = r.url.clone().unwrap();
    let from = e.repo.to_str().unwrap();
    r.ok(&[
        "init",
        "--copy-chunker-params",
        "--from",
        from,
        "--from-password-file",
        e.pw.to_str().unwrap(),
        "--data-storage-class",
        "GLACIER",
        "--kdf-memory-kib",
        "256",
        "--kdf-iterations",
        "1",
    ]);
    // The source is local, the target S3: the command carries the S3 settings.
    let to_s3 = |args: &[&str]| {
        let mut c = r.cmd();
        c.env("CHUNKBAK_REPOSITORY", &e.repo)
            .args(["--json", "copy", "--to", &url, "--to-password-file"])
            .arg(&e.pw)
            .args(args);
        let o = e.run_cmd(c);
        assert_eq!(o.code, 0, "{}{}", o.out(), o.stderr);
        o
    };
    let c = to_s3(&[]);
    assert_eq!(c.json("copy_plan")[0]["same_ids"], true);
    assert_eq!(c.json("copied").len(), 1);
    let data = r.backend().list_info(FileKind::Data).unwrap();
    assert!(!data.is_empty() && data.iter().all(|o| o.class == StorageClass::Glacier));
    r.ok(&["check"]);
    // Nothing new: nothing read, nothing written.
    let again = to_s3(&[]);
    assert_eq!(again.json("copy_plan")[0]["present"], 1);
    assert!(again.json("copied").is_empty());

    // Out of the bucket: the archived packs are thawed first, then read.
    let back = e.path("back");
    let mut init2 = vec!["init", "--copy-chunker-params", "--from", &url];
    init2.extend(["--kdf-memory-kib", "256", "--kdf-iterations", "1"]);
    let mut c = r.cmd();
    c.env("CHUNKBAK_REPOSITORY", &back)
        .env("CHUNKBAK_FROM_PASSWORD_FILE", &e.pw)
        .args(&init2);
    assert_eq!(e.run_cmd(c).code, 0);
    let out = r.ok(&[
        "--json",
        "copy",
        "--to",
        back.to_str().unwrap(),
        "--to-password-file",
        e.pw.to_str().unwrap(),
        "--poll-interval",
        "1s",
    ]);
    let thaw = out.json("thaw");
    assert_eq!(thaw.len(), 1, "{}", out.out());
    assert_eq!(thaw[0]["requested"].as_u64().unwrap(), data.len() as u64);
    assert_eq!(out.json("copied").len(), 1);
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &back)
        .args(["restore", "latest", "--target"])
        .arg(e.path("restored"));
    assert_eq!(e.run_cmd(c).code, 0);
    e.compare(
        &src,
        &e.path("restored").join(src.strip_prefix("/").unwrap()),
        &[],
    );

    // Copies into the bucket while it backs up and prunes (a STANDARD-class repository: prune
    // never deletes GLACIER packs before their minimum storage duration).
    let t = Repo::s3(&e, &ep, &format!("copy-cc-{}", std::process::id()), "t");
    let turl = t.url.clone().unwrap();
    t.ok(&[
        "init",
        "--copy-chunker-params",
        "--from",
        from,
        "--from-password-file",
        e.pw.to_str().unwrap(),
        "--kdf-memory-kib",
        "256",
        "--kdf-iterations",
        "1",
    ]);
    let src_cmd = || {
        let mut c = t.cmd();
        c.env("CHUNKBAK_REPOSITORY", &e.repo);
        c
    };
    let dst_cmd = || t.cmd();
    scenario::copies_while_target_prunes(&src_cmd, &dst_cmd, &turl, &e.pw, e.dir.path(), 5);
}

/// The shipped least-privilege policies (examples/iam) allow listing only under the
/// repository's prefix, so S3 answers HeadBucket with 403: `init` then takes the bucket to
/// exist and goes on. Into a bucket that does not exist it still fails, naming the bucket.
#[test]
fn s3_init_goes_on_when_head_bucket_is_forbidden() {
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    let e = Env::new();
    let mut init = vec!["init"];
    init.extend(SMALL);
    let bucket = format!("iam-{}", std::process::id());
    // The bucket exists: another repository made it.
    Repo::s3(&e, &ep, &bucket, "first").ok(&init);
    proxy.arm_only(1, &[Fault::Forbidden], Some(&format!("HEAD /{bucket}/ ")));
    let r = Repo::s3(&e, &proxy.endpoint, &bucket, "second");
    r.ok(&init);
    // Both HeadBuckets refused: the region discovery's and init's check that the bucket is
    // there.
    assert_eq!(proxy.injected().forbidden, 2);
    let src = e.path("src");
    files(&src, 3, 4, 20_000);
    r.ok(&["backup", src.to_str().unwrap()]);
    let c = r.ok(&["check", "--read-data"]);
    assert!(c.stderr.contains(" 0 problems"), "{}", c.stderr);

    // SeaweedFS creates a bucket at the first write into it: there, the second half does not
    // apply.
    if std::env::var("CHUNKBAK_TEST_S3_SERVER").as_deref() == Ok("seaweedfs") {
        return;
    }
    let missing = format!("iam-missing-{}", std::process::id());
    proxy.arm_only(1, &[Fault::Forbidden], Some(&format!("HEAD /{missing}/ ")));
    let m = Repo::s3(&e, &proxy.endpoint, &missing, "r").run(&init);
    assert_eq!(m.code, 1, "{}", m.stderr);
    let first = m.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(&missing) && first.contains("NoSuchBucket"),
        "{}",
        m.stderr
    );
}

/// Issue 21: a repository string carries its own endpoint (`s3:http://HOST:PORT/BUCKET/PREFIX`,
/// restic's form), used without --s3-endpoint; a malformed one fails at once, listing the
/// accepted forms, without a request.
#[test]
fn repository_strings_carry_their_own_endpoint_and_malformed_ones_fail_at_once() {
    let e = Env::new();
    let ep = s3_endpoint();
    let url = format!("s3:{ep}/{}/fleet/web1", test_bucket("urlform"));
    let run = |args: &[&str]| {
        let mut c = e.cmd();
        with_s3(&mut c, None, &url)
            .env("CHUNKBAK_S3_MAX_ATTEMPTS", "1")
            .args(args);
        e.run_cmd(c)
    };
    let mut init = vec!["init"];
    init.extend(INIT_SMALL);
    let r = run(&init);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"through the string's endpoint").unwrap();
    assert_eq!(run(&["backup", src.to_str().unwrap()]).code, 0);
    let t = e.path("t");
    let r = run(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        fs::read(t.join(src.strip_prefix("/").unwrap()).join("f")).unwrap(),
        b"through the string's endpoint"
    );
    // Upper-case prefix: still S3, not a local folder named "S3:...".
    let upper = url.replacen("s3:", "S3:", 1);
    let mut c = e.cmd();
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .args(["-r", &upper, "snapshots"]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!Path::new(&upper).exists());
    // The endpoint from AWS_ENDPOINT_URL_S3 (the SDK's S3-only variable) is a store of its own
    // too: path style (was: virtual-hosted, `BUCKET.127.0.0.1`, and DNS failures).
    let plain = format!("s3:{}/fleet/web1", url.split('/').nth(3).unwrap());
    let mut c = e.cmd();
    with_s3(&mut c, None, &plain)
        .env("AWS_ENDPOINT_URL_S3", &ep)
        .env("CHUNKBAK_S3_MAX_ATTEMPTS", "1")
        .args(["--json", "snapshots"]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json("snapshot").len(), 1, "{}", r.out());
    for bad in ["s3:https:", "s3:https:/bucket", "s3:My_Bucket/x"] {
        let started = std::time::Instant::now();
        let r = e.run(&["-r", bad, "snapshots"]);
        assert_ne!(r.code, 0, "{bad}");
        assert!(
            r.stderr.contains("s3:https://HOST[:PORT]/BUCKET"),
            "{bad}: {}",
            r.stderr
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{bad}: slow"
        );
    }
}

/// The moto server (pinned in its own venv by the project's script, not the system's), for what
/// the S3 emulator does not model: bucket regions.
fn moto_endpoint() -> String {
    s3_server("moto")
}

/// Issue 21: `init` creates a missing bucket in the region asked for (AWS_REGION, or
/// --s3-region), with the LocationConstraint every region but us-east-1 needs.
#[test]
fn init_creates_the_bucket_in_its_region() {
    let e = Env::new();
    let ep = moto_endpoint();
    let tag = test_bucket("region");
    let location = |bucket: &str| {
        let mut cfg = S3Config::parse(&format!("s3:{bucket}/r")).unwrap();
        cfg.endpoint = Some(ep.clone());
        cfg.static_credentials = Some(("test".into(), "test".into()));
        cfg.region = Some("us-east-1".into());
        let b = S3Backend::new(cfg).unwrap();
        let (c, name) = (b.client().clone(), bucket.to_string());
        b.block_on(async move { c.get_bucket_location().bucket(name).send().await })
            .unwrap()
            .location_constraint()
            .map(|l| l.as_str().to_string())
            .unwrap_or_default()
    };
    for (bucket, env_region, flag) in [
        (format!("{tag}-env"), "eu-west-1", None),
        (format!("{tag}-flag"), "us-east-1", Some("eu-central-1")),
    ] {
        let mut c = e.cmd();
        with_s3(&mut c, Some(&ep), &format!("s3:{bucket}/r")).env("AWS_REGION", env_region);
        if let Some(f) = flag {
            c.args(["--s3-region", f]);
        }
        c.arg("init").args(INIT_SMALL);
        let r = e.run_cmd(c);
        assert_eq!(r.code, 0, "{bucket}: {}", r.stderr);
        assert_eq!(location(&bucket), flag.unwrap_or(env_region), "{bucket}");
    }
    // An existing bucket's region is discovered: a host whose AWS_REGION is us-east-1 asks
    // the bucket (one HeadBucket, signed for us-east-1) and signs everything after for the
    // bucket's region, eu-central-1.
    let proxy = FaultProxy::start(&ep);
    let bucket = format!("{tag}-flag");
    let mut c = e.cmd();
    with_s3(&mut c, Some(&proxy.endpoint), &format!("s3:{bucket}/r"))
        .env("AWS_REGION", "us-east-1")
        .arg("snapshots");
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = proxy.requests();
    assert!(
        log[0].starts_with(&format!("HEAD /{bucket} "))
            || log[0].starts_with(&format!("HEAD /{bucket}/ ")),
        "{log:?}"
    );
    assert!(log[0].ends_with("region=us-east-1"), "{log:?}");
    assert!(log.len() > 2, "{log:?}");
    assert!(
        log[1..].iter().all(|l| l.ends_with("region=eu-central-1")),
        "{log:?}"
    );
}

/// Issue 21 (part 7): a store without an operation (501) is said to lack it, once, not to be
/// "still failing after the retries".
#[test]
fn a_501_is_reported_as_not_implemented_without_retries() {
    let e = Env::new();
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    let url = format!("s3:{}/r", test_bucket("notimpl"));
    let run = |args: &[&str]| {
        let mut c = e.cmd();
        with_s3(&mut c, Some(&proxy.endpoint), &url).args(args);
        e.run_cmd(c)
    };
    let mut init = vec!["init"];
    init.extend(INIT_SMALL);
    assert_eq!(run(&init).code, 0);
    let before = proxy.requests().len();
    proxy.arm_only(1, &[Fault::NotImplemented], Some("GET "));
    let r = run(&["snapshots"]);
    proxy.disarm();
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("HTTP 501") && r.stderr.contains("not implemented by this store"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("still failing"), "{}", r.stderr);
    let gets = proxy.requests()[before..]
        .iter()
        .filter(|l| l.starts_with("GET "))
        .count();
    assert_eq!(
        gets,
        1,
        "a 501 is not retried: {:?}",
        &proxy.requests()[before..]
    );
}

/// Issue 21, on SeaweedFS (a production store, not an emulator): packs of 100 MiB go up as
/// multipart uploads whose parts carry a precomputed CRC32C header (no aws-chunked body); a
/// repository whose data class is GLACIER, which SeaweedFS labels but serves at once (and
/// whose RestoreObject it refuses with 405), restores and copies without a thaw; `check
/// --read-data` reads every pack. Before: restore and copy failed on the refused
/// RestoreObject and check skipped every data pack as archived.
#[test]
fn seaweedfs_multipart_packs_and_a_glacier_labelled_repository() {
    let ep = s3_server("seaweedfs");
    let proxy = FaultProxy::start(&ep);
    let e = Env::new();
    let bucket = format!("seaweed-{}", std::process::id());
    let r = Repo::s3(&e, &proxy.endpoint, &bucket, "r");
    let pack = (100u32 << 20).to_string();
    let mut init = vec![
        "init",
        "--data-pack-size",
        &pack,
        "--data-storage-class",
        "GLACIER",
    ];
    init.extend(FAST_KDF);
    r.ok(&init);
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    // 230 MiB that does not compress: two full 100 MiB packs and a remainder.
    for i in 0..23u64 {
        fs::write(src.join(format!("f{i:02}")), splitmix(i, 10 << 20)).unwrap();
    }
    let start = proxy.requests().len();
    let b = r.ok(&["--json", "backup", src.to_str().unwrap()]);
    let data = r.backend().list_info(FileKind::Data).unwrap();
    assert!(
        data.iter().filter(|o| o.size > 64 << 20).count() >= 2,
        "{data:?}"
    );
    assert!(
        data.iter().all(|o| o.class == StorageClass::Glacier),
        "{data:?}"
    );
    let log = proxy.requests()[start..].to_vec();
    let parts: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("PUT ") && l.contains("partNumber="))
        .collect();
    assert!(
        parts.len() >= 14,
        "100 MiB packs go up in 16 MiB parts: {log:?}"
    );
    let chunked: Vec<&String> = log.iter().filter(|l| l.contains("aws-chunked")).collect();
    assert!(chunked.is_empty(), "no aws-chunked body: {chunked:?}");
    // The summary's request counts are the requests the store received.
    let puts = log.iter().filter(|l| l.starts_with("PUT ")).count()
        + log
            .iter()
            .filter(|l| l.starts_with("POST ") && (l.contains("uploads") || l.contains("uploadId")))
            .count();
    assert_eq!(
        requests(&b)["PUT"].as_u64().unwrap(),
        puts as u64,
        "{log:?}"
    );

    // Restore: no RestoreObject sent (the store serves the GLACIER-labelled packs), files
    // byte-exact.
    let before = proxy.requests().len();
    let out = e.path("out");
    let res = r.ok(&[
        "--json",
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_eq!(requests(&res)["RESTORE"], 0, "{}", res.out());
    assert!(!proxy.requests()[before..]
        .iter()
        .any(|l| l.contains("?restore")));
    e.compare(&src, &out.join(src.strip_prefix("/").unwrap()), &[]);

    // check --read-data reads every pack (data and tree), none skipped as archived.
    let c = r.ok(&["--json", "check", "--read-data"]);
    let d = &c.json("check_data")[0];
    let trees = r.backend().list(FileKind::Tree).unwrap().len() as u64;
    assert_eq!(
        d["packs_read"].as_u64().unwrap(),
        data.len() as u64 + trees,
        "{d}"
    );
    assert_eq!(d["archived_skipped"], 0, "{d}");

    // Copy out of it into a local repository: read directly, nothing thawed.
    let back = e.path("back");
    let mut c = r.cmd();
    c.env("CHUNKBAK_REPOSITORY", &back)
        .arg("init")
        .args(FAST_KDF);
    assert_eq!(e.run_cmd(c).code, 0);
    let url = r.url.clone().unwrap();
    let mut c = r.cmd();
    c.env("CHUNKBAK_REPOSITORY", &url).args([
        "--json",
        "copy",
        "--to",
        back.to_str().unwrap(),
        "--to-password-file",
        e.pw.to_str().unwrap(),
    ]);
    let copied = e.run_cmd(c);
    assert_eq!(copied.code, 0, "{}{}", copied.out(), copied.stderr);
    assert_eq!(copied.json("copied").len(), 1, "{}", copied.out());
    assert!(copied.json("thaw").is_empty(), "{}", copied.out());
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &back)
        .args(["restore", "latest", "--target"])
        .arg(e.path("out2"));
    assert_eq!(e.run_cmd(c).code, 0);
    e.compare(
        &src,
        &e.path("out2").join(src.strip_prefix("/").unwrap()),
        &[],
    );
}

/// Issue 21: a store that dies in the middle of a restore (its port refuses connections), or
/// hangs (requests never answered, as a SIGSTOPped server). Before, a dead store made the
/// restore go on file by file (2,300-4,600 warnings, as many GETs, up to 226 s) and a hung one
/// was waited for forever. Now the run stops after a bounded number of unanswered attempts (or
/// two over --s3-timeout) with one error naming the store and what was done; the rerun
/// completes the restore.
#[test]
fn a_dead_or_hung_store_stops_the_restore_with_one_error_and_the_rerun_completes() {
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    let e = Env::new();
    let bucket = format!("dead-{}", std::process::id());
    let r = Repo::s3(&e, &proxy.endpoint, &bucket, "r");
    let mut init = vec!["init"];
    init.extend(SMALL);
    r.ok(&init);
    let src = e.path("src");
    files(&src, 7, 300, 20_000);
    r.ok(&["backup", src.to_str().unwrap()]);
    let data_gets = format!("GET /{bucket}/r/data/");
    for hang in [false, true] {
        let target = e.path(if hang { "t-hung" } else { "t-dead" });
        let t = target.to_str().unwrap();
        proxy.stop_after(10, &data_gets, hang);
        let before = proxy.requests().len();
        let started = std::time::Instant::now();
        // A dead store at the default timeout (stops after 10 s of silence); a hung one at 3 s.
        let timeout = if hang { "3s" } else { "120s" };
        let o = r.run(&["--s3-timeout", timeout, "restore", "latest", "--target", t]);
        let took = started.elapsed();
        assert_ne!(o.code, 0, "{}", o.stderr);
        eprintln!(
            "store {}: the restore stopped after {took:?}",
            if hang { "hung" } else { "dead" }
        );
        assert!(took < std::time::Duration::from_secs(30), "{took:?}");
        let errors: Vec<&str> = o
            .stderr
            .lines()
            .filter(|l| l.contains("stopped answering"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", o.stderr);
        assert!(
            errors[0].contains(&proxy.endpoint) && errors[0].contains("files were restored"),
            "{}",
            o.stderr
        );
        let messages = o
            .stderr
            .lines()
            .filter(|l| l.starts_with("chunkbak: "))
            .count();
        assert_eq!(messages, 1, "one error, not a line per file: {}", o.stderr);
        if hang {
            assert!(errors[0].contains("no answer within 3 s"), "{}", o.stderr);
        }
        // Attempts after the store went away are bounded, not one per file.
        let sent = proxy.requests().len() - before;
        assert!(sent < 60, "{sent} requests");
        proxy.revive();
        r.ok(&["restore", "latest", "--target", t]);
        e.compare(&src, &target.join(src.strip_prefix("/").unwrap()), &[]);
    }
}

/// Issue 21: `copy` between two S3 repositories counts each one's requests (was: one counter,
/// the source's; the target's PUTs were missing). The target's, in the `requests` message's
/// `repositories`, equal what its store received.
#[test]
fn copy_counts_each_repositorys_requests_as_its_store_received_them() {
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    let e = Env::new();
    let bucket = format!("copycount-{}", std::process::id());
    let src = Repo::s3(&e, &ep, &bucket, "src");
    let mut init = vec!["init"];
    init.extend(SMALL);
    src.ok(&init);
    let data = e.path("data");
    files(&data, 11, 20, 30_000);
    src.ok(&["backup", data.to_str().unwrap()]);
    // The target through the proxy, named by a repository string with its own endpoint.
    let target = format!("s3:{}/{bucket}/dst", proxy.endpoint);
    let mut c = src.cmd();
    c.env("CHUNKBAK_REPOSITORY", &target)
        .env("CHUNKBAK_FROM_PASSWORD_FILE", &e.pw)
        .args([
            "init",
            "--copy-chunker-params",
            "--from",
            &src.url.clone().unwrap(),
        ])
        .args(FAST_KDF);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = proxy.requests().len();
    let out = src.ok(&[
        "--json",
        "copy",
        "--to",
        &target,
        "--to-password-file",
        e.pw.to_str().unwrap(),
    ]);
    assert_eq!(out.json("copied").len(), 1, "{}", out.out());
    let req = requests(&out);
    let repos = req["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2, "{req}");
    let dst = repos
        .iter()
        .find(|x| x["location"] == format!("s3:{bucket}/dst"))
        .unwrap_or_else(|| panic!("{req}"));
    let srcs = repos
        .iter()
        .find(|x| x["location"] == format!("s3:{bucket}/src"))
        .unwrap_or_else(|| panic!("{req}"));
    // What the target's store received, by S3 request type.
    let log = proxy.requests()[before..].to_vec();
    let count = |f: &dyn Fn(&str, &str) -> bool| {
        log.iter()
            .filter(|l| {
                let mut it = l.split_whitespace();
                f(it.next().unwrap_or(""), it.next().unwrap_or(""))
            })
            .count() as u64
    };
    let list = count(&|m, t| m == "GET" && t.contains("list-type"));
    let get = count(&|m, t| m == "GET" && !t.contains("list-type"));
    let put = count(&|m, t| m == "PUT" || (m == "POST" && t.contains("upload")));
    let head = count(&|m, _| m == "HEAD");
    assert!(
        put > 3,
        "the copy wrote packs, an index and a snapshot: {log:?}"
    );
    for (k, v) in [("PUT", put), ("GET", get), ("LIST", list), ("HEAD", head)] {
        assert_eq!(dst[k].as_u64().unwrap(), v, "{k}: {dst} vs {log:?}");
    }
    // The source was read, and written nothing; the sum is in the top-level fields.
    assert_eq!(srcs["PUT"], 0, "{srcs}");
    assert!(srcs["GET"].as_u64().unwrap() > 0, "{srcs}");
    assert_eq!(
        req["PUT"].as_u64().unwrap(),
        put + srcs["PUT"].as_u64().unwrap()
    );
}

/// Issue 21: `init` asks the store what it does with uploads and says, one line each, what is
/// missing and what it costs: SeaweedFS has no lifecycle rules, moto keeps a PUT whose CRC32C
/// is wrong, a store that refuses the storage class asked for stops `init` before anything is
/// written (was: accepted, then the first backup's first pack failed with a bare HTTP 400).
/// The answers are kept per host and store: later runs send no probe.
#[test]
fn init_asks_the_store_what_it_does_with_uploads() {
    let e = Env::new();
    let mut init = vec!["--json", "init"];
    init.extend(SMALL);
    let caps = |r: &Run| r.json("store_capabilities")[0].clone();

    let sw = Repo::s3(&e, &s3_server("seaweedfs"), &test_bucket("probe-sw"), "r");
    let r = sw.ok(&init);
    assert_eq!(caps(&r)["checks_checksums"], true, "{}", r.out());
    assert_eq!(r.json("warning").len(), 0, "{}", r.out());
    // A store without lifecycle rules (501 to GetBucketLifecycleConfiguration).
    let proxy = FaultProxy::start(&emulator_endpoint());
    let bucket = test_bucket("probe-lc");
    proxy.arm_only(
        1,
        &[Fault::NotImplemented],
        Some(&format!("GET /{bucket}/?lifecycle")),
    );
    let r = Repo::s3(&e, &proxy.endpoint, &bucket, "r").ok(&init);
    assert_eq!(caps(&r)["lifecycle"], false, "{}", r.out());
    assert!(r.stderr.contains("has no lifecycle rules"), "{}", r.stderr);

    let moto = Repo::s3(&e, &s3_server("moto"), &test_bucket("probe-moto"), "r");
    let r = moto.ok(&init);
    assert_eq!(caps(&r)["checks_checksums"], false, "{}", r.out());
    assert!(r.stderr.contains("CRC32C does not match"), "{}", r.stderr);

    let proxy = FaultProxy::start(&emulator_endpoint());
    let bucket = test_bucket("probe-class");
    let refused = Repo::s3(&e, &proxy.endpoint, &bucket, "r");
    proxy.arm_only(1, &[Fault::InvalidArgument], Some("-DEEP_ARCHIVE?"));
    let mut deep = init.clone();
    deep.extend(["--data-storage-class", "DEEP_ARCHIVE"]);
    let r = refused.run(&deep);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("refuses uploads in storage class DEEP_ARCHIVE")
            && r.stderr.contains("InvalidArgument"),
        "{}",
        r.stderr
    );
    assert!(
        !proxy
            .requests()
            .iter()
            .any(|l| l.contains("/r/config") && l.starts_with("PUT ")),
        "nothing written"
    );
    proxy.disarm();
    // Accepted: init goes on; the next runs of this host send no probe.
    refused.ok(&init);
    let before = proxy.requests().len();
    let src = e.path("src");
    files(&src, 2, 3, 10_000);
    refused.ok(&["backup", src.to_str().unwrap()]);
    let probes: Vec<String> = proxy.requests()[before..]
        .iter()
        .filter(|l| l.contains("/probe/"))
        .cloned()
        .collect();
    assert!(probes.is_empty(), "{probes:?}");
}

/// Issue 21: each repository of a `copy` has its own credentials: `--to-s3-profile` signs the
/// target's requests with that profile's keys, though the environment holds the source's.
#[test]
fn copy_signs_the_target_with_its_own_profile() {
    // The emulator: it takes any key (SeaweedFS knows only the test identity).
    let ep = emulator_endpoint();
    let proxy = FaultProxy::start(&ep);
    let e = Env::new();
    let bucket = test_bucket("profiles");
    let src = Repo::s3(&e, &ep, &bucket, "src");
    let mut init = vec!["init"];
    init.extend(SMALL);
    src.ok(&init);
    let data = e.path("data");
    files(&data, 4, 5, 20_000);
    src.ok(&["backup", data.to_str().unwrap()]);
    let creds = e.path("aws-credentials");
    fs::write(
        &creds,
        "[dr]\naws_access_key_id = DRACCOUNTKEY\naws_secret_access_key = drsecret\n",
    )
    .unwrap();
    let config = e.path("aws-config");
    fs::write(&config, "[profile dr]\nregion = us-east-1\n").unwrap();
    let target = format!("s3:{}/{bucket}/dst", proxy.endpoint);
    let with_files = |c: &mut Command| {
        c.env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", &config);
    };
    // The target made with the dr profile (the environment keeps the source's keys).
    let mut c = src.cmd();
    with_files(&mut c);
    c.env("CHUNKBAK_REPOSITORY", &target)
        .env("CHUNKBAK_S3_PROFILE", "dr")
        .args(&init);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = proxy.requests().len();
    let mut c = src.cmd();
    with_files(&mut c);
    c.args(["--json", "copy", "--to", &target, "--to-s3-profile", "dr"])
        .arg("--to-password-file")
        .arg(&e.pw);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json("copied").len(), 1, "{}", r.out());
    let log = proxy.requests()[before..].to_vec();
    assert!(log.iter().any(|l| l.starts_with("PUT ")), "{log:?}");
    assert!(
        log.iter().all(|l| l.contains(" key=DRACCOUNTKEY ")),
        "every request to the target signed with the dr profile's key: {log:?}"
    );
}
