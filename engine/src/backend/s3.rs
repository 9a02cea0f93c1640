//! A repository in an S3 bucket (AWS or an S3-compatible store), through aws-sdk-s3 on a
//! private tokio runtime behind the synchronous [`Backend`] trait. Keys mirror the local layout
//! under an optional prefix: `PREFIX/config`, `PREFIX/data/ab/<id>`, ...

use std::path::Path;

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_sdk_s3::Client;

use super::{Backend, FileKind};
use crate::error::{Error, Result};

/// Where an S3 repository is and how to reach it.
#[derive(Clone, Debug, Default)]
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
}

impl S3Config {
    /// Parses `s3:BUCKET[/PREFIX]` or `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<S3Config> {
        let rest = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3:"))
            .ok_or_else(|| Error::Invalid(format!("{url:?} is not an s3: repository URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Invalid(format!(
                "{url:?} names no bucket: use s3:BUCKET/PREFIX"
            )));
        }
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            ..S3Config::default()
        })
    }
}

pub struct S3Backend {
    cfg: S3Config,
    client: Client,
    rt: tokio::runtime::Runtime,
}

fn sdk_err<E, R>(context: String, e: SdkError<E, R>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Error::backend(
        context,
        std::io::Error::other(DisplayErrorContext(&e).to_string()),
    )
}

impl S3Backend {
    pub fn new(cfg: S3Config) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chunkbak-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("tokio runtime: {e}")))?;
        let client = rt.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
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
            let mut b = aws_sdk_s3::config::Builder::from(&shared);
            if shared.region().is_none() {
                b = b.region(aws_config::Region::new("us-east-1"));
            }
            if let Some(ep) = &cfg.endpoint {
                b = b.endpoint_url(ep.clone()).force_path_style(true);
            } else if shared.endpoint_url().is_some() {
                b = b.force_path_style(true);
            }
            Client::from_conf(b.build())
        });
        Ok(S3Backend { cfg, client, rt })
    }

    fn key(&self, kind: FileKind, name: &str) -> String {
        let rel = kind.path_of(name);
        if self.cfg.prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.cfg.prefix)
        }
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.cfg.bucket)
    }

    fn list_prefix(&self, kind: FileKind) -> String {
        let dir = kind.dir();
        match (self.cfg.prefix.is_empty(), dir.is_empty()) {
            (true, _) => format!("{dir}/"),
            (false, true) => format!("{}/", self.cfg.prefix),
            (false, false) => format!("{}/{dir}/", self.cfg.prefix),
        }
    }

    /// HeadObject: the object's size, or None when it does not exist.
    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.rt.block_on(async {
            match self
                .client
                .head_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(h) => Ok(Some(h.content_length().unwrap_or(0) as u64)),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(sdk_err(format!("HEAD {}", self.url(key)), e)),
            }
        })
    }

    /// GetObject, whole or a byte range; a range past the end yields what exists (maybe none).
    fn fetch(&self, key: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>> {
        let range = range.map(|(o, l)| format!("bytes={}-{}", o, o + l - 1));
        let what = format!("GET {} {}", self.url(key), range.as_deref().unwrap_or(""));
        self.rt.block_on(async {
            let req = self.client.get_object().bucket(&self.cfg.bucket).key(key);
            let resp = match req.set_range(range.clone()).send().await {
                Ok(r) => r,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Err(Error::ObjectNotFound(self.url(key)));
                }
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                    return Ok(Vec::new());
                }
                Err(e) => return Err(sdk_err(what.trim_end().to_string(), e)),
            };
            let body = resp.body.collect().await.map_err(|e| {
                Error::backend(
                    what.trim_end().to_string(),
                    std::io::Error::other(e.to_string()),
                )
            })?;
            Ok(body.into_bytes().to_vec())
        })
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        if self.cfg.prefix.is_empty() {
            format!("s3:{}", self.cfg.bucket)
        } else {
            format!("s3:{}/{}", self.cfg.bucket, self.cfg.prefix)
        }
    }

    fn create(&self) -> Result<()> {
        self.rt.block_on(async {
            match self
                .client
                .head_bucket()
                .bucket(&self.cfg.bucket)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => self
                    .client
                    .create_bucket()
                    .bucket(&self.cfg.bucket)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| sdk_err(format!("creating bucket {}", self.cfg.bucket), e)),
                Err(e) => Err(sdk_err(format!("bucket {}", self.cfg.bucket), e)),
            }
        })
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        Ok(self.head(&self.key(kind, name))?.is_some())
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let key = self.key(kind, name);
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .body(ByteStream::from(data.to_vec()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_err(format!("PUT {}", self.url(&key)), e))
        })
    }

    fn put_file(&self, kind: FileKind, name: &str, path: &Path) -> Result<()> {
        let key = self.key(kind, name);
        self.rt.block_on(async {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
            self.client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .body(body)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_err(format!("PUT {}", self.url(&key)), e))
        })?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.fetch(&self.key(kind, name), None)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(kind, name);
        let data = self.fetch(&key, Some((offset, len)))?;
        if data.len() as u64 != len {
            return Err(Error::corrupt(
                self.url(&key),
                format!("object is shorter than {} bytes (truncated?)", offset + len),
            ));
        }
        Ok(data)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        if kind == FileKind::Config {
            let size = self.head(&self.key(kind, "config"))?;
            return Ok(size
                .map(|n| ("config".to_string(), n))
                .into_iter()
                .collect());
        }
        let prefix = self.list_prefix(kind);
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| sdk_err(format!("LIST {}", self.url(&prefix)), e))?;
                for o in page.contents() {
                    let Some(key) = o.key() else { continue };
                    let name = key.rsplit('/').next().unwrap_or(key);
                    out.push((name.to_string(), o.size().unwrap_or(0) as u64));
                }
            }
            out.sort();
            Ok(out)
        })
    }

    /// Packs are built in a folder of their own, so the system temp folder (often an ancestor
    /// of backed-up paths) does not change with every pack.
    fn temp_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join("chunkbak-packs")
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let key = self.key(kind, name);
        self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_err(format!("DELETE {}", self.url(&key)), e))
        })
    }
}
