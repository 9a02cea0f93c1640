use super::*;
use std::collections::BTreeMap;

fn id_of(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn rec(i: u64, pack: u32) -> Record {
    Record {
        id: id_of(i),
        pack,
        offset: (i % 1000) as u32,
        length: 100,
        raw_len: 200,
    }
}

fn no_rank(_: &Record) -> u8 {
    0
}

fn build(
    dir: &Path,
    recs: &[Record],
    mem: usize,
    rank: &dyn Fn(&Record) -> u8,
) -> (RunFile, Built) {
    let out = dir.join("index.run");
    let mut b = Builder::new(&dir.join("tmp"), mem).unwrap();
    for r in recs {
        b.push(*r).unwrap();
    }
    let built = b.finish(&out, [7u8; 32], rank).unwrap();
    // No temporary run is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    (RunFile::open(&out).unwrap(), built)
}

/// A sort gives every record in order, records of one id together, the same on every pass,
/// whether it stayed in memory or went to temporary runs (removed with it).
#[test]
fn a_sort_passes_every_record_in_groups_as_often_as_asked() {
    let recs: Vec<Record> = (0..500u64).map(|i| rec(i % 170, (i % 7) as u32)).collect();
    let mut want = recs.clone();
    want.sort();
    for mem in [1, 13, 499, 500, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::new(&dir.path().join("tmp"), mem).unwrap();
        for r in &recs {
            b.push(*r).unwrap();
        }
        let sorted = b.into_sorted().unwrap();
        assert_eq!(sorted.runs() == 0, mem > 500, "mem {mem}");
        for _ in 0..2 {
            let mut m = sorted.merge().unwrap();
            let mut all = Vec::new();
            let mut g = Vec::new();
            let mut groups = 0;
            while m.next_group(&mut g).unwrap() {
                assert!(g.iter().all(|r| r.id == g[0].id));
                assert!(all.last().is_none_or(|l: &Record| l.id < g[0].id));
                all.extend_from_slice(&g);
                groups += 1;
            }
            assert_eq!(all, want, "mem {mem}");
            assert_eq!(groups, 170);
        }
        drop(sorted);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[test]
fn every_record_is_found_and_others_are_not_whatever_the_memory() {
    for (n, mem) in [
        (0u64, 10),
        (1, 10),
        (1023, 100_000),
        (1025, 1024),
        (5000, 333),
        (5000, 100_000),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Record> = (0..n).map(|i| rec(i, (i % 7) as u32)).collect();
        let (f, built) = build(dir.path(), &recs, mem, &no_rank);
        assert_eq!(built.records, n);
        assert_eq!(
            built.runs,
            if n as usize >= mem {
                (n as usize).div_ceil(mem)
            } else {
                0
            }
        );
        assert_eq!(f.len(), n);
        assert_eq!(f.covers(), [7u8; 32]);
        assert_eq!(
            f.resident_bytes(),
            (n as usize).div_ceil(BLOCK_ENTRIES) * FENCE
        );
        for r in &recs {
            assert_eq!(f.get(&r.id).unwrap(), Some(*r), "{n} {mem}");
        }
        for i in n..n + 200 {
            assert_eq!(f.get(&id_of(i)).unwrap(), None);
        }
        assert_eq!(f.get(&[0u8; 32]).unwrap(), None);
        assert_eq!(f.get(&[0xffu8; 32]).unwrap(), None);
        let mut seen = Vec::new();
        f.for_each(|r| {
            seen.push(r.id);
            Ok(())
        })
        .unwrap();
        let mut want: Vec<[u8; 32]> = recs.iter().map(|r| r.id).collect();
        want.sort();
        assert_eq!(seen, want);
    }
}

/// Of several records of one id, the lowest rank wins (then the lowest record), across
/// temporary runs; the others count as disputed when their pack differs.
#[test]
fn duplicates_keep_the_best_ranked_copy() {
    for mem in [2, 3, 1000] {
        let dir = tempfile::tempdir().unwrap();
        // Pack 9 is "marked" (rank 1): its copies lose to any other pack's.
        let rank = |r: &Record| u8::from(r.pack == 9);
        let recs = vec![
            rec(1, 9),
            rec(2, 4),
            rec(1, 5),
            rec(2, 4),
            rec(3, 9),
            rec(1, 6),
        ];
        let (f, built) = build(dir.path(), &recs, mem, &rank);
        assert_eq!(built.records, 3);
        // id 1: kept pack 5; packs 9 and 6 differ. id 2: the same pack twice.
        assert_eq!(built.disputed, 2);
        assert_eq!(f.get(&id_of(1)).unwrap().unwrap().pack, 5);
        assert_eq!(f.get(&id_of(2)).unwrap().unwrap().pack, 4);
        assert_eq!(f.get(&id_of(3)).unwrap().unwrap().pack, 9);
        // The winner of id 1's dispute; no loser of a two-pack dispute (three packs).
        assert_eq!(built.won, [5].into());
        assert!(built.lost.is_empty());
    }
}

/// The disputes' winners and losers: a pack's tree flag (the top bit) does not make it
/// another pack, and the copies a pack loses add up over ids.
#[test]
fn disputes_name_their_packs_without_the_tree_flag() {
    let dir = tempfile::tempdir().unwrap();
    let tree = 1 << 31;
    let recs = vec![
        // One pack holding id 1 as a tree and as data: no dispute.
        rec(1, 3 | tree),
        rec(1, 3),
        // Pack 4 wins ids 2 (trees) and 3 (data) over pack 6.
        rec(2, 4 | tree),
        rec(2, 6 | tree),
        rec(3, 4),
        rec(3, 6),
    ];
    let (_, built) = build(dir.path(), &recs, 1000, &no_rank);
    assert_eq!(built.disputed, 2);
    assert_eq!(built.won, [4].into());
    assert_eq!(built.lost, [(6, 2)].into());
}

/// A damaged cache file is an error naming it, never a wrong answer: a changed byte in a
/// block fails that block's lookups; in the header or the block table, the open.
#[test]
fn damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<Record> = (0..3000).map(|i| rec(i, 1)).collect();
    let (_, _) = build(dir.path(), &recs, 1000, &no_rank);
    let path = dir.path().join("index.run");
    let good = std::fs::read(&path).unwrap();
    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 1;
        std::fs::write(&path, &b).unwrap();
    };
    // A record in block 1.
    flip(HEADER + (BLOCK_ENTRIES + 5) * RECORD + 40);
    let f = RunFile::open(&path).unwrap();
    let in_block_1: [u8; 32] = f.f.entry(1)[..32].try_into().unwrap();
    let e = f.get(&in_block_1).unwrap_err().to_string();
    assert!(
        e.contains("index.run") && e.contains("block 1 damaged"),
        "{e}"
    );
    // Block 0 still answers.
    assert!(f
        .get(&f.f.entry(0)[..32].try_into().unwrap())
        .unwrap()
        .is_some());
    for at in [3, 20, HEADER + 3000 * RECORD + 10, good.len() - 1] {
        flip(at);
        let e = RunFile::open(&path).err().expect("refused").to_string();
        assert!(e.contains("rebuilt"), "{at}: {e}");
    }
    std::fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert!(RunFile::open(&path).is_err());
    std::fs::write(&path, b"short").unwrap();
    assert!(RunFile::open(&path).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    /// Any records, any memory bound: the file answers as a map keeping each id's first
    /// record in order.
    #[test]
    fn answers_as_a_map(ids in proptest::collection::vec((0u64..300, 0u32..5), 0..600), mem in 1usize..200) {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Record> = ids.iter().map(|(i, p)| rec(*i, *p)).collect();
        let (f, built) = build(dir.path(), &recs, mem, &no_rank);
        let mut model: BTreeMap<[u8; 32], Record> = BTreeMap::new();
        for r in &recs {
            model.entry(r.id).and_modify(|m| if r < m { *m = *r }).or_insert(*r);
        }
        proptest::prop_assert_eq!(built.records, model.len() as u64);
        for i in 0..300u64 {
            proptest::prop_assert_eq!(f.get(&id_of(i)).unwrap(), model.get(&id_of(i)).copied());
        }
    }
}

/// Told how many records to expect, the builder deals them into ranges of ids and writes
/// the very same file as a merge of runs: as expected, with fewer than expected, with
/// more (ranges past twice their share are sorted by runs), and with every id in one
/// range (chosen by someone who can pick ids). Nothing temporary is left.
#[test]
fn ranges_write_the_same_file_as_runs() {
    let spread: Vec<Record> = (0..3000u64)
        .map(|i| rec(i % 1900, (i % 5) as u32))
        .collect();
    let mut one_range = spread.clone();
    for r in &mut one_range {
        r.id[0] = 0x17;
    }
    let rank = |r: &Record| u8::from(r.pack == 2);
    for recs in [&spread, &one_range] {
        let plain = tempfile::tempdir().unwrap();
        let (_, want) = build(plain.path(), recs, 100, &rank);
        let want_bytes = std::fs::read(plain.path().join("index.run")).unwrap();
        for (mem, expect) in [(100, 3000), (100, 700), (100, 30_000), (40, 3000)] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = Builder::new(&dir.path().join("tmp"), mem).unwrap();
            b.expect(expect);
            assert!(!b.parts.is_empty());
            for r in recs.iter() {
                b.push(*r).unwrap();
            }
            let out = dir.path().join("index.run");
            let got = b.finish(&out, [7u8; 32], &rank).unwrap();
            assert_eq!((got.records, got.disputed), (want.records, want.disputed));
            assert_eq!(
                std::fs::read(&out).unwrap(),
                want_bytes,
                "mem {mem} expect {expect}"
            );
            let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
    // As many as fit in memory: no ranges.
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::new(dir.path(), 100).unwrap();
    b.expect(100);
    assert!(b.parts.is_empty());
}

/// A failed write to a range's file breaks the builder: every later push and the finish
/// fail (a file of part of a buffer, read as whole records, would be garbage).
#[test]
fn a_failed_write_breaks_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    let mut b = Builder::new(&tmp, 100).unwrap();
    b.expect(3000);
    // The folder replaced by a file: appending to a range's file fails.
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"in the way").unwrap();
    let mut failed = None;
    for i in 0..3000u64 {
        let mut r = rec(i, 1);
        r.id[0] = 0x17;
        if let Err(e) = b.push(r) {
            failed = Some(i);
            assert!(e.to_string().contains("part-"), "{e}");
            break;
        }
    }
    let failed = failed.expect("a push failed");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    // The folder is back, the builder stays broken.
    assert!(b.push(rec(failed + 1, 1)).is_err());
    let out = dir.path().join("index.run");
    assert!(b.finish(&out, [7u8; 32], &no_rank).is_err());
    assert!(!out.exists());
}

/// A sort of ids only gives the same ids in the same groups as a sort of records, with
/// the other fields zero, in memory and in runs (whose files are two thirds as large).
#[test]
fn a_sort_of_ids_only_keeps_the_ids() {
    let recs: Vec<Record> = (0..500u64).map(|i| rec(i % 170, (i % 7) as u32)).collect();
    let mut want: Vec<Record> = recs.iter().map(|r| Record::of_id(r.id)).collect();
    want.sort();
    for mem in [7, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::ids_only(&dir.path().join("tmp"), mem).unwrap();
        for r in &recs {
            b.push(*r).unwrap();
        }
        let sorted = b.into_sorted().unwrap();
        if mem == 7 {
            let bytes: u64 = std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert_eq!(bytes, 500 * 32);
        }
        let mut m = sorted.merge().unwrap();
        let (mut all, mut g, mut groups) = (Vec::new(), Vec::new(), 0);
        while m.next_group(&mut g).unwrap() {
            all.extend_from_slice(&g);
            groups += 1;
        }
        assert_eq!(all, want, "mem {mem}");
        assert_eq!(groups, 170);
    }
}

/// format-spec.md 16's test vector: three records, one block.
#[test]
fn the_spec_vector() {
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<Record> = (1u8..=3)
        .map(|i| Record {
            id: [i; 32],
            pack: u32::from(i) - 1,
            offset: 100 * (u32::from(i) - 1),
            length: 10 * u32::from(i),
            raw_len: 10 * u32::from(i) + 1,
        })
        .collect();
    let out = dir.path().join("index.run");
    let mut b = Builder::new(&dir.path().join("tmp"), 10).unwrap();
    // In reverse: the builder sorts.
    for r in recs.iter().rev() {
        b.push(*r).unwrap();
    }
    b.finish(&out, [0u8; 32], &no_rank).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len(), 296);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::synth::assert_in_spec(&hex, "16 run file vector");
    let f = RunFile::open(&out).unwrap();
    assert_eq!(f.get(&[2; 32]).unwrap(), Some(recs[1]));
}

/// A build of distinct records writes, of each id, its lowest record and the lowest that
/// differs from it (no more, however often a record repeats), and `with_prefix` finds the
/// records whose id begins with a prefix: across a block's end, at the file's start and
/// end, at most as many as asked, none for a prefix no id has.
#[test]
fn distinct_records_and_the_records_of_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::distinct(&dir.path().join("tmp"), 100).unwrap();
    // Ids `0x10, n / 1000, n` (u16): 1,030 records of prefix 0x10, whose prefix `10 01`
    // (1,000 to 1,029) crosses the first block's end (1,024 records); prefix 0x20 holds one
    // id given three ways, one of them five times; prefix 0x30 two ids.
    let with = |p: u8, n: u16, pack: u32| {
        let mut id = [0u8; 32];
        id[0] = p;
        id[1] = (n / 1000) as u8;
        id[2..4].copy_from_slice(&n.to_be_bytes());
        Record {
            id,
            pack,
            offset: 0,
            length: 0,
            raw_len: 0,
        }
    };
    for n in (0..1030).rev() {
        b.push(with(0x10, n, 1)).unwrap();
    }
    for pack in [9, 3, 3, 3, 3, 3, 7] {
        b.push(with(0x20, 0, pack)).unwrap();
    }
    b.push(with(0x30, 1, 1)).unwrap();
    b.push(with(0x30, 0, 1)).unwrap();
    let out = dir.path().join("d.run");
    let built = b.finish(&out, [0; 32], &no_rank).unwrap();
    assert_eq!(built.records, 1030 + 2 + 2);
    let f = RunFile::open(&out).unwrap();
    assert_eq!(f.len(), 1034);
    let packs = |v: Vec<Record>| v.iter().map(|r| r.pack).collect::<Vec<_>>();
    assert_eq!(packs(f.with_prefix(&[0x20], 5).unwrap()), vec![3, 7]);
    assert_eq!(f.with_prefix(&[0x10], 2000).unwrap().len(), 1030);
    assert_eq!(
        f.with_prefix(&[0x10, 0x01], 100).unwrap().len(),
        30,
        "across the end"
    );
    assert_eq!(f.with_prefix(&[0x10, 0x01], 5).unwrap().len(), 5);
    let one = |p: &[u8]| f.with_prefix(p, 10).unwrap().len();
    assert_eq!(one(&[0x10, 0x00, 0x03, 0xe7]), 1, "999");
    assert_eq!(
        one(&[0x10, 0x01, 0x03, 0xff]),
        1,
        "1,023: the first block's last"
    );
    assert_eq!(
        one(&[0x10, 0x01, 0x04, 0x00]),
        1,
        "1,024: the second block's first"
    );
    assert_eq!(one(&[0x10, 0x00, 0x00, 0x00]), 1, "the file's first");
    assert_eq!(f.with_prefix(&[0x10], 3).unwrap().len(), 3);
    assert_eq!(f.with_prefix(&[0x30], 10).unwrap().len(), 2);
    assert!(f.with_prefix(&[0x15], 10).unwrap().is_empty());
    assert!(f.with_prefix(&[0x05], 10).unwrap().is_empty());
    assert!(f.with_prefix(&[0x40], 10).unwrap().is_empty());
}
