//! Faults under backup, prune and restore, through the fault-injecting backend over the
//! in-memory one. A store that dies at any call of a backup or a prune leaves a repository
//! that `check` passes, whose every snapshot restores identical to what was backed up, and
//! where the next run completes. Transient failures and short reads fail the operation with an
//! error that names the object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chunkbak_engine::backend::fault::{FaultBackend, Faults};
use chunkbak_engine::backend::mem::MemBackend;
use chunkbak_engine::backend::{Backend, FileKind};
use chunkbak_engine::chunker::ChunkerParams;
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::ops::backup::{backup, BackupOptions};
use chunkbak_engine::ops::prune::{self, PruneOptions};
use chunkbak_engine::ops::restore::{restore, RestoreOptions};
use chunkbak_engine::progress::NoProgress;
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::{Error, Repository};

/// File name → contents: the reference model of what a snapshot must restore.
type Model = BTreeMap<String, Vec<u8>>;

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    // Half-compressible: runs of a few symbols from a generator.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 64 < 32 {
                b'a' + (x % 4) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

/// Version `v` of a small tree: 24 files, 0-48 KiB; each version changes a third of them.
fn model(v: u64) -> Model {
    (0..24u64)
        .map(|i| {
            let gen = if i % 3 == 0 { v } else { 0 };
            let len = ((i * 7919 + gen * 31) % 48) as usize * 1024 + (i as usize % 5);
            (format!("f{i:02}"), bytes(i * 1000 + gen, len))
        })
        .collect()
}

fn write_model(dir: &Path, m: &Model) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (n, d) in m {
        std::fs::write(dir.join(n), d).unwrap();
    }
}

fn read_model(dir: &Path) -> Model {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn init(b: Arc<dyn Backend>) -> Repository {
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
        },
        data_pack_size: 64 * 1024,
        tree_pack_size: 64 * 1024,
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    Repository::init(b, b"pw", &opts).unwrap()
}

fn open(b: Arc<dyn Backend>) -> chunkbak_engine::Result<Arc<Repository>> {
    let r = Repository::open(b, b"pw")?;
    r.load_index()?;
    Ok(Arc::new(r))
}

fn run_backup(repo: &Arc<Repository>, src: &Path) -> chunkbak_engine::Result<()> {
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        host: "h".into(),
        threads: 2,
        ..Default::default()
    };
    backup(repo, opts, Arc::new(NoProgress)).map(|_| ())
}

/// `check` finds nothing wrong and the snapshots, oldest first, restore to `models` in order
/// (the last model for any snapshot past the end). Returns the number of snapshots.
fn verify(b: Arc<dyn Backend>, src: &Path, models: &[&Model], out: &Path) -> usize {
    let repo = open(b).unwrap();
    let report = chunkbak_engine::ops::check::check(&repo).unwrap();
    assert!(report.problems.is_empty(), "check: {:?}", report.problems);
    let mut snaps = repo.snapshots().unwrap();
    snaps.sort_by_key(|(_, s)| (s.time.secs, s.time.nanos));
    for (i, (id, s)) in snaps.iter().enumerate() {
        let target = out.join(format!("r{i}"));
        let opts = RestoreOptions {
            target: target.clone(),
            subpath: Vec::new(),
            includes: Vec::new(),
            numeric_owner: true,
            threads: 2,
            ..Default::default()
        };
        let r = restore(&repo, s.tree, &opts, &NoProgress).unwrap();
        assert_eq!(r.errors, 0, "snapshot {id}");
        let got = read_model(&target.join(src.strip_prefix("/").unwrap()));
        let want = models[i.min(models.len() - 1)];
        assert!(
            *want == got,
            "snapshot {i} ({id}) does not restore to what was backed up"
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
    snaps.len()
}

fn copy_of(m: &MemBackend) -> Arc<MemBackend> {
    let c = MemBackend::new();
    c.create().unwrap();
    for ((k, n), d) in m.objects() {
        c.set_raw(k, &n, Some(d));
    }
    Arc::new(c)
}

/// `mem` behind a store that dies at call `n`.
fn dying(mem: &Arc<MemBackend>, n: u64) -> Arc<FaultBackend> {
    let faults = Faults {
        dead_after: Some(n),
        ..Default::default()
    };
    Arc::new(FaultBackend::new(mem.clone(), faults))
}

fn is_injected(e: &Error) -> bool {
    format!("{e}").contains("injected fault")
}

/// A backup whose store dies at call n, for every n: the repository stays consistent, the
/// earlier snapshot still restores, a new snapshot exists only if the backup succeeded, and
/// the next backup completes.
#[test]
fn backup_killed_at_every_call_leaves_a_consistent_repository() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let out = d.path().join("out");
    let (v1, v2) = (model(1), model(2));
    let base = Arc::new(MemBackend::new());
    init(base.clone());
    write_model(&src, &v1);
    run_backup(&open(base.clone()).unwrap(), &src).unwrap();
    write_model(&src, &v2);

    // How many calls a backup of v2 makes when nothing fails.
    let probe = Arc::new(FaultBackend::new(copy_of(&base), Faults::default()));
    run_backup(&open(probe.clone()).unwrap(), &src).unwrap();
    let total = probe.calls();
    assert!(total > 10, "{total} calls");

    let mut failed = 0;
    for n in 0..total {
        let mem = copy_of(&base);
        let fb = dying(&mem, n);
        let r = open(fb.clone()).and_then(|repo| run_backup(&repo, &src));
        let snaps = verify(mem.clone(), &src, &[&v1, &v2], &out);
        match r {
            // The store may die after the snapshot is stored (then it is there, and `verify`
            // restored it); before, there is none.
            Err(e) => {
                assert!(is_injected(&e), "call {n}: unexpected error {e}");
                failed += 1;
            }
            Ok(()) => assert_eq!(snaps, 2, "call {n}"),
        }
        // The next run completes, reusing what the dead one stored.
        run_backup(&open(mem.clone()).unwrap(), &src).unwrap();
        assert!(verify(mem, &src, &[&v1, &v2], &out) >= 2);
    }
    assert!(
        failed as u64 >= total / 2,
        "{failed} of {total} runs failed"
    );
}

/// A prune that marks and repacks everything unused; with the index kept on disk (prune's
/// bounded plan) in `index_dir` when it is `Some`.
fn prune_all_with(
    repo: &Repository,
    now: i64,
    index_dir: Option<&Path>,
) -> chunkbak_engine::Result<()> {
    if let Some(d) = index_dir {
        repo.keep_index_on_disk(d, 2);
    }
    let opts = PruneOptions {
        grace: 60,
        max_unused: prune::MaxUnused::Bytes(0),
        now: Some(now),
        ..Default::default()
    };
    let plan = prune::plan(repo, &opts, &NoProgress)?;
    assert_eq!(plan.on_disk(), index_dir.is_some());
    prune::run(repo, &plan, &opts, &NoProgress).map(|_| ())
}

/// Prune (mark, then delete after the grace time) whose store dies at call n, for every n:
/// the kept snapshot restores, `check` passes, and two more prunes finish the job.
#[test]
fn prune_killed_at_every_call_leaves_a_consistent_repository() {
    prune_killed_at_every_call(false);
}

/// The same with the index above the memory allowed: the plan sorts on disk and the new index
/// is written while the old files are read again.
#[test]
fn prune_killed_at_every_call_with_the_index_on_disk() {
    prune_killed_at_every_call(true);
}

fn prune_killed_at_every_call(on_disk: bool) {
    let d = tempfile::tempdir().unwrap();
    let index_dir = d.path().join("index");
    let idx = on_disk.then_some(index_dir.as_path());
    let prune_all = |repo: &Repository, now: i64| prune_all_with(repo, now, idx);
    let src = d.path().join("src");
    let out = d.path().join("out");
    let (v1, v2) = (model(1), model(2));
    let base = Arc::new(MemBackend::new());
    init(base.clone());
    write_model(&src, &v1);
    run_backup(&open(base.clone()).unwrap(), &src).unwrap();
    write_model(&src, &v2);
    run_backup(&open(base.clone()).unwrap(), &src).unwrap();
    // Forget the first snapshot.
    let repo = open(base.clone()).unwrap();
    let mut snaps = repo.snapshots().unwrap();
    snaps.sort_by_key(|(_, s)| (s.time.secs, s.time.nanos));
    base.delete(FileKind::Snapshot, &snaps[0].0.to_hex())
        .unwrap();
    let t0 = snaps[1].1.time.secs + 10;
    let size = |m: &MemBackend| -> usize {
        m.objects()
            .iter()
            .filter(|((k, _), _)| *k == FileKind::Data)
            .map(|(_, d)| d.len())
            .sum()
    };

    // Both prunes, nothing failing: what a complete run does and how many calls it makes.
    let probe_mem = copy_of(&base);
    let probe = Arc::new(FaultBackend::new(probe_mem.clone(), Faults::default()));
    prune_all(&open(probe.clone()).unwrap(), t0).unwrap();
    prune_all(&open(probe.clone()).unwrap(), t0 + 100).unwrap();
    let total = probe.calls();
    let pruned = size(&probe_mem);
    assert!(pruned < size(&base), "the prune frees space");

    for n in (0..total).step_by(2) {
        let mem = copy_of(&base);
        let fb = dying(&mem, n);
        let r = open(fb.clone())
            .and_then(|r| prune_all(&r, t0))
            .and_then(|_| open(fb.clone()))
            .and_then(|r| prune_all(&r, t0 + 100));
        if let Err(e) = &r {
            assert!(is_injected(e), "call {n}: unexpected error {e}");
        }
        assert_eq!(verify(mem.clone(), &src, &[&v2], &out), 1, "call {n}");
        // Two more prunes finish the job, once packs the dead run stored and did not index are
        // old enough not to belong to a backup still running.
        let later = t0 + prune::ORPHAN_MIN_AGE + 100;
        prune_all(&open(mem.clone()).unwrap(), later).unwrap();
        prune_all(&open(mem.clone()).unwrap(), later + 100).unwrap();
        assert_eq!(verify(mem.clone(), &src, &[&v2], &out), 1, "call {n}");
        assert!(size(&mem) <= pruned, "call {n}: {} > {pruned}", size(&mem));
    }
}

/// Backs up `src` over `mem` behind the faults of each seed in `0..seeds`: each backup
/// completes, or fails with an injected fault of the kind `cause` names and an error that names
/// what failed. Returns how many completed and how many failed.
fn backups_over(
    mem: &Arc<MemBackend>,
    src: &Path,
    seeds: u64,
    cause: &str,
    faults: impl Fn(u64) -> Faults,
) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    for seed in 0..seeds {
        let fb = Arc::new(FaultBackend::new(mem.clone(), faults(seed)));
        match open(fb.clone()).and_then(|r| run_backup(&r, src)) {
            Ok(()) => ok += 1,
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(is_injected(&e) && msg.contains(cause), "{msg}");
                assert!(
                    [
                        "/",
                        "config",
                        "repository",
                        "uploads",
                        "snapshots",
                        "index",
                        "keys"
                    ]
                    .iter()
                    .any(|w| msg.contains(w)),
                    "the error names what failed: {msg}"
                );
                failed += 1;
            }
        }
    }
    (ok, failed)
}

/// Transient failures and short reads: a backup either completes or fails naming the object,
/// and a restore that reads a short blob reports the file as not restored.
#[test]
fn transient_failures_and_short_reads_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let v1 = model(1);
    write_model(&src, &v1);
    let mem = Arc::new(MemBackend::new());
    init(mem.clone());
    let (ok, _) = backups_over(&mem, &src, 8, "transient", |seed| Faults {
        fail_one_in: Some(20),
        seed,
        ..Default::default()
    });
    let snaps = verify(mem.clone(), &src, &[&v1], &d.path().join("out"));
    assert_eq!(snaps, ok, "one snapshot per backup that succeeded");
    if ok == 0 {
        run_backup(&open(mem.clone()).unwrap(), &src).unwrap();
    }

    // Every read short: every file with data fails, with the blob's pack named; none is
    // silently wrong.
    let fb = Arc::new(FaultBackend::new(
        mem.clone(),
        Faults {
            short_read_one_in: Some(1),
            ..Default::default()
        },
    ));
    let repo = open(fb).unwrap();
    let (_, s) = repo.snapshots().unwrap().pop().unwrap();
    let target: PathBuf = d.path().join("short");
    let opts = RestoreOptions {
        target: target.clone(),
        subpath: Vec::new(),
        includes: Vec::new(),
        numeric_owner: true,
        threads: 2,
        ..Default::default()
    };
    match restore(&repo, s.tree, &opts, &NoProgress) {
        Ok(r) => {
            let with_data = v1.values().filter(|d| !d.is_empty()).count() as u64;
            assert_eq!(r.errors, with_data, "{:?}", r.warnings);
        }
        Err(e) => assert!(format!("{e}").contains("corrupt"), "{e}"),
    }
}

/// Restore, `check` and `check --read-data` over a store that dies at call n, for every n of
/// a complete run: each completes or fails with the injected error; a restore that reports a
/// file restored wrote it right; a check never reports damage that is not there (every problem
/// it reports names the failed read); and the repository is left exactly as it was.
#[test]
fn restore_and_check_over_a_store_that_dies_at_every_call() {
    use chunkbak_engine::ops::check::{check, read_data, Subset};
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let out = d.path().join("out");
    let v1 = model(1);
    let base = Arc::new(MemBackend::new());
    init(base.clone());
    write_model(&src, &v1);
    run_backup(&open(base.clone()).unwrap(), &src).unwrap();
    let before = base.objects();

    let restore_to = |repo: &Repository, target: &Path| {
        let (_, s) = repo.snapshots()?.pop().expect("one snapshot");
        let opts = RestoreOptions {
            target: target.to_path_buf(),
            numeric_owner: true,
            threads: 2,
            ..Default::default()
        };
        restore(repo, s.tree, &opts, &NoProgress)
    };
    let all = |repo: &Repository, target: &Path| -> chunkbak_engine::Result<Vec<String>> {
        let r = restore_to(repo, target)?;
        let mut problems: Vec<String> = r.warnings.iter().map(|(_, w)| w.clone()).collect();
        problems.extend(check(repo)?.problems);
        problems.extend(read_data(repo, Subset::All, &NoProgress)?.problems);
        Ok(problems)
    };
    // The calls of a complete run.
    let probe = Arc::new(FaultBackend::new(base.clone(), Faults::default()));
    let clean = all(&open(probe.clone()).unwrap(), &out.join("probe")).unwrap();
    assert!(clean.is_empty(), "{clean:?}");
    let total = probe.calls();
    assert!(total > 10, "{total} calls");

    let (mut failed, mut partial) = (0, 0);
    for n in 0..total {
        let fb = dying(&base, n);
        let target = out.join(format!("t{n}"));
        let restored = open(fb.clone()).and_then(|repo| restore_to(&repo, &target));
        match restored {
            Err(e) => {
                assert!(is_injected(&e), "call {n}: restore: unexpected error {e}");
                failed += 1;
            }
            Ok(r) => {
                // Files not named in a warning are complete and right.
                let dir = target.join(src.strip_prefix("/").unwrap());
                let bad: Vec<String> = r
                    .warnings
                    .iter()
                    .map(|(p, w)| {
                        assert!(w.contains("injected fault"), "call {n}: {w}");
                        p.file_name().unwrap().to_string_lossy().into_owned()
                    })
                    .collect();
                partial += u64::from(r.errors > 0);
                for (name, want) in &v1 {
                    if !bad.contains(name) {
                        let got = std::fs::read(dir.join(name)).unwrap();
                        assert!(got == *want, "call {n}: {name} restored wrong");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&target);
        // check, then check --read-data, over a store that dies at call n of them.
        let fb = dying(&base, n);
        let checked = open(fb.clone()).and_then(|repo| {
            let mut p = check(&repo)?.problems;
            p.extend(read_data(&repo, Subset::All, &NoProgress)?.problems);
            Ok(p)
        });
        match checked {
            Err(e) => assert!(is_injected(&e), "call {n}: check: unexpected error {e}"),
            Ok(problems) => {
                for p in problems {
                    assert!(p.contains("injected fault"), "call {n}: false damage: {p}");
                }
            }
        }
        assert!(base.objects() == before, "call {n}: the repository changed");
    }
    assert!(failed > 0, "no restore failed");
    eprintln!("{total} calls: {failed} restores failed, {partial} restored partly");
    verify(base, &src, &[&v1], &out);
}

/// Slow stores and calls that time out: a backup over a store where every call is slow and one
/// in twelve hangs and times out either completes or fails naming the object and the timeout;
/// what it confirmed restores identical.
#[test]
fn slow_and_timed_out_calls_complete_or_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let v1 = model(1);
    write_model(&src, &v1);
    let mem = Arc::new(MemBackend::new());
    init(mem.clone());
    let (ok, timed_out) = backups_over(&mem, &src, 6, "timed out", |seed| Faults {
        delay: Some(std::time::Duration::from_millis(1)),
        timeout_one_in: Some(12),
        timeout: std::time::Duration::from_millis(30),
        seed,
        ..Default::default()
    });
    assert!(timed_out > 0, "no call timed out");
    let snaps = verify(mem.clone(), &src, &[&v1], &d.path().join("out"));
    assert_eq!(snaps, ok, "one snapshot per backup that succeeded");
}
