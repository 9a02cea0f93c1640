//! The AWS sources' commands: `aws-apply route53`, `aws-apply elb`, and `restore
//! --to-ebs-snapshot`.

#![cfg_attr(not(feature = "aws-sources"), allow(unused_imports))]

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::{Id, Repository};

use crate::open::open_repo;
use crate::output::{self, count, human_bytes, Out};
use crate::snapshots::{choose_for, local_time};
use crate::{args, exit, usage, FilterArgs, Global};

/// `restore SNAPSHOT:PATH --to-ebs-snapshot`: the image file written as a new EBS snapshot.
#[cfg(feature = "aws-sources")]
pub(crate) fn restore_to_ebs(
    out: &Out,
    repo: &Repository,
    id: &Id,
    s: &Snapshot,
    sub: &[u8],
    a: &args::RestoreArgs,
) -> anyhow::Result<i32> {
    use chunkbak_engine::ebs::{Ebs, EbsConfig};
    let region = a.aws_region.as_deref();
    if sub.is_empty() {
        usage!("--to-ebs-snapshot writes one image file: give it as SNAPSHOT:PATH, e.g. latest:/ebs/vol-1/snap-1.img");
    }
    let ebs = Ebs::new(&EbsConfig {
        region: region.map(str::to_string),
        ..Default::default()
    })?;
    let description = format!(
        "chunkbak restore of {}:{} ({} of {})",
        id.short(),
        String::from_utf8_lossy(sub),
        local_time(s),
        s.host
    );
    let new = chunkbak_engine::ebs::NewSnapshot {
        description,
        encrypted: a.ebs_encrypted,
        kms_key_arn: a.ebs_kms_key.clone(),
        tags: a.ebs_tag.clone(),
    };
    let w = chunkbak_engine::ops::ebs::write_image(repo, s.tree, sub, &ebs, &new)?;
    let (_, _, put, other, _, bytes) = ebs.counts.snapshot();
    if out.json {
        out.json_line(
            "ebs_snapshot",
            json!({"snapshot_id": w.snapshot_id, "volume_size_gib": w.volume_gib,
                   "blocks_written": w.blocks_written, "blocks_total": w.blocks_total,
                   "status": w.status, "requests": {"PutSnapshotBlock": put, "other": other},
                   "bytes_written": bytes}),
        );
    } else {
        out.line(format!(
            "EBS snapshot {} ({} GiB, {}): {} of {} blocks written ({}), {} PutSnapshotBlock requests",
            w.snapshot_id,
            w.volume_gib,
            w.status,
            w.blocks_written,
            w.blocks_total,
            human_bytes(bytes),
            put
        ));
    }
    output::set_summary(format!(
        "{}:{} written as EBS snapshot {} ({} blocks)",
        id.short(),
        String::from_utf8_lossy(sub),
        w.snapshot_id,
        w.blocks_written
    ));
    Ok(exit::OK)
}

#[cfg(not(feature = "aws-sources"))]
pub(crate) fn restore_to_ebs(
    _: &Out,
    _: &Repository,
    _: &Id,
    _: &Snapshot,
    _: &[u8],
    _: &args::RestoreArgs,
) -> anyhow::Result<i32> {
    usage!("this chunkbak was built without the aws-sources feature: no EBS snapshots")
}

/// `aws-apply route53`: a zone's record sets back to a snapshot's, after a plan.
#[cfg(feature = "aws-sources")]
pub(crate) fn cmd_aws_apply(
    g: &Global,
    out: &Out,
    c: &args::AwsApplyCommand,
) -> anyhow::Result<i32> {
    use chunkbak_engine::ops::awsapply;
    let a = match c {
        args::AwsApplyCommand::Route53(a) => a,
        args::AwsApplyCommand::Elb(a) => return apply_elb(g, out, a),
    };
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    // `latest` means the newest snapshot holding the zone (not a file backup of this host).
    let zone_dir = format!("/aws/route53/{}", a.zone);
    let (id, s, sub) = choose_for(
        &repo,
        Some(a.from.as_os_str()),
        None,
        &FilterArgs::default(),
        out,
        Some(zone_dir.as_bytes()),
    )?;
    let dir = if sub.is_empty() {
        format!("/aws/route53/{}", a.zone).into_bytes()
    } else {
        sub
    };
    let r53 = chunkbak_engine::route53::Route53::new(&chunkbak_engine::aws::AwsConfig {
        region: a.aws_region.clone(),
        ..Default::default()
    })?;
    let plan = awsapply::plan_route53(&repo, s.tree, &dir, &r53, &a.zone)?;
    let name = |v: &Value| {
        let mut n = format!(
            "{} {}",
            v["Name"].as_str().unwrap_or_default(),
            v["Type"].as_str().unwrap_or_default()
        );
        if let Some(i) = v["SetIdentifier"].as_str() {
            n.push_str(&format!(" ({i})"));
        }
        n
    };
    if out.json {
        out.json_line(
            "aws_apply_plan",
            json!({"zone": plan.zone_id, "snapshot": id.to_hex(),
                   "upserts": plan.upserts.iter().map(|(v, cur)| json!({"record": v, "now": cur})).collect::<Vec<_>>(),
                   "unchanged": plan.unchanged, "extra": plan.extra, "dry_run": a.dry_run}),
        );
    } else {
        for (v, cur) in &plan.upserts {
            out.line(format!(
                "{} {}",
                if cur.is_some() { "update" } else { "create" },
                name(v)
            ));
        }
        for v in &plan.extra {
            out.line(format!("keep   {} (not in the snapshot)", name(v)));
        }
        out.line(format!(
            "plan for zone {}: {} record sets to upsert, {} unchanged, {} not in the snapshot (kept)",
            plan.zone_id,
            plan.upserts.len(),
            plan.unchanged,
            plan.extra.len()
        ));
    }
    if a.dry_run {
        out.line("dry run: nothing changed");
        return Ok(exit::OK);
    }
    let comment = format!("chunkbak aws-apply from snapshot {}", id.short());
    let requests = awsapply::apply_route53(&plan, &r53, &comment)?;
    if out.json {
        out.json_line(
            "aws_apply",
            json!({"zone": plan.zone_id, "upserted": plan.upserts.len(), "requests": requests}),
        );
    } else {
        out.line(format!(
            "zone {}: {} record sets upserted in {requests} ChangeResourceRecordSets requests",
            plan.zone_id,
            plan.upserts.len()
        ));
    }
    output::set_summary(format!(
        "zone {}: {} record sets upserted from snapshot {}",
        plan.zone_id,
        plan.upserts.len(),
        id.short()
    ));
    Ok(exit::OK)
}

/// `aws-apply elb`: load balancers re-created from a snapshot's documents, plan first.
#[cfg(feature = "aws-sources")]
fn apply_elb(g: &Global, out: &Out, a: &args::ElbApplyArgs) -> anyhow::Result<i32> {
    use chunkbak_engine::ops::awsapply::elb;
    let map: elb::Mapping = match &a.map {
        None => Default::default(),
        Some(p) => {
            let text = std::fs::read(p).map_err(|e| anyhow!("--map {}: {e}", p.display()))?;
            serde_json::from_slice(&text).map_err(|e| {
                anyhow!(
                    "--map {}: not a JSON object of old id to new id ({{\"subnet-0old\": \"subnet-0new\", ...}}): {e}",
                    p.display()
                )
            })?
        }
    };
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (id, s, sub) = choose_for(
        &repo,
        Some(a.from.as_os_str()),
        None,
        &FilterArgs::default(),
        out,
        Some(b"/aws"),
    )?;
    let src = elb::read_source(&repo, s.tree, &sub)?;
    let client = chunkbak_engine::elb::Elb::new(&chunkbak_engine::aws::AwsConfig {
        region: a.aws_region.clone(),
        ..Default::default()
    })?;
    let plan = elb::plan_elb(&src, &map, &client)?;
    let creates = plan.creates();
    if out.json {
        out.json_line(
            "aws_apply_plan",
            json!({"snapshot": id.to_hex(), "source_region": plan.source_region, "region": plan.region,
                   "steps": plan.steps.iter().map(|s| json!({"kind": s.kind, "name": s.name,
                        "detail": s.detail, "exists": s.exists})).collect::<Vec<_>>(),
                   "unmapped": plan.unmapped, "not_recreated": plan.skipped, "apply": a.apply}),
        );
    } else {
        for s in &plan.steps {
            out.line(format!(
                "{} {} {} ({})",
                if s.exists { "exists" } else { "create" },
                s.kind,
                s.name,
                s.detail
            ));
        }
        // In the same region the ids are the ones that exist there.
        if plan.region != plan.source_region {
            for (id, place) in &plan.unmapped {
                out.line(format!("unmapped {id} ({place})"));
            }
        }
        for w in &plan.skipped {
            out.line(format!("not re-created: {w}"));
        }
        out.line(format!(
            "plan for {} from {}'s documents of snapshot {}: {} to create, {} there already",
            plan.region,
            plan.source_region,
            id.short(),
            count(creates as u64, "resource"),
            plan.steps.len() - creates
        ));
    }
    if plan.blocked() {
        bail!("{}", plan.unmapped_error());
    }
    if !a.apply {
        out.line("nothing changed: run again with --apply to create them");
        return Ok(exit::OK);
    }
    let done = elb::apply_elb(&plan, &client)?;
    if out.json {
        out.json_line(
            "aws_apply",
            json!({"region": plan.region, "created": done.created, "requests": done.requests,
                   "load_balancers": done.load_balancers.iter().map(|l| json!({"name": l.name,
                        "dns_name": l.dns_name, "canonical_hosted_zone_id": l.hosted_zone,
                        "existed": l.existed})).collect::<Vec<_>>()}),
        );
    } else {
        for l in done.load_balancers.iter().filter(|l| !l.existed) {
            out.line(format!(
                "{}: DNS name {}{}",
                l.name,
                l.dns_name,
                if l.hosted_zone.is_empty() {
                    String::new()
                } else {
                    format!(", hosted zone {}", l.hosted_zone)
                }
            ));
        }
        out.line(format!(
            "{}: {} created in {} requests; point DNS at the new names (aws-apply route53)",
            plan.region,
            count(done.created, "resource"),
            done.requests
        ));
    }
    output::set_summary(format!(
        "{}: {} created from snapshot {}",
        plan.region,
        count(done.created, "load balancer resource"),
        id.short()
    ));
    Ok(exit::OK)
}

#[cfg(not(feature = "aws-sources"))]
pub(crate) fn cmd_aws_apply(_: &Global, _: &Out, _: &args::AwsApplyCommand) -> anyhow::Result<i32> {
    usage!("this chunkbak was built without the aws-sources feature")
}
