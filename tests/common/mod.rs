//! Shared helpers of the end-to-end tests: a scratch environment, running the real binary,
//! deterministic data, the torture tree, tree comparison, and the project's S3 test server.
#![allow(dead_code)]

pub mod proxy;
mod s3_server;
#[allow(unused_imports)]
pub use s3_server::{s3_endpoint, s3_server};
pub mod scenario;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::cargo_bin;
use serde_json::Value;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub pw: PathBuf,
}

/// The folder a run killed on this host left under `parent` (its lock file free), named
/// `prefix…`, with a staged file: the next run that stages there removes it.
#[allow(dead_code)] // not every test crate kills runs
pub fn plant_dead_run(parent: &Path, prefix: &str) {
    let d = parent.join(format!("{prefix}1-planted"));
    fs::create_dir_all(&d).unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let said = format!("{}{}", chunkbak_engine::tmp::MAGIC, host.trim());
    fs::write(d.join("lock"), said).unwrap();
    fs::write(d.join("pack-planted"), vec![7u8; 100_000]).unwrap();
}

/// Deterministic incompressible test data (format-spec.md, appendix A).
pub fn splitmix(seed: u64, len: usize) -> Vec<u8> {
    chunkbak_engine::chunker::splitmix_bytes(seed, len)
}

pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// The JSON Lines messages of a given type.
    /// The `data` of every message of type `ty`. Every line of a `--json` run's stdout must be a
    /// JSON Lines message (`{"type", "data"}`): any other line fails the test (docs/scripting.md).
    pub fn json(&self, ty: &str) -> Vec<Value> {
        self.out()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON Lines message ({e}): {l}"));
                assert!(
                    v["type"].is_string() && v["data"].is_object(),
                    "not a {{type, data}} message: {l}"
                );
                v
            })
            .filter(|v| v["type"] == ty)
            .map(|v| v["data"].clone())
            .collect()
    }
}

/// Runs a command to its end; a panic in its output fails the test.
/// The longest one chunkbak command may run in a test (the slowest takes well under a minute):
/// a hang fails its test with what the command printed, instead of stalling the suite until
/// CI's time runs out.
/// `r`, after asserting that `chunkbak args` exited 0 (its output in the message otherwise).
pub fn expect_ok(r: Run, args: &[&str]) -> Run {
    assert_eq!(
        r.code,
        0,
        "chunkbak {args:?} failed:\n{}\n{}",
        r.out(),
        r.stderr
    );
    r
}

pub const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

pub fn run_command(mut c: Command) -> Run {
    use std::process::Stdio;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let (finished, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = matches!(
            wait.recv_timeout(COMMAND_LIMIT),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if hung {
            // SAFETY: kill(2) takes no pointers. The pid is the child's: it is reaped only
            // inside wait_with_output, which sends `finished` right after it returns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        hung
    });
    let o = child.wait_with_output().unwrap();
    let _ = finished.send(());
    let hung = watchdog.join().unwrap();
    assert!(
        !hung,
        "{c:?} ran over {COMMAND_LIMIT:?} and was killed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let r = Run {
        code: o.status.code().unwrap_or(-1),
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    r
}

/// `init` flags of a small, fast repository: a cheap KDF, 16 KiB average chunks, 256 KiB packs.
/// A cheap KDF for test key files (256 KiB, one pass).
pub const FAST_KDF: [&str; 4] = ["--kdf-memory-kib", "256", "--kdf-iterations", "1"];

pub const INIT_SMALL: [&str; 12] = [
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
];

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cbk")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // The runs' temporary folder (`TMPDIR`), so a test sees what they leave there; open
        // to every user, as /tmp is.
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
        let repo = dir.path().join("repo");
        let pw = dir.path().join("pw");
        fs::write(&pw, "correct horse\n").unwrap();
        Env { dir, repo, pw }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(cargo_bin("chunkbak"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CHUNKBAK_") {
                c.env_remove(k);
            }
        }
        // The whole suite can run with a small memory budget (the index on disk, prune's
        // bounded plan): `CHUNKBAK_TEST_MEMORY=64KiB cargo test`.
        if let Ok(m) = std::env::var("CHUNKBAK_TEST_MEMORY") {
            c.env("CHUNKBAK_MEMORY", m);
        }
        c.env("HOME", self.dir.path())
            .env("TMPDIR", self.path("tmp"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_CACHE_HOME", self.path("xdg-cache"))
            .env("XDG_STATE_HOME", self.path("xdg-state"))
            .env("CHUNKBAK_REPOSITORY", &self.repo)
            .env("CHUNKBAK_PASSWORD_FILE", &self.pw)
            .env("CHUNKBAK_NO_PROGRESS", "1")
            // Tests make key files with a cheap KDF (256 KiB, one pass).
            .env("CHUNKBAK_ALLOW_WEAK_KDF", "1");
        c
    }

    pub fn run_cmd(&self, c: Command) -> Run {
        run_command(c)
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        self.run_cmd(c)
    }

    /// As [`ok`](Self::ok), on the repository at `repo` instead of this environment's.
    pub fn ok_at(&self, repo: &Path, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.env("CHUNKBAK_REPOSITORY", repo).args(args);
        let r = self.run_cmd(c);
        assert_eq!(
            r.code,
            0,
            "chunkbak -r {} {args:?} failed:\n{}\n{}",
            repo.display(),
            r.out(),
            r.stderr
        );
        r
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        expect_ok(self.run(args), args)
    }

    /// A command that runs the binary as nobody (root reads and writes everything, so tests of
    /// permissions drop to nobody): the repository, its files and the password file are opened
    /// up to it, and it runs a copy of the binary (the build tree may be out of its reach).
    pub fn as_nobody(&self) -> Command {
        fn open_up(p: &Path) {
            let dir = p.is_dir();
            fs::set_permissions(
                p,
                fs::Permissions::from_mode(if dir { 0o777 } else { 0o644 }),
            )
            .unwrap();
            if dir {
                for e in fs::read_dir(p).unwrap() {
                    open_up(&e.unwrap().path());
                }
            }
        }
        open_up(&self.repo);
        fs::set_permissions(&self.pw, fs::Permissions::from_mode(0o644)).unwrap();
        let bin = self.path("chunkbak-copy");
        fs::copy(cargo_bin("chunkbak"), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .env("CHUNKBAK_REPOSITORY", &self.repo)
            .env("CHUNKBAK_PASSWORD_FILE", &self.pw)
            .env("CHUNKBAK_NO_PROGRESS", "1")
            .env("HOME", self.dir.path())
            .env("XDG_CACHE_HOME", self.path("nobody-cache"));
        c
    }

    /// Backs up `src`; the new snapshot's full id.
    pub fn backup_id(&self, src: &Path) -> String {
        self.ok(&["--json", "backup", src.to_str().unwrap()])
            .json("summary")[0]["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn init_small(&self) {
        let mut init = vec!["init"];
        init.extend(INIT_SMALL);
        self.ok(&init);
    }

    pub fn init_default_chunks(&self) {
        self.ok(&["init", "--kdf-memory-kib", "256", "--kdf-iterations", "1"]);
    }

    /// Restores the snapshot's copy of `src` straight into a new target and compares the trees.
    pub fn restore_subtree_and_compare(&self, src: &Path) {
        let t = self.path("restored-subtree");
        let spec = format!("latest:{}", src.display());
        self.ok(&["restore", &spec, "--target", t.to_str().unwrap()]);
        self.compare(src, &t, &[]);
    }

    pub fn compare(&self, a: &Path, b: &Path, extra: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare-trees.py");
        let o = Command::new("python3")
            .arg(script)
            .args(extra)
            .arg(a)
            .arg(b)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "trees differ:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// A snapshot records the directories above its paths (/tmp, ...). Tests running in parallel
/// change /tmp, so an unchanged source may still add the new tree blobs of its ancestors: a few
/// hundred bytes, never file data.
pub const ANCESTOR_TREES: u64 = 4096;

pub fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Builds the torture tree of issue 2 (everything but the unreadable file).
pub fn torture(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let name = |b: &[u8]| root.join(std::ffi::OsStr::from_bytes(b));
    fs::write(name(b"latin1-\xe9t\xe9"), b"not utf-8 name").unwrap();
    fs::write(name(b"new\nline"), b"newline in name").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    // A deep path: about 3.5 KB long.
    let mut deep = root.join("deep");
    for i in 0..180 {
        deep.push(format!("level-{i:03}-abcdefgh"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep file").unwrap();
    // Sparse: 8 MiB with 4 KiB of data in the middle.
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&splitmix(9, 4096), 4 << 20).unwrap();
    mkfifo(&root.join("fifo"));
    // Chunk-size edge cases for min 4096 / avg 16384 / max 65536.
    for (n, len) in [
        ("min", 4096),
        ("min-1", 4095),
        ("avg", 16384),
        ("max", 65536),
        ("max+1", 65537),
    ] {
        fs::write(root.join(format!("size-{n}")), splitmix(len as u64, len)).unwrap();
    }
    fs::write(root.join("big"), splitmix(1, 3 << 20)).unwrap();
    fs::write(root.join("text"), "hello world\n".repeat(50_000)).unwrap();
    symlink("big", root.join("link-to-big")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    fs::hard_link(root.join("text"), root.join("text-hardlink")).unwrap();
    fs::set_permissions(root.join("size-min"), fs::Permissions::from_mode(0o751)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        // Owners with no name on this system restore by number.
        std::os::unix::fs::lchown(root.join("size-avg"), Some(4321), Some(4322)).unwrap();
        std::os::unix::fs::lchown(root.join("dangling"), Some(4323), Some(4324)).unwrap();
        // A character device (like /dev/null) and a block device node.
        for (name, kind, dev) in [
            ("chardev", libc::S_IFCHR, libc::makedev(1, 3)),
            ("blockdev", libc::S_IFBLK, libc::makedev(7, 200)),
        ] {
            let c = std::ffi::CString::new(root.join(name).as_os_str().as_bytes()).unwrap();
            assert_eq!(unsafe { libc::mknod(c.as_ptr(), kind | 0o640, dev) }, 0);
        }
    }
    xattr::set(root.join("text"), "user.note", b"kept").unwrap();
}

/// The emulator, for what only it models: Glacier (GET of an archived object refused until a
/// thaw), lifecycle rules stored as given, Object Lock.
pub fn emulator_endpoint() -> String {
    s3_server("ministack")
}

/// A table dump as `pg_dump` writes it (COPY rows of ids, times, amounts, codes and text) on
/// day `day`: each day after the first updates 1% of the rows in place, deletes 0.2% and
/// appends 1.5%, all scattered by a generator seeded with `seed`.
pub fn table_dump(rows: u64, day: u64, seed: u64) -> Vec<u8> {
    use std::io::Write;
    const WORDS: [&str; 16] = [
        "shipped",
        "pending",
        "refund",
        "customer",
        "asked",
        "express",
        "warehouse",
        "invoice",
        "paid",
        "late",
        "discount",
        "fragile",
        "returned",
        "damaged",
        "priority",
        "standard",
    ];
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // The day a row last changed (0: never), or None when deleted; rows appended per day.
    let mut total = rows;
    let mut version: Vec<Option<u64>> = vec![Some(0); rows as usize];
    for d in 2..=day {
        for i in 0..total {
            let r = mix(seed ^ d << 40 ^ i) % 1000;
            if r < 10 {
                if version[i as usize].is_some() {
                    version[i as usize] = Some(d);
                }
            } else if r < 12 {
                version[i as usize] = None;
            }
        }
        let add = total * 15 / 1000;
        version.extend(std::iter::repeat_n(Some(d), add as usize));
        total += add;
    }
    let mut out = b"--\n-- PostgreSQL database dump\n--\n\nCOPY public.orders (id, ts, amount, status, note) FROM stdin;\n".to_vec();
    for (i, v) in version.iter().enumerate() {
        let Some(v) = v else { continue };
        let h = mix(seed ^ (i as u64) << 8 ^ v);
        let words: Vec<&str> = (0..3 + h % 9)
            .map(|k| WORDS[(mix(h ^ k) % 16) as usize])
            .collect();
        writeln!(
            out,
            "{i}\t{}\t{}.{:02}\t{}\t{}",
            1_700_000_000 + i as u64 * 37 + v * 86_400,
            h % 100_000,
            h % 100,
            ["NEW", "PAID", "SHIP", "DONE"][(h >> 20) as usize % 4],
            words.join(" ")
        )
        .unwrap();
    }
    out.extend_from_slice(b"\\.\n");
    out
}

/// Every file under `dir`, recursively.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A bucket of its own for one test: `TAG-PID-RANDOM`.
pub fn test_bucket(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        hex::encode(chunkbak_engine::crypter::random_bytes::<4>())
    )
}

/// `c` pointed at the S3 repository `url` with the test server's credentials and region, through
/// `endpoint` (None: the endpoint the repository string names, or none at all).
pub fn with_s3<'c>(c: &'c mut Command, endpoint: Option<&str>, url: &str) -> &'c mut Command {
    c.env("CHUNKBAK_REPOSITORY", url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL");
    match endpoint {
        Some(ep) => c.env("CHUNKBAK_S3_ENDPOINT", ep),
        None => c.env_remove("CHUNKBAK_S3_ENDPOINT"),
    }
}
