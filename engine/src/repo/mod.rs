//! An open repository: backend, unlocked key, config, and the loaded index.
//!
//! Here: opening and creating it, its keys, the cache, objects read and written whole, and
//! snapshots. `index`: the index files read, loaded (in memory or kept on disk) and written.
//! `blobs`: blobs read from their packs. `trees`: trees loaded, walked and saved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::{Backend, FileKind, StorageClass};
use crate::cache::Cache;
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypter::{random_bytes, MasterKey};
use crate::error::{Error, Result};
use crate::format::config::{Config, DEFAULT_DATA_PACK_SIZE, DEFAULT_TREE_PACK_SIZE};
use crate::format::key::{self, KdfParams, KeyFile};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, TreeBlob};
use crate::format::{envelope, ObjectKind};
use crate::hasher::Hasher;
use crate::id::{BlobId, Id};
use crate::index::Index;

mod blobs;
mod index;
mod trees;

/// Reads in flight at once when loading many small objects (index files, snapshots): on S3
/// each read is a round trip, so they overlap; on a local disk it costs nothing.
const PARALLEL_READS: usize = 16;
/// The memory budget of a repository nobody set one for: the CLI's `--memory` default.
pub const DEFAULT_MEMORY: u64 = 150 << 20;

/// How many prunes in a row a read of every index file outlasts (each replaced a file it had
/// listed and the read started over on a new listing) before it gives up and says so.
pub const INDEX_RACES: u32 = 10;

/// Threads that decode index files into the index being loaded (the adding is serialized, so
/// more would only hold more decoded files in memory).
pub(crate) const DECODERS: usize = 2;
/// What [`Repository::each_dir_part`] calls: a part's id (of a split directory) and entries.
pub type DirPart<'a> = dyn FnMut(Option<BlobId>, &[Node]) -> Result<()> + 'a;

/// The error of a walk's own work (a sort's I/O), kept apart from the read errors of
/// [`Repository::each_dir_part`] and [`Repository::each_file_chunk`] around it: the walk
/// stops on a placeholder, and the caller gets the work's error back as it is while it words
/// a read error its own way.
#[derive(Default)]
pub(crate) struct WorkError(Option<Error>);

impl WorkError {
    /// The work's result; an error is kept here and the walk stops on a placeholder.
    pub(crate) fn keep<T>(&mut self, r: Result<T>) -> Result<T> {
        r.map_err(|e| {
            self.0 = Some(e);
            Error::Other(String::new())
        })
    }

    /// Whether the work failed (a walk's error is then the placeholder).
    pub(crate) fn failed(&self) -> bool {
        self.0.is_some()
    }

    /// A walk's outcome: `Err`, the work's error; `Ok(Err)`, a read error; `Ok(Ok)`, done.
    pub(crate) fn split(&mut self, walked: Result<()>) -> Result<Result<()>> {
        match (walked, self.0.take()) {
            (Err(_), Some(e)) => Err(e),
            (walked, _) => Ok(walked),
        }
    }
}

/// The pause before a read of the index files starts over after its `races`-th race with a
/// prune (which deletes its files one by one): 50 ms, doubling, at most 800 ms.
fn pause_after_race(races: u32) {
    std::thread::sleep(std::time::Duration::from_millis(25 << races.min(5)));
}

/// The error of a read of the index files that met a new prune `races` times in a row (the
/// last time, `what` vanished).
fn prunes_replacing(races: u32, what: &str) -> Error {
    Error::Other(format!(
        "the index files changed {races} times while this run read them (the last time {what} \
         vanished): prunes are replacing them. Run it again when the prune is done"
    ))
}

/// Trees kept decoded by [`Repository::load_tree`]: at most this many, of at most a fifth of
/// the memory budget in encoded bytes together (4 MiB to 512 MiB; 30 MiB at the default).
const TREE_CACHE_ENTRIES: usize = 4096;

/// `f` over `items` on up to [`PARALLEL_READS`] threads, results in order; the first error.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    parallel_map_n(PARALLEL_READS, items, f)
}

/// As [`parallel_map`], on up to `threads` threads.
pub(crate) fn parallel_map_n<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                let failed = r.is_err();
                *results[i].lock().expect("result lock") = Some(r);
                if failed {
                    // Stop handing out work; the error is reported below.
                    next.store(items.len(), std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for r in results {
        match r.into_inner().expect("result lock") {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

/// Options of `init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub data_pack_size: u32,
    pub tree_pack_size: u32,
    pub compression_level: i32,
    pub kdf: KdfParams,
    /// Storage class of data packs (any class).
    pub data_class: StorageClass,
    /// Storage class of tree packs, index files and snapshots (readable at once).
    pub meta_class: StorageClass,
    /// Another repository's dedup secret (with its chunker parameters in `chunker`), so blobs
    /// have the same ids in both; `None`: a fresh random secret.
    pub dedup_secret: Option<[u8; 32]>,
    /// S3 Object Lock for every object written (the bucket must have Object Lock enabled).
    pub object_lock: Option<crate::backend::ObjectLock>,
    /// A gear table keyed whole (true for new repositories; `--copy-chunker-params` takes
    /// the source's).
    pub keyed_gear: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            data_pack_size: DEFAULT_DATA_PACK_SIZE,
            tree_pack_size: DEFAULT_TREE_PACK_SIZE,
            compression_level: 3,
            kdf: KdfParams::default(),
            data_class: StorageClass::Standard,
            meta_class: StorageClass::Standard,
            dedup_secret: None,
            object_lock: None,
            keyed_gear: true,
        }
    }
}

/// One key file, as `key list` shows it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// Object name under `keys/`.
    pub id: String,
    /// The key file that opened this repository.
    pub current: bool,
    /// argon2id parameters (None when the file is damaged).
    pub params: Option<KdfParams>,
    /// Upload time, seconds since the epoch, where the store reports it.
    pub created: Option<i64>,
    /// Why the file cannot be used, when it cannot.
    pub problem: Option<String>,
}

pub struct Repository {
    backend: Arc<dyn Backend>,
    key: MasterKey,
    /// Name of the key file that opened the repository.
    key_id: Mutex<String>,
    config: Config,
    chunker: Chunker,
    hasher: Hasher,
    index: Arc<RwLock<Index>>,
    /// Trees loaded lately, and their encoded bytes.
    tree_cache: Mutex<(HashMap<BlobId, Arc<TreeBlob>>, usize)>,
    /// Whether [`load_tree`](Repository::load_tree) keeps what it loads (not in a walk that
    /// loads each tree once: [`walk_once`](Repository::walk_once)).
    tree_caching: std::sync::atomic::AtomicBool,
    /// The plaintexts of the latest delta bases read (a 64th of the memory budget, 1 to 16
    /// MiB, or the newest one), newest last.
    base_cache: Mutex<std::collections::VecDeque<(BlobId, Arc<Vec<u8>>)>>,
    /// The memory budget ([`set_memory`](Self::set_memory)).
    memory: std::sync::atomic::AtomicU64,
    /// Local copies of index files, snapshots and tree packs (remote repositories only).
    cache: std::sync::OnceLock<Arc<Cache>>,
    /// Where, and above how many blobs, a loaded index is kept in a run file on disk.
    index_on_disk: std::sync::OnceLock<(std::path::PathBuf, usize)>,
    /// A private folder of this process for the index on disk (`--no-cache`), removed with
    /// the repository.
    index_tmp: std::sync::OnceLock<crate::tmp::RunFolder>,
    /// Key files not tried at open, and why (see [`Repository::open_preferring`]).
    refused_keys: Mutex<Vec<String>>,
    /// The `config` object's bytes as read at open (or written by init).
    config_bytes: std::sync::OnceLock<Vec<u8>>,
}

impl Repository {
    /// Creates a new repository and returns it opened.
    pub fn init(backend: Arc<dyn Backend>, password: &[u8], opts: &InitOptions) -> Result<Self> {
        Self::init_with(backend, password, opts, |_| Ok(()))
    }

    /// As [`init`](Self::init), running `before_write` once the bucket or folder exists and
    /// before anything is written (the CLI asks the store what it does with uploads there).
    pub fn init_with(
        backend: Arc<dyn Backend>,
        password: &[u8],
        opts: &InitOptions,
        before_write: impl FnOnce(&dyn Backend) -> Result<()>,
    ) -> Result<Self> {
        if backend.exists(FileKind::Config, "config")? {
            return Err(Error::RepositoryExists(backend.location()));
        }
        let config = Config {
            version: 1,
            repo_id: random_bytes(),
            chunk_min: opts.chunker.min_size,
            chunk_avg: opts.chunker.avg_size,
            chunk_max: opts.chunker.max_size,
            chunk_normalization: opts.chunker.normalization,
            data_pack_size: opts.data_pack_size,
            tree_pack_size: opts.tree_pack_size,
            compression_level: opts.compression_level,
            created: jiff::Timestamp::now().as_second(),
            data_storage_class: opts.data_class.code(),
            meta_storage_class: opts.meta_class.code(),
            dedup_secret: opts.dedup_secret.unwrap_or_else(random_bytes),
            object_lock: opts.object_lock,
            keyed_gear: opts.keyed_gear,
        };
        config.validate()?;
        backend.set_object_lock(config.object_lock);
        if config.object_lock.is_some() {
            backend.supports_object_lock()?;
        }
        backend.create()?;
        before_write(backend.as_ref())?;
        let key = MasterKey::generate();
        let kf = key::seal(&key, password, opts.kdf)?;
        let key_id = Id::of_object(&kf).to_hex();
        backend.put(FileKind::Key, &key_id, &kf)?;
        // The config is written last: its presence marks a complete repository.
        let c = envelope::seal(&key, ObjectKind::Config, &config.encode());
        backend.put(FileKind::Config, "config", &c)?;
        let repo = Self::with_key(backend, key, key_id, config)?;
        let _ = repo.config_bytes.set(c);
        Ok(repo)
    }

    /// Opens a repository with a password (tries every key file).
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Self> {
        Self::open_preferring(backend, password, None)
    }

    /// Opens a repository with a password, trying the key file `preferred` first (the one
    /// that opened it last time), then the others. Key files whose argon2id parameters exceed
    /// [`key::MAX_OPEN_PARAMS`] are not run: [`refused_keys`](Self::refused_keys) names them.
    pub fn open_preferring(
        backend: Arc<dyn Backend>,
        password: &[u8],
        preferred: Option<&str>,
    ) -> Result<Self> {
        if !backend.exists(FileKind::Config, "config")? {
            return Err(Error::NoRepository(backend.location()));
        }
        let mut keys = backend.list(FileKind::Key)?;
        if keys.is_empty() {
            return Err(Error::corrupt(
                format!("{}/keys", backend.location()),
                "the repository has no key files",
            ));
        }
        if let Some(p) = preferred {
            keys.sort_by_key(|(name, _)| name != p);
        }
        let mut last_err = None;
        let mut refused = Vec::new();
        for (name, _) in &keys {
            let bytes = backend.get(FileKind::Key, name)?;
            let kf = match KeyFile::decode(&bytes, &format!("keys/{name}")) {
                Ok(k) => k,
                Err(e) => {
                    refused.push(e.to_string());
                    last_err = Some(e);
                    continue;
                }
            };
            if !kf.params.within_open_limits() {
                let (p, m) = (kf.params, key::MAX_OPEN_PARAMS);
                refused.push(format!(
                    "key file keys/{name} asks for argon2id with {} KiB, {} iterations, {} \
                     lanes, more than chunkbak runs (at most {} KiB, {} iterations, {} lanes): \
                     not tried (a key file no chunkbak wrote; `chunkbak key remove` it from a \
                     maintenance host if it is not yours)",
                    p.m_cost_kib, p.t_cost, p.p_cost, m.m_cost_kib, m.t_cost, m.p_cost
                ));
                continue;
            }
            if let Some(key) = kf.open(password)? {
                let bytes = backend.get(FileKind::Config, "config")?;
                let config = Config::decode(
                    &envelope::open(&key, ObjectKind::Config, &bytes, "config")?,
                    "config",
                )?;
                let repo = Self::with_key(backend, key, name.clone(), config)?;
                *repo.refused_keys.lock().expect("refused keys") = refused;
                let _ = repo.config_bytes.set(bytes);
                return Ok(repo);
            }
        }
        match last_err {
            Some(e) if keys.len() == 1 => Err(e),
            _ if !refused.is_empty() => Err(Error::WrongPassword(
                backend.location(),
                format!(
                    " ({} key file(s) not tried: {})",
                    refused.len(),
                    refused.join("; ")
                ),
            )),
            _ => Err(Error::WrongPassword(backend.location(), String::new())),
        }
    }

    /// Whether the store refuses to overwrite an existing object (format-spec 12, "Trust"):
    /// writes the `config` object's own bytes over it with the no-overwrite condition every
    /// write carries. One PUT, answered 412 by a store that honours it.
    pub fn store_refuses_overwrites(&self) -> Result<bool> {
        let bytes = match self.config_bytes.get() {
            Some(b) => b.clone(),
            None => self.backend.get(FileKind::Config, "config")?,
        };
        self.backend
            .refuses_overwrite(FileKind::Config, "config", &bytes)
    }

    /// Key files that were not tried when the repository was opened, with the reason.
    pub fn refused_keys(&self) -> Vec<String> {
        self.refused_keys.lock().expect("refused keys").clone()
    }

    fn with_key(
        backend: Arc<dyn Backend>,
        key: MasterKey,
        key_id: String,
        config: Config,
    ) -> Result<Self> {
        backend.set_storage_class(FileKind::Data, config.data_class());
        backend.set_object_lock(config.object_lock);
        for k in [FileKind::Tree, FileKind::Index, FileKind::Snapshot] {
            backend.set_storage_class(k, config.meta_class());
        }
        let dedup = config.dedup_key();
        let chunker = dedup.chunker(config.chunker_params(), config.keyed_gear)?;
        Ok(Repository {
            hasher: dedup.hasher(),
            backend,
            key,
            key_id: Mutex::new(key_id),
            config,
            chunker,
            index: Arc::new(RwLock::new(Index::new())),
            tree_cache: Mutex::new((HashMap::new(), 0)),
            tree_caching: std::sync::atomic::AtomicBool::new(true),
            base_cache: Mutex::new(std::collections::VecDeque::new()),
            memory: std::sync::atomic::AtomicU64::new(DEFAULT_MEMORY),
            cache: std::sync::OnceLock::new(),
            index_on_disk: std::sync::OnceLock::new(),
            index_tmp: std::sync::OnceLock::new(),
            refused_keys: Mutex::new(Vec::new()),
            config_bytes: std::sync::OnceLock::new(),
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Name of the key file that opened the repository.
    pub fn key_id(&self) -> String {
        self.key_id.lock().expect("key id").clone()
    }

    /// Every key file, oldest first.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let current = self.key_id();
        let mut out = Vec::new();
        for o in self.backend.list_info(FileKind::Key)? {
            let (params, problem) = match self.backend.get(FileKind::Key, &o.name) {
                Ok(b) => match KeyFile::decode(&b, &format!("keys/{}", o.name)) {
                    Ok(k) => (Some(k.params), None),
                    Err(e) => (None, Some(e.to_string())),
                },
                // Removed by another `key remove` since the listing.
                Err(Error::ObjectNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            out.push(KeyInfo {
                current: o.name == current,
                id: o.name,
                params,
                created: o.modified,
                problem,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Adds a key file sealing this repository's key under `password`; returns its name. The
    /// new file is read back and opened before this returns, so a password that was just
    /// added is known to work.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<String> {
        let kf = key::seal(&self.key, password, kdf)?;
        let name = Id::of_object(&kf).to_hex();
        self.backend.put(FileKind::Key, &name, &kf)?;
        let back = self.backend.get(FileKind::Key, &name)?;
        let opened = KeyFile::decode(&back, &format!("keys/{name}"))?.open(password)?;
        if opened.map(|k| *k.material()) != Some(*self.key.material()) {
            return Err(Error::corrupt(
                format!("keys/{name}"),
                "the key file just written does not open with its password",
            ));
        }
        Ok(name)
    }

    /// Removes a key file by name or unique prefix; returns its name. The key file that opened
    /// the repository is refused: remove it from a session opened with another password (or
    /// use `key passwd`), so at least one known password always remains. Under Object Lock a
    /// retained key file is hidden instead (no chunkbak tries it; its stored copy stays until
    /// the returned time).
    pub fn remove_key(&self, prefix: &str) -> Result<(String, Option<i64>)> {
        let names: Vec<String> = self
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(prefix))
            .collect();
        let name = match names.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(Error::NotFound(format!(
                    "no key file {prefix:?} in {}/keys (see `chunkbak key list`)",
                    self.backend.location()
                )))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "key id prefix {prefix:?} matches {} key files: give more of it",
                    names.len()
                )))
            }
        };
        if name == self.key_id() {
            return Err(Error::Invalid(format!(
                "key file {name} is the one this password opened; removing it could leave no \
                 password you know: use `chunkbak key passwd`, or open with another password"
            )));
        }
        let locked = crate::backend::delete_or_hide(self.backend.as_ref(), FileKind::Key, &name)?;
        Ok((name, locked))
    }

    /// Replaces the password in use: adds a key file for `password`, then removes the one that
    /// opened the repository. Interrupted in between, both passwords work. Returns (new, old).
    pub fn change_password(&self, password: &[u8], kdf: KdfParams) -> Result<(String, String)> {
        let old = self.key_id();
        let new = self.add_key(password, kdf)?;
        if new != old {
            *self.key_id.lock().expect("key id") = new.clone();
            crate::backend::delete_or_hide(self.backend.as_ref(), FileKind::Key, &old)?;
        }
        Ok((new, old))
    }

    /// Keeps local copies of metadata under `root/<repository id>/` when the repository is
    /// remote (a local repository is its own cache). Returns whether the cache is in use.
    pub fn use_cache(&self, root: &std::path::Path) -> bool {
        self.use_cache_as(Cache::new(root, &self.config.repo_id))
    }

    /// As [`use_cache`](Self::use_cache), for tree packs only (`check`: one GET per tree pack
    /// not cached, not one per directory; index files and snapshots are read from the
    /// repository it checks, and `--read-data` reads every pack from it).
    pub fn use_cache_for_trees(&self, root: &std::path::Path) -> bool {
        self.use_cache_as(Cache::new(root, &self.config.repo_id).trees_only())
    }

    fn use_cache_as(&self, cache: Cache) -> bool {
        if !self.backend.is_remote() {
            return false;
        }
        if crate::fsperm::mkdir_private(cache.dir()).is_err() {
            // An unwritable cache would only add downloads.
            return false;
        }
        let _ = self.cache.set(Arc::new(cache));
        true
    }

    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.get()
    }
    pub fn key(&self) -> &MasterKey {
        &self.key
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }
    pub fn index(&self) -> &Arc<RwLock<Index>> {
        &self.index
    }

    /// Reads a whole object and checks that its name is the hash of its bytes.
    fn get_verified(&self, fk: FileKind, name: &str) -> Result<Vec<u8>> {
        let cached = matches!(fk, FileKind::Index | FileKind::Snapshot | FileKind::Tree);
        let cache = self.cache().filter(|_| cached);
        if let Some(bytes) = cache.and_then(|c| c.get(fk, name)) {
            return Ok(bytes);
        }
        let bytes = self.backend.get(fk, name)?;
        if Id::of_object(&bytes).to_hex() != name {
            return Err(Error::corrupt(
                fk.path_of(name),
                "content does not match its name (damaged or truncated object)",
            ));
        }
        if let Some(c) = cache {
            c.put(fk, name, &bytes);
        }
        Ok(bytes)
    }

    /// Reads and decrypts a standalone object, checking that its name is the hash of its bytes.
    pub fn read_object(&self, fk: FileKind, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let bytes = self.get_verified(fk, name)?;
        let path = fk.path_of(name);
        envelope::open(&self.key, kind, &bytes, &path)
    }

    /// Encrypts and stores a standalone object under the hash of its bytes.
    pub fn write_object(&self, fk: FileKind, kind: ObjectKind, payload: &[u8]) -> Result<Id> {
        let bytes = envelope::seal(&self.key, kind, payload);
        let id = Id::of_object(&bytes);
        self.backend.put(fk, &id.to_hex(), &bytes)?;
        if let Some(c) = self.cache() {
            c.put(fk, &id.to_hex(), &bytes);
        }
        Ok(id)
    }

    /// The objects of a kind with well-formed names (hex ids); the cache forgets the others.
    fn list_named(&self, fk: FileKind) -> Result<Vec<(Id, String)>> {
        let names: Vec<(Id, String)> = self
            .backend
            .list(fk)?
            .into_iter()
            .filter_map(|(name, _)| Id::from_hex(&name).map(|id| (id, name)))
            .collect();
        if let Some(c) = self.cache() {
            c.retain(fk, &names.iter().map(|(_, n)| n.clone()).collect());
        }
        Ok(names)
    }

    /// All snapshots, oldest first. An unreadable snapshot object fails the call: what must
    /// see every snapshot (prune, forget) must not go on without one.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let (out, mut damaged) = self.snapshots_and_damaged()?;
        match damaged.pop() {
            Some((_, e)) => Err(e),
            None => Ok(out),
        }
    }

    /// The readable snapshots, oldest first, and the snapshot objects that cannot be read
    /// (their path and why), for what can go on without them (check, listing, restore).
    #[allow(clippy::type_complexity)]
    pub fn snapshots_and_damaged(&self) -> Result<(Vec<(Id, Snapshot)>, Vec<(String, Error)>)> {
        let names = self.list_named(FileKind::Snapshot)?;
        let read = parallel_map(&names, |(id, name)| {
            let path = format!("snapshots/{name}");
            let r = self
                .read_object(FileKind::Snapshot, ObjectKind::Snapshot, name)
                .and_then(|plain| Snapshot::decode(&plain, &path));
            Ok(match r {
                Ok(s) => Ok(Some((*id, s))),
                // Removed by a `forget` running at the same time.
                Err(Error::ObjectNotFound(_)) => Ok(None),
                Err(e) => Err((path, e)),
            })
        })?;
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for r in read {
            match r {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(d) => damaged.push(d),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        damaged.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((out, damaged))
    }

    pub fn write_snapshot(&self, s: &Snapshot) -> Result<Id> {
        self.write_object(FileKind::Snapshot, ObjectKind::Snapshot, &s.encode())
    }
}
