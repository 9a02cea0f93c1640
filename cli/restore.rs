//! `restore` (files, or what archived packs it needs) and `warmup` (those packs made
//! readable ahead of a restore).

use chunkbak_engine::ops::restore::{self, Overwrite, PackGate, RestoreOptions};
use chunkbak_engine::ops::thaw::{self, Thaw};
use serde_json::{json, Value};
use std::os::unix::ffi::OsStrExt;

use crate::args::{self, Global};
use crate::open::open_repo;
use crate::output::{human_bytes, Out};
use crate::snapshots::choose;
use crate::{aws, cold, exit, output, progress, usage};

/// Snapshot paths given on the command line, as the engine takes them.
fn path_bytes(paths: &[std::ffi::OsString]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| p.as_bytes().to_vec()).collect()
}

pub fn cmd_restore(g: &Global, out: &Out, a: &args::RestoreArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (id, s, sub) = choose(
        &repo,
        a.snapshot.as_deref(),
        a.at.as_deref(),
        &a.filter,
        out,
    )?;
    if a.to_ebs_snapshot {
        return aws::restore_to_ebs(out, &repo, &id, &s, &sub, a);
    }
    let Some(target) = a.target.clone() else {
        usage!("give the directory to restore into with --target DIR");
    };
    let s3 = repo.backend().has_archive_classes();
    // --delete works within the paths the snapshot was taken of (a :PATH at or below one of
    // them included), never in the folders above them, which hold what it never saw.
    let delete_within = s.paths.clone();
    let opts = RestoreOptions {
        target,
        subpath: sub,
        delete_within,
        delete_keeps: s.excludes.clone(),
        includes: path_bytes(&a.includes),
        excludes: a.excludes.clone(),
        numeric_owner: a.numeric_owner,
        // Pack ranges are fetched whole, so more writers than cores only contend on the file
        // system (measured: 8 writers on 2 cores restore 5x slower than 2).
        threads: a.threads,
        overwrite: match a.overwrite {
            args::OverwriteArg::Always => Overwrite::Always,
            args::OverwriteArg::IfChanged => Overwrite::IfChanged,
            args::OverwriteArg::Never => Overwrite::Never,
        },
        delete: a.delete,
        dry_run: a.dry_run,
        verify: a.verify,
        no_xattrs: a.no_xattrs,
        no_special: a.no_special,
    };
    let poll = a.thaw.poll()?;
    let max_wait = a.thaw.max_wait()?;
    // Plan first where packs may be archived: what is needed, what is cold, what it costs.
    let mut plan = None;
    if (a.plan || s3) && !a.dry_run {
        let p = thaw::plan(&repo, s.tree, &opts)?;
        cold::print_plan(out, &p, &a.thaw);
        if a.plan {
            return Ok(exit::OK);
        }
        plan = Some(p);
    }
    let mut pending = 0;
    if let Some(p) = plan.as_mut() {
        pending = cold::request_thaws(&repo, p, &a.thaw, out)?;
        if pending > 0 && a.no_wait {
            if !out.quiet && !out.json {
                crate::elog!(
                    "chunkbak: {pending} archived packs are thawing; run the same command again \
                     later (thaws already requested are not requested again)"
                );
            }
            return Ok(exit::COLD);
        }
    }
    if !out.quiet && !out.json {
        crate::elog!(
            "{} snapshot {} to {}",
            if a.dry_run {
                "dry run: nothing is changed; restoring"
            } else {
                "restoring"
            },
            id.short(),
            opts.target.display()
        );
    }
    // A dry run lists every change; a restore with -v too.
    let bar = progress::Bar::new(out, !g.no_progress && !a.dry_run, "restore")
        .with_changes(a.dry_run || out.verbose >= 1);
    let report = cold::wait_reporter(out, &bar);
    let gate = match &plan {
        Some(p) if pending > 0 => Some(Thaw::new(&repo, p, poll, max_wait, &report)),
        _ => None,
    };
    let r = restore::restore_gated(
        &repo,
        s.tree,
        &opts,
        &bar,
        gate.as_ref().map(|g| g as &dyn PackGate),
    );
    bar.finish();
    let r = r?;
    if out.json {
        out.json_line(
            "summary",
            json!({
                "snapshot_id": id.to_hex(), "dry_run": a.dry_run, "files": r.files,
                "dirs": r.dirs, "links": r.links, "hardlinks": r.hardlinks,
                "symlinks": r.links - r.hardlinks, "specials": r.specials, "bytes": r.bytes,
                "files_unchanged": r.files_unchanged, "files_skipped": r.files_skipped,
                "bytes_reused": r.bytes_reused, "deleted": r.deleted, "verified": r.verified,
                "deletions": r.deletions.iter().map(|d| {
                    let mut m = serde_json::Map::new();
                    output::path_json(&mut m, "path", d.path.as_os_str().as_bytes());
                    m.insert("entries".into(), d.entries.into());
                    m.insert("bytes".into(), d.bytes.into());
                    Value::Object(m)
                }).collect::<Vec<_>>(),
                "errors": r.errors,
            }),
        );
    } else {
        // Files as a backup counts them: every name of a hard-linked file is one.
        let mut line = format!(
            "{} {} ({}{}), {}, {}, {}",
            if a.dry_run { "Would write" } else { "Restored" },
            output::count(r.files + r.hardlinks, "file"),
            human_bytes(r.bytes),
            match r.hardlinks {
                0 => String::new(),
                1 => "; 1 of them a hard link".to_string(),
                n => format!("; {n} of them hard links"),
            },
            output::count(r.dirs, "dir"),
            output::count(r.links - r.hardlinks, "symlink"),
            output::count(r.specials, "special file"),
        );
        if r.files_unchanged > 0 || r.bytes_reused > 0 {
            line += &format!(
                "; {} files already right, {} already in place",
                r.files_unchanged,
                human_bytes(r.bytes_reused)
            );
        }
        if r.files_skipped > 0 {
            line += &format!(
                "; {} entries left as they were (--overwrite never)",
                r.files_skipped
            );
        }
        if a.delete {
            line += &format!(
                "; {} {}",
                r.deleted,
                if a.dry_run { "to delete" } else { "deleted" }
            );
        }
        if a.verify && !a.dry_run {
            line += &format!("; {} files read back and verified", r.verified);
        }
        out.line(line);
        if a.delete && a.dry_run && !r.deletions.is_empty() {
            // What --delete would remove, by entry with what it holds, largest first.
            let mut d = r.deletions.clone();
            d.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.path.cmp(&b.path)));
            let n: u64 = d.iter().map(|d| d.entries).sum();
            out.line(format!(
                "--delete would remove {n} {} (entries, file bytes, path):",
                if n == 1 { "entry" } else { "entries" }
            ));
            for x in &d {
                let mut l =
                    format!("  {:>8}  {:>10}  ", x.entries, human_bytes(x.bytes)).into_bytes();
                l.extend_from_slice(x.path.as_os_str().as_bytes());
                out.raw_line(&l);
            }
            if r.deleted > d.len() as u64 {
                out.line(format!("  … and {} more", r.deleted - d.len() as u64));
            }
        }
    }
    output::set_summary(format!(
        "snapshot {} {} {}, {} ({} written, {} already right), {}",
        id.short(),
        if a.dry_run {
            "would restore to"
        } else {
            "restored to"
        },
        opts.target.display(),
        output::count(r.files + r.hardlinks, "file"),
        human_bytes(r.bytes),
        r.files_unchanged,
        output::count(r.errors, "error")
    ));
    if r.errors > 0 {
        crate::elog!(
            "chunkbak: {} entries could not be restored (see the warnings above)",
            r.errors
        );
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}

pub fn cmd_warmup(g: &Global, out: &Out, a: &args::WarmupArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (_, s, sub) = choose(
        &repo,
        a.snapshot.as_deref(),
        a.at.as_deref(),
        &a.filter,
        out,
    )?;
    let opts = RestoreOptions {
        subpath: sub,
        includes: path_bytes(&a.include_paths),
        ..RestoreOptions::default()
    };
    let poll = a.thaw.poll()?;
    let max_wait = a.thaw.max_wait()?;
    let mut plan = thaw::plan(&repo, s.tree, &opts)?;
    cold::print_plan(out, &plan, &a.thaw);
    let pending = cold::request_thaws(&repo, &mut plan, &a.thaw, out)?;
    if pending == 0 {
        out.line("every pack needed is readable");
        return Ok(exit::OK);
    }
    if !a.wait {
        return Ok(exit::COLD);
    }
    let bar = progress::Bar::new(out, false, "warmup");
    let report = cold::wait_reporter(out, &bar);
    let gate = Thaw::new(&repo, &plan, poll, max_wait, &report);
    while gate.pending() > 0 {
        gate.wait()?;
    }
    out.line("every pack needed is readable");
    Ok(exit::OK)
}
