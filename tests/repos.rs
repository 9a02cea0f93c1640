//! End-to-end tests of `key` (the passwords of a repository) and `copy` (snapshots into another
//! repository, with and without shared chunker parameters), through the real binary.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

fn with_password(e: &Env, pw: &Path, args: &[&str]) -> Run {
    let mut c = e.cmd();
    c.env("CHUNKBAK_PASSWORD_FILE", pw).args(args);
    e.run_cmd(c)
}

#[test]
fn keys_add_remove_and_change_passwords() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), splitmix(1, 100_000)).unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let (p2, p3) = (e.path("pw2"), e.path("pw3"));
    fs::write(&p2, "second password\n").unwrap();
    fs::write(&p3, "third password\n").unwrap();

    let list = |pw: &Path| {
        let r = with_password(&e, pw, &["--json", "key", "list"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json("key")
    };
    let one = list(&e.pw);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["current"], true);
    assert_eq!(one[0]["kdf"]["m_cost_kib"], 256);

    let mut add = vec!["--json", "key", "add", "--new-password-file"];
    add.push(p2.to_str().unwrap());
    add.extend(FAST_KDF);
    let added = e.ok(&add).json("key_added")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Both passwords open the repository; each sees itself as the current key.
    let two = list(&p2);
    assert_eq!(two.len(), 2);
    let current: Vec<_> = two.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], added.as_str());
    assert_eq!(with_password(&e, &p2, &["snapshots"]).code, 0);

    // The key in use cannot be removed (it might be the only password anyone knows).
    let first = one[0]["id"].as_str().unwrap().to_string();
    let r = e.run(&["key", "remove", &first[..10]]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("key passwd"), "{}", r.stderr);
    let r = e.run(&["key", "remove", "zz"]);
    assert!(
        r.code != 0 && r.stderr.contains("no key file"),
        "{}",
        r.stderr
    );

    // Removed from a session opened with the first password, the second stops working.
    e.ok(&["key", "remove", &added[..10]]);
    assert_eq!(with_password(&e, &p2, &["snapshots"]).code, 12);
    assert_eq!(list(&e.pw).len(), 1);

    // passwd: the new password works, the old one does not, one key remains.
    let mut passwd = vec!["key", "passwd", "--new-password-file"];
    passwd.push(p3.to_str().unwrap());
    passwd.extend(FAST_KDF);
    let old_pw = e.path("old-password");
    fs::copy(&e.pw, &old_pw).unwrap();
    let r = e.ok(&passwd);
    // The password file that opened the repository now holds the new password (issue 22:
    // it was left stale and every later command exited 12); the old password opens nothing.
    assert!(
        r.out().contains("now holds the new password"),
        "{}",
        r.out()
    );
    assert_eq!(
        fs::read_to_string(&e.pw).unwrap().trim_end(),
        fs::read_to_string(&p3).unwrap().trim_end()
    );
    assert_eq!(
        fs::metadata(&e.pw).unwrap().permissions().mode() & 0o777,
        0o600
    );
    e.ok(&["snapshots"]);
    let r = with_password(&e, &old_pw, &["snapshots"]);
    assert_eq!(r.code, 12, "the old password still opens: {}", r.stderr);
    let keys = list(&p3);
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0]["id"], first.as_str());
    // The data is untouched.
    let t = e.path("out");
    let r = with_password(
        &e,
        &p3,
        &["restore", "latest", "--target", t.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        fs::read(t.join(src.strip_prefix("/").unwrap()).join("f")).unwrap(),
        splitmix(1, 100_000)
    );
    // An empty new password is refused.
    let empty = e.path("empty");
    fs::write(&empty, "\n").unwrap();
    let r = with_password(
        &e,
        &p3,
        &["key", "add", "--new-password-file", empty.to_str().unwrap()],
    );
    assert!(r.code != 0 && r.stderr.contains("empty"), "{}", r.stderr);
}

/// A second repository of the environment, with the same password.
fn other(e: &Env, name: &str) -> PathBuf {
    e.path(name)
}

/// A new repository at `to` with the chunker parameters and dedup secret of `e`'s.
fn init_copy_of(e: &Env, to: &Path) {
    let mut init = vec!["init", "--copy-chunker-params", "--from"];
    init.push(e.repo.to_str().unwrap());
    init.push("--from-password-file");
    init.push(e.pw.to_str().unwrap());
    init.extend(FAST_KDF);
    e.ok_at(to, &init);
}

fn copy_to(e: &Env, to: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "--json",
        "copy",
        "--to",
        to.to_str().unwrap(),
        "--to-password-file",
        e.pw.to_str().unwrap(),
    ];
    args.extend(extra);
    e.ok(&args)
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Restores the latest snapshot of `repo` and compares it with `src`.
fn restores_equal(e: &Env, repo: &Path, src: &Path, name: &str) {
    let t = e.path(name);
    e.ok_at(
        repo,
        &["restore", "latest", "--target", t.to_str().unwrap()],
    );
    e.compare(src, &t.join(src.strip_prefix("/").unwrap()), &[]);
}

fn source_data(e: &Env) -> PathBuf {
    let src = e.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("big"), splitmix(1, 2 << 20)).unwrap();
    fs::write(src.join("sub/mid"), splitmix(2, 300_000)).unwrap();
    fs::write(src.join("text"), "hello world\n".repeat(20_000)).unwrap();
    src
}

#[test]
fn copy_with_shared_chunker_params_moves_only_what_the_target_lacks() {
    let e = Env::new();
    e.init_small();
    let src = source_data(&e);
    let s = src.to_str().unwrap();
    e.ok(&["backup", s, "--host", "web1"]);
    fs::write(src.join("sub/new"), splitmix(3, 200_000)).unwrap();
    e.ok(&["backup", s, "--host", "web1"]);

    let b = other(&e, "b");
    init_copy_of(&e, &b);

    // Dry run: the plan, nothing written.
    let plan = copy_to(&e, &b, &["--dry-run"]).json("copy_plan")[0].clone();
    assert_eq!(num(&plan, "snapshots"), 2);
    assert_eq!(plan["same_ids"], true);
    let planned = num(&plan, "bytes");
    assert!(planned > 2_400_000, "{plan}");
    assert!(e
        .ok_at(&b, &["--json", "snapshots"])
        .json("snapshot")
        .is_empty());

    let r = copy_to(&e, &b, &[]);
    let sum = r.json("copy")[0].clone();
    assert_eq!(num(&sum, "copied"), 2);
    assert_eq!(num(&sum, "bytes_read"), planned);
    assert_eq!(r.json("copied").len(), 2);
    assert_eq!(
        e.ok_at(&b, &["--json", "snapshots"]).json("snapshot").len(),
        2
    );
    e.ok_at(&b, &["check", "--read-data"]);
    restores_equal(&e, &b, &src, "out-b");

    // Again: every snapshot is there, nothing is read or written.
    let plan = copy_to(&e, &b, &[]).json("copy_plan")[0].clone();
    assert_eq!(num(&plan, "snapshots"), 0);
    assert_eq!(num(&plan, "present"), 2);

    // A new snapshot with one new file: only that file's data moves.
    fs::write(src.join("sub/newer"), splitmix(4, 100_000)).unwrap();
    e.ok(&["backup", s, "--host", "web1"]);
    let before = e.ok_at(&b, &["--json", "snapshots"]).json("snapshot");
    let r = copy_to(&e, &b, &["latest"]);
    let sum = r.json("copy")[0].clone();
    assert_eq!(num(&sum, "copied"), 1);
    assert!(num(&sum, "bytes_read") < 120_000, "{sum}");
    // Its parent, copied by an earlier run, is named by its id in the target.
    assert_eq!(r.json("copied")[0]["parent"], before.last().unwrap()["id"]);

    // Dedup carries over: backing up the same files straight into the target adds no data.
    let r = e.ok_at(&b, &["--json", "backup", s, "--host", "web1"]);
    let added = num(&r.json("summary")[0], "bytes_added");
    assert!(
        added <= ANCESTOR_TREES,
        "a backup into the copy added {added} bytes"
    );
}

#[test]
fn copy_between_unrelated_repositories_rehashes_and_selects() {
    let e = Env::new();
    e.init_small();
    let src = source_data(&e);
    let s = src.to_str().unwrap();
    e.ok(&["backup", s, "--host", "web1", "--tag", "daily"]);
    e.ok(&["backup", s, "--host", "db1"]);
    // Different dedup secret and chunk sizes.
    let c = other(&e, "c");
    let mut init = vec!["init"];
    init.extend(FAST_KDF);
    e.ok_at(&c, &init);

    // Only what the filter selects.
    let r = copy_to(&e, &c, &["--host", "db1"]);
    assert_eq!(r.json("copy_plan")[0]["same_ids"], false);
    let copied = r.json("copied");
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0]["host"], "db1");
    let snaps = e.ok_at(&c, &["--json", "snapshots"]).json("snapshot");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["host"], "db1");
    // Rewritten trees: the copy's tree id is the target's own.
    assert_ne!(
        snaps[0]["tree"],
        e.ok(&["--json", "snapshots", "--host", "db1"])
            .json("snapshot")[0]["tree"]
    );
    e.ok_at(&c, &["check", "--read-data"]);
    restores_equal(&e, &c, &src, "out-c");

    // The rest, by id; the one already there is recognised.
    let web = e
        .ok(&["--json", "snapshots", "--host", "web1"])
        .json("snapshot")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = copy_to(&e, &c, &[&web[..8]]);
    assert_eq!(r.json("copied").len(), 1);
    assert_eq!(r.json("copied")[0]["tags"][0], "daily");
    let sum = r.json("copy")[0].clone();
    // Same files: every blob is read again (ids differ), none is stored again.
    assert!(num(&sum, "bytes_read") > 2_000_000, "{sum}");
    assert!(num(&sum, "bytes_added") < 20_000, "{sum}");
    let plan = copy_to(&e, &c, &[]).json("copy_plan")[0].clone();
    assert_eq!((num(&plan, "snapshots"), num(&plan, "present")), (0, 2));
}

#[test]
fn copy_from_a_damaged_source_names_the_blob_and_keeps_the_target_sound() {
    let e = Env::new();
    e.init_small();
    let src = source_data(&e);
    let s = src.to_str().unwrap();
    e.ok(&["backup", s]);
    let b = other(&e, "b");
    let mut init = vec!["init", "--copy-chunker-params", "--from"];
    init.push(e.repo.to_str().unwrap());
    init.extend(FAST_KDF);
    // The source's password from the environment this time.
    let mut cmd = e.cmd();
    cmd.env("CHUNKBAK_REPOSITORY", &b)
        .env("CHUNKBAK_FROM_PASSWORD", "correct horse")
        .args(&init);
    assert_eq!(e.run_cmd(cmd).code, 0);
    copy_to(&e, &b, &[]);
    // A second snapshot whose new data is then lost from the source.
    fs::write(src.join("lost"), splitmix(7, 150_000)).unwrap();
    e.ok(&["backup", s]);
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for d in fs::read_dir(e.repo.join("data")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let t = f.metadata().unwrap().modified().unwrap();
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, f.path()));
            }
        }
    }
    fs::remove_file(newest.unwrap().1).unwrap();
    let r = e.run(&[
        "copy",
        "--to",
        b.to_str().unwrap(),
        "--to-password-file",
        e.pw.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("data/") && r.stderr.contains("blob"),
        "the error names neither pack nor blob: {}",
        r.stderr
    );
    // The target keeps the snapshot copied before, whole.
    assert_eq!(
        e.ok_at(&b, &["--json", "snapshots"]).json("snapshot").len(),
        1
    );
    e.ok_at(&b, &["check", "--read-data"]);
}

#[test]
fn copies_while_the_target_backs_up_and_prunes() {
    let e = Env::new();
    e.init_small();
    let t = other(&e, "target");
    init_copy_of(&e, &t);
    let src = || e.cmd();
    let dst = || {
        let mut c = e.cmd();
        c.env("CHUNKBAK_REPOSITORY", &t);
        c
    };
    common::scenario::copies_while_target_prunes(
        &src,
        &dst,
        t.to_str().unwrap(),
        &e.pw,
        e.dir.path(),
        10,
    );
}

/// Copies killed with SIGKILL at random moments, a dozen times, from a source with files and
/// three days of a dump (deltas, copied in waves after their bases): the target passes `check`
/// after each kill, and the copy run again completes: every snapshot is there, the latest dump
/// and (every fourth attempt) the latest files restore identical, and `check --read-data` passes.
#[test]
fn killed_copies_leave_a_checkable_target_and_a_rerun_completes() {
    use common::scenario::{kill_moment, run_and_kill_after, seed, time_complete_run, Rng};
    use std::io::Write as _;
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let days: Vec<Vec<u8>> = (1..=3).map(|d| table_dump(20_000, d, 9)).collect();
    for (round, day) in days.iter().enumerate() {
        for i in 0..8u64 {
            let seed = 100 * round as u64 + i;
            fs::write(src.join(format!("f{round}-{i}")), splitmix(seed, 1_000_000)).unwrap();
        }
        e.ok(&["backup", src.to_str().unwrap()]);
        let mut c = e.cmd();
        c.args(["backup", "--stdin", "--stdin-filename", "db.sql"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(day).unwrap();
        assert!(child.wait().unwrap().success());
    }
    let b = other(&e, "b");
    init_copy_of(&e, &b);
    let copy = || {
        let mut c = e.cmd();
        c.args(["copy", "--to", b.to_str().unwrap(), "--to-password-file"])
            .arg(&e.pw);
        c
    };
    // Forget everything and prune twice (the second deletes what the first marked), so the
    // next attempt copies into an empty target.
    let start_over = || {
        let all = ["forget", "--keep-last", "0", "--keep-tag", "none"];
        e.ok_at(&b, &all);
        e.ok_at(&b, &["prune", "--grace", "0s", "--max-unused", "0%"]);
        e.ok_at(&b, &["prune", "--grace", "0s", "--max-unused", "0%"]);
    };
    let mut full = time_complete_run(copy());
    start_over();
    let mut rng = Rng(seed("killed_copies"));
    let mut killed = 0;
    for attempt in 0..12 {
        let wait = kill_moment(&mut rng, full);
        if run_and_kill_after(copy(), wait) {
            killed += 1;
        } else {
            // It finished first: the timed run was slow (other tests ran alongside it), so
            // aim the later kills earlier.
            full = full.mul_f64(0.7);
        }
        let r = e.ok_at(&b, &["check"]);
        assert!(
            r.out().contains(" 0 problems"),
            "after kill {attempt} at {wait:?} of {full:?}: {}",
            r.out()
        );
        e.ok(&[
            "copy",
            "--to",
            b.to_str().unwrap(),
            "--to-password-file",
            e.pw.to_str().unwrap(),
        ]);
        let snaps = e.ok_at(&b, &["--json", "snapshots"]).json("snapshot");
        assert_eq!(snaps.len(), 6, "attempt {attempt}");
        let dump = e.ok_at(&b, &["dump", "latest", "/db.sql"]);
        assert!(
            dump.stdout == days[2],
            "attempt {attempt}: the dump differs"
        );
        if attempt % 4 == 0 {
            let r = e.ok_at(&b, &["check", "--read-data"]);
            assert!(r.out().contains(" 0 problems"), "{}", r.out());
            let t = e.path(&format!("out-{attempt}"));
            let files = snaps
                .iter()
                .rev()
                .find(|s| s["paths"][0] == src.to_str().unwrap())
                .unwrap();
            let spec = format!("{}:{}", files["id"].as_str().unwrap(), src.display());
            e.ok_at(&b, &["restore", &spec, "--target", t.to_str().unwrap()]);
            e.compare(&src, &t, &[]);
        }
        start_over();
    }
    eprintln!("{killed} of 12 copies killed");
    assert!(
        killed >= 6,
        "only {killed} copies were killed: the test tested little"
    );
}
