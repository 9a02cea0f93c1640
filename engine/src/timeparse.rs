//! Parsing of the TIME arguments of `--at` and `backup --time`.
//!
//! Accepted: RFC 3339 (`2026-11-20T14:00:00Z`, `...+01:00`), local civil time
//! `YYYY-MM-DD[ HH:MM[:SS]]` (also with `T`; missing fields are zero; `2026-12-06 8:30`),
//! `now`, `today` and `yesterday` (midnight), each with a time of day (`yesterday 18:00`), a
//! time of day alone (`8:30`, `18:00:15`: today), and relative forms `3 days ago`, `36h ago`,
//! `-36h`, `-2 weeks`.

use jiff::{civil, tz::TimeZone, Span, Timestamp, Zoned};

use crate::error::{Error, Result};

/// Parses `s` relative to `now` in the time zone of `now`.
pub fn parse_time(s: &str, now: &Zoned) -> Result<Timestamp> {
    let t = s.trim();
    let bad = |why: &str| {
        Error::Invalid(format!(
            "cannot read time {s:?}: {why}; use RFC 3339 (2026-11-20T14:00:00Z), local \
             'YYYY-MM-DD[ HH:MM[:SS]]', 'today', 'yesterday 18:00', '8:30', 'now', or a \
             relative time like '3 days ago' or '-36h'"
        ))
    };
    if t.eq_ignore_ascii_case("now") {
        return Ok(now.timestamp());
    }
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts);
    }
    let relative = t
        .strip_suffix(" ago")
        .or_else(|| t.strip_prefix('-'))
        .map(str::trim);
    if let Some(rel) = relative {
        let span: Span = rel.parse().map_err(|e| bad(&format!("{e}")))?;
        let z = now.checked_sub(span).map_err(|e| bad(&format!("{e}")))?;
        return Ok(z.timestamp());
    }
    // A day (a date, `today`, `yesterday`) and an optional time of day; a time of day alone
    // is today's.
    let (day, time) = match t.split_once(' ') {
        Some((d, tod)) if !d.contains(':') => (Some(d), Some(tod.trim())),
        _ if t.len() > 11 && matches!(t.as_bytes()[10], b'T' | b't') => {
            (Some(&t[..10]), Some(&t[11..]))
        }
        _ if t.contains(':') => (None, Some(t)),
        _ => (Some(t), None),
    };
    let today = now.date();
    let date = match day.map(str::to_ascii_lowercase).as_deref() {
        None | Some("today") => Ok(today),
        Some("yesterday") => today.yesterday(),
        Some(d) => d.parse::<civil::Date>(),
    };
    let civil = date.and_then(|d| {
        let tod = match time {
            None => civil::Time::midnight(),
            // Digits, colons and a fraction only: an offset or a zone would be dropped.
            Some(x)
                if !x
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b':' || b == b'.') =>
            {
                "not a time of day".parse::<civil::Time>()?
            }
            // `8:30` as well as `08:30`.
            Some(x) => {
                let padded = if x.find(':') == Some(1) {
                    format!("0{x}")
                } else {
                    x.to_string()
                };
                padded.parse::<civil::Time>()?
            }
        };
        Ok(d.to_datetime(tod))
    });
    match civil {
        Ok(dt) => dt
            .to_zoned(now.time_zone().clone())
            .map(|z| z.timestamp())
            .map_err(|e| bad(&format!("{e}"))),
        Err(e) => Err(bad(&format!("{e}"))),
    }
}

/// [`parse_time`] against the system clock and time zone.
pub fn parse_time_now(s: &str) -> Result<Timestamp> {
    parse_time(s, &Zoned::now().with_time_zone(TimeZone::system()))
}

/// Parses a duration: a number and a unit, `90s`, `5m`, `12h`, `30d`, `2w` (also `30 days`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::Invalid(format!(
            "cannot read duration {s:?}: use a number and a unit, like 90s, 5m, 12h, 30d or 2w"
        ))
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        // Zero needs no unit.
        "" if n == 0 => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(bad)
}

/// Seconds as the largest whole unit, the way durations are given (`7d`, `90d`, `1h`, `45s`).
pub fn format_secs(s: i64) -> String {
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= n && s % n == 0 {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// A time (seconds since the epoch) as UTC RFC 3339, `2026-12-06T11:40:22Z`.
pub fn format_time(secs: i64) -> String {
    Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| format!("@{secs}"))
}

/// Parses a size: bytes, or a number with a unit, `500K`, `64MiB`, `2GiB`, `1.5T` (units
/// are binary: K = KiB = 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::Invalid(format!(
            "cannot read size {s:?}: use bytes or a number and a unit, like 500M or 2GiB"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        for bad in ["", "G", "5 parsecs", "-1G", "1.2.3M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_duration("2 weeks").unwrap().as_secs(), 14 * 86_400);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("0").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("0s").unwrap().as_secs(), 0);
        for bad in ["", "d", "30", "3x", "-1d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    fn now() -> Zoned {
        "2026-11-22T12:00:00+00:00[UTC]".parse().unwrap()
    }

    fn p(s: &str) -> String {
        parse_time(s, &now()).unwrap().to_string()
    }

    #[test]
    fn forms() {
        assert_eq!(p("2026-11-20T14:00:00Z"), "2026-11-20T14:00:00Z");
        assert_eq!(p("2026-11-20T14:00:00+01:00"), "2026-11-20T13:00:00Z");
        assert_eq!(p("2026-11-20"), "2026-11-20T00:00:00Z");
        assert_eq!(p("2026-11-20 14:30"), "2026-11-20T14:30:00Z");
        assert_eq!(p("2026-11-20 14:30:15"), "2026-11-20T14:30:15Z");
        assert_eq!(p("3 days ago"), "2026-11-19T12:00:00Z");
        assert_eq!(p("-36h"), "2026-11-21T00:00:00Z");
        assert_eq!(p("2 weeks ago"), "2026-11-08T12:00:00Z");
        assert_eq!(p("now"), "2026-11-22T12:00:00Z");
        assert_eq!(p("today"), "2026-11-22T00:00:00Z");
        assert_eq!(p("yesterday"), "2026-11-21T00:00:00Z");
        assert_eq!(p("yesterday 18:00"), "2026-11-21T18:00:00Z");
        assert_eq!(p("Yesterday 8:30"), "2026-11-21T08:30:00Z");
        assert_eq!(p("8:30"), "2026-11-22T08:30:00Z");
        assert_eq!(p("18:00:15"), "2026-11-22T18:00:15Z");
        assert_eq!(p("2026-12-06 8:30"), "2026-12-06T08:30:00Z");
        assert_eq!(p("today 23:59"), "2026-11-22T23:59:00Z");
        assert_eq!(p("Today"), "2026-11-22T00:00:00Z");
        assert_eq!(p("2026-11-20T14:30"), "2026-11-20T14:30:00Z");
        assert_eq!(p("2026-11-20t14:30"), "2026-11-20T14:30:00Z");
        for bad in [
            "yesterday-ish",
            "2026-13-01",
            "",
            "-",
            "3 parsecs ago",
            "yesterday 25:00",
            "tomorrow 8:00",
            "8:61",
            "8:30+05:00",
            "yesterday 18:00-08:00",
        ] {
            assert!(parse_time(bad, &now()).is_err(), "{bad}");
        }
    }
}
