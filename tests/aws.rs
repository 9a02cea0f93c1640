//! The AWS sources against moto server (pinned in its own venv by `.ci/s3-test-server`, on
//! 127.0.0.1): EBS snapshots read through the EBS direct APIs and written back.
//!
//! moto 5.2.5's ListChangedBlocks reports only blocks the first snapshot holds (a block written
//! for the first time in the second is missed) and ignores pagination; the changes below are
//! to blocks the first snapshot holds, as on AWS they would be reported either way.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use common::*;

const BLOCK: usize = 512 * 1024;

/// `c` with the moto server as the EBS endpoint and test credentials.
fn with_ebs(c: &mut Command, endpoint: &str) {
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_EBS", endpoint)
        .env("AWS_ENDPOINT_URL_ROUTE_53", endpoint)
        .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING", endpoint)
        .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", endpoint);
}

fn run_ebs(e: &Env, endpoint: &str, repo: &Path, args: &[&str]) -> Run {
    let mut c = e.cmd();
    with_ebs(&mut c, endpoint);
    c.env("CHUNKBAK_REPOSITORY", repo).args(args);
    let r = e.run_cmd(c);
    assert_eq!(r.code, 0, "{args:?}: {}\n{}", r.out(), r.stderr);
    r
}

/// Writes `image` as a new EBS snapshot (through a scratch repository and `restore
/// --to-ebs-snapshot`) and returns its id and the blocks written.
fn ebs_snapshot_of(e: &Env, endpoint: &str, image: &Path) -> (String, u64) {
    let scratch = e.path("scratch-repo");
    if !scratch.join("config").exists() {
        let mut init = vec!["init"];
        init.extend(FAST_KDF);
        run_ebs(e, endpoint, &scratch, &init);
    }
    let dir = image.parent().unwrap().to_str().unwrap();
    run_ebs(e, endpoint, &scratch, &["backup", dir]);
    let spec = format!("latest:{}", image.display());
    let r = run_ebs(
        e,
        endpoint,
        &scratch,
        &["--json", "restore", &spec, "--to-ebs-snapshot"],
    );
    let d = &r.json("ebs_snapshot")[0];
    (
        d["snapshot_id"].as_str().unwrap().to_string(),
        d["blocks_written"].as_u64().unwrap(),
    )
}

/// The blocks of `image` holding a non-zero byte.
fn written_blocks(image: &Path) -> Vec<usize> {
    let data = fs::read(image).unwrap();
    data.chunks(BLOCK)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, _)| i)
        .collect()
}

/// A 1 GiB volume whose first 256 MiB hold random blocks (about half of them; the rest and
/// everything after never written) is backed up from its EBS snapshot, then a snapshot with
/// 2% of those blocks changed: the second backup fetches exactly the changed blocks and adds
/// about their size; both images dump byte-identical; `restore --to-ebs-snapshot` writes a
/// snapshot whose blocks read back identical.
#[test]
fn ebs_snapshots_by_changed_blocks_and_back() {
    let endpoint = s3_server("moto");
    let e = Env::new();
    // Chunks of at most 64 KiB: each block is stored as 8 pieces.
    e.init_small();
    let img_dir = e.path("img");
    fs::create_dir_all(&img_dir).unwrap();
    let image = img_dir.join("disk.img");
    {
        let mut f = fs::File::create(&image).unwrap();
        f.set_len(1 << 30).unwrap();
        for i in 0..512u64 {
            if splitmix(i, 1)[0].is_multiple_of(2) {
                f.seek(SeekFrom::Start(i * BLOCK as u64)).unwrap();
                f.write_all(&splitmix(1000 + i, BLOCK)).unwrap();
            }
        }
    }
    let written = written_blocks(&image);
    assert!(
        written.len() > 200 && written.len() < 320,
        "{}",
        written.len()
    );
    let (snap_a, n) = ebs_snapshot_of(&e, &endpoint, &image);
    assert_eq!(n, written.len() as u64, "only non-zero blocks are written");

    // The first backup reads every written block, and nothing else.
    let repo = e.repo.clone();
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &[
            "--json",
            "backup",
            "--ebs-snapshot",
            &snap_a,
            "--ebs-volume",
            "vol-test",
        ],
    );
    let req = &r.json("ebs_requests")[0];
    assert_eq!(req["GetSnapshotBlock"], written.len() as u64, "{req}");
    let sum = &r.json("summary")[0];
    assert_eq!(sum["bytes_read"], (written.len() * BLOCK) as u64);
    assert_eq!(sum["bytes_total"], 1u64 << 30);
    let img_a = format!("latest:/ebs/vol-test/{snap_a}.img");
    let d = run_ebs(&e, &endpoint, &repo, &["dump", &img_a]);
    assert!(d.stdout == fs::read(&image).unwrap(), "first image differs");
    let original = block_hashes(&d.stdout);

    // 2% of the blocks change (10 of the written ones, 100 bytes each).
    let changed: Vec<usize> = written
        .iter()
        .step_by(written.len() / 10)
        .take(10)
        .copied()
        .collect();
    {
        let mut f = fs::OpenOptions::new().write(true).open(&image).unwrap();
        for (k, &b) in changed.iter().enumerate() {
            f.seek(SeekFrom::Start((b * BLOCK + 4096) as u64)).unwrap();
            f.write_all(&splitmix(5000 + k as u64, 100)).unwrap();
        }
    }
    let (snap_b, _) = ebs_snapshot_of(&e, &endpoint, &image);
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &[
            "--json",
            "backup",
            "--ebs-snapshot",
            &snap_b,
            "--ebs-volume",
            "vol-test",
        ],
    );
    let req = &r.json("ebs_requests")[0];
    assert_eq!(
        req["GetSnapshotBlock"], 10,
        "only the changed blocks: {req}"
    );
    let sum = &r.json("summary")[0];
    assert_eq!(sum["bytes_read"], (10 * BLOCK) as u64, "{sum}");
    let added = sum["bytes_added"].as_u64().unwrap();
    assert!(
        added < (10 * BLOCK) as u64 + 200_000,
        "about the changed blocks' size: {added}"
    );
    let img_b = format!("latest:/ebs/vol-test/{snap_b}.img");
    let d = run_ebs(&e, &endpoint, &repo, &["dump", &img_b]);
    assert!(
        d.stdout == fs::read(&image).unwrap(),
        "second image differs"
    );
    let meta = run_ebs(
        &e,
        &endpoint,
        &repo,
        &["dump", &format!("latest:/ebs/vol-test/{snap_b}.json")],
    );
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    assert_eq!(meta["parent_snapshot_id"], snap_a.as_str(), "{meta}");
    assert_eq!(meta["blocks_fetched"], 10);
    // The first image is still whole in its own snapshot.
    let first = run_ebs(&e, &endpoint, &repo, &["--json", "snapshots"]).json("snapshot");
    let first_id = first[0]["short_id"].as_str().unwrap();
    let d = run_ebs(
        &e,
        &endpoint,
        &repo,
        &["dump", &format!("{first_id}:/ebs/vol-test/{snap_a}.img")],
    );
    assert!(
        block_hashes(&d.stdout) == original,
        "the first image changed"
    );

    // Back to EBS: a new snapshot whose blocks, read back in full, are the image.
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &[
            "--json",
            "restore",
            &img_b,
            "--to-ebs-snapshot",
            "--ebs-tag",
            "team=dr",
            "--ebs-kms-key",
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ],
    );
    let w = &r.json("ebs_snapshot")[0];
    assert_eq!(w["blocks_written"], written.len() as u64, "{w}");
    let snap_c = w["snapshot_id"].as_str().unwrap().to_string();
    // The tag asked for is on the snapshot (moto keeps tags; it ignores KmsKeyArn, whose
    // request engine/tests/ebs_stub.rs checks).
    let xml = moto_ec2(
        &endpoint,
        &format!("Action=DescribeSnapshots&SnapshotId.1={snap_c}&Version=2016-11-15"),
    );
    assert!(
        xml.contains("<key>team</key>") && xml.contains("<value>dr</value>"),
        "{xml}"
    );
    let r = run_ebs(
        &e,
        &endpoint,
        &repo,
        &[
            "--json",
            "backup",
            "--ebs-snapshot",
            &snap_c,
            "--ebs-volume",
            "vol-c",
            "--force",
        ],
    );
    assert_eq!(
        r.json("ebs_requests")[0]["GetSnapshotBlock"],
        written.len() as u64
    );
    let d = run_ebs(
        &e,
        &endpoint,
        &repo,
        &["dump", &format!("latest:/ebs/vol-c/{snap_c}.img")],
    );
    assert!(
        d.stdout == fs::read(&image).unwrap(),
        "written snapshot differs"
    );
    let c = run_ebs(&e, &endpoint, &repo, &["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
}

/// A hash of each block (to compare an image with one no longer on disk).
fn block_hashes(data: &[u8]) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    data.chunks(BLOCK)
        .map(|b| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// A Route53 client on the moto server, for the test to make and change zones.
fn route53(endpoint: &str) -> chunkbak_engine::route53::Route53 {
    chunkbak_engine::route53::Route53::new(&chunkbak_engine::aws::AwsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.to_string()),
        static_credentials: Some(("test".into(), "test".into())),
        ..Default::default()
    })
    .unwrap()
}

fn upsert(r: &chunkbak_engine::route53::Route53, zone: &str, docs: &[serde_json::Value]) {
    let sets = docs
        .iter()
        .map(|d| chunkbak_engine::route53::record_from_json(d).unwrap())
        .collect();
    r.upsert(zone, sets, "test").unwrap();
}

/// The paths `diff A B` reports, with their change letter.
fn diff_lines(e: &Env, endpoint: &str, a: &str, b: &str) -> Vec<String> {
    let r = run_ebs(e, endpoint, &e.repo, &["diff", a, b]);
    r.out()
        .lines()
        .filter(|l| l.contains("/aws/"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Route53 zones (over 200 record sets of several types, aliases and weighted sets among
/// them) backed up twice (the second adds nothing), three records changed: `diff` names
/// exactly those (and the zone's BIND file), `aws-apply --dry-run` plans exactly those, and
/// the apply brings them back.
#[test]
fn route53_zones_back_up_diff_and_apply() {
    use serde_json::json;
    let endpoint = s3_server("moto");
    let r = route53(&endpoint);
    let tag = test_bucket("zone");
    let mut zones = Vec::new();
    for name in [format!("{tag}.example.com."), format!("{tag}.internal.")] {
        let z = r
            .block_on(
                r.client()
                    .create_hosted_zone()
                    .name(&name)
                    .caller_reference(&name)
                    .send(),
            )
            .unwrap();
        let id = z
            .hosted_zone()
            .unwrap()
            .id()
            .trim_start_matches("/hostedzone/")
            .to_string();
        zones.push((id, name));
    }
    let (zone, zname) = zones[0].clone();
    let mut docs = Vec::new();
    for i in 0..120 {
        docs.push(
            json!({"Name": format!("host{i}.{zname}"), "Type": "A", "TTL": 300,
                         "ResourceRecords": [format!("10.0.{}.{}", i / 200, i % 200 + 1)]}),
        );
    }
    for i in 0..40 {
        docs.push(
            json!({"Name": format!("v6-{i}.{zname}"), "Type": "AAAA", "TTL": 60,
                         "ResourceRecords": [format!("2001:db8::{:x}", i + 1)]}),
        );
        docs.push(
            json!({"Name": format!("alias{i}.{zname}"), "Type": "CNAME", "TTL": 300,
                         "ResourceRecords": [format!("host{i}.{zname}")]}),
        );
    }
    docs.push(json!({"Name": zname, "Type": "MX", "TTL": 3600,
                     "ResourceRecords": [format!("10 mail.{zname}"), format!("20 mail2.{zname}")]}));
    docs.push(json!({"Name": zname, "Type": "TXT", "TTL": 300,
                     "ResourceRecords": ["\"v=spf1 -all\""]}));
    for i in 0..4 {
        docs.push(
            json!({"Name": format!("www.{zname}"), "Type": "A", "TTL": 60,
                         "SetIdentifier": format!("w{i}"), "Weight": 10 * (i + 1),
                         "ResourceRecords": [format!("192.0.2.{}", i + 1)]}),
        );
    }
    // Geolocation sets: a routing policy the documents must keep (or an apply would fail).
    for (id, cont) in [("eu", "EU"), ("na", "NA")] {
        docs.push(
            json!({"Name": format!("geo.{zname}"), "Type": "A", "TTL": 60,
                         "SetIdentifier": id, "GeoLocation": {"ContinentCode": cont},
                         "ResourceRecords": [format!("198.51.100.{}", id.len() + cont.len())]}),
        );
    }
    for i in 0..3 {
        docs.push(json!({"Name": format!("apex-alias{i}.{zname}"), "Type": "A",
                         "AliasTarget": {"HostedZoneId": zone, "DNSName": format!("host{i}.{zname}"),
                                         "EvaluateTargetHealth": false}}));
    }
    upsert(&r, &zone, &docs);
    upsert(
        &r,
        &zones[1].0,
        &[
            json!({"Name": format!("db.{}", zones[1].1), "Type": "A", "TTL": 30,
                 "ResourceRecords": ["10.9.9.9"]}),
        ],
    );
    assert!(docs.len() >= 200, "{}", docs.len());

    let e = Env::new();
    e.init_small();
    let backup = |e: &Env| {
        let r = run_ebs(
            e,
            &endpoint,
            &e.repo,
            &["--json", "backup", "--aws-config", "route53"],
        );
        (
            r.json("summary")[0]["snapshot_id"].as_str().unwrap()[..8].to_string(),
            r.json("summary")[0]["blobs_added"].as_u64().unwrap(),
        )
    };
    let mut c = e.cmd();
    with_ebs(&mut c, &endpoint);
    let (s1, _) = backup(&e);
    let ls = run_ebs(
        &e,
        &endpoint,
        &e.repo,
        &["ls", &s1, &format!("/aws/route53/{zone}/records")],
    );
    assert!(ls.out().lines().count() >= docs.len(), "{}", ls.out());
    let bind = run_ebs(
        &e,
        &endpoint,
        &e.repo,
        &["dump", &format!("{s1}:/aws/route53/{zone}/{zname}zone")],
    );
    assert!(
        bind.out()
            .contains(&format!("host7.{zname}\t300\tIN\tA\t10.0.0.8")),
        "{}",
        bind.out()
    );
    let geo = run_ebs(
        &e,
        &endpoint,
        &e.repo,
        &[
            "dump",
            &format!("{s1}:/aws/route53/{zone}/records/geo.{zname}_A_eu.json"),
        ],
    );
    assert!(
        geo.out().contains("\"ContinentCode\": \"EU\""),
        "{}",
        geo.out()
    );
    // Nothing changed: nothing added.
    let (s2, added) = backup(&e);
    assert_eq!(added, 0, "an unchanged configuration adds no blob");
    assert!(diff_lines(&e, &endpoint, &s1, &s2).is_empty());

    // Three records change.
    let changed = [
        json!({"Name": format!("host5.{zname}"), "Type": "A", "TTL": 300, "ResourceRecords": ["10.1.1.1"]}),
        json!({"Name": format!("v6-3.{zname}"), "Type": "AAAA", "TTL": 120, "ResourceRecords": ["2001:db8::ff"]}),
        json!({"Name": format!("www.{zname}"), "Type": "A", "TTL": 60, "SetIdentifier": "w2",
               "Weight": 99, "ResourceRecords": ["192.0.2.3"]}),
    ];
    upsert(&r, &zone, &changed);
    let (s3, _) = backup(&e);
    let d = diff_lines(&e, &endpoint, &s2, &s3);
    let records: Vec<&String> = d.iter().filter(|l| l.contains("/records/")).collect();
    assert_eq!(records.len(), 3, "{d:?}");
    for f in ["host5.", "v6-3.", "_w2.json"] {
        assert!(
            records.iter().any(|l| l.contains(f) && l.starts_with('M')),
            "{f}: {d:?}"
        );
    }
    assert!(
        d.len() <= 4,
        "the records and the zone's BIND file only: {d:?}"
    );

    // The plan names exactly those three; the apply restores them.
    let from = format!("{s2}:/aws/route53/{zone}");
    let p = run_ebs(
        &e,
        &endpoint,
        &e.repo,
        &[
            "--json",
            "aws-apply",
            "route53",
            "--zone",
            &zone,
            "--from",
            &from,
            "--dry-run",
        ],
    );
    let plan = &p.json("aws_apply_plan")[0];
    let names: Vec<String> = plan["upserts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            format!(
                "{} {}",
                u["record"]["Name"].as_str().unwrap(),
                u["record"]["SetIdentifier"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(plan["extra"].as_array().unwrap().is_empty(), "{plan}");
    run_ebs(
        &e,
        &endpoint,
        &e.repo,
        &["aws-apply", "route53", "--zone", &zone, "--from", &from],
    );
    let (s4, _) = backup(&e);
    let back: Vec<String> = diff_lines(&e, &endpoint, &s2, &s4);
    assert!(
        back.is_empty(),
        "after the apply the zone is as in {s2}: {back:?}"
    );
}

/// The newest PostgreSQL server binaries installed (`/usr/lib/postgresql/N/bin`).
fn pg_bin() -> std::path::PathBuf {
    let mut v: Vec<(u32, std::path::PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (CI installs it)")
        .flatten()
        .filter_map(|d| {
            let n: u32 = d.file_name().to_str()?.parse().ok()?;
            let bin = d.path().join("bin");
            bin.join("initdb").exists().then_some((n, bin))
        })
        .collect();
    v.sort();
    v.pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// The RDS recipe of docs/aws-sources.md, as the shipped unit runs it: the unit's command
/// line and environment (the endpoint pointed at a local PostgreSQL, the IAM token from a
/// stand-in `aws`), into a repository in the DR region on the S3 emulator; the dump restores
/// byte for byte what pg_dump writes.
#[test]
fn rds_recipe_dumps_into_a_dr_region_repository() {
    let e = Env::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pgbin = pg_bin();
    let pg = e.path("pg");
    let script = root.join("scripts/dump-dataset.sh");
    let dataset = |args: &[&str]| {
        let o = Command::new("bash")
            .arg(&script)
            .args(args)
            .env("PGBIN", &pgbin)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "dump-dataset.sh {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let pgs = pg.to_str().unwrap();
    dataset(&["init", pgs, "3"]);
    dataset(&["start", pgs]);
    // Stopped however the test ends.
    struct Stop<'a>(&'a dyn Fn(&[&str]), &'a str);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            (self.0)(&["stop", self.1]);
        }
    }
    let _stop = Stop(&dataset, pgs);

    let endpoint = emulator_endpoint();
    let bucket = test_bucket("rds-dr");
    let conf = e.path("config.toml");
    fs::write(
        &conf,
        format!(
            "[profiles.rds-dr]\nrepo = \"s3:{bucket}/rds/mydb\"\npassword-file = {pw:?}\n\
             s3-endpoint = \"{endpoint}\"\ns3-region = \"eu-west-1\"\n",
            pw = e.pw.to_str().unwrap()
        ),
    )
    .unwrap();
    let fake = e.path("fake-bin");
    fs::create_dir_all(&fake).unwrap();
    let marker = e.path("aws-called");
    fs::write(
        fake.join("aws"),
        format!(
            "#!/bin/sh\necho \"$@\" > '{}'\necho fake-iam-token\n",
            marker.display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        fake.join("aws"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let unit = fs::read_to_string(root.join("examples/systemd/chunkbak-rds-dr.service")).unwrap();
    let settings: Vec<(String, String)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bin = env!("CARGO_BIN_EXE_chunkbak");
    let base = |c: &mut Command| {
        c.env_clear()
            .env("HOME", e.path("home"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test");
    };
    // The repository, made as an operator would, with the unit's profile.
    let mut c = Command::new(bin);
    base(&mut c);
    c.env("CHUNKBAK_CONFIG", &conf)
        .env("CHUNKBAK_PROFILE", "rds-dr")
        .arg("init")
        .args(FAST_KDF)
        .arg("--allow-weak-kdf");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut ran = 0;
    for (_, line) in settings.iter().filter(|(k, _)| k == "ExecStart") {
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| match w {
                "/usr/local/bin/chunkbak" => bin.to_string(),
                "/usr/local/lib/chunkbak/pg-dump-rds" => root
                    .join("examples/rds/pg-dump-rds")
                    .to_str()
                    .unwrap()
                    .to_string(),
                w => w.to_string(),
            })
            .collect();
        let mut c = Command::new(&words[0]);
        base(&mut c);
        for (_, v) in settings.iter().filter(|(k, _)| k == "Environment") {
            let Some((k, v)) = v.split_once('=') else {
                continue;
            };
            let v = match k {
                "CHUNKBAK_CONFIG" => conf.to_str().unwrap().to_string(),
                "CHUNKBAK_CACHE_DIR" => e.path("cache").to_str().unwrap().to_string(),
                "CHUNKBAK_STATE_DIR" => e.path("state").to_str().unwrap().to_string(),
                "PATH" => format!("{}:{}:{v}", fake.display(), pgbin.display()),
                // The local server: its socket folder, its superuser, the dataset's database,
                // no TLS on a unix socket.
                "PGHOST" => pgs.to_string(),
                "PGUSER" => "postgres".into(),
                "PGDATABASE" => "shop".into(),
                "PGSSLMODE" => "disable".into(),
                "PGSSLROOTCERT" => continue,
                _ => v.to_string(),
            };
            c.env(k, v);
        }
        c.args(&words[1..]);
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        ran += 1;
    }
    assert_eq!(ran, 1);
    let called = fs::read_to_string(&marker).unwrap();
    assert!(
        called.contains(&format!("rds generate-db-auth-token --hostname {pgs} --port 5432 --username postgres --region us-east-1")),
        "{called}"
    );
    // The snapshot holds what pg_dump writes, byte for byte.
    let mut c = Command::new(bin);
    base(&mut c);
    c.env("CHUNKBAK_CONFIG", &conf)
        .env("CHUNKBAK_PROFILE", "rds-dr")
        .args(["dump", "latest:/mydb.sql"]);
    let dumped = c.output().unwrap();
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    let direct = Command::new(pgbin.join("pg_dump"))
        .args(["-h", pgs, "-U", "postgres", "--no-password", "shop"])
        .output()
        .unwrap();
    assert!(direct.status.success());
    assert!(dumped.stdout.len() > 1_000_000, "{}", dumped.stdout.len());
    // pg_dump (since 15.14) brackets its output with `\restrict KEY` / `\unrestrict KEY`, a
    // random key per run: those two lines aside, the bytes are the same.
    let lines = |b: &[u8]| -> Vec<Vec<u8>> {
        b.split(|&c| c == b'\n')
            .filter(|l| !l.starts_with(b"\\restrict ") && !l.starts_with(b"\\unrestrict "))
            .map(<[u8]>::to_vec)
            .collect()
    };
    assert!(
        lines(&dumped.stdout) == lines(&direct.stdout),
        "the snapshot's dump differs from pg_dump's"
    );
}

/// An EC2 query API call to moto without an EC2 client (moto routes by the credential scope
/// and does not check signatures); the response body.
fn moto_ec2(endpoint: &str, body: &str) -> String {
    moto_ec2_in(endpoint, "us-east-1", body)
}

fn moto_ec2_in(endpoint: &str, region: &str, body: &str) -> String {
    use std::io::Read;
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20261206/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
         X-Amz-Date: 20261206T000000Z\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The values of every `<tag>…</tag>` in `xml`.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    xml.split(&format!("<{tag}>"))
        .skip(1)
        .filter_map(|p| p.split(&format!("</{tag}>")).next())
        .map(str::to_string)
        .collect()
}

/// Classic ELBs and ALB/NLB with listeners, a rule and target groups, backed up as documents:
/// a second backup adds nothing, and a changed health check is the one document `diff` names.
#[test]
fn load_balancers_back_up_as_documents() {
    use chunkbak_engine::elb::{sdk_classic, sdk_v2};
    let endpoint = s3_server("moto");
    let elb = chunkbak_engine::elb::Elb::new(&chunkbak_engine::aws::AwsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.clone()),
        static_credentials: Some(("test".into(), "test".into())),
        ..Default::default()
    })
    .unwrap();
    let tag = test_bucket("lb");
    let xml = moto_ec2(&endpoint, "Action=DescribeSubnets&Version=2016-11-15");
    let subnets = xml_values(&xml, "subnetId");
    let vpcs = xml_values(&xml, "vpcId");
    assert!(subnets.len() >= 2, "{xml}");
    let c = elb.classic_client();
    elb.block_on(
        c.create_load_balancer()
            .load_balancer_name(format!("{tag}-classic"))
            .listeners(
                sdk_classic::types::Listener::builder()
                    .protocol("HTTP")
                    .load_balancer_port(80)
                    .instance_protocol("HTTP")
                    .instance_port(8080)
                    .build()
                    .unwrap(),
            )
            .availability_zones("us-east-1a")
            .send(),
    )
    .unwrap();
    let v2 = elb.v2_client();
    let tg = elb
        .block_on(
            v2.create_target_group()
                .name(format!("{tag}-tg"))
                .protocol(sdk_v2::types::ProtocolEnum::Http)
                .port(80)
                .vpc_id(&vpcs[0])
                .health_check_path("/health")
                .send(),
        )
        .unwrap();
    let tg_arn = tg.target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_string();
    let alb = elb
        .block_on(
            v2.create_load_balancer()
                .name(format!("{tag}-alb"))
                .subnets(&subnets[0])
                .subnets(&subnets[1])
                .r#type(sdk_v2::types::LoadBalancerTypeEnum::Application)
                .send(),
        )
        .unwrap();
    let alb_arn = alb.load_balancers()[0]
        .load_balancer_arn()
        .unwrap()
        .to_string();
    let forward = sdk_v2::types::Action::builder()
        .r#type(sdk_v2::types::ActionTypeEnum::Forward)
        .target_group_arn(&tg_arn)
        .build();
    let listener = elb
        .block_on(
            v2.create_listener()
                .load_balancer_arn(&alb_arn)
                .port(80)
                .protocol(sdk_v2::types::ProtocolEnum::Http)
                .default_actions(forward.clone())
                .send(),
        )
        .unwrap();
    let listener_arn = listener.listeners()[0].listener_arn().unwrap().to_string();
    elb.block_on(
        v2.create_rule()
            .listener_arn(&listener_arn)
            .priority(10)
            .conditions(
                sdk_v2::types::RuleCondition::builder()
                    .field("path-pattern")
                    .values("/api/*")
                    .build(),
            )
            .actions(forward)
            .send(),
    )
    .unwrap();
    elb.block_on(
        v2.create_load_balancer()
            .name(format!("{tag}-nlb"))
            .subnets(&subnets[0])
            .r#type(sdk_v2::types::LoadBalancerTypeEnum::Network)
            .send(),
    )
    .unwrap();

    let e = Env::new();
    e.init_small();
    let backup = |e: &Env| {
        let r = run_ebs(
            e,
            &endpoint,
            &e.repo,
            &[
                "--json",
                "backup",
                "--aws-config",
                "elb,elbv2",
                "--aws-region",
                "us-east-1",
            ],
        );
        let s = &r.json("summary")[0];
        (
            s["snapshot_id"].as_str().unwrap()[..8].to_string(),
            s["blobs_added"].as_u64().unwrap(),
        )
    };
    let (s1, _) = backup(&e);
    let region = "/aws/elbv2/us-east-1";
    let doc = |snap: &str, path: &str| -> serde_json::Value {
        let d = run_ebs(&e, &endpoint, &e.repo, &["dump", &format!("{snap}:{path}")]);
        serde_json::from_slice(&d.stdout).unwrap()
    };
    let a = doc(&s1, &format!("{region}/load-balancers/{tag}-alb.json"));
    assert_eq!(a["Type"], "application", "{a}");
    let l = &a["Listeners"][0];
    assert_eq!(l["Port"], 80, "{a}");
    assert_eq!(
        l["DefaultActions"][0]["TargetGroupArn"],
        tg_arn.as_str(),
        "{a}"
    );
    assert!(
        l["Rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["Conditions"][0]["Values"][0] == "/api/*"),
        "{a}"
    );
    let n = doc(&s1, &format!("{region}/load-balancers/{tag}-nlb.json"));
    assert_eq!(n["Type"], "network", "{n}");
    let t = doc(&s1, &format!("{region}/target-groups/{tag}-tg.json"));
    assert_eq!(t["HealthCheck"]["Path"], "/health", "{t}");
    let cl = doc(&s1, &format!("/aws/elb/us-east-1/{tag}-classic.json"));
    assert_eq!(cl["Listeners"][0]["InstancePort"], 8080, "{cl}");

    let (s2, added) = backup(&e);
    assert_eq!(added, 0, "unchanged load balancers add no blob");
    assert!(diff_lines(&e, &endpoint, &s1, &s2).is_empty());
    elb.block_on(
        v2.modify_target_group()
            .target_group_arn(&tg_arn)
            .health_check_path("/healthz")
            .send(),
    )
    .unwrap();
    let (s3, _) = backup(&e);
    let d = diff_lines(&e, &endpoint, &s2, &s3);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with('M') && d[0].contains(&format!("{tag}-tg.json ")),
        "{d:?}"
    );
}

fn elb_in(endpoint: &str, region: &str) -> chunkbak_engine::elb::Elb {
    chunkbak_engine::elb::Elb::new(&chunkbak_engine::aws::AwsConfig {
        region: Some(region.into()),
        endpoint: Some(endpoint.into()),
        static_credentials: Some(("test".into(), "test".into())),
        ..Default::default()
    })
    .unwrap()
}

/// Deletes every load balancer and target group of `elb`'s region.
fn clear_load_balancers(elb: &chunkbak_engine::elb::Elb) {
    let (v2, classic) = (elb.v2_client(), elb.classic_client());
    let lbs = elb.block_on(v2.describe_load_balancers().send()).unwrap();
    for l in lbs.load_balancers() {
        elb.block_on(
            v2.delete_load_balancer()
                .load_balancer_arn(l.load_balancer_arn().unwrap())
                .send(),
        )
        .unwrap();
    }
    let tgs = elb.block_on(v2.describe_target_groups().send()).unwrap();
    for t in tgs.target_groups() {
        elb.block_on(
            v2.delete_target_group()
                .target_group_arn(t.target_group_arn().unwrap())
                .send(),
        )
        .unwrap();
    }
    let cl = elb
        .block_on(classic.describe_load_balancers().send())
        .unwrap();
    for l in cl.load_balancer_descriptions() {
        elb.block_on(
            classic
                .delete_load_balancer()
                .load_balancer_name(l.load_balancer_name().unwrap())
                .send(),
        )
        .unwrap();
    }
}

/// A document as it should read in any region: ids mapped by `map`, target group ARNs by
/// their names, and what a region gives a new resource (ARNs, DNS names, zone names) left out.
fn comparable(
    v: &serde_json::Value,
    map: &serde_json::Value,
    tg_names: &std::collections::BTreeMap<String, String>,
) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Some(n) = tg_names.get(s) {
                Value::String(format!("tg:{n}"))
            } else {
                map.get(s).cloned().unwrap_or_else(|| v.clone())
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| comparable(x, map, tg_names)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "LoadBalancerArn"
                            | "TargetGroupArn"
                            | "DNSName"
                            | "CanonicalHostedZoneId"
                            | "ZoneName"
                            | "AvailabilityZones"
                    ) || (k.as_str() == "AvailabilityZones" && !o.contains_key("Subnets"))
                })
                .map(|(k, x)| (k.clone(), comparable(x, map, tg_names)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Load balancers of one region re-created in another from a snapshot: the plan lists the ids
/// that need a mapping and the apply refuses without one; a dry run changes nothing; the
/// apply creates target groups, load balancers, listeners and rules whose documents, backed up
/// in the new region, read as the originals (ids mapped); a second apply creates nothing.
#[test]
fn load_balancers_recreated_in_another_region() {
    use chunkbak_engine::elb::sdk_v2::types::*;
    let endpoint = s3_server("moto");
    let (from, to) = ("eu-west-1", "eu-central-1");
    let elb = elb_in(&endpoint, from);
    let subnets_of = |region: &str| {
        let xml = moto_ec2_in(
            &endpoint,
            region,
            "Action=DescribeSubnets&Version=2016-11-15",
        );
        let mut s: Vec<(String, String)> = xml_values(&xml, "availabilityZone")
            .into_iter()
            .zip(xml_values(&xml, "subnetId"))
            .collect();
        s.sort();
        (s, xml_values(&xml, "vpcId")[0].clone())
    };
    let default_group = |region: &str| {
        let xml = moto_ec2_in(
            &endpoint,
            region,
            "Action=DescribeSecurityGroups&GroupName.1=default&Version=2016-11-15",
        );
        xml_values(&xml, "groupId")[0].clone()
    };
    // The test owns both regions: what an earlier run left there goes.
    for region in [from, to] {
        clear_load_balancers(&elb_in(&endpoint, region));
    }
    let (src_subnets, src_vpc) = subnets_of(from);
    let (dst_subnets, dst_vpc) = subnets_of(to);
    assert!(src_subnets.len() >= 2 && dst_subnets.len() >= 2);
    let v2 = elb.v2_client();
    let tg = |name: &str, protocol: ProtocolEnum, port: i32| {
        let r = elb
            .block_on(
                v2.create_target_group()
                    .name(name)
                    .protocol(protocol)
                    .port(port)
                    .vpc_id(&src_vpc)
                    .health_check_path("/ready")
                    .tags(Tag::builder().key("team").value("web").build())
                    .send(),
            )
            .unwrap();
        r.target_groups()[0].target_group_arn().unwrap().to_string()
    };
    let web = tg("dr-web", ProtocolEnum::Http, 8080);
    let api = tg("dr-api", ProtocolEnum::Http, 9000);
    let tcp = tg("dr-tcp", ProtocolEnum::Tcp, 5432);
    elb.block_on(
        v2.modify_target_group_attributes()
            .target_group_arn(&web)
            .attributes(
                TargetGroupAttribute::builder()
                    .key("deregistration_delay.timeout_seconds")
                    .value("30")
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let lb = |name: &str, ty: LoadBalancerTypeEnum| {
        let r = elb
            .block_on(
                v2.create_load_balancer()
                    .name(name)
                    .subnets(&src_subnets[0].1)
                    .subnets(&src_subnets[1].1)
                    .r#type(ty)
                    .tags(Tag::builder().key("env").value("prod").build())
                    .send(),
            )
            .unwrap();
        r.load_balancers()[0]
            .load_balancer_arn()
            .unwrap()
            .to_string()
    };
    let alb = lb("dr-alb", LoadBalancerTypeEnum::Application);
    let nlb = lb("dr-nlb", LoadBalancerTypeEnum::Network);
    elb.block_on(
        v2.modify_load_balancer_attributes()
            .load_balancer_arn(&alb)
            .attributes(
                LoadBalancerAttribute::builder()
                    .key("idle_timeout.timeout_seconds")
                    .value("120")
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let forward = |arn: &str| {
        Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(arn)
            .build()
    };
    let listener = |lb: &str, port: i32, protocol: ProtocolEnum, action: Action| {
        let r = elb
            .block_on(
                v2.create_listener()
                    .load_balancer_arn(lb)
                    .port(port)
                    .protocol(protocol)
                    .default_actions(action)
                    .send(),
            )
            .unwrap();
        r.listeners()[0].listener_arn().unwrap().to_string()
    };
    let http = listener(&alb, 80, ProtocolEnum::Http, forward(&web));
    listener(
        &alb,
        8081,
        ProtocolEnum::Http,
        Action::builder()
            .r#type(ActionTypeEnum::Redirect)
            .redirect_config(
                RedirectActionConfig::builder()
                    .protocol("HTTPS")
                    .port("443")
                    .status_code(RedirectActionStatusCodeEnum::Http301)
                    .build(),
            )
            .build(),
    );
    listener(&nlb, 5432, ProtocolEnum::Tcp, forward(&tcp));
    let rule = |prio: i32, cond: RuleCondition, action: Action| {
        elb.block_on(
            v2.create_rule()
                .listener_arn(&http)
                .priority(prio)
                .conditions(cond)
                .actions(action)
                .send(),
        )
        .unwrap();
    };
    rule(
        10,
        RuleCondition::builder()
            .field("path-pattern")
            .values("/api/*")
            .build(),
        forward(&api),
    );
    rule(
        20,
        RuleCondition::builder()
            .field("host-header")
            .values("status.example.com")
            .build(),
        Action::builder()
            .r#type(ActionTypeEnum::FixedResponse)
            .fixed_response_config(
                FixedResponseActionConfig::builder()
                    .status_code("503")
                    .content_type("text/plain")
                    .message_body("down for maintenance")
                    .build(),
            )
            .build(),
    );
    let classic = elb.classic_client();
    elb.block_on(
        classic
            .create_load_balancer()
            .load_balancer_name("dr-classic")
            .listeners(
                chunkbak_engine::elb::sdk_classic::types::Listener::builder()
                    .protocol("HTTP")
                    .load_balancer_port(80)
                    .instance_protocol("HTTP")
                    .instance_port(8080)
                    .build()
                    .unwrap(),
            )
            .subnets(&src_subnets[0].1)
            .send(),
    )
    .unwrap();
    elb.block_on(
        classic
            .configure_health_check()
            .load_balancer_name("dr-classic")
            .health_check(
                chunkbak_engine::elb::sdk_classic::types::HealthCheck::builder()
                    .target("HTTP:8080/ping")
                    .interval(15)
                    .timeout(5)
                    .unhealthy_threshold(3)
                    .healthy_threshold(2)
                    .build()
                    .unwrap(),
            )
            .send(),
    )
    .unwrap();

    let e = Env::new();
    e.init_small();
    let backup = |region: &str| {
        let r = run_ebs(
            &e,
            &endpoint,
            &e.repo,
            &[
                "--json",
                "backup",
                "--aws-config",
                "elb,elbv2",
                "--aws-region",
                region,
            ],
        );
        r.json("summary")[0]["snapshot_id"].as_str().unwrap()[..8].to_string()
    };
    let s1 = backup(from);
    let doc = |snap: &str, path: String| -> serde_json::Value {
        let d = run_ebs(&e, &endpoint, &e.repo, &["dump", &format!("{snap}:{path}")]);
        serde_json::from_slice(&d.stdout).unwrap()
    };
    let apply = |args: &[&str]| {
        let mut c = e.cmd();
        with_ebs(&mut c, &endpoint);
        c.env("CHUNKBAK_REPOSITORY", &e.repo)
            .args(["aws-apply", "elb", "--from", &s1, "--aws-region", to])
            .args(args);
        e.run_cmd(c)
    };

    // Without a mapping: the plan names every id of the source region, and nothing is made.
    let r = apply(&["--apply"]);
    assert_eq!(r.code, 1, "{}\n{}", r.out(), r.stderr);
    for (_, id) in &src_subnets[..2] {
        assert!(r.out().contains(&format!("unmapped {id} (")), "{}", r.out());
    }
    assert!(
        r.out()
            .contains(&format!("unmapped {src_vpc} (VPC of target group")),
        "{}",
        r.out()
    );
    assert!(
        r.stderr.contains("have no mapping for region eu-central-1"),
        "{}",
        r.stderr
    );
    let lbs_in = |region: &str| {
        let e = elb_in(&endpoint, region);
        e.block_on(e.v2_client().describe_load_balancers().send())
            .unwrap()
            .load_balancers()
            .len()
    };
    assert_eq!(lbs_in(to), 0);

    // A map of every id, written as an operator would.
    let mut map = serde_json::Map::new();
    map.insert(src_vpc.clone(), dst_vpc.clone().into());
    // The group a classic ELB in a VPC gets when given none (default_elb_…).
    let classic_doc = doc(&s1, format!("/aws/elb/{from}/dr-classic.json"));
    let group = classic_doc["SecurityGroups"][0].as_str().unwrap();
    map.insert(group.into(), default_group(to).into());
    for ((_, a), (_, b)) in src_subnets.iter().zip(&dst_subnets) {
        map.insert(a.clone(), b.clone().into());
    }
    let map_file = e.path("dr-map.json");
    fs::write(&map_file, serde_json::to_vec(&map).unwrap()).unwrap();
    let map_arg = map_file.to_str().unwrap();

    let r = apply(&["--map", map_arg]);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    let out = r.out();
    for line in [
        "create target group dr-web (HTTP:8080 instance targets)",
        "create load balancer dr-alb (application",
        "create listener dr-alb:80 (HTTP)",
        "create listener dr-alb:8081 (HTTP)",
        "create rule dr-alb:80 priority 10 (path-pattern /api/*)",
        "create rule dr-alb:80 priority 20 (host-header status.example.com)",
        "create listener dr-nlb:5432 (TCP)",
        "create classic load balancer dr-classic (1 listener",
        "plan for eu-central-1 from eu-west-1's documents",
        "nothing changed: run again with --apply",
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
    assert!(!out.contains("unmapped"), "{out}");
    assert_eq!(lbs_in(to), 0, "a plan creates nothing");

    let r = apply(&["--map", map_arg, "--apply", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    let done = &r.json("aws_apply")[0];
    // 3 target groups, 2 load balancers, 3 listeners, 2 rules, 1 classic.
    assert_eq!(done["created"], 11, "{done}");
    assert!(
        done["load_balancers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "dr-alb" && l["dns_name"].as_str().unwrap().contains(to)),
        "{done}"
    );

    // The new region's documents read as the old ones, ids mapped.
    let s2 = backup(to);
    let tg_names = |snap: &str, region: &str| {
        ["dr-web", "dr-api", "dr-tcp"]
            .iter()
            .map(|n| {
                let d = doc(snap, format!("/aws/elbv2/{region}/target-groups/{n}.json"));
                (
                    d["TargetGroupArn"].as_str().unwrap().to_string(),
                    n.to_string(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (old_tgs, new_tgs) = (tg_names(&s1, from), tg_names(&s2, to));
    let none = serde_json::json!({});
    let map = serde_json::Value::Object(map);
    for path in [
        "elbv2/REGION/target-groups/dr-web.json",
        "elbv2/REGION/target-groups/dr-api.json",
        "elbv2/REGION/target-groups/dr-tcp.json",
        "elbv2/REGION/load-balancers/dr-alb.json",
        "elbv2/REGION/load-balancers/dr-nlb.json",
        "elb/REGION/dr-classic.json",
    ] {
        let old = doc(&s1, format!("/aws/{}", path.replace("REGION", from)));
        let new = doc(&s2, format!("/aws/{}", path.replace("REGION", to)));
        assert_eq!(
            comparable(&old, &map, &old_tgs),
            comparable(&new, &none, &new_tgs),
            "{path}"
        );
    }
    let a = doc(&s2, format!("/aws/elbv2/{to}/load-balancers/dr-alb.json"));
    assert_eq!(
        a["Attributes"]["idle_timeout.timeout_seconds"], "120",
        "{a}"
    );
    assert_eq!(
        a["Listeners"][0]["Rules"].as_array().unwrap().len(),
        3,
        "{a}"
    );

    // Everything is there: a second apply creates nothing.
    let r = apply(&["--map", map_arg, "--apply", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.out(), r.stderr);
    assert_eq!(r.json("aws_apply")[0]["created"], 0);
    assert!(r.json("aws_apply_plan")[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["exists"] == true));
}
