//! `backup --aws-config route53,elb,elbv2`: AWS configuration as deterministic documents
//! under `/aws`.
//!
//! `/aws/elb/REGION/NAME.json` (a classic load balancer with its listeners, health check,
//! instances, attributes and tags) and `/aws/elbv2/REGION/load-balancers/NAME.json` (an
//! ALB/NLB with its listeners, their rules and actions, attributes and tags),
//! `/aws/elbv2/REGION/target-groups/NAME.json` (with health check, attributes and tags).
//!
//! `/aws/route53/ZONE_ID/zone.json` (name, comment, privacy), `records/NAME_TYPE[_SET].json`
//! (one document per record set, so `diff` names each record that changed) and `ZONE.zone` (a
//! BIND zone file for people). Keys are sorted, nothing volatile is recorded, and every entry
//! has the same times, so an unchanged configuration is the same trees: it adds nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::route53::{bind_file, record_file_name, record_json, Route53};

/// What `--aws-config` reads.
pub struct AwsConfigSource {
    pub route53: Option<Arc<Route53>>,
    /// Classic load balancers, and ALB/NLB (v2), of the client's region.
    pub elb: Option<Arc<crate::elb::Elb>>,
    pub elbv2: Option<Arc<crate::elb::Elb>>,
}

/// A folder of files held in memory: path components → contents.
type Files = BTreeMap<Vec<String>, Vec<u8>>;

fn json_bytes(v: &serde_json::Value) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    b.push(b'\n');
    Ok(b)
}

/// The Route53 documents, under `route53/`.
fn route53_files(r: &Route53, files: &mut Files) -> Result<()> {
    for z in r.zones()? {
        let dir = vec!["route53".to_string(), z.id.clone()];
        let with = |name: &str| {
            let mut p = dir.clone();
            p.push(name.to_string());
            p
        };
        files.insert(with("zone.json"), json_bytes(&z.to_json())?);
        let sets: Vec<serde_json::Value> = r.records(&z.id)?.iter().map(record_json).collect();
        for s in &sets {
            let mut p = with("records");
            p.push(record_file_name(s));
            files.insert(p, json_bytes(s)?);
        }
        let zone_file = format!("{}zone", z.name);
        files.insert(with(&zone_file), bind_file(&z, &sets).into_bytes());
    }
    Ok(())
}

/// Stores `files` as the folder `name`, bottom-up.
fn save_tree(ctx: &Ctx, name: &str, files: &Files, depth: usize) -> Result<Node> {
    let (uid, gid) = fsmeta::current_ids();
    let owners = Owners::default();
    // The same times for every entry: an unchanged document is an unchanged node.
    let t = crate::format::tree::Timespec::default();
    let mut by_child: BTreeMap<&String, Files> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (path, data) in files {
        if path.len() == depth + 1 {
            let (ids, _) = ctx
                .store_stream(std::io::Cursor::new(data), Some(data.len() as u64), None)
                .map_err(|e| e.into_error(&path.join("/")))?;
            ctx.counters.files_new.fetch_add(1, Ordering::Relaxed);
            nodes.push(Node {
                name: path[depth].as_bytes().to_vec(),
                kind: NodeKind::File,
                mode: 0o100600,
                uid,
                gid,
                user: owners.user(uid),
                group: owners.group(gid),
                mtime: t,
                ctime: t,
                size: data.len() as u64,
                nlink: 1,
                content: ctx.repo.save_content(&ctx.w.saver, ids)?,
                ..Node::default()
            });
        } else {
            by_child
                .entry(&path[depth])
                .or_default()
                .insert(path.clone(), data.clone());
        }
    }
    for (child, sub) in by_child {
        nodes.push(save_tree(ctx, child, &sub, depth + 1)?);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::Dir,
        mode: 0o40700,
        uid,
        gid,
        user: owners.user(uid),
        group: owners.group(gid),
        mtime: t,
        ctime: t,
        nlink: 1,
        subtree: Some(ctx.repo.save_dir(&ctx.w.saver, nodes)?),
        ..Node::default()
    })
}

/// Reads the configuration and returns the `aws` folder node.
pub(super) fn backup_aws_config(ctx: &Ctx, src: &AwsConfigSource) -> Result<Node> {
    let mut files = Files::new();
    if let Some(r) = &src.route53 {
        ctx.progress.message("reading Route53");
        route53_files(r, &mut files)?;
    }
    if let Some(e) = &src.elb {
        ctx.progress.message("reading classic load balancers");
        for (_, name, doc) in e.classic_documents()? {
            files.insert(
                vec!["elb".into(), e.region.clone(), name],
                json_bytes(&doc)?,
            );
        }
    }
    if let Some(e) = &src.elbv2 {
        ctx.progress
            .message("reading load balancers and target groups");
        for (folder, name, doc) in e.v2_documents()? {
            files.insert(
                vec!["elbv2".into(), e.region.clone(), folder.into(), name],
                json_bytes(&doc)?,
            );
        }
    }
    let total: u64 = files.values().map(|f| f.len() as u64).sum();
    ctx.progress.final_total(files.len() as u64, total);
    ctx.counters.bytes_total.fetch_add(total, Ordering::Relaxed);
    save_tree(ctx, "aws", &files, 0)
}
