//! Bucket lifecycle rules for a repository: one rule moves the repository's data packs (and
//! nothing else) to an archive class after N days, one aborts multipart uploads left
//! incomplete. Rules of the bucket that belong to others are kept as they are; `check` reports
//! every rule that would archive metadata or delete anything of the repository.

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus, LifecycleRule,
    LifecycleRuleFilter, Transition, TransitionStorageClass,
};

use super::{sdk_err, S3Backend, S3Config};
use crate::backend::{FileKind, StorageClass};
use crate::error::{Error, Result};

/// Days after which S3 aborts an incomplete multipart upload of the repository.
pub const ABORT_MULTIPART_DAYS: i32 = 7;

/// The ids of this repository's two rules (S3 allows 255 characters).
pub fn rule_ids(cfg: &S3Config) -> (String, String) {
    let p = if cfg.prefix.is_empty() {
        "(bucket root)".to_string()
    } else {
        cfg.prefix.chars().take(200).collect()
    };
    (
        format!("chunkbak data to archive: {p}"),
        format!("chunkbak abort incomplete uploads: {p}"),
    )
}

/// The prefix a repository's objects start with (`PREFIX/`, or empty at the bucket root).
fn repo_prefix(cfg: &S3Config) -> String {
    if cfg.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", cfg.prefix)
    }
}

/// This repository's rules: data packs to `class` after `days`, incomplete uploads aborted.
pub fn repository_rules(cfg: &S3Config, days: u32, class: StorageClass) -> Vec<LifecycleRule> {
    let (data_id, mpu_id) = rule_ids(cfg);
    let data = LifecycleRule::builder()
        .id(data_id)
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .prefix(cfg.folder(FileKind::Data))
                .build(),
        )
        .transitions(
            Transition::builder()
                .days(days as i32)
                .storage_class(TransitionStorageClass::from(class.name()))
                .build(),
        )
        .build()
        .expect("status is set");
    let mpu = LifecycleRule::builder()
        .id(mpu_id)
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .prefix(repo_prefix(cfg))
                .build(),
        )
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(ABORT_MULTIPART_DAYS)
                .build(),
        )
        .build()
        .expect("status is set");
    vec![data, mpu]
}

/// The bucket's rules with this repository's replaced by `ours`; every other rule is kept.
pub fn merge(existing: Vec<LifecycleRule>, ours: Vec<LifecycleRule>) -> Vec<LifecycleRule> {
    let ids: Vec<Option<String>> = ours.iter().map(|r| r.id().map(str::to_string)).collect();
    let mut out: Vec<LifecycleRule> = existing
        .into_iter()
        .filter(|r| !ids.contains(&r.id().map(str::to_string)))
        .collect();
    out.extend(ours);
    out
}

/// The key prefix a rule's filter selects ("" = the whole bucket), and whether it also filters
/// by tags or sizes (then it may apply to only some of the objects under that prefix).
#[allow(deprecated)]
pub fn rule_scope(r: &LifecycleRule) -> (String, bool) {
    if let Some(f) = r.filter() {
        if let Some(a) = f.and() {
            let narrowed = !a.tags().is_empty()
                || a.object_size_greater_than().is_some()
                || a.object_size_less_than().is_some();
            return (a.prefix().unwrap_or("").to_string(), narrowed);
        }
        let narrowed = f.tag().is_some()
            || f.object_size_greater_than().is_some()
            || f.object_size_less_than().is_some();
        return (f.prefix().unwrap_or("").to_string(), narrowed);
    }
    (r.prefix().unwrap_or("").to_string(), false)
}

/// A one-line description of what a rule does, for `lifecycle show`.
pub fn describe(r: &LifecycleRule) -> String {
    let mut acts = Vec::new();
    for t in r.transitions() {
        let when = match (t.days(), t.date()) {
            (Some(d), _) => format!("after {d} days"),
            (None, Some(d)) => format!("on {d}"),
            _ => String::new(),
        };
        let class = t.storage_class().map_or("?", |c| c.as_str());
        acts.push(format!("transition to {class} {when}"));
    }
    if let Some(e) = r.expiration() {
        if let Some(d) = e.days() {
            acts.push(format!("expire after {d} days"));
        } else if let Some(d) = e.date() {
            acts.push(format!("expire on {d}"));
        } else if e.expired_object_delete_marker() == Some(true) {
            acts.push("remove expired delete markers".into());
        }
    }
    if let Some(a) = r.abort_incomplete_multipart_upload() {
        if let Some(d) = a.days_after_initiation() {
            acts.push(format!("abort incomplete multipart uploads after {d} days"));
        }
    }
    if !r.noncurrent_version_transitions().is_empty() || r.noncurrent_version_expiration().is_some()
    {
        acts.push("act on noncurrent versions".into());
    }
    let (prefix, narrowed) = rule_scope(r);
    format!(
        "{} [{}] prefix {:?}{}: {}",
        r.id().unwrap_or("(no id)"),
        r.status().as_str(),
        prefix,
        if narrowed {
            " (plus tag/size filter)"
        } else {
            ""
        },
        if acts.is_empty() {
            "no action".to_string()
        } else {
            acts.join("; ")
        }
    )
}

/// One finding of `lifecycle check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// True when the rule endangers the repository; false for advice.
    pub problem: bool,
    pub rule: Option<String>,
    pub message: String,
}

fn overlaps(rule_prefix: &str, folder: &str) -> bool {
    folder.starts_with(rule_prefix) || rule_prefix.starts_with(folder)
}

/// Checks a bucket's rules against a repository: no rule may archive or expire metadata, no
/// rule may expire data (retention is `forget`/`prune`'s job); a missing data rule is advice.
pub fn check(rules: &[LifecycleRule], cfg: &S3Config) -> Vec<Finding> {
    let meta: Vec<String> = [
        FileKind::Key,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Tree,
        FileKind::Lock,
    ]
    .iter()
    .map(|k| cfg.folder(*k))
    .collect();
    let config = format!("{}config", repo_prefix(cfg));
    let data = cfg.folder(FileKind::Data);
    let (data_id, _) = rule_ids(cfg);
    let mut out = Vec::new();
    let mut has_data_rule = false;
    let mut has_mpu_rule = false;
    for r in rules {
        if r.status() != &ExpirationStatus::Enabled {
            continue;
        }
        let id = r.id().unwrap_or("(no id)").to_string();
        let (prefix, narrowed) = rule_scope(r);
        let may = if narrowed { "may " } else { "" };
        let archive_to: Vec<&str> = r
            .transitions()
            .iter()
            .filter_map(|t| t.storage_class())
            .map(|c| c.as_str())
            .filter(|c| StorageClass::from_name(c).is_archive())
            .collect();
        // The config is one key: a rule touches it only if its prefix is a prefix of the key.
        let touched = meta
            .iter()
            .filter(|m| overlaps(&prefix, m))
            .chain(std::iter::once(&config).filter(|c| c.starts_with(&prefix)));
        for m in touched {
            if let Some(c) = archive_to.first() {
                out.push(Finding {
                    problem: true,
                    rule: Some(id.clone()),
                    message: format!(
                        "rule {id:?} {may}transition {m} to {c}: repository metadata must stay \
                         readable at once (restrict the rule's prefix to {data})"
                    ),
                });
            }
        }
        let expires = r
            .expiration()
            .is_some_and(|e| e.days().is_some() || e.date().is_some());
        if expires
            && (overlaps(&prefix, &data)
                || config.starts_with(&prefix)
                || meta.iter().any(|m| overlaps(&prefix, m)))
        {
            out.push(Finding {
                problem: true,
                rule: Some(id.clone()),
                message: format!(
                    "rule {id:?} {may}expire (delete) objects of the repository under {:?}: \
                     snapshots would lose data; leave deleting to `chunkbak forget --prune`",
                    if prefix.is_empty() {
                        "the bucket root"
                    } else {
                        prefix.as_str()
                    }
                ),
            });
        }
        if overlaps(&prefix, &data) && !archive_to.is_empty() && id == data_id {
            has_data_rule = true;
        }
        if r.abort_incomplete_multipart_upload().is_some() && overlaps(&prefix, &data) {
            has_mpu_rule = true;
        }
    }
    if !has_data_rule {
        out.push(Finding {
            problem: false,
            rule: None,
            message: format!(
                "no rule of this repository moves {data} to an archive class \
                 (`chunkbak lifecycle apply --transition-after 30d --to GLACIER`)"
            ),
        });
    }
    if !has_mpu_rule {
        out.push(Finding {
            problem: false,
            rule: None,
            message: "no rule aborts incomplete multipart uploads: parts of interrupted uploads \
                      are billed until removed"
                .into(),
        });
    }
    out
}

impl S3Backend {
    /// The bucket's lifecycle rules (none when it has no configuration).
    pub fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>> {
        let c = self.config();
        self.block_on(async {
            match self
                .client()
                .get_bucket_lifecycle_configuration()
                .bucket(&c.bucket)
                .send()
                .await
            {
                Ok(o) => Ok(o.rules().to_vec()),
                Err(e)
                    if aws_sdk_s3::error::ProvideErrorMetadata::code(&e)
                        == Some("NoSuchLifecycleConfiguration") =>
                {
                    Ok(Vec::new())
                }
                Err(e) => Err(sdk_err(
                    format!("GET lifecycle configuration of bucket {}", c.bucket),
                    e,
                )),
            }
        })
    }

    /// Replaces the bucket's lifecycle configuration with `rules`.
    pub fn put_lifecycle_rules(&self, rules: Vec<LifecycleRule>) -> Result<()> {
        let c = self.config();
        let conf = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(|e| Error::Other(format!("lifecycle configuration: {e}")))?;
        self.block_on(async {
            self.client()
                .put_bucket_lifecycle_configuration()
                .bucket(&c.bucket)
                .lifecycle_configuration(conf)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    sdk_err(
                        format!("PUT lifecycle configuration of bucket {}", c.bucket),
                        e,
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> S3Config {
        S3Config::parse("s3:bucket/hosts/repo").unwrap()
    }

    fn rule(id: &str, prefix: &str) -> aws_sdk_s3::types::builders::LifecycleRuleBuilder {
        LifecycleRule::builder()
            .id(id)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
    }

    #[test]
    fn merge_keeps_other_rules_and_replaces_ours() {
        let c = cfg();
        let other = rule("logs", "logs/")
            .expiration(
                aws_sdk_s3::types::LifecycleExpiration::builder()
                    .days(30)
                    .build(),
            )
            .build()
            .unwrap();
        let first = merge(
            vec![other.clone()],
            repository_rules(&c, 30, StorageClass::Glacier),
        );
        assert_eq!(first.len(), 3);
        let again = merge(first, repository_rules(&c, 60, StorageClass::DeepArchive));
        assert_eq!(again.len(), 3, "applying twice must not duplicate rules");
        assert_eq!(again[0], other);
        let t = &again[1].transitions()[0];
        assert_eq!(t.days(), Some(60));
        assert_eq!(t.storage_class().unwrap().as_str(), "DEEP_ARCHIVE");
        assert_eq!(
            rule_scope(&again[1]).0,
            "hosts/repo/data/",
            "the data rule covers data packs only"
        );
        let findings = check(&again, &c);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn check_flags_rules_that_archive_metadata_or_expire_data() {
        let c = cfg();
        let archive_all = rule("everything", "hosts/")
            .transitions(
                Transition::builder()
                    .days(1)
                    .storage_class(TransitionStorageClass::Glacier)
                    .build(),
            )
            .build()
            .unwrap();
        let expire = rule("expire", "")
            .expiration(
                aws_sdk_s3::types::LifecycleExpiration::builder()
                    .days(90)
                    .build(),
            )
            .build()
            .unwrap();
        let unrelated = rule("other-app", "other/")
            .expiration(
                aws_sdk_s3::types::LifecycleExpiration::builder()
                    .days(1)
                    .build(),
            )
            .build()
            .unwrap();
        let ir = rule("ir-ok", "hosts/repo/")
            .transitions(
                Transition::builder()
                    .days(1)
                    .storage_class(TransitionStorageClass::GlacierIr)
                    .build(),
            )
            .build()
            .unwrap();
        let f = check(&[archive_all, expire, unrelated, ir], &c);
        let problems: Vec<&Finding> = f.iter().filter(|f| f.problem).collect();
        // Five metadata folders plus the config object archived by "everything", one expiry.
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems
            .iter()
            .any(|p| p.message.contains("hosts/repo/index/") && p.message.contains("GLACIER")));
        assert!(problems
            .iter()
            .any(|p| p.rule.as_deref() == Some("expire") && p.message.contains("expire")));
        assert!(!f.iter().any(|p| p.rule.as_deref() == Some("other-app")));
        // A rule on a neighbour of the config key ("hosts/repo/config.bak/") is not about it.
        let neighbour = rule("neighbour", "hosts/repo/config.bak/")
            .transitions(
                Transition::builder()
                    .days(1)
                    .storage_class(TransitionStorageClass::Glacier)
                    .build(),
            )
            .build()
            .unwrap();
        assert!(check(&[neighbour], &c).iter().all(|f| !f.problem));
        assert!(!f.iter().any(|p| p.rule.as_deref() == Some("ir-ok")));
        // Advice: no data rule, no abort rule.
        assert_eq!(f.iter().filter(|f| !f.problem).count(), 2);
    }
}
