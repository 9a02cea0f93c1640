//! Index entries are claims; a pack's header is the truth (format-spec 12, "Trust"). Any host
//! that holds the password can add an index file claiming that blobs live in a pack of its
//! choosing. A claim that no other pack disputes is trusted without a read (a false one only
//! makes its own blob unreadable, which `check --read-data` finds); where two packs claim one
//! blob, the claims are checked against the claiming packs' headers — authenticated with the
//! master key, and laid out so that the blobs they list fill the pack — before anything is
//! deleted, repacked or deduplicated against because of them. Cost: three ranged GETs (the
//! pack's first 38 bytes, its 4-byte trailer, its header) per disputed pack, nothing else.

use std::collections::{HashMap, HashSet};

use crate::backend::FileKind;
use crate::crypter::HEADER_COUNTER;
use crate::error::{Error, Result};
use crate::format::index::PackEntry;
use crate::format::pack::{parse_header, BlobRecord, PACK_HEADER_OFFSET};
use crate::format::{check_prefix, ObjectKind};
use crate::id::{BlobId, Id, ObjectId};
use crate::repo::Repository;

/// What a disputed pack's header says about the claims made for it.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// The header, read and authenticated: these records are true.
    Header(HashSet<BlobRecord>),
    /// Not a pack of this repository (no header opens): every claim on it is false.
    NotAPack(String),
    /// Could not be read now (archived, or the store failed): its claims are neither
    /// confirmed nor refuted.
    Unreadable(String),
}

impl Verdict {
    /// Whether a claim holds: `Some(true)` confirmed, `Some(false)` refuted, `None` unknown.
    pub fn holds(&self, rec: &BlobRecord) -> Option<bool> {
        match self {
            Verdict::Header(h) => Some(h.contains(rec)),
            Verdict::NotAPack(_) => Some(false),
            Verdict::Unreadable(_) => None,
        }
    }
}

/// Reads and authenticates a pack's header with ranged reads of its ends (never its blobs).
/// `size` is the size the store lists (not the one an index claims).
pub fn read_header(
    repo: &Repository,
    kind: ObjectKind,
    name: &str,
    size: u64,
) -> Result<Vec<BlobRecord>> {
    let fk = FileKind::of_pack(kind);
    let path = fk.path_of(name);
    let b = repo.backend();
    if size < (PACK_HEADER_OFFSET + 4) as u64 {
        return Err(Error::corrupt(
            &path,
            format!("{size} bytes: too short for a pack"),
        ));
    }
    let head = b.get_range(fk, name, 0, PACK_HEADER_OFFSET as u64)?;
    check_prefix(&head, kind, &path)?;
    let salt: [u8; 32] = head[6..38].try_into().expect("38 bytes read");
    let trailer = b.get_range(fk, name, size - 4, 4)?;
    let hlen = u64::from(u32::from_le_bytes(
        trailer[..4].try_into().expect("4 bytes read"),
    ));
    let hstart = (size - 4)
        .checked_sub(hlen)
        .filter(|&s| s >= PACK_HEADER_OFFSET as u64)
        .ok_or_else(|| {
            Error::corrupt(
                &path,
                format!("header length {hlen} does not fit in {size} bytes"),
            )
        })?;
    let ct = b.get_range(fk, name, hstart, hlen)?;
    let plain = repo
        .key()
        .object_cipher(&salt)
        .open(HEADER_COUNTER, &kind.prefix(), &ct)
        .ok_or_else(|| Error::corrupt(&path, "pack header authentication failed"))?;
    parse_header(&plain, hstart, &path)
}

/// Packs that claim a blob another pack also claims (among `entries`, one per pack).
pub fn disputed<'a>(entries: impl IntoIterator<Item = &'a PackEntry>) -> HashSet<ObjectId> {
    let mut first: HashMap<BlobId, ObjectId> = HashMap::new();
    let mut out = HashSet::new();
    for e in entries {
        for b in &e.blobs {
            match first.get(&b.id) {
                None => {
                    first.insert(b.id, e.id);
                }
                Some(p) if *p != e.id => {
                    out.insert(*p);
                    out.insert(e.id);
                }
                Some(_) => {}
            }
        }
    }
    out
}

/// The verdict on each of `packs` (id, kind, size as listed by the store), read in parallel.
/// Returns the verdicts and the number of ranged reads sent.
pub fn verify(
    repo: &Repository,
    packs: &[(ObjectId, ObjectKind, u64)],
) -> Result<(HashMap<ObjectId, Verdict>, u64)> {
    let results = crate::repo::parallel_map(packs, |&(id, kind, size)| {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        let v = match read_header(repo, kind, &id.to_hex(), size) {
            Ok(recs) => Verdict::Header(recs.into_iter().collect()),
            Err(e @ Error::Corrupt { .. }) => Verdict::NotAPack(e.to_string()),
            Err(e @ (Error::Interrupted | Error::StoreDown { .. })) => return Err(e),
            Err(e) => Verdict::Unreadable(e.to_string()),
        };
        Ok((id, v))
    })?;
    Ok((results.into_iter().collect(), 3 * packs.len() as u64))
}

/// Claims that did not hold, by pack: for reports and for dropping them.
#[derive(Clone, Debug, Default)]
pub struct Refuted {
    /// Pack → the blob ids it claims falsely.
    pub by_pack: HashMap<ObjectId, Vec<BlobId>>,
    /// Pack → why (header says otherwise, or not a pack).
    pub why: HashMap<ObjectId, String>,
}

impl Refuted {
    pub fn is_empty(&self) -> bool {
        self.by_pack.is_empty()
    }

    /// One message per refuted pack, naming the index files (`files`) that claim it.
    pub fn messages(&self, files: &[(Id, crate::format::index::IndexFile)]) -> Vec<String> {
        let mut packs: Vec<&ObjectId> = self.by_pack.keys().collect();
        packs.sort();
        packs
            .into_iter()
            .map(|p| {
                let mut named: Vec<String> = files
                    .iter()
                    .filter(|(_, f)| {
                        f.packs.iter().any(|e| {
                            e.id == *p && e.blobs.iter().any(|b| self.by_pack[p].contains(&b.id))
                        })
                    })
                    .map(|(id, _)| format!("index/{}", id.to_hex()))
                    .collect();
                named.sort();
                format!(
                    "{} claim(s) that blobs are in pack {} do not hold ({}); made by {}: \
                     ignored (`chunkbak repair index` drops them; a host that wrote them holds \
                     the password)",
                    self.by_pack[p].len(),
                    p.to_hex(),
                    self.why
                        .get(p)
                        .map(String::as_str)
                        .unwrap_or("its header lists other blobs"),
                    if named.is_empty() {
                        "an index file".to_string()
                    } else {
                        named.join(", ")
                    }
                )
            })
            .collect()
    }
}

/// What checking the disputed claims found.
#[derive(Clone, Debug, Default)]
pub struct Disputes {
    pub refuted: Refuted,
    /// Disputed packs whose headers could not be read now (archived, a failed read), and why:
    /// their claims are neither confirmed nor refuted.
    pub unverified: Vec<(ObjectId, String)>,
    /// Ranged reads sent.
    pub reads: u64,
}

impl Disputes {
    /// One line per unverified pack.
    pub fn unverified_messages(&self) -> Vec<String> {
        self.unverified
            .iter()
            .map(|(id, why)| {
                format!(
                    "pack {}: its claims could not be checked now: {why}",
                    id.to_hex()
                )
            })
            .collect()
    }
}

/// Checks every disputed claim among `entries` (one per pack; `sizes` as the store lists
/// them, packs missing there are skipped) against the packs' headers.
pub fn check_disputes(
    repo: &Repository,
    entries: &HashMap<ObjectId, PackEntry>,
    sizes: &HashMap<String, u64>,
) -> Result<Disputes> {
    let disputed = disputed(
        entries
            .values()
            .filter(|e| sizes.contains_key(&e.id.to_hex())),
    );
    let mut list: Vec<(ObjectId, ObjectKind, u64)> = disputed
        .iter()
        .map(|id| (*id, entries[id].kind, sizes[&id.to_hex()]))
        .collect();
    list.sort_by_key(|p| p.0);
    let (verdicts, reads) = verify(repo, &list)?;
    let mut d = Disputes {
        reads,
        ..Default::default()
    };
    for (id, v) in verdicts {
        if let Verdict::Unreadable(why) = v {
            d.unverified.push((id, why));
            continue;
        }
        let bad: Vec<BlobId> = entries[&id]
            .blobs
            .iter()
            .filter(|b| v.holds(b) == Some(false))
            .map(|b| b.id)
            .collect();
        if !bad.is_empty() {
            if let Verdict::NotAPack(why) = v {
                d.refuted.why.insert(id, why);
            }
            d.refuted.by_pack.insert(id, bad);
        }
    }
    d.unverified.sort();
    Ok(d)
}

/// Drops refuted claims from pack entries (in place), and the entries of objects that are no
/// pack at all (they become unindexed objects); returns how many claims were dropped.
pub fn drop_refuted(entries: &mut HashMap<ObjectId, PackEntry>, refuted: &Refuted) -> usize {
    let mut n = 0;
    for (p, bad) in &refuted.by_pack {
        if refuted.why.contains_key(p) {
            n += entries.remove(p).map_or(0, |e| e.blobs.len());
            continue;
        }
        if let Some(e) = entries.get_mut(p) {
            let before = e.blobs.len();
            e.blobs.retain(|b| !bad.contains(&b.id));
            n += before - e.blobs.len();
        }
    }
    n
}

/// What the store lists of the data and tree packs in `packs` (`value` of each), by name:
/// only theirs, as the store may list millions of other objects (a flood a host with the
/// bucket's credentials uploaded).
pub(crate) fn listed_packs<T>(
    backend: &dyn crate::backend::Backend,
    packs: &HashMap<ObjectId, PackEntry>,
    value: impl Fn(&crate::backend::ObjectInfo) -> T,
) -> Result<HashMap<String, T>> {
    let mut out = HashMap::new();
    for fk in [FileKind::Data, FileKind::Tree] {
        backend.list_info_each(fk, &mut |o| {
            if Id::of_name(&o.name).is_some_and(|id| packs.contains_key(&id)) {
                let v = value(&o);
                out.insert(o.name, v);
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Before a backup deduplicates against the loaded index: when some blob is claimed by more
/// than one pack, checks the disputed claims against headers and reloads the index without
/// those that do not hold, so no new snapshot references a blob through a false claim.
/// Nothing is read when no blob is disputed (the usual case). Returns the messages naming
/// refuted and unverified claims, and the ranged reads sent. An index file a prune replaced
/// since the load makes it load the index again and start over
/// ([`Repository::on_loaded_index`]).
pub fn clean_index_for_dedup(repo: &Repository) -> Result<(Vec<String>, u64)> {
    repo.on_loaded_index(|| clean_loaded(repo))
}

fn clean_loaded(repo: &Repository) -> Result<(Vec<String>, u64)> {
    if repo.index().read().expect("index lock").disputed_blobs == 0 {
        return Ok((Vec::new(), 0));
    }
    // A large index (a repack leaves blobs in two packs until the old one goes): the claims
    // sorted on disk, not every index file in memory.
    if let Some((dir, mem)) = repo.index_scratch() {
        if crate::ops::prune::sorts_pay(repo, mem) {
            return crate::ops::prune::clean_for_dedup(repo, &dir, mem);
        }
    }
    let files = repo.current_index_files()?;
    let mut packs =
        crate::index::merge_entries(files.iter().flat_map(|(_, f)| f.packs.iter().cloned()));
    // The sizes the store lists (an index may claim any size).
    let sizes = listed_packs(repo.backend().as_ref(), &packs, |o| o.size)?;
    let d = check_disputes(repo, &packs, &sizes)?;
    let mut messages = d.refuted.messages(&files);
    messages.extend(d.unverified_messages());
    if !d.refuted.is_empty() {
        drop_refuted(&mut packs, &d.refuted);
        let mut fresh = crate::index::Index::of_packs(packs.values());
        let mut idx = repo.index().write().expect("index lock");
        fresh.files = std::mem::take(&mut idx.files);
        *idx = fresh;
    }
    Ok((messages, d.reads))
}
