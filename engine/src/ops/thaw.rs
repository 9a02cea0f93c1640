//! Restores from archive storage classes (S3 Glacier Flexible Retrieval, Deep Archive): which
//! packs a restore needs (from the index and trees alone, no pack read), which of them are
//! cold (one LIST per 1000 packs, then one HEAD per cold needed pack), what thawing them costs,
//! the thaw requests, and a [`Thaw`] gate that lets a restore write files as their packs become
//! readable. Requests are idempotent: a rerun sees thaws in progress and does not repeat them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ls::walk;
use super::pattern::Selection;
use super::restore::{resolve_start, PackGate, RestoreOptions};
use crate::backend::{FileKind, StorageClass, ThawState, Tier};
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};
use crate::id::{BlobId, ObjectId};
use crate::repo::Repository;

/// One pack a restore reads.
#[derive(Clone, Debug)]
pub struct PlannedPack {
    pub id: ObjectId,
    pub kind: FileKind,
    /// Size of the whole pack (what a thaw retrieves).
    pub size: u64,
    /// Bytes of the blobs the restore reads from it.
    pub needed: u64,
    pub class: StorageClass,
    pub state: ThawState,
}

/// What a restore needs from the store.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub packs: Vec<PlannedPack>,
    pub files: u64,
    pub bytes: u64,
}

/// Price and time of one retrieval tier of one archive class (AWS list prices, us-east-1).
#[derive(Clone, Copy, Debug)]
pub struct TierCost {
    pub class: StorageClass,
    pub tier: Tier,
    /// Typical time until the thawed copy is readable.
    pub time: &'static str,
    pub usd_per_gb: f64,
    pub usd_per_1000_requests: f64,
}

/// Retrieval tiers by class. Prices change: they are estimates for planning, not a bill.
pub const TIER_COSTS: [TierCost; 5] = [
    TierCost {
        class: StorageClass::Glacier,
        tier: Tier::Expedited,
        time: "1-5 minutes",
        usd_per_gb: 0.03,
        usd_per_1000_requests: 10.0,
    },
    TierCost {
        class: StorageClass::Glacier,
        tier: Tier::Standard,
        time: "3-5 hours",
        usd_per_gb: 0.01,
        usd_per_1000_requests: 0.05,
    },
    TierCost {
        class: StorageClass::Glacier,
        tier: Tier::Bulk,
        time: "5-12 hours",
        usd_per_gb: 0.0,
        usd_per_1000_requests: 0.0,
    },
    TierCost {
        class: StorageClass::DeepArchive,
        tier: Tier::Standard,
        time: "within 12 hours",
        usd_per_gb: 0.02,
        usd_per_1000_requests: 0.10,
    },
    TierCost {
        class: StorageClass::DeepArchive,
        tier: Tier::Bulk,
        time: "within 48 hours",
        usd_per_gb: 0.0025,
        usd_per_1000_requests: 0.025,
    },
];

/// Estimated cost of thawing `packs` packs of `bytes` bytes in `class` with `tier`.
pub fn tier_estimate(class: StorageClass, tier: Tier, packs: u64, bytes: u64) -> Option<f64> {
    TIER_COSTS
        .iter()
        .find(|c| c.class == class && c.tier == tier)
        .map(|c| {
            c.usd_per_gb * bytes as f64 / (1u64 << 30) as f64
                + c.usd_per_1000_requests * packs as f64 / 1000.0
        })
}

impl Plan {
    /// Packs that are archived and not readable yet.
    pub fn unreadable(&self) -> impl Iterator<Item = &PlannedPack> {
        self.packs.iter().filter(|p| !p.state.readable())
    }

    /// Pack count and bytes by state name (`cold`, `thawing`, `thawed`).
    pub fn count(&self, state: &str) -> (u64, u64) {
        self.packs
            .iter()
            .filter(|p| state_name(&p.state) == state)
            .fold((0, 0), |(n, b), p| (n + 1, b + p.size))
    }
}

pub fn state_name(s: &ThawState) -> &'static str {
    match s {
        ThawState::Hot => "hot",
        ThawState::Cold => "cold",
        ThawState::Thawing => "thawing",
        ThawState::Thawed { .. } => "thawed",
    }
}

/// The blobs a restore with `opts` reads from snapshot tree `root`, file by file.
pub fn needed_blobs(
    repo: &Repository,
    root: BlobId,
    opts: &RestoreOptions,
) -> Result<(u64, HashSet<BlobId>)> {
    let (start, prefix, single) = resolve_start(repo, root, &opts.subpath)?;
    let mut sel = Selection::new(&opts.includes, &opts.excludes)?;
    let mut blobs = HashSet::new();
    let mut files = 0u64;
    let mut visit = |rel: &[u8], n: &Node| -> Result<bool> {
        let (restore_it, descend) = sel.decide(rel, n.kind == NodeKind::Dir);
        if n.kind == NodeKind::File && restore_it {
            files += 1;
            blobs.extend(repo.file_chunks(&n.content)?);
        }
        Ok(descend)
    };
    match single {
        Some(n) => {
            let mut rel = b"/".to_vec();
            rel.extend_from_slice(&n.name);
            visit(&rel, &n)?;
        }
        None => walk(repo, start, &prefix, &mut visit)?,
    }
    // A delta is read through its bases, which may sit in other packs.
    let idx = repo.index().read().expect("index lock");
    let bases: Vec<BlobId> = blobs
        .iter()
        .flat_map(|b| idx.chain_of(b).unwrap_or_default())
        .collect();
    drop(idx);
    blobs.extend(bases);
    Ok((files, blobs))
}

/// Plans a restore: the packs it reads and which are archived (one LIST of the data packs,
/// one HEAD per archived needed pack; no GET).
pub fn plan(repo: &Repository, root: BlobId, opts: &RestoreOptions) -> Result<Plan> {
    let (files, blobs) = needed_blobs(repo, root, opts)?;
    plan_blobs(repo, files, &blobs)
}

/// As [`plan`], for reading `blobs` (of `files` files).
pub fn plan_blobs(repo: &Repository, files: u64, blobs: &HashSet<BlobId>) -> Result<Plan> {
    let mut by_pack: HashMap<ObjectId, (FileKind, u64, u64)> = HashMap::new();
    let mut bytes = 0u64;
    {
        let idx = repo.index().read().expect("index lock");
        for b in blobs {
            let (p, loc) = idx.get(b).ok_or_else(|| {
                Error::NotFound(format!(
                    "blob {b} is not in the index (missing data: run `chunkbak check`)"
                ))
            })?;
            let e = by_pack
                .entry(p.id)
                .or_insert((FileKind::of_pack(p.kind), p.size, 0));
            e.2 += u64::from(loc.length);
            bytes += u64::from(loc.raw_len);
        }
    }
    let backend = repo.backend();
    let classes: HashMap<String, StorageClass> = if backend.has_archive_classes() {
        backend
            .list_info(FileKind::Data)?
            .into_iter()
            .map(|o| (o.name, o.class))
            .collect()
    } else {
        HashMap::new()
    };
    let mut packs = Vec::with_capacity(by_pack.len());
    for (id, (kind, size, needed)) in by_pack {
        let name = id.to_hex();
        let class = classes.get(&name).copied().unwrap_or_default();
        let state = if class.is_archive() {
            backend.thaw_state(kind, &name)?
        } else {
            ThawState::Hot
        };
        packs.push(PlannedPack {
            id,
            kind,
            size,
            needed,
            class,
            state,
        });
    }
    packs.sort_by_key(|p| p.id);
    Ok(Plan {
        packs,
        files,
        bytes,
    })
}

/// A thawed copy that expires within this time is thawed again (which extends it), so it does
/// not expire while a restore waits for other packs.
pub const EXTEND_WITHIN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether a pack needs a RestoreObject: archived without a thaw, or thawed with a copy that
/// expires soon (S3 reports the expiry as an HTTP date).
fn needs_request(state: &ThawState) -> bool {
    match state {
        ThawState::Cold => true,
        ThawState::Thawed { expiry: Some(e) } => jiff::fmt::rfc2822::parse(e)
            .map(|z| z.timestamp())
            .is_ok_and(|t| {
                let soon = jiff::SignedDuration::try_from(EXTEND_WITHIN).unwrap_or_default();
                t < jiff::Timestamp::now() + soon
            }),
        _ => false,
    }
}

/// Requests a thaw of every cold pack of the plan (and extends thawed copies about to expire);
/// returns how many were requested.
pub fn request(repo: &Repository, plan: &mut Plan, tier: Tier, days: u32) -> Result<u64> {
    if tier == Tier::Expedited
        && plan
            .packs
            .iter()
            .any(|p| p.class == StorageClass::DeepArchive && needs_request(&p.state))
    {
        return Err(Error::Invalid(
            "DEEP_ARCHIVE has no expedited retrieval: use --tier standard or --tier bulk".into(),
        ));
    }
    let mut n = 0;
    for p in plan.packs.iter_mut().filter(|p| needs_request(&p.state)) {
        if crate::ops::interrupted() {
            return Err(crate::stop::error(String::new));
        }
        repo.backend()
            .request_thaw(p.kind, &p.id.to_hex(), tier, days)?;
        p.state = ThawState::Thawing;
        n += 1;
    }
    Ok(n)
}

/// A gate over the packs of a plan that are still thawing, polled with one HEAD per pack.
pub struct Thaw<'a> {
    repo: &'a Repository,
    pending: Mutex<HashMap<ObjectId, FileKind>>,
    poll: Duration,
    deadline: Option<Instant>,
    report: &'a (dyn Fn(usize, Duration) + Sync),
}

impl<'a> Thaw<'a> {
    /// `report(pending, next_poll)` is called before each wait.
    pub fn new(
        repo: &'a Repository,
        plan: &Plan,
        poll: Duration,
        max_wait: Option<Duration>,
        report: &'a (dyn Fn(usize, Duration) + Sync),
    ) -> Self {
        Thaw {
            repo,
            pending: Mutex::new(plan.unreadable().map(|p| (p.id, p.kind)).collect()),
            poll,
            deadline: max_wait.map(|d| Instant::now() + d),
            report,
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }
}

impl PackGate for Thaw<'_> {
    fn readable(&self, pack: &ObjectId) -> bool {
        !self
            .pending
            .lock()
            .expect("pending lock")
            .contains_key(pack)
    }

    fn wait(&self) -> Result<()> {
        loop {
            let pending: Vec<(ObjectId, FileKind)> = self
                .pending
                .lock()
                .expect("pending lock")
                .iter()
                .map(|(id, k)| (*id, *k))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            (self.report)(pending.len(), self.poll);
            let until = Instant::now() + self.poll;
            while Instant::now() < until {
                if crate::ops::interrupted() {
                    return Err(crate::stop::error(String::new));
                }
                std::thread::sleep(Duration::from_millis(100).min(self.poll));
            }
            let mut freed = 0;
            for (id, kind) in pending {
                let name = id.to_hex();
                let state = self.repo.backend().thaw_state(kind, &name)?;
                if state == ThawState::Cold {
                    // The thawed copy expired (or the request was lost): ask again.
                    return Err(Error::Other(format!(
                        "{} is archived again and no thaw is in progress: run the restore \
                         again (it requests a new thaw), with a larger --restore-days",
                        kind.path_of(&name)
                    )));
                }
                if state.readable() {
                    self.pending.lock().expect("pending lock").remove(&id);
                    freed += 1;
                }
            }
            if freed > 0 {
                return Ok(());
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Other(format!(
                    "{} packs are still thawing after --max-wait; run the restore again later \
                     (thaws already requested are not requested again)",
                    self.pending()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thawed_copies_about_to_expire_are_thawed_again() {
        let http_date = |t: jiff::Timestamp| {
            jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&t)
                .unwrap()
        };
        let now = jiff::Timestamp::now();
        let soon = http_date(now + jiff::SignedDuration::from_hours(2));
        let later = http_date(now + jiff::SignedDuration::from_hours(72));
        assert!(soon.ends_with("GMT"), "{soon}");
        assert!(needs_request(&ThawState::Cold));
        assert!(needs_request(&ThawState::Thawed { expiry: Some(soon) }));
        assert!(!needs_request(&ThawState::Thawed {
            expiry: Some(later)
        }));
        assert!(!needs_request(&ThawState::Thawed { expiry: None }));
        assert!(!needs_request(&ThawState::Thawing));
        assert!(!needs_request(&ThawState::Hot));
    }

    #[test]
    fn tier_estimates() {
        let gib = 1u64 << 30;
        let e = tier_estimate(StorageClass::Glacier, Tier::Standard, 1000, 100 * gib).unwrap();
        assert!((e - (1.0 + 0.05)).abs() < 1e-9, "{e}");
        assert_eq!(
            tier_estimate(StorageClass::DeepArchive, Tier::Expedited, 1, gib),
            None
        );
    }
}
