//! Maintenance commands: forget, prune, lock, repair.

use serde_json::json;

use chunkbak_engine::ops::forget::{self, GroupBy, Policy};
use chunkbak_engine::ops::prune::{self, MaxUnused, PruneOptions, PrunePlan, Tally};
use chunkbak_engine::ops::{repair, retention};
use chunkbak_engine::timeparse::format_time;
use chunkbak_engine::{timeparse, Id, Repository};

use crate::args::{ForgetArgs, LockCommand, PruneArgs, PruneOpts, RepairCommand};
use crate::open::open_repo;
use crate::output::{human_bytes, Out};
use crate::snapshots::{filter_of, local_time};
use crate::{exit, progress, Global};

/// Below this grace period, the safety of concurrent backups rests on short runs: warned about.
const SHORT_GRACE: i64 = 3600;

fn prune_options(o: &PruneOpts, out: &Out) -> anyhow::Result<PruneOptions> {
    let grace = timeparse::parse_duration(&o.grace)?.as_secs() as i64;
    if o.now {
        let msg = "--now: unused packs are deleted in this run, without a grace period; a \
                   backup or copy running now on any host may commit a snapshot whose data is \
                   gone (check finds it; the next backup stores it again)";
        if out.json {
            out.json_line("warning", serde_json::json!({ "message": msg }));
        } else if !out.quiet {
            crate::elog!("warning: {msg}");
        }
    } else if grace < SHORT_GRACE {
        let msg = format!(
            "--grace {} is short: a backup, copy or restore running meanwhile is safe only if it \
             commits within half of it after its last look at the index (format-spec.md 12); \
             use at least 1h when other hosts may be writing",
            o.grace
        );
        if out.json {
            out.json_line("warning", serde_json::json!({ "message": msg }));
        } else if !out.quiet {
            crate::elog!("warning: {msg}");
        }
    }
    let max_unused: MaxUnused = o
        .max_unused
        .parse()
        .map_err(|e: String| crate::Usage(format!("--max-unused {e}")))?;
    let max_repack = o
        .max_repack
        .as_deref()
        .map(timeparse::parse_size)
        .transpose()?;
    Ok(PruneOptions {
        grace,
        max_unused,
        max_repack,
        ignore_min_duration: o.ignore_min_duration,
        now: None,
        delete_now: o.now,
        ..PruneOptions::default()
    })
}

pub fn cmd_forget(g: &Global, out: &Out, a: &ForgetArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    let within = a
        .keep_within
        .as_deref()
        .map(|d| timeparse::parse_duration(d).map(|d| d.as_secs() as i64))
        .transpose()?;
    let policy = Policy {
        last: a.keep_last.unwrap_or(0),
        hourly: a.keep_hourly.unwrap_or(0),
        daily: a.keep_daily.unwrap_or(0),
        weekly: a.keep_weekly.unwrap_or(0),
        monthly: a.keep_monthly.unwrap_or(0),
        yearly: a.keep_yearly.unwrap_or(0),
        within,
        tags: a
            .keep_tag
            .iter()
            .map(|t| t.split(',').map(str::to_string).collect())
            .collect(),
    };
    let group_by: GroupBy = a
        .group_by
        .parse()
        .map_err(|e: String| crate::Usage(format!("--group-by: {e}")))?;
    let prune_opts = prune_options(&a.prune_opts, out)?;
    let snaps = repo.snapshots()?;
    let filter = filter_of(&a.filter);
    let mut remove: Vec<Id> = Vec::new();
    for p in &a.ids {
        remove.push(chunkbak_engine::ops::select::find_id(&snaps, p).map(|i| snaps[i].0)?);
    }
    if policy.is_empty() && remove.is_empty() {
        crate::usage!(
            "no policy given: say what to keep (--keep-last, --keep-daily, --keep-within 90d, \
             ...) or name the snapshots to remove"
        );
    }
    let chosen: Vec<(Id, chunkbak_engine::format::snapshot::Snapshot)> = snaps
        .iter()
        .filter(|(_, s)| filter.matches(s))
        .cloned()
        .collect();
    let tz = jiff::tz::TimeZone::system();
    let groups = if policy.is_empty() {
        Vec::new()
    } else {
        forget::apply(&chosen, &policy, group_by, &tz, &crate::clock_now())?
    };
    let time_of = |id: &Id| {
        snaps
            .iter()
            .find(|s| s.0 == *id)
            .map(|s| local_time(&s.1))
            .unwrap_or_default()
    };
    // JSON carries RFC 3339 times, as `snapshots --json` does.
    let rfc3339_of = |id: &Id| {
        snaps
            .iter()
            .find(|s| s.0 == *id)
            .map(|s| chunkbak_engine::ops::select::timestamp_of(s.1.time).to_string())
            .unwrap_or_default()
    };
    for grp in &groups {
        let mut what = Vec::new();
        if let Some(h) = &grp.key.host {
            what.push(format!("host {h}"));
        }
        if let Some(p) = &grp.key.paths {
            let p: Vec<String> = p
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            what.push(format!("paths {}", p.join(" ")));
        }
        if let Some(t) = &grp.key.tags {
            what.push(format!("tags [{}]", t.join(",")));
        }
        if out.json {
            let d: Vec<serde_json::Value> = grp
                .decisions
                .iter()
                .map(|d| json!({"id": d.id.to_hex(), "time": rfc3339_of(&d.id), "keep": d.keep, "reasons": d.reasons}))
                .collect();
            out.json_line(
                "forget_group",
                json!({"host": grp.key.host, "paths": grp.key.paths.as_ref().map(|p| p.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>()), "tags": grp.key.tags, "snapshots": d, "dry_run": a.dry_run}),
            );
        } else {
            let kept = grp.decisions.iter().filter(|d| d.keep).count();
            out.line(format!(
                "{}: keep {kept}, remove {}",
                if what.is_empty() {
                    "all snapshots".to_string()
                } else {
                    what.join(", ")
                },
                grp.decisions.len() - kept
            ));
            for d in &grp.decisions {
                out.line(format!(
                    "  {} {} {}  {}",
                    if d.keep { "keep  " } else { "remove" },
                    d.id.short(),
                    time_of(&d.id),
                    d.reasons.join(", ")
                ));
            }
        }
        remove.extend(grp.decisions.iter().filter(|d| !d.keep).map(|d| d.id));
    }
    remove.sort();
    remove.dedup();
    if a.dry_run {
        out.line(format!(
            "dry run: {} snapshots would be removed",
            remove.len()
        ));
        return Ok(exit::OK);
    }
    crate::open::ensure_append_only(g, out, &repo)?;
    let r = forget::remove(&repo, &remove)?;
    let n = r.removed;
    if out.json {
        out.json_line(
            "forget",
            json!({"removed": remove.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                   "locked": r.locked.iter().map(|(id, until)| json!({
                       "id": id.to_hex(), "until": format_time(*until)})).collect::<Vec<_>>()}),
        );
    } else {
        out.line(format!("removed {n} snapshots"));
        if let Some(last) = r.locked.iter().map(|l| l.1).max() {
            out.line(format!(
                "  {} of them S3 Object Lock still retains (until {} at the latest): hidden \
                 behind a delete marker, no command lists them; their stored copies stay until \
                 their retention ends, and a prune after that deletes what only they used",
                r.locked.len(),
                format_time(last)
            ));
        }
    }
    let kept: usize = groups
        .iter()
        .map(|g| g.decisions.iter().filter(|d| d.keep).count())
        .sum();
    crate::output::set_summary(format!("removed {n} snapshots, kept {kept}"));
    if a.prune {
        return run_prune(g, out, &repo, &prune_opts, false);
    }
    Ok(exit::OK)
}

pub fn cmd_prune(g: &Global, out: &Out, a: &PruneArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    let opts = prune_options(&a.opts, out)?;
    run_prune(g, out, &repo, &opts, a.dry_run)
}

/// A time (unix seconds) in the local zone, to the minute.
fn local_minute(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|_| format!("@{t}"))
}

fn tally(t: Tally) -> String {
    format!(
        "{} pack{}, {}",
        t.packs,
        if t.packs == 1 { "" } else { "s" },
        human_bytes(t.bytes)
    )
}

fn tally_json(t: Tally) -> serde_json::Value {
    json!({"packs": t.packs, "bytes": t.bytes})
}

fn print_plan(out: &Out, p: &PrunePlan, opts: &PruneOptions) {
    if out.json {
        out.json_line(
            "prune_plan",
            json!({
                "snapshots": p.snapshots, "used_blobs": p.used_blobs, "index_files": p.index_files,
                "total": tally_json(p.total), "used_bytes": p.used_bytes,
                "kept": tally_json(p.kept), "kept_unused": p.kept_unused,
                "mark": tally_json(p.mark), "revive": tally_json(p.revive),
                "delete": tally_json(p.delete), "waiting": tally_json(p.waiting),
                "min_duration_held": tally_json(p.min_duration_held),
                "early_deletion_usd": p.early_deletion_usd,
                "cold_partly_used": tally_json(p.cold_partly_used),
                "orphans": tally_json(p.orphans), "orphans_young": tally_json(p.orphans_young),
                "repack": tally_json(p.repack), "repack_download": p.repack_download,
                "repack_upload": p.repack_upload, "unused_after": p.unused_after,
                "missing_unused": tally_json(p.missing_unused),
                "requests": {"GET": p.requests_get, "PUT": p.requests_put, "DELETE": p.requests_delete},
                "grace_seconds": opts.grace,
                "claim_reads": p.claim_reads, "claims_refuted": p.claims_refuted,
                "claims_unverified": p.claims_unverified,
                "locked": locked_json(&p.locked), "lock_heads": p.lock_heads,
                "orphans_locked": locked_json(&p.orphans_locked),
                "frees_later": p.frees_later().map(|((t1, a), (t2, b))| json!({
                    "first": {"after": format_time(t1), "packs": a.packs, "bytes": a.bytes},
                    "all": {"after": format_time(t2), "packs": b.packs, "bytes": b.bytes},
                })),
                "delete_now": opts.delete_now,
                "planned_on_disk": p.on_disk(),
            }),
        );
        return;
    }
    for m in &p.claims_refuted {
        crate::open::warn(out, m);
    }
    for m in &p.claims_unverified {
        crate::open::warn(
            out,
            &format!("{m}: its used blobs are kept wherever they are claimed"),
        );
    }
    if p.claim_reads > 0 {
        out.line(format!(
            "checked the claims of disputed packs against their headers ({} ranged GETs): {} \
             did not hold",
            p.claim_reads,
            p.claims_refuted.len()
        ));
    }
    let when = local_minute;
    if p.on_disk() {
        out.line("planned by sorting on disk (the index is too large to plan within --memory)");
    }
    out.line(format!(
        "{} snapshots use {} blobs; the index holds {}:",
        p.snapshots,
        p.used_blobs,
        tally(p.total),
    ));
    out.line(format!(
        "  kept:               {} ({} used, {} unused)",
        tally(p.kept),
        human_bytes(p.kept.bytes.saturating_sub(p.kept_unused)),
        human_bytes(p.kept_unused)
    ));
    if p.revive.packs > 0 {
        out.line(format!(
            "    of them revived:  {} (were marked, a newer snapshot uses them)",
            tally(p.revive)
        ));
    }
    let fate = if opts.delete_now {
        "deleted now".to_string()
    } else {
        format!("deletable by a prune after {}", when(p.now + opts.grace))
    };
    // Each pack of the index is on one line; lines of no pack are left out.
    if p.repack.packs > 0 {
        out.line(format!(
            "  repack:             {} (download {}, upload {}; {fate})",
            tally(p.repack),
            human_bytes(p.repack_download),
            human_bytes(p.repack_upload)
        ));
    }
    if p.mark.packs > 0 {
        out.line(format!(
            "  mark for deletion:  {} (unused; {fate})",
            tally(p.mark)
        ));
    }
    if p.waiting.packs > 0 {
        out.line(format!(
            "  in grace period:    {} (marked earlier, still unused)",
            tally(p.waiting)
        ));
    }
    if p.delete.packs > 0 {
        out.line(format!(
            "  delete now:         {} ({})",
            tally(p.delete),
            if opts.delete_now {
                "unused, --now"
            } else {
                "marked, grace period over, still unused"
            }
        ));
    }
    if p.min_duration_held.packs > 0 {
        out.line(format!(
            "  held for the minimum storage duration: {}: deleting them now would cost about \
             ${:.2} (--ignore-min-duration)",
            tally(p.min_duration_held),
            p.early_deletion_usd
        ));
    }
    if !p.locked.is_empty() {
        out.line(format!(
            "  locked:             {} ({}; {} HEAD requests)",
            tally(Tally {
                packs: p.locked.packs,
                bytes: p.locked.bytes
            }),
            locked_text(&p.locked),
            p.lock_heads
        ));
    }
    if p.cold_partly_used.packs > 0 {
        out.line(format!(
            "    of the kept, archived and partly used: {} (never downloaded to repack)",
            tally(p.cold_partly_used)
        ));
    }
    if p.missing_unused.packs > 0 {
        out.line(format!(
            "gone from the store, unused: {} (dropped from the index)",
            tally(p.missing_unused)
        ));
    }
    if p.orphans.packs + p.orphans_young.packs + p.orphans_locked.packs > 0 {
        let mut line = format!(
            "not in the index: {} deleted, {} too young to judge (a backup may be writing them)",
            tally(p.orphans),
            tally(p.orphans_young)
        );
        if !p.orphans_locked.is_empty() {
            line += &format!(
                ", {} locked ({})",
                tally(Tally {
                    packs: p.orphans_locked.packs,
                    bytes: p.orphans_locked.bytes
                }),
                locked_text(&p.orphans_locked)
            );
        }
        out.line(line);
    }
    if let Some(((t1, first), (t2, all))) = p.frees_later() {
        if t1 == t2 {
            out.line(format!(
                "later: a prune after {} frees {}",
                when(t1),
                tally(all)
            ));
        } else {
            out.line(format!(
                "later: a prune after {} frees {}; one after {} frees all {}",
                when(t1),
                tally(first),
                when(t2),
                tally(all)
            ));
        }
    }
    out.line(format!(
        "unused space left in kept packs: {}; requests: {} GET, {} PUT, {} DELETE",
        human_bytes(p.unused_after),
        p.requests_get,
        p.requests_put,
        p.requests_delete
    ));
}

fn run_prune(
    g: &Global,
    out: &Out,
    repo: &Repository,
    opts: &PruneOptions,
    dry_run: bool,
) -> anyhow::Result<i32> {
    let bar = progress::Bar::new(out, !g.no_progress && !dry_run, "prune");
    let plan = prune::plan(repo, opts, &bar)?;
    bar.finish();
    print_plan(out, &plan, opts);
    if dry_run {
        out.line("dry run: nothing changed");
        return Ok(exit::OK);
    }
    crate::open::ensure_append_only(g, out, repo)?;
    let bar = progress::Bar::new(out, !g.no_progress, "prune").unit("packs");
    let r = prune::run(repo, &plan, opts, &bar)?;
    bar.finish();
    if out.json {
        out.json_line(
            "prune",
            json!({"packs_written": r.packs_written, "blobs_repacked": r.blobs_repacked,
                   "packs_deleted": r.packs_deleted, "bytes_deleted": r.bytes_deleted,
                   "index_files_written": r.index_files_written,
                   "index_files_deleted": r.index_files_deleted,
                   "index_files_kept": r.index_files_kept,
                   "locked": locked_json(&r.locked),
                   "hidden": {"deleted": r.hidden.deleted, "locked": r.hidden.locked,
                              "last_until": r.hidden.last_until.map(format_time)},
                   "retention": r.retention.as_ref().map(extension_json)}),
        );
    } else {
        out.line(format!(
            "pruned: {} packs deleted ({}), {} blobs repacked into {} packs, {} index files \
             replaced by {} ({} left as they were)",
            r.packs_deleted,
            human_bytes(r.bytes_deleted),
            r.blobs_repacked,
            r.packs_written,
            r.index_files_deleted,
            r.index_files_written,
            r.index_files_kept
        ));
        if !r.locked.is_empty() {
            out.line(format!(
                "  not deleted, S3 Object Lock retains them: {} packs ({}), {} superseded \
                 index files ({})",
                r.locked.packs,
                human_bytes(r.locked.bytes),
                r.locked.index_files,
                locked_text(&r.locked)
            ));
        }
        if r.hidden.deleted + r.hidden.locked > 0 {
            out.line(format!(
                "  forgotten snapshots and removed keys: {} stored versions deleted, {} still \
                 retained{}",
                r.hidden.deleted,
                r.hidden.locked,
                r.hidden
                    .last_until
                    .map(|t| format!(" (until {} at the latest)", format_time(t)))
                    .unwrap_or_default()
            ));
        }
        if let Some(e) = &r.retention {
            print_extension(out, e);
        }
    }
    let before = crate::output::take_summary()
        .map(|s| s + ", ")
        .unwrap_or_default();
    crate::output::set_summary(format!(
        "{before}{} packs deleted ({}), {} blobs repacked",
        r.packs_deleted,
        human_bytes(r.bytes_deleted),
        r.blobs_repacked
    ));
    Ok(exit::OK)
}

fn locked_text(l: &prune::Locked) -> String {
    match (l.first_until, l.last_until) {
        (Some(a), Some(b)) if a == b => format!("deletable after {}", format_time(a)),
        (Some(a), Some(b)) => format!("deletable from {} to {}", format_time(a), format_time(b)),
        _ => String::new(),
    }
}

fn locked_json(l: &prune::Locked) -> serde_json::Value {
    json!({"packs": l.packs, "bytes": l.bytes, "index_files": l.index_files,
           "first_until": l.first_until.map(format_time),
           "last_until": l.last_until.map(format_time)})
}

fn extension_json(e: &retention::Extension) -> serde_json::Value {
    json!({"until": format_time(e.until), "renew_before": format_time(e.renew_before),
           "objects": e.objects, "packs": e.packs, "extended": e.extended,
           "retained": e.retained, "gone": e.gone, "unprotected": e.unprotected,
           "requests": {"HEAD": e.heads, "PUT": e.puts}})
}

fn print_extension(out: &Out, e: &retention::Extension) {
    out.line(format!(
        "Object Lock: {} referenced objects ({} packs): {} retained until {}, {} already \
         retained past {}{}; requests: {} HEAD, {} PUT",
        e.objects,
        e.packs,
        e.extended,
        format_time(e.until),
        e.retained,
        format_time(e.renew_before),
        if e.gone > 0 {
            format!(", {} gone meanwhile", e.gone)
        } else {
            String::new()
        },
        e.heads,
        e.puts
    ));
    if e.unprotected > 0 {
        crate::open::warn(
            out,
            &format!(
                "{} referenced objects were no longer retained (their lock had ended): run \
                 `chunkbak prune` or `chunkbak lock extend` more often than every half \
                 retention period",
                e.unprotected
            ),
        );
    }
}

/// `lock extend`: renews the retention of everything the snapshots reference.
pub fn cmd_lock(g: &Global, out: &Out, c: &LockCommand) -> anyhow::Result<i32> {
    let LockCommand::Extend { days } = c;
    let repo = open_repo(g, out)?;
    if repo.config().object_lock.is_none() {
        anyhow::bail!(
            "{} has no Object Lock: it is set when the repository is created (`chunkbak init \
             --object-lock-days N` on a bucket with Object Lock enabled)",
            repo.backend().location()
        );
    }
    crate::open::ensure_append_only(g, out, &repo)?;
    let bar = progress::Bar::new(out, !g.no_progress, "lock").unit("objects");
    let plan = prune::plan(&repo, &PruneOptions::default(), &bar)?;
    let targets = plan.retention_targets(&repo, None)?;
    chunkbak_engine::progress::Progress::message(&bar, "extending retention");
    let e = retention::extend(
        &repo,
        &targets,
        *days,
        jiff::Timestamp::now().as_second(),
        &bar,
    )?;
    bar.finish();
    if out.json {
        out.json_line("lock_extend", extension_json(&e));
    } else {
        print_extension(out, &e);
    }
    crate::output::set_summary(format!(
        "{} objects retained until {}",
        e.extended,
        format_time(e.until)
    ));
    Ok(exit::OK)
}

pub fn cmd_repair(g: &Global, out: &Out, c: &RepairCommand) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    crate::open::ensure_append_only(g, out, &repo)?;
    match c {
        RepairCommand::Index { read_all_packs } => {
            let bar = progress::Bar::new(out, !g.no_progress, "repair").unit("packs");
            let r = repair::repair_index(&repo, *read_all_packs, &bar)?;
            bar.finish();
            for m in &r.messages {
                crate::elog!("{m}");
            }
            if out.json {
                out.json_line(
                    "repair_index",
                    json!({"packs_kept": r.packs_kept, "packs_added": r.packs_added,
                           "packs_damaged": r.packs_damaged, "blobs_salvaged": r.blobs_salvaged,
                           "blobs_lost": r.blobs_lost, "packs_missing": r.packs_missing,
                           "index_files_unreadable": r.index_files_unreadable, "claims_dropped": r.claims_dropped,
                           "messages": r.messages}),
                );
            } else {
                out.line(format!(
                    "index rebuilt: {} packs kept, {} added, {} damaged ({} blobs salvaged, {} \
                     lost), {} missing",
                    r.packs_kept,
                    r.packs_added,
                    r.packs_damaged,
                    r.blobs_salvaged,
                    r.blobs_lost,
                    r.packs_missing
                ));
                if r.blobs_lost > 0 || r.packs_missing > 0 {
                    out.line("run `chunkbak repair snapshots` to mark the files that lost data");
                }
            }
            Ok(exit::OK)
        }
        RepairCommand::Snapshots { dry_run } => {
            repo.load_index()?;
            let bar = progress::Bar::new(out, false, "repair");
            let r = repair::repair_snapshots(&repo, *dry_run, &bar)?;
            for (path, why) in &r.unreadable {
                if out.json {
                    out.json_line(
                        "unreadable",
                        json!({"object": path, "error": why, "removed": !dry_run}),
                    );
                } else if *dry_run {
                    out.line(format!("{path} cannot be read and would be removed: {why}"));
                } else {
                    out.line(format!("{path} cannot be read and was removed: {why}"));
                }
            }
            for (sid, p) in &r.damaged {
                if out.json {
                    out.json_line("damaged", json!({"snapshot": sid.to_hex(), "path": p}));
                } else {
                    out.line(format!("snapshot {}: {p}", sid.short()));
                }
            }
            for (old, new) in &r.rewritten {
                if out.json {
                    out.json_line(
                        "repaired",
                        json!({"snapshot": old.to_hex(), "new": new.map(|n| n.to_hex()), "dry_run": dry_run}),
                    );
                } else {
                    match new {
                        Some(n) => out.line(format!(
                            "snapshot {} rewritten as {} (tag repaired)",
                            old.short(),
                            n.short()
                        )),
                        None => out.line(format!("snapshot {} would be rewritten", old.short())),
                    }
                }
            }
            if !out.json {
                out.line(format!(
                    "{} snapshots checked, {} {}",
                    r.snapshots_checked,
                    r.rewritten.len(),
                    if *dry_run {
                        "would be rewritten"
                    } else {
                        "rewritten"
                    }
                ));
            }
            Ok(exit::OK)
        }
    }
}
