//! S3 Object Lock: retention set at upload, read, extended; deletion of a version once its
//! retention has ended; hiding behind a delete marker while it lasts.
//!
//! A bucket with Object Lock is always versioned. chunkbak never overwrites (every write is
//! `If-None-Match: *`), so each key has one version; a delete names it, so the space comes
//! back (a DeleteObject without a version would only add a delete marker and free nothing).

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockRetention, ObjectLockRetentionMode};

use super::{sdk_err, Shared};
use crate::backend::{Extended, FileKind, LockMode, ObjectLock, Purge};
use crate::error::{Error, Result};

/// The SDK's mode of a PutObject/CreateMultipartUpload.
pub(super) fn put_mode(m: LockMode) -> aws_sdk_s3::types::ObjectLockMode {
    match m {
        LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
        LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
    }
}

fn retention_mode(m: LockMode) -> ObjectLockRetentionMode {
    match m {
        LockMode::Governance => ObjectLockRetentionMode::Governance,
        LockMode::Compliance => ObjectLockRetentionMode::Compliance,
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// An object's state as one HEAD reports it.
pub(super) struct Head {
    pub version: Option<String>,
    /// Retained until (seconds since the epoch), if locked.
    pub until: Option<i64>,
}

impl Shared {
    /// The lock a new object of `kind` carries: `(mode, retain until)`.
    pub(super) fn lock_for(&self, kind: FileKind) -> Option<(LockMode, DateTime)> {
        let lock = (*self.lock.read().expect("lock setting"))?;
        ObjectLock::covers(kind).then(|| {
            (
                lock.mode,
                DateTime::from_secs(now() + i64::from(lock.days) * 86_400),
            )
        })
    }

    /// Creates the bucket with Object Lock enabled (which also enables versioning).
    pub(super) async fn create_locked_bucket(&self) -> Result<()> {
        self.client
            .create_bucket()
            .bucket(&self.cfg.bucket)
            .set_create_bucket_configuration(self.bucket_location())
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                sdk_err(
                    format!("creating bucket {} with Object Lock", self.cfg.bucket),
                    e,
                )
            })
    }

    /// Whether the bucket has Object Lock enabled (or is missing, and `create` will make it
    /// so); an error that says how to get it if not.
    pub(super) async fn check_lock_enabled(&self) -> Result<()> {
        let b = &self.cfg.bucket;
        // The bucket's setting, not how chunkbak was called: an error (1), not a usage one.
        let refuse = |why: String| {
            Error::Other(format!(
                "bucket {b} {why}: Object Lock must be enabled on the bucket (at creation: \
                 `aws s3api create-bucket --bucket {b} --object-lock-enabled-for-bucket`, or \
                 on a versioned bucket: `aws s3api put-object-lock-configuration --bucket {b} \
                 --object-lock-configuration ObjectLockEnabled=Enabled`); see docs/s3.md \
                 \"Object Lock\""
            ))
        };
        match self
            .client
            .get_object_lock_configuration()
            .bucket(b)
            .send()
            .await
        {
            Ok(out) => {
                let cfg = out.object_lock_configuration();
                let on =
                    cfg.and_then(|c| c.object_lock_enabled()) == Some(&ObjectLockEnabled::Enabled);
                if on {
                    Ok(())
                } else {
                    Err(refuse("has Object Lock switched off".into()))
                }
            }
            // A missing bucket: `create` makes it with Object Lock.
            Err(e) if e.code() == Some("NoSuchBucket") => Ok(()),
            Err(e)
                if e.code() == Some("ObjectLockConfigurationNotFoundError")
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Err(refuse("has no Object Lock configuration".into()))
            }
            Err(e) => Err(sdk_err(
                format!("reading the Object Lock configuration of bucket {b}"),
                e,
            )),
        }
    }

    /// HEAD: the version and retention of an object, `None` when it is missing.
    pub(super) async fn head_lock(&self, key: &str) -> Result<Option<Head>> {
        Ok(self.head(key).await?.map(|h| Head {
            version: h.version_id().map(str::to_string),
            until: h.object_lock_retain_until_date().map(|d| d.secs()),
        }))
    }

    /// Sets the retention of the current version to `until` (never shortens: S3 refuses).
    pub(super) async fn put_retention(
        &self,
        key: &str,
        mode: LockMode,
        until: i64,
    ) -> Result<Extended> {
        let r = self
            .client
            .put_object_retention()
            .bucket(&self.cfg.bucket)
            .key(key)
            .retention(
                ObjectLockRetention::builder()
                    .mode(retention_mode(mode))
                    .retain_until_date(DateTime::from_secs(until))
                    .build(),
            )
            .send()
            .await;
        match r {
            Ok(_) => Ok(Extended::Extended),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if e.code() == Some("NoSuchKey") || matches!(status, Some(404 | 405)) {
                    Ok(Extended::Gone)
                } else {
                    Err(sdk_err(
                        format!("extending the retention of {}", self.url(key)),
                        e,
                    ))
                }
            }
        }
    }

    /// Retains an object until `until` at least: one PutObjectRetention (callers HEAD
    /// first, to renew only what needs it). S3 refuses to shorten a retention: when another
    /// run extended it further meanwhile, that refusal is read back as `AlreadyLonger`.
    pub(super) async fn extend(&self, key: &str, until: i64) -> Result<Extended> {
        let Some(mode) = self.lock.read().expect("lock setting").map(|l| l.mode) else {
            return Ok(Extended::AlreadyLonger);
        };
        match self.put_retention(key, mode, until).await {
            Err(e) => match self.head_lock(key).await {
                Ok(Some(h)) if h.until.is_some_and(|u| u >= until) => Ok(Extended::AlreadyLonger),
                Ok(None) => Ok(Extended::Gone),
                _ => Err(e),
            },
            r => r,
        }
    }

    /// After a multipart upload: stores that drop the lock headers of
    /// CreateMultipartUpload get the retention set on the completed object.
    pub(super) async fn lock_completed(&self, kind: FileKind, key: &str) -> Result<()> {
        let Some((mode, until)) = self.lock_for(kind) else {
            return Ok(());
        };
        match self.head_lock(key).await? {
            Some(h) if h.until.is_none() => {
                self.put_retention(key, mode, until.secs()).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Deletes an object under Object Lock: `Err(Locked)` while it is retained; otherwise
    /// its version, so the space comes back.
    pub(super) async fn delete_locked(&self, key: &str) -> Result<()> {
        let h = self
            .head_lock(key)
            .await?
            .ok_or_else(|| Error::ObjectNotFound(self.url(key)))?;
        if let Some(until) = h.until.filter(|u| *u > now()) {
            return Err(Error::Locked {
                object: self.url(key),
                until,
            });
        }
        let r = self
            .client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .set_version_id(h.version)
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            // Retained after all (clocks disagree, or the retention was extended meanwhile).
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                match self.head_lock(key).await? {
                    Some(Head {
                        until: Some(until), ..
                    }) => Err(Error::Locked {
                        object: self.url(key),
                        until,
                    }),
                    _ => Err(sdk_err(format!("DELETE {}", self.url(key)), e)),
                }
            }
            Err(e) => Err(sdk_err(format!("DELETE {}", self.url(key)), e)),
        }
    }

    /// The retention of one version of an object.
    async fn version_until(&self, key: &str, version: &str) -> Result<Option<i64>> {
        self.client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .version_id(version)
            .send()
            .await
            .map(|h| h.object_lock_retain_until_date().map(|d| d.secs()))
            .map_err(|e| sdk_err(format!("HEAD {} version {version}", self.url(key)), e))
    }

    async fn delete_version(&self, key: &str, version: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .version_id(version)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_err(format!("DELETE {} version {version}", self.url(key)), e))
    }

    /// Deletes, under `prefix`, the versions of objects hidden behind a delete marker whose
    /// retention has ended, then the markers of objects with no version left.
    pub(super) async fn purge_hidden(&self, prefix: &str) -> Result<Purge> {
        use std::collections::BTreeMap;
        // key -> (versions, delete markers, whether the latest is a marker)
        let mut keys: BTreeMap<String, (Vec<String>, Vec<String>, bool)> = BTreeMap::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.cfg.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| sdk_err(format!("LIST versions {}", self.url(prefix)), e))?;
            for v in out.versions() {
                if let (Some(k), Some(id)) = (v.key(), v.version_id()) {
                    keys.entry(k.to_string())
                        .or_default()
                        .0
                        .push(id.to_string());
                }
            }
            for m in out.delete_markers() {
                if let (Some(k), Some(id)) = (m.key(), m.version_id()) {
                    let e = keys.entry(k.to_string()).or_default();
                    e.1.push(id.to_string());
                    e.2 |= m.is_latest() == Some(true);
                }
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            version_marker = out.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        let now = now();
        let mut p = Purge::default();
        for (key, (versions, markers, hidden)) in keys {
            if !hidden {
                continue;
            }
            let mut left = 0;
            for v in &versions {
                match self.version_until(&key, v).await? {
                    Some(until) if until > now => {
                        left += 1;
                        p.locked += 1;
                        p.last_until = Some(p.last_until.map_or(until, |l| l.max(until)));
                    }
                    _ => {
                        self.delete_version(&key, v).await?;
                        p.deleted += 1;
                    }
                }
            }
            if left == 0 {
                for m in &markers {
                    self.delete_version(&key, m).await?;
                }
            }
        }
        Ok(p)
    }
}
