//! An open repository: backend, unlocked key, config, and the loaded index.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::{Backend, FileKind, StorageClass};
use crate::cache::Cache;
use crate::chunker::{Chunker, ChunkerParams};
use crate::compressor::{decompress, decompress_delta, Compression};
use crate::crypter::{random_bytes, MasterKey};
use crate::error::{Error, Result};
use crate::format::config::{Config, DEFAULT_DATA_PACK_SIZE, DEFAULT_TREE_PACK_SIZE};
use crate::format::index::{IndexFile, PackEntry};
use crate::format::key::{self, KdfParams, KeyFile};
use crate::format::pack::BlobKind;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Node, TreeBlob};
use crate::format::{envelope, ObjectKind};
use crate::hasher::Hasher;
use crate::id::{BlobId, Id};
use crate::index::{BlobLocation, Index, PackInfo, MAX_DELTA_DEPTH};
use crate::packer::BlobSaver;

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

    /// Reads and decodes one index file.
    pub fn read_index_file(&self, name: &str) -> Result<IndexFile> {
        let plain = self.read_object(FileKind::Index, ObjectKind::Index, name)?;
        IndexFile::decode(&plain, &format!("index/{name}"))
    }

    /// Every index file in the repository (including superseded ones). A file a prune replaced
    /// between the listing and its read makes it start over on a new listing (up to
    /// [`INDEX_RACES`] times in a row).
    pub fn read_all_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        self.on_index_listing(|names| {
            parallel_map(names, |(id, name)| Ok((*id, self.read_index_file(name)?)))
        })
    }

    /// Lists the index files and runs `read` on the listing. A prune deletes the files it
    /// supersedes right after it wrote the one that replaces them, so a file may vanish between
    /// the listing and its read: then, after a pause that grows (a prune deletes its files one
    /// by one), the listing is taken again and `read` starts over on it at once, as long as a
    /// file the last listing named is gone from it. A file missing from a listing that still
    /// names every file read is the store's loss (the error names it); a read that meets a new
    /// prune [`INDEX_RACES`] times in a row is told to run again.
    fn on_index_listing<T>(&self, read: impl Fn(&[(Id, String)]) -> Result<T>) -> Result<T> {
        let listing = || -> Result<Vec<(Id, String)>> {
            let mut names = self.list_named(FileKind::Index)?;
            names.sort();
            Ok(names)
        };
        let mut names = listing()?;
        let mut races = 0;
        loop {
            let what = match read(&names) {
                Err(Error::ObjectNotFound(what)) => what,
                r => return r,
            };
            races += 1;
            pause_after_race(races);
            let again = listing()?;
            // Files a backup added meanwhile do not count: only one that went.
            if names.iter().all(|n| again.binary_search(n).is_ok()) {
                return Err(Error::ObjectNotFound(what));
            }
            if races >= INDEX_RACES {
                return Err(prunes_replacing(races, &what));
            }
            names = again;
        }
    }

    /// The index files that are in force: all but those another one supersedes.
    pub fn current_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let loaded = self.read_all_index_files()?;
        let superseded: std::collections::HashSet<Id> = loaded
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        Ok(loaded
            .into_iter()
            .filter(|(id, _)| !superseded.contains(id))
            .collect())
    }

    /// The names of the index files stored now.
    pub fn index_file_ids(&self) -> Result<Vec<Id>> {
        Ok(self
            .list_named(FileKind::Index)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The memory budget the buffers that scale with it follow (the delta path's read-ahead
    /// and its cache of bases; the index's share is set by
    /// [`keep_index_on_disk`](Self::keep_index_on_disk)). Default [`DEFAULT_MEMORY`].
    pub fn set_memory(&self, bytes: u64) {
        self.memory
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn memory(&self) -> u64 {
        self.memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps a loaded index of more than `above_blobs` blobs in a sorted run file in a private
    /// folder under `dir` (removed when the repository is dropped) instead of in memory, with
    /// at most `above_blobs` entries sorted in memory at a time (48 bytes each).
    pub fn keep_index_on_disk(&self, dir: &std::path::Path, above_blobs: usize) {
        let _ = self
            .index_on_disk
            .set((dir.to_path_buf(), above_blobs.max(1)));
    }

    /// Where this repository's index is kept on disk and how many entries may be sorted in
    /// memory at a time, when [`keep_index_on_disk`](Self::keep_index_on_disk) said so: the
    /// folder for other sorts of the same size (prune's).
    pub(crate) fn index_scratch(&self) -> Option<(std::path::PathBuf, usize)> {
        self.index_on_disk
            .get()
            .map(|(dir, above)| (dir.join(Id(self.config.repo_id).to_hex()), *above))
    }

    /// As [`keep_index_on_disk`](Self::keep_index_on_disk), in a new private folder under
    /// `tmp` (made with an unpredictable name, so no other user can have made it first) that
    /// goes with the repository: nothing is kept for a later run (`--no-cache`).
    pub fn index_on_disk_for_this_run(
        &self,
        tmp: &std::path::Path,
        above_blobs: usize,
    ) -> Result<()> {
        // A run killed leaves it behind (the index of the whole repository): the next one
        // removes it.
        let d = crate::tmp::RunFolder::new(tmp, "chunkbak-index-")
            .map_err(|e| Error::Other(format!("{}: {e}", tmp.display())))?;
        self.keep_index_on_disk(d.path(), above_blobs);
        let _ = self.index_tmp.set(d);
        Ok(())
    }

    /// Runs `read` on the index as loaded, which reads the files it was loaded from again (a
    /// backup judging disputed claims). A prune may have replaced one since the load: when a
    /// file the index was loaded from is gone from the store's listing, the index is loaded
    /// again after a pause that grows, and `read` starts over (up to [`INDEX_RACES`] times in
    /// a row). A file missing while the listing still names every file loaded is the store's
    /// loss (the error names it).
    pub(crate) fn on_loaded_index<T>(&self, read: impl Fn() -> Result<T>) -> Result<T> {
        let mut races = 0;
        loop {
            let what = match read() {
                Err(Error::ObjectNotFound(what)) => what,
                r => return r,
            };
            let listed: std::collections::HashSet<Id> =
                self.index_file_ids()?.into_iter().collect();
            let gone = self
                .index
                .read()
                .expect("index lock")
                .files
                .iter()
                .any(|id| !listed.contains(id));
            if !gone {
                return Err(Error::ObjectNotFound(what));
            }
            races += 1;
            if races >= INDEX_RACES {
                return Err(prunes_replacing(races, &what));
            }
            pause_after_race(races);
            self.load_index()?;
        }
    }

    /// Loads every index file into memory (or, when [`keep_index_on_disk`] says so, into a
    /// run file on disk). Returns the number of files read.
    ///
    /// [`keep_index_on_disk`]: Repository::keep_index_on_disk
    ///
    /// Two passes keep memory at the index itself (48 bytes a blob) plus a few files in
    /// flight: the first reads each file's header (what it supersedes, how many blobs), the
    /// second decodes the files in force one at a time into a presized array. (A remote
    /// repository's index files are read from the local cache the second time.)
    ///
    /// A file a prune replaced between the listing and its read makes the load start over on
    /// a new listing (up to [`INDEX_RACES`] times in a row).
    pub fn load_index(&self) -> Result<usize> {
        let (fresh, n) = self.on_index_listing(|names| self.load_index_once(names))?;
        let mut idx = self.index.write().expect("index lock");
        *idx = fresh;
        if let Some(c) = self.cache() {
            // Forget tree packs the repository no longer has (pruned): each cached one is
            // looked up (the table of every pack is not read).
            c.retain_by(FileKind::Tree, &|name| {
                Id::from_hex(name).is_some_and(|id| idx.has_pack(&id))
            });
        }
        idx.check_read()?;
        Ok(n)
    }

    fn load_index_once(&self, names: &[(Id, String)]) -> Result<(Index, usize)> {
        // A large index is kept on disk between runs, per repository.
        let keep = self.index_scratch();
        if let Some((dir, above)) = &keep {
            if let Some(idx) = self.load_kept(dir, *above, names)? {
                return Ok((idx, names.len()));
            }
        }
        // Many reads in flight pay off only over a network; each holds a whole file.
        let local = !self.backend.is_remote();
        let heads = parallel_map_n(
            if local { DECODERS } else { PARALLEL_READS },
            names,
            |(id, name)| {
                let plain = self.read_object(FileKind::Index, ObjectKind::Index, name)?;
                let (supersedes, blobs) = IndexFile::peek(&plain, &format!("index/{name}"))?;
                Ok((*id, supersedes, blobs))
            },
        )?;
        let superseded: std::collections::HashSet<Id> = heads
            .iter()
            .flat_map(|(_, s, _)| s.iter().copied())
            .collect();
        let in_force: Vec<&(Id, String)> = names
            .iter()
            .filter(|(id, _)| !superseded.contains(id))
            .collect();
        let blobs = heads
            .iter()
            .filter(|(id, _, _)| !superseded.contains(id))
            .map(|(_, _, n)| n)
            .sum();
        let on_disk = keep.as_ref().filter(|(_, above)| blobs > *above);
        let fresh = Mutex::new(match on_disk {
            Some((dir, above)) => Index::loading_to_keep(
                dir,
                *above,
                blobs,
                names.iter().map(|(id, _)| *id).collect(),
            )?,
            None => Index::loading(blobs),
        });
        // The first pass downloaded what was remote (into the cache): decoding is the work now.
        let threads = if self.cache().is_some() || local {
            DECODERS
        } else {
            PARALLEL_READS
        };
        parallel_map_n(threads, &in_force, |(id, name)| {
            let f = self.read_index_file(name)?;
            fresh.lock().expect("index lock").add_file(*id, &f);
            Ok(())
        })?;
        let mut fresh = fresh.into_inner().expect("index lock");
        fresh.seal();
        if let (Some(e), Some((dir, _))) = (fresh.run_error(), on_disk) {
            return Err(Error::Other(format!(
                "the index kept on disk under {}: {e}",
                dir.display()
            )));
        }
        // Superseded files count as read too, so a later look for new files skips them.
        fresh.files = names.iter().map(|(id, _)| *id).collect();
        Ok((fresh, names.len()))
    }

    /// The index from the run file an earlier load kept in `dir`, with the index files written
    /// since added (they go to memory). Covered files that new ones supersede (a prune
    /// rewrote them) are buried: their packs' records in the run file are passed by, and the
    /// files that replace them are added like any new one. `None` when there is none to use,
    /// when a covered file is gone that no file supersedes, when the new files hold more than
    /// `above` blobs, or when a superseded file lists a pack whose copy of a disputed blob the
    /// run file kept: the caller then builds it again.
    fn load_kept(
        &self,
        dir: &std::path::Path,
        above: usize,
        names: &[(Id, String)],
    ) -> Result<Option<Index>> {
        let ids: Vec<Id> = names.iter().map(|(id, _)| *id).collect();
        let Some((mut idx, covered)) = Index::open_kept(dir) else {
            return Ok(None);
        };
        let covered: std::collections::HashSet<Id> = covered.into_iter().collect();
        let new: Vec<&(Id, String)> = names
            .iter()
            .filter(|(id, _)| !covered.contains(id))
            .collect();
        let threads = if self.backend.is_remote() && self.cache().is_none() {
            PARALLEL_READS
        } else {
            DECODERS
        };
        // Headers first (what each supersedes, how many blobs): the files are decoded only
        // when they fit the budget, one at a time.
        let heads = parallel_map_n(threads, &new, |(id, name)| {
            let plain = self.read_object(FileKind::Index, ObjectKind::Index, name)?;
            let (supersedes, blobs) = IndexFile::peek(&plain, &format!("index/{name}"))?;
            Ok((*id, supersedes, blobs))
        })?;
        let superseded: std::collections::HashSet<Id> = heads
            .iter()
            .flat_map(|(_, s, _)| s.iter().copied())
            .collect();
        let listed: std::collections::HashSet<&Id> = ids.iter().collect();
        let mut gone = Vec::new();
        for id in &covered {
            match (superseded.contains(id), listed.contains(id)) {
                (true, _) => gone.push(*id),
                (false, true) => {}
                // Removed, and nothing says what replaces it.
                (false, false) => return Ok(None),
            }
        }
        let blobs: usize = heads
            .iter()
            .filter(|(id, _, _)| !superseded.contains(id))
            .map(|(_, _, n)| n)
            .sum();
        if blobs > above {
            return Ok(None);
        }
        if !idx.bury(&gone) {
            return Ok(None);
        }
        idx.forget_file_packs();
        for (id, name) in new.iter().filter(|(id, _)| !superseded.contains(id)) {
            let f = self.read_index_file(name)?;
            idx.add_file(*id, &f);
        }
        if let Some(e) = idx.run_error() {
            return Err(Error::Other(format!(
                "the index kept on disk under {}: {e}",
                dir.display()
            )));
        }
        idx.files = ids;
        Ok(Some(idx))
    }

    /// Writes an index file for packs a session stored.
    pub fn write_index(&self, packs: Vec<PackEntry>) -> Result<Option<Id>> {
        if packs.is_empty() {
            return Ok(None);
        }
        // An index names only packs that are stored.
        self.backend.flush()?;
        let f = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        self.write_object(FileKind::Index, ObjectKind::Index, &f.encode())
            .map(Some)
    }

    /// A saver for new blobs, deduplicating against the loaded index.
    pub fn blob_saver(&self) -> Result<BlobSaver> {
        BlobSaver::new(
            self.backend.clone(),
            self.cache().cloned(),
            (self.key.clone(), self.hasher.clone()),
            self.index.clone(),
            &self.config,
        )
    }

    /// A saver that deduplicates only against what it stores itself (repacking, salvage):
    /// every blob handed to it is written, once.
    pub fn private_saver(&self) -> Result<BlobSaver> {
        BlobSaver::new(
            self.backend.clone(),
            None,
            (self.key.clone(), self.hasher.clone()),
            Arc::new(RwLock::new(Index::new())),
            &self.config,
        )
    }

    /// The index files stored now that are not in `seen` (written since it was taken), added
    /// to it. A file removed between the listing and the read was superseded: skipped.
    pub fn read_new_index_files(
        &self,
        seen: &mut std::collections::HashSet<Id>,
    ) -> Result<Vec<(Id, IndexFile)>> {
        let mut out = Vec::new();
        for id in self.index_file_ids()? {
            if !seen.insert(id) {
                continue;
            }
            match self.read_index_file(&id.to_hex()) {
                Ok(f) => out.push((id, f)),
                Err(Error::ObjectNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads, decrypts, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let (pack, loc) = self.locate(id)?;
        let fk = FileKind::of_pack(pack.kind);
        let pname = pack.id.to_hex();
        let (off, len) = (u64::from(loc.offset), u64::from(loc.length));
        if let Some(c) = self.cache().filter(|_| fk == FileKind::Tree) {
            // Tree packs are read whole once and kept: later tree reads are local.
            if let Some(ct) = c.get_range(fk, &pname, off, len) {
                match self.open_blob(id, &pack, loc, &ct) {
                    Ok(plain) => return Ok(plain),
                    // A damaged local copy: drop it and read from the repository.
                    Err(_) => c.remove(fk, &pname),
                }
            } else if let Ok(whole) = self.backend.get(fk, &pname) {
                // Kept only when intact; a damaged pack still serves its intact blobs below.
                if Id::of_object(&whole).to_hex() == pname {
                    c.put(fk, &pname, &whole);
                    if let Some(ct) = whole.get(off as usize..(off + len) as usize) {
                        return self.open_blob(id, &pack, loc, ct);
                    }
                }
            }
        }
        if self.backend.is_remote() {
            // A whole aligned window, so the request does not show the blob's length.
            let (s, e) = crate::ops::packread::window(off, off + len, pack.size);
            let w = self.backend.get_range(fk, &pname, s, e - s)?;
            let ct = w
                .get((off - s) as usize..(off - s + len) as usize)
                .ok_or_else(|| Error::corrupt(fk.path_of(&pname), "shorter than the index says"))?;
            return self.open_blob(id, &pack, loc, ct);
        }
        let ct = self.backend.get_range(fk, &pname, off, len)?;
        self.open_blob(id, &pack, loc, &ct)
    }

    /// Where a blob is: its pack and location (an error naming the blob when not indexed).
    pub fn locate(&self, id: &BlobId) -> Result<(PackInfo, BlobLocation)> {
        let idx = self.index.read().expect("index lock");
        let (p, l) = idx.get(id).ok_or_else(|| match idx.run_error() {
            Some(e) => Error::Other(format!(
                "blob {id}: the index kept on disk cannot be read ({e}); run again"
            )),
            None => Error::NotFound(format!(
                "blob {id} is not in the index (missing data: run `chunkbak check`)"
            )),
        })?;
        Ok((p.clone(), l))
    }

    /// Decrypts, decompresses and verifies a blob read from its pack (`ct`: its stored bytes).
    pub fn open_blob(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        let base = self.base_for(id, pack, loc)?;
        self.open_blob_on(id, pack, loc, ct, base.as_ref().map(|b| b.as_slice()))
    }

    /// As [`open_blob`](Self::open_blob) without checking the plaintext against its id: for
    /// the bases of a delta, whose own id check covers them.
    fn open_blob_unverified(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        let base = self.base_for(id, pack, loc)?;
        self.decode(id, pack, loc, ct, base.as_ref().map(|b| b.as_slice()))
    }

    /// The plaintext of a delta's base (`None` for a whole blob), the error naming the delta.
    fn base_for(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
    ) -> Result<Option<Arc<Vec<u8>>>> {
        match (loc.compression, loc.base) {
            (Compression::Delta, Some(b)) => self.read_base(&b).map(Some).map_err(|e| {
                Error::corrupt(
                    Self::blob_name(id, pack, loc),
                    format!("its delta base {} cannot be read: {e}", b.short()),
                )
            }),
            _ => Ok(None),
        }
    }

    /// As [`open_blob`](Self::open_blob), with a delta's base plaintext given (`base`, read
    /// and verified by the caller).
    pub fn open_blob_on(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
        base: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let plain = self.decode(id, pack, loc, ct, base)?;
        if self.hasher.id(&plain) != *id {
            return Err(Error::corrupt(
                Self::blob_name(id, pack, loc),
                "content does not match its id",
            ));
        }
        Ok(plain)
    }

    /// Decrypts and decompresses a blob (a delta on `base`), without the id check.
    pub fn decode(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
        base: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let what = Self::blob_name(id, pack, loc);
        // Bounded before anything is allocated for it: a data blob is one chunk, a tree blob
        // at most MAX_TREE_BLOB (format-spec 6.1 and 8.2).
        let limit = match loc.kind {
            BlobKind::Data => self.config.chunk_max,
            BlobKind::Tree => crate::format::tree::MAX_TREE_BLOB,
        };
        if loc.raw_len > limit {
            return Err(Error::corrupt(
                &what,
                format!(
                    "its plaintext length {} is above the limit of a {} blob ({limit} bytes): \
                     damaged or forged header",
                    loc.raw_len,
                    if loc.kind == BlobKind::Data {
                        "data"
                    } else {
                        "tree"
                    }
                ),
            ));
        }
        let stored = self.open_stored(id, pack, loc, ct)?;
        let plain = match (loc.compression, base) {
            (Compression::Delta, Some(b)) => {
                decompress_delta(&stored, b, loc.raw_len as usize, &what)?
            }
            (Compression::Delta, None) => {
                return Err(Error::corrupt(&what, "a delta blob without a base"))
            }
            (c, _) => decompress(c, stored, loc.raw_len as usize, &what)?,
        };
        Ok(plain)
    }

    /// How errors name a blob: its pack's path and the blob's offset.
    fn blob_name(id: &BlobId, pack: &PackInfo, loc: BlobLocation) -> String {
        format!(
            "{} (blob {} at offset {})",
            FileKind::of_pack(pack.kind).path_of(&pack.id.to_hex()),
            id.short(),
            loc.offset
        )
    }

    /// Decrypts a blob read from its pack to its stored form (compressed, or a delta frame),
    /// without decoding it.
    pub fn open_stored(
        &self,
        id: &BlobId,
        pack: &PackInfo,
        loc: BlobLocation,
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        self.key
            .object_cipher(&pack.salt)
            .open(u64::from(loc.offset), &pack.kind.prefix(), ct)
            .ok_or_else(|| {
                Error::corrupt(
                    Self::blob_name(id, pack, loc),
                    "authentication failed (the pack was modified or damaged)",
                )
            })
    }

    /// The plaintext of a delta's base: a data blob stored whole or a delta itself, read
    /// through its own bases (format-spec 6.1: no chain is deeper than [`MAX_DELTA_DEPTH`]).
    pub fn read_base(&self, base: &BlobId) -> Result<Arc<Vec<u8>>> {
        // Bytes of plaintext kept, whatever the chunk sizes: a delta chain is mostly read
        // once (each of a dump's chunks has its own), so the cache serves bases shared by
        // nearby deltas, and a count of entries would hold up to 32 maximum chunks. A 64th
        // of the budget: 2.3 MiB at the default (no cache at all measured about the same).
        let keep_bytes = (self.memory() / 64).clamp(1 << 20, 16 << 20) as usize;
        if let Some((_, b)) = self
            .base_cache
            .lock()
            .expect("base cache")
            .iter()
            .find(|(id, _)| id == base)
        {
            return Ok(b.clone());
        }
        let (pack, loc) = self.locate(base)?;
        let chain = self.index.read().expect("index lock").chain_of(base);
        if loc.kind != BlobKind::Data || chain.is_none_or(|c| c.len() >= MAX_DELTA_DEPTH) {
            return Err(Error::corrupt(
                format!("blob {}", base.short()),
                format!(
                    "a delta base must be a data blob whole or at most {} deltas deep",
                    MAX_DELTA_DEPTH - 1
                ),
            ));
        }
        // Not hashed: a base is only ever a step to the blob that was asked for, whose id is
        // checked (AES-GCM has authenticated every step's stored bytes).
        let ct = self.backend.get_range(
            FileKind::of_pack(pack.kind),
            &pack.id.to_hex(),
            u64::from(loc.offset),
            u64::from(loc.length),
        )?;
        let b = Arc::new(self.open_blob_unverified(base, &pack, loc, &ct)?);
        let mut c = self.base_cache.lock().expect("base cache");
        c.push_back((*base, b.clone()));
        let mut held: usize = c.iter().map(|(_, b)| b.len()).sum();
        while held > keep_bytes && c.len() > 1 {
            held -= c.pop_front().map_or(0, |(_, b)| b.len());
        }
        Ok(b)
    }

    /// Reads a whole pack, checks that it matches its name, and decodes its header.
    pub fn read_pack(
        &self,
        fk: FileKind,
        name: &str,
    ) -> Result<(Vec<u8>, Vec<crate::format::pack::BlobRecord>)> {
        let bytes = self.get_verified(fk, name)?;
        let path = fk.path_of(name);
        let (_, recs) =
            crate::format::pack::decode_header(&self.key, fk.pack_kind(), &bytes, &path)?;
        Ok((bytes, recs))
    }

    /// Loads a tree blob (cached).
    pub fn load_tree(&self, id: &BlobId) -> Result<Arc<TreeBlob>> {
        if let Some(t) = self.tree_cache.lock().expect("tree cache").0.get(id) {
            return Ok(t.clone());
        }
        let bytes = self.read_blob(id)?;
        let t = Arc::new(TreeBlob::decode(&bytes, &format!("tree {id}"))?);
        if !self.tree_caching.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(t);
        }
        let mut c = self.tree_cache.lock().expect("tree cache");
        // Bounded by bytes too: chunk lists of large files are up to hundreds of KiB each, and
        // 4096 of them held 1.1 GB in a walk of 100 million chunks.
        let most = (self.memory() / 5).clamp(4 << 20, 512 << 20) as usize;
        if c.0.len() >= TREE_CACHE_ENTRIES || c.1 + bytes.len() > most {
            c.0.clear();
            c.1 = 0;
        }
        if c.0.insert(*id, t.clone()).is_none() {
            c.1 += bytes.len();
        }
        Ok(t)
    }

    /// Runs `f`, a walk that loads each tree once (prune's of every snapshot), with the
    /// cache of trees emptied and left empty: kept, the trees of a walk of 100 million chunks
    /// held a hundred MB and more, decoded, for nothing.
    pub(crate) fn walk_once<R>(&self, f: impl FnOnce() -> R) -> R {
        use std::sync::atomic::Ordering;
        *self.tree_cache.lock().expect("tree cache") = (HashMap::new(), 0);
        self.tree_caching.store(false, Ordering::Relaxed);
        let r = f();
        self.tree_caching.store(true, Ordering::Relaxed);
        crate::alloc::trim();
        r
    }

    /// The entries of a directory, following splits.
    pub fn load_dir(&self, id: &BlobId) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        self.each_dir_part(id, &mut |_, nodes| {
            out.extend(nodes.iter().cloned());
            Ok(())
        })?;
        Ok(out)
    }

    /// The entries of a directory a part at a time (with the part's id, for a split one),
    /// checked in order across parts: a directory of a thousand files of 5 GB is 160 MB
    /// decoded, a part about [`crate::format::tree::PART_BYTES`].
    pub fn each_dir_part(&self, id: &BlobId, f: &mut DirPart) -> Result<()> {
        let parts = match &*self.load_tree(id)? {
            TreeBlob::Dir(nodes) => return f(None, nodes),
            TreeBlob::Split(parts) => parts.clone(),
            TreeBlob::ChunkList(_) => {
                return Err(Error::corrupt(
                    format!("tree {id}"),
                    "a chunk list where a directory was expected",
                ))
            }
        };
        let mut last: Option<Node> = None;
        for p in parts {
            match &*self.load_tree(&p)? {
                TreeBlob::Dir(nodes) => {
                    if let (Some(last), Some(first)) = (&last, nodes.first()) {
                        crate::format::tree::check_order(
                            &[last.clone(), first.clone()],
                            &format!("tree {id}"),
                        )?;
                    }
                    f(Some(p), nodes)?;
                    last = nodes.last().cloned().or(last);
                }
                _ => {
                    return Err(Error::corrupt(
                        format!("tree {p}"),
                        "a split part is not a directory",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The full chunk list of a file.
    pub fn file_chunks(&self, content: &Content) -> Result<Vec<BlobId>> {
        let mut out = Vec::new();
        self.each_file_chunk(content, &mut |c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// Each chunk of a file, in order, a chunk list at a time: the list of a file of
    /// terabytes (an EBS volume's image) is millions of ids, never held whole here.
    pub fn each_file_chunk(
        &self,
        content: &Content,
        f: &mut dyn FnMut(BlobId) -> Result<()>,
    ) -> Result<()> {
        match content {
            Content::Chunks(c) => c.iter().try_for_each(|c| f(*c)),
            Content::Indirect(lists) => {
                for l in lists {
                    match &*self.load_tree(l)? {
                        TreeBlob::ChunkList(c) => c.iter().try_for_each(|c| f(*c))?,
                        _ => return Err(Error::corrupt(format!("tree {l}"), "not a chunk list")),
                    }
                }
                Ok(())
            }
        }
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

    /// Saves a directory's nodes as tree blobs (split when huge); returns the top tree id.
    pub fn save_dir(&self, saver: &BlobSaver, nodes: Vec<Node>) -> Result<BlobId> {
        use crate::format::tree::{encoded_size, PART_BYTES, SPLIT_THRESHOLD};
        let total: usize = nodes.iter().map(encoded_size).sum();
        if nodes.len() <= SPLIT_THRESHOLD && total <= PART_BYTES {
            return Ok(saver
                .save(BlobKind::Tree, &TreeBlob::Dir(nodes).encode())?
                .0);
        }
        // Content-defined split points over entry names, so one new entry changes one part.
        let mut parts = Vec::new();
        let mut cur = Vec::new();
        let mut bytes = 0usize;
        for n in nodes {
            let h = blake3::hash(&n.name);
            let cut = u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]).is_multiple_of(2048);
            bytes += encoded_size(&n);
            cur.push(n);
            if cut || cur.len() >= 4 * SPLIT_THRESHOLD / 2 || bytes >= PART_BYTES {
                bytes = 0;
                parts.push(
                    saver
                        .save(
                            BlobKind::Tree,
                            &TreeBlob::Dir(std::mem::take(&mut cur)).encode(),
                        )?
                        .0,
                );
            }
        }
        if !cur.is_empty() {
            parts.push(saver.save(BlobKind::Tree, &TreeBlob::Dir(cur).encode())?.0);
        }
        Ok(saver
            .save(BlobKind::Tree, &TreeBlob::Split(parts).encode())?
            .0)
    }

    /// Stores a file's chunk list, moving it to `ChunkList` blobs when long.
    pub fn save_content(&self, saver: &BlobSaver, chunks: Vec<BlobId>) -> Result<Content> {
        use crate::format::tree::INLINE_CHUNKS;
        if chunks.len() <= INLINE_CHUNKS {
            return Ok(Content::Chunks(chunks));
        }
        let mut lists = Vec::new();
        for part in chunks.chunks(INLINE_CHUNKS) {
            lists.push(
                saver
                    .save(BlobKind::Tree, &TreeBlob::ChunkList(part.to_vec()).encode())?
                    .0,
            );
        }
        Ok(Content::Indirect(lists))
    }
}
