//! A repository in an S3 bucket (AWS or an S3-compatible store), through aws-sdk-s3 on a
//! private tokio runtime behind the synchronous [`Backend`] trait. Keys mirror the local layout
//! under an optional prefix: `PREFIX/config`, `PREFIX/data/ab/<id>`, ...
//!
//! - Packs upload in the background, up to `connections` at once; [`Backend::flush`] waits for
//!   them (the repository flushes before it writes an index, so an index never names a pack
//!   that is not stored). Packs above `multipart_threshold` go up in parts read from their temp
//!   file, never held in memory twice.
//! - Every upload is conditional (`If-None-Match: *`): nothing is ever overwritten, so a PUT
//!   whose response was lost and is retried finds its object stored (412) and succeeds, and a
//!   bucket policy can require conditional writes for append-only hosts.
//! - Every upload carries a CRC32C the store verifies (a pack's is precomputed and kept in the
//!   index). The SDK retries 5xx, SlowDown, throttling, timeouts and resets with exponential
//!   backoff and jitter; a GET body cut off mid-stream (which the SDK does not retry) is resumed
//!   here with a ranged GET from the first missing byte.
//! - An interceptor counts every request attempt by type and the bytes sent.

pub mod lifecycle;
mod lock;

/// The SDK, for callers that need its types (tests, lifecycle output).
pub use aws_sdk_s3 as sdk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::put_object::PutObjectError;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
    GlacierJobParameters, RestoreRequest,
};
use aws_sdk_s3::Client;
use base64::Engine as _;
use tokio::sync::Semaphore;

use super::{
    Backend, Capabilities, Extended, FileKind, ObjectInfo, ObjectLock, RequestCounter,
    StorageClass, ThawState, Tier,
};
use crate::error::{Error, Result};

/// Where an S3 repository is and how to reach it.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Endpoint of an S3-compatible store (path-style addressing is used with it).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Static credentials (tests); otherwise aws-config's default chain (environment, profile,
    /// SSO, EC2 instance role).
    pub static_credentials: Option<(String, String)>,
    /// Uploads in flight at once (each holds one finished pack file in the temp folder).
    pub connections: usize,
    /// Attempts per request (1 = no retries).
    pub max_attempts: u32,
    /// First retry delay; later ones double, with full jitter, up to 10 s.
    pub initial_backoff: Duration,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (S3: at least 5 MiB, at most 10,000 parts).
    pub part_size: u64,
    /// How to tell an archived object from a readable one (`--s3-archive`).
    pub archive: ArchiveMode,
    /// How long a request may wait for the first byte of its answer (its body sent); also how
    /// long requests may go unanswered, with no answer in between, before the run stops.
    pub timeout: Duration,
    /// Path-style (`HOST/BUCKET/KEY`) or virtual-hosted (`BUCKET.HOST/KEY`) requests.
    pub addressing: Addressing,
    /// The AWS profile (shared config and credentials files) to take credentials and settings
    /// from, instead of the default chain's: each repository of a `copy` may have its own.
    pub profile: Option<String>,
}

/// How requests name the bucket (`--s3-addressing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Addressing {
    /// Path style for a store of its own, however its endpoint is given (`--s3-endpoint`, a
    /// repository string, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, a profile's `services`
    /// section): such stores rarely have a DNS name per bucket. Virtual-hosted for AWS.
    #[default]
    Auto,
    Path,
    Virtual,
}

impl std::str::FromStr for Addressing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Addressing::Auto),
            "path" => Ok(Addressing::Path),
            "virtual" => Ok(Addressing::Virtual),
            _ => Err(format!(
                "{s:?}: use auto (path style for a store of its own, virtual-hosted for AWS), \
                 path or virtual"
            )),
        }
    }
}

/// How long a store may stay silent (no answer to any request, at least three attempts in a
/// row unanswered: connection refused, reset, timed out) before the run stops, when
/// `--s3-timeout` is longer: a store restarting for a few seconds is ridden out by the retries;
/// one that is down stops the run in about this time, not file after failing file.
pub const MAX_SILENCE: Duration = Duration::from_secs(10);

/// How chunkbak decides that an object labelled with an archive storage class (GLACIER,
/// DEEP_ARCHIVE) needs a thaw before it can be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArchiveMode {
    /// Ask the store: the first archive-labelled object without a thaw is read with a one-byte
    /// GET; refused as archived (403 InvalidObjectState, as AWS) means the label is obeyed and
    /// thaws are requested; answered means this store serves archive classes directly
    /// (SeaweedFS, Ceph radosgw) and every pack is read as it is.
    #[default]
    Auto,
    /// The label is the truth (AWS S3): archived objects are thawed, never probed.
    Aws,
    /// Storage-class labels are ignored: every object is read directly, nothing is thawed.
    Never,
}

impl std::str::FromStr for ArchiveMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(ArchiveMode::Auto),
            "aws" => Ok(ArchiveMode::Aws),
            "never" => Ok(ArchiveMode::Never),
            _ => Err(format!(
                "{s:?}: use auto (ask the store), aws (archive classes need a thaw) or never \
                 (read every object directly)"
            )),
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            static_credentials: None,
            connections: 8,
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            archive: ArchiveMode::Auto,
            timeout: Duration::from_secs(120),
            addressing: Addressing::Auto,
            profile: None,
        }
    }
}

impl S3Config {
    /// Parses a repository string (the `s3:` prefix in any case):
    /// - `s3:BUCKET[/PREFIX]` and `s3://BUCKET[/PREFIX]`: AWS, or the `--s3-endpoint`;
    /// - `s3:https://HOST[:PORT]/BUCKET[/PREFIX]` and `s3:http://…`: a store of its own;
    /// - `s3:s3.amazonaws.com/BUCKET[/PREFIX]`, `s3:s3.REGION.amazonaws.com/…` (also with
    ///   `https://`): AWS, in that region.
    ///
    /// A malformed string is an error listing these forms (nothing is sent anywhere).
    pub fn parse(url: &str) -> Result<S3Config> {
        const FORMS: &str = "use s3:BUCKET[/PREFIX], s3:https://HOST[:PORT]/BUCKET[/PREFIX], \
                             s3:http://HOST[:PORT]/BUCKET[/PREFIX] or \
                             s3:s3.REGION.amazonaws.com/BUCKET[/PREFIX]";
        let bad = |why: String| Error::Invalid(format!("S3 repository {url:?}: {why}; {FORMS}"));
        let strip = |s: &'_ str, p: &str| -> Option<usize> {
            s.get(..p.len())
                .filter(|h| h.eq_ignore_ascii_case(p))
                .map(|_| p.len())
        };
        let rest = match strip(url, "s3://").or_else(|| strip(url, "s3:")) {
            Some(n) => &url[n..],
            None => return Err(bad("not an s3: repository".into())),
        };
        let mut endpoint = None;
        let mut region = None;
        let mut path = rest;
        let scheme = strip(rest, "https://")
            .map(|n| ("https", n))
            .or_else(|| strip(rest, "http://").map(|n| ("http", n)));
        if let Some((scheme, n)) = scheme {
            let (host, p) = rest[n..].split_once('/').unwrap_or((&rest[n..], ""));
            if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
                return Err(bad(format!("{host:?} is not a host")));
            }
            match aws_host(host) {
                Some(r) => region = r,
                None => endpoint = Some(format!("{scheme}://{host}")),
            }
            path = p;
        } else if let Some((first, p)) = rest.split_once('/') {
            if let Some(r) = aws_host(first) {
                region = r;
                path = p;
            }
        }
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket named".into()));
        }
        if !valid_bucket(bucket) {
            return Err(bad(format!(
                "{bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, dots and \
                 hyphens)"
            )));
        }
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            region,
            ..S3Config::default()
        })
    }

    /// The key prefix of a kind's folder, with a trailing `/` (`PREFIX/data/`).
    pub fn folder(&self, kind: FileKind) -> String {
        let dir = kind.dir();
        match (self.prefix.is_empty(), dir.is_empty()) {
            (true, _) => format!("{dir}/"),
            (false, true) => format!("{}/", self.prefix),
            (false, false) => format!("{}/{dir}/", self.prefix),
        }
    }
}

/// `Some(region)` when `host` is an AWS S3 endpoint (`s3.amazonaws.com`: no region implied;
/// `s3.REGION.amazonaws.com`, `s3-REGION.amazonaws.com`, `s3.dualstack.REGION.amazonaws.com`).
fn aws_host(host: &str) -> Option<Option<String>> {
    let h = host.to_ascii_lowercase();
    let inner = h.strip_suffix(".amazonaws.com")?;
    if inner == "s3" {
        return Some(None);
    }
    let region = inner
        .strip_prefix("s3.dualstack.")
        .or_else(|| inner.strip_prefix("s3."))
        .or_else(|| inner.strip_prefix("s3-"))?;
    (!region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'))
    .then(|| Some(region.to_string()))
}

/// S3's bucket naming rules (the general-purpose ones).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..")
}

/// Counts each request attempt as it goes on the wire, by S3 request type, and watches for a
/// store that stopped answering (see [`Watch`]).
#[derive(Debug)]
struct CountRequests(Arc<RequestCounter>, Arc<Watch>);

/// Whether the store answers: attempts in a row that got no answer at all (refused, reset,
/// timed out), and when the first of them failed. Three of them over the timeout (at most
/// [`MAX_SILENCE`]) since that first failure, with no answer in between, stop the run
/// (`crate::stop`); later requests then fail at once, without going on the wire.
#[derive(Debug)]
struct Watch {
    store: String,
    timeout: Duration,
    /// Unanswered attempts in a row, and when the first of them failed.
    streak: Mutex<(u32, Option<std::time::Instant>)>,
    down: std::sync::atomic::AtomicBool,
}

impl Watch {
    fn answered(&self) {
        *self.streak.lock().expect("watch lock") = (0, None);
    }

    fn unanswered(&self, why: String) {
        let (n, silent) = {
            let mut s = self.streak.lock().expect("watch lock");
            s.0 += 1;
            let since = *s.1.get_or_insert_with(std::time::Instant::now);
            (s.0, since.elapsed())
        };
        if n >= 3
            && silent >= self.timeout.min(MAX_SILENCE)
            && crate::stop::stops_on_silence()
            && !self.down.swap(true, Ordering::SeqCst)
        {
            crate::stop::store_down(crate::stop::StoreDown {
                store: self.store.clone(),
                failures: n,
                last: why,
            });
        }
    }
}

/// The S3 request type of an HTTP request (as AWS bills it: multipart create/complete are PUTs).
fn request_type(method: &str, uri: &str, copy_source: bool) -> usize {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    let has = |k: &str| {
        query
            .split('&')
            .any(|p| p == k || p.strip_prefix(k).is_some_and(|r| r.starts_with('=')))
    };
    match method {
        "HEAD" => 2,
        "GET" if has("list-type") || has("uploads") || has("uploadId") => 3,
        "GET" => 1,
        "PUT" if copy_source => 5,
        "PUT" => 0,
        "POST" if has("restore") => 6,
        "POST" if has("delete") => 4,
        "POST" => 0,
        "DELETE" => 4,
        _ => 1,
    }
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "chunkbak-count-requests"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        if self.1.down.load(Ordering::Relaxed) {
            return Err(format!("{} stopped answering", self.1.store).into());
        }
        let req = ctx.request();
        let h = req.headers();
        let t = request_type(
            req.method(),
            req.uri(),
            h.get("x-amz-copy-source").is_some(),
        );
        self.0.by_type[t].fetch_add(1, Ordering::Relaxed);
        let len = h
            .get("x-amz-decoded-content-length")
            .or_else(|| h.get("content-length"))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        self.0.up.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        if ctx.response().is_some() {
            // Any answer, an error status included: the store is there.
            self.1.answered();
        } else if !self.1.down.load(Ordering::Relaxed) {
            // Only failures to reach the store count (not, say, credentials that could not
            // be loaded).
            match ctx.output_or_error() {
                Some(Err(e)) if e.is_timeout_error() => self
                    .1
                    .unanswered(format!("no answer within {} s", self.1.timeout.as_secs())),
                Some(Err(e)) if e.as_connector_error().is_some() => {
                    let c = e.as_connector_error().expect("connector error");
                    self.1.unanswered(if c.is_timeout() {
                        format!("no answer within {} s", self.1.timeout.as_secs())
                    } else {
                        causes(e)
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What the background uploads share with the backend.
struct Shared {
    cfg: S3Config,
    client: Client,
    counters: Arc<RequestCounter>,
    classes: RwLock<HashMap<FileKind, StorageClass>>,
    /// The repository's Object Lock (from its config), applied to every write.
    lock: RwLock<Option<ObjectLock>>,
    /// What the store answered about archive-labelled objects (see [`ArchiveMode::Auto`]):
    /// Some(true) when it serves them without a thaw.
    archive_readable: Mutex<Option<bool>>,
    /// AWS itself (no endpoint of its own): multipart uploads carry the whole object's CRC32C
    /// (FULL_OBJECT), which other stores refuse or ignore.
    aws: bool,
}

pub struct S3Backend {
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    slots: Arc<Semaphore>,
    /// Uploads in the background, with the temp file each consumes.
    uploads: Mutex<Vec<(tokio::task::JoinHandle<Result<()>>, PathBuf)>>,
}

/// An error and its causes, each once: `dispatch failure: io error: ... Connection refused`.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(x) = cur {
        let s = x.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = x.source();
    }
    parts.join(": ")
}

/// An SDK error as one readable line: `HTTP 503 SlowDown: Please reduce your request rate`
/// for errors S3 answered, the cause chain for connection failures and timeouts.
fn sdk_err<E>(context: String, e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let msg = match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let mut m = format!("HTTP {}", se.raw().status().as_u16());
            if let Some(c) = err.code() {
                m.push_str(&format!(" {c}"));
            }
            if let Some(t) = err.message().filter(|t| !t.is_empty()) {
                m.push_str(&format!(": {t}"));
            }
            let status = se.raw().status().as_u16();
            if status == 501 {
                // Not transient, and not retried: the store lacks the operation.
                m.push_str(" (not implemented by this store)");
            } else if se.raw().status().is_server_error() || err.code() == Some("SlowDown") {
                m.push_str(" (still failing after the retries of --s3-max-attempts)");
            }
            if status == 403 {
                let action = match context.split_whitespace().next() {
                    Some("DELETE") => "s3:DeleteObject",
                    Some("PUT") => "s3:PutObject",
                    Some("GET" | "HEAD") => "s3:GetObject",
                    Some("LIST") => "s3:ListBucket",
                    Some("RESTORE") => "s3:RestoreObject",
                    _ => "this action",
                };
                m.push_str(&format!(
                    " (access denied: the credentials in use (AWS_PROFILE, AWS_ACCESS_KEY_ID or \
                     the instance role) may not do {action} here, or a bucket policy refuses \
                     it; see docs/s3.md for the policies)"
                ));
            }
            // A bucket in another region: S3 redirects and says which.
            let moved = se.raw().status().as_u16() == 301
                || matches!(
                    err.code(),
                    Some("PermanentRedirect" | "AuthorizationHeaderMalformed")
                );
            if let Some(r) = se
                .raw()
                .headers()
                .get("x-amz-bucket-region")
                .filter(|_| moved)
            {
                m.push_str(&format!(
                    " (the bucket is in region {r}: give --s3-region {r} or CHUNKBAK_S3_REGION)"
                ));
            }
            m
        }
        SdkError::TimeoutError(_) => "timed out".to_string(),
        _ => causes(&e),
    };
    Error::backend(context, std::io::Error::other(msg))
}

/// A conditional write found the key taken (412). Objects are named by their content, so the
/// object there is the one being written (or, for `config`, another repository).
fn exists_already<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(_))
        && e.raw_response().is_some_and(|r| r.status().as_u16() == 412)
}

/// How often a cut-off GET body is resumed before giving up.
const MAX_RESUMES: u32 = 8;
/// A GET body that delivers nothing for this long counts as cut off.
const BODY_STALL: Duration = Duration::from_secs(60);

fn s3_class(c: StorageClass) -> Option<aws_sdk_s3::types::StorageClass> {
    match c {
        StorageClass::Standard | StorageClass::Other => None,
        c => Some(aws_sdk_s3::types::StorageClass::from(c.name())),
    }
}

/// The region a bucket is in, as the store says (one HeadBucket); None when it does not say.
async fn discover_region(client: &Client, bucket: &str) -> Option<String> {
    let r = match client.head_bucket().bucket(bucket).send().await {
        Ok(o) => o.bucket_region().map(str::to_string),
        Err(e) => e
            .raw_response()
            .and_then(|r| r.headers().get("x-amz-bucket-region"))
            .map(str::to_string),
    };
    r.filter(|r| !r.is_empty() && r.len() < 64)
}

/// CRC32C (Castagnoli) of `data`, as S3's `x-amz-checksum-crc32c` and the index carry it.
fn crc32c(data: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(data);
    d.finalize() as u32
}

/// CRC32C of `len` bytes of a file from `offset`.
async fn file_crc32c(path: &Path, offset: u64, len: u64) -> Result<u32> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| Error::io(path, e))?;
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f
            .read(&mut buf[..want])
            .await
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "shorter than its size"),
            ));
        }
        d.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(d.finalize() as u32)
}

fn crc_header(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

impl Shared {
    fn key(&self, kind: FileKind, name: &str) -> String {
        self.prefixed(kind.path_of(name))
    }

    /// The key of `rel` under the repository's prefix.
    fn prefixed(&self, rel: String) -> String {
        if self.cfg.prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.cfg.prefix)
        }
    }

    /// Where a new bucket goes: the client's region (us-east-1 takes no constraint, as AWS
    /// requires; every other region must be named or CreateBucket fails).
    pub(super) fn bucket_location(&self) -> Option<aws_sdk_s3::types::CreateBucketConfiguration> {
        let region = self.client.config().region()?.as_ref().to_string();
        (region != "us-east-1").then(|| {
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                    region.as_str(),
                ))
                .build()
        })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.cfg.bucket)
    }

    fn class_of(&self, kind: FileKind) -> Option<aws_sdk_s3::types::StorageClass> {
        match kind {
            // Config, keys and locks are tiny and read by every command: always STANDARD.
            FileKind::Config | FileKind::Key | FileKind::Lock => None,
            k => s3_class(
                self.classes
                    .read()
                    .expect("classes lock")
                    .get(&k)
                    .copied()
                    .unwrap_or_default(),
            ),
        }
    }

    /// One PutObject of `data` that never replaces (`If-None-Match: *`; names are contents,
    /// and a lost response retried is a 412): `Ok(true)` stored, `Ok(false)` the key was taken.
    async fn put_new(
        &self,
        kind: FileKind,
        key: &str,
        data: &[u8],
    ) -> std::result::Result<bool, SdkError<PutObjectError, HttpResponse>> {
        let body = ByteStream::from(data.to_vec());
        self.put_body(kind, key, body, crc32c(data))
            .await
            .map(|o| o.is_some())
    }

    /// The PutObject every single-request upload sends: conditional, with its CRC32C, storage
    /// class and Object Lock retention. None when the key was taken (412).
    async fn put_body(
        &self,
        kind: FileKind,
        key: &str,
        body: ByteStream,
        crc: u32,
    ) -> std::result::Result<
        Option<aws_sdk_s3::operation::put_object::PutObjectOutput>,
        SdkError<PutObjectError, HttpResponse>,
    > {
        let lock = self.lock_for(kind);
        let len = body.size_hint().0;
        match self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .if_none_match("*")
            .checksum_crc32_c(crc_header(crc))
            .set_storage_class(self.class_of(kind))
            .set_object_lock_mode(lock.map(|l| lock::put_mode(l.0)))
            .set_object_lock_retain_until_date(lock.map(|l| l.1))
            .body(body)
            .customize()
            .config_override(self.upload_timeout(len))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o)),
            Err(e) if exists_already(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The read timeout of a request that sends `len` bytes: the timeout counts from the
    /// start of the request, so the body's time at a slow uplink (1 Mbit/s) is added.
    fn upload_timeout(&self, len: u64) -> aws_sdk_s3::config::Builder {
        let body = Duration::from_secs(len / (128 << 10));
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .read_timeout(self.cfg.timeout + body)
                .build(),
        )
    }

    /// Uploads a finished local file (one PutObject, or a multipart upload above the
    /// threshold) and checks that the store kept what was sent. An upload the store altered
    /// is deleted and sent once more; altered again, it is an error.
    async fn upload_file(&self, kind: FileKind, key: &str, path: &Path, crc: u32) -> Result<()> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::io(path, e))?
            .len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.upload_once(kind, key, path, size, crc).await;
            match r {
                Err(Error::Altered { object, detail }) if attempt == 1 => {
                    if let Err(e) = self
                        .client
                        .delete_object()
                        .bucket(&self.cfg.bucket)
                        .key(key)
                        .send()
                        .await
                    {
                        // Append-only credentials may not delete: the altered object stays,
                        // and the backup fails naming it.
                        return Err(Error::Altered {
                            object,
                            detail: format!(
                                "{detail}; deleting it to send it again failed: {}",
                                sdk_err(String::new(), e)
                            ),
                        });
                    }
                }
                r => return r,
            }
        }
    }

    async fn upload_once(
        &self,
        kind: FileKind,
        key: &str,
        path: &Path,
        size: u64,
        crc: u32,
    ) -> Result<()> {
        if size > self.cfg.multipart_threshold {
            return self.upload_multipart(kind, key, path, size, crc).await;
        }
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
        let out = self
            .put_body(kind, key, body, crc)
            .await
            .map_err(|e| sdk_err(format!("PUT {}", self.url(key)), e))?;
        // Named by its content: an object already there is this pack.
        let Some(out) = out else { return Ok(()) };
        let sent = crc_header(crc);
        match out.checksum_crc32_c() {
            // The store checked the body against the CRC32C it was sent and says so.
            Some(c) if c == sent => Ok(()),
            Some(c) => Err(self.altered(key, size, &sent, size, c)),
            // No word on what it kept: ask.
            None => self.verify_stored(key, size, &sent).await,
        }
    }

    /// HEAD after an upload: the size, and the CRC32C when the store reports one, must be
    /// what was sent (`crc`: the full object's, or a multipart composite `…-N`).
    async fn verify_stored(&self, key: &str, size: u64, crc: &str) -> Result<()> {
        let h = self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| sdk_err(format!("HEAD {} (after its upload)", self.url(key)), e))?;
        // What the store does not report cannot be compared.
        let kept = h.content_length().map_or(size, |n| n.max(0) as u64);
        let kept_crc = h.checksum_crc32_c().unwrap_or(crc);
        if kept != size || kept_crc != crc {
            return Err(self.altered(key, size, crc, kept, kept_crc));
        }
        Ok(())
    }

    fn altered(&self, key: &str, size: u64, crc: &str, kept: u64, kept_crc: &str) -> Error {
        Error::Altered {
            object: self.url(key),
            detail: format!(
                "sent {size} bytes (CRC32C {crc}), the store reports {kept} bytes (CRC32C \
                 {kept_crc})"
            ),
        }
    }

    async fn upload_multipart(
        &self,
        kind: FileKind,
        key: &str,
        path: &Path,
        size: u64,
        crc: u32,
    ) -> Result<()> {
        let what = format!("multipart upload of {}", self.url(key));
        let lock = self.lock_for(kind);
        // Each part carries its CRC32C, computed here before it is sent (a header, not an
        // aws-chunked trailer, which Ceph radosgw refuses and s3rver stores as data). AWS
        // also gets the whole object's (FULL_OBJECT: the CRC32C the index keeps, which `check
        // --s3-checksums` compares); other stores the composite checksum of the part
        // checksums (ministack refuses FULL_OBJECT).
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_checksum_type(self.aws.then_some(ChecksumType::FullObject))
            .set_storage_class(self.class_of(kind))
            .set_object_lock_mode(lock.map(|l| lock::put_mode(l.0)))
            .set_object_lock_retain_until_date(lock.map(|l| l.1))
            .send()
            .await
            .map_err(|e| sdk_err(what.clone(), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| Error::Other(format!("{what}: the store returned no upload id")))?
            .to_string();
        let result = self
            .upload_parts(key, path, size, crc, &upload_id, &what)
            .await;
        if !matches!(result, Ok(Some(_))) {
            // Failed, or the object was there already: leave no orphaned parts behind (the
            // lifecycle rule would also clean them up).
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        let Some((composite, reported)) = result? else {
            return Ok(());
        };
        if reported.as_deref().is_some_and(|r| r != composite) {
            return Err(self.altered(
                key,
                size,
                &composite,
                size,
                reported.as_deref().unwrap_or_default(),
            ));
        }
        self.verify_stored(key, size, &composite).await?;
        self.lock_completed(kind, key).await
    }

    /// Uploads the parts and completes the upload: None when the object already existed,
    /// else the object's CRC32C as the store should report it (the whole object's `crc` on
    /// AWS, else the composite `BASE64-N`) and the one it reported.
    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        crc: u32,
        upload_id: &str,
        what: &str,
    ) -> Result<Option<(String, Option<String>)>> {
        let part_size = self.cfg.part_size.max(5 << 20);
        let n = size.div_ceil(part_size);
        let mut parts = Vec::with_capacity(n as usize);
        let mut crcs = vec![0u32; n as usize];
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0u64;
        // Up to four parts of one object in flight; each is read from the file twice (its
        // CRC32C, then the body as it is sent), never held in memory whole.
        while next < n || !set.is_empty() {
            while next < n && set.len() < 4 {
                let offset = next * part_size;
                let len = part_size.min(size - offset);
                let crc = file_crc32c(path, offset, len).await?;
                crcs[next as usize] = crc;
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.cfg.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(next as i32 + 1)
                    .checksum_crc32_c(crc_header(crc))
                    .body(body)
                    .customize()
                    .config_override(self.upload_timeout(len));
                let number = next as i32 + 1;
                set.spawn(async move { (number, crc, req.send().await) });
                next += 1;
            }
            if let Some(done) = set.join_next().await {
                let (number, crc, r) = done.map_err(|e| Error::Other(format!("{what}: {e}")))?;
                let out = r.map_err(|e| sdk_err(format!("{what}, part {number}"), e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_crc32_c(crc_header(crc))
                        .build(),
                );
            }
        }
        parts.sort_by_key(|p| p.part_number());
        let mut all = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        for c in &crcs {
            all.update(&c.to_be_bytes());
        }
        let expected = if self.aws {
            crc_header(crc)
        } else {
            format!("{}-{n}", crc_header(all.finalize() as u32))
        };
        match self
            .client
            .complete_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .upload_id(upload_id)
            .if_none_match("*")
            .set_checksum_type(self.aws.then_some(ChecksumType::FullObject))
            .set_checksum_crc32_c(self.aws.then(|| crc_header(crc)))
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
        {
            Ok(o) => Ok(Some((expected, o.checksum_crc32_c().map(str::to_string)))),
            Err(e) if exists_already(&e) => Ok(None),
            Err(e) => Err(sdk_err(what.to_string(), e)),
        }
    }

    /// GetObject, whole or `len` bytes from `offset`. A body cut off mid-stream is resumed with
    /// a ranged GET from the first missing byte. A range past the end yields what exists.
    async fn fetch(&self, key: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>> {
        let start = range.map_or(0, |r| r.0);
        let mut want: Option<u64> = range.map(|r| r.1);
        let mut out: Vec<u8> = Vec::new();
        let mut resumes = 0u32;
        loop {
            // Everything asked for (or announced) has arrived: done, even when the stream then
            // failed (a stall after the last byte).
            if let Some(w) = want.filter(|w| out.len() as u64 >= *w) {
                out.truncate(w as usize);
                return Ok(out);
            }
            let pos = start + out.len() as u64;
            let header = match (want, range.is_some() || !out.is_empty()) {
                (_, false) => None,
                (Some(n), true) => Some(format!("bytes={pos}-{}", start + n - 1)),
                (None, true) => Some(format!("bytes={pos}-")),
            };
            let what = match &header {
                Some(h) => format!("GET {} {h}", self.url(key)),
                None => format!("GET {}", self.url(key)),
            };
            let ranged = header.is_some();
            let resp = match self
                .client
                .get_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .set_range(header)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    if let Some(s) = e.as_service_error() {
                        if s.is_no_such_key() {
                            return Err(Error::ObjectNotFound(self.url(key)));
                        }
                        if let aws_sdk_s3::operation::get_object::GetObjectError::InvalidObjectState(st) = s {
                            return Err(Error::Archived {
                                object: self.url(key),
                                class: st
                                    .storage_class()
                                    .map_or("an archive class".to_string(), |c| {
                                        c.as_str().to_string()
                                    }),
                            });
                        }
                    }
                    if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) {
                        return Ok(out);
                    }
                    return Err(sdk_err(what, e));
                }
            };
            // A ranged read must answer with the bytes from `pos` (a store that ignores Range
            // would hand back the object from its start).
            if ranged {
                let from = resp
                    .content_range()
                    .and_then(|r| r.strip_prefix("bytes "))
                    .and_then(|r| r.split('-').next())
                    .and_then(|a| a.parse::<u64>().ok());
                if from != Some(pos) {
                    return Err(Error::backend(
                        what,
                        std::io::Error::other(format!(
                            "the store answered with Content-Range {:?}, not the requested range",
                            resp.content_range()
                        )),
                    ));
                }
            }
            let resp_len = resp.content_length().map(|n| n as u64);
            if want.is_none() {
                want = resp_len;
            }
            let before = out.len();
            let mut body = resp.body;
            let cut = loop {
                match tokio::time::timeout(BODY_STALL, body.next()).await {
                    Ok(Some(Ok(bytes))) => {
                        self.counters
                            .down
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        out.extend_from_slice(&bytes);
                    }
                    Ok(None) => break None,
                    Ok(Some(Err(e))) => break Some(e.to_string()),
                    Err(_) => break Some(format!("no data for {} s", BODY_STALL.as_secs())),
                }
            };
            let got = (out.len() - before) as u64;
            // A response that delivered all it announced is complete, even when a range asked
            // for more (the object ends there; the caller decides whether that is an error).
            if cut.is_none() && resp_len.is_none_or(|n| got >= n) {
                return Ok(out);
            }
            if cut
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("checksum"))
            {
                // The bytes are wrong, not just short: read the whole object again.
                out.clear();
                want = range.map(|r| r.1);
            }
            resumes += 1;
            if resumes > MAX_RESUMES {
                return Err(Error::backend(
                    what,
                    std::io::Error::other(format!(
                        "body cut off {MAX_RESUMES} times ({}); check the connection and run again",
                        cut.unwrap_or_else(|| "ended early".into())
                    )),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50 << resumes.min(6))).await;
        }
    }

    /// HeadObject: None when the object does not exist.
    async fn head(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        match self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(h)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(sdk_err(format!("HEAD {}", self.url(key)), e)),
        }
    }
}

impl S3Backend {
    pub fn new(cfg: S3Config) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chunkbak-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("tokio runtime: {e}")))?;
        let counters = Arc::new(RequestCounter::default());
        let watch = Arc::new(Watch {
            store: match &cfg.endpoint {
                Some(ep) => format!("the S3 store at {ep} (bucket {})", cfg.bucket),
                None => format!("S3 (bucket {})", cfg.bucket),
            },
            timeout: cfg.timeout.max(Duration::from_secs(1)),
            streak: Mutex::new((0, None)),
            down: Default::default(),
        });
        let (client, aws) = rt.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(p) = &cfg.profile {
                // The profile's credentials, even where the environment has others (those are
                // the other repository's).
                loader = loader.profile_name(p).credentials_provider(
                    aws_config::profile::ProfileFileCredentialsProvider::builder()
                        .profile_name(p)
                        .build(),
                );
            }
            if let Some(r) = &cfg.region {
                loader = loader.region(aws_config::Region::new(r.clone()));
            }
            if let Some((id, secret)) = &cfg.static_credentials {
                loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                    id.clone(),
                    secret.clone(),
                    None,
                    None,
                    "chunkbak-static",
                ));
            }
            let shared = loader.load().await;
            let mut b = aws_sdk_s3::config::Builder::from(&shared)
                .retry_config(
                    RetryConfig::standard()
                        .with_max_attempts(cfg.max_attempts.max(1))
                        .with_initial_backoff(cfg.initial_backoff)
                        .with_max_backoff(Duration::from_secs(10)),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
                        .read_timeout(cfg.timeout)
                        .build(),
                )
                .interceptor(CountRequests(counters.clone(), watch.clone()));
            if shared.region().is_none() {
                b = b.region(aws_config::Region::new("us-east-1"));
            }
            // An endpoint of its own, however it was given (the S3-specific environment
            // variable and a profile's `services` section included).
            let own_endpoint = cfg.endpoint.is_some()
                || shared.endpoint_url().is_some()
                || shared.service_config().is_some_and(|c| {
                    aws_types::service_config::ServiceConfigKey::builder()
                        .service_id("S3")
                        .env("AWS_ENDPOINT_URL")
                        .profile("endpoint_url")
                        .build()
                        .is_ok_and(|k| c.load_config(k).is_some())
                });
            if let Some(ep) = &cfg.endpoint {
                b = b.endpoint_url(ep.clone());
            }
            b = b.force_path_style(match cfg.addressing {
                Addressing::Auto => own_endpoint,
                Addressing::Path => true,
                Addressing::Virtual => false,
            });
            let client = Client::from_conf(b.build());
            if cfg.region.is_some() {
                return (client, !own_endpoint);
            }
            // No region asked for: the bucket's own, when the store names it (HeadBucket's
            // x-amz-bucket-region, also on a 403 or a redirect), so AWS_REGION of the host
            // need not be the bucket's.
            let client = match discover_region(&client, &cfg.bucket).await {
                Some(r) if client.config().region().is_none_or(|c| c.as_ref() != r) => {
                    Client::from_conf(
                        client
                            .config()
                            .to_builder()
                            .region(aws_config::Region::new(r))
                            .build(),
                    )
                }
                _ => client,
            };
            (client, !own_endpoint)
        });
        let slots = Arc::new(Semaphore::new(cfg.connections.max(1)));
        let cfg_archive = cfg.archive;
        Ok(S3Backend {
            shared: Arc::new(Shared {
                cfg,
                client,
                counters,
                classes: RwLock::new(HashMap::new()),
                lock: RwLock::new(None),
                archive_readable: Mutex::new(match cfg_archive {
                    ArchiveMode::Auto => None,
                    ArchiveMode::Aws => Some(false),
                    ArchiveMode::Never => Some(true),
                }),
                aws,
            }),
            rt,
            slots,
            uploads: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.shared.cfg
    }

    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Runs a future on the backend's runtime (lifecycle commands, tests).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The full key of an object.
    pub fn key(&self, kind: FileKind, name: &str) -> String {
        self.shared.key(kind, name)
    }

    /// Copies an object onto itself in another storage class: what an S3 lifecycle transition
    /// does (no emulator runs lifecycle rules, so tests simulate transitions with this).
    pub fn transition(&self, kind: FileKind, name: &str, class: StorageClass) -> Result<()> {
        let s = &self.shared;
        let key = s.key(kind, name);
        let source = format!("{}/{key}", s.cfg.bucket);
        self.rt.block_on(async {
            s.client
                .copy_object()
                .bucket(&s.cfg.bucket)
                .key(&key)
                .copy_source(source)
                .storage_class(aws_sdk_s3::types::StorageClass::from(class.name()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_err(format!("COPY {} to {}", s.url(&key), class.name()), e))
        })
    }

    /// Whether the store serves objects labelled with an archive class without a thaw. Asked of
    /// the store once per run (see [`ArchiveMode::Auto`]), with `key`, an archive-labelled
    /// object that has no thaw (HEAD shows no `x-amz-restore`).
    fn store_serves_archived(&self, key: &str) -> Result<bool> {
        if let Some(v) = *self.shared.archive_readable.lock().expect("archive lock") {
            return Ok(v);
        }
        self.probe_archived(key)
    }

    /// One-byte GET of `key`: answered means readable (and remembered for the store), refused
    /// as archived means the store obeys its archive classes.
    fn probe_archived(&self, key: &str) -> Result<bool> {
        let readable = match self.rt.block_on(self.shared.fetch(key, Some((0, 1)))) {
            Ok(_) => true,
            Err(Error::Archived { .. }) => false,
            Err(e) => return Err(e),
        };
        *self.shared.archive_readable.lock().expect("archive lock") = Some(readable);
        Ok(readable)
    }

    /// Joins uploads that have finished; the first failure among them.
    fn reap(&self, all: bool) -> Result<()> {
        let handles: Vec<_> = {
            let mut v = self.uploads.lock().expect("uploads lock");
            if all {
                std::mem::take(&mut *v)
            } else {
                let (done, running) = std::mem::take(&mut *v)
                    .into_iter()
                    .partition(|(h, _)| h.is_finished());
                *v = running;
                done
            }
        };
        let mut first = None;
        for (h, file) in handles {
            let r = self.rt.block_on(h).unwrap_or_else(|e| {
                Err(Error::Other(format!(
                    "uploading {} stopped: {e}",
                    file.display()
                )))
            });
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        let c = &self.shared.cfg;
        if c.prefix.is_empty() {
            format!("s3:{}", c.bucket)
        } else {
            format!("s3:{}/{}", c.bucket, c.prefix)
        }
    }

    fn create(&self) -> Result<()> {
        let s = &self.shared;
        self.rt.block_on(async {
            match s.client.head_bucket().bucket(&s.cfg.bucket).send().await {
                Ok(_) => Ok(()),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {
                    if s.lock.read().expect("lock setting").is_some() {
                        return s.create_locked_bucket().await;
                    }
                    s.client
                        .create_bucket()
                        .bucket(&s.cfg.bucket)
                        .set_create_bucket_configuration(s.bucket_location())
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| sdk_err(format!("creating bucket {}", s.cfg.bucket), e))
                }
                // HeadBucket needs s3:ListBucket on the whole bucket; a policy that allows
                // listing only under the repository's prefix (examples/iam) refuses it. The
                // bucket is then taken to exist: the first write (the key file) fails naming
                // the bucket if it does not exist or may not be written.
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => Ok(()),
                Err(e) => Err(sdk_err(format!("bucket {}", s.cfg.bucket), e)),
            }
        })
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        let key = self.key(kind, name);
        Ok(self.rt.block_on(self.shared.head(&key))?.is_some())
    }

    fn refuses_overwrite(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<bool> {
        let key = self.shared.key(kind, name);
        match self.rt.block_on(self.shared.put_new(kind, &key, data)) {
            Ok(stored) => Ok(!stored),
            Err(e) => Err(sdk_err(
                format!(
                    "PUT {} (checking that the store refuses overwrites)",
                    self.shared.url(&key)
                ),
                e,
            )),
        }
    }

    fn stored_crc32c(&self, kind: FileKind, name: &str) -> Result<Option<u32>> {
        let s = &self.shared;
        let key = s.key(kind, name);
        let h = self
            .rt
            .block_on(
                s.client
                    .head_object()
                    .bucket(&s.cfg.bucket)
                    .key(&key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send(),
            )
            .map_err(|e| match e.as_service_error() {
                Some(se) if se.is_not_found() => Error::ObjectNotFound(s.url(&key)),
                _ => sdk_err(format!("HEAD {}", s.url(&key)), e),
            })?;
        Ok(h.checksum_crc32_c().and_then(|c| {
            let b = base64::engine::general_purpose::STANDARD.decode(c).ok()?;
            Some(u32::from_be_bytes(b.try_into().ok()?))
        }))
    }

    fn has_checksums(&self) -> bool {
        true
    }

    fn probe(&self, classes: &[StorageClass]) -> Result<Capabilities> {
        let s = &self.shared;
        let name: [u8; 8] = crate::crypter::random_bytes();
        let base = s.prefixed(format!("probe/{}", hex::encode(name)));
        let body = b"chunkbak store probe".to_vec();
        let put = |key: String, sum: u32, class: Option<aws_sdk_s3::types::StorageClass>| {
            let body = body.clone();
            async move {
                let r = s
                    .client
                    .put_object()
                    .bucket(&s.cfg.bucket)
                    .key(&key)
                    .if_none_match("*")
                    .checksum_crc32_c(crc_header(sum))
                    .set_storage_class(class)
                    .body(ByteStream::from(body))
                    .send()
                    .await;
                if r.is_ok() {
                    // Best effort: append-only credentials leave the few bytes there.
                    let _ = s
                        .client
                        .delete_object()
                        .bucket(&s.cfg.bucket)
                        .key(&key)
                        .send()
                        .await;
                }
                r
            }
        };
        self.rt.block_on(async {
            // A wrong CRC32C: refused (400 BadDigest and the like) by a store that checks.
            let checks_checksums =
                match put(format!("{base}-crc"), crc32c(b"other bytes"), None).await {
                    Ok(_) => Some(false),
                    Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                        Some(400 | 422) => Some(true),
                        Some(403) | None => None,
                        Some(_) => {
                            return Err(sdk_err(
                                format!("PUT s3://{}/{base}-crc (probe)", s.cfg.bucket),
                                e,
                            ))
                        }
                    },
                };
            let mut caps = Capabilities {
                checks_checksums,
                ..Capabilities::default()
            };
            let mut seen = Vec::new();
            for &c in classes {
                let Some(class) = s3_class(c).filter(|_| !seen.contains(&c)) else {
                    continue;
                };
                seen.push(c);
                match put(format!("{base}-{}", c.name()), crc32c(&body), Some(class)).await {
                    Ok(_) => {}
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 400) => {
                        let why = match &e {
                            SdkError::ServiceError(se) => {
                                format!("HTTP 400 {}", se.err().code().unwrap_or("Bad Request"))
                            }
                            _ => "HTTP 400".into(),
                        };
                        caps.refused_classes.push((c, why));
                    }
                    Err(e) => {
                        return Err(sdk_err(
                            format!("PUT s3://{}/{base}-{} (probe)", s.cfg.bucket, c.name()),
                            e,
                        ))
                    }
                }
            }
            // Read only (a write would change the bucket's rules): a store that answers the
            // GET may still refuse a PUT (SeaweedFS: 404 here, 501 at `lifecycle apply`).
            caps.lifecycle = match s
                .client
                .get_bucket_lifecycle_configuration()
                .bucket(&s.cfg.bucket)
                .send()
                .await
            {
                Ok(_) => Some(true),
                Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                    // No rules yet.
                    Some(404) => Some(true),
                    Some(405 | 501) => Some(false),
                    _ => None,
                },
            };
            Ok(caps)
        })
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let s = &self.shared;
        let key = s.key(kind, name);
        let r = self.rt.block_on(s.put_new(kind, &key, data));
        match r {
            Ok(true) => Ok(()),
            Ok(false) if kind == FileKind::Config => {
                // Ours, when a first attempt was stored but its response lost; else another's.
                match self.rt.block_on(s.fetch(&key, None)) {
                    Ok(stored) if stored == data => Ok(()),
                    _ => Err(Error::RepositoryExists(self.location())),
                }
            }
            Ok(false) => Ok(()),
            Err(e) => Err(sdk_err(format!("PUT {}", s.url(&key)), e)),
        }
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path, crc32c: u32) -> Result<()> {
        // Fail fast when an earlier upload failed (this pack will not be needed either).
        if let Err(e) = self.reap(false) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let permit = self
            .rt
            .block_on(self.slots.clone().acquire_owned())
            .map_err(|e| Error::Other(format!("upload slots: {e}")))?;
        let shared = self.shared.clone();
        let key = shared.key(kind, name);
        let path = path.to_path_buf();
        let file = path.clone();
        let handle = self.rt.spawn(async move {
            let r = shared.upload_file(kind, &key, &path, crc32c).await;
            // The pack is stored (or the run fails): its temp file has done its job.
            let _ = tokio::fs::remove_file(&path).await;
            drop(permit);
            r
        });
        self.uploads
            .lock()
            .expect("uploads lock")
            .push((handle, file));
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.reap(true)
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name);
        self.rt.block_on(self.shared.fetch(&key, None))
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(kind, name);
        let data = self
            .rt
            .block_on(self.shared.fetch(&key, Some((offset, len))))?;
        if data.len() as u64 != len {
            return Err(Error::corrupt(
                self.shared.url(&key),
                format!("object is shorter than {} bytes (truncated?)", offset + len),
            ));
        }
        Ok(data)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_info(kind)?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect())
    }

    fn list_info(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        let s = &self.shared;
        if kind == FileKind::Config {
            let key = s.key(kind, "config");
            return Ok(self
                .rt
                .block_on(s.head(&key))?
                .map(|h| ObjectInfo {
                    name: "config".into(),
                    size: h.content_length().unwrap_or(0) as u64,
                    class: h.storage_class().map_or(StorageClass::Standard, |c| {
                        StorageClass::from_name(c.as_str())
                    }),
                    modified: h.last_modified().map(|t| t.secs()),
                })
                .into_iter()
                .collect());
        }
        crate::backend::sorted_listing(|f| self.list_info_each(kind, f))
    }

    fn list_info_each(
        &self,
        kind: FileKind,
        f: &mut dyn FnMut(ObjectInfo) -> Result<()>,
    ) -> Result<()> {
        let s = &self.shared;
        if kind == FileKind::Config {
            for o in self.list_info(kind)? {
                f(o)?;
            }
            return Ok(());
        }
        let prefix = s.cfg.folder(kind);
        self.rt.block_on(async {
            let mut pages = s
                .client
                .list_objects_v2()
                .bucket(&s.cfg.bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| sdk_err(format!("LIST {}", s.url(&prefix)), e))?;
                for o in page.contents() {
                    let Some(key) = o.key() else { continue };
                    let name = key.rsplit('/').next().unwrap_or(key);
                    f(ObjectInfo {
                        name: name.to_string(),
                        size: o.size().unwrap_or(0) as u64,
                        class: o.storage_class().map_or(StorageClass::Standard, |c| {
                            StorageClass::from_name(c.as_str())
                        }),
                        modified: o.last_modified().map(|t| t.secs()),
                    })?;
                }
            }
            Ok(())
        })
    }

    fn has_archive_classes(&self) -> bool {
        self.shared.cfg.archive != ArchiveMode::Never
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn thaw_state(&self, kind: FileKind, name: &str) -> Result<ThawState> {
        let key = self.key(kind, name);
        let h = self
            .rt
            .block_on(self.shared.head(&key))?
            .ok_or_else(|| Error::ObjectNotFound(self.shared.url(&key)))?;
        let class = h.storage_class().map_or(StorageClass::Standard, |c| {
            StorageClass::from_name(c.as_str())
        });
        Ok(match h.restore() {
            _ if !class.is_archive() => ThawState::Hot,
            None if self.store_serves_archived(&key)? => ThawState::Hot,
            None => ThawState::Cold,
            Some(r) if r.contains("ongoing-request=\"true\"") => ThawState::Thawing,
            Some(r) => ThawState::Thawed {
                expiry: r
                    .split_once("expiry-date=\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(d, _)| d.to_string()),
            },
        })
    }

    fn archive_readable(&self) -> Option<bool> {
        *self.shared.archive_readable.lock().expect("archive lock")
    }

    fn request_thaw(&self, kind: FileKind, name: &str, tier: Tier, days: u32) -> Result<()> {
        let s = &self.shared;
        let key = s.key(kind, name);
        let tier = match tier {
            Tier::Bulk => aws_sdk_s3::types::Tier::Bulk,
            Tier::Standard => aws_sdk_s3::types::Tier::Standard,
            Tier::Expedited => aws_sdk_s3::types::Tier::Expedited,
        };
        let params = GlacierJobParameters::builder()
            .tier(tier)
            .build()
            .map_err(|e| Error::Other(format!("restore request: {e}")))?;
        let req = RestoreRequest::builder()
            .days(days.max(1) as i32)
            .glacier_job_parameters(params)
            .build();
        let sent = self.rt.block_on(
            s.client
                .restore_object()
                .bucket(&s.cfg.bucket)
                .key(&key)
                .restore_request(req)
                .send(),
        );
        match sent {
            Ok(_) => Ok(()),
            // Already thawing, or not archived (any more): nothing to do.
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    matches!(
                        s.code(),
                        Some("RestoreAlreadyInProgress" | "ObjectAlreadyInActiveTierError")
                    )
                }) =>
            {
                Ok(())
            }
            // A store without RestoreObject (SeaweedFS: 405, radosgw: 501) that serves the
            // object anyway: nothing to thaw.
            Err(e)
                if s.cfg.archive == ArchiveMode::Auto
                    && e.raw_response()
                        .is_some_and(|r| matches!(r.status().as_u16(), 405 | 501))
                    && self.probe_archived(&key)? =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err(format!("RESTORE {}", s.url(&key)), e)),
        }
    }

    fn request_counter(&self) -> Option<Arc<RequestCounter>> {
        Some(self.shared.counters.clone())
    }

    /// Packs are built in this process's private folder (mode 0700, random name: another
    /// local user can neither plant a symlink there nor read the packs), not in the system
    /// temp folder itself, which is often an ancestor of backed-up paths.
    fn temp_dir(&self) -> PathBuf {
        // Without it, the temp folder itself (packs are created there with O_EXCL, 0600,
        // under random names), never a fixed shared subfolder.
        crate::tmp::dir().unwrap_or_else(|_| std::env::temp_dir())
    }

    fn set_storage_class(&self, kind: FileKind, class: StorageClass) {
        self.shared
            .classes
            .write()
            .expect("classes lock")
            .insert(kind, class);
    }

    fn set_object_lock(&self, lock: Option<ObjectLock>) {
        *self.shared.lock.write().expect("lock setting") = lock;
    }

    fn supports_object_lock(&self) -> Result<()> {
        self.rt.block_on(self.shared.check_lock_enabled())
    }

    fn retention(&self, kind: FileKind, name: &str) -> Result<Option<i64>> {
        let key = self.key(kind, name);
        match self.rt.block_on(self.shared.head_lock(&key))? {
            Some(h) => Ok(h.until),
            None => Err(Error::ObjectNotFound(self.shared.url(&key))),
        }
    }

    fn extend_retention(&self, kind: FileKind, name: &str, until: i64) -> Result<Extended> {
        let key = self.key(kind, name);
        self.rt.block_on(self.shared.extend(&key, until))
    }

    fn hide(&self, kind: FileKind, name: &str) -> Result<()> {
        self.delete_unversioned(kind, name)
    }

    fn purge_hidden(&self, kind: FileKind) -> Result<super::Purge> {
        if self.shared.lock.read().expect("lock setting").is_none() {
            return Ok(super::Purge::default());
        }
        let prefix = self.shared.cfg.folder(kind);
        self.rt.block_on(self.shared.purge_hidden(&prefix))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        if self.shared.lock.read().expect("lock setting").is_some() {
            let key = self.key(kind, name);
            return self.rt.block_on(self.shared.delete_locked(&key));
        }
        self.delete_unversioned(kind, name)
    }
}

impl S3Backend {
    /// DeleteObject without a version: deletes the object, or on a versioned bucket adds a
    /// delete marker in front of it.
    fn delete_unversioned(&self, kind: FileKind, name: &str) -> Result<()> {
        let s = &self.shared;
        let key = s.key(kind, name);
        self.rt.block_on(async {
            s.client
                .delete_object()
                .bucket(&s.cfg.bucket)
                .key(&key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_err(format!("DELETE {}", s.url(&key)), e))
        })
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        // Uploads still running belong to a run that failed or was interrupted: stop them and
        // remove their temp files (no index names those packs).
        for (h, file) in self
            .uploads
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
        {
            h.abort();
            let _ = std::fs::remove_file(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::request_type;

    #[test]
    fn request_types_follow_s3_billing() {
        assert_eq!(request_type("PUT", "/b/k", false), 0);
        assert_eq!(
            request_type("PUT", "/b/k?partNumber=1&uploadId=x", false),
            0
        );
        assert_eq!(request_type("POST", "/b/k?uploads", false), 0);
        assert_eq!(request_type("GET", "/b/k", false), 1);
        assert_eq!(request_type("GET", "/b/k?lifecycle", false), 1);
        assert_eq!(request_type("HEAD", "/b/k", false), 2);
        assert_eq!(request_type("GET", "/b?list-type=2&prefix=p", false), 3);
        assert_eq!(request_type("DELETE", "/b/k", false), 4);
        assert_eq!(request_type("POST", "/b?delete", false), 4);
        assert_eq!(request_type("PUT", "/b/k", true), 5);
        assert_eq!(request_type("POST", "/b/k?restore", false), 6);
        // A key that merely contains a query-like word is not a LIST.
        assert_eq!(request_type("GET", "/b/list-type?x-id=GetObject", false), 1);
    }
}
