//! Issue 19: a compromised fleet host (its S3 credentials and the repository password) cannot
//! destroy or silently corrupt the fleet's backups. Each test plays one attack through the
//! real binary, against a local repository or the S3 test server on 127.0.0.1, and fails on
//! the code before the defence.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::backend::{Backend, FileKind};
use chunkbak_engine::format::pack::BlobKind;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::format::tree::{Content, NodeKind, Timespec};
use chunkbak_engine::{BlobId, Id, Repository};
use common::proxy::{FaultProxy, Policy};
use common::*;

const PASSWORD: &[u8] = b"correct horse battery staple";

/// An environment whose password file holds [`PASSWORD`].
fn env() -> Env {
    let e = Env::new();
    fs::write(&e.pw, PASSWORD).unwrap();
    e
}

/// A bucket of its own for one test.
fn bucket(tag: &str) -> String {
    test_bucket(&format!("trust-{tag}"))
}

/// A repository on a local folder or on the S3 test server, as the tests reach it.
struct Target<'a> {
    e: &'a Env,
    /// (endpoint, s3:BUCKET/PREFIX)
    s3: Option<(String, String)>,
}

impl<'a> Target<'a> {
    fn local(e: &'a Env) -> Self {
        Target { e, s3: None }
    }

    fn s3(e: &'a Env, endpoint: &str, url: &str) -> Self {
        Target {
            e,
            s3: Some((endpoint.to_string(), url.to_string())),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = self.e.cmd();
        if let Some((ep, url)) = &self.s3 {
            with_s3(&mut c, Some(ep), url).env("CHUNKBAK_S3_MAX_ATTEMPTS", "2");
        }
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        run_command(c)
    }

    fn ok(&self, args: &[&str]) -> Run {
        expect_ok(self.run(args), args)
    }

    fn init(&self) {
        let mut init = vec!["init"];
        init.extend(INIT_SMALL);
        self.ok(&init);
    }

    fn backend(&self) -> std::sync::Arc<dyn Backend> {
        match &self.s3 {
            Some((ep, url)) => {
                let mut cfg = chunkbak_engine::backend::s3::S3Config::parse(url).unwrap();
                cfg.endpoint = Some(ep.clone());
                cfg.static_credentials = Some(("test".into(), "test".into()));
                std::sync::Arc::new(chunkbak_engine::backend::s3::S3Backend::new(cfg).unwrap())
            }
            None => std::sync::Arc::new(LocalBackend::new(&self.e.repo)),
        }
    }
}

/// An unsigned PUT of `body` to `url` with extra headers, as other tooling holding the host's
/// credentials would send it; returns the HTTP status.
fn raw_put(url: &str, body: &[u8], headers: &[&str]) -> u16 {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), body).unwrap();
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"]);
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg("--data-binary")
        .arg(format!("@{}", f.path().display()))
        .arg(url);
    let o = c.output().expect("curl");
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn small_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.txt"), b"genuine contents of a, 32 bytes!").unwrap();
    fs::write(dir.join("sub/b.bin"), splitmix(7, 200_000)).unwrap();
}

#[test]
fn append_only_policy_refuses_overwrites_and_deletes_and_every_write_of_a_backup_host_passes() {
    let e = env();
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    proxy.set_policy(Policy::AppendOnly);
    let b = bucket("policy");
    let url = format!("s3:{b}/fleet");
    let t = Target::s3(&e, &proxy.endpoint, &url);
    let src = e.path("src");
    small_tree(&src);
    t.init();
    let s = src.to_str().unwrap();
    t.ok(&["backup", s]);
    fs::write(src.join("c.txt"), splitmix(9, 100_000)).unwrap();
    t.ok(&["backup", s]);
    t.ok(&["check"]);
    let pw2 = e.path("pw2");
    fs::write(&pw2, "another password for this repo").unwrap();
    t.ok(&["key", "add", "--new-password-file", pw2.to_str().unwrap()]);
    let target = e.path("restored");
    t.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        fs::read(target.join(src.strip_prefix("/").unwrap()).join("c.txt")).unwrap(),
        splitmix(9, 100_000)
    );
    assert!(
        proxy.denied().is_empty(),
        "every write of init, backup, key add is conditional: {:?}",
        proxy.denied()
    );

    // A backup host cannot forget: the store refuses its deletes, and nothing is lost.
    let r = t.run(&["forget", "--keep-last", "1"]);
    assert_ne!(r.code, 0, "{}", r.out());
    // The refusal says what was refused and where to look.
    assert!(
        r.stderr.contains("HTTP 403")
            && r.stderr.contains("access denied")
            && r.stderr.contains("s3:DeleteObject"),
        "{}",
        r.stderr
    );
    assert!(
        proxy.denied().iter().any(|l| l.starts_with("DELETE")),
        "{:?}",
        proxy.denied()
    );
    let snaps = t.ok(&["--json", "snapshots"]).json("snapshot");
    assert_eq!(snaps.len(), 2);

    // The attacker overwrites the key file with other tooling: without If-None-Match the
    // policy refuses it (403); with it the store does (412). The repository still opens.
    let key = t.ok(&["--json", "key", "list"]).json("key")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let obj = format!("{}/{b}/fleet/keys/{key}", proxy.endpoint);
    assert_eq!(raw_put(&obj, b"garbage", &[]), 403);
    assert_eq!(raw_put(&obj, b"garbage", &["If-None-Match: *"]), 412);
    let cfg = format!("{}/{b}/fleet/config", proxy.endpoint);
    assert_eq!(raw_put(&cfg, b"garbage", &[]), 403);
    t.ok(&["snapshots"]);
    // The same PUT straight to the store (no bucket policy) is what broke repositories.
    let direct = format!("{ep}/{b}/fleet/keys/{key}");
    assert_eq!(raw_put(&direct, b"garbage", &["If-None-Match: *"]), 412);
}

#[test]
fn a_store_that_ignores_conditional_writes_is_refused_unless_accepted() {
    let e = env();
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    let b = bucket("ignores");
    let url = format!("s3:{b}/r");
    let t = Target::s3(&e, &proxy.endpoint, &url);
    let src = e.path("src");
    small_tree(&src);
    t.init();
    proxy.set_policy(Policy::IgnoresConditions);
    let s = src.to_str().unwrap();
    let r = t.run(&["backup", s]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("If-None-Match") && r.stderr.contains("--accept-overwriting-store"),
        "{}",
        r.stderr
    );
    let r = t.ok(&["--accept-overwriting-store", "backup", s]);
    assert!(
        r.stderr
            .contains("accepted with --accept-overwriting-store"),
        "{}",
        r.stderr
    );
    // Reading commands do not probe.
    t.ok(&["snapshots"]);
    proxy.set_policy(Policy::Open);
    t.ok(&["backup", s]);
    t.ok(&["check"]);
}

/// Issue 21: a store that keeps aws-chunked framing as data (s3rver) stores every pack a few
/// bytes too long and says nothing; before, the backup exited 0 and only `check --read-data`
/// found the packs corrupt. Each upload's stored size and CRC32C are compared with what was
/// sent: the pack is deleted and sent again, then the backup fails naming the object.
#[test]
fn a_store_that_alters_uploads_fails_the_backup_that_sent_them() {
    let e = env();
    let ep = s3_endpoint();
    let proxy = FaultProxy::start(&ep);
    let b = bucket("framing");
    let url = format!("s3:{b}/r");
    let t = Target::s3(&e, &proxy.endpoint, &url);
    let src = e.path("src");
    small_tree(&src);
    t.init();
    proxy.set_policy(Policy::KeepsFraming);
    let r = t.run(&["backup", src.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("did not keep the upload as sent")
            && r.stderr.contains(&format!("s3://{b}/r/data/")),
        "{}",
        r.stderr
    );
    // Each altered pack was deleted once and sent once more.
    let log = proxy.requests();
    let deletes = log
        .iter()
        .filter(|l| l.starts_with("DELETE ") && l.contains("/data/"))
        .count();
    assert!(deletes >= 1, "{log:?}");
    assert!(t.ok(&["--json", "snapshots"]).json("snapshot").is_empty());
    // The same backup through an honest store completes and checks clean.
    proxy.set_policy(Policy::Open);
    t.ok(&["backup", src.to_str().unwrap()]);
    t.ok(&["check", "--read-data"]);
}

#[test]
fn local_repository_writes_never_replace_an_object() {
    let e = env();
    e.init_small();
    let b = LocalBackend::new(&e.repo);
    let cfg = fs::read(e.repo.join("config")).unwrap();
    assert!(b
        .refuses_overwrite(FileKind::Config, "config", b"other bytes")
        .unwrap());
    assert_eq!(fs::read(e.repo.join("config")).unwrap(), cfg);
    b.put(FileKind::Config, "config", b"other bytes").unwrap();
    assert_eq!(
        fs::read(e.repo.join("config")).unwrap(),
        cfg,
        "a put never replaces"
    );
    // Nothing left staged but this process's folder and its lock; the folder goes with it.
    let leftovers: Vec<_> = walkdir::WalkDir::new(e.repo.join("tmp"))
        .into_iter()
        .flatten()
        .filter(|f| f.file_type().is_file() && f.file_name() != "lock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(b);
    let leftovers: Vec<_> = fs::read_dir(e.repo.join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn snapshot_time(e: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["--json"];
    a.extend(args);
    e.ok(&a).json("snapshot")
}

#[test]
fn a_snapshot_from_the_future_is_flagged_and_moves_neither_latest_nor_keep_within() {
    let e = env();
    e.init_small();
    let src = e.path("src");
    small_tree(&src);
    let s = src.to_str().unwrap();
    let mut genuine = Vec::new();
    for days in [3, 2, 1] {
        let t = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days);
        let r = e.ok(&["--json", "backup", s, "--time", &t.to_string()]);
        genuine.push(
            r.json("summary")[0]["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The compromised host writes a snapshot of the same host and paths, five years ahead.
    let r = e.ok(&["--json", "backup", s, "--time", "2031-12-06T00:00:00Z"]);
    let forged = r.json("summary")[0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    let snaps = snapshot_time(&e, &["snapshots"]);
    let flagged: Vec<_> = snaps.iter().filter(|s| s["from_future"] == true).collect();
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0]["id"], forged.as_str());
    let r = e.ok(&["snapshots"]);
    assert!(r.stderr.contains("1 snapshot(s) marked !"), "{}", r.stderr);

    // latest and --at skip it; an explicit id still reaches it.
    let sel = e.ok(&["--json", "ls", "latest"]).json("selected");
    assert_eq!(sel[0]["id"], genuine[2].as_str());
    let sel = e.ok(&["--json", "ls", "--at", "now"]).json("selected");
    assert_eq!(sel[0]["id"], genuine[2].as_str());
    let sel = e.ok(&["--json", "ls", &forged[..12]]).json("selected");
    assert_eq!(sel[0]["id"], forged.as_str());

    // The README's retention keeps every genuine snapshot; keep-last keeps the newest genuine.
    for policy in [&["--keep-within", "90d"][..], &["--keep-last", "1"][..]] {
        let mut a = vec!["--json", "forget", "--dry-run"];
        a.extend(policy);
        let g = e.ok(&a).json("forget_group");
        let kept: Vec<&str> = g[0]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == true)
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert!(kept.contains(&genuine[2].as_str()), "{policy:?}: {g:?}");
        if policy[0] == "--keep-within" {
            for id in &genuine {
                assert!(kept.contains(&id.as_str()), "{policy:?}: {g:?}");
            }
        }
    }
    // check names it; with a clock skew that covers it, it is no longer from the future.
    let r = e.run(&["check"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("snapshot {}", &forged[..8]))
            && r.stderr.contains("later than now"),
        "{}",
        r.stderr
    );
    let sel = e
        .ok(&["--json", "--clock-skew", "3650d", "ls", "latest"])
        .json("selected");
    assert_eq!(sel[0]["id"], forged.as_str());
}

/// Rebuilds the tree `tree` with the file at `path` (components below it) given `content`,
/// keeping every node's metadata: what a host holding the password can forge.
fn forge_tree(
    repo: &Repository,
    saver: &chunkbak_engine::packer::BlobSaver,
    tree: &BlobId,
    path: &[&[u8]],
    content: &Content,
) -> BlobId {
    let mut nodes = repo.load_dir(tree).unwrap();
    let n = nodes.iter_mut().find(|n| n.name == path[0]).unwrap();
    if path.len() == 1 {
        assert_eq!(n.kind, NodeKind::File);
        n.content = content.clone();
    } else {
        n.subtree = Some(forge_tree(
            repo,
            saver,
            &n.subtree.unwrap(),
            &path[1..],
            content,
        ));
    }
    repo.save_dir(saver, nodes).unwrap()
}

#[test]
fn a_forged_parent_does_not_make_the_next_backup_keep_forged_content() {
    let e = env();
    e.init_small();
    let src = e.path("src");
    small_tree(&src);
    let s = src.to_str().unwrap();
    let first = e.backup_id(&src);

    // Another host with the password writes a snapshot under this host's name and paths, a
    // second newer, whose a.txt has the same metadata and other content.
    let forged_id = {
        let repo =
            Repository::open(std::sync::Arc::new(LocalBackend::new(&e.repo)), PASSWORD).unwrap();
        repo.load_index().unwrap();
        let snaps = repo.snapshots().unwrap();
        let (_, genuine) = snaps.iter().find(|(id, _)| id.to_hex() == first).unwrap();
        let saver = repo.blob_saver().unwrap();
        let forged = b"FORGED contents, also 32 bytes!!";
        let (chunk, _) = saver.save(BlobKind::Data, forged).unwrap();
        let file = src.join("a.txt");
        let comps: Vec<&[u8]> = file
            .to_str()
            .unwrap()
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::as_bytes)
            .collect();
        let tree = forge_tree(
            &repo,
            &saver,
            &genuine.tree,
            &comps,
            &Content::Chunks(vec![chunk]),
        );
        repo.write_index(saver.finish().unwrap()).unwrap();
        let snap = Snapshot {
            time: Timespec {
                secs: genuine.time.secs + 1,
                nanos: 0,
            },
            tree,
            parent: Some(Id::from_hex(&first).unwrap()),
            ..genuine.clone()
        };
        repo.write_snapshot(&snap).unwrap().to_hex()
    };

    // The genuine host's next backup (a second later: the forged one is the newest) takes its
    // own snapshot as the parent, says why, and stores what is on its disk.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = e.ok(&["--json", "backup", s]);
    let sum = &r.json("summary")[0];
    assert_eq!(sum["parent"], first.as_str(), "{sum}");
    assert_eq!(sum["untrusted_parent"], forged_id.as_str(), "{sum}");
    assert!(r.stderr.contains("did not write it"), "{}", r.stderr);
    let t = e.path("restored");
    e.ok(&["restore", "latest", "--target", t.to_str().unwrap()]);
    let restored = t.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(restored.join("a.txt")).unwrap(),
        b"genuine contents of a, 32 bytes!"
    );

    // Without its local state (a new host, a wiped disk) a host trusts no parent: it reads
    // every file once, and says so.
    let st = e.path("other-state");
    let r = e.ok(&["--json", "--state-dir", st.to_str().unwrap(), "backup", s]);
    let sum = &r.json("summary")[0];
    assert!(sum["parent"].is_null(), "{sum}");
    assert_eq!(sum["files_unchanged"], 0, "{sum}");
}

#[test]
fn a_key_file_with_huge_kdf_parameters_is_refused_by_name_and_cannot_stall_an_open() {
    let e = env();
    e.init_small();
    // The attacker copies a key file and sets argon2id to 4 GiB and 100 passes (the largest
    // the format allows), under a name that is tried first.
    let keys = e.repo.join("keys");
    let genuine = fs::read_dir(&keys).unwrap().next().unwrap().unwrap().path();
    let mut heavy = fs::read(&genuine).unwrap();
    heavy[7..11].copy_from_slice(&(4u32 << 20).to_le_bytes());
    heavy[11..15].copy_from_slice(&100u32.to_le_bytes());
    let name = "0".repeat(64);
    fs::write(keys.join(&name), &heavy).unwrap();

    let started = std::time::Instant::now();
    let r = e.ok(&["snapshots"]);
    assert!(
        r.stderr.contains(&format!("keys/{name}")) && r.stderr.contains("not tried"),
        "{}",
        r.stderr
    );
    // Argon2id with 4 GiB and 100 passes takes many minutes; refusing it takes nothing.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // A wrong password names the refused file too.
    let bad = e.path("bad-pw");
    fs::write(&bad, "wrong").unwrap();
    let mut c = e.cmd();
    c.env("CHUNKBAK_PASSWORD_FILE", &bad).arg("snapshots");
    let r = run_command(c);
    assert_eq!(r.code, 12, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("keys/{name}")), "{}", r.stderr);

    // New key files below OWASP's minimum need an explicit choice; above the open limit never.
    let mut c = e.cmd();
    c.env_remove("CHUNKBAK_ALLOW_WEAK_KDF")
        .env("CHUNKBAK_REPOSITORY", e.path("weak"))
        .args(["init", "--kdf-memory-kib", "1024", "--kdf-iterations", "1"]);
    let r = run_command(c);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("OWASP") && r.stderr.contains("--allow-weak-kdf"),
        "{}",
        r.stderr
    );
    assert!(!e.path("weak").exists());
    let r = e.run(&["init", "--kdf-memory-kib", "2097152"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("more than chunkbak runs"), "{}", r.stderr);
}

#[test]
fn s3_checksums_find_a_same_size_overwrite_of_a_pack_without_reading_it() {
    let e = env();
    let ep = s3_endpoint();
    let b = bucket("crc");
    let url = format!("s3:{b}/r");
    let t = Target::s3(&e, &ep, &url);
    let src = e.path("src");
    small_tree(&src);
    t.init();
    t.ok(&["backup", src.to_str().unwrap()]);
    let r = t.ok(&["--json", "check", "--s3-checksums"]);
    let c = &r.json("check_s3_checksums")[0];
    let packs = c["packs"].as_u64().unwrap();
    assert!(packs > 2, "{c}");
    assert_eq!(c["matched"], packs, "{c}");
    assert_eq!(c["head_requests"], packs, "{c}");

    // Replace one data pack with other bytes of the same size, with their own valid CRC32C
    // (the store checks what it is sent, so the attacker sends a matching one).
    let (name, size) = t
        .backend()
        .list(FileKind::Data)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let garbage = splitmix(99, size as usize);
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    crc.update(&garbage);
    let crc = crc.finalize() as u32;
    use base64::Engine;
    let crc_b64 = base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());
    let obj = format!("{ep}/{b}/r/{}", FileKind::Data.path_of(&name));
    let h = format!("x-amz-checksum-crc32c: {crc_b64}");
    assert_eq!(raw_put(&obj, &garbage, &[&h]), 200);

    // The structural check cannot see it (same size); the checksums name it.
    let r = t.ok(&["--json", "check"]);
    assert_eq!(
        r.json("check")[0]["problems"].as_array().unwrap().len(),
        0,
        "{}",
        r.out()
    );
    // What a check reads that reads no pack data (key, config, index, snapshots, trees).
    let plain = r.json("requests")[0]["bytes_down"].as_u64().unwrap();
    let r = t.run(&["--json", "check", "--s3-checksums"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let c = &r.json("check_s3_checksums")[0];
    let problems = c["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{c}");
    assert!(problems[0].as_str().unwrap().contains(&name), "{c}");
    let reqs = &r.json("requests")[0];
    // No more than the plain check: the pack (of `size` bytes) was not downloaded.
    assert!(
        reqs["bytes_down"].as_u64().unwrap() <= plain,
        "no pack read ({size} bytes): {reqs} vs {plain}"
    );

    // A local repository keeps no checksums: the option says so instead of passing.
    init_local_and_check_checksums_refused(&e);
}

fn init_local_and_check_checksums_refused(e: &Env) {
    e.init_small();
    let r = e.run(&["check", "--s3-checksums"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("keeps no checksums"), "{}", r.stderr);
}

/// The attack: one index file claiming that every data blob lives in a small garbage object
/// stored as a data pack, named to sort before every real pack. Returns its index file name.
fn poison_index(t: &Target, nr: u8) -> String {
    use chunkbak_engine::format::index::{IndexFile, PackEntry};
    use chunkbak_engine::format::ObjectKind;
    let repo = Repository::open(t.backend(), PASSWORD).unwrap();
    let mut claims = Vec::new();
    for (_, f) in repo.current_index_files().unwrap() {
        for p in f.packs {
            if p.kind == ObjectKind::DataPack {
                claims.extend(p.blobs);
            }
        }
    }
    assert!(claims.len() > 3);
    let garbage = b"not a pack, just a few bytes".to_vec();
    // The size it claims covers every record (an index file with records past its pack's
    // size does not decode); the store holds 28 bytes.
    let claimed = claims.iter().map(|b| b.end()).max().unwrap();
    let name = format!("{:0>64}", nr);
    repo.backend().put(FileKind::Data, &name, &garbage).unwrap();
    let forged = IndexFile {
        supersedes: Vec::new(),
        packs: vec![PackEntry {
            id: Id::from_hex(&name).unwrap(),
            kind: ObjectKind::DataPack,
            size: claimed,
            crc32c: 0,
            salt: [0; 32],
            mark: None,
            blobs: claims,
        }],
    };
    repo.write_object(FileKind::Index, ObjectKind::Index, &forged.encode())
        .unwrap()
        .to_hex()
}

fn poisoned_index_round(t: &Target) {
    let e = t.e;
    t.init();
    let src = e.path("src");
    small_tree(&src);
    for i in 0..4 {
        fs::write(src.join(format!("f{i}.bin")), splitmix(100 + i, 120_000)).unwrap();
    }
    let s = src.to_str().unwrap();
    t.ok(&["backup", s]);
    let forged = poison_index(t, 1);

    // check names the forged index file; the claims cost a few ranged reads, no pack body.
    let r = t.run(&["--json", "check"]);
    assert_eq!(r.code, 1, "{}\n{}", r.out(), r.stderr);
    assert!(!r.json("check").is_empty(), "{}\n{}", r.out(), r.stderr);
    let c = &r.json("check")[0];
    let problems = c["problems"].to_string();
    assert!(problems.contains(&format!("index/{forged}")), "{c}");
    assert!(c["claim_reads"].as_u64().unwrap() > 0, "{c}");

    // A backup in the meantime does not deduplicate against the forged claims.
    fs::write(src.join("new.bin"), splitmix(200, 90_000)).unwrap();
    let r = t.ok(&["backup", s]);
    assert!(
        r.stderr.contains(&format!("index/{forged}")),
        "{}",
        r.stderr
    );

    // repair index drops the false claims; check is clean again.
    let r = t.ok(&["--json", "repair", "index"]);
    let rep = &r.json("repair_index")[0];
    // (the garbage object does not match its name: repair leaves it out of the index whole)
    let garbage = format!("{:0>64}", 1);
    assert!(rep["messages"].to_string().contains(&garbage), "{rep}");
    assert_eq!(
        rep["packs_kept"].as_u64().unwrap() + 1,
        t.backend().list(FileKind::Data).unwrap().len() as u64
            + t.backend().list(FileKind::Tree).unwrap().len() as u64,
        "{rep}"
    );
    let _ = forged;
    t.ok(&["check"]);

    // Poisoned again; two prunes a grace period apart mark and delete nothing live.
    let forged = poison_index(t, 2);
    let r = t.ok(&["--json", "prune", "--grace", "1s"]);
    let plan = &r.json("prune_plan")[0];
    assert_eq!(plan["mark"]["packs"], 0, "{plan}");
    assert_eq!(plan["repack"]["packs"], 0, "{plan}");
    assert!(
        plan["claims_refuted"]
            .to_string()
            .contains(&format!("index/{forged}")),
        "{plan}"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let r = t.ok(&["--json", "prune", "--grace", "1s"]);
    let plan = &r.json("prune_plan")[0];
    assert_eq!(plan["delete"]["packs"], 0, "{plan}");
    let r = t.ok(&["check", "--read-data"]);
    assert!(r.out().contains(": 0 problems"), "{}", r.out());
    fs::write(src.join("later.bin"), splitmix(300, 70_000)).unwrap();
    t.ok(&["backup", s]);
    let out = e.path("restored");
    t.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    e.compare(&src, &out.join(src.strip_prefix("/").unwrap()), &[]);
}

#[test]
fn a_poisoned_index_makes_prune_delete_nothing_live_local() {
    let e = env();
    poisoned_index_round(&Target::local(&e));
}

#[test]
fn a_poisoned_index_makes_prune_delete_nothing_live_s3() {
    let e = env();
    let ep = s3_endpoint();
    let url = format!("s3:{}/r", bucket("poison"));
    poisoned_index_round(&Target::s3(&e, &ep, &url));
}

// ---------------------------------------------------------------------------------------------
// S3 Object Lock (issue 19, part 2), against the S3 test server's Object Lock (ministack
// enforces governance retention, refuses deletes of retained versions and shortening).

/// The SDK client on the test server, to look at objects as S3 keeps them.
fn s3_backend(ep: &str, url: &str) -> chunkbak_engine::backend::s3::S3Backend {
    let mut cfg = chunkbak_engine::backend::s3::S3Config::parse(url).unwrap();
    cfg.endpoint = Some(ep.to_string());
    cfg.static_credentials = Some(("test".into(), "test".into()));
    chunkbak_engine::backend::s3::S3Backend::new(cfg).unwrap()
}

/// (mode, retain-until) of the current version of an object, as HeadObject reports them.
fn lock_of(be: &chunkbak_engine::backend::s3::S3Backend, key: &str) -> (String, Option<i64>) {
    let c = be.client().clone();
    let bucket = be.config().bucket.clone();
    let key = key.to_string();
    let h = be
        .block_on(async move { c.head_object().bucket(bucket).key(key).send().await })
        .unwrap();
    (
        h.object_lock_mode()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
        h.object_lock_retain_until_date().map(|d| d.secs()),
    )
}

/// Every version stored under `prefix`, then every delete marker (`marker <id>`):
/// (key, version id).
fn versions(be: &chunkbak_engine::backend::s3::S3Backend, prefix: &str) -> Vec<(String, String)> {
    let c = be.client().clone();
    let bucket = be.config().bucket.clone();
    let prefix = prefix.to_string();
    let out = be
        .block_on(async move {
            c.list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .send()
                .await
        })
        .unwrap();
    out.versions()
        .iter()
        .map(|v| {
            (
                v.key().unwrap_or_default().to_string(),
                v.version_id().unwrap_or_default().to_string(),
            )
        })
        .chain(out.delete_markers().iter().map(|m| {
            (
                m.key().unwrap_or_default().to_string(),
                format!("marker {}", m.version_id().unwrap_or_default()),
            )
        }))
        .collect()
}

/// Names of the data and tree packs, with their keys.
fn pack_keys(be: &chunkbak_engine::backend::s3::S3Backend) -> Vec<String> {
    [FileKind::Data, FileKind::Tree]
        .into_iter()
        .flat_map(|k| {
            be.list(k)
                .unwrap()
                .into_iter()
                .map(move |(n, _)| be.key(k, &n))
        })
        .collect()
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[test]
fn object_lock_round_trip_locks_every_object_skips_locked_deletes_and_extends_only_what_is_referenced(
) {
    let e = env();
    let ep = s3_endpoint();
    let mut init = vec!["init", "--object-lock-days", "2"];
    init.extend(INIT_SMALL);

    // A local folder cannot lock; nor can a bucket without Object Lock.
    let r = Target::local(&e).run(&init);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!e.repo.exists(), "a refused init left a folder");
    assert!(r.stderr.contains("Object Lock"), "{}", r.stderr);
    let plain = bucket("nolock");
    let pb = s3_backend(&ep, &format!("s3:{plain}/r"));
    pb.create().unwrap();
    let r = Target::s3(&e, &ep, &format!("s3:{plain}/r")).run(&init);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("Object Lock must be enabled on the bucket"),
        "{}",
        r.stderr
    );

    // init creates the missing bucket with Object Lock; every object carries a retention.
    let b = bucket("lock");
    let url = format!("s3:{b}/fleet");
    let t = Target::s3(&e, &ep, &url);
    let before = now();
    let r = t.ok(&init);
    assert!(
        r.stderr.contains("Object Lock GOVERNANCE for 2 days"),
        "{}",
        r.stderr
    );
    let be = s3_backend(&ep, &url);
    let one = e.path("one");
    fs::create_dir_all(&one).unwrap();
    fs::write(one.join("a.bin"), splitmix(31, 300_000)).unwrap();
    let s1 = t
        .ok(&["--json", "backup", one.to_str().unwrap()])
        .json("summary")[0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let first_packs = pack_keys(&be);
    let two = e.path("two");
    fs::create_dir_all(&two).unwrap();
    fs::write(two.join("b.bin"), splitmix(32, 300_000)).unwrap();
    t.ok(&["backup", two.to_str().unwrap()]);
    let second_packs: Vec<String> = pack_keys(&be)
        .into_iter()
        .filter(|k| !first_packs.contains(k))
        .collect();
    assert!(!first_packs.is_empty() && !second_packs.is_empty());
    let after = now();
    let mut all = 0;
    for kind in FileKind::ALL
        .into_iter()
        .filter(|k| chunkbak_engine::backend::ObjectLock::covers(*k))
    {
        for (name, _) in be.list(kind).unwrap() {
            let (mode, until) = lock_of(&be, &be.key(kind, &name));
            let until = until.unwrap_or_else(|| panic!("{kind:?} {name} is not locked"));
            assert_eq!(mode, "GOVERNANCE", "{kind:?} {name}");
            assert!(
                (before + 2 * 86_400 - 5..=after + 2 * 86_400 + 5).contains(&until),
                "{kind:?} {name}: retained until {until}"
            );
            all += 1;
        }
    }
    assert!(all >= 8, "{all} objects");

    // A retained object cannot be deleted, not even by the maintenance credentials'
    // DeleteObject of its version: S3 refuses.
    let key = first_packs[0].clone();
    let vid = versions(&be, &key)[0].1.clone();
    let (c, bk) = (be.client().clone(), b.clone());
    let refused = be.block_on(async move {
        c.delete_object()
            .bucket(bk)
            .key(key)
            .version_id(vid)
            .send()
            .await
    });
    assert!(refused.is_err(), "a locked version was deleted");

    // forget: the retained snapshot is hidden (no command lists it), its version stays.
    let r = t.ok(&["--json", "forget", &s1]);
    let f = &r.json("forget")[0];
    assert_eq!(f["locked"][0]["id"], s1.as_str(), "{}", r.out());
    let listed = t.ok(&["--json", "snapshots"]).json("snapshot");
    assert_eq!(listed.len(), 1);
    assert!(listed[0]["id"].as_str().unwrap() != s1);
    let snap_key = be.key(FileKind::Snapshot, &s1);
    let v = versions(&be, &snap_key);
    assert_eq!(v.len(), 2, "the locked copy stays, behind a marker: {v:?}");
    assert!(!v[0].1.starts_with("marker") && v[1].1.starts_with("marker"));
    let r = t.ok(&["forget", "--keep-last", "1"]);
    assert!(r.out().contains("removed 0 snapshots"), "{}", r.out());

    // prune: marks the forgotten packs, then finds them retained and leaves them, saying
    // until when; superseded index files stay too. Nothing is deleted.
    t.ok(&["prune", "--grace", "0s"]);
    let r = t.ok(&["--json", "prune", "--grace", "0s"]);
    let plan = &r.json("prune_plan")[0];
    assert_eq!(
        plan["locked"]["packs"].as_u64().unwrap(),
        first_packs.len() as u64,
        "{}",
        r.out()
    );
    assert_eq!(plan["delete"]["packs"], 0, "{}", r.out());
    // Locked packs are one line of the plan: the lines still add up to the index's packs.
    for unit in ["packs", "bytes"] {
        let lines: u64 = [
            "kept",
            "repack",
            "mark",
            "waiting",
            "delete",
            "min_duration_held",
            "locked",
        ]
        .iter()
        .map(|k| plan[k][unit].as_u64().unwrap())
        .sum();
        assert_eq!(
            lines,
            plan["total"][unit].as_u64().unwrap(),
            "{unit}: {plan}"
        );
    }
    assert!(plan["locked"]["last_until"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let res = &r.json("prune")[0];
    assert_eq!(res["packs_deleted"], 0, "{}", r.out());
    for k in &first_packs {
        assert_eq!(versions(&be, k).len(), 1, "{k} was deleted");
    }
    let text = t.ok(&["prune", "--grace", "0s"]).out();
    assert!(
        text.contains("locked:") && text.contains("deletable after"),
        "{text}"
    );

    // lock extend: every referenced object is retained 5 days from now; the forgotten packs
    // and the hidden snapshot are not extended.
    let before = now();
    let r = t.ok(&["--json", "lock", "extend", "--days", "5"]);
    let x = &r.json("lock_extend")[0];
    assert_eq!(
        x["packs"].as_u64().unwrap(),
        second_packs.len() as u64,
        "{}",
        r.out()
    );
    assert!(x["extended"].as_u64().unwrap() >= second_packs.len() as u64 + 3);
    assert_eq!(
        x["requests"]["PUT"], x["extended"],
        "one PutObjectRetention per renewed object"
    );
    let long = before + 5 * 86_400 - 5;
    for k in &second_packs {
        assert!(lock_of(&be, k).1.unwrap() >= long, "{k} not extended");
    }
    for kind in [FileKind::Config, FileKind::Key, FileKind::Snapshot] {
        for (name, _) in be.list(kind).unwrap() {
            assert!(
                lock_of(&be, &be.key(kind, &name)).1.unwrap() >= long,
                "{name}"
            );
        }
    }
    for k in &first_packs {
        assert!(
            lock_of(&be, k).1.unwrap() < before + 3 * 86_400,
            "{k} is unreferenced but was extended"
        );
    }
    // The snapshot is whole: restore it.
    let dst = e.path("restored");
    t.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    let restored = walk_files(&dst);
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(fs::read(&restored[0]).unwrap(), splitmix(32, 300_000));

    // Once the retention ends (shortened here, with the governance bypass, instead of
    // waiting two days), prune deletes the versions themselves: the space comes back.
    let hidden_snapshot = versions(&be, &snap_key)[0].1.clone();
    let mut expiring: Vec<(String, Option<String>)> =
        first_packs.iter().map(|k| (k.clone(), None)).collect();
    expiring.push((snap_key.clone(), Some(hidden_snapshot)));
    for (k, vid) in expiring {
        let (c, bk) = (be.client().clone(), b.clone());
        be.block_on(async move {
            use chunkbak_engine::backend::s3::sdk::primitives::DateTime;
            use chunkbak_engine::backend::s3::sdk::types::{
                ObjectLockRetention, ObjectLockRetentionMode,
            };
            c.put_object_retention()
                .bucket(bk)
                .key(k)
                .set_version_id(vid)
                .bypass_governance_retention(true)
                .retention(
                    ObjectLockRetention::builder()
                        .mode(ObjectLockRetentionMode::Governance)
                        .retain_until_date(DateTime::from_secs(now() + 2))
                        .build(),
                )
                .send()
                .await
        })
        .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let r = t.ok(&["--json", "prune", "--grace", "0s"]);
    assert_eq!(
        r.json("prune")[0]["packs_deleted"].as_u64().unwrap(),
        first_packs.len() as u64,
        "{}",
        r.out()
    );
    assert_eq!(r.json("prune")[0]["hidden"]["deleted"], 1, "{}", r.out());
    for k in first_packs.iter().chain([&snap_key]) {
        assert!(versions(&be, k).is_empty(), "{k}: a version is left");
    }
    t.ok(&["check", "--read-data"]);

    // Objects no index names: the one retained stays (counted with its date), the other goes.
    let (retained, free) = ("ab".repeat(32), "cd".repeat(32));
    for (name, days) in [(&retained, Some(1)), (&free, None)] {
        let (c, bk, key) = (be.client().clone(), b.clone(), be.key(FileKind::Data, name));
        be.block_on(async move {
            use chunkbak_engine::backend::s3::sdk::primitives::DateTime;
            use chunkbak_engine::backend::s3::sdk::types::ObjectLockMode;
            let mut put = c
                .put_object()
                .bucket(bk)
                .key(key)
                .body(vec![7u8; 100].into());
            if let Some(d) = days {
                put = put
                    .object_lock_mode(ObjectLockMode::Governance)
                    .object_lock_retain_until_date(DateTime::from_secs(now() + d * 86_400));
            }
            put.send().await
        })
        .unwrap();
    }
    let r = t.ok(&["--json", "prune", "--now"]);
    let plan = &r.json("prune_plan")[0];
    assert_eq!(plan["orphans_locked"]["packs"], 1, "{plan}");
    assert_eq!(plan["orphans"]["packs"], 1, "{plan}");
    assert!(be.exists(FileKind::Data, &retained).unwrap());
    assert!(!be.exists(FileKind::Data, &free).unwrap());
}
