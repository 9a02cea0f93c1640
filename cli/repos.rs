//! Commands over more than the repository's data: `key` (its passwords) and `copy` (into
//! another repository).

use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use anyhow::bail;
use chunkbak_engine::timeparse::format_time;
use serde_json::json;

use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::ops::copy;
use chunkbak_engine::ops::restore::PackGate;
use chunkbak_engine::ops::select::{self, Selector};
use chunkbak_engine::ops::thaw::{self, Thaw};
use chunkbak_engine::Id;

use crate::args::{CopyArgs, KeyCommand, NewPasswordArgs};
use crate::open::{open_other, open_repo, PasswordSource};
use crate::output::{human_bytes, Out};
use crate::snapshots::{filter_of, local_time, snapshot_json};
use crate::{cold, exit, progress, Global};

// ---------------------------------------------------------------------------------------------
// key

fn new_password(a: &NewPasswordArgs) -> anyhow::Result<(Vec<u8>, KdfParams)> {
    let src = PasswordSource {
        command: a.new_password_command.as_deref(),
        file: a.new_password_file.as_deref(),
        env: "CHUNKBAK_NEW_PASSWORD",
        flags: "--new-password-file, --new-password-command or CHUNKBAK_NEW_PASSWORD",
    };
    let pw = src.require("the new key")?;
    if pw.is_empty() {
        bail!("the new password is empty");
    }
    let kdf = KdfParams {
        m_cost_kib: a.kdf_memory_kib,
        t_cost: a.kdf_iterations,
        p_cost: 1,
    };
    kdf.validate_new(a.allow_weak_kdf)?;
    Ok((pw, kdf))
}

pub fn cmd_key(g: &Global, out: &Out, c: &KeyCommand) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    if !matches!(c, KeyCommand::List) {
        crate::open::ensure_append_only(g, out, &repo)?;
    }
    match c {
        KeyCommand::List => {
            let keys = repo.keys()?;
            for k in &keys {
                let created = k.created.map(|t| {
                    jiff::Timestamp::from_second(t)
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                });
                if out.json {
                    out.json_line(
                        "key",
                        json!({"id": k.id, "current": k.current, "created": created,
                               "kdf": k.params.map(|p| json!({"algorithm": "argon2id",
                                   "m_cost_kib": p.m_cost_kib, "t_cost": p.t_cost,
                                   "p_cost": p.p_cost})),
                               "problem": k.problem}),
                    );
                    continue;
                }
                let kdf = match k.params {
                    Some(p) => format!(
                        "argon2id m={}KiB t={} p={}",
                        p.m_cost_kib, p.t_cost, p.p_cost
                    ),
                    None => "unreadable".into(),
                };
                out.line(format!(
                    "{} {}  {:<20}  {kdf}{}",
                    if k.current { "*" } else { " " },
                    &k.id[..16.min(k.id.len())],
                    created.unwrap_or_else(|| "-".into()),
                    k.problem
                        .as_deref()
                        .map(|p| format!("  ({p})"))
                        .unwrap_or_default()
                ));
            }
            Ok(exit::OK)
        }
        KeyCommand::Add(a) => {
            let (pw, kdf) = new_password(a)?;
            let id = repo.add_key(&pw, kdf)?;
            if out.json {
                out.json_line("key_added", json!({"id": id}));
            } else {
                out.line(format!("added key {}", &id[..16.min(id.len())]));
            }
            Ok(exit::OK)
        }
        KeyCommand::Remove { id } => {
            let (removed, locked) = repo.remove_key(id)?;
            if out.json {
                out.json_line(
                    "key_removed",
                    json!({"id": removed, "locked_until": locked.map(format_time)}),
                );
            } else {
                out.line(format!("removed key {}", &removed[..16.min(removed.len())]));
                if let Some(until) = locked {
                    out.line(format!(
                        "  S3 Object Lock retains the key file until {}: it is hidden (no \
                         chunkbak lists or tries it), but its stored version opens the \
                         repository with the old password for whoever may read object \
                         versions until then",
                        format_time(until)
                    ));
                }
            }
            Ok(exit::OK)
        }
        KeyCommand::Passwd(a) => {
            let (pw, kdf) = new_password(a)?;
            let (new, old) = repo.change_password(&pw, kdf)?;
            if out.json {
                out.json_line("key_changed", json!({"id": new, "removed": old}));
            } else {
                out.line(format!(
                    "password changed: key {} replaces {}",
                    &new[..16.min(new.len())],
                    &old[..16.min(old.len())]
                ));
            }
            update_password_source(g, out, &pw)?;
            Ok(exit::OK)
        }
    }
}

/// After `key passwd` the old password opens nothing: the source that gave it is brought up to
/// date when it is a file (the one named, or the default repository's), written whole to a
/// private temp file and renamed over it; a command or the environment is the operator's to
/// change, and the message says so.
fn update_password_source(g: &Global, out: &Out, pw: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let file = match (&g.password_command, &g.password_file) {
        (Some(c), _) => {
            crate::open::warn(
                out,
                &format!(
                    "--password-command ({c}) still prints the old password: change what it \
                     prints to the new one, or every later command fails with a wrong password"
                ),
            );
            return Ok(());
        }
        (None, Some(f)) => f.clone(),
        (None, None) if std::env::var_os("CHUNKBAK_PASSWORD").is_some() => {
            crate::open::warn(
                out,
                "CHUNKBAK_PASSWORD still holds the old password: set it to the new one",
            );
            return Ok(());
        }
        (None, None) => crate::open::default_password_file(),
    };
    if !file.is_file() {
        return Ok(());
    }
    let tmp = file.with_extension(format!("chunkbak-new-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(pw)?;
            f.write_all(b"\n")?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!(
            "the password changed, but the password file {} could not be updated ({e}): it \
             still holds the old password; write the new one into it",
            file.display()
        );
    }
    if !out.json {
        out.line(format!(
            "password file {} now holds the new password",
            file.display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// copy

pub fn cmd_copy(g: &Global, out: &Out, a: &CopyArgs) -> anyhow::Result<i32> {
    let src = open_repo(g, out)?;
    let pw = PasswordSource {
        command: a.to_password_command.as_deref(),
        file: a.to_password_file.as_deref(),
        env: "CHUNKBAK_TO_PASSWORD",
        flags: "--to-password-file, --to-password-command or CHUNKBAK_TO_PASSWORD",
    };
    let other = crate::open::Other {
        region: a.to_region.as_deref(),
        profile: a.to_s3_profile.as_deref(),
    };
    let dst = Arc::new(open_other(g, out, &a.to, &other, &pw)?);
    crate::open::ensure_append_only(g, out, &dst)?;
    if dst.config().repo_id == src.config().repo_id {
        crate::usage!(
            "--to {} is the repository copied from",
            std::path::Path::new(&a.to).display()
        );
    }
    src.load_index()?;
    dst.load_index()?;
    let snaps = src.snapshots()?;
    let filter = filter_of(&a.filter);
    let chosen: Vec<_> = if a.snapshots.is_empty() {
        snaps
            .iter()
            .filter(|(_, s)| filter.matches(s))
            .cloned()
            .collect()
    } else {
        // Ids and `latest`, as every other command takes them.
        let mut v: Vec<(Id, Snapshot)> = Vec::new();
        for p in &a.snapshots {
            let sel = Selector::parse(p);
            // `latest`: this host's, as every command means it on a shared repository.
            let mut f = filter.clone();
            if !matches!(sel, Selector::Id(_)) {
                f.hosts = crate::snapshots::this_hosts_by_default(&snaps, &f)?;
            }
            let i = select::select(&snaps, &sel, &f, &crate::clock_now())?;
            if !v.iter().any(|(id, _)| *id == snaps[i].0) {
                v.push(snaps[i].clone());
            }
        }
        v.sort_by_key(|(_, s)| s.time);
        v
    };
    let plan = copy::plan(&src, &dst, &snaps, chosen)?;
    if out.json {
        out.json_line(
            "copy_plan",
            json!({"snapshots": plan.todo.len(), "present": plan.present.len(),
                   "same_ids": plan.same_ids, "blobs": plan.blobs.len(),
                   "bytes": plan.bytes, "dry_run": a.dry_run}),
        );
    } else {
        for (sid, tid) in &plan.present {
            if out.verbose > 0 {
                out.line(format!(
                    "snapshot {} is in the target as {}",
                    sid.short(),
                    tid.short()
                ));
            }
        }
        for (id, s) in &plan.todo {
            out.line(format!(
                "{} snapshot {} of {} at {} ({})",
                if a.dry_run { "would copy" } else { "copy" },
                id.short(),
                s.host,
                local_time(s),
                s.paths_lossy().join(", ")
            ));
        }
        out.line(format!(
            "{} snapshots to copy ({} already in the target); {} data blobs ({}) to read from \
             the source{}",
            plan.todo.len(),
            plan.present.len(),
            plan.blobs.len(),
            human_bytes(plan.bytes),
            if plan.same_ids {
                ""
            } else {
                "; the repositories have different chunker keys, so every blob is read and \
                 re-hashed (create the target with `init --copy-chunker-params --from` to avoid it)"
            }
        ));
    }
    if a.dry_run || plan.todo.is_empty() {
        return Ok(exit::OK);
    }
    // Archived source packs are thawed and waited for first.
    let mut plan = plan;
    let mut tp = thaw::plan_blobs(&src, 0, &plan.blobs)?;
    if tp.unreadable().next().is_some() {
        cold::print_plan(out, &tp, &a.thaw);
        let pending = cold::request_thaws(&src, &mut tp, &a.thaw, out)?;
        if pending > 0 {
            let bar = progress::Bar::new(out, false, "thaw");
            let report = cold::wait_reporter(out, &bar);
            let gate = Thaw::new(&src, &tp, a.thaw.poll()?, a.thaw.max_wait()?, &report);
            while gate.pending() > 0 {
                gate.wait()?;
            }
            // Hours may have passed: plan again against the target as it is now.
            dst.load_index()?;
            let chosen = plan.todo.clone();
            plan = copy::plan(&src, &dst, &snaps, chosen)?;
        }
    }
    let bar = progress::Bar::new(out, !g.no_progress, "copy").unit("snapshots");
    let r = copy::copy(&src, &dst, &plan, &bar);
    bar.finish();
    let r = r?;
    if out.json {
        for (sid, tid, s) in &r.copied {
            let mut j = snapshot_json(tid, s);
            j["source_id"] = json!(sid.to_hex());
            out.json_line("copied", j);
        }
        out.json_line(
            "copy",
            json!({"copied": r.copied.len(), "blobs_read": r.blobs_read,
                   "bytes_read": r.bytes_read, "blobs_added": r.blobs_added,
                   "bytes_added": r.bytes_added, "packs_written": r.packs_written,
                   "blobs_copied": r.blobs_copied, "deltas_added": r.deltas_added}),
        );
    } else {
        for (sid, tid, _) in &r.copied {
            out.line(format!(
                "snapshot {} copied as {}",
                sid.short(),
                tid.short()
            ));
        }
        out.line(format!(
            "copied {} snapshots: read {} blobs ({}) from the source, added {} blobs ({}{}) in \
             {} packs to the target",
            r.copied.len(),
            r.blobs_read,
            human_bytes(r.bytes_read),
            r.blobs_added,
            human_bytes(r.bytes_added),
            match r.deltas_added {
                0 => String::new(),
                n => format!("; {n} as deltas"),
            },
            r.packs_written
        ));
    }
    Ok(exit::OK)
}
