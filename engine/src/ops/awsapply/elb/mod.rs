//! `aws-apply elb`: classic ELBs and ALB/NLB/GWLB re-created from a snapshot's documents
//! (`/aws/elb/REGION/*.json`, `/aws/elbv2/REGION/{target-groups,load-balancers}/*.json`), in
//! the same region or another.
//!
//! Load balancers name subnets, security groups, VPCs and certificates by ids that differ in
//! another region; a mapping (old id → new id) replaces them. Target groups are matched by
//! name: a forward to the old ARN goes to the target group of that name in the target region.
//! What exists already (a target group or load balancer of that name, a listener on that
//! port) is kept as it is, so an apply that stopped half-way can be run again. Targets are not
//! registered (instances differ), and listeners or rules with an authenticate action are not
//! re-created: the client secret is not in the backup, and a listener without its
//! authentication would serve what it protected.

mod create;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

pub use create::{apply_elb, Created, ElbApplied};

use super::{folder, read_json};
use crate::elb::{classic_error, v2_error, Elb};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::repo::Repository;

/// Old id → new id.
pub type Mapping = BTreeMap<String, String>;

/// The load balancer documents of one region of a snapshot.
#[derive(Debug, Default, Clone)]
pub struct ElbSource {
    pub region: String,
    pub target_groups: Vec<Value>,
    pub load_balancers: Vec<Value>,
    pub classic: Vec<Value>,
}

/// Reads the documents of `dir` (`/aws/elbv2/REGION` or `/aws/elb/REGION`: both services of
/// that region; empty: the one region the snapshot holds).
pub fn read_source(repo: &Repository, root: BlobId, dir: &[u8]) -> Result<ElbSource> {
    let region = if dir.is_empty() {
        let mut regions = BTreeSet::new();
        for base in [&b"/aws/elbv2"[..], b"/aws/elb"] {
            regions.extend(folder(repo, root, base)?.dirs);
        }
        match regions.len() {
            1 => regions.pop_first().expect("one"),
            0 => {
                return Err(Error::Invalid(
                    "the snapshot holds no /aws/elb or /aws/elbv2 folder (take one with \
                     `chunkbak backup --aws-config elb,elbv2`, or name it with --from ID)"
                        .into(),
                ))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "the snapshot holds load balancers of several regions ({}): name one with \
                     --from SNAPSHOT:/aws/elbv2/REGION",
                    regions
                        .iter()
                        .map(|r| String::from_utf8_lossy(r).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    } else {
        let d = dir.strip_suffix(b"/").unwrap_or(dir);
        match d
            .strip_prefix(b"/aws/elbv2/")
            .or(d.strip_prefix(b"/aws/elb/"))
        {
            Some(r) if !r.is_empty() && !r.contains(&b'/') => r.to_vec(),
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: not a region's folder of load balancers (/aws/elbv2/REGION or \
                     /aws/elb/REGION)",
                    String::from_utf8_lossy(dir)
                )))
            }
        }
    };
    let r = String::from_utf8_lossy(&region).into_owned();
    let docs = |dir: String| -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for name in folder(repo, root, dir.as_bytes())?.files {
            let path = [dir.as_bytes(), b"/", &name].concat();
            out.push(read_json(repo, root, &path)?);
        }
        Ok(out)
    };
    let src = ElbSource {
        target_groups: docs(format!("/aws/elbv2/{r}/target-groups"))?,
        load_balancers: docs(format!("/aws/elbv2/{r}/load-balancers"))?,
        classic: docs(format!("/aws/elb/{r}"))?,
        region: r,
    };
    if src.target_groups.is_empty() && src.load_balancers.is_empty() && src.classic.is_empty() {
        return Err(Error::Invalid(format!(
            "the snapshot holds no load balancer of region {}",
            src.region
        )));
    }
    Ok(src)
}

/// One thing an apply creates, or finds there already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// "target group", "load balancer", "listener", "rule", "classic load balancer".
    pub kind: &'static str,
    /// Its name: `LB`, `LB:PORT`, `LB:PORT priority P`.
    pub name: String,
    /// What it is (protocol and port, type, subnets, the condition).
    pub detail: String,
    /// It exists in the target region and is kept as it is.
    pub exists: bool,
}

/// What exists in the target region.
#[derive(Debug, Default, Clone)]
struct Existing {
    /// Target group name → ARN.
    target_groups: BTreeMap<String, String>,
    /// Load balancer name → (ARN, listener ports).
    load_balancers: BTreeMap<String, (String, BTreeSet<i64>)>,
    classic: BTreeSet<String>,
}

/// What `aws-apply elb` will do.
#[derive(Debug, Clone)]
pub struct ElbPlan {
    pub source_region: String,
    pub region: String,
    pub steps: Vec<Step>,
    /// Ids of the source region the mapping does not name → where they are used.
    pub unmapped: BTreeMap<String, String>,
    /// What is not re-created, and why.
    pub skipped: Vec<String>,
    src: ElbSource,
    existing: Existing,
}

impl ElbPlan {
    /// How many steps create something.
    pub fn creates(&self) -> usize {
        self.steps.iter().filter(|s| !s.exists).count()
    }
    /// What to say when [`ElbPlan::blocked`].
    pub fn unmapped_error(&self) -> String {
        let n = self.unmapped.len();
        format!(
            "{n} {} of region {} {} no mapping for region {}: write a JSON file \
             {{\"OLD_ID\": \"NEW_ID\", ...}} with the target region's ids and give it with --map",
            if n == 1 { "id" } else { "ids" },
            self.source_region,
            if n == 1 { "has" } else { "have" },
            self.region
        )
    }
    /// Unmapped ids matter only in another region: there they do not exist.
    pub fn blocked(&self) -> bool {
        self.region != self.source_region && !self.unmapped.is_empty()
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every string of `v` that the mapping names, replaced by its new id.
fn map_ids(v: &mut Value, map: &Mapping) {
    match v {
        Value::String(s) => {
            if let Some(n) = map.get(s.as_str()) {
                *s = n.clone();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| map_ids(x, map)),
        Value::Object(o) => o.values_mut().for_each(|x| map_ids(x, map)),
        _ => {}
    }
}

fn has_auth(actions: &Value) -> bool {
    actions
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| s(a, "Type").starts_with("authenticate"))
}

/// A rule's conditions for the plan: `path-pattern /api/*`.
fn conditions_text(rule: &Value) -> String {
    rule["Conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut vals = strs(&c["Values"]);
            for k in ["HttpRequestMethod", "SourceIp"] {
                vals.extend(strs(&c[k]));
            }
            if let Some(h) = c["HttpHeader"].as_object() {
                vals.push(format!(
                    "{}: {}",
                    h.get("Name").and_then(Value::as_str).unwrap_or_default(),
                    strs(&c["HttpHeader"]["Values"]).join(",")
                ));
            }
            for q in c["QueryString"].as_array().into_iter().flatten() {
                vals.push(format!("{}={}", s(q, "Key"), s(q, "Value")));
            }
            format!("{} {}", s(c, "Field"), vals.join(","))
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Plans re-creating `src` in the region of `elb`, with ids replaced by `map`.
pub fn plan_elb(src: &ElbSource, map: &Mapping, elb: &Elb) -> Result<ElbPlan> {
    let existing = existing(elb)?;
    let mut unmapped = BTreeMap::new();
    let mut need = |id: &str, place: String| {
        if !id.is_empty() && !map.contains_key(id) {
            unmapped.entry(id.to_string()).or_insert(place);
        }
    };
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for t in &src.target_groups {
        let name = s(t, "TargetGroupName");
        need(&s(t, "VpcId"), format!("VPC of target group {name}"));
        steps.push(Step {
            kind: "target group",
            detail: format!(
                "{}:{} {} targets",
                s(t, "Protocol"),
                t["Port"],
                s(t, "TargetType")
            ),
            exists: existing.target_groups.contains_key(&name),
            name,
        });
    }
    for lb in &src.load_balancers {
        let name = s(lb, "LoadBalancerName");
        for z in lb["AvailabilityZones"].as_array().into_iter().flatten() {
            need(&s(z, "SubnetId"), format!("subnet of {name}"));
        }
        for g in strs(&lb["SecurityGroups"]) {
            need(&g, format!("security group of {name}"));
        }
        let found = existing.load_balancers.get(&name);
        steps.push(Step {
            kind: "load balancer",
            detail: [s(lb, "Type"), s(lb, "Scheme")]
                .iter()
                .filter(|x| !x.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            exists: found.is_some(),
            name: name.clone(),
        });
        for l in lb["Listeners"].as_array().into_iter().flatten() {
            let port = l["Port"].as_i64().unwrap_or_default();
            let lname = format!("{name}:{port}");
            if has_auth(&l["DefaultActions"]) {
                skipped.push(format!(
                    "listener {lname} and its rules: an authenticate action (its client secret \
                     is not in the backup; create it by hand)"
                ));
                continue;
            }
            for c in strs(&l["Certificates"]) {
                need(&c, format!("certificate of listener {lname}"));
            }
            let exists = found.is_some_and(|(_, ports)| ports.contains(&port));
            steps.push(Step {
                kind: "listener",
                detail: s(l, "Protocol"),
                exists,
                name: lname.clone(),
            });
            for r in l["Rules"].as_array().into_iter().flatten() {
                if r["IsDefault"].as_bool() == Some(true) {
                    continue;
                }
                let rname = format!("{lname} priority {}", s(r, "Priority"));
                if has_auth(&r["Actions"]) {
                    skipped.push(format!(
                        "rule {rname}: an authenticate action (create it by hand)"
                    ));
                    continue;
                }
                if exists {
                    // The listener is kept as it is, rules included.
                    continue;
                }
                steps.push(Step {
                    kind: "rule",
                    detail: conditions_text(r),
                    exists: false,
                    name: rname,
                });
            }
        }
    }
    for c in &src.classic {
        let name = s(c, "LoadBalancerName");
        let subnets = strs(&c["Subnets"]);
        for n in &subnets {
            need(n, format!("subnet of {name}"));
        }
        if subnets.is_empty() {
            for z in strs(&c["AvailabilityZones"]) {
                need(&z, format!("availability zone of {name}"));
            }
        }
        for g in strs(&c["SecurityGroups"]) {
            need(&g, format!("security group of {name}"));
        }
        for l in c["Listeners"].as_array().into_iter().flatten() {
            need(&s(l, "SSLCertificateId"), format!("certificate of {name}"));
        }
        steps.push(Step {
            kind: "classic load balancer",
            detail: match c["Listeners"].as_array().map_or(0, Vec::len) {
                1 => "1 listener".into(),
                n => format!("{n} listeners"),
            },
            exists: existing.classic.contains(&name),
            name,
        });
    }
    if src
        .classic
        .iter()
        .any(|c| !strs(&c["Instances"]).is_empty())
        || !src.target_groups.is_empty()
    {
        skipped.push("targets and instances: register the target region's own".into());
    }
    let mut mapped = src.clone();
    for v in mapped
        .target_groups
        .iter_mut()
        .chain(&mut mapped.load_balancers)
        .chain(&mut mapped.classic)
    {
        map_ids(v, map);
    }
    Ok(ElbPlan {
        source_region: src.region.clone(),
        region: elb.region.clone(),
        steps,
        unmapped,
        skipped,
        src: mapped,
        existing,
    })
}

fn existing(elb: &Elb) -> Result<Existing> {
    let c = elb.v2_client();
    let cl = elb.classic_client();
    elb.block_on(async {
        let mut ex = Existing::default();
        let mut marker = None;
        loop {
            let r = c
                .describe_target_groups()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(v2_error("describing target groups".into()))?;
            for t in r.target_groups() {
                ex.target_groups.insert(
                    t.target_group_name().unwrap_or_default().into(),
                    t.target_group_arn().unwrap_or_default().into(),
                );
            }
            match r.next_marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        loop {
            let r = c
                .describe_load_balancers()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(v2_error("describing load balancers".into()))?;
            for lb in r.load_balancers() {
                let arn = lb.load_balancer_arn().unwrap_or_default().to_string();
                let ls = c
                    .describe_listeners()
                    .load_balancer_arn(&arn)
                    .send()
                    .await
                    .map_err(v2_error(format!("listeners of {arn}")))?;
                let ports = ls
                    .listeners()
                    .iter()
                    .filter_map(|l| l.port().map(i64::from))
                    .collect();
                ex.load_balancers.insert(
                    lb.load_balancer_name().unwrap_or_default().into(),
                    (arn, ports),
                );
            }
            match r.next_marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        loop {
            let r = cl
                .describe_load_balancers()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(classic_error("describing classic load balancers".into()))?;
            for lb in r.load_balancer_descriptions() {
                ex.classic
                    .insert(lb.load_balancer_name().unwrap_or_default().into());
            }
            match r.next_marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        Ok(ex)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_mapped_wherever_they_occur() {
        let mut v = json!({"AvailabilityZones": [{"SubnetId": "subnet-a", "ZoneName": "eu-west-1a"}],
                           "SecurityGroups": ["sg-1", "sg-2"], "Name": "subnet-a-lb"});
        let map = Mapping::from([
            ("subnet-a".to_string(), "subnet-b".to_string()),
            ("sg-1".to_string(), "sg-9".to_string()),
        ]);
        map_ids(&mut v, &map);
        assert_eq!(v["AvailabilityZones"][0]["SubnetId"], "subnet-b");
        assert_eq!(v["SecurityGroups"], json!(["sg-9", "sg-2"]));
        // A value equal to a key is replaced; a value containing one is not.
        assert_eq!(v["Name"], "subnet-a-lb");
    }

    #[test]
    fn conditions_read_plainly() {
        let r = json!({"Conditions": [
            {"Field": "path-pattern", "Values": ["/api/*"]},
            {"Field": "http-header", "Values": [], "HttpHeader": {"Name": "X-Env", "Values": ["dr"]}},
            {"Field": "query-string", "Values": [], "QueryString": [{"Key": "v", "Value": "2"}]}]});
        assert_eq!(
            conditions_text(&r),
            "path-pattern /api/* and http-header X-Env: dr and query-string v=2"
        );
    }
}
