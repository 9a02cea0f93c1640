//! Typed engine errors. Their kind drives retries and the CLI's exit codes.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no repository at {0}: run `chunkbak init` first, or check --repo / CHUNKBAK_REPOSITORY"
    )]
    NoRepository(String),
    #[error("a repository already exists at {0}")]
    RepositoryExists(String),
    /// The location, and what was not tried (key files refused by name), if anything.
    #[error("wrong password: no key in {0}/keys opens with it{1}")]
    WrongPassword(String, String),
    #[error("object {name} is corrupt: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("object {0} not found in the repository")]
    ObjectNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{object} is in storage class {class} and must be thawed before it can be read: `chunkbak restore` thaws what it needs, `chunkbak warmup` thaws ahead")]
    Archived { object: String, class: String },
    /// The store did not keep an upload as it was sent (a store that keeps aws-chunked
    /// framing as data, or a proxy that alters bodies).
    #[error("{object}: the store did not keep the upload as sent ({detail}); it was deleted and sent again with the same result: this store (or a proxy before it) alters uploads and cannot hold a repository (docs/s3.md, compatible stores)")]
    Altered { object: String, detail: String },
    /// The file system under `at` is full: the run stopped at the first refused write;
    /// `done` says what it finished before (may be empty).
    #[error("disk full at {}: {first}{done}; the run stopped there: free space (or choose another place) and run the same command again: what is already right is kept", at.display())]
    DiskFull {
        at: PathBuf,
        first: String,
        done: String,
    },
    /// The store stopped answering (no response to `failures` attempts in a row): the run
    /// stopped; `done` says what it finished before (may be empty).
    #[error("{store} stopped answering: {failures} requests in a row got no answer (last: {last}){done}; the run stopped there, and what it finished is kept: run the same command again when the store answers")]
    StoreDown {
        store: String,
        failures: u32,
        last: String,
        done: String,
    },
    /// Retained by S3 Object Lock until `until` (seconds since the epoch): cannot be deleted
    /// before then.
    #[error("{object} is locked (S3 Object Lock) until {}: it can be deleted after that", crate::timeparse::format_time(*until))]
    Locked { object: String, until: i64 },
    /// The cause is part of the message (not a `source`), so it is printed once.
    #[error("backend: {context}: {cause}")]
    Backend {
        context: String,
        cause: std::io::Error,
    },
    /// The cause is part of the message (not a `source`), so it is printed once.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("config: {0}")]
    Config(String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn corrupt(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub fn backend(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Backend {
            context: context.into(),
            cause: source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
