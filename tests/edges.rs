//! Bad input at the edges, through the real binary: each case gives one clear line on stderr
//! that names what is wrong, and the exit code docs/scripting.md documents (1 error, 2 usage,
//! 10 no repository).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

mod common;

use common::*;

/// The error is one line, the last on stderr (after what the command said it was doing), and
/// names the problem.
fn one_line(r: &Run, code: i32, needles: &[&str]) {
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(r.code, code, "{}", r.stderr);
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("chunkbak: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", r.stderr);
    assert_eq!(lines.last(), Some(errors[0]), "{}", r.stderr);
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
}

#[test]
fn malformed_arguments_exit_2_with_one_line() {
    let e = Env::new();
    one_line(
        &e.run(&["backup", "--no-such-flag"]),
        2,
        &["--no-such-flag"],
    );
    one_line(&e.run(&["forget", "--keep-last", "many"]), 2, &["many"]);
    one_line(&e.run(&["frobnicate"]), 2, &["frobnicate"]);
    one_line(&e.run(&["restore", "latest"]), 2, &["--target"]);
    // With --json the error is also a JSON line on stdout.
    let r = e.run(&["--json", "backup", "--bogus"]);
    one_line(&r, 2, &["--bogus"]);
    let errs = r.json("error");
    assert_eq!(errs.len(), 1, "{}", r.out());
    assert_eq!(errs[0]["exit_code"], 2);
    // Help still prints as help, and succeeds.
    let r = e.run(&["backup", "--help"]);
    assert_eq!(r.code, 0);
    assert!(r.out().contains("Usage"), "{}", r.out());
}

/// Issue 22: the mistakes operators make, each with its exit code (2: how chunkbak was called;
/// 1, 10, 12: what it found) and the first words of its one line. Usage mistakes found after
/// parsing (options that exclude each other, a value of the wrong form) exit 2 like clap's own,
/// and clap's suggestion and the command's own help are kept in the line.
#[test]
fn the_mistake_table() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/f"), b"f").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let s = src.to_str().unwrap().to_string();
    let t = e.path("t");
    let t = t.to_str().unwrap().to_string();
    let dir = format!("latest:{s}/dir");
    let missing = e.path("nowhere");
    let table: Vec<(Vec<&str>, i32, &[&str])> = vec![
        (
            vec!["forget", "--keep-dayly", "3"],
            2,
            &["--keep-dayly", "'--keep-daily'", "chunkbak forget --help"],
        ),
        (vec!["snapshot"], 2, &["'snapshots'", "chunkbak --help"]),
        (
            vec!["lifecycle", "apply", "--bogus"],
            2,
            &["--bogus", "chunkbak lifecycle apply --help"],
        ),
        (
            vec!["-r", "backup", "snapshots", "--bogus"],
            2,
            &["--bogus", "(see `chunkbak snapshots --help`)"],
        ),
        (vec!["restore", "latest"], 2, &["--target"]),
        (
            vec!["restore", "latest", "--at", "2026-01-01", "--target", &t],
            2,
            &["either a SNAPSHOT or --at"],
        ),
        (
            vec!["restore", "--at", "tomorrowish", "--target", &t],
            2,
            &["tomorrowish"],
        ),
        (vec!["forget"], 2, &["no policy given"]),
        (vec!["prune", "--grace", "banana"], 2, &["banana"]),
        (
            vec!["--clock-skew", "soon", "snapshots"],
            2,
            &["--clock-skew", "soon"],
        ),
        (
            vec!["--s3-archive", "sometimes", "snapshots"],
            2,
            &["sometimes"],
        ),
        (vec!["check", "--read-data-subset", "0/10"], 2, &["0/10"]),
        (vec!["backup", "--exclude", "[", &s], 2, &["pattern"]),
        (vec!["dump", &dir], 2, &["dir"]),
        (vec!["cat", "bogus"], 2, &["cannot cat"]),
        (vec!["lifecycle", "show"], 2, &["s3:BUCKET"]),
        (vec!["diff"], 2, &["give the snapshots to compare"]),
        (
            vec!["backup", "--stdin-from-command"],
            2,
            &["--stdin-from-command"],
        ),
        (
            vec!["restore", "deadbeef", "--target", &t],
            1,
            &["deadbeef"],
        ),
        (
            vec!["-r", missing.to_str().unwrap(), "snapshots"],
            10,
            &["nowhere"],
        ),
        (
            vec!["backup", missing.to_str().unwrap()],
            2,
            &["backup source", "nowhere", "no such file"],
        ),
    ];
    assert!(table.len() >= 12);
    for (args, code, needles) in &table {
        let r = e.run(args);
        assert_eq!(r.code, *code, "{args:?}: {}", r.stderr);
        let first = r
            .stderr
            .lines()
            .find(|l| l.starts_with("chunkbak: "))
            .unwrap_or_else(|| panic!("{args:?}: no error line in {}", r.stderr));
        for n in *needles {
            assert!(first.contains(n), "{args:?}: {n:?} not in {first:?}");
        }
    }
    // A wrong password: 12.
    let wrong = e.path("wrong-pw");
    fs::write(&wrong, "not it\n").unwrap();
    let mut c = e.cmd();
    c.arg("--password-file").arg(&wrong).arg("snapshots");
    assert_eq!(e.run_cmd(c).code, 12);
}

#[test]
fn repository_path_that_is_a_file() {
    let e = Env::new();
    let f = e.path("a-file");
    fs::write(&f, b"not a repository").unwrap();
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &f).arg("snapshots");
    one_line(&e.run_cmd(c), 2, &[f.to_str().unwrap(), "is a file"]);
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &f).args([
        "init",
        "--kdf-memory-kib",
        "256",
        "--kdf-iterations",
        "1",
    ]);
    one_line(&e.run_cmd(c), 2, &[f.to_str().unwrap(), "is a file"]);
    assert_eq!(
        fs::read(&f).unwrap(),
        b"not a repository",
        "the file is left alone"
    );
}

#[test]
fn password_missing_or_empty() {
    let e = Env::new();
    e.init_small();
    let missing = e.path("no-such-password-file");
    let mut c = e.cmd();
    c.env("CHUNKBAK_PASSWORD_FILE", &missing).arg("snapshots");
    one_line(
        &e.run_cmd(c),
        1,
        &["password file", missing.to_str().unwrap(), "No such file"],
    );
    let empty = e.path("empty-password");
    fs::write(&empty, "\n").unwrap();
    let mut c = e.cmd();
    c.env("CHUNKBAK_PASSWORD_FILE", &empty).arg("snapshots");
    one_line(&e.run_cmd(c), 1, &[empty.to_str().unwrap(), "is empty"]);
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_PASSWORD_FILE")
        .env("CHUNKBAK_PASSWORD", "")
        .arg("snapshots");
    one_line(&e.run_cmd(c), 1, &["CHUNKBAK_PASSWORD", "empty"]);
    // None at all.
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_PASSWORD_FILE").arg("snapshots");
    one_line(&e.run_cmd(c), 1, &["no password"]);
}

#[test]
fn restore_target_that_is_a_file_or_not_writable() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);

    let file = e.path("target-file");
    fs::write(&file, b"keep me").unwrap();
    one_line(
        &e.run(&["restore", "latest", "--target", file.to_str().unwrap()]),
        2,
        &[file.to_str().unwrap(), "not a folder"],
    );
    assert_eq!(fs::read(&file).unwrap(), b"keep me");

    let ro = e.path("read-only");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let mut c = e.cmd();
    // root writes everywhere: run as nobody.
    if unsafe { libc::geteuid() } == 0 {
        c = e.as_nobody();
    }
    c.args(["restore", "latest", "--target"]).arg(&ro);
    one_line(
        &e.run_cmd(c),
        1,
        &["cannot write into restore target", ro.to_str().unwrap()],
    );
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
}

/// Paths that are not UTF-8 work wherever a path is given: what to back up, the restore
/// target, ID:PATH, `ls PATH` and `--include`.
#[test]
fn non_utf8_paths_in_commands() {
    let e = Env::new();
    e.init_small();
    let src = e
        .path("src-\u{e9}")
        .with_file_name(OsStr::from_bytes(b"src-\xe9\xff"));
    fs::create_dir(&src).unwrap();
    let name = OsStr::from_bytes(b"caf\xe9");
    fs::write(src.join(name), b"latin-1 name").unwrap();
    fs::write(src.join("plain"), b"plain name").unwrap();
    let mut c = e.cmd();
    c.arg("backup").arg(&src);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // ls of the directory by its non-UTF-8 path.
    let mut c = e.cmd();
    c.args(["--json", "ls", "latest"]).arg(&src);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let nodes = r.json("node");
    assert!(nodes.iter().any(|n| n["name"] == "plain"), "{}", r.out());
    assert!(
        nodes.iter().any(|n| n.get("name_b64").is_some()),
        "the non-UTF-8 name is listed (base64): {}",
        r.out()
    );

    // Restore ID:PATH into a non-UTF-8 target.
    let target = e.dir.path().join(OsStr::from_bytes(b"out-\xfe"));
    let mut spec = b"latest:".to_vec();
    spec.extend_from_slice(src.as_os_str().as_bytes());
    let mut c = e.cmd();
    c.arg("restore")
        .arg(OsStr::from_bytes(&spec))
        .arg("--target")
        .arg(&target);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::read(target.join(name)).unwrap(), b"latin-1 name");
    assert_eq!(fs::read(target.join("plain")).unwrap(), b"plain name");

    // --include of the non-UTF-8 file only.
    let only = e.path("only");
    let mut c = e.cmd();
    c.args(["restore", "latest", "--target"])
        .arg(&only)
        .arg("--include")
        .arg(src.join(name));
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = only.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(got.join(name)).unwrap(), b"latin-1 name");
    assert!(!got.join("plain").exists());

    // A repository at a non-UTF-8 path, named by the variable and by --repo.
    let repo = e.dir.path().join(OsStr::from_bytes(b"repo-\xff"));
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &repo).args([
        "init",
        "--kdf-memory-kib",
        "256",
        "--kdf-iterations",
        "1",
    ]);
    assert_eq!(e.run_cmd(c).code, 0);
    let mut c = e.cmd();
    c.arg("--repo").arg(&repo).arg("backup").arg(&src);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut c = e.cmd();
    c.arg("--repo").arg(&repo).args(["--json", "snapshots"]);
    assert_eq!(e.run_cmd(c).json("snapshot").len(), 1);

    // A snapshot id that is not text: an error (1) that names the snapshot argument.
    let mut c = e.cmd();
    c.arg("ls").arg(OsStr::from_bytes(b"\xff\xfe:/x"));
    one_line(&e.run_cmd(c), 1, &["snapshot"]);

    // dump of the non-UTF-8 file, as ID:PATH and as SNAPSHOT PATH.
    let file = src.join(name);
    let mut spec = b"latest:".to_vec();
    spec.extend_from_slice(file.as_os_str().as_bytes());
    let mut c = e.cmd();
    c.arg("dump").arg(OsStr::from_bytes(&spec));
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, b"latin-1 name");
    let mut c = e.cmd();
    c.args(["dump", "latest"]).arg(&file);
    assert_eq!(e.run_cmd(c).stdout, b"latin-1 name");

    // A second snapshot changes the non-UTF-8 file: find and diff carry its path as bytes.
    fs::write(src.join(name), b"latin-1 name, changed").unwrap();
    let mut c = e.cmd();
    c.arg("backup").arg(&src);
    assert_eq!(e.run_cmd(c).code, 0);
    let want_b64 = base64_of(file.as_os_str().as_bytes());
    let r = e.ok(&["--json", "find", "caf*"]);
    let matches = r.json("match");
    assert_eq!(matches.len(), 2, "{}", r.out());
    assert!(matches.iter().all(|m| m["path_b64"] == want_b64.as_str()));
    let first = e.ok(&["--json", "snapshots"]).json("snapshot")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = e.ok(&["--json", "diff", &first]);
    let diffs = r.json("diff");
    assert_eq!(diffs.len(), 1, "{}", r.out());
    assert_eq!(diffs[0]["change"], "M");
    assert_eq!(diffs[0]["path_b64"], want_b64.as_str());
    let r = e.ok(&["diff", &first]);
    assert!(r.out().contains("caf\u{fffd}"), "{}", r.out());

    // forget --path with the non-UTF-8 source path selects its snapshots; check and prune
    // work on the repository afterwards.
    let mut c = e.cmd();
    c.args(["--json", "forget", "--keep-last", "1", "--path"])
        .arg(&src);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(e.ok(&["--json", "snapshots"]).json("snapshot").len(), 1);
    e.ok(&["prune", "--grace", "0s"]);
    assert!(e
        .ok(&["check", "--read-data"])
        .out()
        .contains(" 0 problems"));

    // A password file at a non-UTF-8 path.
    let pw = e.dir.path().join(OsStr::from_bytes(b"pw-\xff"));
    fs::copy(&e.pw, &pw).unwrap();
    let mut c = e.cmd();
    c.env("CHUNKBAK_PASSWORD_FILE", &pw).arg("snapshots");
    assert_eq!(e.run_cmd(c).code, 0);
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_PASSWORD_FILE")
        .arg("--password-file")
        .arg(&pw)
        .arg("check");
    assert_eq!(e.run_cmd(c).code, 0);
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Times that cannot select a snapshot: before the first one, malformed, impossible dates.
/// Each is one line naming the time, exit 1.
#[test]
fn impossible_at_times() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let t = e.path("t");
    let target = t.to_str().unwrap();
    // A time before every snapshot is an error (1); one that is no time at all a usage
    // mistake (2).
    for (at, code) in [
        ("2001-01-01", 1),
        ("not a time", 2),
        ("2026-02-30", 2),
        ("2026-13-01 10:00", 2),
        ("99 parsecs ago", 2),
    ] {
        let r = e.run(&["restore", "--at", at, "--target", target]);
        one_line(&r, code, &[at]);
        assert!(!t.exists(), "{at}: nothing is written");
        one_line(&e.run(&["ls", "--at", at]), code, &[at]);
    }
}

/// The commands `non_utf8_paths_in_commands` leaves out, on a repository at a non-UTF-8 path:
/// stats, cat, key add (a new password file at a non-UTF-8 path, which then opens the
/// repository), repair index, warmup, and init --from and copy --to with the other repository
/// at a non-UTF-8 path.
#[test]
fn non_utf8_paths_in_the_other_commands() {
    let e = Env::new();
    let repo = e.dir.path().join(OsStr::from_bytes(b"repo-\xfe"));
    let run = |args: &[&OsStr]| {
        let mut c = e.cmd();
        c.env("CHUNKBAK_REPOSITORY", &repo).args(args);
        e.run_cmd(c)
    };
    let ok = |args: &[&OsStr]| {
        let r = run(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        r
    };
    let os = |s: &str| OsStr::new(s).to_owned();
    let small = ["--kdf-memory-kib", "256", "--kdf-iterations", "1"].map(os);
    let mut init = vec![os("init")];
    init.extend(small.iter().cloned());
    ok(&init.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    let src = e.dir.path().join(OsStr::from_bytes(b"src-\xe9"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name").unwrap();
    ok(&[OsStr::new("backup"), src.as_os_str()]);

    let stats = ok(&[OsStr::new("--json"), OsStr::new("stats")]);
    assert_eq!(stats.json("stats")[0]["files"], 1, "{}", stats.out());
    let config = ok(&[OsStr::new("cat"), OsStr::new("config")]);
    assert!(config.out().contains("\"id\""), "{}", config.out());

    let pw2 = e.dir.path().join(OsStr::from_bytes(b"pw2-\xff"));
    fs::write(&pw2, "second password\n").unwrap();
    ok(&[
        OsStr::new("key"),
        OsStr::new("add"),
        OsStr::new("--new-password-file"),
        pw2.as_os_str(),
    ]);
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &repo)
        .env("CHUNKBAK_PASSWORD_FILE", &pw2)
        .arg("snapshots");
    assert_eq!(e.run_cmd(c).code, 0);

    ok(&[OsStr::new("repair"), OsStr::new("index")]);
    let mut spec = b"latest:".to_vec();
    spec.extend_from_slice(src.as_os_str().as_bytes());
    ok(&[OsStr::new("warmup"), OsStr::from_bytes(&spec)]);

    let to = e.dir.path().join(OsStr::from_bytes(b"copy-\xfd"));
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &to)
        .arg("init")
        .args(&small)
        .args(["--copy-chunker-params", "--from"])
        .arg(&repo)
        .arg("--from-password-file")
        .arg(&e.pw);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ok(&[
        OsStr::new("--json"),
        OsStr::new("copy"),
        OsStr::new("--to"),
        to.as_os_str(),
        OsStr::new("--to-password-file"),
        e.pw.as_os_str(),
    ]);
    assert_eq!(r.json("copy")[0]["copied"], 1, "{}", r.out());
    let mut c = e.cmd();
    c.env("CHUNKBAK_REPOSITORY", &to)
        .args(["check", "--read-data"]);
    let r = e.run_cmd(c);
    assert!(r.out().contains(" 0 problems"), "{}{}", r.out(), r.stderr);
}

/// `chunkbak ARGS` on a pseudo-terminal (util-linux `script`), `typed` on its keyboard, with
/// the environment of `e` but no password source.
fn on_terminal(e: &Env, args: &[&str], typed: &str) -> (i32, String) {
    let base = e.cmd();
    let mut c = std::process::Command::new("script");
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env_remove("CHUNKBAK_PASSWORD_FILE")
        .env_remove("CHUNKBAK_PASSWORD")
        .env_remove("CHUNKBAK_PASSWORD_COMMAND");
    let mut line = base.get_program().to_string_lossy().into_owned();
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let mut child = c
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script runs");
    use std::io::Write;
    // Typed slowly enough for each prompt to have turned echo off first.
    let mut stdin = child.stdin.take().unwrap();
    for l in typed.lines() {
        std::thread::sleep(std::time::Duration::from_millis(1000));
        stdin.write_all(format!("{l}\n").as_bytes()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// First runs as issue 22 part 10 asks: a password prompt on a terminal (twice at init, never
/// echoed), the default password file serving `-r` that names the default repository, and a
/// missing source said before the default repository is created.
#[test]
fn first_run_prompts_on_a_terminal_and_creates_nothing_for_a_missing_source() {
    let e = Env::new();
    let repo = e.path("r");
    let r = repo.to_str().unwrap();
    let mut init = vec!["-r", r, "init"];
    init.extend(FAST_KDF);
    // Two different answers: nothing is created.
    let (code, text) = on_terminal(&e, &init, "first\nsecond\n");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("new password for "), "{text}");
    assert!(text.contains("the two passwords differ"), "{text}");
    assert!(!repo.join("config").exists());
    let (code, text) = on_terminal(&e, &init, "s3cret-pw\ns3cret-pw\n");
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains("s3cret-pw"),
        "the password was echoed: {text}"
    );
    // The password typed opens it; a wrong one is refused with 12.
    let (code, text) = on_terminal(&e, &["-r", r, "snapshots"], "s3cret-pw\n");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("password for "), "{text}");
    let (code, text) = on_terminal(&e, &["-r", r, "snapshots"], "wrong\n");
    assert_eq!(code, 12, "{text}");
    // Without a terminal: the error names the ways to give one.
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_PASSWORD_FILE")
        .args(["-r", r, "snapshots"]);
    let out = run_command(c);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--password-file"), "{}", out.stderr);

    // The default repository: a missing source is said first, and nothing is created.
    let default_repo = e.path("xdg-data").join("chunkbak/repo");
    let pwfile = e.path("xdg-config").join("chunkbak/password");
    let bare = || {
        let mut c = e.cmd();
        c.env_remove("CHUNKBAK_REPOSITORY")
            .env_remove("CHUNKBAK_PASSWORD_FILE");
        c
    };
    let mut c = bare();
    c.args(["backup", e.path("nowhere").to_str().unwrap()]);
    let out = run_command(c);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("nowhere"), "{}", out.stderr);
    assert!(!default_repo.exists() && !pwfile.exists());
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let mut c = bare();
    c.args(["backup", src.to_str().unwrap()]);
    let out = run_command(c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(pwfile.exists() && default_repo.join("config").exists());
    // `-r` naming the default repository (by another spelling) uses its password file.
    let other_spelling = e.path("xdg-data").join("chunkbak/../chunkbak/repo");
    let mut c = bare();
    c.args(["-r", other_spelling.to_str().unwrap(), "snapshots"]);
    let out = run_command(c);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.out().contains(src.to_str().unwrap()), "{}", out.out());
}

/// Backup and restore count files alike (every name of a hard-linked file is a file; symlinks
/// are not files), and say "1 file", not "1 files".
#[test]
fn backup_and_restore_count_files_alike() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("one"), b"1").unwrap();
    fs::hard_link(src.join("one"), src.join("d/again")).unwrap();
    fs::write(src.join("two"), b"2").unwrap();
    std::os::unix::fs::symlink("one", src.join("link")).unwrap();
    let b = e.ok(&["backup", src.to_str().unwrap()]);
    assert!(
        b.stderr.contains(", 3 files (3 new, 0 changed)"),
        "{}",
        b.stderr
    );
    let t = e.path("t");
    let r = e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert!(
        r.out()
            .contains("Restored 3 files (2 B; 1 of them a hard link)")
            && r.out().contains(", 1 symlink, 0 special files"),
        "{}",
        r.out()
    );
    assert!(r.stderr.contains(", 3 files (2 B written"), "{}", r.stderr);
    // Again into the same target: every name already right, the hard link too.
    let again = e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert!(
        again.out().contains("Restored 0 files (0 B)")
            && again.out().contains("; 3 files already right"),
        "{}",
        again.out()
    );
    // A dry run counts as the run would.
    let dry = e.ok(&[
        "restore",
        "latest",
        "--target",
        e.path("t3").to_str().unwrap(),
        "-n",
    ]);
    assert!(dry.out().contains("Would write 3 files"), "{}", dry.out());
    let j = e.ok(&[
        "--json",
        "restore",
        "latest",
        "--target",
        e.path("t2").to_str().unwrap(),
    ]);
    let d = &j.json("summary")[0];
    assert_eq!(
        (d["hardlinks"].as_u64(), d["symlinks"].as_u64()),
        (Some(1), Some(1)),
        "{d}"
    );
    fs::remove_file(src.join("two")).unwrap();
    fs::remove_file(src.join("d/again")).unwrap();
    let b = e.ok(&["backup", src.to_str().unwrap()]);
    assert!(
        b.stderr.contains(", 1 file (0 new, 1 changed)"),
        "{}",
        b.stderr
    );
    let f = e.ok(&["find", "two"]);
    assert!(
        f.stderr
            .contains("1 path matched, 1 time in all, 2 snapshots searched"),
        "{}",
        f.stderr
    );
}

/// A repository whose index is over the memory budget keeps it in a run file on disk: with
/// `--memory 64KiB` (an index of more than 455 blobs goes to disk), a forced re-backup of
/// 1,500 files finds every chunk through it and adds no file data, a restore and `check
/// --read-data` read through it. The file is kept for the next run, which reads no index
/// file it covers (they are damaged, and the restore still works). With the index folder made
/// unusable, the small budget fails naming it.
#[test]
fn an_index_over_the_memory_budget_is_kept_on_disk() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..1500u64 {
        let data = splitmix(i, 300 + (i as usize % 700));
        fs::write(src.join(format!("f{i:04}")), data).unwrap();
    }
    let s = src.to_str().unwrap();
    e.ok(&["backup", s]);
    let small = |args: &[&str]| {
        let mut c = e.cmd();
        c.env("CHUNKBAK_MEMORY", "64KiB").args(args);
        e.run_cmd(c)
    };
    let restore = |to: &std::path::Path| {
        small(&[
            "restore",
            &format!("latest:{s}"),
            "--target",
            to.to_str().unwrap(),
        ])
    };
    let r = small(&["--json", "backup", "--force", s]);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    let sum = &r.json("summary")[0];
    assert!(
        sum["bytes_added"].as_u64().unwrap() < ANCESTOR_TREES,
        "every chunk is found through the index on disk: {sum}"
    );
    let t = e.path("restored");
    let r = restore(&t);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    e.compare(&src, &t, &[]);
    let r = small(&["check", "--read-data"]);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    assert!(r.out().contains(" 0 problems"), "{}", r.out());
    // Kept for the next run, per repository: the run file, its pack table, pack ids and delta
    // bases, and their companion; no temporary folder or file.
    let index_dir = e.path("xdg-cache/chunkbak/index");
    let repos: Vec<_> = fs::read_dir(&index_dir).unwrap().flatten().collect();
    assert_eq!(repos.len(), 1, "{repos:?}");
    let mut kept: Vec<String> = fs::read_dir(repos[0].path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 5, "{kept:?}");
    for (k, ext) in kept
        .iter()
        .zip([".bases", ".meta", ".packs", ".pids", ".run"])
    {
        assert!(k.starts_with("run-") && k.ends_with(ext), "{kept:?}");
    }

    // A block of a kept file damaged after it was opened and checked: the run that reads it
    // stops, naming the file, and the next run builds the kept files again instead of
    // reading the damage again.
    for (i, ext) in [".packs", ".run"].into_iter().enumerate() {
        let name = kept.iter().find(|k| k.ends_with(ext)).unwrap();
        let f = repos[0].path().join(name);
        let mut b = fs::read(&f).unwrap();
        // The first record of the first block (the header is 64 bytes).
        b[64 + 40] ^= 0xff;
        b[64 + 10] ^= 0xff;
        fs::write(&f, b).unwrap();
        let t = e.path(&format!("damaged-{i}"));
        let r = restore(&t);
        assert_ne!(r.code, 0, "{}\n{}", r.out(), r.stderr);
        assert!(
            r.stderr.contains(name.as_str()) && r.stderr.contains("damaged"),
            "{}",
            r.stderr
        );
        let t = e.path(&format!("rebuilt-{i}"));
        let r = restore(&t);
        assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
        e.compare(&src, &t, &[]);
    }

    fs::remove_dir_all(&index_dir).unwrap();
    fs::write(&index_dir, "not a folder").unwrap();
    let r = small(&["check"]);
    assert_eq!(r.code, 1, "{}\n{}", r.out(), r.stderr);
    assert!(
        r.stderr.contains("xdg-cache/chunkbak/index"),
        "{}",
        r.stderr
    );
    // Back to a folder: the next small run builds and keeps the file again.
    fs::remove_file(&index_dir).unwrap();
    let r = small(&["check"]);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);

    // The next run reads no index file the kept one covers: with every index file damaged, a
    // restore still finds every chunk through it, while an index loaded into memory cannot.
    let mut index_files = 0;
    for f in fs::read_dir(e.repo.join("index")).unwrap().flatten() {
        let mut b = fs::read(f.path()).unwrap();
        let n = b.len();
        b[n / 2] ^= 0xff;
        fs::write(f.path(), b).unwrap();
        index_files += 1;
    }
    assert!(index_files > 0);
    let t2 = e.path("restored-again");
    let r = restore(&t2);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    e.compare(&src, &t2, &[]);
    // Without the cache folder, the index is read from the damaged files.
    let r = e.run(&["--no-cache", "ls", "latest"]);
    assert_ne!(r.code, 0, "an index loaded from the files reads the damage");
}

/// A prune makes the index kept on disk stale: the next run must not use it (a backup
/// deduplicating against pruned chunks would lose data). Files backed up, their snapshot
/// forgotten and pruned at once, then backed up again with a small budget: the kept file is
/// replaced, the data is stored again and restores, and `check --read-data` finds nothing
/// missing. (The prune's rewritten index supersedes the covered file and lists more blobs than
/// the budget: either makes the next run build again; `engine/src/index/tests.rs` tests the
/// covered-file rule.)
#[test]
fn a_prune_retires_the_index_kept_on_disk() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..800u64 {
        fs::write(src.join(format!("f{i:04}")), splitmix(i + 7, 500)).unwrap();
    }
    let s = src.to_str().unwrap();
    let small = |args: &[&str]| {
        let mut c = e.cmd();
        c.env("CHUNKBAK_MEMORY", "64KiB").args(args);
        let r = e.run_cmd(c);
        assert_eq!(r.code, 0, "{args:?}: {}\n{}", r.out(), r.stderr);
        r
    };
    let first = small(&["--json", "backup", s]).json("summary")[0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Builds the run file and keeps it (the index now holds 800 data blobs).
    small(&["check"]);
    let repo_dir = fs::read_dir(e.path("xdg-cache/chunkbak/index"))
        .unwrap()
        .flatten()
        .next()
        .expect("a kept index")
        .path();
    let kept = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".run"))
            .collect();
        v.sort();
        v
    };
    let before = kept(&repo_dir);
    assert_eq!(before.len(), 1, "{before:?}");
    // Another source's backup, then forget the first snapshot and prune what it alone used.
    let other = e.path("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("x"), splitmix(99_999, 700)).unwrap();
    small(&["backup", other.to_str().unwrap()]);
    small(&[
        "forget",
        &first,
        "--prune",
        "--grace",
        "0s",
        "--max-unused",
        "0%",
    ]);
    let r = small(&["--json", "backup", s]);
    let sum = &r.json("summary")[0];
    assert!(
        sum["bytes_added"].as_u64().unwrap() > 800 * 100,
        "the pruned chunks are stored again: {sum}"
    );
    let after = kept(&repo_dir);
    assert_ne!(after, before, "the stale run file was replaced");
    let t = e.path("restored");
    small(&[
        "restore",
        &format!("latest:{s}"),
        "--target",
        t.to_str().unwrap(),
    ]);
    e.compare(&src, &t, &[]);
    let r = small(&["check", "--read-data"]);
    assert!(r.out().contains(" 0 problems"), "{}", r.out());
}

/// prune plans alike with the index in memory and above `--memory` (claims and used blobs
/// sorted on disk): after a forget; after a repack, which leaves blobs in two packs (disputed
/// claims, judged by the packs' headers) and marks in their grace time; and after a prune run
/// on disk, which leaves nothing to do, a clean `check --read-data` and a restorable snapshot.
#[test]
fn prune_plans_alike_with_the_index_in_memory_and_on_disk() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let run = |memory: Option<&str>, args: &[&str]| {
        let mut c = e.cmd();
        // In memory: a budget well above the index (also under CHUNKBAK_TEST_MEMORY).
        c.env("CHUNKBAK_MEMORY", memory.unwrap_or("1GiB"));
        c.args(args);
        let r = e.run_cmd(c);
        assert_eq!(r.code, 0, "{args:?}: {}\n{}", r.out(), r.stderr);
        r
    };
    // In memory: without the cache, which may hold a run file kept by a run on disk (a load
    // uses one whatever the budget).
    let plan = |memory: Option<&str>, extra: &[&str]| {
        let mut args = vec!["--json", "prune", "--dry-run", "--max-unused", "0%"];
        if memory.is_none() {
            args.insert(1, "--no-cache");
        }
        args.extend(extra);
        let mut p = run(memory, &args).json("prune_plan")[0].clone();
        let on_disk = p
            .as_object_mut()
            .unwrap()
            .remove("planned_on_disk")
            .unwrap();
        assert_eq!(on_disk, memory.is_some(), "{p}");
        // When marks become due counts from each run's clock.
        let later = p.as_object_mut().unwrap().remove("frees_later").unwrap();
        (p, later.is_null())
    };
    let alike = |when: &str, extra: &[&str]| {
        let (a, a_later) = plan(None, extra);
        let (b, b_later) = plan(Some("64KiB"), extra);
        assert_eq!(a, b, "{when}: in memory, then on disk");
        assert_eq!(a_later, b_later, "{when}");
        a
    };
    // Three generations of 600 files (more blobs than 64KiB keeps in memory, 455), a third
    // of them changed each time.
    let mut snaps = Vec::new();
    for generation in 0..3u64 {
        for i in 0..600u64 {
            let seed = if i % 3 == generation {
                1000 * generation + i
            } else {
                i
            };
            fs::write(src.join(format!("f{i:03}")), splitmix(seed, 900)).unwrap();
        }
        snaps.push(e.backup_id(&src));
    }
    run(None, &["forget", &snaps[0]]);
    let p = alike("after a forget", &[]);
    assert!(p["mark"]["packs"].as_u64().unwrap() + p["repack"]["packs"].as_u64().unwrap() > 0);
    run(None, &["prune", "--grace", "1h", "--max-unused", "0%"]);
    run(None, &["forget", &snaps[1]]);
    let p = alike("after a second forget", &[]);
    assert!(p["repack"]["packs"].as_u64().unwrap() > 0, "{p}");
    run(None, &["prune", "--grace", "1h", "--max-unused", "0%"]);
    let p = alike("after a repack", &[]);
    assert!(
        p["claim_reads"].as_u64().unwrap() > 0,
        "repacked blobs are in two packs: {p}"
    );
    assert!(p["waiting"]["packs"].as_u64().unwrap() > 0, "{p}");
    alike("deleting at once", &["--now"]);
    run(Some("64KiB"), &["prune", "--now", "--max-unused", "0%"]);
    // The prune kept the index it wrote: later loads build nothing (the same file, inode).
    let kept = || -> Vec<(std::path::PathBuf, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<_> = fs::read_dir(e.path("xdg-cache/chunkbak/index"))
            .unwrap()
            .flatten()
            .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|x| x == "run"))
            .map(|p| (p.clone(), fs::metadata(&p).unwrap().ino()))
            .collect();
        v.sort();
        v
    };
    let after_prune = kept();
    assert_eq!(after_prune.len(), 1, "{after_prune:?}");
    let p = alike("after the prune on disk", &[]);
    run(Some("64KiB"), &["check"]);
    assert_eq!(
        kept(),
        after_prune,
        "the next loads used the file the prune kept"
    );
    for k in ["mark", "delete", "repack", "waiting", "orphans"] {
        assert_eq!(p[k]["packs"], 0, "{k}: {p}");
    }
    let r = run(None, &["--json", "check", "--read-data"]);
    let problems = r.json("check")[0]["problems"].as_array().unwrap().len();
    assert_eq!(problems, 0, "{}", r.out());
    e.restore_subtree_and_compare(&src);
}

/// `check` with the index above `--memory` (chunks sorted, then looked up in one pass over the
/// run file) counts and finds what it finds in memory: a clean repository has no problem, and
/// a deleted data pack gives the same problems, each naming the snapshot, the file and the
/// chunk.
#[test]
fn check_finds_alike_with_the_index_in_memory_and_on_disk() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..600u64 {
        fs::write(src.join(format!("f{i:03}")), splitmix(i + 31, 900)).unwrap();
    }
    e.backup_id(&src);
    fs::write(src.join("f000"), splitmix(5, 3000)).unwrap();
    e.backup_id(&src);
    let check = |memory: Option<&str>| {
        let mut c = e.cmd();
        match memory {
            Some(m) => c.env("CHUNKBAK_MEMORY", m),
            None => c.env("CHUNKBAK_MEMORY", "1GiB").arg("--no-cache"),
        };
        c.args(["--json", "check"]);
        let r = e.run_cmd(c);
        let mut v = r.json("check")[0].clone();
        let mut problems: Vec<String> = v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        problems.sort();
        v.as_object_mut().unwrap().remove("problems");
        (r.code, v, problems)
    };
    let (code, clean, problems) = check(Some("64KiB"));
    assert_eq!((code, &problems), (0, &Vec::<String>::new()), "{clean}");
    assert_eq!(check(None), (0, clean.clone(), problems));
    assert!(clean["blobs"].as_u64().unwrap() > 600, "{clean}");
    // A data pack goes: its chunks are missing in both snapshots.
    let pack = fs::read_dir(e.repo.join("data"))
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    fs::remove_file(&pack).unwrap();
    let on_disk = check(Some("64KiB"));
    assert_ne!(on_disk.0, 0);
    assert!(!on_disk.2.is_empty());
    assert!(
        on_disk
            .2
            .iter()
            .all(|p| p.contains("/f") && p.contains(": chunk ")
                || p.contains(&pack.file_name().unwrap().to_string_lossy().to_string())),
        "{:#?}",
        on_disk.2
    );
    assert_eq!(on_disk, check(None));
}
