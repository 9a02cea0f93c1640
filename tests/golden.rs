//! The golden v1 repository (`tests/fixtures/golden-v1`, see its README): this version reads
//! and restores it byte for byte, and `check` on damaged copies of it reports what the pinned
//! reports in `damaged/` say.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;

mod common;

use common::run_command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-v1")
}

/// Copies a fixture folder; the copy is private (0700), as chunkbak makes repositories (a
/// looser one would add a warning to every pinned output).
fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            fs::copy(e.path(), &t).unwrap();
        }
    }
}

fn cmd(repo: &Path, home: &Path) -> Command {
    let mut c = Command::new(cargo_bin("chunkbak"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHUNKBAK_") {
            c.env_remove(k);
        }
    }
    c.env("CHUNKBAK_REPOSITORY", repo)
        .env("CHUNKBAK_PASSWORD", "golden")
        .env("CHUNKBAK_NO_PROGRESS", "1")
        .env("CHUNKBAK_ALLOW_WEAK_KDF", "1")
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"));
    c
}

/// Two trees are the same: names, kinds, file contents, symlink targets.
fn same_tree(a: &Path, b: &Path) {
    let mut na: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut nb: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    na.sort();
    nb.sort();
    assert_eq!(na, nb, "{} vs {}", a.display(), b.display());
    for n in na {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        let (ta, tb) = (ma.file_type(), mb.file_type());
        assert_eq!(
            (ta.is_dir(), ta.is_symlink(), ta.is_fifo()),
            (tb.is_dir(), tb.is_symlink(), tb.is_fifo()),
            "{}",
            pa.display()
        );
        if ta.is_dir() {
            same_tree(&pa, &pb);
        } else if ta.is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        } else {
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "{}",
                pa.display()
            );
        }
    }
}

#[test]
fn golden_v1_repository_reads_and_restores() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    copy_dir(&fixture().join("repo"), &repo);
    let r = run_command({
        let mut c = cmd(&repo, d.path());
        c.args(["--json", "snapshots"]);
        c
    });
    assert_eq!(r.code, 0, "{}", r.stderr);
    let snaps = r.json("snapshot");
    let ids: Vec<(String, String)> = snaps
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap()[..8].to_string(),
                s["tags"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("059d77c0".into(), "v1".into()),
            ("42297f5e".into(), "v2".into())
        ]
    );
    for (id, tag) in &ids {
        let target = d.path().join(format!("out-{tag}"));
        let r = run_command({
            let mut c = cmd(&repo, d.path());
            c.args(["restore", &format!("{id}:/golden/src"), "--target"])
                .arg(&target);
            c
        });
        assert_eq!(r.code, 0, "{}", r.stderr);
        same_tree(&target, &fixture().join(tag));
    }
    let r = run_command({
        let mut c = cmd(&repo, d.path());
        c.args(["check", "--read-data"]);
        c
    });
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    assert!(r.out().contains("0 problems"), "{}", r.out());
}

const DATA_00: &str = "data/00/00adb1da0fd81121809c180bc58b11fe3f94697bc81409bc7b6d2a42426c0ce1";
const DATA_42: &str = "data/42/426448e28588a33129de15c32ef5fa74297a52b21c2e16668fb6029a48265d17";
const TREE_0E: &str = "tree/0e/0eff4167b4be08388b349b82dbe64ae8be13f55faa12e9742171af16cf35b5ea";
const SNAP_V1: &str = "snapshots/059d77c0de08f378cb51d8d9e059a32dee8ceed0ba234f29c5a65161746cfe6c";
const INDEX_V1: &str = "index/e5bcb1b0dd0984502e637b026df8541ebae987e57df1ed32405087958bf8262f";

fn flip(p: &Path, at: usize) {
    let mut b = fs::read(p).unwrap();
    b[at] ^= 0xff;
    fs::write(p, b).unwrap();
}

/// Each case: a damage, then `check --read-data`'s exit code and report (sorted lines) must
/// be what `damaged/CASE.txt` pins.
#[test]
fn damaged_golden_copies_have_pinned_check_reports() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage, i32); 7] = [
        (
            "missing-data-pack",
            |r| fs::remove_file(r.join(DATA_00)).unwrap(),
            1,
        ),
        (
            "truncated-pack",
            |r| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(r.join(DATA_42))
                    .unwrap();
                f.set_len(10_000).unwrap();
            },
            1,
        ),
        (
            "flipped-byte-in-ciphertext",
            |r| flip(&r.join(DATA_00), 5000),
            1,
        ),
        (
            "index-names-a-missing-tree-pack",
            |r| fs::remove_file(r.join(TREE_0E)).unwrap(),
            1,
        ),
        ("orphan-pack", |r| copy_dir(&fixture().join("orphan"), r), 0),
        ("damaged-snapshot", |r| flip(&r.join(SNAP_V1), 100), 1),
        (
            "deleted-index-file",
            |r| fs::remove_file(r.join(INDEX_V1)).unwrap(),
            1,
        ),
    ];
    let bless = std::env::var_os("CHUNKBAK_BLESS").is_some();
    for (name, damage, code) in cases {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        copy_dir(&fixture().join("repo"), &repo);
        damage(&repo);
        let r = run_command({
            let mut c = cmd(&repo, d.path());
            c.args(["check", "--read-data"]);
            c
        });
        let mut lines: Vec<String> = r
            .out()
            .lines()
            .chain(r.stderr.lines())
            // The run's summary line carries its duration: not part of the report.
            .filter(|l| !l.starts_with("chunkbak check: "))
            .map(|l| l.replace(&*repo.to_string_lossy(), "REPO"))
            .collect();
        lines.sort();
        let got = format!("exit code {}\n{}\n", r.code, lines.join("\n"));
        let pinned = fixture().join("damaged").join(format!("{name}.txt"));
        if bless {
            fs::write(&pinned, &got).unwrap();
        }
        let want = fs::read_to_string(&pinned)
            .unwrap_or_else(|_| panic!("{} missing: run with CHUNKBAK_BLESS=1", pinned.display()));
        assert_eq!(got, want, "case {name}");
        assert_eq!(r.code, code, "case {name}: {got}");
        if name == "damaged-snapshot" {
            // The unreadable snapshot is listed with a warning, the other one still restores,
            // and `repair snapshots` removes the damaged object.
            let r = run_command({
                let mut c = cmd(&repo, d.path());
                c.args(["--json", "snapshots"]);
                c
            });
            assert_eq!(r.code, 3, "{}", r.stderr);
            assert_eq!(r.json("snapshot").len(), 1);
            assert!(r.stderr.contains(SNAP_V1), "{}", r.stderr);
            let r = run_command({
                let mut c = cmd(&repo, d.path());
                c.args(["repair", "snapshots"]);
                c
            });
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert!(r.out().contains("was removed"), "{}", r.out());
            let r = run_command({
                let mut c = cmd(&repo, d.path());
                c.args(["check", "--read-data"]);
                c
            });
            assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
        }
    }
}
