//! Scenarios shared by the local and the S3 end-to-end tests: many backups and prunes at once,
//! killed processes, damaged repositories.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{splitmix, Run};

/// Builds a `chunkbak` command that reaches the repository under test.
pub type Mk<'a> = &'a (dyn Fn() -> Command + Sync);

pub fn run(mk: Mk, args: &[&str]) -> Run {
    let mut c = mk();
    c.args(args);
    super::run_command(c)
}

pub fn ok(mk: Mk, args: &[&str]) -> Run {
    let r = run(mk, args);
    assert_eq!(
        r.code,
        0,
        "chunkbak {args:?} failed:\n{}\n{}",
        r.out(),
        r.stderr
    );
    r
}

/// Sets a stop flag when dropped, also while a panic unwinds: a background job that loops
/// until the flag is set must not keep a failed test's `thread::scope` waiting forever (a
/// failed backup once left the retention job looping until CI's time ran out).
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A small xorshift generator: test randomness that a failing seed reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The seed of a randomized test: `CHUNKBAK_TEST_SEED` or the clock (printed, to reproduce).
pub fn seed(what: &str) -> u64 {
    let s = std::env::var("CHUNKBAK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{what}: CHUNKBAK_TEST_SEED={s}");
    s
}

/// Every regular file under `root`, by relative path, with its bytes.
pub fn files_of(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            out.insert(
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

/// Changes a source tree: rewrites, adds and deletes a few files. `shared` content repeats
/// across hosts, so their backups deduplicate against each other.
pub fn mutate(dir: &Path, rng: &mut Rng, round: u64) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..4 {
        let n = rng.below(12);
        let p = if i % 2 == 0 {
            dir.join(format!("f{n}"))
        } else {
            dir.join(format!("sub/g{n}"))
        };
        if rng.below(5) == 0 {
            let _ = fs::remove_file(&p);
        } else {
            let len = 20_000 + rng.below(120_000) as usize;
            let seed = if rng.below(3) == 0 {
                7 + round % 3
            } else {
                rng.next()
            };
            fs::write(&p, splitmix(seed, len)).unwrap();
        }
    }
}

/// The retention job of the concurrency scenarios: each host keeps its two newest snapshots,
/// then prune, with a grace period of seconds.
const RETENTION: [&str; 11] = [
    "--json",
    "forget",
    "--keep-last",
    "2",
    "--group-by",
    "host",
    "--prune",
    "--grace",
    "3s",
    "--max-unused",
    "0%",
];

/// Several hosts back up into one repository at once, round after round, with random delays,
/// while `forget --keep-last 2 --prune` runs in a loop with a grace period of seconds. Then
/// `check --read-data` passes and every snapshot retention kept restores byte for byte.
pub fn concurrent_backups_and_prunes(mk: Mk, work: &Path, hosts: usize, rounds: u64) {
    let mut rng = Rng(seed("concurrent_backups_and_prunes"));
    let srcs: Vec<PathBuf> = (0..hosts).map(|h| work.join(format!("src{h}"))).collect();
    // (host, round) -> the files its backup saw, and the snapshot id.
    let mut states: BTreeMap<String, BTreeMap<PathBuf, Vec<u8>>> = BTreeMap::new();
    let mut by_host: Vec<Vec<String>> = vec![Vec::new(); hosts];
    let done = std::sync::atomic::AtomicBool::new(false);
    let prune_stats = std::sync::Mutex::new((0u64, 0u64, 0u64)); // runs, packs deleted, marked
    let mut copied = 0u64;
    // The retention job: each host keeps its two newest snapshots.
    let retention = RETENTION;
    let pruner_seed = rng.next();
    std::thread::scope(|s| {
        // The retention job.
        let pruner = s.spawn(|| {
            let mut r = Rng(pruner_seed);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200 + r.below(800)));
                let o = ok(mk, &retention);
                let mut st = prune_stats.lock().unwrap();
                st.0 += 1;
                for p in o.json("prune") {
                    st.1 += p["packs_deleted"].as_u64().unwrap();
                }
                for p in o.json("prune_plan") {
                    st.2 += p["mark"]["packs"].as_u64().unwrap();
                }
            }
        });
        let stop = StopOnDrop(&done);
        for round in 0..rounds {
            let mut children = Vec::new();
            for (h, src) in srcs.iter().enumerate() {
                mutate(src, &mut rng, round);
                let delay = rng.below(400);
                let mut c = mk();
                c.args(["--json", "backup", "--host", &format!("h{h}")])
                    .arg(src)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                std::thread::sleep(Duration::from_millis(delay));
                children.push((h, files_of(src), c.spawn().unwrap()));
            }
            for (h, files, child) in children {
                let o = child.wait_with_output().unwrap();
                let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
                let stderr = String::from_utf8_lossy(&o.stderr);
                assert!(
                    o.status.success(),
                    "backup of h{h} failed: {stdout}{stderr}"
                );
                let summary: Value = stdout
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|v| v["type"] == "summary")
                    .expect("a summary");
                copied += summary["data"]["blobs_copied"].as_u64().unwrap();
                let id = summary["data"]["snapshot_id"].as_str().unwrap().to_string();
                states.insert(id.clone(), files);
                by_host[h].push(id);
            }
        }
        drop(stop);
        pruner.join().unwrap();
    });
    // Let the last marks come due, then the retention job once more, twice (mark, delete).
    let during = prune_stats.lock().unwrap().1;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(4));
        let o = ok(mk, &retention);
        prune_stats.lock().unwrap().1 += o.json("prune")[0]["packs_deleted"].as_u64().unwrap();
    }
    let st = *prune_stats.lock().unwrap();
    eprintln!("packs deleted while backups ran: {during}");
    assert!(
        st.1 > 0,
        "prune deleted nothing: the test did not test deletion"
    );
    eprintln!(
        "{} retention runs marked {} packs and deleted {}; backups copied {copied} blobs out of marked packs",
        st.0, st.2, st.1
    );
    assert!(st.0 >= 2, "the retention job ran during the backups");
    let c = ok(mk, &["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
    // Retention keeps each host's two newest snapshots: all present, all restorable.
    let snaps = ok(mk, &["--json", "snapshots"]).json("snapshot");
    let present: Vec<String> = snaps
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for (h, ids) in by_host.iter().enumerate() {
        for id in ids.iter().rev().take(2) {
            assert!(
                present.contains(id),
                "h{h}: snapshot {id} that retention keeps is gone"
            );
        }
    }
    assert_eq!(present.len(), 2 * hosts, "{present:?}");
    for id in &present {
        let target = work.join(format!("restore-{}", &id[..8]));
        ok(mk, &["restore", id, "--target", target.to_str().unwrap()]);
        let h: usize = snaps.iter().find(|s| s["id"] == id.as_str()).unwrap()["host"]
            .as_str()
            .unwrap()[1..]
            .parse()
            .unwrap();
        let got = files_of(&target.join(srcs[h].strip_prefix("/").unwrap()));
        assert!(
            got == states[id],
            "snapshot {id} of h{h} does not restore what was backed up"
        );
        fs::remove_dir_all(&target).unwrap();
    }
}

/// Runs `c` (output discarded) and kills it with SIGKILL if it is still running after `wait`:
/// no cleanup of any kind. Returns whether it was killed.
/// How long a complete run of `c` takes (it must succeed): the scale of random kill moments,
/// so a test kills at every stage of the work on a fast machine and on a slow one alike.
pub fn time_complete_run(c: Command) -> Duration {
    let t = Instant::now();
    let r = super::run_command(c);
    assert_eq!(r.code, 0, "{}{}", r.out(), r.stderr);
    t.elapsed()
}

/// A random moment within a run that takes `full` when complete: from 5% to 95% of it.
pub fn kill_moment(rng: &mut Rng, full: Duration) -> Duration {
    full.mul_f64(0.05 + 0.9 * rng.below(1000) as f64 / 1000.0)
}

pub fn run_and_kill_after(mut c: Command, wait: Duration) -> bool {
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let t = Instant::now();
    while t.elapsed() < wait && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    killed
}

/// Kills backups at random moments: every time the repository passes `check`, and the next
/// backup stores less than the first attempt had uploaded (it reuses what was indexed).
///
/// A killed run leaves what it staged for upload in its folder under `staging` (the runs'
/// `TMPDIR`, and a local repository's `tmp/`); the next run that stages anything removes it.
/// The caller plants the folder of a run gone there ([`super::plant_dead_run`]): the first
/// backup removes it.
/// With `kills_leave_files` (S3: packs wait there for their upload), most kills leave some;
/// a local repository moves each pack into place as soon as it is full, so few do.
pub fn killed_backups(
    mk: Mk,
    work: &Path,
    repo_bytes: &dyn Fn() -> u64,
    staging: &[PathBuf],
    kills_leave_files: bool,
) {
    let staged = || -> u64 {
        staging
            .iter()
            .flat_map(walkdir::WalkDir::new)
            .flatten()
            .filter(|e| e.file_type().is_file() && e.file_name() != "lock")
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    let mut left_behind = 0;
    let mut rng = Rng(seed("killed_backups"));
    let src = work.join("big");
    fs::create_dir_all(&src).unwrap();
    for i in 0..24 {
        fs::write(src.join(format!("f{i:02}")), splitmix(1000 + i, 1_000_000)).unwrap();
    }
    let mut killed = 0;
    let mut reused_seen = false;
    let start_over = || {
        // Forget everything and prune right away, so the next attempt uploads again.
        ok(
            mk,
            &[
                "forget",
                "--keep-last",
                "0",
                "--keep-tag",
                "none",
                "--prune",
                "--grace",
                "0s",
            ],
        );
        ok(mk, &["prune", "--grace", "0s"]);
    };
    let mut c = mk();
    c.args(["backup"]).arg(&src);
    let full = time_complete_run(c);
    // It removed the folder of a run gone the caller planted, and left nothing of its own.
    assert_eq!(staged(), 0, "a complete backup left staged files");
    start_over();
    // Twenty kills at random moments; every fourth attempt also restores the next snapshot.
    for attempt in 0..20 {
        let before = repo_bytes();
        let mut c = mk();
        c.args(["backup"]).arg(&src);
        let wait = kill_moment(&mut rng, full);
        if run_and_kill_after(c, wait) {
            killed += 1;
        }
        let uploaded = repo_bytes() - before;
        let left = staged();
        let r = ok(mk, &["check"]);
        assert!(
            r.out().contains(" 0 problems"),
            "after kill {attempt}: {}",
            r.out()
        );
        // The next backup completes and stores only what the killed one had not indexed.
        let o = ok(mk, &["--json", "backup", src.to_str().unwrap()]);
        let added = o.json("summary")[0]["bytes_added"].as_u64().unwrap();
        eprintln!("attempt {attempt}: killed after {wait:?} of {full:?} having stored {uploaded} bytes and left {left} staged; the next backup added {added}");
        if added > 0 {
            left_behind += u64::from(left > 0);
            assert_eq!(
                staged(),
                0,
                "attempt {attempt}: the next backup left what the killed one staged ({left} bytes)"
            );
        }
        // 32 packs of 256 KiB are indexed at a time: past 12 MB, at least 8 MiB is reusable.
        if uploaded > 12_000_000 {
            assert!(added <= 24_000_000 - 6_000_000, "nothing was reused");
            reused_seen = true;
        }
        if attempt % 4 == 0 {
            let t = work.join(format!("restored-{attempt}"));
            ok(mk, &["restore", "latest", "--target", t.to_str().unwrap()]);
            assert!(files_of(&t.join(src.strip_prefix("/").unwrap())) == files_of(&src));
            fs::remove_dir_all(&t).unwrap();
        }
        start_over();
    }
    eprintln!(
        "{killed} backups killed ({left_behind} left files staged); reuse observed: {reused_seen}"
    );
    assert!(
        left_behind > 0 || !kills_leave_files,
        "no killed backup left a staged file: the test did not test their removal"
    );
    assert!(
        killed >= 10,
        "only {killed} of 20 backups were killed: the test did not test enough"
    );
}

/// `copy` into a repository that backups and a retention job (`forget --keep-last 2 --prune`
/// with a grace of seconds) write at the same time: round after round, the newest snapshot of
/// host h0 is copied from the source (`src`) to `to` (reached by `dst`) while host h1 backs up
/// straight into it; the two share data. Then `check --read-data` passes on the target and
/// every snapshot retention kept there restores byte for byte.
pub fn copies_while_target_prunes(
    src: Mk,
    dst: Mk,
    to: &str,
    to_pw: &Path,
    work: &Path,
    rounds: u64,
) {
    let mut rng = Rng(seed("copies_while_target_prunes"));
    let (a, b) = (work.join("copy-src-h0"), work.join("copy-src-h1"));
    let retention = RETENTION;
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut states: BTreeMap<String, BTreeMap<PathBuf, Vec<u8>>> = BTreeMap::new();
    let mut by_host: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut copied_out = 0u64;
    let deleted = std::sync::Mutex::new(0u64);
    let pruner_seed = rng.next();
    let json_of = |o: std::process::Output, what: &str, ty: &str| -> Value {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{what} failed: {stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == ty)
            .unwrap_or_else(|| panic!("{what}: no {ty} in {stdout}"))["data"]
            .clone()
    };
    std::thread::scope(|s| {
        let pruner = s.spawn(|| {
            let mut r = Rng(pruner_seed);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200 + r.below(800)));
                for p in ok(dst, &retention).json("prune") {
                    *deleted.lock().unwrap() += p["packs_deleted"].as_u64().unwrap();
                }
            }
        });
        let stop = StopOnDrop(&done);
        for round in 0..rounds {
            // Rounds span several grace periods, so packs are marked and deleted meanwhile.
            std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
            mutate(&a, &mut rng, round);
            let a_files = files_of(&a);
            let r = ok(
                src,
                &["--json", "backup", "--host", "h0", a.to_str().unwrap()],
            );
            assert_eq!(r.json("summary").len(), 1);
            let mut copy = src();
            copy.args(["--json", "copy", "latest", "--host", "h0", "--to", to])
                .arg("--to-password-file")
                .arg(to_pw)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let copy = copy.spawn().unwrap();
            mutate(&b, &mut rng, round);
            let b_files = files_of(&b);
            std::thread::sleep(Duration::from_millis(rng.below(300)));
            let mut bk = dst();
            bk.args(["--json", "backup", "--host", "h1"])
                .arg(&b)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let bk = bk.spawn().unwrap();
            let c = json_of(copy.wait_with_output().unwrap(), "copy", "copied");
            let id = c["id"].as_str().unwrap().to_string();
            states.insert(id.clone(), a_files);
            by_host[0].push(id);
            let sum = json_of(bk.wait_with_output().unwrap(), "backup", "summary");
            copied_out += sum["blobs_copied"].as_u64().unwrap();
            let id = sum["snapshot_id"].as_str().unwrap().to_string();
            states.insert(id.clone(), b_files);
            by_host[1].push(id);
        }
        drop(stop);
        pruner.join().unwrap();
    });
    let during = *deleted.lock().unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(4));
        for p in ok(dst, &retention).json("prune") {
            *deleted.lock().unwrap() += p["packs_deleted"].as_u64().unwrap();
        }
    }
    let total = *deleted.lock().unwrap();
    eprintln!(
        "packs deleted while copies ran: {during} (in all: {total}); backups copied \
         {copied_out} blobs out of marked packs"
    );
    assert!(
        total > 0,
        "prune deleted nothing: the test did not test deletion"
    );
    let c = ok(dst, &["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
    let snaps = ok(dst, &["--json", "snapshots"]).json("snapshot");
    assert_eq!(snaps.len(), 4, "{snaps:?}");
    for (h, ids) in by_host.iter().enumerate() {
        let src_dir = if h == 0 { &a } else { &b };
        for id in ids.iter().rev().take(2) {
            assert!(
                snaps.iter().any(|s| s["id"] == id.as_str()),
                "h{h}: snapshot {id} that retention keeps is gone"
            );
            let target = work.join(format!("restore-{}", &id[..8]));
            ok(dst, &["restore", id, "--target", target.to_str().unwrap()]);
            let got = files_of(&target.join(src_dir.strip_prefix("/").unwrap()));
            assert!(
                got == states[id],
                "snapshot {id} of h{h} does not restore what was backed up"
            );
            fs::remove_dir_all(&target).unwrap();
        }
    }
}
