//! Issue 20: restores that hold against a hostile repository (a tree crafted by a host that
//! holds the password) and a hostile local user (racing a root restore). Each test plays the
//! attack through the real binary and fails on the code before the defence.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::format::tree::{Content, Node, NodeKind, Timespec};
use chunkbak_engine::Repository;
use common::*;

fn env() -> Env {
    let e = Env::new();
    fs::write(&e.pw, b"hostile").unwrap();
    e
}

/// A node of kind `kind` named `name`, owned by root, mode 0644 (0755 for directories).
fn node(name: &str, kind: NodeKind) -> Node {
    let mode = match kind {
        NodeKind::Dir => 0o040755,
        NodeKind::Symlink => 0o120777,
        _ => 0o100644,
    };
    Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime: Timespec {
            secs: 1_700_000_000,
            nanos: 0,
        },
        ctime: Timespec {
            secs: 1_700_000_000,
            nanos: 0,
        },
        size: 0,
        inode: 0,
        device: 0,
        nlink: 1,
        rdev: 0,
        link_target: Vec::new(),
        xattrs: Vec::new(),
        content: Content::Chunks(Vec::new()),
        subtree: None,
    }
}

/// Writes a snapshot whose root directory lists `nodes` as given (in this order, whatever
/// the format says), as a host holding the password could; returns the tree's id and the
/// snapshot's.
fn forge(e: &Env, nodes: Vec<Node>, file_data: &[u8]) -> (String, String) {
    let repo = Repository::open(Arc::new(LocalBackend::new(&e.repo)), b"hostile").unwrap();
    repo.load_index().unwrap();
    let saver = repo.blob_saver().unwrap();
    let (chunk, _) = saver
        .save(chunkbak_engine::format::pack::BlobKind::Data, file_data)
        .unwrap();
    let nodes: Vec<Node> = nodes
        .into_iter()
        .map(|mut n| {
            if n.kind == NodeKind::File {
                n.content = Content::Chunks(vec![chunk]);
                n.size = file_data.len() as u64;
            }
            n
        })
        .collect();
    let tree = saver
        .save(
            chunkbak_engine::format::pack::BlobKind::Tree,
            &chunkbak_engine::format::tree::TreeBlob::Dir(nodes).encode(),
        )
        .unwrap()
        .0;
    repo.write_index(saver.finish().unwrap()).unwrap();
    let snap = Snapshot {
        time: Timespec {
            secs: jiff::Timestamp::now().as_second(),
            nanos: 0,
        },
        tree,
        paths: vec![b"/forged".to_vec()],
        host: "forger".into(),
        username: "root".into(),
        ..Snapshot::default()
    };
    (
        tree.to_string(),
        repo.write_snapshot(&snap).unwrap().to_hex(),
    )
}

#[test]
fn a_tree_listing_a_symlink_then_a_file_of_the_same_name_writes_nothing_outside_the_target() {
    let e = env();
    e.init_small();
    let outside = e.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, b"precious").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let mut link = node("x", NodeKind::Symlink);
    link.link_target = victim.to_str().unwrap().as_bytes().to_vec();
    let mut dlink = node("d", NodeKind::Symlink);
    dlink.link_target = outside.to_str().unwrap().as_bytes().to_vec();
    let (tree, snap) = forge(
        &e,
        vec![
            dlink,
            node("d", NodeKind::Dir),
            link,
            node("x", NodeKind::File),
        ],
        b"written by the attacker",
    );
    let target = e.path("target");
    let r = e.run(&["restore", &snap, "--target", target.to_str().unwrap()]);
    assert_ne!(r.code, 0, "a crafted tree restored without error");
    assert!(r.stderr.contains(&tree[..16]), "{}", r.stderr);
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    // dump and ls refuse it too; check names the tree.
    for args in [vec!["ls", &snap], vec!["dump", &snap, "/x"]] {
        let r = e.run(&args);
        assert_ne!(r.code, 0, "{args:?}");
        assert!(r.stderr.contains(&tree[..16]), "{args:?}: {}", r.stderr);
    }
    let r = e.run(&["check"]);
    assert_ne!(r.code, 0);
    assert!(
        format!("{}{}", r.out(), r.stderr).contains(&tree[..16]),
        "{}{}",
        r.out(),
        r.stderr
    );
}

/// Names that are not plain file names (`..`, `.`, empty, with `/`, absolute) in a tree that
/// is otherwise in order: each is refused by name, the rest restores, nothing lands outside.
#[test]
fn a_tree_with_dot_dot_and_absolute_names_writes_nothing_outside_the_target() {
    let e = env();
    e.init_small();
    let outside = e.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"precious").unwrap();
    let mut dotdot = node("..", NodeKind::File);
    dotdot.name = b"..".to_vec();
    let abs = node("/etc-x", NodeKind::File);
    let slash = node("a/../../outside/victim", NodeKind::File);
    let mut empty = node("", NodeKind::File);
    empty.name = Vec::new();
    let mut nodes = vec![empty, abs, dotdot, slash, node("ok", NodeKind::File)];
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let (_, snap) = forge(&e, nodes, b"written by the attacker");
    let target = e.path("target");
    let r = e.run(&["restore", &snap, "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("refusing to restore an entry named"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read(target.join("ok")).unwrap(),
        b"written by the attacker"
    );
    assert_eq!(walk_files(&target).len(), 1, "{:?}", walk_files(&target));
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"precious");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!e.dir.path().join("etc-x").exists());
}

/// A local user who owns a directory of the target swaps each of its entries for a symlink
/// to a root-owned file, over and over, while root restores into it: nothing outside the
/// target is written, chmodded or chowned.
#[test]
fn a_local_user_racing_a_root_restore_never_reaches_outside_the_target() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (a root restore raced by another user)");
        return;
    }
    let e = env();
    e.init_small();
    let src = e.path("src");
    let files = 64;
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..files {
        fs::write(
            src.join(format!("d/f{i:02}")),
            format!("snapshot file {i}\n"),
        )
        .unwrap();
    }
    // Every folder on the way is searchable by the attacker, and `d` is theirs in the
    // snapshot too (the restore gives it back to them).
    for p in [e.dir.path(), src.as_path(), src.join("d").as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::chown(src.join("d"), Some(65534), Some(65534)).unwrap();
    let id = e.backup_id(&src);
    let outside = e.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    let victim = outside.join("victim");
    fs::write(&victim, b"root's secret\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let before = fs::metadata(&victim).unwrap();

    // Root restores the attacker's folder `d` into its place, a folder they own (as root
    // restores /home/alice for alice).
    let d = e.path("home-of-attacker");
    fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    let target = d.clone();
    let spec = format!("{id}:{}", src.join("d").display());
    let racer = r#"
import os, sys, time
d, victim, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
end = time.time() + float(sys.argv[4])
swaps = 0
while time.time() < end:
    for i in range(n):
        tmp = os.path.join(d, ".t%d" % i)
        try:
            os.symlink(victim, tmp)
        except FileExistsError:
            pass
        try:
            os.rename(tmp, os.path.join(d, "f%02d" % i))
            swaps += 1
        except OSError:
            pass
print(swaps)
"#;
    let script = e.path("racer.py");
    fs::write(&script, racer).unwrap();
    let mut swaps = 0u64;
    for round in 0..6 {
        let child = std::process::Command::new("python3")
            .arg(&script)
            .arg(&d)
            .arg(&victim)
            .arg(files.to_string())
            .arg("1.5")
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        // Restores while the racer runs: some files may be reported as not restored (the
        // racer replaced them), none may be written elsewhere.
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(1400) {
            let _ = e.run(&["restore", &spec, "--target", target.to_str().unwrap()]);
        }
        let out = child.wait_with_output().unwrap();
        swaps += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        let now = fs::metadata(&victim).unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"root's secret\n",
            "round {round}: the victim was written"
        );
        assert_eq!(
            now.mode(),
            before.mode(),
            "round {round}: chmod reached the victim"
        );
        assert_eq!(
            (now.uid(), now.gid()),
            (before.uid(), before.gid()),
            "round {round}: chown reached the victim"
        );
        assert_eq!(
            now.mtime(),
            before.mtime(),
            "round {round}: times reached the victim"
        );
    }
    assert!(swaps > 1000, "the racer swapped only {swaps} times");
    // Without the racer the restore completes, every file as in the snapshot.
    e.ok(&["restore", &spec, "--target", target.to_str().unwrap()]);
    for i in 0..files {
        let f = d.join(format!("f{i:02}"));
        assert!(
            fs::symlink_metadata(&f).unwrap().is_file(),
            "{}",
            f.display()
        );
        assert_eq!(
            fs::read(&f).unwrap(),
            format!("snapshot file {i}\n").as_bytes()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Local hygiene (issue 20 part 4)

fn mode(p: &std::path::Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn local_repositories_and_caches_are_private_and_tightened_when_loose() {
    let e = env();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), splitmix(3, 100_000)).unwrap();
    e.backup_id(&src);
    assert_eq!(mode(&e.repo), 0o700);
    for dir in ["keys", "data", "index", "snapshots"] {
        assert_eq!(mode(&e.repo.join(dir)), 0o700, "{dir}");
    }
    let mut files = 0;
    for f in walk_files(&e.repo) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        files += 1;
    }
    assert!(files >= 5, "{files} files");
    // Loosened by someone: the next command makes them private again, and says so.
    fs::set_permissions(&e.repo, fs::Permissions::from_mode(0o755)).unwrap();
    let cache = e.path("xdg-cache").join("chunkbak");
    fs::create_dir_all(&cache).unwrap();
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
    let r = e.ok(&["snapshots"]);
    assert!(
        r.stderr.contains("repository folder") && r.stderr.contains("made private"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("cache folder"), "{}", r.stderr);
    assert_eq!(mode(&e.repo), 0o700);
    assert_eq!(mode(&cache), 0o700);
    let r = e.ok(&["snapshots"]);
    assert!(!r.stderr.contains("made private"), "{}", r.stderr);
}

#[test]
fn children_never_see_a_password_and_the_log_file_is_private_without_password_sources() {
    let e = env();
    e.init_small();
    // A dump command's environment ends up in the backup: no password variable in it.
    let mut c = e.cmd();
    c.env("CHUNKBAK_FROM_PASSWORD", "from-secret")
        .env("CHUNKBAK_NEW_PASSWORD", "new-secret")
        .args([
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "env.txt",
            "--",
            "env",
        ]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dumped = e.ok(&["dump", "latest", "/env.txt"]).stdout;
    let text = String::from_utf8_lossy(&dumped);
    assert!(
        text.contains("XDG_STATE_HOME="),
        "the command's environment: {text}"
    );
    assert!(!text.contains("PASSWORD"), "{text}");
    assert!(!text.contains("secret"), "{text}");

    // A password command sees none either; the log file is 0600 and does not repeat the
    // command.
    let seen = e.path("seen-env");
    let log = e.path("chunkbak.log");
    let cmd = format!("env > {}; cat {}", seen.display(), e.pw.display());
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_PASSWORD_FILE")
        .env("CHUNKBAK_NEW_PASSWORD", "new-secret")
        .args([
            "--log-file",
            log.to_str().unwrap(),
            "--password-command",
            &cmd,
            "snapshots",
        ]);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let env_seen = fs::read_to_string(&seen).unwrap();
    assert!(env_seen.contains("HOME="), "{env_seen}");
    assert!(!env_seen.contains("PASSWORD"), "{env_seen}");
    assert_eq!(mode(&log), 0o600);
    let logged = fs::read_to_string(&log).unwrap();
    assert!(logged.contains("--password-command <redacted>"), "{logged}");
    assert!(!logged.contains(&cmd), "{logged}");
    // A failing command is named by its option, not by its text.
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_PASSWORD_FILE").args([
        "--log-file",
        log.to_str().unwrap(),
        "--password-command",
        "echo hunter2-cmd >/dev/null; exit 3",
        "snapshots",
    ]);
    let r = e.run_cmd(c);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--password-command"), "{}", r.stderr);
    assert!(!fs::read_to_string(&log).unwrap().contains("hunter2"));
}

#[test]
fn cat_config_redacts_the_dedup_secret_and_terminal_output_escapes_control_characters() {
    let e = env();
    e.init_small();
    let secret = {
        let repo = Repository::open(Arc::new(LocalBackend::new(&e.repo)), b"hostile").unwrap();
        hex::encode(repo.config().dedup_secret)
    };
    let text = e.ok(&["cat", "config"]).out();
    assert!(
        text.contains("\"chunker\"") && text.contains("redacted"),
        "{text}"
    );
    assert!(!text.contains(&secret), "{text}");
    // New repositories use the keyed gear table (format-spec 5).
    assert!(text.contains("\"gear\": \"keyed table\""), "{text}");
    let v = &e.ok(&["--json", "cat", "config"]).json("config")[0];
    assert_eq!(v["dedup_secret"], "<redacted: --show-secrets>");
    let v = &e
        .ok(&["--json", "cat", "config", "--show-secrets"])
        .json("config")[0];
    assert_eq!(v["dedup_secret"], secret.as_str());

    // A file name with an escape sequence (set the terminal's title) and a bell.
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let evil = "t\u{1b}]0;owned\u{7}x";
    fs::write(src.join(evil), b"x").unwrap();
    e.backup_id(&src);
    // Piped: the name as it is; --json: raw too (JSON escapes it).
    let piped = e.ok(&["ls", "latest"]).out();
    assert!(piped.contains(evil), "{piped:?}");
    let j = e.ok(&["--json", "ls", "latest"]).json("node");
    assert!(j.iter().any(|n| n["name"] == evil), "{j:?}");
    // On a terminal (a pty from script(1)): escaped.
    let mut c = std::process::Command::new("script");
    let inner = e.cmd();
    let mut shell = String::new();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            shell.push_str(&format!(
                "{}='{}' ",
                k.to_string_lossy(),
                v.to_string_lossy()
            ));
        }
    }
    shell.push_str(&format!(
        "{} ls latest",
        inner.get_program().to_string_lossy()
    ));
    c.args(["-qec", &format!("env {shell}"), "/dev/null"]);
    let o = c.output().unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(tty.contains("t\\x1b]0;owned\\x07x"), "{tty:?}");
    assert!(!tty.contains('\u{1b}'), "{tty:?}");
}

/// A newest snapshot that cannot be read is never silently replaced by the one before it.
#[test]
fn a_damaged_latest_snapshot_is_an_error_unless_skip_damaged() {
    let e = env();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"first").unwrap();
    let old = e.backup_id(&src);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(src.join("f"), b"second").unwrap();
    let new = e.backup_id(&src);
    let snap = e.repo.join("snapshots").join(&new);
    let mut bytes = fs::read(&snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::remove_file(&snap).unwrap();
    fs::write(&snap, &bytes).unwrap();

    let t = e.path("t");
    for args in [
        vec!["restore", "latest", "--target", t.to_str().unwrap()],
        vec!["restore", &new[..8], "--target", t.to_str().unwrap()],
        vec!["restore", "--at", "now", "--target", t.to_str().unwrap()],
        vec!["ls", "latest"],
    ] {
        let r = e.run(&args);
        assert_ne!(r.code, 0, "{args:?}");
        assert!(r.stderr.contains(&new), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("cannot be read"),
            "{args:?}: {}",
            r.stderr
        );
        if args[1] != &new[..8] {
            assert!(
                r.stderr.contains("--skip-damaged"),
                "{args:?}: {}",
                r.stderr
            );
        }
    }
    assert!(!t.exists(), "nothing is restored in its place");
    // Asked for: the newest readable one, said so.
    let r = e.ok(&[
        "--skip-damaged",
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
    ]);
    assert!(
        r.stderr.contains(&old[..8]) && r.stderr.contains(&new),
        "{}",
        r.stderr
    );
    let restored = walk_files(&t);
    assert_eq!(fs::read(&restored[0]).unwrap(), b"first");
    // An id stays an id: never substituted.
    let r = e.run(&[
        "--skip-damaged",
        "restore",
        &new[..8],
        "--target",
        t.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
}

// ---------------------------------------------------------------------------------------------
// Bounded decoding (issue 20 part 3)

/// Peak RSS of the largest child process waited for so far, in MiB.
fn children_peak_mib() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as u64 / 1024
}

#[test]
fn a_tree_nested_100000_deep_is_a_clean_error_for_every_reader() {
    let e = env();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"genuine").unwrap();
    let genuine = e.backup_id(&src);
    let deep = {
        let repo = Repository::open(Arc::new(LocalBackend::new(&e.repo)), b"hostile").unwrap();
        repo.load_index().unwrap();
        let saver = repo.blob_saver().unwrap();
        let mut tree = saver
            .save(
                chunkbak_engine::format::pack::BlobKind::Tree,
                &chunkbak_engine::format::tree::TreeBlob::Dir(Vec::new()).encode(),
            )
            .unwrap()
            .0;
        for _ in 0..100_000 {
            let mut n = node("a", NodeKind::Dir);
            n.subtree = Some(tree);
            tree = saver
                .save(
                    chunkbak_engine::format::pack::BlobKind::Tree,
                    &chunkbak_engine::format::tree::TreeBlob::Dir(vec![n]).encode(),
                )
                .unwrap()
                .0;
        }
        repo.write_index(saver.finish().unwrap()).unwrap();
        let snap = Snapshot {
            time: Timespec {
                secs: jiff::Timestamp::now().as_second() + 1,
                nanos: 0,
            },
            tree,
            paths: vec![b"/a".to_vec()],
            host: "forger".into(),
            ..Snapshot::default()
        };
        repo.write_snapshot(&snap).unwrap().to_hex()
    };
    let t = e.path("t");
    for args in [
        vec!["ls", &deep],
        vec!["restore", &deep, "--target", t.to_str().unwrap()],
        vec!["dump", "--archive", "tar", &deep, "/"],
        vec!["find", "--snapshot", &deep, "zzz"],
        vec!["diff", &genuine, &deep],
        vec!["stats", &deep],
        vec!["check"],
        // With the index on disk: prune walks a depth at a time, and stops at the limit.
        vec!["--memory", "64KiB", "check"],
        vec!["--memory", "64KiB", "prune", "--dry-run"],
    ] {
        let r = e.run(&args);
        assert!(
            r.code == 1 || r.code == 3,
            "{args:?}: exit {} (a crash?): {}",
            r.code,
            r.stderr
        );
        assert!(
            r.stderr.contains("deeper than 1024 levels")
                || r.out().contains("deeper than 1024 levels"),
            "{args:?}: {}{}",
            r.out(),
            r.stderr
        );
    }
    assert!(
        children_peak_mib() < 300,
        "peak RSS {} MiB",
        children_peak_mib()
    );
}

#[test]
fn a_forged_plaintext_length_is_refused_before_anything_is_allocated() {
    let e = env();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), splitmix(5, 30_000)).unwrap();
    e.backup_id(&src);
    // Another host with the password rewrites the index: the file's chunk claims 900 MiB.
    {
        let repo = Repository::open(Arc::new(LocalBackend::new(&e.repo)), b"hostile").unwrap();
        let files = repo.read_all_index_files().unwrap();
        let mut packs = Vec::new();
        for (_, f) in &files {
            packs.extend(f.packs.iter().cloned());
        }
        for p in &mut packs {
            for b in &mut p.blobs {
                if b.kind == chunkbak_engine::format::pack::BlobKind::Data {
                    b.raw_len = 900 << 20;
                }
            }
        }
        let forged = chunkbak_engine::format::index::IndexFile {
            supersedes: files.iter().map(|(id, _)| *id).collect(),
            packs,
        };
        repo.write_object(
            chunkbak_engine::backend::FileKind::Index,
            chunkbak_engine::format::ObjectKind::Index,
            &forged.encode(),
        )
        .unwrap();
    }
    let t = e.path("t");
    let r = e.run(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("above the limit of a data blob"),
        "{}",
        r.stderr
    );
    let r = e.run(&["dump", "latest", &format!("{}/f", src.display())]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("above the limit"), "{}", r.stderr);
    assert!(
        children_peak_mib() < 300,
        "peak RSS {} MiB",
        children_peak_mib()
    );
}

// ---------------------------------------------------------------------------------------------
// Sources through symlinks (issue 20 part 5)

/// A source path that is a symlink is followed (`find -H`); a symlink on the way to a source is
/// resolved; the summary counts what the snapshot holds and a restore brings each back.
#[test]
fn sources_given_through_symlinks_are_backed_up_as_what_they_point_to() {
    let e = env();
    e.init_small();
    let base = e.path("s");
    fs::create_dir_all(base.join("real/sub")).unwrap();
    fs::write(base.join("real/f.txt"), b"hello").unwrap();
    fs::write(base.join("real/sub/g"), b"deeper").unwrap();
    for d in ["t1", "t2", "t3"] {
        fs::create_dir_all(base.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("../real", base.join("t1/alias")).unwrap();
    std::os::unix::fs::symlink("../real", base.join("t2/lnk")).unwrap();
    std::os::unix::fs::symlink("../real/f.txt", base.join("t3/flink")).unwrap();
    type Case<'a> = (&'a str, u64, &'a [(&'a str, &'a [u8])]);
    let cases: [Case; 3] = [
        (
            "t1/alias",
            2,
            &[("t1/alias/f.txt", b"hello"), ("t1/alias/sub/g", b"deeper")],
        ),
        ("t2/lnk/f.txt", 1, &[("t2/lnk/f.txt", b"hello")]),
        ("t3/flink", 1, &[("t3/flink", b"hello")]),
    ];
    for (given, files, expect) in cases {
        let p = base.join(given);
        let r = e.ok(&["--json", "backup", p.to_str().unwrap()]);
        let sum = &r.json("summary")[0];
        assert_eq!(sum["files_new"], files, "{given}: {sum}");
        let id = sum["snapshot_id"].as_str().unwrap().to_string();
        let t = e.path(&format!("restored-{}", given.replace('/', "-")));
        e.ok(&["restore", &id, "--target", t.to_str().unwrap()]);
        let root = t.join(base.strip_prefix("/").unwrap());
        for (rel, content) in expect {
            let f = root.join(rel);
            let m = fs::symlink_metadata(&f)
                .unwrap_or_else(|err| panic!("{given}: {} missing: {err}", f.display()));
            assert!(m.is_file(), "{given}: {} is not a file", f.display());
            assert_eq!(fs::read(&f).unwrap(), *content, "{given}: {rel}");
        }
        assert_eq!(
            walk_files(&t).len(),
            expect.len(),
            "{given}: {:?}",
            walk_files(&t)
        );
        // The snapshot records the path as given.
        let snaps = e.ok(&["--json", "snapshots"]).json("snapshot");
        let s = snaps.iter().find(|s| s["id"] == id.as_str()).unwrap();
        assert_eq!(s["paths"][0], p.to_str().unwrap(), "{s}");
    }
}

/// `--no-special` and `--no-xattrs` restore an untrusted snapshot without its set-id bits,
/// device nodes, FIFOs, capabilities or extended attributes; without them, root gets them all
/// back as `tar -p` would.
#[test]
fn no_special_and_no_xattrs_leave_out_what_an_untrusted_snapshot_could_plant() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (device nodes, capabilities)");
        return;
    }
    let e = env();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let suid = src.join("suid-tool");
    fs::write(&suid, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    xattr::set(&suid, "user.note", b"kept").unwrap();
    let fifo = std::ffi::CString::new(src.join("fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let dev = std::ffi::CString::new(src.join("null").to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
        0
    );
    let id = e.backup_id(&src);
    let root_of = |t: &std::path::Path| t.join(src.strip_prefix("/").unwrap());

    let full = e.path("full");
    e.ok(&["restore", &id, "--target", full.to_str().unwrap()]);
    let f = root_of(&full);
    assert_eq!(
        fs::symlink_metadata(f.join("suid-tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert!(fs::symlink_metadata(f.join("fifo")).is_ok());
    assert!(fs::symlink_metadata(f.join("null")).is_ok());
    assert_eq!(
        xattr::get(f.join("suid-tool"), "user.note").unwrap(),
        Some(b"kept".to_vec())
    );

    let safe = e.path("safe");
    e.ok(&[
        "restore",
        &id,
        "--target",
        safe.to_str().unwrap(),
        "--no-special",
        "--no-xattrs",
    ]);
    let s = root_of(&safe);
    assert_eq!(fs::read(s.join("suid-tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::symlink_metadata(s.join("suid-tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert!(fs::symlink_metadata(s.join("fifo")).is_err());
    assert!(fs::symlink_metadata(s.join("null")).is_err());
    assert_eq!(xattr::get(s.join("suid-tool"), "user.note").unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// What an observer of requests learns (issue 20 part 2)

/// Restores and dumps from S3 read whole aligned 1 MiB windows (or up to a pack's end): no
/// request's length is one blob's.
#[test]
fn remote_reads_never_request_a_single_blobs_length() {
    let e = env();
    let ep = s3_endpoint();
    let proxy = common::proxy::FaultProxy::start(&ep);
    let url = format!("s3:{}/r", test_bucket("hostile"));
    let s3 = |args: &[&str]| {
        let mut c = e.cmd();
        with_s3(&mut c, Some(&proxy.endpoint), &url)
            .env("CHUNKBAK_NO_CACHE", "1")
            .args(args);
        let r = e.run_cmd(c);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        r
    };
    let mut init = vec!["init"];
    init.extend(INIT_SMALL);
    init.retain(|a| *a != "--data-pack-size" && *a != "262144");
    init.extend(["--data-pack-size", "4194304"]);
    s3(&init);
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), splitmix(21, 12 << 20)).unwrap();
    fs::write(src.join("small"), splitmix(22, 20_000)).unwrap();
    s3(&["backup", src.to_str().unwrap()]);
    let sizes: std::collections::HashMap<String, u64> = {
        let mut cfg = chunkbak_engine::backend::s3::S3Config::parse(&url).unwrap();
        cfg.endpoint = Some(ep.clone());
        cfg.static_credentials = Some(("test".into(), "test".into()));
        let b = chunkbak_engine::backend::s3::S3Backend::new(cfg).unwrap();
        use chunkbak_engine::backend::Backend;
        b.list(chunkbak_engine::backend::FileKind::Data)
            .unwrap()
            .into_iter()
            .collect()
    };
    let before = proxy.requests().len();
    let t = e.path("t");
    s3(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let t2 = e.path("t2");
    let small = format!("{}/small", src.display());
    s3(&[
        "restore",
        "latest",
        "--target",
        t2.to_str().unwrap(),
        "--include",
        &small,
    ]);
    let dumped = s3(&["dump", "latest", &small]).stdout;
    assert_eq!(dumped, splitmix(22, 20_000));
    let restored = fs::read(t.join(src.strip_prefix("/").unwrap()).join("big")).unwrap();
    assert!(restored == splitmix(21, 12 << 20));

    let mut data_gets = 0;
    for line in &proxy.requests()[before..] {
        let mut it = line.split_whitespace();
        let (method, target) = (it.next().unwrap(), it.next().unwrap());
        if method != "GET" || !target.contains("/r/data/") {
            continue;
        }
        let name = target
            .split('?')
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        let size = sizes[name];
        let range = line
            .rsplit_once("bytes=")
            .and_then(|x| x.1.split_whitespace().next())
            .unwrap_or("");
        data_gets += 1;
        if range.is_empty() {
            continue; // the whole pack
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(a % (1 << 20), 0, "{line}: not window-aligned");
        assert!(
            (b + 1) % (1 << 20) == 0 || b + 1 == size,
            "{line}: ends inside a window (pack of {size} bytes)"
        );
    }
    assert!(data_gets >= 4, "{data_gets} data reads");
}

// ---------------------------------------------------------------------------------------------
// Packs only superseded index files name

/// A file that supersedes the others leaves their packs out of the index in force (another
/// host with the password wrote it, or a prune was killed before it deleted the files it
/// replaced): while a superseded file names them, they are no orphans, and not even
/// `prune --now` deletes them as such. The same planned in memory and on disk.
#[test]
fn packs_only_superseded_files_name_are_no_orphans() {
    let e = env();
    e.init_small();
    let kept = e.path("kept");
    fs::create_dir_all(&kept).unwrap();
    // Enough blobs (some 300: above 227) for a plan on disk within 64 KiB.
    fs::write(kept.join("f"), splitmix(71, 6_000_000)).unwrap();
    e.backup_id(&kept);
    let gone = e.path("gone");
    fs::create_dir_all(&gone).unwrap();
    fs::write(gone.join("g"), splitmix(72, 1_000_000)).unwrap();
    let open = || Repository::open(Arc::new(LocalBackend::new(&e.repo)), b"hostile").unwrap();
    let first: Vec<_> = open().read_all_index_files().unwrap();
    let second = e.backup_id(&gone);
    e.ok(&["forget", &second]);
    // The forged file: the first backup's packs, superseding every file.
    let repo = open();
    let files = repo.read_all_index_files().unwrap();
    let only_superseded: usize = files
        .iter()
        .filter(|(id, _)| !first.iter().any(|(f, _)| f == id))
        .map(|(_, f)| f.packs.len())
        .sum();
    assert!(only_superseded > 0, "the second backup wrote packs");
    let forged = chunkbak_engine::format::index::IndexFile {
        supersedes: files.iter().map(|(id, _)| *id).collect(),
        packs: first.iter().flat_map(|(_, f)| f.packs.clone()).collect(),
    };
    repo.write_object(
        chunkbak_engine::backend::FileKind::Index,
        chunkbak_engine::format::ObjectKind::Index,
        &forged.encode(),
    )
    .unwrap();
    let packs = || walk_files(&e.repo.join("data")).len() + walk_files(&e.repo.join("tree")).len();
    let before = packs();
    // Planned in memory, and on disk (a budget the index is above).
    for (memory, on_disk) in [("1GiB", false), ("64KiB", true)] {
        let r = e.ok(&["--json", "--memory", memory, "prune", "--now", "--dry-run"]);
        let plan = &r.json("prune_plan")[0];
        assert_eq!(plan["planned_on_disk"], on_disk, "{plan}");
        assert_eq!(plan["orphans"]["packs"], 0, "{plan}");
        assert_eq!(plan["orphans_young"]["packs"], 0, "{plan}");
        assert_eq!(
            plan["total"]["packs"].as_u64().unwrap() as usize,
            before - only_superseded,
            "{plan}"
        );
    }
    e.ok(&["prune", "--now"]);
    assert_eq!(
        packs(),
        before,
        "a pack a superseded file names was deleted"
    );
    let t = e.path("t");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    e.compare(&kept, &t.join(kept.strip_prefix("/").unwrap()), &[]);
}
