//! `aws-apply route53`: a hosted zone's record sets brought back to what a snapshot holds
//! (`/aws/route53/ZONE_ID/records/*.json`), by UPSERT. A plan first: which record sets are
//! missing or differ, which are the same, and which the zone has that the snapshot does not
//! (left as they are). The zone's own SOA and apex NS records are Route53's and never
//! changed.
//!
//! `aws-apply elb` ([`elb`]): load balancers re-created from their documents.

pub mod elb;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::format::tree::NodeKind;
use crate::id::BlobId;
use crate::repo::Repository;
use crate::route53::{record_from_json, record_json, Route53};

/// What an apply will do to one zone.
#[derive(Debug, Default, Clone)]
pub struct ZonePlan {
    pub zone_id: String,
    /// Record sets to UPSERT: the snapshot's document, and the zone's now (None: missing).
    pub upserts: Vec<(Value, Option<Value>)>,
    pub unchanged: u64,
    /// Record sets in the zone that the snapshot does not hold (kept).
    pub extra: Vec<Value>,
}

/// (name, type, set identifier): what identifies a record set in a zone.
fn key(v: &Value) -> (String, String, String) {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    // Names are case-insensitive; set identifiers are not.
    (s("Name").to_lowercase(), s("Type"), s("SetIdentifier"))
}

/// Route53's own records of the zone: its SOA and the NS at its apex.
fn managed(v: &Value, zone_name: &str) -> bool {
    let (name, ty, _) = key(v);
    (ty == "SOA" || ty == "NS")
        && name.trim_end_matches('.') == zone_name.to_lowercase().trim_end_matches('.')
}

/// The JSON document at `path` of the snapshot tree `root`.
pub(crate) fn read_json(repo: &Repository, root: BlobId, path: &[u8]) -> Result<Value> {
    let mut b = Vec::new();
    crate::ops::dump::dump_file(repo, root, path, &mut b)?;
    serde_json::from_slice(&b).map_err(|e| {
        Error::corrupt(
            String::from_utf8_lossy(path),
            format!("not a JSON document: {e}"),
        )
    })
}

/// The names in a folder of a snapshot.
#[derive(Debug, Default)]
pub(crate) struct Folder {
    pub files: Vec<Vec<u8>>,
    pub dirs: Vec<Vec<u8>>,
}

/// The names of the files and of the folders in folder `dir` of the snapshot tree `root`
/// (both empty when there is no such folder).
pub(crate) fn folder(repo: &Repository, root: BlobId, dir: &[u8]) -> Result<Folder> {
    let Some(node) = crate::ops::ls::find(repo, root, dir)?.filter(|n| n.kind == NodeKind::Dir)
    else {
        return Ok(Default::default());
    };
    let mut f = Folder::default();
    for n in repo.load_dir(&node.subtree.unwrap_or_default())? {
        match n.kind {
            NodeKind::File => f.files.push(n.name),
            NodeKind::Dir => f.dirs.push(n.name),
            _ => {}
        }
    }
    Ok(f)
}

/// Plans bringing zone `zone_id` to the records under `dir` (a zone folder of the snapshot
/// tree `root`, e.g. `/aws/route53/Z123`). The repository's index must be loaded.
pub fn plan_route53(
    repo: &Repository,
    root: BlobId,
    dir: &[u8],
    r53: &Route53,
    zone_id: &str,
) -> Result<ZonePlan> {
    let shown = String::from_utf8_lossy(dir).into_owned();
    let node = crate::ops::ls::find(repo, root, dir)?
        .filter(|n| n.kind == NodeKind::Dir)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{shown}: no such folder in the snapshot (a zone's folder is /aws/route53/ZONE_ID)"
            ))
        })?;
    let read = |path: Vec<u8>| read_json(repo, root, &path);
    let kids = repo.load_dir(&node.subtree.unwrap_or_default())?;
    let records = kids
        .iter()
        .find(|n| n.name == b"records" && n.kind == NodeKind::Dir)
        .ok_or_else(|| Error::Invalid(format!("{shown} holds no records/ folder")))?;
    let zone_doc = read([dir, b"/zone.json"].concat())?;
    let zone_name = zone_doc["Name"].as_str().unwrap_or_default().to_string();
    let mut want: BTreeMap<(String, String, String), Value> = BTreeMap::new();
    for n in repo.load_dir(&records.subtree.unwrap_or_default())? {
        if n.kind != NodeKind::File {
            continue;
        }
        let v = read([dir, b"/records/", &n.name].concat())?;
        // Fails early on a document that could not be sent.
        record_from_json(&v)?;
        want.insert(key(&v), v);
    }
    let now: BTreeMap<(String, String, String), Value> = r53
        .records(zone_id)?
        .iter()
        .map(record_json)
        .map(|v| (key(&v), v))
        .collect();
    let mut plan = ZonePlan {
        zone_id: zone_id.to_string(),
        ..Default::default()
    };
    for (k, v) in &want {
        if managed(v, &zone_name) {
            continue;
        }
        match now.get(k) {
            Some(cur) if cur == v => plan.unchanged += 1,
            cur => plan.upserts.push((v.clone(), cur.cloned())),
        }
    }
    for (k, v) in &now {
        if !want.contains_key(k) && !managed(v, &zone_name) {
            plan.extra.push(v.clone());
        }
    }
    Ok(plan)
}

/// Sends the plan's UPSERTs; the number of ChangeResourceRecordSets requests.
pub fn apply_route53(plan: &ZonePlan, r53: &Route53, comment: &str) -> Result<u64> {
    if plan.upserts.is_empty() {
        return Ok(0);
    }
    let sets = plan
        .upserts
        .iter()
        .map(|(v, _)| record_from_json(v))
        .collect::<Result<Vec<_>>>()?;
    r53.upsert(&plan.zone_id, sets, comment)
}
