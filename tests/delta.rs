//! Delta encoding of database dumps, through the real binary: a dump with a day of scattered
//! changes stores a small fraction of the first day; every snapshot restores byte for byte;
//! `check --read-data` verifies deltas through their bases; prune keeps the bases a kept
//! snapshot needs after the snapshot that stored them is gone; unrelated data makes no deltas.

mod common;

use std::fs;
use std::io::Write;

use common::*;
use serde_json::Value;

/// A table dump as `pg_dump` writes it (COPY rows of ids, times, amounts, codes and text) on
/// day `day`: each day after the first updates 1% of the rows in place, deletes 0.2% and
/// appends 1.5%, all scattered by a generator seeded with `seed`.
fn dump(rows: u64, day: u64, seed: u64) -> Vec<u8> {
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

#[test]
fn dumps_with_scattered_changes_are_stored_as_deltas_and_restore_exactly() {
    let e = Env::new();
    e.init_small();
    let src = e.path("src");
    fs::create_dir_all(&src).unwrap();
    let db = src.join("db.sql");
    let days: Vec<Vec<u8>> = (1..=3).map(|d| dump(60_000, d, 1)).collect();
    let mut ids = Vec::new();
    let mut added = Vec::new();
    for (d, data) in days.iter().enumerate() {
        fs::write(&db, data).unwrap();
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
    let streams: Vec<Vec<u8>> = (1..=3).map(|d| dump(40_000, d, 2)).collect();
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
    let c = e.ok(&["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());

    // Forget all but the newest file and stdin snapshots: their deltas' bases were stored by
    // the forgotten first days, and prune must keep them.
    e.ok(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--grace",
        "0s",
        "--max-unused",
        "0%",
    ]);
    e.ok(&["prune", "--grace", "0s", "--max-unused", "0%"]);
    let left = e.ok(&["--json", "snapshots"]).json("snapshot");
    assert_eq!(left.len(), 2, "{left:?}");
    let c = e.ok(&["check", "--read-data"]);
    assert!(c.out().contains(" 0 problems"), "{}", c.out());
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
    fs::write(&f, dump(30_000, 1, 3)).unwrap();
    let s = summary(&e.ok(&["--json", "backup", src.to_str().unwrap()]));
    assert_eq!(s["deltas"], 0, "{s}");
}
