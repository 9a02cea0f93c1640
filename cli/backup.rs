//! `chunkbak backup`: a directory tree or standard input into a new snapshot.

use chunkbak_engine::ops::backup::{self, BackupOptions, ParentMode, StdinSource};
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::timeparse;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::args::{self, Global};
use crate::open::{
    backend, enable_cache, ensure_append_only, init_repo, local_state, open_keyed, password,
    repo_spec, warn,
};
use crate::output::{human_bytes, Out};
use crate::{clock_now, exit, output, progress, usage};

pub fn cmd_backup(g: &Global, out: &Out, a: &args::BackupArgs) -> anyhow::Result<i32> {
    // A source that is not there is a mistake in the command: said before anything (the
    // default repository included) is created.
    if !a.stdin && !a.stdin_from_command {
        // A path with `..` is resolved by the backup as written (lexically): not judged here.
        let plain = |p: &&std::ffi::OsString| {
            !Path::new(p)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        };
        for p in a.paths.iter().filter(plain) {
            if let Err(e) = std::fs::symlink_metadata(p) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    usage!(
                        "backup source {}: no such file or directory; nothing was backed up",
                        Path::new(p).display()
                    );
                }
            }
        }
    }
    let spec = repo_spec(g)?;
    let repo = if spec.default && !spec.location.join("config").exists() {
        // First use without any configuration: create the default repository.
        let pw = password(g, &spec, true, out)?;
        init_repo(g, &spec, &pw, &InitOptions::default(), out)?
    } else {
        let pw = password(g, &spec, false, out)?;
        open_keyed(g, out, backend(&spec)?, &pw)?
    };
    enable_cache(g, out, &repo);
    ensure_append_only(g, out, &repo)?;
    let repo = Arc::new(repo);
    repo.load_index()?;
    let stdin = if a.stdin_from_command {
        if a.paths.is_empty() {
            usage!("--stdin-from-command needs the command after `--`, e.g. `-- pg_dump mydb`");
        }
        Some(StdinSource::Command(a.paths.clone()))
    } else if a.stdin {
        Some(StdinSource::Stdin)
    } else {
        None
    };
    #[cfg(feature = "aws-sources")]
    let ebs_client = match &a.ebs_snapshot {
        Some(_) => Some(Arc::new(chunkbak_engine::ebs::Ebs::new(
            &chunkbak_engine::ebs::EbsConfig {
                region: a.aws_region.clone(),
                ..Default::default()
            },
        )?)),
        None => None,
    };
    #[cfg(not(feature = "aws-sources"))]
    if a.ebs_snapshot.is_some() || !a.aws_config.is_empty() {
        usage!("this chunkbak was built without the aws-sources feature: no EBS or AWS configuration sources");
    }
    #[cfg(feature = "aws-sources")]
    let aws_config = if a.aws_config.is_empty() {
        None
    } else {
        let mut src = backup::awsconfig::AwsConfigSource {
            route53: None,
            elb: None,
            elbv2: None,
        };
        let aws = chunkbak_engine::aws::AwsConfig {
            region: a.aws_region.clone(),
            ..Default::default()
        };
        let mut elb = None;
        let mut elb_client = || -> anyhow::Result<Arc<chunkbak_engine::elb::Elb>> {
            if elb.is_none() {
                elb = Some(Arc::new(chunkbak_engine::elb::Elb::new(&aws)?));
            }
            Ok(elb.clone().expect("made"))
        };
        for s in &a.aws_config {
            match s.as_str() {
                "elb" => src.elb = Some(elb_client()?),
                "elbv2" => src.elbv2 = Some(elb_client()?),
                "route53" => {
                    src.route53 = Some(Arc::new(chunkbak_engine::route53::Route53::new(
                        &chunkbak_engine::aws::AwsConfig {
                            region: a.aws_region.clone(),
                            ..Default::default()
                        },
                    )?))
                }
                other => usage!(
                    "--aws-config {other}: not a source chunkbak reads (route53, elb, elbv2)"
                ),
            }
        }
        Some(src)
    };
    let mut opts = BackupOptions {
        #[cfg(feature = "aws-sources")]
        aws_config,
        #[cfg(feature = "aws-sources")]
        ebs: match (&a.ebs_snapshot, &a.ebs_volume, &ebs_client) {
            (Some(snap), Some(vol), Some(c)) => Some(backup::ebs::EbsSource {
                client: c.clone(),
                snapshot: snap.clone(),
                parent: a.ebs_parent_snapshot.clone(),
                volume: vol.clone(),
            }),
            _ => None,
        },
        paths: if stdin.is_some() {
            Vec::new()
        } else {
            a.paths.iter().map(PathBuf::from).collect()
        },
        tags: a.tags.clone(),
        excludes: a.excludes.clone(),
        one_file_system: a.one_file_system,
        stdin_filename: a.stdin_filename.clone(),
        stdin,
        threads: a.threads,
        ..BackupOptions::default()
    };
    if let Some(h) = &a.host {
        opts.host = h.clone();
    }
    if let Some(t) = &a.time {
        opts.time = Some(timeparse::parse_time_now(t)?);
    }
    opts.parent = match (&a.parent, a.force) {
        (_, true) => ParentMode::None,
        (Some(p), false) => ParentMode::Id(p.clone()),
        (None, false) => ParentMode::Auto,
    };
    // Only a snapshot this host wrote is trusted as the parent (format-spec 12, "Trust").
    let state = local_state(g);
    let repo_id = repo.config().repo_id;
    opts.own_snapshots = Some(state.own_snapshots(&repo_id));
    opts.clock_skew_secs = clock_now().skew_secs;
    let bar =
        Arc::new(progress::Bar::new(out, !g.no_progress, "backup").with_changes(out.verbose >= 1));
    let r = backup::backup(&repo, opts, bar.clone());
    bar.finish();
    let r = r?;
    if let Err(e) = state.add_own_snapshot(&repo_id, &r.snapshot_id) {
        warn(
            out,
            &format!(
                "snapshot {} is saved, but recording it in this host's state under {} failed \
                 ({e}): the next backup will read every file again",
                r.snapshot_id.short(),
                state.dir().display()
            ),
        );
    }
    for m in &r.claims_refuted {
        warn(out, m);
    }
    if let Some(u) = r.untrusted_parent {
        warn(
            out,
            &format!(
                "snapshot {} has this host's name and paths but this host did not write it (it \
                 is not in {}): not trusted as the parent, every file was read{}",
                u.short(),
                state.dir().display(),
                match r.parent {
                    Some(p) =>
                        format!(" unless unchanged since this host's snapshot {}", p.short()),
                    None => String::new(),
                }
            ),
        );
    }
    let s = &r.snapshot.summary;
    #[cfg(feature = "aws-sources")]
    if let Some(c) = &ebs_client {
        let (list, get, _, _, read, _) = c.counts.snapshot();
        if out.json {
            out.json_line(
                "ebs_requests",
                json!({"list": list, "GetSnapshotBlock": get, "bytes_read": read}),
            );
        } else {
            out.line(format!(
                "EBS direct APIs: {list} list requests, {get} GetSnapshotBlock requests ({})",
                human_bytes(read)
            ));
        }
    }
    if out.json {
        out.json_line(
            "summary",
            json!({
                "snapshot_id": r.snapshot_id.to_hex(),
                "parent": r.parent.map(|p| p.to_hex()),
                "untrusted_parent": r.untrusted_parent.map(|p| p.to_hex()),
                "files_new": s.files_new, "files_changed": s.files_changed,
                "files_unchanged": s.files_unchanged, "dirs_new": s.dirs_new,
                "dirs_changed": s.dirs_changed, "dirs_unchanged": s.dirs_unchanged,
                "bytes_read": s.bytes_read, "bytes_total": s.bytes_total,
                "bytes_added": s.bytes_added, "blobs_added": s.blobs_added,
                "packs_written": r.packs_written, "blobs_copied": r.blobs_copied,
                "deltas": r.deltas, "delta_raw_bytes": r.delta_raw_bytes,
                "delta_stored_bytes": r.delta_stored_bytes,
                "errors": s.errors, "duration_ms": s.duration_ms,
            }),
        );
    } else {
        out.line(format!(
            "Files: {} new, {} changed, {} unchanged; dirs: {} new, {} changed, {} unchanged",
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.dirs_new,
            s.dirs_changed,
            s.dirs_unchanged
        ));
        out.line(format!(
            "Read {} of {}, added {} to the repository in {}, {:.1}s",
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_total),
            human_bytes(s.bytes_added),
            output::count(r.packs_written, "pack"),
            s.duration_ms as f64 / 1000.0
        ));
        if r.deltas > 0 {
            out.line(format!(
                "Deltas: {} chunks ({}) stored as {} against their previous versions",
                r.deltas,
                human_bytes(r.delta_raw_bytes),
                human_bytes(r.delta_stored_bytes)
            ));
        }
        out.line(format!("snapshot {} saved", r.snapshot_id.short()));
    }
    output::set_summary(format!(
        "snapshot {} saved ({}), {} ({} new, {} changed), {} added, {} read",
        r.snapshot_id.short(),
        r.snapshot.host,
        output::count(s.files_new + s.files_changed + s.files_unchanged, "file"),
        s.files_new,
        s.files_changed,
        human_bytes(s.bytes_added),
        human_bytes(s.bytes_read),
    ));
    if s.errors > 0 {
        crate::elog!(
            "chunkbak: {} entries could not be read and are missing from snapshot {} (see the warnings above)",
            s.errors,
            r.snapshot_id.short()
        );
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}
