//! Archived data and S3 bucket settings: restore plans, thaws (`restore`, `warmup`), request
//! accounting, and `lifecycle show|apply|check`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use chunkbak_engine::backend::s3::lifecycle;
use chunkbak_engine::backend::s3::S3Backend;
use chunkbak_engine::backend::{Backend, RequestCounter, RequestCounts, StorageClass, Tier};
use chunkbak_engine::ops::thaw::{self, Plan, TIER_COSTS};
use chunkbak_engine::{timeparse, Repository};

use crate::args::{self, Global, ThawArgs, TierArg};
use crate::open::repo_spec;
use crate::output::{human_bytes, Out};
use crate::progress::Bar;
use crate::{exit, usage};

/// The request counters of this run's backends (the repository, and for `copy` the other
/// one), with their locations, read at the end (the backends themselves are dropped with the
/// repositories, which stops and cleans up uploads of a failed run).
pub static REQUESTS: Mutex<Vec<(String, Arc<RequestCounter>)>> = Mutex::new(Vec::new());

/// Remembers the request counter of one of the run's backends.
pub fn track(b: &dyn Backend) {
    if let Some(c) = b.request_counter() {
        let mut v = REQUESTS.lock().expect("requests lock");
        if !v.iter().any(|(_, x)| Arc::ptr_eq(x, &c)) {
            v.push((b.location(), c));
        }
    }
}

/// Each tracked repository's requests, and their sum.
fn counted() -> Option<(Vec<(String, RequestCounts)>, RequestCounts)> {
    let v: Vec<(String, RequestCounts)> = REQUESTS
        .lock()
        .expect("requests lock")
        .iter()
        .map(|(l, c)| (l.clone(), c.snapshot()))
        .collect();
    if v.is_empty() {
        return None;
    }
    let mut all = RequestCounts::default();
    for (_, r) in &v {
        all += *r;
    }
    Some((v, all))
}

fn counts_json(r: &RequestCounts) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in r.by_type() {
        m.insert(k.to_string(), v.into());
    }
    m.insert("bytes_up".into(), r.bytes_up.into());
    m.insert("bytes_down".into(), r.bytes_down.into());
    m
}

/// Reports the S3 requests of this run (nothing for local repositories): a `requests` JSON
/// line (the sum, and `repositories`: each S3 repository's own, by location).
pub fn report_requests(out: &Out) {
    let Some((each, all)) = counted() else {
        return;
    };
    if out.json {
        let mut m = counts_json(&all);
        let repos: Vec<Value> = each
            .iter()
            .map(|(l, r)| {
                let mut x = counts_json(r);
                x.insert("location".into(), l.clone().into());
                Value::Object(x)
            })
            .collect();
        m.insert("repositories".into(), repos.into());
        out.json_line("requests", Value::Object(m));
    }
}

fn counts_text(r: &RequestCounts) -> String {
    let counts: Vec<String> = r
        .by_type()
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!(
        "{}; sent {}, received {}",
        counts.join(", "),
        human_bytes(r.bytes_up),
        human_bytes(r.bytes_down)
    )
}

/// The run's S3 requests and bytes on one line, for the final summary (None for local
/// repositories); each repository's own when the run used two (`copy`).
pub fn requests_line() -> Option<String> {
    let (each, all) = counted()?;
    if each.len() == 1 {
        return Some(format!("S3 requests: {}", counts_text(&all)));
    }
    let parts: Vec<String> = each
        .iter()
        .map(|(l, r)| format!("{l}: {}", counts_text(r)))
        .collect();
    Some(format!("S3 requests: {}", parts.join("; ")))
}

pub fn tier(t: TierArg) -> Tier {
    match t {
        TierArg::Bulk => Tier::Bulk,
        TierArg::Standard => Tier::Standard,
        TierArg::Expedited => Tier::Expedited,
    }
}

/// Prints a restore plan: what is needed, what is archived, and what thawing costs.
pub fn print_plan(out: &Out, p: &Plan, a: &ThawArgs) {
    let pack_bytes: u64 = p.packs.iter().map(|x| x.size).sum();
    let (cold_n, cold_b) = p.count("cold");
    let (thawing_n, thawing_b) = p.count("thawing");
    let (thawed_n, thawed_b) = p.count("thawed");
    // Cost of thawing the cold packs, per archive class and tier.
    let mut tiers = Vec::new();
    for class in [StorageClass::Glacier, StorageClass::DeepArchive] {
        let (n, b) = p
            .packs
            .iter()
            .filter(|x| x.class == class && x.state == chunkbak_engine::backend::ThawState::Cold)
            .fold((0u64, 0u64), |(n, b), x| (n + 1, b + x.size));
        if n == 0 {
            continue;
        }
        for c in TIER_COSTS.iter().filter(|c| c.class == class) {
            let usd = thaw::tier_estimate(class, c.tier, n, b).unwrap_or(0.0);
            tiers.push((class, c.tier, c.time, n, b, usd));
        }
    }
    if out.json {
        let t: Vec<Value> = tiers
            .iter()
            .map(|(class, tier, time, n, b, usd)| {
                json!({"class": class.name(), "tier": tier.name(), "time": time, "packs": n,
                       "bytes": b, "usd_estimate": (usd * 100.0).round() / 100.0})
            })
            .collect();
        out.json_line(
            "plan",
            json!({
                "files": p.files, "bytes": p.bytes, "packs": p.packs.len(), "pack_bytes": pack_bytes,
                "cold": {"packs": cold_n, "bytes": cold_b},
                "thawing": {"packs": thawing_n, "bytes": thawing_b},
                "thawed": {"packs": thawed_n, "bytes": thawed_b},
                "tier": a.tier_name(), "restore_days": a.restore_days,
                "thaw_estimates": t,
            }),
        );
        return;
    }
    if out.quiet {
        return;
    }
    crate::elog!(
        "plan: {} files, {} of file data, from {} packs ({})",
        p.files,
        human_bytes(p.bytes),
        p.packs.len(),
        human_bytes(pack_bytes)
    );
    if cold_n + thawing_n + thawed_n == 0 {
        crate::elog!("plan: every needed pack is readable now");
        return;
    }
    crate::elog!(
        "plan: archived packs needed: {cold_n} cold ({}), {thawing_n} thawing ({}), {thawed_n} thawed ({})",
        human_bytes(cold_b),
        human_bytes(thawing_b),
        human_bytes(thawed_b)
    );
    for (class, tier, time, n, b, usd) in &tiers {
        crate::elog!(
            "plan: thaw {n} {} packs ({}) with tier {:<9} {time:<16} ~${usd:.2}{}",
            class.name(),
            human_bytes(*b),
            tier.name(),
            if tier.name() == a.tier_name() {
                "  <- --tier"
            } else {
                ""
            }
        );
    }
    if !tiers.is_empty() {
        crate::elog!(
            "plan: estimates use AWS list prices (us-east-1) for retrieval; thawed copies are \
             billed as STANDARD for --restore-days {}",
            a.restore_days
        );
    }
}

impl ThawArgs {
    pub fn tier_name(&self) -> &'static str {
        tier(self.tier).name()
    }

    pub fn poll(&self) -> anyhow::Result<Duration> {
        timeparse::parse_duration(&self.poll_interval).context("--poll-interval")
    }

    pub fn max_wait(&self) -> anyhow::Result<Option<Duration>> {
        self.max_wait
            .as_deref()
            .map(|m| timeparse::parse_duration(m).context("--max-wait"))
            .transpose()
    }
}

/// Requests thaws for the plan's cold packs and says so. Returns how many are not readable.
pub fn request_thaws(
    repo: &Repository,
    plan: &mut Plan,
    a: &ThawArgs,
    out: &Out,
) -> anyhow::Result<usize> {
    let n = thaw::request(repo, plan, tier(a.tier), a.restore_days)?;
    let pending = plan.unreadable().count();
    if out.json {
        out.json_line(
            "thaw",
            json!({"requested": n, "pending": pending, "tier": a.tier_name(),
                   "restore_days": a.restore_days}),
        );
    } else if !out.quiet && (n > 0 || pending > 0) {
        crate::elog!(
            "thaw: requested {n} packs (tier {}, readable for {} days); {pending} packs not readable yet",
            a.tier_name(),
            a.restore_days
        );
    }
    Ok(pending)
}

/// The wait report of a thaw gate: a JSON line or a note above the progress bar.
pub fn wait_reporter<'a>(out: &'a Out, bar: &'a Bar) -> impl Fn(usize, Duration) + Sync + 'a {
    move |pending, next| {
        if out.json {
            out.json_line(
                "thaw_wait",
                json!({"pending": pending, "next_check_s": next.as_secs_f64()}),
            );
        } else {
            bar.note(&format!(
                "waiting for {pending} archived packs to thaw; checking again in {}s \
                 (Ctrl-C is safe: rerun the same command to continue)",
                next.as_secs()
            ));
        }
    }
}

pub fn lifecycle_show(s3: &S3Backend, out: &Out) -> anyhow::Result<()> {
    let rules = s3.lifecycle_rules()?;
    let (data_id, mpu_id) = lifecycle::rule_ids(s3.config());
    if out.json {
        let v: Vec<Value> = rules
            .iter()
            .map(|r| {
                let id = r.id().unwrap_or("");
                json!({"id": id, "status": r.status().as_str(),
                       "prefix": lifecycle::rule_scope(r).0,
                       "description": lifecycle::describe(r),
                       "repository": id == data_id || id == mpu_id})
            })
            .collect();
        out.json_line(
            "lifecycle",
            json!({"bucket": s3.config().bucket, "rules": v}),
        );
        return Ok(());
    }
    if rules.is_empty() {
        out.line(format!(
            "bucket {} has no lifecycle rules",
            s3.config().bucket
        ));
    }
    for r in &rules {
        let id = r.id().unwrap_or("");
        let mark = if id == data_id || id == mpu_id {
            "* "
        } else {
            "  "
        };
        out.line(format!("{mark}{}", lifecycle::describe(r)));
    }
    if rules
        .iter()
        .any(|r| r.id() == Some(&data_id) || r.id() == Some(&mpu_id))
    {
        out.line("(* = rules of this repository)");
    }
    Ok(())
}

/// Prints findings; returns whether any is a problem.
pub fn lifecycle_check(s3: &S3Backend, out: &Out) -> anyhow::Result<bool> {
    let rules = s3.lifecycle_rules()?;
    let findings = lifecycle::check(&rules, s3.config());
    let problems = findings.iter().filter(|f| f.problem).count();
    if out.json {
        let v: Vec<Value> = findings
            .iter()
            .map(|f| json!({"problem": f.problem, "rule": f.rule, "message": f.message}))
            .collect();
        out.json_line(
            "lifecycle_check",
            json!({"rules": rules.len(), "problems": problems, "findings": v}),
        );
    } else {
        for f in &findings {
            crate::elog!(
                "{}: {}",
                if f.problem { "problem" } else { "note" },
                f.message
            );
        }
        out.line(format!(
            "checked {} lifecycle rules of bucket {}: {problems} problems",
            rules.len(),
            s3.config().bucket
        ));
    }
    Ok(problems > 0)
}

pub fn lifecycle_apply(
    s3: &S3Backend,
    out: &Out,
    transition_after: &str,
    to: &str,
) -> anyhow::Result<()> {
    let class = StorageClass::parse(to)?;
    if class == StorageClass::Standard {
        crate::usage!("--to STANDARD moves nothing: name the class data packs should move to");
    }
    let after = timeparse::parse_duration(transition_after).context("--transition-after")?;
    let days = (after.as_secs() / 86_400) as u32;
    if after.as_secs() % 86_400 != 0 {
        crate::usage!("--transition-after must be whole days (S3 lifecycle rules count days)");
    }
    let existing = s3.lifecycle_rules()?;
    let kept = existing.len();
    let merged = lifecycle::merge(
        existing,
        lifecycle::repository_rules(s3.config(), days, class),
    );
    let others = merged.len() - 2;
    s3.put_lifecycle_rules(merged)?;
    if out.json {
        out.json_line(
            "lifecycle_apply",
            json!({"bucket": s3.config().bucket, "days": days, "class": class.name(),
                   "other_rules_kept": others, "rules_before": kept}),
        );
    } else {
        out.line(format!(
            "bucket {}: data packs of {} move to {} after {days} days; incomplete uploads are \
             aborted after {} days; {others} other rules kept",
            s3.config().bucket,
            s3.config().folder(chunkbak_engine::backend::FileKind::Data),
            class.name(),
            lifecycle::ABORT_MULTIPART_DAYS
        ));
    }
    Ok(())
}

/// `lifecycle show|apply|check`.
pub fn cmd_lifecycle(g: &Global, out: &Out, c: &args::LifecycleCommand) -> anyhow::Result<i32> {
    let spec = repo_spec(g)?;
    let Some(cfg) = &spec.s3 else {
        usage!("lifecycle rules are a setting of S3 buckets: use -r s3:BUCKET/PREFIX");
    };
    let s3 = Arc::new(S3Backend::new(cfg.clone())?);
    track(s3.as_ref());
    let code = match c {
        args::LifecycleCommand::Show => {
            lifecycle_show(&s3, out)?;
            exit::OK
        }
        args::LifecycleCommand::Apply(a) => {
            lifecycle_apply(&s3, out, &a.transition_after, &a.to)?;
            if lifecycle_check(&s3, out)? {
                exit::ERROR
            } else {
                exit::OK
            }
        }
        args::LifecycleCommand::Check => {
            if lifecycle_check(&s3, out)? {
                exit::ERROR
            } else {
                exit::OK
            }
        }
    };
    Ok(code)
}
