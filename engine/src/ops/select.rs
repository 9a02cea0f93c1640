//! Choosing snapshots: filters (host, path, tag), `latest`, id prefixes and `--at TIME`.

use std::path::PathBuf;

use jiff::Timestamp;

use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::format::tree::Timespec;
use crate::id::Id;

/// Snapshot filters; an empty list matches everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub hosts: Vec<String>,
    /// The snapshot must contain every one of these paths.
    pub paths: Vec<PathBuf>,
    /// The snapshot must carry one of these tags.
    pub tags: Vec<String>,
}

impl Filter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        use std::os::unix::ffi::OsStrExt;
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && self.paths.iter().all(|p| {
                s.paths
                    .iter()
                    .any(|sp| sp.as_slice() == p.as_os_str().as_bytes())
            })
            && (self.tags.is_empty() || self.tags.iter().any(|t| s.tags.contains(t)))
    }
}

/// Default of `--clock-skew`: how far ahead of this host's clock a snapshot may be dated
/// before it counts as *from the future* (format-spec 12, "Trust").
pub const DEFAULT_CLOCK_SKEW_SECS: i64 = 3600;

/// This host's clock and the skew it allows. A snapshot dated later than `now + skew` was
/// written by a host whose clock is wrong, or forged: it is flagged, and never taken as
/// `latest`, by `--at`, as a parent, or as the reference point of `--keep-within`.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Timestamp,
    pub skew_secs: i64,
}

impl Clock {
    /// The system clock with the given tolerance.
    pub fn system(skew_secs: i64) -> Clock {
        Clock {
            now: Timestamp::now(),
            skew_secs,
        }
    }

    /// Whether a snapshot is dated later than `now + skew`.
    pub fn is_future(&self, s: &Snapshot) -> bool {
        s.time.secs > self.now.as_second().saturating_add(self.skew_secs)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system(DEFAULT_CLOCK_SKEW_SECS)
    }
}

/// How one snapshot is named.
#[derive(Clone, Debug)]
pub enum Selector {
    Latest,
    Id(String),
    At(Timestamp),
}

impl Selector {
    /// `latest` or an id prefix.
    pub fn parse(s: &str) -> Self {
        if s == "latest" {
            Selector::Latest
        } else {
            Selector::Id(s.to_ascii_lowercase())
        }
    }
}

pub fn timespec_of(t: Timestamp) -> Timespec {
    Timespec {
        secs: t.as_second(),
        nanos: t.subsec_nanosecond().max(0) as u32,
    }
}

pub fn timestamp_of(t: Timespec) -> Timestamp {
    Timestamp::new(t.secs, t.nanos as i32).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Resolves an id prefix among all snapshots (filters do not apply to explicit ids).
pub fn find_id(snaps: &[(Id, Snapshot)], prefix: &str) -> Result<usize> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{prefix:?} is not a snapshot id (hex digits) or 'latest'"
        )));
    }
    let hits: Vec<usize> = snaps
        .iter()
        .enumerate()
        .filter(|(_, (id, _))| id.to_hex().starts_with(prefix))
        .map(|(i, _)| i)
        .collect();
    match hits.len() {
        0 => Err(Error::NotFound(format!("no snapshot with id {prefix}"))),
        1 => Ok(hits[0]),
        n => Err(Error::Invalid(format!(
            "id prefix {prefix} matches {n} snapshots; give more digits"
        ))),
    }
}

/// Picks one snapshot. `snaps` must be sorted oldest first (as `Repository::snapshots` returns).
/// Snapshots from the future (see [`Clock`]) are chosen only by an explicit id.
pub fn select(
    snaps: &[(Id, Snapshot)],
    sel: &Selector,
    filter: &Filter,
    clock: &Clock,
) -> Result<usize> {
    let now = clock.now;
    let matching: Vec<usize> = (0..snaps.len())
        .filter(|&i| filter.matches(&snaps[i].1) && !clock.is_future(&snaps[i].1))
        .collect();
    match sel {
        Selector::Id(p) => find_id(snaps, p),
        Selector::Latest => matching
            .last()
            .copied()
            .ok_or_else(|| Error::NotFound("no snapshot matches the filters".into())),
        Selector::At(t) => {
            if *t > now {
                return Err(Error::Invalid(format!(
                    "--at {t} is in the future (now is {}); nothing was backed up then yet",
                    now.round(jiff::Unit::Second).unwrap_or(now)
                )));
            }
            let limit = timespec_of(*t);
            match matching.iter().rev().find(|&&i| snaps[i].1.time <= limit) {
                Some(&i) => Ok(i),
                None => match matching.first() {
                    Some(&i) => Err(Error::NotFound(format!(
                        "no snapshot at or before {t}; the earliest matching snapshot is {} taken at {}",
                        snaps[i].0.short(),
                        timestamp_of(snaps[i].1.time)
                    ))),
                    None => Err(Error::NotFound("no snapshot matches the filters".into())),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(secs: i64, host: &str) -> (Id, Snapshot) {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&secs.to_be_bytes());
        (
            Id(id),
            Snapshot {
                time: Timespec { secs, nanos: 0 },
                host: host.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn at_picks_newest_not_after() {
        let snaps = vec![snap(100, "a"), snap(200, "b"), snap(300, "a")];
        let f = Filter::default();
        let now = Clock {
            now: Timestamp::from_second(1000).unwrap(),
            skew_secs: 0,
        };
        let at = |s| {
            select(
                &snaps,
                &Selector::At(Timestamp::from_second(s).unwrap()),
                &f,
                &now,
            )
        };
        assert_eq!(at(250).unwrap(), 1);
        assert_eq!(at(200).unwrap(), 1);
        assert_eq!(at(999).unwrap(), 2);
        let e = at(50).unwrap_err().to_string();
        assert!(e.contains("earliest"), "{e}");
        assert!(at(2000).unwrap_err().to_string().contains("future"));
        let fa = Filter {
            hosts: vec!["a".into()],
            ..Default::default()
        };
        let t = Selector::At(Timestamp::from_second(250).unwrap());
        assert_eq!(select(&snaps, &t, &fa, &now).unwrap(), 0);
        assert_eq!(select(&snaps, &Selector::Latest, &fa, &now).unwrap(), 2);
    }

    #[test]
    fn snapshots_from_the_future_are_chosen_only_by_id() {
        // This host's clock reads 1000; a snapshot at 3000 is forged or from a wrong clock
        // unless the skew allowed covers it.
        let snaps = vec![snap(100, "a"), snap(900, "a"), snap(3000, "a")];
        let clock = Clock {
            now: Timestamp::from_second(1000).unwrap(),
            skew_secs: 3600,
        };
        let f = Filter::default();
        // Within the skew it counts as present.
        assert_eq!(select(&snaps, &Selector::Latest, &f, &clock).unwrap(), 2);
        let strict = Clock {
            skew_secs: 60,
            ..clock
        };
        assert!(strict.is_future(&snaps[2].1) && !strict.is_future(&snaps[1].1));
        assert_eq!(select(&snaps, &Selector::Latest, &f, &strict).unwrap(), 1);
        let at = Selector::At(Timestamp::from_second(1000).unwrap());
        assert_eq!(select(&snaps, &at, &f, &strict).unwrap(), 1);
        let id = Selector::Id(snaps[2].0.to_hex());
        assert_eq!(select(&snaps, &id, &f, &strict).unwrap(), 2);
    }
}
