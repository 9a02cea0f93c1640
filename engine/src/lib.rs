//! # chunkbak engine
//!
//! All logic of chunkbak; it never prints, never exits and never parses argv. Data flows through
//! one module per stage:
//!
//! ```text
//!  file / stdin
//!      │ read (ops::backup, walkdir + rayon)
//!      ▼
//!  chunker     FastCDC 2020, normalized, gear table keyed from the dedup secret
//!      ▼
//!  hasher      keyed BLAKE3 → BlobId
//!      │        ── dedup short-circuits here: a known id is never compressed or stored again
//!      ▼
//!  compressor  zstd per blob, raw when it does not pay
//!      ▼
//!  crypter     AES-256-GCM, per-pack subkey, offset nonces
//!      ▼
//!  packer      blobs → pack files (data/ and tree/ never mixed), header at the end
//!      ▼
//!  backend     local directory (S3 comes through the same trait)
//! ```
//!
//! Then `index/` files record which pack holds which blob, and a `snapshots/` object, written
//! last, commits the backup. `format/` holds every on-disk structure; `format-spec.md` is the
//! normative description of their bytes.

pub mod alloc;
#[cfg(feature = "aws-sources")]
pub mod aws;
pub mod backend;
pub mod cache;
pub mod cachefile;
pub mod child;
pub mod chunker;
pub mod compressor;
pub mod crypter;
#[cfg(feature = "aws-sources")]
pub mod ebs;
#[cfg(feature = "aws-sources")]
pub mod elb;
pub mod error;
pub mod format;
pub mod fsperm;
#[doc(hidden)]
pub mod fuzzing;
pub mod hasher;
pub mod id;
pub mod index;
pub mod indexrun;
pub mod ops;
pub mod packer;
pub mod packtable;
pub mod progress;
pub mod repo;
pub mod resemble;
#[cfg(feature = "aws-sources")]
pub mod route53;
pub mod state;
pub mod stop;
#[doc(hidden)]
pub mod synth;
pub mod timeparse;
pub mod tmp;

pub use error::{Error, Result};
pub use id::{BlobId, Id};
pub use repo::Repository;
