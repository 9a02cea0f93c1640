//! Recovery day, through the binary: restore options, resumed restores, `find`, `diff`,
//! `dump --archive tar` and metadata fidelity.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::scenario::{self, Rng};
use common::*;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Every regular file below `root`: relative path → (size, mtime ns, content).
fn files_with_times(root: &Path) -> BTreeMap<PathBuf, (u64, i128, Vec<u8>)> {
    let mut out = BTreeMap::new();
    // A restore killed before it created its target left nothing.
    if !root.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let m = e.metadata().unwrap();
            let t = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            out.insert(
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                (m.len(), t, fs::read(e.path()).unwrap()),
            );
        }
    }
    out
}

/// Every entry below `root` with its type and content (the state a dry run must not touch).
fn tree_state(root: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let body = if m.is_file() {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        out.insert(e.path().to_path_buf(), (m.mode(), m.mtime() as u64, body));
    }
    out
}

/// Two string fields of each JSON message of type `ty`, in order.
fn field_pairs(r: &Run, ty: &str, a: &str, b: &str) -> Vec<(String, String)> {
    r.json(ty)
        .iter()
        .map(|m| {
            let f = |k: &str| m[k].as_str().unwrap().to_string();
            (f(a), f(b))
        })
        .collect()
}

/// The changes a restore reported (action, path), sorted.
fn changes(r: &Run) -> Vec<(String, String)> {
    let mut v = field_pairs(r, "change", "action", "path");
    v.sort();
    v
}

/// `--dry-run` lists exactly what the real run then does and changes nothing; `--exclude`,
/// pattern includes, `--overwrite`, `--delete` and `--verify` each do what they say.
#[test]
fn restore_options_do_what_they_say() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::create_dir_all(src.join("logs")).unwrap();
    fs::write(src.join("db/main.sql"), splitmix(1, 300_000)).unwrap();
    fs::write(src.join("db/aux.sql"), splitmix(2, 5000)).unwrap();
    fs::write(src.join("conf"), b"port = 5432\n").unwrap();
    fs::write(src.join("logs/app.log"), b"log line\n").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.display());
    let t = e.path("t");
    let ts = t.to_str().unwrap();

    // --exclude leaves out matching names and everything below a matching folder.
    e.ok(&[
        "restore",
        &spec,
        "-t",
        ts,
        "--exclude",
        "logs",
        "--exclude",
        "aux.*",
    ]);
    assert!(t.join("db/main.sql").exists() && t.join("conf").exists());
    assert!(!t.join("logs").exists() && !t.join("db/aux.sql").exists());
    fs::remove_dir_all(&t).unwrap();

    // A pattern include takes the matching files and creates only the folders above them.
    let r = e.ok(&["--json", "restore", &spec, "-t", ts, "--include", "*.sql"]);
    assert_eq!(r.json("summary")[0]["files"], 2, "{}", r.out());
    assert!(t.join("db/main.sql").exists() && t.join("db/aux.sql").exists());
    assert!(!t.join("logs").exists() && !t.join("conf").exists());
    // A pattern that matches nothing is a warning, not silence.
    let r = e.ok(&["restore", &spec, "-t", ts, "--include", "*.nothing"]);
    assert!(
        r.stderr.contains("matches the --include patterns"),
        "{}",
        r.stderr
    );
    fs::remove_dir_all(&t).unwrap();

    // Full restore, then damage the target in every way.
    e.ok(&["restore", &spec, "-t", ts]);
    e.compare(&src, &t, &[]);
    let mut main = fs::read(t.join("db/main.sql")).unwrap();
    main[150_000] ^= 1;
    fs::write(t.join("db/main.sql"), &main).unwrap(); // modified (mtime now)
    fs::write(t.join("conf"), b"port = 9999\n").unwrap(); // same size, other content
    let conf_m = fs::metadata(src.join("conf")).unwrap();
    let (secs, nanos) = (conf_m.mtime(), conf_m.mtime_nsec());
    set_mtime(&t.join("conf"), secs, nanos); // ... and the snapshot's time: looks unchanged
    fs::write(t.join("extra.txt"), b"not in the snapshot").unwrap();
    fs::create_dir_all(t.join("extra-dir/sub")).unwrap();
    fs::write(t.join("extra-dir/sub/x"), b"x").unwrap();
    fs::write(t.join("keep.tmp"), b"excluded: --delete keeps it").unwrap();
    fs::remove_file(t.join("logs/app.log")).unwrap();

    // Dry run: the exact list of changes, and nothing touched.
    let before = tree_state(&t);
    let dry = e.ok(&[
        "--json",
        "restore",
        &spec,
        "-t",
        ts,
        "--delete",
        "--dry-run",
        "--exclude",
        "*.tmp",
    ]);
    assert_eq!(tree_state(&t), before, "a dry run changed the target");
    let p = |s: &str| t.join(s).to_str().unwrap().to_string();
    let expected = vec![
        ("delete".to_string(), p("extra-dir")),
        ("delete".to_string(), p("extra.txt")),
        ("new".to_string(), p("logs/app.log")),
        ("update".to_string(), p("conf")),
        ("update".to_string(), p("db/main.sql")),
    ];
    assert_eq!(changes(&dry), expected, "{}", dry.out());
    let s = &dry.json("summary")[0];
    assert_eq!(s["dry_run"], true);
    assert_eq!(s["deleted"], 2);
    assert_eq!(s["files_unchanged"], 1, "db/aux.sql is already right: {s}");
    // Of main.sql only the damaged chunk would be written.
    assert!(s["bytes"].as_u64().unwrap() < 100_000, "{s}");
    assert!(s["bytes_reused"].as_u64().unwrap() > 200_000, "{s}");
    // The text form lists the same changes, one per line.
    let text = e.ok(&["restore", &spec, "-t", ts, "--delete", "-n", "-e", "*.tmp"]);
    assert!(
        text.out().contains(&format!("delete {}", p("extra.txt"))),
        "{}",
        text.out()
    );

    // --overwrite never leaves every file that is there as it is.
    let r = e.ok(&["--json", "restore", &spec, "-t", ts, "--overwrite", "never"]);
    assert_eq!(r.json("summary")[0]["files_skipped"], 3, "{}", r.out());
    assert_eq!(fs::read(t.join("conf")).unwrap(), b"port = 9999\n");
    assert_eq!(fs::read(t.join("db/main.sql")).unwrap(), main);
    assert!(
        t.join("logs/app.log").exists(),
        "a missing file is still restored"
    );

    // --overwrite if-changed trusts size and time: conf looks unchanged and is kept.
    e.ok(&["restore", &spec, "-t", ts, "--overwrite", "if-changed"]);
    assert_eq!(fs::read(t.join("conf")).unwrap(), b"port = 9999\n");
    assert_eq!(
        fs::read(t.join("db/main.sql")).unwrap(),
        fs::read(src.join("db/main.sql")).unwrap()
    );
    // ... unless --verify asks for the bytes to be compared.
    let r = e.ok(&[
        "--json",
        "restore",
        &spec,
        "-t",
        ts,
        "--overwrite",
        "if-changed",
        "--verify",
    ]);
    assert_eq!(fs::read(t.join("conf")).unwrap(), b"port = 5432\n");
    assert_eq!(r.json("summary")[0]["verified"], 4, "{}", r.out());

    // --delete makes the target match, keeping what the excludes protect.
    fs::write(t.join("conf"), b"port = 9999\n").unwrap();
    set_mtime(&t.join("conf"), secs, nanos);
    let r = e.ok(&[
        "--json",
        "restore",
        &spec,
        "-t",
        ts,
        "--delete",
        "--exclude",
        "*.tmp",
    ]);
    let s = &r.json("summary")[0];
    assert_eq!(s["deleted"], 2, "{s}");
    assert_eq!(
        s["files"], 1,
        "only conf is written (the default compares content): {s}"
    );
    assert!(!t.join("extra.txt").exists() && !t.join("extra-dir").exists());
    assert!(t.join("keep.tmp").exists());
    fs::remove_file(t.join("keep.tmp")).unwrap();
    e.compare(&src, &t, &[]);

    // A file where the snapshot has a folder (and the reverse) is replaced with --delete.
    fs::remove_dir_all(t.join("logs")).unwrap();
    fs::write(t.join("logs"), b"a file in the way").unwrap();
    fs::remove_file(t.join("conf")).unwrap();
    fs::create_dir(t.join("conf")).unwrap();
    let r = e.run(&["restore", &spec, "-t", ts]);
    assert_eq!(
        r.code, 3,
        "without --delete a folder in the way is an error: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("conf") && r.stderr.contains("directory is in the way"),
        "{}",
        r.stderr
    );
    e.ok(&["restore", &spec, "-t", ts, "--delete"]);
    e.compare(&src, &t, &[]);
}

fn set_mtime(p: &Path, secs: i64, nanos: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    let times = [ts, ts];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
}

/// A restore that cannot write some files reports each by path, restores the rest and
/// exits 3.
#[test]
fn restore_that_cannot_write_a_file_goes_on_and_exits_3() {
    if !is_root() {
        eprintln!("skipped: needs root to run the restore as another user");
        return;
    }
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("locked")).unwrap();
    fs::create_dir_all(src.join("open")).unwrap();
    fs::write(src.join("locked/a"), b"a").unwrap();
    fs::write(src.join("open/b"), b"b").unwrap();
    fs::write(src.join("c"), b"c").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let t = e.path("t");
    fs::create_dir_all(t.join("locked")).unwrap();
    fs::set_permissions(&t, fs::Permissions::from_mode(0o777)).unwrap();
    // Owned by root, not writable by the restoring user.
    fs::set_permissions(t.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = e.as_nobody();
    c.args(["restore", &format!("latest:{}", src.display()), "-t"])
        .arg(&t);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains(&t.join("locked/a").display().to_string())
            && r.stderr.contains("Permission denied"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("1 entries could not be restored"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(t.join("open/b")).unwrap(), b"b");
    assert_eq!(fs::read(t.join("c")).unwrap(), b"c");
}

/// A restore killed at random points and run again with the same arguments, again and again,
/// finishes with the tree identical byte for byte (contents, modes, times, links, xattrs,
/// holes); reruns reuse what is there; and after every kill, a file that looks complete (the
/// snapshot's size and time) is complete.
#[test]
fn killed_restores_resume_and_finish_byte_for_byte() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    torture(&src);
    fs::create_dir_all(src.join("data")).unwrap();
    for i in 0..6u64 {
        // Files of many chunks: written by all threads at once, out of order.
        fs::write(
            src.join(format!("data/big{i}")),
            splitmix(900 + i, 4_000_000),
        )
        .unwrap();
    }
    for i in 0..300u64 {
        fs::write(
            src.join(format!("data/small{i:03}")),
            splitmix(i, 2000 + i as usize),
        )
        .unwrap();
    }
    e.ok(&["backup", src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.display());
    let t = e.path("t");
    let want = files_with_times(&src);
    let mut rng = Rng(scenario::seed("resumed_restore"));
    let mut c = e.cmd();
    c.args(["restore", &spec, "--target"]).arg(&t);
    let full = scenario::time_complete_run(c);
    fs::remove_dir_all(&t).unwrap();
    let (mut killed, mut resumed, mut reused) = (0, 0, 0u64);
    for attempt in 0..10 {
        let mut c = e.cmd();
        c.args(["restore", &spec, "--target"]).arg(&t);
        if !scenario::run_and_kill_after(c, scenario::kill_moment(&mut rng, full)) {
            // Finished before the kill: start over from an empty target.
            fs::remove_dir_all(&t).unwrap();
            continue;
        }
        killed += 1;
        let c = e.ok(&["check"]);
        assert!(
            c.out().contains(" 0 problems"),
            "after restore kill {attempt}: {}",
            c.out()
        );
        // Nothing looks complete that is not.
        for (rel, (size, mtime, body)) in files_with_times(&t) {
            let (wsize, wmtime, wbody) = &want[&rel];
            if size == *wsize && mtime == *wmtime {
                assert!(
                    body == *wbody,
                    "after kill {attempt}: {} has the snapshot's size and time but not its content",
                    rel.display()
                );
            }
        }
        // Every second kill, finish the restore (else the next run is killed on top of this
        // one); so at least half the kills are resumed, whichever attempts finished first.
        if killed % 2 == 0 || attempt == 9 {
            let r = e.ok(&["--json", "restore", &spec, "--target", t.to_str().unwrap()]);
            let s = &r.json("summary")[0];
            reused += s["bytes_reused"].as_u64().unwrap();
            resumed += 1;
            e.compare(&src, &t, &["--holes"]);
            eprintln!("attempt {attempt}: resumed: {s}");
            fs::remove_dir_all(&t).unwrap();
        }
    }
    eprintln!("{killed} restores killed, {resumed} resumed, reusing {reused} bytes in all");
    assert!(
        killed >= 4,
        "only {killed} restores were killed: the test tested little"
    );
    assert!(
        resumed >= 2 && reused > 0,
        "resumed restores rewrote everything"
    );
    e.ok(&["restore", &spec, "--target", t.to_str().unwrap()]);
    // A run over the complete tree writes nothing.
    let r = e.ok(&["--json", "restore", &spec, "--target", t.to_str().unwrap()]);
    let s = &r.json("summary")[0];
    assert_eq!(s["bytes"], 0, "{s}");
    assert_eq!(s["files"], 0, "{s}");
}

/// `find` lists every snapshot holding a matching path, with sizes and times; `--at` and
/// `--snapshot` narrow it to one.
#[test]
fn find_shows_each_matching_path_across_snapshots() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("db")).unwrap();
    fs::write(src.join("db/dump.sql"), b"version 1").unwrap();
    fs::write(src.join("readme"), b"r").unwrap();
    let first = e.backup_id(&src);
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(src.join("db/dump.sql"), b"version two, longer").unwrap();
    fs::write(src.join("db/other.sql"), b"o").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let dump = src.join("db/dump.sql");
    let r = e.ok(&["--json", "find", "*.sql"]);
    let m = r.json("match");
    let rows: Vec<(String, String, u64)> = m
        .iter()
        .map(|x| {
            (
                x["path"].as_str().unwrap().to_string(),
                x["snapshot_id"].as_str().unwrap()[..8].to_string(),
                x["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        rows[0],
        (dump.display().to_string(), first[..8].to_string(), 9)
    );
    assert_eq!(rows[1].0, dump.display().to_string());
    assert_eq!(rows[1].2, 19);
    assert!(rows[2].0.ends_with("/db/other.sql"));
    // Text: the path, then one line per snapshot with its size.
    let text = e.ok(&["find", "dump.sql"]).out();
    assert!(text.starts_with(&format!("{}\n", dump.display())), "{text}");
    assert!(
        text.contains(&first[..8]) && text.contains("9 B") && text.contains("19 B"),
        "{text}"
    );
    // A full-path pattern, and one snapshot only.
    let pat = format!("{}/*", src.join("db").display());
    let r = e.ok(&["--json", "find", &pat, "--snapshot", &first[..8]]);
    assert_eq!(r.json("match").len(), 1, "{}", r.out());
    let at = e.ok(&["--json", "find", "*.sql", "--at", "now"]);
    assert_eq!(
        at.json("selected").len(),
        1,
        "--at prints the chosen snapshot"
    );
    assert_eq!(at.json("match").len(), 2, "{}", at.out());
    let none = e.ok(&["find", "*.nothing"]);
    assert!(
        none.out().is_empty() && none.stderr.contains("0 paths matched"),
        "{}",
        none.stderr
    );
}

/// `diff` lists added, removed, modified and (with --metadata) metadata-only changes, with
/// sizes; `--at` chooses a snapshot by time.
#[test]
fn diff_lists_what_changed_between_two_snapshots() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("gone-dir")).unwrap();
    fs::write(src.join("gone-dir/x"), b"x").unwrap();
    fs::write(src.join("same"), b"same").unwrap();
    fs::write(src.join("changed"), b"before").unwrap();
    fs::write(src.join("chmod"), b"m").unwrap();
    fs::write(src.join("becomes-dir"), b"f").unwrap();
    let a = e.backup_id(&src)[..8].to_string();
    std::thread::sleep(Duration::from_millis(1100));
    let between = jiff::Timestamp::now().to_string();
    std::thread::sleep(Duration::from_millis(1100));
    fs::remove_dir_all(src.join("gone-dir")).unwrap();
    fs::write(src.join("changed"), b"after, longer").unwrap();
    fs::set_permissions(src.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(src.join("becomes-dir")).unwrap();
    fs::create_dir(src.join("becomes-dir")).unwrap();
    fs::write(src.join("added"), b"new file").unwrap();
    let b = e.backup_id(&src)[..8].to_string();
    let s = |p: &str| src.join(p).display().to_string();
    let r = e.ok(&["--json", "diff", &a, &b]);
    let got = field_pairs(&r, "diff", "change", "path");
    assert_eq!(
        got,
        vec![
            ("+".into(), s("added")),
            ("T".into(), s("becomes-dir")),
            ("M".into(), s("changed")),
            ("-".into(), s("gone-dir")),
            ("-".into(), s("gone-dir/x")),
        ],
        "{}",
        r.out()
    );
    let sum = &r.json("summary")[0];
    assert_eq!(
        (sum["added"].as_u64(), sum["removed"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(sum["bytes_added"], 8 + 13);
    let changed = r.json("diff")[2].clone();
    assert_eq!(
        (changed["old_size"].as_u64(), changed["new_size"].as_u64()),
        (Some(6), Some(13))
    );
    // --metadata adds the chmod (and the folders whose times changed).
    let m = e.ok(&["--json", "diff", &a, &b, "--metadata"]);
    assert!(
        m.json("diff")
            .iter()
            .any(|d| d["change"] == "U" && d["path"] == s("chmod")),
        "{}",
        m.out()
    );
    // --at picks the first snapshot by time; the second defaults to the latest. Text output.
    let t = e.ok(&["diff", "--at", &between]);
    assert!(t.stderr.contains(&format!("snapshot {a}")), "{}", t.stderr);
    assert!(
        t.out()
            .contains(&format!("M  {}  (6 B -> 13 B)", s("changed"))),
        "{}",
        t.out()
    );
    assert!(
        t.out()
            .contains(&format!("{a} -> {b}: 1 added, 2 removed, 1 modified")),
        "{}",
        t.out()
    );
    // Identical snapshots: nothing listed.
    let same = e.ok(&["--json", "diff", &b, &b]);
    assert!(same.json("diff").is_empty());
    let bad = e.run(&["diff", "--at", &between, &a, &b]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("two snapshots"), "{}", bad.stderr);
}

/// `dump --archive tar` streams a directory that GNU tar extracts into the same tree: contents,
/// modes, times, symlinks, hard links, devices and fifos, owners and xattrs.
#[test]
fn dump_tar_extracts_to_the_same_tree() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    torture(&src);
    e.ok(&["backup", src.to_str().unwrap()]);
    let tar_file = e.path("out.tar");
    let mut c = e.cmd();
    c.args(["dump", "--archive", "tar", "latest"]).arg(&src);
    c.stdout(fs::File::create(&tar_file).unwrap());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrote "));
    let x = e.path("x");
    fs::create_dir(&x).unwrap();
    let st = Command::new("tar")
        .args([
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
            "-f",
        ])
        .arg(&tar_file)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    // The archive holds the folder by its name.
    let owner: &[&str] = if is_root() { &["--owner"] } else { &[] };
    e.compare(&src, &x.join("src"), owner);
    // A terminal never gets the binary stream; a file is dumped as before.
    let r = e.run(&[
        "dump",
        "latest",
        &format!("{}/text", src.display()),
        "--archive",
        "tar",
    ]);
    assert_eq!(r.code, 0, "a single file can be archived too: {}", r.stderr);
    let one = e.ok(&["dump", "latest", &format!("{}/text", src.display())]);
    assert_eq!(one.stdout, fs::read(src.join("text")).unwrap());
}

/// Sets a POSIX ACL (the kernel's xattr form) on `p`: user::rw-, user:1000:r--, group::r--,
/// mask::r--, other::---. False when the file system has no ACLs.
fn set_acl(p: &Path, name: &str) -> bool {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    match xattr::set(p, name, &v) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => false,
        Err(e) => panic!("setting {name} on {}: {e}", p.display()),
    }
}

/// The metadata fidelity check: the torture tree (odd names, holes, fifo, devices and foreign
/// owners as root, symlinks, a hard link) plus ACLs, a hard link group of three, extended
/// attributes on a folder and a symlink-free owner by name, restored and compared by
/// scripts/compare-trees.py (contents, modes, owners, times, xattrs and ACLs, hard link groups,
/// holes).
#[test]
fn metadata_fidelity_of_a_torture_tree() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    torture(&src);
    fs::write(src.join("acl-file"), b"acl").unwrap();
    fs::create_dir(src.join("acl-dir")).unwrap();
    let acls = set_acl(&src.join("acl-file"), "system.posix_acl_access")
        && set_acl(&src.join("acl-dir"), "system.posix_acl_default");
    if !acls {
        eprintln!("note: this file system has no POSIX ACLs; ACLs are not checked");
    }
    fs::write(src.join("group-a"), b"three names").unwrap();
    fs::hard_link(src.join("group-a"), src.join("group-b")).unwrap();
    fs::create_dir(src.join("elsewhere")).unwrap();
    fs::hard_link(src.join("group-a"), src.join("elsewhere/group-c")).unwrap();
    xattr::set(src.join("acl-dir"), "user.folder", b"on a folder").unwrap();
    // A larger sparse file: data, a 3 MiB hole, data, and a hole at the end.
    let f = fs::File::create(src.join("sparse2")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&splitmix(5, 100_000), 0).unwrap();
    f.write_all_at(&splitmix(6, 100_000), 3 << 20).unwrap();
    f.set_len(6 << 20).unwrap();
    drop(f);
    if is_root() {
        // An owner known by name here (daemon), restored by name.
        std::os::unix::fs::lchown(src.join("group-a"), Some(1), Some(1)).unwrap();
    }
    e.ok(&["backup", src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.display());
    let mut flags = vec!["--holes"];
    if is_root() {
        flags.push("--owner");
    }
    for extra in [&[][..], &["--numeric-owner"][..]] {
        let t = e.path(&format!("t{}", extra.len()));
        let mut args = vec!["restore", spec.as_str(), "-t", t.to_str().unwrap()];
        args.extend_from_slice(extra);
        e.ok(&args);
        e.compare(&src, &t, &flags);
        if acls {
            assert_eq!(
                xattr::get(t.join("acl-file"), "system.posix_acl_access").unwrap(),
                xattr::get(src.join("acl-file"), "system.posix_acl_access").unwrap()
            );
        }
        let ino = |p: &str| fs::metadata(t.join(p)).unwrap().ino();
        assert!(ino("group-a") == ino("group-b") && ino("group-a") == ino("elsewhere/group-c"));
        let m = fs::metadata(t.join("sparse2")).unwrap();
        assert!(
            m.blocks() * 512 < 1 << 20,
            "holes not recreated: {} blocks",
            m.blocks()
        );
    }
}

/// `mount` serves every snapshot read-only by time, host and id; files read back byte for
/// byte, with their modes, times and link targets; Ctrl-C unmounts.
#[test]
fn mount_browses_snapshots_with_ordinary_tools() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse on this machine");
        return;
    }
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/big"), splitmix(3, 700_000)).unwrap();
    fs::write(src.join("small"), b"small file").unwrap();
    std::os::unix::fs::symlink("d/big", src.join("link")).unwrap();
    fs::set_permissions(src.join("small"), fs::Permissions::from_mode(0o640)).unwrap();
    let id = e.backup_id(&src)[..8].to_string();
    let mp = e.path("mnt");
    fs::create_dir(&mp).unwrap();
    let mut c = e.cmd();
    c.arg("mount").arg(&mp);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let t = std::time::Instant::now();
    while !mp.join("snapshots").exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            if err.contains("cannot mount") {
                eprintln!("skipped: FUSE mounts are not allowed here: {err}");
                return;
            }
            panic!("mount exited ({st}): {err}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "mount did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rel = src.strip_prefix("/").unwrap();
    let host = e.ok(&["--json", "snapshots"]).json("snapshot")[0]["host"]
        .as_str()
        .unwrap()
        .to_string();
    for base in [
        mp.join("snapshots/latest"),
        mp.join("hosts").join(&host).join("latest"),
        mp.join("ids").join(&id),
    ] {
        let got = base.join(rel);
        assert_eq!(
            fs::read(got.join("d/big")).unwrap(),
            fs::read(src.join("d/big")).unwrap()
        );
        assert_eq!(fs::read(got.join("small")).unwrap(), b"small file");
        assert_eq!(fs::read_link(got.join("link")).unwrap(), Path::new("d/big"));
        let (a, b) = (
            fs::symlink_metadata(got.join("small")).unwrap(),
            fs::symlink_metadata(src.join("small")).unwrap(),
        );
        assert_eq!(
            (a.mode() & 0o7777, a.mtime(), a.len()),
            (0o640, b.mtime(), 10)
        );
        let names: Vec<String> = fs::read_dir(&got)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
    // Read-only.
    assert!(fs::write(mp.join("snapshots/latest").join(rel).join("small"), b"x").is_err());
    // Ctrl-C unmounts and ends the process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert!(!mp.join("snapshots").exists(), "still mounted after Ctrl-C");
    eprintln!("mount ended with {st}");
}

/// Issue 22: `restore --delete` without `:PATH` removes extras only within the paths the
/// snapshot was taken of, never in the folders above them (before: it wiped an unrelated tree
/// in the target and a sibling of the backed-up folder, reporting "2 deleted").
#[test]
fn restore_delete_stays_within_the_snapshot_paths() {
    let e = Env::new();
    e.init_small();
    let src = e.path("www");
    fs::create_dir_all(src.join("site")).unwrap();
    fs::write(src.join("site/index.html"), b"hello").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let t = e.path("t");
    let inside = t.join(src.strip_prefix("/").unwrap());
    fs::create_dir_all(inside.join("site")).unwrap();
    fs::write(inside.join("site/stale.html"), b"old").unwrap();
    fs::write(inside.join("extra"), b"old").unwrap();
    fs::create_dir_all(t.join("unrelated")).unwrap();
    fs::write(t.join("unrelated/keep"), b"mine").unwrap();
    let sibling = inside.parent().unwrap().join("sibling");
    fs::create_dir_all(&sibling).unwrap();
    fs::write(sibling.join("keep"), b"mine").unwrap();
    let r = e.ok(&[
        "--json",
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--delete",
    ]);
    let sum = &r.json("summary")[0];
    assert_eq!(sum["deleted"], 2, "{}", r.out());
    assert!(!inside.join("site/stale.html").exists());
    assert!(!inside.join("extra").exists());
    assert_eq!(fs::read(inside.join("site/index.html")).unwrap(), b"hello");
    assert_eq!(fs::read(t.join("unrelated/keep")).unwrap(), b"mine");
    assert_eq!(fs::read(sibling.join("keep")).unwrap(), b"mine");
    // A :PATH above the snapshot's path (its parent folder) deletes nothing up there either.
    let parent = src.parent().unwrap();
    let t2 = e.path("t2");
    fs::create_dir_all(t2.join("www/site")).unwrap();
    fs::write(t2.join("www/site/stale.html"), b"old").unwrap();
    fs::write(t2.join("other-file"), b"mine").unwrap();
    let spec = format!("latest:{}", parent.display());
    let r = e.ok(&[
        "--json",
        "restore",
        &spec,
        "--target",
        t2.to_str().unwrap(),
        "--delete",
    ]);
    assert_eq!(r.json("summary")[0]["deleted"], 1, "{}", r.out());
    assert!(!t2.join("www/site/stale.html").exists());
    assert_eq!(fs::read(t2.join("other-file")).unwrap(), b"mine");
}

/// Issue 22 part 7: `restore --delete` keeps what the snapshot's own excludes match (it was
/// never backed up, so its absence says nothing), and its dry run lists what it would remove
/// by entry, with what each folder holds.
#[test]
fn restore_delete_keeps_what_the_backup_excluded_and_the_dry_run_counts() {
    let e = Env::new();
    e.init_small();
    let src = e.path("www");
    fs::create_dir_all(src.join("site")).unwrap();
    fs::write(src.join("site/index.html"), b"hello").unwrap();
    e.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        &format!("{}/cache", src.display()),
    ]);
    let t = e.path("t");
    let inside = t.join(src.strip_prefix("/").unwrap());
    fs::create_dir_all(inside.join("cache/a")).unwrap();
    fs::write(inside.join("cache/a/blob"), b"cached").unwrap();
    fs::create_dir_all(inside.join("site")).unwrap();
    fs::write(inside.join("site/upload.tmp"), b"half").unwrap();
    fs::create_dir_all(inside.join("old/deep")).unwrap();
    fs::write(inside.join("old/deep/x"), b"12345").unwrap();
    fs::write(inside.join("old/y"), b"123").unwrap();
    fs::write(inside.join("stale.html"), b"stale").unwrap();
    let ts = t.to_str().unwrap();
    let dry = e.ok(&["restore", "latest", "--target", ts, "--delete", "--dry-run"]);
    let text = dry.out();
    // old/ (itself, deep/, deep/x, y: 4 entries, 8 bytes) and stale.html: 5 entries.
    assert!(
        text.contains("--delete would remove 5 entries (entries, file bytes, path):"),
        "{text}"
    );
    let old = format!("{}", inside.join("old").display());
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("4 ") && l.contains(" 8 B ") && l.ends_with(&old)),
        "{text}"
    );
    assert!(
        !text.contains("cache") && !text.contains("upload.tmp"),
        "{text}"
    );
    assert!(
        inside.join("old/deep/x").exists(),
        "a dry run deletes nothing"
    );
    let r = e.ok(&["--json", "restore", "latest", "--target", ts, "--delete"]);
    let sum = &r.json("summary")[0];
    assert_eq!(sum["deleted"], 2, "{}", r.out());
    assert_eq!(sum["deletions"].as_array().unwrap().len(), 2, "{sum}");
    assert!(!inside.join("old").exists() && !inside.join("stale.html").exists());
    assert_eq!(fs::read(inside.join("cache/a/blob")).unwrap(), b"cached");
    assert_eq!(fs::read(inside.join("site/upload.tmp")).unwrap(), b"half");
    assert_eq!(fs::read(inside.join("site/index.html")).unwrap(), b"hello");
}
