//! Delta encoding of database dumps, through the real binary: a dump with a day of scattered
//! changes stores a small fraction of the first day; every snapshot restores byte for byte;
//! `check --read-data` verifies deltas through their bases; prune keeps the bases a kept
//! snapshot needs after the snapshot that stored them is gone; unrelated data makes no deltas.

mod common;

use std::fs;
use std::io::Write as _;

use common::*;
use serde_json::Value;

fn summary(r: &Run) -> Value {
    r.json("summary")[0].clone()
}

fn stdin_backup(e: &Env, data: &[u8]) -> Value {
    let mut c = e.cmd();
    c.args(["--json", "backup", "--stdin", "--stdin-filename", "db.sql"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = Run {
        code: 0,
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    summary(&r)
}

/// `forget --keep-last 1 --prune`, deleting at once whatever is unused.
fn keep_last_and_prune(e: &Env) -> Run {
    e.ok(&[
        "--json",
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--grace",
        "0s",
        "--max-unused",
        "0%",
    ])
}

/// `check --read-data` decodes every blob, deltas through their bases, and finds no problem.
fn read_data_is_clean(e: &Env) {
    let c = e.ok(&["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
}

#[test]
fn dumps_with_scattered_changes_are_stored_as_deltas_and_restore_exactly() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let db = src.join("db.sql");
    let days: Vec<Vec<u8>> = (1..=3).map(|d| table_dump(60_000, d, 1)).collect();
    let mut ids = Vec::new();
    let mut added = Vec::new();
    // A second dump that changes on day 2 only: after the first days are forgotten, its
    // day-2 deltas share packs with deltas no snapshot uses any more, so prune repacks them.
    let db2 = src.join("db2.sql");
    let other: Vec<Vec<u8>> = (1..=2).map(|d| table_dump(20_000, d, 5)).collect();
    for (d, data) in days.iter().enumerate() {
        fs::write(&db, data).unwrap();
        fs::write(&db2, &other[d.min(1)]).unwrap();
        let s = summary(&e.ok(&["--json", "backup", src.to_str().unwrap()]));
        eprintln!("file day {}: {s}", d + 1);
        added.push(s["bytes_added"].as_u64().unwrap());
        if d > 0 {
            assert!(s["deltas"].as_u64().unwrap() > 0, "{s}");
            assert!(
                s["delta_stored_bytes"].as_u64().unwrap() * 10
                    < s["delta_raw_bytes"].as_u64().unwrap(),
                "{s}"
            );
        }
        ids.push(s["snapshot_id"].as_str().unwrap().to_string());
    }
    // A day of changes adds a small fraction of the first day.
    for d in 1..3 {
        assert!(
            added[d] * 100 < added[0] * 20,
            "day {}: {} added against {} on day 1",
            d + 1,
            added[d],
            added[0]
        );
    }
    // Another table's days through --stdin: the parent snapshot's stream gives the bases.
    let streams: Vec<Vec<u8>> = (1..=3).map(|d| table_dump(40_000, d, 2)).collect();
    let mut stdin_added = Vec::new();
    for data in &streams {
        stdin_added.push(stdin_backup(&e, data));
    }
    assert!(
        stdin_added[1]["deltas"].as_u64().unwrap() > 0,
        "{}",
        stdin_added[1]
    );
    assert!(stdin_added[2]["parent"].is_string(), "{}", stdin_added[2]);
    // Every snapshot restores byte for byte.
    for (id, data) in ids.iter().zip(&days) {
        let r = e.ok(&["dump", &id[..8], db.to_str().unwrap()]);
        assert!(r.stdout == *data, "snapshot {id} differs");
    }
    let r = e.ok(&["dump", "latest:/db.sql"]);
    assert!(r.stdout == streams[2], "the last stdin snapshot differs");
    read_data_is_clean(&e);

    // Forget all but the newest file and stdin snapshots: their deltas' bases were stored by
    // the forgotten first days, and prune must keep them.
    let deltas_of = |id: &str| -> u64 {
        e.ok(&["--json", "stats", id]).json("stats")[0]["delta_chunks"]
            .as_u64()
            .unwrap()
    };
    let before = deltas_of(&ids[2]);
    let r = keep_last_and_prune(&e);
    let repacked: u64 = r
        .json("prune")
        .iter()
        .map(|p| p["blobs_repacked"].as_u64().unwrap())
        .sum();
    assert!(repacked > 0, "prune repacked nothing: {}", r.out());
    e.ok(&["prune", "--grace", "0s", "--max-unused", "0%"]);
    assert_eq!(deltas_of(&ids[2]), before, "a repack stored deltas whole");
    let left = e.ok(&["--json", "snapshots"]).json("snapshot");
    assert_eq!(left.len(), 2, "{left:?}");
    // The kept snapshots' chunks are still deltas (a repack copies them as they are), on
    // bases that no kept snapshot references itself.
    let st = e.ok(&["--json", "stats"]).json("stats")[0].clone();
    assert!(st["delta_chunks"].as_u64().unwrap() > 100, "{st}");
    assert!(st["base_only_chunks"].as_u64().unwrap() > 100, "{st}");
    assert!(
        st["delta_stored_bytes"].as_u64().unwrap() * 10 < st["delta_bytes"].as_u64().unwrap(),
        "{st}"
    );
    read_data_is_clean(&e);
    let t = e.path("restored");
    e.ok(&[
        "restore",
        "latest",
        "--path",
        src.to_str().unwrap(),
        "--target",
        t.to_str().unwrap(),
    ]);
    assert!(
        fs::read(t.join(db.strip_prefix("/").unwrap())).unwrap() == days[2],
        "restore after prune differs"
    );
    assert!(
        fs::read(t.join(db2.strip_prefix("/").unwrap())).unwrap() == other[1],
        "restore after prune differs (repacked deltas)"
    );
    let r = e.ok(&["dump", "latest:/db.sql"]);
    assert!(r.stdout == streams[2], "stdin snapshot after prune differs");
}

/// Data that does not resemble its previous version (replaced by other bytes, or random)
/// makes no deltas and stores as before.
#[test]
fn unrelated_changes_make_no_deltas() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let f = src.join("blob");
    fs::write(&f, splitmix(1, 3_000_000)).unwrap();
    e.ok(&["backup", src.to_str().unwrap()]);
    fs::write(&f, splitmix(2, 3_000_000)).unwrap();
    let s = summary(&e.ok(&["--json", "backup", src.to_str().unwrap()]));
    assert_eq!(s["deltas"], 0, "{s}");
    assert!(s["bytes_added"].as_u64().unwrap() > 3_000_000, "{s}");
    fs::write(&f, table_dump(30_000, 1, 3)).unwrap();
    let s = summary(&e.ok(&["--json", "backup", src.to_str().unwrap()]));
    assert_eq!(s["deltas"], 0, "{s}");
}

/// Day after day, a dump's deltas are made on yesterday's chunks, so chains grow a step a day
/// until they reach the maximum depth (format-spec 6.1: 6); past it, a new delta is made on a
/// shallower base. Every day stays small and every snapshot restores byte for byte.
#[test]
fn daily_chains_stop_at_the_maximum_depth_and_every_day_restores() {
    let e = Env::new();
    e.init_small();
    let days: Vec<Vec<u8>> = (1..=9).map(|d| table_dump(30_000, d, 4)).collect();
    let mut sums = Vec::new();
    for data in &days {
        sums.push(stdin_backup(&e, data));
    }
    let first = sums[0]["bytes_added"].as_u64().unwrap();
    for (d, s) in sums.iter().enumerate().skip(1) {
        assert!(s["deltas"].as_u64().unwrap() > 0, "day {}: {s}", d + 1);
        assert!(
            s["bytes_added"].as_u64().unwrap() * 100 < first * 20,
            "day {}: {s} against {first} on day 1",
            d + 1
        );
    }
    let depth = |snap: &str| -> u64 {
        e.ok(&["--json", "stats", snap]).json("stats")[0]["delta_max_depth"]
            .as_u64()
            .unwrap()
    };
    let ids: Vec<String> = sums
        .iter()
        .map(|s| s["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    // Day 2 deltas on day 1, day 3 on day 2, ...: the chains grow a step a day.
    assert_eq!(depth(&ids[1][..8]), 1);
    assert_eq!(depth(&ids[3][..8]), 3);
    assert_eq!(depth(&ids[6][..8]), 6);
    assert_eq!(depth(&ids[8][..8]), 6, "a chain went past the maximum");
    for (id, data) in ids.iter().zip(&days) {
        let r = e.ok(&["dump", &id[..8], "/db.sql"]);
        assert!(r.stdout == *data, "snapshot {id} differs");
    }
    read_data_is_clean(&e);
    // Only the last day kept: its chains keep every base down to day 1 alive.
    keep_last_and_prune(&e);
    let r = e.ok(&["dump", "latest", "/db.sql"]);
    assert!(r.stdout == days[8], "the last day differs after prune");
    read_data_is_clean(&e);
}

/// `copy` keeps deltas deltas: five days of a dump copied into a repository made with the same
/// chunker parameters (shared ids) and into an unrelated one (re-hashed) take about the
/// source's bytes, not five dumps' worth; chains keep their depth; every day restores byte for
/// byte from both copies and `check --read-data` is clean there. Copying only the last day,
/// whose bases a new target lacks, stores its chunks whole, and it restores too.
#[test]
fn copy_keeps_deltas_deltas() {
    let e = Env::new();
    e.init_small();
    let days: Vec<Vec<u8>> = (1..=5).map(|d| table_dump(30_000, d, 7)).collect();
    for data in &days {
        stdin_backup(&e, data);
    }
    let stats =
        |repo: &std::path::Path| e.ok_at(repo, &["--json", "stats"]).json("stats")[0].clone();
    let copy_to = |to: &std::path::Path, extra: &[&str]| -> Value {
        let mut args = vec!["--json", "copy", "--to", to.to_str().unwrap()];
        args.extend(["--to-password-file", e.pw.to_str().unwrap()]);
        args.extend(extra);
        e.ok(&args).json("copy")[0].clone()
    };
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    let src = stats(&e.repo);
    assert_eq!(num(&src, "delta_max_depth"), 4, "{src}");
    // A new repository with the source's chunker parameters and dedup secret (shared ids).
    let init_copy_of_source = |to: &std::path::Path| {
        let mut init = vec!["init", "--copy-chunker-params", "--from"];
        init.extend([e.repo.to_str().unwrap(), "--from-password-file"]);
        init.push(e.pw.to_str().unwrap());
        init.extend(&INIT_SMALL[..4]);
        e.ok_at(to, &init);
    };
    let same = e.path("same");
    init_copy_of_source(&same);
    let unrelated = e.path("unrelated");
    let mut init = vec!["init"];
    init.extend(INIT_SMALL);
    e.ok_at(&unrelated, &init);
    let ids: Vec<String> = e.ok(&["--json", "snapshots"]).json("snapshot")[..4]
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    for to in [&same, &unrelated] {
        // Four days in one run, the fifth in another: its bases are copies an earlier run
        // made, not blobs of the snapshot copied.
        let first: Vec<&str> = ids.iter().map(String::as_str).collect();
        let sum = copy_to(to, &first);
        assert_eq!(num(&sum, "copied"), 4, "{sum}");
        let fifth = copy_to(to, &[]);
        assert_eq!(num(&fifth, "copied"), 1, "{fifth}");
        assert!(num(&fifth, "deltas_added") > 0, "{fifth}");
        let st = stats(to);
        // The source's delta chunks are deltas in the copy (the unrelated repository
        // re-chunks nothing: the same chunks under other ids).
        assert_eq!(
            num(&sum, "deltas_added") + num(&fifth, "deltas_added"),
            num(&src, "delta_chunks"),
            "{sum} {fifth}"
        );
        assert_eq!(st["delta_chunks"], src["delta_chunks"], "{st}");
        assert_eq!(st["delta_max_depth"], src["delta_max_depth"], "{st}");
        // Five dumps stored whole would take about four times the source.
        assert!(
            num(&st, "repository_bytes") * 4 < num(&src, "repository_bytes") * 5,
            "{st} against the source's {src}"
        );
        eprintln!(
            "copy into {}: {} bytes, the source {}",
            to.display(),
            num(&st, "repository_bytes"),
            num(&src, "repository_bytes")
        );
        let snaps = e.ok_at(to, &["--json", "snapshots"]).json("snapshot");
        assert_eq!(snaps.len(), 5);
        for (s, data) in snaps.iter().zip(&days) {
            let id = s["id"].as_str().unwrap();
            let r = e.ok_at(to, &["dump", &id[..8], "/db.sql"]);
            assert!(
                r.stdout == *data,
                "snapshot {id} of {} differs",
                to.display()
            );
        }
        let c = e.ok_at(to, &["check", "--read-data"]);
        assert!(c.out().contains(" 0 problems"), "{}", c.out());
    }
    // Only the last day, into a new repository: no base there, so no delta.
    let last = e.path("last");
    init_copy_of_source(&last);
    let sum = copy_to(&last, &["latest"]);
    // Whole but for the rare delta on a base the same day holds too.
    assert!(
        num(&sum, "deltas_added") * 8 < num(&src, "delta_chunks"),
        "{sum} {src}"
    );
    let r = e.ok_at(&last, &["dump", "latest", "/db.sql"]);
    assert!(
        r.stdout == days[4],
        "the last day differs in a copy of it alone"
    );
    let c = e.ok_at(&last, &["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
}
