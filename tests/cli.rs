//! End-to-end tests through the real binary: what an operator does, checked byte for byte.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod common;

use common::*;

#[test]
fn torture_tree_round_trip() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    torture(&src);
    e.ok(&["backup", src.to_str().unwrap()]);
    // Restore the source directory's contents straight into the target.
    let target = e.path("out");
    let spec = format!("latest:{}", src.display());
    e.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    let owner = if unsafe { libc::geteuid() } == 0 {
        "--owner"
    } else {
        "--holes"
    };
    e.compare(&src, &target, &["--holes", owner]);
    let fifo = fs::symlink_metadata(target.join("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    // And the whole snapshot, mirrored under the target by absolute path.
    let full = e.path("full");
    e.ok(&["restore", "latest", "--target", full.to_str().unwrap()]);
    e.compare(&src, &full.join(src.strip_prefix("/").unwrap()), &[]);
}

#[test]
fn unreadable_file_is_reported_and_exits_3() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("ok"), b"fine").unwrap();
    fs::write(src.join("secret"), b"nobody may read").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let mut c = e.cmd();
    // root reads everything: drop to nobody for this run.
    if unsafe { libc::geteuid() } == 0 {
        c = e.as_nobody();
    }
    c.args(["backup", src.to_str().unwrap()]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("secret"), "{}", r.stderr);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    // The snapshot was written, with the readable file and without the unreadable one.
    let ls = e.ok(&["ls", "latest"]).out();
    assert!(ls.contains("/ok"), "{ls}");
    assert!(!ls.contains("/secret"), "{ls}");
}

#[test]
fn file_changing_while_read_is_stored_and_warned() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    let p = src.join("busy");
    fs::write(&p, splitmix(3, 32 << 20)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all_at(b"x", (i * 7919) % (32 << 20)).unwrap();
                i += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let r = e.run(&["backup", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("changed while it was read"),
        "{}",
        r.stderr
    );
    assert!(e.ok(&["ls", "latest"]).out().contains("/busy"));
}

#[test]
fn unchanged_rebackup_reads_nothing_and_adds_nothing() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    torture(&src);
    let first = e
        .ok(&["--json", "backup", src.to_str().unwrap()])
        .json("summary")[0]
        .clone();
    assert!(first["bytes_added"].as_u64().unwrap() > 0);
    let second = e
        .ok(&["--json", "backup", src.to_str().unwrap()])
        .json("summary")[0]
        .clone();
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert_eq!(
        second["files_new"].as_u64().unwrap() + second["files_changed"].as_u64().unwrap(),
        0
    );
    assert!(second["files_unchanged"].as_u64().unwrap() >= 12);
    assert!(
        second["bytes_added"].as_u64().unwrap() < ANCESTOR_TREES,
        "{second}"
    );
    assert_eq!(second["parent"], first["snapshot_id"]);
    // --force reads everything again but still stores nothing new.
    let forced = e
        .ok(&["--json", "backup", "--force", src.to_str().unwrap()])
        .json("summary")[0]
        .clone();
    assert!(forced["bytes_read"].as_u64().unwrap() > 3 << 20);
    assert!(
        forced["bytes_added"].as_u64().unwrap() < ANCESTOR_TREES,
        "{forced}"
    );
}

#[test]
fn one_byte_change_adds_a_small_delta_of_one_chunk() {
    let e = Env::new();
    e.init_default_chunks();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    let mut data = splitmix(77, 96 << 20);
    fs::write(src.join("big.img"), &data).unwrap();
    let first = e
        .ok(&["--json", "backup", src.to_str().unwrap()])
        .json("summary")[0]
        .clone();
    assert!(first["bytes_added"].as_u64().unwrap() >= 96 << 20);
    data[50 << 20] ^= 0xff;
    fs::write(src.join("big.img"), &data).unwrap();
    let second = e
        .ok(&["--json", "backup", src.to_str().unwrap()])
        .json("summary")[0]
        .clone();
    let added = second["bytes_added"].as_u64().unwrap();
    // One data chunk, stored as a delta on its previous version (a few KiB however large the
    // chunk), plus two small trees.
    assert_eq!(second["deltas"], 1, "{second}");
    assert!(added <= 64 * 1024, "added {added}");
    assert_eq!(second["files_changed"], 1);
    let t = e.path("restored");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let back = fs::read(t.join(src.join("big.img").strip_prefix("/").unwrap())).unwrap();
    assert!(back == data, "the restored file differs");
}

fn snapshot_at(e: &Env, t: &str, src: &Path, content: &str) -> String {
    fs::write(src.join("f"), content).unwrap();
    let r = e.ok(&["--json", "backup", "--time", t, src.to_str().unwrap()]);
    r.json("summary")[0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn at_chooses_the_snapshot_in_force() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    let a = snapshot_at(&e, "2026-01-01T00:00:00Z", &src, "one");
    let b = snapshot_at(&e, "2026-02-01T00:00:00Z", &src, "two");
    let c = snapshot_at(&e, "2026-03-01T12:00:00+01:00", &src, "three");
    let pick = |t: &str| {
        let r = e.ok(&["--json", "ls", "--at", t]);
        r.json("selected")[0]["id"].as_str().unwrap().to_string()
    };
    assert_eq!(pick("2026-01-15T00:00:00Z"), a);
    assert_eq!(pick("2026-02-01T00:00:00Z"), b);
    assert_eq!(pick("2026-03-01T10:59:59Z"), b);
    assert_eq!(pick("2026-03-01T11:00:00Z"), c);
    assert_eq!(pick("1 day ago"), c);
    // Restore --at brings back the content of that time.
    let t = e.path("out");
    e.ok(&[
        "restore",
        "--at",
        "2026-02-10",
        "--target",
        t.to_str().unwrap(),
        &format!("--include={}/f", src.display()),
    ]);
    assert_eq!(
        fs::read_to_string(t.join(src.strip_prefix("/").unwrap()).join("f")).unwrap(),
        "two"
    );
    // Errors: before the first, in the future, malformed.
    let r = e.run(&["ls", "--at", "2025-12-31T23:59:59Z"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("earliest") && r.stderr.contains(&a[..8]),
        "{}",
        r.stderr
    );
    let r = e.run(&[
        "restore",
        "--at",
        "2999-01-01",
        "--target",
        t.to_str().unwrap(),
    ]);
    // A usage mistake (issue 22): exit 2.
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("future"), "{}", r.stderr);
    let r = e.run(&["ls", "--at", "last tuesday-ish"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot read time"), "{}", r.stderr);
}

#[test]
fn wrong_password_and_missing_repository() {
    let e = Env::new();
    let r = e.run(&["snapshots"]);
    assert_eq!(r.code, 10, "{}", r.stderr);
    assert!(r.stderr.contains("no repository") && r.stderr.contains(e.repo.to_str().unwrap()));
    e.init_small();
    let bad = e.path("badpw");
    fs::write(&bad, "wrong").unwrap();
    let mut c = e.cmd();
    c.env("CHUNKBAK_PASSWORD_FILE", &bad).arg("snapshots");
    let r = e.run_cmd(c);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains("wrong password"), "{}", r.stderr);
}

fn packs(repo: &Path, kind: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join(kind)).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[test]
fn damaged_packs_give_clear_errors() {
    for damage in ["truncate", "flip"] {
        let e = Env::new();
        e.init_small();
        let src = e.path("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("data"), splitmix(5, 200_000)).unwrap();
        e.ok(&["backup", src.to_str().unwrap()]);
        let data_packs = packs(&e.repo, "data");
        assert!(!data_packs.is_empty());
        let mut names = Vec::new();
        for p in &data_packs {
            let mut bytes = fs::read(p).unwrap();
            if damage == "truncate" {
                bytes.truncate(bytes.len() / 2);
            } else {
                bytes[1000] ^= 0x01;
            }
            fs::write(p, &bytes).unwrap();
            names.push(p.file_name().unwrap().to_str().unwrap().to_string());
        }
        let t = e.path("out");
        let r = e.run(&["restore", "latest", "--target", t.to_str().unwrap()]);
        assert_eq!(r.code, 3, "{damage}: {}", r.stderr);
        assert!(
            names.iter().any(|n| r.stderr.contains(n.as_str())),
            "{damage}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("corrupt"), "{damage}: {}", r.stderr);
        for name in &names {
            let r = e.run(&["cat", "pack", name]);
            assert_eq!(r.code, 1, "{damage}");
            assert!(
                r.stderr.contains(name.as_str()) && r.stderr.contains("corrupt"),
                "{damage}: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn stdin_and_command_backups() {
    let e = Env::new();
    e.init_small();
    let dump = splitmix(11, 300_000);
    let mut c = e.cmd();
    c.args(["--json", "backup", "--stdin", "--stdin-filename", "db.sql"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(&dump).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let t = e.path("out");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(fs::read(t.join("db.sql")).unwrap(), dump);

    // A command's output; a failing command writes no snapshot.
    let before = e.ok(&["--json", "snapshots"]).json("snapshot").len();
    let r = e.run(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "x.sql",
        "--",
        "sh",
        "-c",
        "echo partial; exit 3",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no snapshot was written"), "{}", r.stderr);
    assert_eq!(
        e.ok(&["--json", "snapshots"]).json("snapshot").len(),
        before
    );
    e.ok(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "y.sql",
        "--",
        "printf",
        "%s",
        "rows",
    ]);
    let t2 = e.path("out2");
    e.ok(&["restore", "latest", "--target", t2.to_str().unwrap()]);
    assert_eq!(fs::read(t2.join("y.sql")).unwrap(), b"rows");
}

#[test]
fn default_repository_is_created_on_first_use() {
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"hello").unwrap();
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_REPOSITORY")
        .env_remove("CHUNKBAK_PASSWORD_FILE");
    c.args(["backup", src.to_str().unwrap()]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let repo = e.path("xdg-data/chunkbak/repo");
    let pwfile = e.path("xdg-config/chunkbak/password");
    assert!(repo.join("config").exists());
    assert!(r.stderr.contains(repo.to_str().unwrap()), "{}", r.stderr);
    assert!(
        r.stderr.contains(pwfile.to_str().unwrap()) && r.stderr.contains("safe"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::metadata(&pwfile).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_REPOSITORY")
        .env_remove("CHUNKBAK_PASSWORD_FILE");
    c.args(["--json", "snapshots"]);
    assert_eq!(e.run_cmd(c).json("snapshot").len(), 1);
}

#[test]
fn excludes_and_filters() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("cache/deep")).unwrap();
    fs::write(src.join("keep.txt"), b"k").unwrap();
    fs::write(src.join("skip.tmp"), b"s").unwrap();
    fs::write(src.join("cache/deep/x"), b"x").unwrap();
    e.ok(&[
        "backup",
        "--exclude",
        "*.tmp",
        "--exclude",
        "cache",
        "--host",
        "web1",
        "--tag",
        "nightly",
        src.to_str().unwrap(),
    ]);
    let ls = e.ok(&["ls", "latest"]).out();
    assert!(
        ls.contains("keep.txt") && !ls.contains("skip.tmp") && !ls.contains("cache"),
        "{ls}"
    );
    let snaps = e
        .ok(&["--json", "snapshots", "--host", "web1", "--tag", "nightly"])
        .json("snapshot");
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["host"], "web1");
    assert!(e
        .ok(&["--json", "snapshots", "--host", "db1"])
        .json("snapshot")
        .is_empty());
}

/// Starts a backup of 8 x 32 MiB into a repository with 1 MiB data packs and returns once it
/// has stored `packs` pack folders, with most of the data still to go.
fn start_big_backup(e: &Env, packs: usize) -> (PathBuf, std::process::Child) {
    e.ok(&[
        "init",
        "--kdf-memory-kib",
        "256",
        "--kdf-iterations",
        "1",
        "--data-pack-size",
        "1048576",
    ]);
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("f{i}")), splitmix(100 + i, 32 << 20)).unwrap();
    }
    // And many small ones still queued when the run stops.
    fs::create_dir(src.join("small")).unwrap();
    for i in 0..200 {
        fs::write(src.join(format!("small/s{i}")), format!("small {i}")).unwrap();
    }
    let mut c = e.cmd();
    c.args(["backup", src.to_str().unwrap()])
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let t0 = std::time::Instant::now();
    while fs::read_dir(e.repo.join("data")).unwrap().count() < packs {
        assert!(t0.elapsed().as_secs() < 60, "backup never stored a pack");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (src, child)
}

#[test]
fn interrupted_backup_exits_130_and_writes_no_snapshot() {
    let e = Env::new();
    let (src, child) = start_big_backup(&e, 2);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // One line says why (issue 22: was a line per file, "backup aborted; not in this
    // snapshot"), then at most the summary.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("chunkbak: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(!stderr.contains("not in this snapshot"), "{stderr}");
    assert!(e.ok(&["--json", "snapshots"]).json("snapshot").is_empty());
    // Nothing half-written is left in the repository's temp folder, and the next run completes.
    assert_eq!(fs::read_dir(e.repo.join("tmp")).unwrap().count(), 0);
    e.ok(&["backup", src.to_str().unwrap()]);
    assert_eq!(e.ok(&["--json", "snapshots"]).json("snapshot").len(), 1);
}

#[test]
fn huge_directory_round_trip() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    for i in 0..20_000 {
        fs::write(
            src.join(format!("f{i:05}")),
            if i % 1000 == 0 {
                format!("{i}")
            } else {
                String::new()
            },
        )
        .unwrap();
    }
    e.ok(&["backup", src.to_str().unwrap()]);
    let ls = e.ok(&["ls", "latest"]).out();
    assert_eq!(ls.lines().filter(|l| l.contains("/src/f")).count(), 20_000);
    e.restore_subtree_and_compare(&src);
}

#[test]
fn concurrent_backups_into_one_repository() {
    let e = Env::new();
    e.init_small();
    let mut children = Vec::new();
    for i in 0..3u64 {
        let src = e.path(&format!("src{i}"));
        fs::create_dir(&src).unwrap();
        fs::write(src.join("shared"), splitmix(1, 2 << 20)).unwrap();
        fs::write(src.join("own"), splitmix(10 + i, 2 << 20)).unwrap();
        let mut c = e.cmd();
        c.args(["backup", "--host", &format!("h{i}"), src.to_str().unwrap()]);
        children.push((src, c.spawn().unwrap()));
    }
    for (src, mut child) in children {
        assert!(child.wait().unwrap().success());
        let host = format!("h{}", src.to_str().unwrap().chars().last().unwrap());
        let t = e.path(&format!("out-{host}"));
        e.ok(&[
            "restore",
            "latest",
            "--host",
            &host,
            "--target",
            t.to_str().unwrap(),
        ]);
        e.compare(&src, &t.join(src.strip_prefix("/").unwrap()), &[]);
    }
    assert_eq!(e.ok(&["--json", "snapshots"]).json("snapshot").len(), 3);
}

#[test]
fn password_command_json_names_and_cat() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    // The password can come from a command instead of a file.
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_PASSWORD_FILE").args([
        "--password-command",
        "echo correct horse",
        "--json",
        "ls",
        "latest",
    ]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A name that is not UTF-8 is carried as base64 of its bytes.
    let nodes = r.json("node");
    let odd = nodes
        .iter()
        .find(|n| n.get("name_b64").is_some())
        .expect("a base64 name");
    assert_eq!(odd["name_b64"], "Y2Fm6Q==");
    assert_eq!(odd["type"], "file");
    // cat shows decrypted objects.
    let cfg = e.ok(&["cat", "config"]).out();
    assert!(cfg.contains("\"avg\": 16384"), "{cfg}");
    let snap = e
        .ok(&["--json", "cat", "snapshot", "latest"])
        .json("snapshot");
    let tree = snap[0]["tree"].as_str().unwrap().to_string();
    assert!(e.ok(&["cat", "tree", &tree]).out().contains("Dir("));
    // A misspelt --include is an error, not an empty restore.
    let t = e.path("out");
    let r = e.run(&[
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
        "--include",
        "/no/such/path",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("/no/such/path"), "{}", r.stderr);
    // A source path that does not exist is an error naming it.
    let r = e.run(&["backup", "/no/such/source"]);
    assert_eq!(
        r.code, 2,
        "a usage mistake, said before anything is written"
    );
    assert!(r.stderr.contains("/no/such/source"), "{}", r.stderr);
}

#[test]
fn killed_backup_leaves_a_usable_repository() {
    let e = Env::new();
    let (src, mut child) = start_big_backup(&e, 3);
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    assert!(e.ok(&["--json", "snapshots"]).json("snapshot").is_empty());
    // The next run completes and its snapshot restores byte for byte.
    e.ok(&["backup", src.to_str().unwrap()]);
    e.restore_subtree_and_compare(&src);
}

#[test]
fn one_file_system_stays_on_the_source_file_system() {
    use std::os::unix::fs::MetadataExt;
    // /dev/shm is a file system of its own below /dev on Linux hosts; skip where it is not.
    let (dev, shm) = (fs::metadata("/dev").unwrap(), fs::metadata("/dev/shm"));
    let Ok(shm) = shm else { return };
    if dev.dev() == shm.dev() {
        eprintln!("skipped: /dev/shm is on the same file system as /dev here");
        return;
    }
    let e = Env::new();
    e.init_small();
    let marker = format!("/dev/shm/chunkbak-xdev-{}", std::process::id());
    fs::write(&marker, b"x").unwrap();
    let ls = |args: &[&str]| {
        let mut a = vec!["backup", "-q"];
        a.extend_from_slice(args);
        let r = e.run(&a);
        assert!(r.code == 0 || r.code == 3, "{}", r.stderr);
        e.ok(&["ls", "latest"]).out()
    };
    let stayed = ls(&["-x", "/dev"]);
    let crossed = ls(&["/dev"]);
    let _ = fs::remove_file(&marker);
    assert!(
        stayed.contains("/dev/null") && !stayed.contains(&marker),
        "{stayed}"
    );
    assert!(crossed.contains(&marker), "{crossed}");
}

#[test]
fn benchmark_needs_no_repository_and_measures_every_stage() {
    let e = Env::new();
    // No repository exists at CHUNKBAK_REPOSITORY.
    let r = e.ok(&[
        "--json",
        "benchmark",
        "--size",
        "2MiB",
        "--rounds",
        "1",
        "--samples",
        "random,text",
    ]);
    let figs = r.json("benchmark");
    for stage in chunkbak_engine::ops::benchmark::STAGES {
        for sample in ["random", "text"] {
            let f = figs
                .iter()
                .find(|f| f["stage"] == stage && f["sample"] == sample)
                .unwrap_or_else(|| panic!("no {stage} figure for {sample}: {}", r.out()));
            assert!(f["bytes_per_sec"].as_f64().unwrap() > 0.0, "{f}");
        }
    }
    assert_eq!(r.json("benchmark_efficiency").len(), 2);
    assert!(!e.repo.exists());
    let bad = e.run(&["benchmark", "--samples", "noise"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("unknown sample"), "{}", bad.stderr);
}

/// `dump` writes one file of a snapshot to stdout, byte for byte (by ID:PATH, by PATH, and by
/// --at), after naming the snapshot it chose on stderr; anything but a file is a clear error.
#[test]
fn dump_writes_one_file_to_stdout() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let day1 = splitmix(41, 2_000_000);
    let db = src.join("db.sql");
    fs::write(&db, &day1).unwrap();
    fs::write(src.join("sub/x"), b"x").unwrap();
    let first = e
        .ok(&["--json", "backup", src.to_str().unwrap()])
        .json("summary")[0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let snaps = e.ok(&["--json", "snapshots"]).json("snapshot");
    let t1 = snaps[0]["time"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let day2 = splitmix(42, 1_500_000);
    fs::write(&db, &day2).unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);

    let spec = format!("latest:{}", db.display());
    let r = e.ok(&["dump", &spec]);
    assert!(r.stdout == day2, "latest differs");
    assert!(
        r.stderr.contains("snapshot "),
        "the chosen snapshot is named: {}",
        r.stderr
    );
    let r = e.ok(&["dump", &first[..8], db.to_str().unwrap()]);
    assert!(r.stdout == day1, "by id and PATH");
    let r = e.ok(&["dump", "--at", &t1, db.to_str().unwrap()]);
    assert!(r.stdout == day1, "by --at");
    // ls takes a path after --at the same way.
    let r = e.ok(&["--json", "ls", "--at", &t1, db.to_str().unwrap()]);
    assert_eq!(r.json("node").len(), 1, "{}", r.out());

    let r = e.run(&["dump", &format!("latest:{}", src.join("sub").display())]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("is a directory"), "{}", r.stderr);
    let r = e.run(&["dump", &format!("latest:{}/nope", src.display())]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not in the snapshot"), "{}", r.stderr);
    let r = e.run(&["--json", "dump", &spec]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--json"), "{}", r.stderr);
}
