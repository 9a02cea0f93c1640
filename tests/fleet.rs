//! Running on a fleet: a profile-only configuration drives backup, forget and restore with no
//! flags; precedence is flag > environment > profile > default; configuration mistakes are one
//! line naming the file and the key; the shipped systemd units verify; the IAM policies allow
//! exactly the S3 operations the backend calls; completions and the man page come from the
//! same definitions as --help.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

mod common;

use common::*;

/// A command with no repository or password in the environment: only the configuration file
/// (found at $XDG_CONFIG_HOME/chunkbak/config.toml, as on a host) says where and how.
fn bare(e: &Env) -> Command {
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_REPOSITORY")
        .env_remove("CHUNKBAK_PASSWORD_FILE")
        .env_remove("CHUNKBAK_NO_PROGRESS");
    c
}

fn run_bare(e: &Env, args: &[&str]) -> Run {
    let mut c = bare(e);
    c.args(args);
    e.run_cmd(c)
}

fn ok_bare(e: &Env, args: &[&str]) -> Run {
    let r = run_bare(e, args);
    assert_eq!(r.code, 0, "chunkbak {args:?}:\n{}\n{}", r.out(), r.stderr);
    r
}

fn write_config(e: &Env, text: &str) {
    let dir = e.path("xdg-config/chunkbak");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.toml"), text).unwrap();
}

#[test]
fn profile_only_configuration_drives_backup_forget_and_restore() {
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"alpha").unwrap();
    fs::write(src.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    fs::write(src.join("scratch.tmp"), b"excluded by the profile").unwrap();
    let etc = e.path("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(etc.join("app.conf"), b"port = 80").unwrap();
    let target = e.path("restored");
    write_config(
        &e,
        &format!(
            r#"
[profiles.default]
repo = "{repo}"
password-file = "{pw}"
no-progress = true

[profiles.default.init]
kdf-memory-kib = 256
kdf-iterations = 1
chunk-min = 4096
chunk-avg = 16384
chunk-max = 65536

[profiles.default.backup]
paths = ["{src}", "{etc}"]
exclude = ["*.tmp"]
tag = ["nightly"]
host = "web-01"

[profiles.default.forget]
keep-last = 2

[profiles.default.restore]
target = "{target}"
"#,
            repo = e.repo.display(),
            pw = e.pw.display(),
            src = src.display(),
            etc = etc.display(),
            target = target.display(),
        ),
    );
    ok_bare(&e, &["init"]);
    // Three nightly runs, no flags.
    for night in 0..3 {
        fs::write(src.join("a.txt"), format!("alpha, night {night}")).unwrap();
        ok_bare(&e, &["backup"]);
    }
    let snaps = ok_bare(&e, &["--json", "snapshots"]);
    let snaps = snaps.json("snapshot");
    assert_eq!(snaps.len(), 3);
    for s in &snaps {
        assert_eq!(s["host"], "web-01");
        assert_eq!(s["tags"][0], "nightly");
        assert_eq!(s["paths"].as_array().unwrap().len(), 2, "{s}");
    }
    // forget with no policy applies the profile's retention.
    let f = ok_bare(&e, &["forget"]);
    assert!(f.out().contains("remove"), "{}", f.out());
    assert_eq!(
        ok_bare(&e, &["--json", "snapshots"]).json("snapshot").len(),
        2
    );
    // restore with no flags: latest, into the profile's target, without the excluded file.
    ok_bare(&e, &["restore"]);
    let got = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(got.join("a.txt")).unwrap(), b"alpha, night 2");
    assert_eq!(fs::read(got.join("sub/b.bin")).unwrap(), vec![7u8; 100_000]);
    assert!(
        !got.join("scratch.tmp").exists(),
        "the profile's exclude holds"
    );
    let got_etc = target.join(etc.strip_prefix("/").unwrap());
    assert_eq!(fs::read(got_etc.join("app.conf")).unwrap(), b"port = 80");
    assert!(ok_bare(&e, &["check"]).out().contains(" 0 problems"));
}

#[test]
fn flag_beats_environment_beats_profile_beats_default() {
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let repo = |n: &str| e.path(&format!("repo-{n}"));
    for n in ["profile", "env", "flag", "other"] {
        let mut c = bare(&e);
        c.arg("--repo")
            .arg(repo(n))
            .arg("--password-file")
            .arg(&e.pw);
        c.args(["init", "--kdf-memory-kib", "256", "--kdf-iterations", "1"]);
        assert_eq!(e.run_cmd(c).code, 0);
    }
    write_config(
        &e,
        &format!(
            "[profiles.default]\nrepo = \"{}\"\npassword-file = \"{}\"\n\
             [profiles.default.backup]\npaths = [\"{}\"]\nhost = \"from-profile\"\n\
             [profiles.other]\nrepo = \"{}\"\npassword-file = \"{}\"\n\
             [profiles.other.backup]\npaths = [\"{}\"]\n",
            repo("profile").display(),
            e.pw.display(),
            src.display(),
            repo("other").display(),
            e.pw.display(),
            src.display()
        ),
    );
    let count = |n: &str| {
        let mut c = bare(&e);
        c.arg("--repo").arg(repo(n)).args(["--json", "snapshots"]);
        e.run_cmd(c).json("snapshot").len()
    };
    // Profile.
    ok_bare(&e, &["backup"]);
    assert_eq!(count("profile"), 1);
    // Environment over profile.
    let mut c = bare(&e);
    c.env("CHUNKBAK_REPOSITORY", repo("env")).arg("backup");
    assert_eq!(e.run_cmd(c).code, 0);
    assert_eq!((count("profile"), count("env")), (1, 1));
    // Flag over environment.
    let mut c = bare(&e);
    c.env("CHUNKBAK_REPOSITORY", repo("env"))
        .arg("--repo")
        .arg(repo("flag"))
        .arg("backup");
    assert_eq!(e.run_cmd(c).code, 0);
    assert_eq!((count("env"), count("flag")), (1, 1));
    // A flag of the subcommand over the profile's; the default host where no one sets it.
    ok_bare(&e, &["backup", "--host", "from-flag"]);
    let hosts: BTreeSet<String> = {
        let mut c = bare(&e);
        c.arg("--repo")
            .arg(repo("profile"))
            .args(["--json", "snapshots"]);
        e.run_cmd(c)
            .json("snapshot")
            .iter()
            .map(|s| s["host"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        hosts,
        ["from-flag", "from-profile"].map(String::from).into()
    );
    // Another profile by flag and by variable; it sets no host, so the machine's name is used.
    ok_bare(&e, &["--profile", "other", "backup"]);
    let mut c = bare(&e);
    c.env("CHUNKBAK_PROFILE", "other").arg("backup");
    assert_eq!(e.run_cmd(c).code, 0);
    assert_eq!(count("other"), 2);
    let mut c = bare(&e);
    c.arg("--repo")
        .arg(repo("other"))
        .args(["--json", "snapshots"]);
    let other = e.run_cmd(c).json("snapshot");
    assert!(other.iter().all(|s| s["host"] != "from-profile"));
    // A config file named on the command line wins over the default location.
    let named = e.path("named.toml");
    fs::write(
        &named,
        format!(
            "[profiles.default]\nrepo = \"{}\"\npassword-file = \"{}\"\n",
            repo("flag").display(),
            e.pw.display()
        ),
    )
    .unwrap();
    let mut c = bare(&e);
    c.arg("--config").arg(&named).arg("backup").arg(&src);
    assert_eq!(e.run_cmd(c).code, 0);
    assert_eq!(count("flag"), 2);
}

/// The error is one line naming the configuration file and what is wrong in it; exit 2.
fn config_error(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, 2, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {}", lines[0]);
    }
}

#[test]
fn configuration_mistakes_are_one_line_naming_file_and_key() {
    let e = Env::new();
    let file = e.path("xdg-config/chunkbak/config.toml");
    let f = file.to_str().unwrap();
    write_config(&e, "[profiles.default.forget]\nkeep-dayly = 7\n");
    config_error(
        &run_bare(&e, &["snapshots"]),
        &[f, "keep-dayly", "chunkbak forget"],
    );
    write_config(&e, "[profiles.default]\nrepo = [\n");
    config_error(&run_bare(&e, &["snapshots"]), &[f]);
    write_config(&e, "[profiles.default.backup]\nkeep-last = 1\n");
    config_error(
        &run_bare(&e, &["backup"]),
        &[f, "keep-last", "chunkbak backup"],
    );
    write_config(&e, "[profiles.default.forget]\nkeep-last = \"many\"\n");
    config_error(
        &run_bare(&e, &["forget"]),
        &["many", "profile `default`", f],
    );
    write_config(&e, "[profiles.default]\n");
    config_error(
        &run_bare(&e, &["--profile", "nope", "snapshots"]),
        &["no profile `nope`", "default"],
    );
    config_error(
        &run_bare(&e, &["--config", "/nonexistent/c.toml", "snapshots"]),
        &["/nonexistent/c.toml", "not found"],
    );
    write_config(&e, "repo = \"/x\"\n");
    config_error(
        &run_bare(&e, &["snapshots"]),
        &["top-level key `repo`", "[profiles.NAME]"],
    );
    // With a good profile, the command line's own mistakes are named as such, and help is help.
    write_config(&e, "[profiles.default.backup]\nexclude = [\"*.tmp\"]\n");
    let r = run_bare(&e, &["backup", "--bogus"]);
    config_error(&r, &["--bogus"]);
    assert!(!r.stderr.contains("from profile"), "{}", r.stderr);
    let r = run_bare(&e, &["backup", "--help"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.out().contains("Usage"));
    // With --json, the error is a JSON line too.
    write_config(&e, "[profiles.default]\nbogus = 1\n");
    let r = run_bare(&e, &["--json", "snapshots"]);
    config_error(&r, &["bogus"]);
    assert_eq!(r.json("error")[0]["exit_code"], 2);
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped units pass `systemd-analyze verify` (where systemd is installed), with the
/// binaries they run pointed at ones that exist here.
#[test]
fn systemd_units_verify() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: skipped");
        return;
    };
    assert!(v.status.success());
    let d = tempfile::tempdir().unwrap();
    let units = repo_root().join("examples/systemd");
    let mut names = Vec::new();
    for entry in fs::read_dir(&units).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("/usr/local/bin/chunkbak", "/bin/true");
        fs::write(d.path().join(&name), text).unwrap();
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "chunkbak-backup-db.service",
            "chunkbak-backup-db.timer",
            "chunkbak-backup.service",
            "chunkbak-backup.timer",
            "chunkbak-prune.service",
            "chunkbak-prune.timer",
            "chunkbak-rds-dr.service",
            "chunkbak-rds-dr.timer"
        ]
    );
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(names.iter().map(|n| d.path().join(n)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "{err}");
}

/// `Key=value` settings of a unit's `[Service]` section, in order (a key may repeat).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Issue 22: the shipped units run as written. `systemd-analyze verify` passed while the nightly
/// unit called /usr/bin/runuser, which Debian installs as /usr/sbin/runuser: here every program
/// a unit names exists (chunkbak at the install path the docs give, the others on the unit's
/// PATH), and each `ExecStart=` line runs, with the unit's environment, against a scratch
/// repository (the config, cache and state paths moved into a scratch folder; `runuser` and
/// `pg_dump` replaced by stand-ins that do what they do, since the test cannot switch users).
#[test]
fn systemd_units_run_as_written() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"nightly").unwrap();
    let conf = e.path("config.toml");
    fs::write(
        &conf,
        format!(
            "[profiles.default]\nrepo = {repo:?}\npassword-file = {pw:?}\n\
             [profiles.default.backup]\npaths = [{src:?}]\n\
             [profiles.maintenance]\nrepo = {repo:?}\npassword-file = {pw:?}\n\
             [profiles.maintenance.forget]\nkeep-last = 3\nprune = true\n",
            repo = e.repo.to_str().unwrap(),
            pw = e.pw.to_str().unwrap(),
            src = src.to_str().unwrap()
        ),
    )
    .unwrap();
    // Stand-ins: runuser runs what follows its `--`; pg_dump prints a dump.
    let fake = e.path("fake-bin");
    fs::create_dir_all(&fake).unwrap();
    for (name, body) in [
        (
            "runuser",
            "while [ \"$1\" != -- ]; do shift; done; shift; exec \"$@\"\n",
        ),
        (
            "pg_dump",
            "echo \"COPY public.t (id) FROM stdin;\"; echo 1; echo '\\.'\n",
        ),
    ] {
        let p = fake.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_chunkbak");
    let mut ran = 0;
    for unit in [
        "chunkbak-backup.service",
        "chunkbak-backup-db.service",
        "chunkbak-prune.service",
    ] {
        let text = fs::read_to_string(repo_root().join("examples/systemd").join(unit)).unwrap();
        let settings = unit_settings(&text);
        let env: Vec<(String, String)> = settings
            .iter()
            .filter(|(k, _)| k == "Environment")
            .filter_map(|(_, v)| v.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let unit_path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into());
        for (_, line) in settings.iter().filter(|(k, _)| k == "ExecStart") {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words[0], "/usr/local/bin/chunkbak", "{unit}: {line}");
            // The programs it runs through `--` are found on the unit's PATH (pg_dump only
            // where PostgreSQL's client is installed).
            for w in words.iter().skip_while(|w| **w != "--").skip(1) {
                if *w == "runuser" {
                    assert!(
                        unit_path.split(':').any(|d| Path::new(d).join(w).exists()),
                        "{unit}: {w} not on PATH {unit_path}"
                    );
                }
            }
            let mut c = Command::new(bin);
            c.env_clear()
                .env("HOME", e.path("home"))
                .env("XDG_CACHE_HOME", e.path("xdg-cache"));
            for (k, v) in &env {
                let v = match k.as_str() {
                    "CHUNKBAK_CONFIG" => conf.to_str().unwrap().to_string(),
                    "CHUNKBAK_CACHE_DIR" => e.path("unit-cache").to_str().unwrap().to_string(),
                    "CHUNKBAK_STATE_DIR" => e.path("unit-state").to_str().unwrap().to_string(),
                    "PATH" => format!("{}:{v}", fake.display()),
                    _ => v.clone(),
                };
                c.env(k, v);
            }
            if !env.iter().any(|(k, _)| k == "PATH") {
                c.env("PATH", format!("{}:{unit_path}", fake.display()));
            }
            c.args(&words[1..]);
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "{unit}: {line}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            ran += 1;
        }
    }
    assert_eq!(ran, 4);
    // The files and the dump are both in the repository.
    let snaps = e.ok(&["--json", "snapshots"]).json("snapshot");
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let r = e.ok(&["dump", "latest:/db.sql"]);
    assert!(r.stdout.starts_with(b"COPY public.t"), "{}", r.out());
}

/// The IAM action each S3 API call of the backend needs.
fn iam_action(call: &str) -> &'static [&'static str] {
    match call {
        "put_object" | "create_multipart_upload" | "upload_part" | "complete_multipart_upload" => {
            &["s3:PutObject"]
        }
        "abort_multipart_upload" => &["s3:AbortMultipartUpload"],
        "get_object" => &["s3:GetObject"],
        // HEAD reports an object's Object Lock retention only with GetObjectRetention, and
        // a HEAD naming a version (prune's purge of hidden objects) needs GetObjectVersion.
        "head_object" => &[
            "s3:GetObject",
            "s3:GetObjectRetention",
            "s3:GetObjectVersion",
        ],
        "list_objects_v2" | "head_bucket" => &["s3:ListBucket"],
        "list_object_versions" => &["s3:ListBucketVersions"],
        "delete_object" => &["s3:DeleteObject", "s3:DeleteObjectVersion"],
        "restore_object" => &["s3:RestoreObject"],
        // init creates a missing bucket with Object Lock (which turns versioning on).
        "create_bucket" => &[
            "s3:CreateBucket",
            "s3:PutBucketObjectLockConfiguration",
            "s3:PutBucketVersioning",
        ],
        "get_object_lock_configuration" => &["s3:GetBucketObjectLockConfiguration"],
        "put_object_retention" => &["s3:PutObjectRetention"],
        "get_bucket_lifecycle_configuration" => &["s3:GetLifecycleConfiguration"],
        "put_bucket_lifecycle_configuration" => &["s3:PutLifecycleConfiguration"],
        other => panic!("the backend calls S3 `{other}`: add it to iam_action and the policies"),
    }
}

fn policy_actions(name: &str) -> BTreeSet<String> {
    let p = repo_root().join("examples/iam").join(name);
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
    assert_eq!(v["Version"], "2012-10-17");
    let mut out = BTreeSet::new();
    for st in v["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        assert!(st["Resource"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:s3:::BUCKET"));
        for a in st["Action"].as_array().unwrap() {
            out.insert(a.as_str().unwrap().to_string());
        }
    }
    out
}

/// The S3 operations the backend's code calls (`.put_object()`, ...), read from its source;
/// `copy_object` serves only the tests' simulated lifecycle transitions.
fn backend_calls() -> BTreeSet<String> {
    let mut calls = BTreeSet::new();
    for f in [
        "engine/src/backend/s3/mod.rs",
        "engine/src/backend/s3/lifecycle.rs",
        "engine/src/backend/s3/lock.rs",
    ] {
        let src = fs::read_to_string(repo_root().join(f)).unwrap();
        for line in src.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix('.') {
                if let Some(name) = rest.strip_suffix("()") {
                    let known = [
                        "object",
                        "bucket",
                        "multipart",
                        "upload_part",
                        "list_objects",
                    ];
                    if known.iter().any(|k| name.contains(k))
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                    {
                        calls.insert(name.to_string());
                    }
                }
            }
        }
    }
    calls.remove("copy_object");
    calls
}

#[test]
fn iam_policies_allow_exactly_what_the_backend_calls() {
    let calls = backend_calls();
    assert!(
        calls.contains("put_object") && calls.contains("list_objects_v2"),
        "the scan found the calls: {calls:?}"
    );
    let needed: BTreeSet<String> = calls
        .iter()
        .flat_map(|c| iam_action(c).iter().map(|s| s.to_string()))
        .collect();
    let maintenance = policy_actions("maintenance-host.json");
    let backup = policy_actions("backup-host.json");
    // The maintenance host may do everything the code does, and nothing more.
    assert_eq!(
        maintenance, needed,
        "maintenance-host.json vs the backend's calls"
    );
    // A backup host reads, adds (with the retention of an Object Lock repository) and
    // thaws; it never deletes nor changes the bucket.
    let never = [
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:PutLifecycleConfiguration",
        "s3:CreateBucket",
        "s3:PutBucketObjectLockConfiguration",
        "s3:PutBucketVersioning",
    ];
    for a in never {
        assert!(!backup.contains(a), "backup-host.json allows {a}");
    }
    // Maintenance only: lifecycle rules, init's lock check, the purge of hidden versions.
    let maintenance_only = [
        "s3:GetLifecycleConfiguration",
        "s3:GetBucketObjectLockConfiguration",
        "s3:ListBucketVersions",
        "s3:GetObjectVersion",
        "s3:GetObjectRetention",
    ];
    let backup_needs: BTreeSet<String> = needed
        .iter()
        .filter(|a| !never.contains(&a.as_str()) && !maintenance_only.contains(&a.as_str()))
        .cloned()
        .collect();
    assert_eq!(backup, backup_needs, "backup-host.json");
}

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    let e = Env::new();
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef chunkbak"),
        ("fish", "complete -c chunkbak"),
    ] {
        let r = e.ok(&["completions", shell]);
        let out = r.out();
        assert!(
            out.contains(needle),
            "{shell}: {}",
            &out[..out.len().min(300)]
        );
        for sub in ["backup", "restore", "forget", "prune"] {
            assert!(out.contains(sub), "{shell} completes {sub}");
        }
        assert!(out.contains("keep-daily"), "{shell} completes options");
    }
    // `man --dir`: a page per command, so every page the main page's SEE ALSO names exists
    // (issue 22: it named chunkbak-init(1) and others that did not).
    let dir = e.path("man1");
    e.ok(&["man", "--dir", dir.to_str().unwrap()]);
    let main = fs::read_to_string(dir.join("chunkbak.1")).unwrap();
    let named: BTreeSet<String> = main
        .split("chunkbak\\-")
        .skip(1)
        .filter_map(|rest| rest.split_once("(1)").map(|(n, _)| n.to_string()))
        .filter(|n| n.chars().all(|c| c.is_ascii_lowercase()))
        .collect();
    assert!(named.len() >= 20 && named.contains("restore"), "{named:?}");
    for n in &named {
        let page = fs::read_to_string(dir.join(format!("chunkbak-{n}.1")))
            .unwrap_or_else(|_| panic!("chunkbak-{n}.1 is named but missing"));
        assert!(page.contains(&format!(".TH chunkbak-{n}")), "{n}");
    }
    // No page has an empty section (issue 22: the single page had three).
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let page = fs::read_to_string(&path).unwrap();
        let sections: Vec<&str> = page.split("\n.SH ").skip(1).collect();
        assert!(sections.len() >= 3, "{}", path.display());
        for sec in sections {
            let (title, body) = sec.split_once('\n').unwrap_or((sec, ""));
            assert!(
                body.lines()
                    .any(|l| !l.trim().is_empty() && !l.starts_with(".SH")),
                "{}: section {title} is empty",
                path.display()
            );
        }
    }
    let man = e.ok(&["man"]).out();
    assert!(
        man.starts_with(".ie") || man.contains(".TH chunkbak"),
        "{}",
        &man[..200]
    );
    for needle in [
        "COMMAND: BACKUP",
        "keep\\-daily",
        "CHUNKBAK_REPOSITORY",
        "\\-\\-profile",
    ] {
        assert!(man.contains(needle), "man page lacks {needle}");
    }
    // When man(1) is installed, the page renders without warnings.
    if Command::new("man").arg("--version").output().is_ok() {
        let p = e.path("chunkbak.1");
        fs::write(&p, &man).unwrap();
        let o = Command::new("man")
            .arg("-l")
            .arg(&p)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Without a terminal, man may still embolden by overstriking: drop "c\bc" pairs.
        let raw = String::from_utf8_lossy(&o.stdout).replace(['\u{2010}', '\u{2212}'], "-");
        let mut page = String::new();
        for c in raw.chars() {
            if c == '\u{8}' {
                page.pop();
            } else {
                page.push(c);
            }
        }
        assert!(page.contains("keep-daily"), "{page}");
    }
}

/// One `--json` run of each command on a small local repository: every line of stdout is a
/// JSON object `{"type", "data"}`, each command prints the message types the scripting
/// contract (docs/scripting.md) lists for it, and those carry at least the pinned fields.
/// Fields are only ever added: a test that fails here means a promise was broken.
#[test]
fn json_output_of_every_command_is_json_lines_with_the_pinned_fields() {
    use serde_json::Value;
    let e = Env::new();
    let src = e.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(
        src.join("d/a.sql"),
        b"insert into t values (1);\n".repeat(500),
    )
    .unwrap();
    fs::write(src.join("b.txt"), b"bravo").unwrap();
    let s = src.to_str().unwrap();
    let t = e.path("t");
    let other = e.path("other");
    let o = other.to_str().unwrap();
    type Pins<'a> = &'a [(&'a str, &'a [&'a str])];
    let summary_backup: Pins = &[(
        "summary",
        &[
            "snapshot_id",
            "files_new",
            "files_changed",
            "files_unchanged",
            "bytes_added",
            "duration_ms",
        ],
    )];
    let pw = e.pw.to_str().unwrap();
    let tt = t.to_str().unwrap();
    let runs: Vec<(Vec<&str>, Pins)> = vec![
        (
            vec!["init", "--kdf-memory-kib", "256", "--kdf-iterations", "1"],
            &[("init", &["repository", "id"])],
        ),
        (vec!["backup", s], summary_backup),
        (vec!["backup", s], summary_backup),
        (
            vec!["snapshots"],
            &[(
                "snapshot",
                &[
                    "id", "short_id", "time", "host", "paths", "tags", "tree", "summary",
                ],
            )],
        ),
        (
            vec!["ls", "latest"],
            &[
                ("selected", &["id", "time", "host"]),
                ("node", &["path", "name", "type", "size", "mtime"]),
            ],
        ),
        (
            vec!["find", "*.sql"],
            &[(
                "match",
                &[
                    "snapshot_id",
                    "snapshot_time",
                    "host",
                    "path",
                    "type",
                    "size",
                    "mtime",
                ],
            )],
        ),
        (
            vec!["restore", "latest", "--target", tt],
            &[
                ("selected", &["id"]),
                ("summary", &["files", "bytes", "errors"]),
            ],
        ),
        (
            vec!["check", "--read-data"],
            &[
                ("check", &["snapshots", "packs", "blobs", "problems"]),
                (
                    "check_data",
                    &["packs_read", "bytes_read", "blobs_verified", "problems"],
                ),
            ],
        ),
        (
            vec!["stats"],
            &[(
                "stats",
                &[
                    "snapshots",
                    "logical_bytes",
                    "dedup_ratio",
                    "compression_ratio",
                    "storage_classes",
                    "usd_per_month",
                ],
            )],
        ),
        (vec!["key", "list"], &[("key", &["id", "current"])]),
        (
            vec![
                "--repo",
                o,
                "init",
                "--kdf-memory-kib",
                "256",
                "--kdf-iterations",
                "1",
            ],
            &[("init", &["id"])],
        ),
        (
            vec!["copy", "--to", o, "--to-password-file", pw],
            &[
                ("copy_plan", &["snapshots", "blobs", "bytes"]),
                ("copy", &["copied", "bytes_added"]),
            ],
        ),
        (
            vec!["forget", "--keep-last", "1"],
            &[
                ("forget_group", &["host", "paths", "tags", "snapshots"]),
                ("forget", &["removed"]),
            ],
        ),
        (
            vec!["prune", "--grace", "0s"],
            &[
                ("prune_plan", &["snapshots", "used_blobs"]),
                (
                    "prune",
                    &["packs_deleted", "bytes_deleted", "blobs_repacked"],
                ),
            ],
        ),
        (
            vec!["repair", "index"],
            &[("repair_index", &["packs_kept", "packs_added"])],
        ),
        (
            vec![
                "benchmark",
                "--size",
                "1MiB",
                "--rounds",
                "1",
                "--samples",
                "text",
            ],
            &[("benchmark", &[])],
        ),
    ];
    let mut seen = BTreeSet::new();
    for (i, (args, want)) in runs.iter().enumerate() {
        if i == 4 {
            // A change for diff to show.
            fs::write(src.join("b.txt"), b"bravo, changed").unwrap();
            e.ok(&["backup", s]);
            let first = e.ok(&["--json", "snapshots"]).json("snapshot")[0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            let r = e.ok(&["--json", "diff", &first]);
            let pins: Pins = &[
                (
                    "diff",
                    &["change", "kind", "path", "type", "old_size", "new_size"],
                ),
                ("summary", &["added", "removed", "modified"]),
            ];
            check_lines(&r, pins, &mut seen);
        }
        let mut full = vec!["--json"];
        full.extend(args);
        let r = e.ok(&full);
        check_lines(&r, want, &mut seen);
    }
    assert!(seen.len() >= 20, "{seen:?}");

    fn check_lines(r: &Run, pins: &[(&str, &[&str])], seen: &mut BTreeSet<String>) {
        let out = r.out();
        let mut types = BTreeSet::new();
        for line in out.lines() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            let ty = v["type"]
                .as_str()
                .unwrap_or_else(|| panic!("no type: {line}"));
            let data = v["data"]
                .as_object()
                .unwrap_or_else(|| panic!("no data object: {line}"));
            if let Some((_, fields)) = pins.iter().find(|(t, _)| *t == ty) {
                for f in *fields {
                    assert!(
                        data.contains_key(*f) || data.contains_key(&format!("{f}_b64")),
                        "`{ty}` lacks `{f}`: {line}"
                    );
                }
            }
            types.insert(ty.to_string());
        }
        for (w, _) in pins {
            assert!(types.contains(*w), "no `{w}` message in:\n{out}");
        }
        seen.extend(types);
    }
}

/// `stats`: two snapshots of the same compressible data dedup to one copy (ratio about 2), the
/// chunks compress, the bytes per class add up to the repository's files, and the bill follows
/// the price table (overridable).
#[test]
fn stats_reports_dedup_compression_and_the_monthly_bill() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("row {i} status=ok amount={}\n", i % 977).into_bytes())
        .collect();
    fs::write(src.join("a.log"), &text).unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    fs::write(src.join("b.log"), &text).unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let r = e.ok(&["--json", "stats"]);
    let st = &r.json("stats")[0];
    assert_eq!(st["snapshots"], 2);
    assert_eq!(st["files"], 3);
    let logical = st["logical_bytes"].as_u64().unwrap();
    assert_eq!(logical, 3 * text.len() as u64);
    // Three copies of one file's chunks: every chunk is stored once.
    let dedup = st["dedup_ratio"].as_f64().unwrap();
    assert!((2.9..=3.1).contains(&dedup), "dedup {dedup}");
    let comp = st["compression_ratio"].as_f64().unwrap();
    assert!(comp > 3.0, "compression {comp}");
    // Everything local is STANDARD; its bytes are the repository's files.
    let on_disk: u64 = walkdir::WalkDir::new(&e.repo)
        .into_iter()
        .map(|x| x.unwrap())
        .filter(|x| x.file_type().is_file())
        .map(|x| x.metadata().unwrap().len())
        .sum();
    let std_bytes = st["storage_classes"]["STANDARD"]["bytes"].as_u64().unwrap();
    assert_eq!(std_bytes, on_disk);
    assert_eq!(st["repository_bytes"].as_u64().unwrap(), on_disk);
    let usd = st["usd_per_month"].as_f64().unwrap();
    let want = on_disk as f64 / (1u64 << 30) as f64 * 0.023;
    assert!((usd - want).abs() < 1e-12, "{usd} vs {want}");
    // A price of our own, and one snapshot by --at.
    let r = e.ok(&["--json", "stats", "--price", "STANDARD=1", "--at", "now"]);
    let st = &r.json("stats")[0];
    assert_eq!(st["snapshots"], 1);
    let usd = st["usd_per_month"].as_f64().unwrap();
    assert!((usd - on_disk as f64 / (1u64 << 30) as f64).abs() < 1e-9);
    let bad = e.run(&["stats", "--price", "TAPE=1"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("TAPE"), "{}", bad.stderr);
    let human = e.ok(&["stats"]).out();
    assert!(
        human.contains("dedup ratio") && human.contains("STANDARD"),
        "{human}"
    );
}

/// The run's one-line summary ends stderr, and `--log-file` gets every message of the run, its
/// start and its summary, with times.
#[test]
fn one_line_summary_and_log_file() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"alpha").unwrap();
    fs::write(src.join("b"), b"bravo").unwrap();
    let log = e.path("chunkbak.log");
    let l = log.to_str().unwrap();
    let r = e.ok(&["--log-file", l, "backup", src.to_str().unwrap()]);
    let last = r.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("chunkbak backup: snapshot ")
            && last.contains("2 files (2 new, 0 changed)")
            && last.contains(" s"),
        "{last}"
    );
    // A failing run is logged with its error and exit code.
    let bad = e.run(&["--log-file", l, "restore", "nope", "--target", "/tmp/x"]);
    assert_eq!(bad.code, 2);
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("start: ") && lines[0].contains("backup"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("chunkbak backup: snapshot ")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("chunkbak: ") && l.contains("nope")),
        "{text}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("chunkbak restore: failed, exit 2"),
        "{text}"
    );
    // Every line: time, process id, message.
    for l in &lines {
        let mut parts = l.splitn(3, ' ');
        let t = parts.next().unwrap();
        assert!(t.len() == 20 && t.ends_with('Z'), "{l}");
        assert!(parts.next().unwrap().starts_with('['), "{l}");
    }
    // --quiet and --json keep the summary off stderr, but not out of the log.
    let r = e.ok(&["--log-file", l, "--json", "backup", src.to_str().unwrap()]);
    assert!(!r.stderr.contains("chunkbak backup:"), "{}", r.stderr);
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("chunkbak backup: snapshot ").count(), 2);
}

/// `backup -v` names each file it reads, new since the parent snapshot or changed; unchanged
/// files are not listed, and without `-v` nothing is. With `--json` they are `change` messages
/// (docs/scripting.md).
#[test]
fn verbose_backup_lists_new_and_changed_files() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), b"alpha").unwrap();
    fs::write(src.join("d/b"), b"bravo").unwrap();
    let s = src.to_str().unwrap();
    let listed = |r: &Run| -> Vec<String> {
        r.out()
            .lines()
            .filter(|l| l.starts_with("new ") || l.starts_with("update "))
            .map(str::to_owned)
            .collect()
    };
    let quiet = e.ok(&["backup", s]);
    assert!(listed(&quiet).is_empty(), "{}", quiet.out());
    fs::write(src.join("x"), b"x-ray").unwrap();
    let r = e.ok(&["-v", "backup", s]);
    assert_eq!(listed(&r), vec![format!("new    {s}/x")], "{}", r.out());
    fs::write(src.join("a"), b"alpha, longer now").unwrap();
    fs::write(src.join("d/c"), b"charlie").unwrap();
    let r = e.ok(&["--json", "-v", "backup", s]);
    let mut changes: Vec<(String, String)> = r
        .json("change")
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_owned(),
                c["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        vec![
            ("new".to_owned(), format!("{s}/d/c")),
            ("update".to_owned(), format!("{s}/a")),
        ]
    );
    assert_eq!(r.json("summary")[0]["files_unchanged"], 2);
    // Every data pack lost and the index repaired: the next backup reads every file again to
    // store its chunks, but none of them changed, so none is listed or counted as changed.
    for p in walkdir::WalkDir::new(e.repo.join("data"))
        .into_iter()
        .flatten()
    {
        if p.file_type().is_file() {
            fs::remove_file(p.path()).unwrap();
        }
    }
    e.ok(&["repair", "index"]);
    let r = e.ok(&["--json", "-v", "backup", s]);
    assert!(r.json("change").is_empty(), "{}", r.out());
    let sum = &r.json("summary")[0];
    assert_eq!(sum["files_unchanged"], 4, "{sum}");
    assert_eq!(sum["files_changed"], 0, "{sum}");
    assert!(sum["bytes_read"].as_u64().unwrap() > 0, "{sum}");
    e.restore_subtree_and_compare(&src);
}

/// Issue 22: on a repository several hosts share, `latest` and `--at` are this host's when it
/// has snapshots there (it restored another host's before), and an error listing the hosts
/// when it has none; on a repository of one host (a restore onto a new machine) they are that
/// host's.
#[test]
fn latest_on_a_fleet_repository_is_this_hosts() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"web1").unwrap();
    let s = src.to_str().unwrap();
    e.ok(&["backup", s, "--host", "web1"]);
    // One host, not this one: its latest.
    let r = e.ok(&["--json", "ls", "latest"]);
    assert_eq!(r.json("selected")[0]["host"], "web1", "{}", r.out());
    fs::write(src.join("f"), b"db1").unwrap();
    e.ok(&["backup", s, "--host", "db1"]);
    let r = e.run(&["ls", "latest"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("db1, web1") && r.stderr.contains("--host"),
        "{}",
        r.stderr
    );
    assert_eq!(e.run(&["ls", "--at", "now"]).code, 2);
    let r = e.ok(&["--json", "ls", "latest", "--host", "web1"]);
    assert_eq!(r.json("selected")[0]["host"], "web1");
    // This host backs up too: its own latest, though another host's is newer.
    fs::write(src.join("f"), b"mine").unwrap();
    e.ok(&["backup", s]);
    fs::write(src.join("f"), b"db1 again").unwrap();
    e.ok(&["backup", s, "--host", "db1"]);
    let r = e.ok(&["dump", &format!("latest:{s}/f")]);
    assert_eq!(r.stdout, b"mine");
    let r = e.ok(&["dump", "--host", "db1", &format!("latest:{s}/f")]);
    assert_eq!(r.stdout, b"db1 again");
    // `cat snapshot latest` and `copy latest` mean the same snapshot.
    let mine = e.ok(&["--json", "ls", "latest"]).json("selected")[0]["id"].clone();
    let r = e.ok(&["--json", "cat", "snapshot", "latest"]);
    assert_eq!(r.json("snapshot")[0]["id"], mine, "{}", r.out());
    let other = e.path("other");
    let mut init = vec!["-r", other.to_str().unwrap(), "init"];
    init.extend(INIT_SMALL);
    e.ok(&init);
    let r = e.ok(&[
        "--json",
        "copy",
        "latest",
        "--to",
        other.to_str().unwrap(),
        "--to-password-file",
        e.pw.to_str().unwrap(),
    ]);
    assert_eq!(r.json("copy_plan")[0]["snapshots"], 1, "{}", r.out());
    let copied = e.ok(&["-r", other.to_str().unwrap(), "--json", "snapshots"]);
    let hosts: Vec<_> = copied
        .json("snapshot")
        .iter()
        .map(|s| s["host"].clone())
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_ne!(hosts[0], "db1", "copy latest took another host's snapshot");
    // A host whose backups are recorded under a profile's name (random machine names) means
    // that name.
    let conf = e.path("named.toml");
    fs::write(&conf, "[profiles.default.backup]\nhost = \"db1\"\n").unwrap();
    let mut c = e.cmd();
    c.env("CHUNKBAK_CONFIG", &conf)
        .args(["dump", &format!("latest:{s}/f")]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, b"db1 again");
}

/// Issue 22: every line of docs/scripting.md's jq cookbook runs as written (with `/srv` the
/// scratch source), exits 0 and prints what it promises.
#[test]
fn jq_cookbook_runs() {
    if Command::new("jq").arg("--version").output().is_err() {
        panic!("jq is needed (CI installs it)");
    }
    let e = Env::new();
    e.init_small();
    let src = e.path("srv");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), vec![7u8; 4096]).unwrap();
    fs::write(src.join("small"), b"s").unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    let doc = fs::read_to_string(repo_root().join("docs/scripting.md")).unwrap();
    let section = doc.split("## jq cookbook").nth(1).unwrap();
    let block = section
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let lines: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(lines.len() >= 6, "{lines:?}");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_chunkbak")).parent().unwrap();
    for line in lines {
        let cmdline = line.replace("/srv", src.to_str().unwrap());
        let mut c = e.cmd();
        c.env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        );
        // The command line as an operator types it, in bash, with the test's environment.
        let mut sh = Command::new("bash");
        sh.args(["-o", "pipefail", "-c", &cmdline]);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        let r = sh.output().unwrap();
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        assert!(
            r.status.success(),
            "{line}: {}{}",
            out,
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(!out.trim().is_empty(), "{line}: printed nothing");
        if line.contains(".data.size > 1024") {
            assert!(out.contains("/big") && !out.contains("/small"), "{out}");
        }
        if line.contains("forget_group") {
            assert!(
                out.contains('T') && out.trim_end().ends_with('Z'),
                "RFC 3339: {out}"
            );
        }
    }
}

/// The `sh` blocks of the README under `heading`, joined.
fn readme_block(heading: &str) -> String {
    let doc = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = doc
        .split(&format!("## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect()
}

/// Runs `script` in bash (`set -euo pipefail`, each line traced) with `c`'s environment and
/// `bin` first in PATH; fails with what it printed.
fn run_script(c: &Command, bin: &Path, script: &str) -> String {
    let mut sh = Command::new("bash");
    sh.args(["-c", &format!("set -euxo pipefail\n{script}")]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.env(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    );
    let r = sh.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        r.status.success(),
        "README example failed:\n{script}\n---\n{text}"
    );
    text
}

/// `text` with `from` replaced by `to`; `from` must be there (a README edit that drops it
/// makes this test say so, instead of silently testing less).
fn subst(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "{from:?} is no longer in the README example"
    );
    text.replace(from, to)
}

/// Issue 22: the README's examples run as written, in bash, against scratch directories (the
/// quick start on the default repository of a scratch home; the server block against the S3
/// emulator, with stand-ins for pg_dump and psql), and do what their comments say.
#[test]
fn readme_examples_run() {
    let e = Env::new();
    let bin = e.path("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_chunkbak"), bin.join("chunkbak")).unwrap();
    let stand_in = |name: &str, body: &str| {
        let p = bin.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    stand_in(
        "pg_dump",
        "echo \"-- dump of $1\"; echo 'CREATE TABLE t (id int);'",
    );
    let got = e.path("psql-got");
    stand_in("psql", &format!("cat > '{}'", got.display()));

    // Quick start: HOME is the scratch directory, nothing configured.
    let home = e.path("");
    fs::create_dir_all(home.join("data/sub")).unwrap();
    fs::write(home.join("data/sub/notes.txt"), b"quick start").unwrap();
    let restored = e.path("restored");
    let quick = subst(
        &readme_block("Quick start"),
        "/tmp/restored",
        restored.to_str().unwrap(),
    );
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_REPOSITORY")
        .env_remove("CHUNKBAK_PASSWORD_FILE");
    let text = run_script(&c, &bin, &quick);
    assert!(text.contains("created the password file"), "{text}");
    let back = restored.join(home.join("data/sub/notes.txt").strip_prefix("/").unwrap());
    assert_eq!(fs::read(&back).unwrap(), b"quick start");

    // The server block: /etc/chunkbak, /srv and /etc are scratch directories, the bucket is on
    // the S3 emulator, and a snapshot from yesterday noon is there for `--at 'yesterday 18:00'`.
    let etc = e.path("etc");
    let srv = e.path("srv");
    fs::create_dir_all(srv.join("www")).unwrap();
    fs::create_dir_all(&etc).unwrap();
    fs::write(srv.join("www/index.html"), b"yesterday's page").unwrap();
    fs::write(srv.join("www/cache.tmp"), b"excluded").unwrap();
    fs::write(etc.join("hosts"), b"127.0.0.1 localhost").unwrap();
    let bucket = test_bucket("readme");
    let mut script = readme_block("A server, a bucket, a fleet");
    for (from, to) in [
        ("/etc/chunkbak", e.path("etc-chunkbak").to_str().unwrap()),
        ("s3:my-backups/", &format!("s3:{bucket}/")),
        ("/srv/restore", e.path("srv-restore").to_str().unwrap()),
        (" /srv", &format!(" {}", srv.display())),
        (" /etc ", &format!(" {} ", etc.display())),
    ] {
        script = subst(&script, from, to);
    }
    let endpoint = emulator_endpoint();
    let mut c = e.cmd();
    with_s3(&mut c, Some(&endpoint), "unset").env_remove("CHUNKBAK_REPOSITORY");
    c.env_remove("CHUNKBAK_PASSWORD_FILE");
    let yesterday = format!(
        "chunkbak -r s3:{bucket}/hosts/web1 --password-file {}/password backup {} --time 'yesterday 12:00'",
        e.path("etc-chunkbak").display(),
        srv.display()
    );
    // The README's init comes first; the snapshot of yesterday goes in right after it.
    let script = subst(
        &script,
        "chunkbak init ",
        &format!(
            "chunkbak init && {yesterday} && printf \"today's page\" > {}/www/index.html && true ",
            srv.display()
        ),
    );
    let text = run_script(&c, &bin, &script);
    let page = e
        .path("srv-restore")
        .join(srv.join("www/index.html").strip_prefix("/").unwrap());
    assert_eq!(fs::read(&page).unwrap(), b"yesterday's page", "{text}");
    assert_eq!(
        fs::read(srv.join("www/index.html")).unwrap(),
        b"today's page"
    );
    assert_eq!(
        fs::read_to_string(&got).unwrap(),
        "-- dump of mydb\nCREATE TABLE t (id int);\n"
    );
    assert!(text.contains("GLACIER"), "{text}");
}

/// Issue 22 part 4: `latest` with a path (`ls latest PATH`, `restore latest:PATH`) means the
/// newest snapshot taken of that path, so a database dump backed up after a folder does not
/// hide the folder; without a path, `latest` is the newest snapshot.
#[test]
fn latest_with_a_path_prefers_the_snapshots_of_that_path() {
    let e = Env::new();
    e.init_small();
    let srv = e.path("srv");
    fs::create_dir_all(srv.join("www")).unwrap();
    fs::write(srv.join("www/index.html"), b"page").unwrap();
    e.ok(&["backup", srv.to_str().unwrap()]);
    let mut c = e.cmd();
    c.args(["backup", "--stdin", "--stdin-filename", "db.sql"])
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"CREATE TABLE t;")
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    let www = format!("{}/www", srv.display());
    let r = e.ok(&["ls", "latest", &www]);
    assert!(r.out().contains("/www/index.html"), "{}", r.out());
    assert!(
        r.stderr.contains(&format!("of [{}]", srv.display())),
        "{}",
        r.stderr
    );
    let t = e.path("t");
    e.ok(&[
        "restore",
        &format!("latest:{www}"),
        "--target",
        t.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(t.join("index.html")).unwrap(), b"page");
    // Without a path, latest is the newest: the dump.
    let r = e.ok(&["ls", "latest"]);
    assert!(
        r.out().contains("db.sql") && !r.out().contains("www"),
        "{}",
        r.out()
    );
    let r = e.ok(&["dump", "latest:/db.sql"]);
    assert_eq!(r.stdout, b"CREATE TABLE t;");
    // A path no snapshot holds: the newest snapshot is searched, and the error names the path.
    let r = e.run(&["ls", "latest", "/nowhere/at/all"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("/nowhere/at/all"), "{}", r.stderr);
}

/// The IAM actions of an EBS direct API call.
fn ebs_action(call: &str) -> &'static str {
    match call {
        "list_snapshot_blocks" => "ebs:ListSnapshotBlocks",
        "list_changed_blocks" => "ebs:ListChangedBlocks",
        "get_snapshot_block" => "ebs:GetSnapshotBlock",
        "start_snapshot" => "ebs:StartSnapshot",
        "put_snapshot_block" => "ebs:PutSnapshotBlock",
        "complete_snapshot" => "ebs:CompleteSnapshot",
        other => panic!("the EBS client calls `{other}`: add it to ebs_action and the policies"),
    }
}

/// examples/iam/ebs-read.json allows exactly the EBS direct API calls a backup makes, and
/// ebs-write.json exactly those `restore --to-ebs-snapshot` makes (read from the client's
/// source: every `.name()` call on the SDK client).
#[test]
fn ebs_iam_policies_allow_exactly_what_the_client_calls() {
    let src = fs::read_to_string(repo_root().join("engine/src/ebs.rs")).unwrap();
    let mut calls = BTreeSet::new();
    for line in src.lines() {
        let t = line.trim();
        let t = t
            .strip_prefix("c.")
            .map(|r| format!(".{r}"))
            .unwrap_or(t.to_string());
        if let Some(name) = t.strip_prefix('.').and_then(|r| r.strip_suffix("()")) {
            let sdk_op = ["snapshot", "blocks"].iter().any(|k| name.contains(k))
                && !name.contains("snapshot_id")
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if sdk_op {
                calls.insert(name.to_string());
            }
        }
    }
    assert_eq!(calls.len(), 6, "{calls:?}");
    let actions = |name: &str| -> BTreeSet<String> {
        let p = repo_root().join("examples/iam").join(name);
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        let mut out = BTreeSet::new();
        for st in v["Statement"].as_array().unwrap() {
            assert_eq!(st["Effect"], "Allow");
            assert!(st["Resource"].as_str().unwrap().ends_with("::snapshot/*"));
            for a in st["Action"].as_array().unwrap() {
                out.insert(a.as_str().unwrap().to_string());
            }
        }
        out
    };
    let read: BTreeSet<String> = calls
        .iter()
        .filter(|c| c.starts_with("list_") || c.starts_with("get_"))
        .map(|c| ebs_action(c).to_string())
        .collect();
    let write: BTreeSet<String> = calls
        .iter()
        .filter(|c| !(c.starts_with("list_") || c.starts_with("get_")))
        .map(|c| ebs_action(c).to_string())
        .collect();
    assert_eq!(actions("ebs-read.json"), read);
    assert_eq!(actions("ebs-write.json"), write);
}

/// examples/iam/route53-read.json allows exactly the Route53 calls a backup makes, and
/// route53-apply.json exactly those `aws-apply route53` makes (the client's source and the
/// apply's: every `.name()` call on the SDK client).
#[test]
fn route53_iam_policies_allow_exactly_what_the_client_calls() {
    let src = fs::read_to_string(repo_root().join("engine/src/route53.rs")).unwrap();
    let mut calls = BTreeSet::new();
    for line in src.lines() {
        if let Some(name) = line
            .trim()
            .strip_prefix('.')
            .and_then(|r| r.strip_suffix("()"))
        {
            if ["list_", "change_", "create_", "delete_", "get_"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                calls.insert(name.to_string());
            }
        }
    }
    let action = |c: &str| match c {
        "list_hosted_zones" => "route53:ListHostedZones",
        "list_resource_record_sets" => "route53:ListResourceRecordSets",
        "change_resource_record_sets" => "route53:ChangeResourceRecordSets",
        other => panic!("the Route53 client calls `{other}`: add it here and to the policies"),
    };
    assert_eq!(calls.len(), 3, "{calls:?}");
    let policy = |name: &str| -> BTreeSet<String> {
        let p = repo_root().join("examples/iam").join(name);
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        v["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|st| st["Action"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    // A backup lists; the apply lists the zone's records (for its plan) and changes them.
    let read: BTreeSet<String> = ["list_hosted_zones", "list_resource_record_sets"]
        .iter()
        .map(|c| action(c).to_string())
        .collect();
    let apply: BTreeSet<String> = ["list_resource_record_sets", "change_resource_record_sets"]
        .iter()
        .map(|c| action(c).to_string())
        .collect();
    let all: BTreeSet<String> = calls.iter().map(|c| action(c).to_string()).collect();
    assert_eq!(&read | &apply, all);
    assert_eq!(policy("route53-read.json"), read);
    assert_eq!(policy("route53-apply.json"), apply);
}

/// The `elasticloadbalancing:` actions a source file calls (classic and v2 share them):
/// every `.describe_x()`, `.create_x()`, `.modify_x()` and `.configure_x()` on the SDK
/// clients, and AddTags where it creates with tags.
fn elb_actions(file: &str) -> BTreeSet<String> {
    let src = fs::read_to_string(repo_root().join(file)).unwrap();
    let mut needed = BTreeSet::new();
    for line in src.lines() {
        // `.create_rule()` on its own line, or `c.create_rule()`.
        let Some(name) = line
            .trim()
            .strip_suffix("()")
            .and_then(|r| r.rsplit('.').next())
        else {
            continue;
        };
        if !["describe_", "create_", "modify_", "configure_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let camel: String = name
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        needed.insert(format!("elasticloadbalancing:{camel}"));
    }
    if src.contains(".set_tags(") {
        needed.insert("elasticloadbalancing:AddTags".into());
    }
    needed
}

/// Every action a policy of examples/iam allows, whatever its resources.
fn policy_allows(name: &str) -> BTreeSet<String> {
    let p = repo_root().join("examples/iam").join(name);
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    v["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|st| st["Action"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// examples/iam/elb-read.json allows exactly the Elastic Load Balancing calls a backup makes,
/// and elb-apply.json exactly those `aws-apply elb` makes, read from the sources.
#[test]
fn elb_iam_policies_allow_exactly_what_the_client_calls() {
    let read = elb_actions("engine/src/elb.rs");
    assert!(read.len() >= 6, "{read:?}");
    assert!(read.iter().all(|a| a.contains(":Describe")), "{read:?}");
    assert_eq!(policy_allows("elb-read.json"), read);
    let apply = &elb_actions("engine/src/ops/awsapply/elb/mod.rs")
        | &elb_actions("engine/src/ops/awsapply/elb/create.rs");
    for a in [
        "CreateLoadBalancer",
        "CreateRule",
        "ConfigureHealthCheck",
        "AddTags",
    ] {
        assert!(
            apply.contains(&format!("elasticloadbalancing:{a}")),
            "{apply:?}"
        );
    }
    assert_eq!(policy_allows("elb-apply.json"), apply);
}
