//! EBS snapshots through the EBS direct APIs (ListSnapshotBlocks, ListChangedBlocks,
//! GetSnapshotBlock to read one; StartSnapshot, PutSnapshotBlock, CompleteSnapshot to write
//! one), without attaching a volume.
//!
//! A snapshot is a sequence of 512 KiB blocks; blocks never written are not listed and read as
//! zeros. Every block read is checked against the SHA-256 the service sends with it, and every
//! block written carries its SHA-256. Requests run `CONCURRENCY` at a time on a private tokio
//! runtime; the SDK retries throttling and transient errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::ChecksumAlgorithm;
use aws_sdk_ebs::Client;
use base64::Engine as _;
use sha2::Digest;

use crate::error::{Error, Result};

/// The block size of every EBS snapshot (the APIs' only value).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// Blocks fetched or written at once.
const CONCURRENCY: usize = 16;

/// Blocks per list request (the API's maximum is 10,000).
const PAGE: i32 = 10_000;

/// How to reach the EBS direct APIs (`AWS_ENDPOINT_URL_EBS` for an endpoint of their own).
pub use crate::aws::AwsConfig as EbsConfig;

/// What a snapshot written through StartSnapshot is made with.
#[derive(Clone, Debug, Default)]
pub struct NewSnapshot {
    pub description: String,
    /// Encrypted with the account's default EBS key (or with `kms_key_arn`, which implies it).
    pub encrypted: bool,
    pub kms_key_arn: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// Requests sent and bytes moved, for the run's summary.
#[derive(Debug, Default)]
pub struct EbsCounts {
    pub list: AtomicU64,
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub other: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl EbsCounts {
    /// (list, get, put, other, bytes read, bytes written).
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            l(&self.list),
            l(&self.get),
            l(&self.put),
            l(&self.other),
            l(&self.bytes_read),
            l(&self.bytes_written),
        )
    }
}

/// A snapshot's written blocks: their indexes and the tokens that read them.
#[derive(Clone, Debug, Default)]
pub struct SnapshotBlocks {
    /// The volume's size in GiB.
    pub volume_gib: u64,
    pub blocks: Vec<(u32, String)>,
}

impl SnapshotBlocks {
    /// Blocks in the volume.
    pub fn block_count(&self) -> u64 {
        self.volume_gib * (1 << 30) / BLOCK_SIZE as u64
    }
}

/// A block that differs between two snapshots: its index and, when the second snapshot holds
/// it, the token that reads it there (`None`: no longer written, zeros).
pub type Changed = (u32, Option<String>);

pub struct Ebs {
    rt: tokio::runtime::Runtime,
    client: Client,
    pub counts: EbsCounts,
}

fn sdk_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("EBS direct APIs: {what}: {e}"))
}

/// The SHA-256 of `data`, base64, as the EBS direct APIs carry it.
pub fn checksum(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
}

impl Ebs {
    pub fn new(cfg: &EbsConfig) -> Result<Self> {
        let rt = crate::aws::runtime("chunkbak-ebs")?;
        let client = rt.block_on(async {
            let shared = crate::aws::shared_config(cfg).await;
            let mut b = aws_sdk_ebs::config::Builder::from(&shared)
                .retry_config(
                    aws_config::retry::RetryConfig::standard()
                        .with_max_attempts(5)
                        .with_max_backoff(Duration::from_secs(10)),
                )
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .read_timeout(Duration::from_secs(60))
                        .build(),
                );
            if shared.region().is_none() {
                b = b.region(aws_config::Region::new("us-east-1"));
            }
            if let Some(ep) = &cfg.endpoint {
                b = b.endpoint_url(ep.clone());
            }
            Client::from_conf(b.build())
        });
        Ok(Ebs {
            rt,
            client,
            counts: EbsCounts::default(),
        })
    }

    /// Every written block of `snapshot`, in index order.
    pub fn list_blocks(&self, snapshot: &str) -> Result<SnapshotBlocks> {
        self.rt.block_on(async {
            let mut out = SnapshotBlocks::default();
            let mut next: Option<String> = None;
            let mut seen = std::collections::HashSet::new();
            let snapshot_of = snapshot;
            loop {
                self.counts.list.fetch_add(1, Ordering::Relaxed);
                let r = self
                    .client
                    .list_snapshot_blocks()
                    .snapshot_id(snapshot)
                    .max_results(PAGE)
                    .set_next_token(next.take())
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            &format!("listing the blocks of {snapshot}"),
                            aws_sdk_ebs::error::DisplayErrorContext(&e),
                        )
                    })?;
                if let Some(v) = r.volume_size() {
                    out.volume_gib = v as u64;
                }
                for b in r.blocks() {
                    if let (Some(i), Some(t)) = (b.block_index(), b.block_token()) {
                        out.blocks.push((i as u32, t.to_string()));
                    }
                }
                match r.next_token() {
                    Some(t) if !t.is_empty() => {
                        // A service that hands back a token it gave before would page forever.
                        if !seen.insert(t.to_string()) {
                            return Err(Error::Other(format!(
                                "EBS direct APIs: listing {snapshot_of} returned the page token \
                                 {t} twice: stopped"
                            )));
                        }
                        next = Some(t.to_string())
                    }
                    _ => break,
                }
            }
            out.blocks.sort_by_key(|b| b.0);
            out.blocks.dedup_by_key(|b| b.0);
            Ok(out)
        })
    }

    /// The blocks that differ between `first` and `second`, in index order, and the volume
    /// size of `second` in GiB.
    pub fn changed_blocks(&self, first: &str, second: &str) -> Result<(u64, Vec<Changed>)> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut gib = 0;
            let mut next: Option<String> = None;
            let mut seen = std::collections::HashSet::new();
            let snapshot_of = second;
            loop {
                self.counts.list.fetch_add(1, Ordering::Relaxed);
                let r = self
                    .client
                    .list_changed_blocks()
                    .first_snapshot_id(first)
                    .second_snapshot_id(second)
                    .max_results(PAGE)
                    .set_next_token(next.take())
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            &format!("listing the blocks that changed from {first} to {second}"),
                            aws_sdk_ebs::error::DisplayErrorContext(&e),
                        )
                    })?;
                if let Some(v) = r.volume_size() {
                    gib = v as u64;
                }
                for b in r.changed_blocks() {
                    if let Some(i) = b.block_index() {
                        out.push((i as u32, b.second_block_token().map(str::to_string)));
                    }
                }
                match r.next_token() {
                    Some(t) if !t.is_empty() => {
                        // A service that hands back a token it gave before would page forever.
                        if !seen.insert(t.to_string()) {
                            return Err(Error::Other(format!(
                                "EBS direct APIs: listing {snapshot_of} returned the page token \
                                 {t} twice: stopped"
                            )));
                        }
                        next = Some(t.to_string())
                    }
                    _ => break,
                }
            }
            out.sort_by_key(|b| b.0);
            out.dedup_by_key(|b| b.0);
            Ok((gib, out))
        })
    }

    /// Reads `blocks` of `snapshot` (index, token), `CONCURRENCY` at a time, each checked
    /// against its SHA-256 and its length; returned in the order given.
    pub fn get_blocks(&self, snapshot: &str, blocks: &[(u32, String)]) -> Result<Vec<Vec<u8>>> {
        self.rt.block_on(async {
            let mut out: Vec<Option<Vec<u8>>> = vec![None; blocks.len()];
            let mut set = tokio::task::JoinSet::new();
            let mut next = 0usize;
            loop {
                while set.len() < CONCURRENCY && next < blocks.len() {
                    let (i, token) = blocks[next].clone();
                    let c = self.client.clone();
                    let snap = snapshot.to_string();
                    let pos = next;
                    set.spawn(async move { (pos, get_block(&c, &snap, i, &token).await) });
                    next += 1;
                }
                let Some(done) = set.join_next().await else {
                    break;
                };
                let (pos, r) = done.map_err(|e| Error::Other(format!("EBS read task: {e}")))?;
                self.counts.get.fetch_add(1, Ordering::Relaxed);
                let data = r?;
                self.counts
                    .bytes_read
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                out[pos] = Some(data);
            }
            Ok(out
                .into_iter()
                .map(|b| b.expect("every block read"))
                .collect())
        })
    }

    /// Starts a snapshot of a `volume_gib` GiB volume; its id.
    pub fn start_snapshot(&self, volume_gib: u64, new: &NewSnapshot) -> Result<String> {
        self.counts.other.fetch_add(1, Ordering::Relaxed);
        let tags: Vec<aws_sdk_ebs::types::Tag> = new
            .tags
            .iter()
            .map(|(k, v)| aws_sdk_ebs::types::Tag::builder().key(k).value(v).build())
            .collect();
        self.rt.block_on(async {
            let r = self
                .client
                .start_snapshot()
                .volume_size(volume_gib as i64)
                .description(&new.description)
                .set_encrypted((new.encrypted || new.kms_key_arn.is_some()).then_some(true))
                .set_kms_key_arn(new.kms_key_arn.clone())
                .set_tags((!tags.is_empty()).then_some(tags))
                .timeout(60)
                .send()
                .await
                .map_err(|e| {
                    sdk_error(
                        "starting a snapshot",
                        aws_sdk_ebs::error::DisplayErrorContext(&e),
                    )
                })?;
            r.snapshot_id()
                .map(str::to_string)
                .ok_or_else(|| Error::Other("EBS direct APIs: StartSnapshot returned no id".into()))
        })
    }

    /// Writes `blocks` (index, 512 KiB of data) into the pending `snapshot`.
    pub fn put_blocks(&self, snapshot: &str, blocks: Vec<(u32, Vec<u8>)>) -> Result<()> {
        self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            let mut it = blocks.into_iter();
            loop {
                while set.len() < CONCURRENCY {
                    let Some((i, data)) = it.next() else { break };
                    let c = self.client.clone();
                    let snap = snapshot.to_string();
                    set.spawn(async move {
                        let n = data.len() as u64;
                        let sum = checksum(&data);
                        c.put_snapshot_block()
                            .snapshot_id(&snap)
                            .block_index(i as i32)
                            .data_length(data.len() as i32)
                            .checksum(sum)
                            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                            .block_data(ByteStream::from(data))
                            .send()
                            .await
                            .map(|_| n)
                            .map_err(|e| {
                                sdk_error(
                                    &format!("writing block {i} of {snap}"),
                                    aws_sdk_ebs::error::DisplayErrorContext(&e),
                                )
                            })
                    });
                }
                let Some(done) = set.join_next().await else {
                    break;
                };
                let n = done.map_err(|e| Error::Other(format!("EBS write task: {e}")))??;
                self.counts.put.fetch_add(1, Ordering::Relaxed);
                self.counts.bytes_written.fetch_add(n, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    /// Seals `snapshot` after `changed` blocks were written; its status.
    pub fn complete(&self, snapshot: &str, changed: u64) -> Result<String> {
        self.counts.other.fetch_add(1, Ordering::Relaxed);
        self.rt.block_on(async {
            let r = self
                .client
                .complete_snapshot()
                .snapshot_id(snapshot)
                .changed_blocks_count(changed as i32)
                .send()
                .await
                .map_err(|e| {
                    sdk_error(
                        &format!("completing {snapshot}"),
                        aws_sdk_ebs::error::DisplayErrorContext(&e),
                    )
                })?;
            Ok(r.status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default())
        })
    }
}

async fn get_block(c: &Client, snapshot: &str, index: u32, token: &str) -> Result<Vec<u8>> {
    let what = || format!("block {index} of {snapshot}");
    let r = c
        .get_snapshot_block()
        .snapshot_id(snapshot)
        .block_index(index as i32)
        .block_token(token)
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                &format!("reading {}", what()),
                aws_sdk_ebs::error::DisplayErrorContext(&e),
            )
        })?;
    let want = r.checksum().map(str::to_string);
    let data = r
        .block_data
        .collect()
        .await
        .map_err(|e| sdk_error(&format!("reading {}", what()), e))?
        .into_bytes()
        .to_vec();
    if data.len() != BLOCK_SIZE {
        return Err(Error::Other(format!(
            "EBS direct APIs: {} has {} bytes, not {BLOCK_SIZE}: not read",
            what(),
            data.len()
        )));
    }
    match want {
        Some(w) if w != checksum(&data) => Err(Error::Other(format!(
            "EBS direct APIs: {} does not match its SHA-256 ({w}): damaged in transit; run the \
             backup again",
            what()
        ))),
        // Without a checksum from the service nothing can be compared (it always sends one).
        _ => Ok(data),
    }
}
