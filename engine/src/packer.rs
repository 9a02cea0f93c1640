//! Stage 5: packing. Blobs are compressed, encrypted and appended to a pack file in a local temp
//! folder; a finished pack gets its header, is named by the BLAKE3 of its bytes and handed to the
//! backend. Memory stays bounded by the blobs in flight, not the pack size.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::{Backend, FileKind};
use crate::compressor::{compress, Compression};
use crate::crypter::{random_bytes, MasterKey, ObjectCipher, HEADER_COUNTER};
use crate::error::{Error, Result};
use crate::format::index::PackEntry;
use crate::format::pack::{encode_header_plain, BlobKind, BlobRecord};
use crate::format::ObjectKind;
use crate::hasher::Hasher;
use crate::id::{BlobId, Id};
use crate::index::{Index, MAX_DELTA_DEPTH};

/// One pack being written.
pub struct Packer {
    kind: BlobKind,
    path: PathBuf,
    out: BufWriter<File>,
    hash: blake3::Hasher,
    crc: crc_fast::Digest,
    cipher: ObjectCipher,
    prefix: [u8; 6],
    salt: [u8; 32],
    records: Vec<BlobRecord>,
    size: u64,
}

impl Packer {
    pub fn new(mk: &MasterKey, kind: BlobKind, tmpdir: &std::path::Path) -> Result<Self> {
        Self::with_salt(mk, kind, tmpdir, random_bytes())
    }

    /// A packer with a given salt (test vectors only: a salt must never be reused).
    pub fn with_salt(
        mk: &MasterKey,
        kind: BlobKind,
        tmpdir: &std::path::Path,
        salt: [u8; 32],
    ) -> Result<Self> {
        let path = tmpdir.join(format!("pack-{}", hex::encode(&salt[..12])));
        let f = crate::fsperm::create_private(&path).map_err(|e| Error::io(&path, e))?;
        let prefix = kind.pack_kind().prefix();
        let mut p = Packer {
            kind,
            path,
            out: BufWriter::with_capacity(1 << 20, f),
            hash: blake3::Hasher::new(),
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            cipher: mk.object_cipher(&salt),
            prefix,
            salt,
            records: Vec::new(),
            size: 0,
        };
        p.write(&prefix)?;
        p.write(&salt)?;
        Ok(p)
    }

    /// A pack that cannot be written (a full disk) is dead: its temp file goes at once.
    fn failed(&self, e: std::io::Error) -> Error {
        let _ = std::fs::remove_file(&self.path);
        Error::io(&self.path, e)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        if let Err(e) = self.out.write_all(b) {
            return Err(self.failed(e));
        }
        self.hash.update(b);
        self.crc.update(b);
        self.size += b.len() as u64;
        Ok(())
    }

    /// Encrypts `stored` (compressed or raw plaintext) as the next blob and appends it.
    pub fn add(
        &mut self,
        id: BlobId,
        compression: Compression,
        raw_len: u32,
        stored: Vec<u8>,
    ) -> Result<u32> {
        self.add_with_base(id, compression, raw_len, stored, None)
    }

    /// As [`add`](Self::add), for a delta blob naming its base.
    pub fn add_with_base(
        &mut self,
        id: BlobId,
        compression: Compression,
        raw_len: u32,
        mut stored: Vec<u8>,
        base: Option<BlobId>,
    ) -> Result<u32> {
        // The nonce counter of a blob is its offset: unique within the pack, never u64::MAX.
        self.cipher
            .seal_in_place(self.size, &self.prefix, &mut stored);
        let rec = BlobRecord {
            id,
            offset: self.size as u32,
            length: stored.len() as u32,
            raw_len,
            kind: self.kind,
            compression,
            base,
        };
        self.write(&stored)?;
        self.records.push(rec);
        Ok(rec.length)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the header and trailer; returns the pack's entry and its temp file.
    pub fn finish(mut self) -> Result<(PackEntry, PathBuf)> {
        let plain = encode_header_plain(&self.records);
        let ct = self.cipher.seal(HEADER_COUNTER, &self.prefix, &plain);
        self.write(&ct)?;
        self.write(&(ct.len() as u32).to_le_bytes())?;
        if let Err(e) = self.out.flush() {
            return Err(self.failed(e));
        }
        let id = Id(*self.hash.finalize().as_bytes());
        Ok((
            PackEntry {
                id,
                kind: self.kind.pack_kind(),
                size: self.size,
                crc32c: self.crc.finalize() as u32,
                salt: self.salt,
                mark: None,
                blobs: self.records,
            },
            self.path,
        ))
    }
}

/// Counters of what a saver stored.
#[derive(Default, Debug)]
pub struct SaverStats {
    pub blobs_added: AtomicU64,
    pub bytes_added: AtomicU64,
    pub packs_written: AtomicU64,
    /// Blobs stored as deltas, their plaintext bytes, and what they take stored.
    pub deltas_added: AtomicU64,
    pub delta_raw_bytes: AtomicU64,
    pub delta_stored_bytes: AtomicU64,
}

/// Saves blobs into packs, deduplicating against the index and against itself. Shared by all
/// worker threads: each takes a packer from the pool, so encryption runs in parallel.
pub struct BlobSaver {
    backend: Arc<dyn Backend>,
    /// Tree packs are copied here before upload, so the next run reads them locally.
    cache: Option<Arc<crate::cache::Cache>>,
    key: MasterKey,
    hasher: Hasher,
    index: Arc<RwLock<Index>>,
    level: i32,
    pack_size: [u64; 2],
    tmpdir: PathBuf,
    pools: [Mutex<Vec<Packer>>; 2],
    /// Blobs reserved by this saver whose packs are not stored yet.
    reserved: Mutex<HashSet<BlobId>>,
    finished: Mutex<Vec<PackEntry>>,
    /// Packs holding blobs this saver referenced instead of storing, and the packs it wrote:
    /// what a backup checks against prune's marks before it commits.
    used_packs: Mutex<HashSet<Id>>,
    pub stats: SaverStats,
}

impl BlobSaver {
    pub fn new(
        backend: Arc<dyn Backend>,
        cache: Option<Arc<crate::cache::Cache>>,
        (key, hasher): (MasterKey, Hasher),
        index: Arc<RwLock<Index>>,
        config: &crate::format::config::Config,
    ) -> Result<Self> {
        let tmpdir = backend.temp_dir();
        crate::fsperm::mkdir_private(&tmpdir).map_err(|e| Error::io(&tmpdir, e))?;
        Ok(BlobSaver {
            hasher,
            backend,
            cache,
            key,
            index,
            level: config.compression_level,
            pack_size: [
                u64::from(config.data_pack_size),
                u64::from(config.tree_pack_size),
            ],
            tmpdir,
            pools: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            reserved: Mutex::new(HashSet::new()),
            finished: Mutex::new(Vec::new()),
            used_packs: Mutex::new(HashSet::new()),
            stats: SaverStats::default(),
        })
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// True when the blob is already stored (in a live pack) or being stored; otherwise
    /// reserves it.
    fn known_or_reserve(&self, id: &BlobId) -> bool {
        // Held across the index lookup: `upload` moves a pack's blobs from `reserved` into
        // the index under the same lock, so a blob is always in one of the two.
        let mut reserved = self.reserved.lock().expect("reserved lock");
        // A delta counts as stored only while every base down its chain is live too.
        if let Some(packs) = self.index.read().expect("index lock").live_packs_of(id) {
            self.used_packs.lock().expect("used lock").extend(packs);
            return true;
        }
        !reserved.insert(*id)
    }

    /// Reserves a blob this saver is to store: false when it is stored (or being stored)
    /// already. A reserved blob must then be stored, whole or as a delta.
    pub fn reserve(&self, id: &BlobId) -> bool {
        !self.known_or_reserve(id)
    }

    /// The compression level blobs are stored at.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// True when `base` may serve as a delta base: a data blob in a live pack, whole or a
    /// delta less than [`MAX_DELTA_DEPTH`] deep whose bases are all live (their packs are
    /// remembered as used, so a concurrent prune cannot take them).
    pub fn use_base(&self, base: &BlobId) -> bool {
        let idx = self.index.read().expect("index lock");
        let Some(packs) = idx.live_packs_of(base) else {
            return false;
        };
        if packs.len() > MAX_DELTA_DEPTH
            || idx.get(base).is_none_or(|(_, l)| l.kind != BlobKind::Data)
        {
            return false;
        }
        self.used_packs.lock().expect("used lock").extend(packs);
        true
    }

    /// Stores a reserved blob whole, compressed already (`compress`'s result).
    pub fn store_compressed(
        &self,
        kind: BlobKind,
        id: BlobId,
        raw_len: usize,
        (c, stored): (Compression, Vec<u8>),
    ) -> Result<()> {
        self.put(kind, id, (c, raw_len, stored), None)
    }

    /// Stores a blob reserved with [`reserve`](Self::reserve), whole.
    pub fn store_reserved(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<()> {
        self.store(kind, id, data)
    }

    /// Stores a reserved data blob as a delta: `frame` from
    /// [`compress_delta`](crate::compressor::compress_delta) on `base`'s plaintext, which
    /// [`use_base`](Self::use_base) accepted.
    pub fn store_delta(
        &self,
        id: BlobId,
        raw_len: usize,
        frame: Vec<u8>,
        base: BlobId,
    ) -> Result<()> {
        let st = &self.stats;
        st.deltas_added.fetch_add(1, Ordering::Relaxed);
        st.delta_raw_bytes
            .fetch_add(raw_len as u64, Ordering::Relaxed);
        st.delta_stored_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        self.put(
            BlobKind::Data,
            id,
            (Compression::Delta, raw_len, frame),
            Some(base),
        )
    }

    /// True when every blob is in a live pack, so a snapshot may reference them as they are
    /// (an unchanged file); the packs are remembered as used.
    pub fn reuse(&self, ids: &[BlobId]) -> bool {
        let idx = self.index.read().expect("index lock");
        let mut packs = Vec::with_capacity(ids.len().min(16));
        for id in ids {
            match idx.live_packs_of(id) {
                Some(chain) => {
                    for p in chain {
                        if packs.last() != Some(&p) {
                            packs.push(p)
                        }
                    }
                }
                None => return false,
            }
        }
        self.used_packs.lock().expect("used lock").extend(packs);
        true
    }

    /// The packs this saver referenced or wrote.
    pub fn used_packs(&self) -> HashSet<Id> {
        self.used_packs.lock().expect("used lock").clone()
    }

    /// Stores a blob even when the index has it (a copy out of a pack marked for deletion).
    pub fn save_copy(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<()> {
        self.store(kind, id, data)
    }

    /// Packs finished and not yet taken.
    pub fn finished_count(&self) -> usize {
        self.finished.lock().expect("finished lock").len()
    }

    /// Packs finished since the last call: a backup writes an index for them now and then,
    /// so an interrupted run leaves its uploads reusable.
    pub fn take_finished(&self) -> Vec<PackEntry> {
        std::mem::take(&mut *self.finished.lock().expect("finished lock"))
    }

    /// Stores a blob unless it is already stored. Returns its id and whether it was new.
    pub fn save(&self, kind: BlobKind, data: &[u8]) -> Result<(BlobId, bool)> {
        let id = self.hasher.id(data);
        let new = self.save_with_id(kind, id, data)?;
        Ok((id, new))
    }

    /// As [`save`](Self::save) with a precomputed id.
    pub fn save_with_id(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<bool> {
        if self.known_or_reserve(&id) {
            return Ok(false);
        }
        self.store(kind, id, data)?;
        Ok(true)
    }

    fn store(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<()> {
        let (c, stored) = compress(data, self.level);
        self.put(kind, id, (c, data.len(), stored), None)
    }

    /// Adds a blob's stored form (compression, plaintext length, bytes) to a pack of its kind.
    fn put(
        &self,
        kind: BlobKind,
        id: BlobId,
        (c, raw_len, stored): (Compression, usize, Vec<u8>),
        base: Option<BlobId>,
    ) -> Result<()> {
        let k = kind as usize;
        let taken = self.pools[k].lock().expect("pool lock").pop();
        let mut packer = match taken {
            Some(p) => p,
            None => Packer::new(&self.key, kind, &self.tmpdir)?,
        };
        let len = packer.add_with_base(id, c, raw_len as u32, stored, base)?;
        self.stats.blobs_added.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_added
            .fetch_add(u64::from(len), Ordering::Relaxed);
        if packer.size() >= self.pack_size[k] {
            self.upload(packer)?;
        } else {
            self.pools[k].lock().expect("pool lock").push(packer);
        }
        Ok(())
    }

    fn upload(&self, packer: Packer) -> Result<()> {
        let (entry, path) = packer.finish()?;
        if let (Some(c), ObjectKind::TreePack) = (&self.cache, entry.kind) {
            c.put_file(FileKind::Tree, &entry.id.to_hex(), &path);
        }
        self.backend.put_file(
            FileKind::of_pack(entry.kind),
            &entry.id.to_hex(),
            &path,
            entry.crc32c,
        )?;
        self.stats.packs_written.fetch_add(1, Ordering::Relaxed);
        self.used_packs.lock().expect("used lock").insert(entry.id);
        // Blobs become visible for dedup through the index once their pack is stored; they
        // leave the reserved set then, which so holds only the blobs of open packs. A blob
        // the index does not count as stored (a delta whose base's pack is not live, or not in
        // a private saver's index; a blob the index still finds in an older copy's pack that
        // is not live) stays reserved, so it is never stored twice.
        {
            let mut reserved = self.reserved.lock().expect("reserved lock");
            let mut idx = self.index.write().expect("index lock");
            idx.add_pack(&entry);
            for b in &entry.blobs {
                if idx.live_packs_of(&b.id).is_some() {
                    reserved.remove(&b.id);
                }
            }
        }
        self.finished.lock().expect("finished lock").push(entry);
        Ok(())
    }

    /// Uploads every open pack; returns the packs not taken yet.
    pub fn finish(&self) -> Result<Vec<PackEntry>> {
        self.upload_open()?;
        Ok(self.take_finished())
    }

    /// Uploads every open pack.
    pub fn upload_open(&self) -> Result<()> {
        for pool in &self.pools {
            let packers: Vec<Packer> = std::mem::take(&mut *pool.lock().expect("pool lock"));
            for p in packers {
                if p.is_empty() {
                    continue;
                }
                self.upload(p)?;
            }
        }
        Ok(())
    }
}

impl BlobSaver {
    /// Removes the temp files of packs that were never finished (an aborted run).
    pub fn abort(&self) {
        for pool in &self.pools {
            if let Ok(mut v) = pool.lock() {
                for p in v.drain(..) {
                    let _ = std::fs::remove_file(&p.path);
                }
            }
        }
    }
}

impl Drop for BlobSaver {
    fn drop(&mut self) {
        self.abort();
    }
}
