//! Storage backends: where objects live. Every backend passes the same conformance tests
//! (`engine/tests/backend.rs`). The trait is synchronous; an async store (S3) runs its own runtime.

pub mod fault;
pub mod local;
pub mod mem;
#[cfg(feature = "s3")]
pub mod s3;

use std::path::{Path, PathBuf};

use crate::error::Result;

/// The folders (key prefixes) of a repository. Only `Data` may ever move to an archive storage
/// class; everything else is metadata and stays readable at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    Config,
    Key,
    Snapshot,
    Index,
    Data,
    Tree,
    Lock,
}

impl FileKind {
    pub const ALL: [FileKind; 7] = [
        FileKind::Config,
        FileKind::Key,
        FileKind::Snapshot,
        FileKind::Index,
        FileKind::Data,
        FileKind::Tree,
        FileKind::Lock,
    ];

    /// The folder of this kind, relative to the repository root.
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Snapshot => "snapshots",
            FileKind::Index => "index",
            FileKind::Data => "data",
            FileKind::Tree => "tree",
            FileKind::Lock => "locks",
        }
    }

    /// The folder of packs of a kind (`DataPack` → `Data`, `TreePack` → `Tree`).
    pub fn of_pack(kind: crate::format::ObjectKind) -> FileKind {
        match kind {
            crate::format::ObjectKind::TreePack => FileKind::Tree,
            _ => FileKind::Data,
        }
    }

    /// The kind of the packs in this folder.
    pub fn pack_kind(self) -> crate::format::ObjectKind {
        match self {
            FileKind::Tree => crate::format::ObjectKind::TreePack,
            _ => crate::format::ObjectKind::DataPack,
        }
    }

    /// Packs are fanned out over 256 sub-folders named by the first two hex digits.
    pub fn fanned_out(self) -> bool {
        matches!(self, FileKind::Data | FileKind::Tree)
    }

    /// Relative path of an object: `config`, `keys/<name>`, `data/ab/<name>`, ...
    pub fn path_of(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            k if k.fanned_out() && name.len() >= 2 => {
                format!("{}/{}/{}", k.dir(), &name[..2], name)
            }
            k => format!("{}/{}", k.dir(), name),
        }
    }
}

/// Storage classes of S3 (and the local backend, where everything is `Standard`). Only the
/// archive classes (`Glacier`, `DeepArchive`) need a thaw (RestoreObject) before a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StorageClass {
    #[default]
    Standard,
    StandardIa,
    IntelligentTiering,
    GlacierIr,
    Glacier,
    DeepArchive,
    /// A class this version does not know (read as hot; S3 says so on GET if it is not).
    Other,
}

impl StorageClass {
    /// The classes a repository's config can name, in code order (code = position).
    pub const CONFIGURABLE: [StorageClass; 6] = [
        StorageClass::Standard,
        StorageClass::StandardIa,
        StorageClass::IntelligentTiering,
        StorageClass::GlacierIr,
        StorageClass::Glacier,
        StorageClass::DeepArchive,
    ];

    pub fn from_code(code: u8) -> Option<StorageClass> {
        Self::CONFIGURABLE.get(usize::from(code)).copied()
    }

    pub fn code(self) -> u8 {
        Self::CONFIGURABLE
            .iter()
            .position(|c| *c == self)
            .unwrap_or(0) as u8
    }

    /// The S3 name (`STANDARD`, `GLACIER`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StorageClass::Standard => "STANDARD",
            StorageClass::StandardIa => "STANDARD_IA",
            StorageClass::IntelligentTiering => "INTELLIGENT_TIERING",
            StorageClass::GlacierIr => "GLACIER_IR",
            StorageClass::Glacier => "GLACIER",
            StorageClass::DeepArchive => "DEEP_ARCHIVE",
            StorageClass::Other => "OTHER",
        }
    }

    /// Parses an S3 class name; unknown names give `Other`.
    pub fn from_name(s: &str) -> StorageClass {
        Self::CONFIGURABLE
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .unwrap_or(StorageClass::Other)
    }

    /// Parses a class a user names in an option; unknown names are an error.
    pub fn parse(s: &str) -> crate::Result<StorageClass> {
        match Self::from_name(s) {
            StorageClass::Other => Err(crate::Error::Invalid(format!(
                "unknown storage class {s:?}: use one of STANDARD, STANDARD_IA, \
                 INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE"
            ))),
            c => Ok(c),
        }
    }

    /// Objects in these classes must be thawed (RestoreObject) before they can be read.
    pub fn is_archive(self) -> bool {
        matches!(self, StorageClass::Glacier | StorageClass::DeepArchive)
    }

    /// The minimum storage duration S3 bills for, in days (early deletion costs the rest).
    pub fn min_days(self) -> u32 {
        match self {
            StorageClass::StandardIa => 30,
            StorageClass::GlacierIr | StorageClass::Glacier => 90,
            StorageClass::DeepArchive => 180,
            _ => 0,
        }
    }
}

/// S3 Object Lock retention mode: who may shorten or lift a lock before it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may lift it; nobody else.
    Governance,
    /// Nobody may lift or shorten it, the account's root user included.
    Compliance,
}

impl LockMode {
    /// The code in the repository config (format-spec 9).
    pub fn code(self) -> u8 {
        match self {
            LockMode::Governance => 0,
            LockMode::Compliance => 1,
        }
    }

    pub fn from_code(c: u8) -> Option<LockMode> {
        match c {
            0 => Some(LockMode::Governance),
            1 => Some(LockMode::Compliance),
            _ => None,
        }
    }

    /// The S3 name (`GOVERNANCE`, `COMPLIANCE`).
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    pub fn parse(s: &str) -> crate::Result<LockMode> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            _ => Err(crate::Error::Invalid(format!(
                "unknown Object Lock mode {s:?}: use governance or compliance"
            ))),
        }
    }
}

/// The Object Lock a repository asks of its store: every object it writes (but lock files)
/// is retained, undeletable, for `days` days from its upload, and maintenance extends the
/// retention of what the kept snapshots still reference (format-spec 9 and 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

impl ObjectLock {
    /// The longest retention the config may ask for (100 years, S3's own limit).
    pub const MAX_DAYS: u32 = 36_500;

    /// Whether objects of this kind are locked: everything but lock files, which every run
    /// creates and removes.
    pub fn covers(kind: FileKind) -> bool {
        kind != FileKind::Lock
    }
}

/// What [`Backend::purge_hidden`] did with objects hidden behind delete markers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purge {
    /// Versions deleted (their retention had ended), with the markers that hid them.
    pub deleted: u64,
    /// Versions still retained, and when the last of them becomes deletable.
    pub locked: u64,
    pub last_until: Option<i64>,
}

/// What extending an object's retention did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extended {
    /// Retained until the new date now.
    Extended,
    /// Already retained at least that long (or longer: S3 refuses to shorten a lock).
    AlreadyLonger,
    /// The object is gone (deleted, or hidden behind a delete marker).
    Gone,
}

/// Deletes an object, or, while S3 Object Lock retains it, hides it behind a delete marker
/// (it leaves every listing; the locked version stays until its retention ends and a later
/// `prune` deletes it). `Ok(None)` deleted (or already gone), `Ok(Some(until))` hidden.
pub fn delete_or_hide(backend: &dyn Backend, kind: FileKind, name: &str) -> Result<Option<i64>> {
    match backend.delete(kind, name) {
        Ok(()) | Err(crate::Error::ObjectNotFound(_)) => Ok(None),
        Err(crate::Error::Locked { until, .. }) => {
            backend.hide(kind, name)?;
            Ok(Some(until))
        }
        Err(e) => Err(e),
    }
}

/// A listing handed over an object at a time ([`Backend::list_info_each`]), collected and
/// sorted by name ([`Backend::list_info`]).
pub(crate) fn sorted_listing(
    each: impl FnOnce(&mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()>,
) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    each(&mut |o| {
        out.push(o);
        Ok(())
    })?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub class: StorageClass,
    /// Upload time, seconds since the epoch, where the store reports it.
    pub modified: Option<i64>,
}

/// Whether an object can be read now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThawState {
    /// In a class readable at once.
    Hot,
    /// Archived; no thaw requested.
    Cold,
    /// Archived; a thaw is in progress.
    Thawing,
    /// Archived, with a readable copy until the given time (as S3 reports it).
    Thawed { expiry: Option<String> },
}

impl ThawState {
    pub fn readable(&self) -> bool {
        matches!(self, ThawState::Hot | ThawState::Thawed { .. })
    }
}

/// What a store does with uploads, as it answered probes ([`Backend::probe`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// A PUT whose CRC32C does not match its body is refused (None: could not tell).
    pub checks_checksums: Option<bool>,
    /// Storage classes asked for that uploads may not use, with the store's answer.
    pub refused_classes: Vec<(StorageClass, String)>,
    /// Lifecycle rules: Some(true) supported, Some(false) not implemented, None unknown (the
    /// credentials may not read them, or a local folder).
    pub lifecycle: Option<bool>,
}

/// Retrieval tier of a thaw: how fast, at what price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Bulk,
    Standard,
    Expedited,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Bulk => "bulk",
            Tier::Standard => "standard",
            Tier::Expedited => "expedited",
        }
    }
}

/// Requests a backend sent (attempts, retries included) and bytes it moved, by S3 request type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    pub copy: u64,
    pub restore: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl std::ops::AddAssign for RequestCounts {
    /// The requests of two backends together (`copy`'s two repositories).
    fn add_assign(&mut self, o: RequestCounts) {
        self.put += o.put;
        self.get += o.get;
        self.head += o.head;
        self.list += o.list;
        self.delete += o.delete;
        self.copy += o.copy;
        self.restore += o.restore;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
    }
}

impl RequestCounts {
    /// `(name, count)` for each request type, in a fixed order.
    pub fn by_type(&self) -> [(&'static str, u64); 7] {
        [
            ("PUT", self.put),
            ("GET", self.get),
            ("HEAD", self.head),
            ("LIST", self.list),
            ("DELETE", self.delete),
            ("COPY", self.copy),
            ("RESTORE", self.restore),
        ]
    }
}

/// Counts requests as they go on the wire (by type, in [`RequestCounts::by_type`] order) and
/// the bytes moved. Shared, so a caller can read it after the backend is gone.
#[derive(Debug, Default)]
pub struct RequestCounter {
    pub(crate) by_type: [std::sync::atomic::AtomicU64; 7],
    pub(crate) up: std::sync::atomic::AtomicU64,
    pub(crate) down: std::sync::atomic::AtomicU64,
}

impl RequestCounter {
    pub fn snapshot(&self) -> RequestCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let c = |i: usize| self.by_type[i].load(Relaxed);
        RequestCounts {
            put: c(0),
            get: c(1),
            head: c(2),
            list: c(3),
            delete: c(4),
            copy: c(5),
            restore: c(6),
            bytes_up: self.up.load(Relaxed),
            bytes_down: self.down.load(Relaxed),
        }
    }
}

/// An object store holding one repository.
pub trait Backend: Send + Sync {
    /// Where the repository is, for messages.
    fn location(&self) -> String;
    /// Creates the layout of a new repository (folders, where the store has them).
    fn create(&self) -> Result<()>;
    /// Whether an object exists.
    fn exists(&self, kind: FileKind, name: &str) -> Result<bool>;
    /// Stores an object atomically: readers see all of it or nothing.
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// Stores the contents of a local file (a finished pack), consuming the file. `crc32c` is
    /// the CRC32C of its bytes (a store that checks uploads sends it along). The store may keep
    /// uploading after this returns: [`flush`](Self::flush) waits for it.
    fn put_file(&self, kind: FileKind, name: &str, path: &Path, crc32c: u32) -> Result<()> {
        let _ = crc32c;
        let data = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
        self.put(kind, name, &data)?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }
    /// Writes `data` under the name of an existing object, with the condition every write
    /// carries (never replace: S3's `If-None-Match: *`), to learn whether the store honours
    /// it: `true` when it refused (the object is unchanged), `false` when it stored `data`.
    /// Callers pass the object's own bytes, so even a store that overwrites changes nothing.
    fn refuses_overwrite(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<bool>;
    /// The CRC32C the store keeps for an object (the one sent with its upload), without
    /// reading it: `Ok(None)` when the store reports none, `Err` naming the object when it
    /// is missing. Stores without checksums (local folders) report none.
    fn stored_crc32c(&self, _kind: FileKind, _name: &str) -> Result<Option<u32>> {
        Ok(None)
    }
    /// Whether [`stored_crc32c`](Self::stored_crc32c) can report anything on this store.
    fn has_checksums(&self) -> bool {
        false
    }
    /// Sets the Object Lock every later write carries (stores without it ignore it; `init`
    /// checks [`supports_object_lock`](Self::supports_object_lock) first).
    fn set_object_lock(&self, _lock: Option<ObjectLock>) {}
    /// Whether the store can lock objects: on S3, a bucket with Object Lock enabled, or none
    /// yet ([`create`](Self::create) then makes it with Object Lock). `Err` says why not,
    /// naming the store. Called before `create`.
    fn supports_object_lock(&self) -> Result<()> {
        Err(crate::Error::Invalid(format!(
            "{} cannot lock objects: S3 Object Lock needs an S3 bucket (created with Object \
             Lock enabled)",
            self.location()
        )))
    }
    /// The time (seconds since the epoch) until which an object is retained, `None` when it
    /// is not locked; `Err(ObjectNotFound)` when it is missing. One HEAD on S3.
    fn retention(&self, _kind: FileKind, _name: &str) -> Result<Option<i64>> {
        Ok(None)
    }
    /// Retains an object until `until` (seconds since the epoch) at least.
    fn extend_retention(&self, _kind: FileKind, _name: &str, _until: i64) -> Result<Extended> {
        Ok(Extended::AlreadyLonger)
    }
    /// Deletes the versions of hidden objects of a kind (those whose current version is a
    /// delete marker, left by [`hide`](Self::hide)) whose retention has ended, and then
    /// their markers. Stores without versions have nothing hidden.
    fn purge_hidden(&self, _kind: FileKind) -> Result<Purge> {
        Ok(Purge::default())
    }
    /// Removes an object from the listing without deleting a locked copy: on a bucket with
    /// Object Lock, a delete marker (the locked version stays until its retention ends); on
    /// other stores the same as [`delete`](Self::delete).
    fn hide(&self, kind: FileKind, name: &str) -> Result<()> {
        self.delete(kind, name)
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    /// `len` bytes from `offset`; an error if the object is shorter.
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Names and sizes of all objects of a kind.
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>>;
    /// Deletes an object for good. Under Object Lock, `Err(Locked)` while it is retained
    /// (nothing is changed), and the locked version itself once its retention has ended.
    fn delete(&self, kind: FileKind, name: &str) -> Result<()>;
    /// Waits until every object handed to `put_file` is stored; the first failure, if any.
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    /// Sets the storage class for new objects of a kind (stores without classes ignore it).
    fn set_storage_class(&self, _kind: FileKind, _class: StorageClass) {}
    /// As [`list`](Self::list), with storage classes and upload times.
    fn list_info(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .list(kind)?
            .into_iter()
            .map(|(name, size)| ObjectInfo {
                name,
                size,
                class: StorageClass::Standard,
                modified: None,
            })
            .collect())
    }
    /// As [`list_info`](Self::list_info), handing each object to `f` as it is listed: a store
    /// of millions of packs is never held as one listing (prune, format-spec 16).
    fn list_info_each(
        &self,
        kind: FileKind,
        f: &mut dyn FnMut(ObjectInfo) -> Result<()>,
    ) -> Result<()> {
        for o in self.list_info(kind)? {
            f(o)?;
        }
        Ok(())
    }
    /// Whether reads cross a network (then a local cache of metadata pays off).
    fn is_remote(&self) -> bool {
        false
    }
    /// Whether objects of this store can be in an archive class (then restores plan thaws).
    fn has_archive_classes(&self) -> bool {
        false
    }
    /// Asks the store what it does with uploads (`init`, and once per host and store; S3:
    /// a few PUTs of probe objects under `PREFIX/probe/`, deleted again where allowed). A
    /// local folder does everything.
    fn probe(&self, _classes: &[StorageClass]) -> Result<Capabilities> {
        Ok(Capabilities {
            checks_checksums: Some(true),
            refused_classes: Vec::new(),
            lifecycle: None,
        })
    }
    /// Whether objects labelled with an archive class can be read without a thaw here, as far
    /// as known without a request: Some(true) on a store that serves them (or told to ignore
    /// classes), Some(false) on one that obeys them, None before the store was asked (by
    /// [`thaw_state`](Self::thaw_state) of a cold object).
    fn archive_readable(&self) -> Option<bool> {
        Some(true)
    }
    /// Whether an object can be read now (one HEAD on S3).
    fn thaw_state(&self, _kind: FileKind, _name: &str) -> Result<ThawState> {
        Ok(ThawState::Hot)
    }
    /// Asks the store to make an archived object readable for `days` days. A thaw already in
    /// progress or done is not an error.
    fn request_thaw(&self, _kind: FileKind, _name: &str, _tier: Tier, _days: u32) -> Result<()> {
        Ok(())
    }
    /// The counter of requests sent (stores that bill requests; None for local folders).
    fn request_counter(&self) -> Option<std::sync::Arc<RequestCounter>> {
        None
    }
    /// Requests sent so far, by type.
    fn requests(&self) -> Option<RequestCounts> {
        self.request_counter().map(|c| c.snapshot())
    }
    /// Makes a local repository private (0700) where it is readable by other users; what it
    /// changed, for a warning. Remote stores have nothing to tighten.
    fn tighten(&self) -> Vec<String> {
        Vec::new()
    }
    /// A local folder for temporary pack files, on the same file system as the repository
    /// where that makes `put_file` a rename.
    fn temp_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }
}
