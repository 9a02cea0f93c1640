//! `forget`: which snapshots a retention policy keeps, and why.
//!
//! Semantics follow restic's `forget` (0.17) where it defines them:
//! - snapshots are grouped (by host and paths unless `group_by` says otherwise) and the policy
//!   applies to each group on its own, newest first;
//! - `keep_last N` keeps the N newest;
//! - `keep_hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each of the last N
//!   hours/days/ISO weeks/months/years that have a snapshot, in the given time zone (so in a
//!   repeated DST hour the two clock hours are one bucket, as restic's `t.Hour()`);
//! - when a group has fewer such periods than N, its oldest snapshot is kept too ("oldest
//!   daily snapshot");
//! - `keep_within D` keeps every snapshot newer than the group's latest minus D;
//! - `keep_tags` keeps snapshots carrying all tags of one of the lists;
//! - a count of -1 means unlimited.
//!
//! Unlike restic, snapshots dated later than now plus the clock skew allowed
//! ([`Clock`](super::select::Clock)) take no part: they are kept, flagged, and neither count
//! for a rule nor serve as the latest of `keep_within`, so one forged snapshot dated years
//! ahead cannot make a policy remove every genuine one (format-spec 12, "Trust").

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::error::{Error, Result};
use crate::format::snapshot::Snapshot;
use crate::id::Id;

/// A retention policy. Counts: 0 = rule off, -1 = unlimited.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub last: i64,
    pub hourly: i64,
    pub daily: i64,
    pub weekly: i64,
    pub monthly: i64,
    pub yearly: i64,
    /// Seconds.
    pub within: Option<i64>,
    /// Each entry is a list of tags a snapshot must all carry.
    pub tags: Vec<Vec<String>>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// What snapshots are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                other => {
                    return Err(format!(
                        "cannot group by {other:?}: use host, paths and tags, comma-separated \
                         (an empty value puts all snapshots in one group)"
                    ))
                }
            }
        }
        Ok(g)
    }
}

/// The key a snapshot is grouped under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub host: Option<String>,
    pub paths: Option<Vec<Vec<u8>>>,
    pub tags: Option<Vec<String>>,
}

/// One snapshot's fate and the rules that decided it.
#[derive(Clone, Debug)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    /// Why it is kept ("last snapshot", "daily snapshot", "within 30d", ...); empty if removed.
    pub reasons: Vec<String>,
}

/// A group and its decisions, newest first.
#[derive(Clone, Debug)]
pub struct Group {
    pub key: GroupKey,
    pub decisions: Vec<Decision>,
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    fn bucket(self, t: Timestamp, tz: &TimeZone) -> i64 {
        let z = t.to_zoned(tz.clone());
        let (y, m, d, h) = (
            i64::from(z.year()),
            i64::from(z.month()),
            i64::from(z.day()),
            i64::from(z.hour()),
        );
        match self {
            Period::Hour => ((y * 100 + m) * 100 + d) * 100 + h,
            Period::Day => (y * 100 + m) * 100 + d,
            Period::Week => {
                let w = z.date().iso_week_date();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Month => y * 100 + m,
            Period::Year => y,
        }
    }
}

fn time_of(s: &Snapshot) -> Timestamp {
    Timestamp::new(s.time.secs, s.time.nanos as i32).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Why a snapshot from the future is kept.
pub const FUTURE_REASON: &str =
    "dated in the future (later than now + clock skew): kept and not counted by the policy; \
     remove it by id if it is not genuine";

/// Applies a policy to snapshots (any order). Returns the groups, each newest first.
pub fn apply(
    snaps: &[(Id, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    tz: &TimeZone,
    clock: &super::select::Clock,
) -> Result<Vec<Group>> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no policy given: say what to keep (--keep-last, --keep-daily, --keep-within, ...) \
             or name the snapshots to remove"
                .into(),
        ));
    }
    let mut groups: BTreeMap<GroupKey, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for s in snaps {
        let mut tags = s.1.tags.clone();
        tags.sort();
        let key = GroupKey {
            host: group_by.host.then(|| s.1.host.clone()),
            paths: group_by.paths.then(|| {
                let mut p = s.1.paths.clone();
                p.sort();
                p
            }),
            tags: group_by.tags.then_some(tags),
        };
        groups.entry(key).or_default().push(s);
    }
    let mut out = Vec::new();
    for (key, mut list) in groups {
        list.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
        type Snaps<'a> = Vec<&'a (Id, Snapshot)>;
        let (future, present): (Snaps, Snaps) = list.iter().partition(|s| clock.is_future(&s.1));
        let mut decisions: Vec<Decision> = future
            .iter()
            .map(|s| Decision {
                id: s.0,
                keep: true,
                reasons: vec![FUTURE_REASON.to_string()],
            })
            .collect();
        decisions.extend(apply_group(&present, policy, tz));
        out.push(Group { key, decisions });
    }
    Ok(out)
}

fn apply_group(list: &[&(Id, Snapshot)], policy: &Policy, tz: &TimeZone) -> Vec<Decision> {
    let periods = [
        (Period::Hour, policy.hourly),
        (Period::Day, policy.daily),
        (Period::Week, policy.weekly),
        (Period::Month, policy.monthly),
        (Period::Year, policy.yearly),
    ];
    // Per rule: remaining count and the bucket last kept.
    let mut left: Vec<i64> = periods.iter().map(|p| p.1).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; periods.len()];
    let mut last_left = policy.last;
    let latest = list.first().map(|s| time_of(&s.1));
    let mut out = Vec::with_capacity(list.len());
    for (nr, (id, s)) in list.iter().map(|e| (&e.0, &e.1)).enumerate() {
        let t = time_of(s);
        let oldest = nr + 1 == list.len();
        let mut reasons = Vec::new();
        if last_left != 0 {
            reasons.push("last snapshot".to_string());
            if last_left > 0 {
                last_left -= 1;
            }
        }
        for (i, (period, _)) in periods.iter().enumerate() {
            if left[i] == 0 {
                continue;
            }
            let b = period.bucket(t, tz);
            if last_bucket[i] != Some(b) {
                reasons.push(format!("{} snapshot", period.name()));
                last_bucket[i] = Some(b);
                if left[i] > 0 {
                    left[i] -= 1;
                }
            } else if oldest && left[i] > 0 {
                // Fewer periods than asked for: the oldest snapshot is kept as well.
                reasons.push(format!("oldest {} snapshot", period.name()));
                left[i] -= 1;
            }
        }
        if let (Some(w), Some(latest)) = (policy.within, latest) {
            if t.as_second() > latest.as_second() - w {
                reasons.push(format!(
                    "within {} of the latest",
                    crate::timeparse::format_secs(w)
                ));
            }
        }
        for tl in &policy.tags {
            if tl.iter().all(|t| s.tags.contains(t)) {
                reasons.push(format!("tag {}", tl.join(",")));
            }
        }
        out.push(Decision {
            id: *id,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// What [`remove`] did.
#[derive(Clone, Debug, Default)]
pub struct Removed {
    /// Snapshots gone from the repository (deleted, hidden, or already gone).
    pub removed: u64,
    /// Snapshots S3 Object Lock still retains: hidden behind a delete marker (no command
    /// sees them any more), stored until the given time (seconds since the epoch).
    pub locked: Vec<(Id, i64)>,
}

/// Deletes snapshots. A snapshot already gone (another `forget`) counts as deleted; one that
/// Object Lock retains is hidden (its stored copy stays until its retention ends).
pub fn remove(repo: &crate::repo::Repository, ids: &[Id]) -> Result<Removed> {
    let mut r = Removed::default();
    for id in ids {
        let hidden = crate::backend::delete_or_hide(
            repo.backend().as_ref(),
            crate::backend::FileKind::Snapshot,
            &id.to_hex(),
        )?;
        r.removed += 1;
        if let Some(until) = hidden {
            r.locked.push((*id, until));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::Timespec;
    use crate::ops::select::Clock;

    /// A clock after every date the tables use (so none is from the future).
    fn far() -> Clock {
        Clock {
            now: "2100-01-01T00:00:00Z".parse().unwrap(),
            skew_secs: 3600,
        }
    }

    fn snap(t: &str, host: &str, tags: &[&str]) -> Snapshot {
        let ts: Timestamp = t.parse().unwrap();
        Snapshot {
            time: Timespec {
                secs: ts.as_second(),
                nanos: 0,
            },
            host: host.into(),
            paths: vec![b"/data".to_vec()],
            tags: tags.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Runs `policy` on snapshots at `times` (UTC instants) in time zone `tz`; returns the
    /// kept times, newest first, with their reasons.
    fn kept(times: &[&str], policy: &Policy, tz: &str) -> Vec<(String, Vec<String>)> {
        let tz = TimeZone::get(tz).unwrap();
        let snaps: Vec<(Id, Snapshot)> = times
            .iter()
            .enumerate()
            .map(|(i, t)| (Id([i as u8; 32]), snap(t, "h", &[])))
            .collect();
        let groups = apply(&snaps, policy, GroupBy::default(), &tz, &far()).unwrap();
        assert_eq!(groups.len(), 1);
        groups[0]
            .decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| {
                let s = &snaps.iter().find(|s| s.0 == d.id).unwrap().1;
                (time_of(s).to_string(), d.reasons.clone())
            })
            .collect()
    }

    fn kept_times(times: &[&str], policy: &Policy, tz: &str) -> Vec<String> {
        kept(times, policy, tz).into_iter().map(|k| k.0).collect()
    }

    struct Case {
        name: &'static str,
        tz: &'static str,
        times: &'static [&'static str],
        policy: Policy,
        keep: &'static [&'static str],
    }

    #[test]
    fn table() {
        let cases = [
            Case {
                name: "keep-last 2 keeps the two newest",
                tz: "UTC",
                times: &[
                    "2026-01-01T00:00:00Z",
                    "2026-01-02T00:00:00Z",
                    "2026-01-03T00:00:00Z",
                ],
                policy: Policy {
                    last: 2,
                    ..Default::default()
                },
                keep: &["2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z"],
            },
            Case {
                name: "daily keeps the newest of each day",
                tz: "UTC",
                times: &[
                    "2026-03-01T08:00:00Z",
                    "2026-03-02T08:00:00Z",
                    "2026-03-02T11:00:00Z",
                    "2026-03-04T09:00:00Z",
                    "2026-03-05T10:00:00Z",
                ],
                policy: Policy {
                    daily: 4,
                    ..Default::default()
                },
                // The restic documentation's example: a1, a3, a4, a5.
                keep: &[
                    "2026-03-05T10:00:00Z",
                    "2026-03-04T09:00:00Z",
                    "2026-03-02T11:00:00Z",
                    "2026-03-01T08:00:00Z",
                ],
            },
            Case {
                name: "leap day is its own day, Feb 28 and Mar 1 are others",
                tz: "UTC",
                times: &[
                    "2028-02-28T23:00:00Z",
                    "2028-02-29T01:00:00Z",
                    "2028-02-29T23:59:59Z",
                    "2028-03-01T00:00:00Z",
                ],
                policy: Policy {
                    daily: 3,
                    ..Default::default()
                },
                keep: &[
                    "2028-03-01T00:00:00Z",
                    "2028-02-29T23:59:59Z",
                    "2028-02-28T23:00:00Z",
                ],
            },
            Case {
                name: "days are local days: 23:30 in New York is the next day in UTC",
                tz: "America/New_York",
                times: &["2026-07-01T03:00:00Z", "2026-07-01T03:40:00Z"],
                // 2026-06-30 23:00 and 23:40 EDT: one local day.
                policy: Policy {
                    daily: 2,
                    ..Default::default()
                },
                keep: &["2026-07-01T03:40:00Z", "2026-07-01T03:00:00Z"],
            },
            Case {
                name: "fall back: 01:30 EDT and 01:30 EST are one hourly bucket",
                tz: "America/New_York",
                times: &[
                    "2026-11-01T05:30:00Z", // 01:30 EDT
                    "2026-11-01T06:30:00Z", // 01:30 EST
                    "2026-11-01T07:30:00Z", // 02:30 EST
                    "2026-11-01T08:30:00Z", // 03:30 EST
                ],
                policy: Policy {
                    hourly: 3,
                    ..Default::default()
                },
                keep: &[
                    "2026-11-01T08:30:00Z",
                    "2026-11-01T07:30:00Z",
                    "2026-11-01T06:30:00Z",
                ],
            },
            Case {
                name: "spring forward: the day has 23 hours, daily still keeps one per day",
                tz: "Europe/Berlin",
                times: &[
                    "2026-03-28T22:30:00Z", // 23:30 CET on the 28th
                    "2026-03-29T00:30:00Z", // 01:30 CET on the 29th
                    "2026-03-29T01:30:00Z", // 03:30 CEST on the 29th
                    "2026-03-29T21:59:00Z", // 23:59 CEST on the 29th
                ],
                policy: Policy {
                    daily: 5,
                    ..Default::default()
                },
                keep: &["2026-03-29T21:59:00Z", "2026-03-28T22:30:00Z"],
            },
            Case {
                name: "ISO weeks: Dec 31 2024 is week 1 of 2025, with Jan 1",
                tz: "UTC",
                times: &[
                    "2024-12-29T12:00:00Z", // Sunday, week 52 of 2024
                    "2024-12-31T12:00:00Z", // Tuesday, week 1 of 2025
                    "2025-01-02T12:00:00Z", // Thursday, week 1 of 2025
                ],
                policy: Policy {
                    weekly: 2,
                    ..Default::default()
                },
                keep: &["2025-01-02T12:00:00Z", "2024-12-29T12:00:00Z"],
            },
            Case {
                name: "year end: yearly keeps the last snapshot of each year",
                tz: "UTC",
                times: &[
                    "2024-06-01T00:00:00Z",
                    "2024-12-31T23:59:59Z",
                    "2025-01-01T00:00:00Z",
                    "2025-12-31T23:00:00Z",
                ],
                policy: Policy {
                    yearly: 5,
                    ..Default::default()
                },
                keep: &[
                    "2025-12-31T23:00:00Z",
                    "2024-12-31T23:59:59Z",
                    "2024-06-01T00:00:00Z",
                ],
            },
            Case {
                name: "year end in a time zone: 23:30 UTC Dec 31 is already next year in Tokyo",
                tz: "Asia/Tokyo",
                times: &["2025-12-31T14:30:00Z", "2025-12-31T16:00:00Z"],
                // 23:30 and 01:00 JST: two years.
                policy: Policy {
                    yearly: 1,
                    ..Default::default()
                },
                keep: &["2025-12-31T16:00:00Z"],
            },
            Case {
                name: "monthly across a leap February",
                tz: "UTC",
                times: &[
                    "2028-01-31T10:00:00Z",
                    "2028-02-29T10:00:00Z",
                    "2028-03-01T10:00:00Z",
                    "2028-03-31T10:00:00Z",
                ],
                policy: Policy {
                    monthly: 2,
                    ..Default::default()
                },
                keep: &["2028-03-31T10:00:00Z", "2028-02-29T10:00:00Z"],
            },
            Case {
                name: "keep-within counts back from the latest snapshot, not from now; \
                       exactly 30 days older is out (restic: strictly newer)",
                tz: "UTC",
                times: &[
                    "2020-01-01T00:00:00Z",
                    "2020-03-01T00:00:00Z",
                    "2020-03-01T00:00:01Z",
                    "2020-03-25T00:00:00Z",
                    "2020-03-31T00:00:00Z",
                ],
                policy: Policy {
                    within: Some(30 * 86_400),
                    ..Default::default()
                },
                keep: &[
                    "2020-03-31T00:00:00Z",
                    "2020-03-25T00:00:00Z",
                    "2020-03-01T00:00:01Z",
                ],
            },
            Case {
                name: "unlimited daily keeps one per day, all days",
                tz: "UTC",
                times: &[
                    "2026-01-01T01:00:00Z",
                    "2026-01-01T02:00:00Z",
                    "2026-01-02T01:00:00Z",
                ],
                policy: Policy {
                    daily: -1,
                    ..Default::default()
                },
                keep: &["2026-01-02T01:00:00Z", "2026-01-01T02:00:00Z"],
            },
            Case {
                name: "rules combine: the union of what each keeps",
                tz: "UTC",
                times: &[
                    "2026-01-01T00:00:00Z",
                    "2026-02-01T00:00:00Z",
                    "2026-02-10T00:00:00Z",
                    "2026-02-10T06:00:00Z",
                ],
                policy: Policy {
                    last: 1,
                    monthly: 2,
                    ..Default::default()
                },
                keep: &["2026-02-10T06:00:00Z", "2026-01-01T00:00:00Z"],
            },
        ];
        for c in cases {
            assert_eq!(kept_times(c.times, &c.policy, c.tz), c.keep, "{}", c.name);
        }
    }

    #[test]
    fn oldest_is_kept_when_periods_run_out() {
        // Two snapshots on one day and --keep-daily 7: restic 0.17 keeps the oldest as well.
        let k = kept(
            &["2026-05-01T01:00:00Z", "2026-05-01T02:00:00Z"],
            &Policy {
                daily: 7,
                ..Default::default()
            },
            "UTC",
        );
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].1, vec!["daily snapshot"]);
        assert_eq!(k[1].1, vec!["oldest daily snapshot"]);
    }

    #[test]
    fn reasons_and_groups_and_tags() {
        let tz = TimeZone::UTC;
        let snaps = vec![
            (Id([1; 32]), snap("2026-01-01T00:00:00Z", "a", &["keep"])),
            (Id([2; 32]), snap("2026-01-02T00:00:00Z", "a", &[])),
            (Id([3; 32]), snap("2026-01-03T00:00:00Z", "a", &[])),
            (Id([4; 32]), snap("2026-01-01T00:00:00Z", "b", &[])),
        ];
        let p = Policy {
            last: 1,
            tags: vec![vec!["keep".into()]],
            ..Default::default()
        };
        let g = apply(&snaps, &p, GroupBy::default(), &tz, &far()).unwrap();
        assert_eq!(g.len(), 2, "one group per host");
        let a = &g[0].decisions;
        assert_eq!(
            a.iter().map(|d| d.keep).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(a[0].reasons, ["last snapshot"]);
        assert_eq!(a[2].reasons, ["tag keep"]);
        assert!(g[1].decisions[0].keep, "host b's only snapshot is its last");
        let one: GroupBy = "".parse().unwrap();
        let g = apply(&snaps, &p, one, &tz, &far()).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].decisions.iter().filter(|d| d.keep).count(), 2);
        assert!(apply(&snaps, &Policy::default(), one, &tz, &far()).is_err());
        assert!("host,colour".parse::<GroupBy>().is_err());
    }

    #[test]
    fn a_snapshot_from_the_future_neither_counts_nor_moves_keep_within() {
        let tz = TimeZone::get("UTC").unwrap();
        let clock = Clock {
            now: "2026-12-06T12:00:00Z".parse().unwrap(),
            skew_secs: 3600,
        };
        let snaps = vec![
            (Id([1; 32]), snap("2026-12-04T02:00:00Z", "h", &[])),
            (Id([2; 32]), snap("2026-12-05T02:00:00Z", "h", &[])),
            (Id([3; 32]), snap("2026-12-06T02:00:00Z", "h", &[])),
            // Forged, or a host whose clock is five years ahead.
            (Id([9; 32]), snap("2031-12-06T02:00:00Z", "h", &[])),
        ];
        for p in [
            Policy {
                within: Some(90 * 86_400),
                ..Default::default()
            },
            Policy {
                last: 1,
                ..Default::default()
            },
            Policy {
                daily: 2,
                ..Default::default()
            },
        ] {
            let g = apply(&snaps, &p, GroupBy::default(), &tz, &clock).unwrap();
            let d = &g[0].decisions;
            let kept: Vec<u8> = d.iter().filter(|d| d.keep).map(|d| d.id.0[0]).collect();
            assert!(kept.contains(&9) && kept.contains(&3), "{p:?}: {d:?}");
            assert!(d[0].reasons[0].contains("future"), "{d:?}");
            assert!(d
                .iter()
                .filter(|d| d.id.0[0] != 9)
                .all(|d| d.reasons.iter().all(|r| !r.contains("future"))));
            if p.within.is_some() {
                assert_eq!(
                    kept.len(),
                    4,
                    "90 days back from the newest genuine snapshot"
                );
            }
        }
        // Without the guard (a clock five years ahead), the real ones would fall out of 90d.
        let late = Clock {
            now: "2032-01-01T00:00:00Z".parse().unwrap(),
            skew_secs: 3600,
        };
        let p = Policy {
            within: Some(90 * 86_400),
            ..Default::default()
        };
        let g = apply(&snaps, &p, GroupBy::default(), &tz, &late).unwrap();
        assert_eq!(g[0].decisions.iter().filter(|d| d.keep).count(), 1);
    }
}
