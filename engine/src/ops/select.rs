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
pub fn select(
    snaps: &[(Id, Snapshot)],
    sel: &Selector,
    filter: &Filter,
    now: Timestamp,
) -> Result<usize> {
    let matching: Vec<usize> = (0..snaps.len())
        .filter(|&i| filter.matches(&snaps[i].1))
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
        let now = Timestamp::from_second(1000).unwrap();
        let at = |s| {
            select(
                &snaps,
                &Selector::At(Timestamp::from_second(s).unwrap()),
                &f,
                now,
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
        assert_eq!(select(&snaps, &t, &fa, now).unwrap(), 0);
        assert_eq!(select(&snaps, &Selector::Latest, &fa, now).unwrap(), 2);
    }
}
