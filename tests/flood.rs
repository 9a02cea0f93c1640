//! Memory that does not grow with what the repository holds (issue 24): a host with the
//! bucket's credentials floods it with objects no index names; an index of many deltas (a
//! fleet's database dumps). Alone in its own test binary, its tests one at a time: a child's
//! peak RSS as `wait4` reports it includes the memory of the process that spawned it
//! (`posix_spawn` shares its memory until the exec), so no other test may run beside one.

use std::fs;
use std::sync::{Arc, Mutex};

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::Repository;

mod common;
use common::*;

/// One test at a time (see the module's doc).
static ALONE: Mutex<()> = Mutex::new(());

/// Runs `args` and returns its exit code and its peak RSS in KiB, as `wait4` reports it for
/// this child (at least this test's own memory at the spawn: see the module's doc).
fn peak_kib(e: &Env, args: &[&str]) -> (i32, u64) {
    let mut c = e.cmd();
    c.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(e.path("stderr")).unwrap());
    // Reaped by `wait4` below, which reports its rusage (`Child::wait` would not).
    let pid = c.spawn().unwrap().id() as libc::pid_t;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status), "{args:?}: status {status}");
    (libc::WEXITSTATUS(status), ru.ru_maxrss as u64)
}

/// Stores `n` objects under `data/`, named like packs, a day old: what a compromised host can
/// upload in an afternoon for a few dollars.
fn flood(e: &Env, from: u64, n: u64) {
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for i in from..from + n {
        let x = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let name = format!("{x:016x}{:016x}{i:016x}{:016x}", x.rotate_left(17), !x);
        let dir = e.repo.join("data").join(&name[..2]);
        fs::create_dir_all(&dir).unwrap();
        let f = fs::File::create(dir.join(&name)).unwrap();
        f.set_modified(day_ago).unwrap();
    }
}

/// Prune and check held every object no index names in memory (some 450 and 110 bytes
/// each): a host with the credentials that stores millions of them stops every later prune on
/// a small host, and with it the retention. Their memory no longer grows with them, and prune
/// deletes them all.
#[test]
fn a_flood_of_unindexed_objects_costs_prune_and_check_no_memory() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), splitmix(9, 200_000)).unwrap();
    e.backup_id(&src);
    let dry = ["prune", "--dry-run"];
    flood(&e, 0, 2_000);
    let (code, prune_few) = peak_kib(&e, &dry);
    assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
    let (code, check_few) = peak_kib(&e, &["check"]);
    assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
    let read_data = ["check", "--read-data"];
    let (code, read_few) = peak_kib(&e, &read_data);
    assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
    let many = 200_000;
    flood(&e, 2_000, many);
    let (code, prune_many) = peak_kib(&e, &dry);
    assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
    let (code, check_many) = peak_kib(&e, &["check"]);
    assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
    let (code, read_many) = peak_kib(&e, &read_data);
    assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
    eprintln!(
        "peak RSS with 2,000 and {many} unindexed objects: prune --dry-run {prune_few} and \
         {prune_many} KiB, check {check_few} and {check_many} KiB, check --read-data \
         {read_few} and {read_many} KiB"
    );
    // 198,000 more objects: 9 MiB at 48 bytes each, 21 MiB at 110 (check's names), 85 MiB at
    // 450 (prune's).
    for (what, few, many) in [
        ("prune", prune_few, prune_many),
        ("check", check_few, check_many),
        ("check --read-data", read_few, read_many),
    ] {
        assert!(
            many < few + 8 * 1024,
            "{what}: peak RSS {few} KiB with 2,000 unindexed objects, {many} KiB with 200,000"
        );
    }
    let r = e.ok(&["check"]);
    assert!(
        r.out()
            .contains(&format!("{} packs are in no index", many + 2_000)),
        "{}",
        r.out()
    );
    let r = e.ok(&["--json", "prune"]);
    let p = &r.json("prune_plan")[0];
    assert_eq!(p["orphans"]["packs"], many + 2_000, "{p}");
    let r = e.ok(&["check", "--read-data"]);
    assert!(r.out().contains(" 0 problems"), "{}", r.out());
    assert!(!r.out().contains("in no index"), "{}", r.out());
    let t = e.path("t");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    e.compare(&src, &t.join(src.strip_prefix("/").unwrap()), &[]);
}

/// Indexes `n` blobs, deltas or whole, 10,000 an index file (written a file at a time: this
/// process's memory counts in its children's peaks).
fn index_blobs(e: &Env, n: u64, deltas: bool) {
    let repo = Repository::open(Arc::new(LocalBackend::new(&e.repo)), b"correct horse").unwrap();
    chunkbak_engine::synth::index_blobs(&repo, n, 10_000, deltas).unwrap();
}

/// An index of many deltas, as a fleet's database dumps make over a year: each delta's base
/// was kept in memory (about 100 bytes a delta, in a map and in the kept index's companion
/// file), so a backup with the index on disk grew with them. They are sorted on disk and read
/// back from a file of their own now: with 400,000 blobs indexed, a backup that builds the
/// kept files, one that opens them, and a prune cost the same whether the blobs are deltas or
/// whole.
#[test]
fn an_index_of_many_deltas_costs_backup_and_prune_no_memory() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let blobs = 400_000;
    // A budget that keeps this index on disk (a third of 4 MiB: 87,000 blobs).
    let small = ["--memory", "4MiB"];
    let peaks = |deltas: bool| {
        let e = Env::new();
        e.init_small();
        index_blobs(&e, blobs, deltas);
        let src = e.path("src");
        fs::create_dir_all(&src).unwrap();
        let backup = |n: u64| {
            fs::write(src.join("f"), splitmix(n, 100_000)).unwrap();
            let args = [&small[..], &["backup", src.to_str().unwrap()]].concat();
            let (code, kib) = peak_kib(&e, &args);
            assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
            kib
        };
        let peaks = (backup(1), backup(2));
        let args = [&small[..], &["prune", "--dry-run"]].concat();
        let (code, prune) = peak_kib(&e, &args);
        assert_eq!(code, 0, "{}", fs::read_to_string(e.path("stderr")).unwrap());
        // The kept files answer: the repository's own backup restores.
        let t = e.path("t");
        e.ok(&[
            &small[..],
            &["restore", "latest", "--target", t.to_str().unwrap()],
        ]
        .concat());
        e.compare(&src, &t.join(src.strip_prefix("/").unwrap()), &[]);
        (peaks.0, peaks.1, prune)
    };
    let (build_whole, open_whole, prune_whole) = peaks(false);
    let (build_deltas, open_deltas, prune_deltas) = peaks(true);
    eprintln!(
        "peak RSS with {blobs} blobs indexed, whole and deltas: a backup building the kept \
         files {build_whole} and {build_deltas} KiB, one opening them {open_whole} and \
         {open_deltas} KiB, prune --dry-run {prune_whole} and {prune_deltas} KiB"
    );
    // 400,000 bases: 26 MiB at 68 bytes each, 38 MiB at 100.
    for (what, whole, deltas) in [
        (
            "a backup building the kept files",
            build_whole,
            build_deltas,
        ),
        ("a backup opening them", open_whole, open_deltas),
        ("prune --dry-run", prune_whole, prune_deltas),
    ] {
        assert!(
            deltas < whole + 8 * 1024,
            "{what}: peak RSS {whole} KiB with {blobs} whole blobs indexed, {deltas} KiB with \
             as many deltas"
        );
    }
}
