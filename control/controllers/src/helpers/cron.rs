//! Standard cron schedules as CronJobs use them: five fields (minute, hour, day of
//! month, month, day of week; `*`, `?`, lists, ranges, steps, month and weekday names)
//! or a descriptor (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly`, `@every <duration>`), with the day rule of upstream's parser:
//! when both day fields are restricted a day matching either runs, else both must match.
//! Times are evaluated in a time zone (civil time, so `0 2 * * *` in a DST gap runs at
//! the first instant after it). The API server validates with `parse` and the CronJob
//! controller schedules with `next_after`, so they always agree.
//!
//! Pure code: no clock, no I/O.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A set of allowed values as bits, and whether the field was `*`/`?` (which matters
/// for the day rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn has(self, v: i8) -> bool {
        v >= 0 && self.bits & (1u64 << v) != 0
    }
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Fields {
        minute: Field,
        hour: Field,
        dom: Field,
        month: Field,
        dow: Field,
    },
    /// `@every`: a fixed delay (whole seconds, at least one).
    Every(i64),
}

const MONTHS: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const BOUNDS: [Bounds; 5] = [
    Bounds { min: 0, max: 59, names: &[] },
    Bounds { min: 0, max: 23, names: &[] },
    Bounds { min: 1, max: 31, names: &[] },
    Bounds { min: 1, max: 12, names: MONTHS },
    Bounds { min: 0, max: 6, names: DAYS },
];

fn value(s: &str, b: &Bounds) -> Result<u32> {
    if let Some(i) = b.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(b.min + i as u32);
    }
    s.parse::<u32>().map_err(|_| Error(format!("failed to parse int from {s}")))
}

fn field(expr: &str, b: &Bounds) -> Result<Field> {
    let mut out = Field { bits: 0, star: false };
    for part in expr.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s.parse::<u32>().map_err(|_| Error(format!("failed to parse int from {s}")))?)),
            None => (part, None),
        };
        let (mut star, single);
        let (lo, mut hi) = if range == "*" || range == "?" {
            (star, single) = (true, false);
            (b.min, b.max)
        } else {
            star = false;
            match range.split_once('-') {
                Some((a, z)) => {
                    single = false;
                    (value(a, b)?, value(z, b)?)
                }
                None => {
                    single = true;
                    let v = value(range, b)?;
                    (v, v)
                }
            }
        };
        if let Some(step) = step {
            if step == 0 {
                return Err(Error(format!("step of range should be a positive number: {part}")));
            }
            // "N/step" means "N-max/step".
            if single {
                hi = b.max;
            }
            if step > 1 {
                star = false;
            }
        }
        if lo < b.min {
            return Err(Error(format!("beginning of range ({lo}) below minimum ({}): {part}", b.min)));
        }
        if hi > b.max {
            return Err(Error(format!("end of range ({hi}) above maximum ({}): {part}", b.max)));
        }
        if lo > hi {
            return Err(Error(format!("beginning of range ({lo}) beyond end of range ({hi}): {part}")));
        }
        let step = step.unwrap_or(1);
        for v in (lo..=hi).step_by(step as usize) {
            out.bits |= 1u64 << v;
        }
        out.star |= star;
    }
    Ok(out)
}

/// A Go duration (`1h30m`, `90s`, `1.5h`) in whole seconds.
fn go_duration(s: &str) -> Option<i64> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&n| n > 0)?;
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += num * unit;
        rest = &rest[u..];
    }
    Some(((nanos / 1e9) as i64).max(1))
}

impl Schedule {
    /// Parses a standard schedule, as upstream's validation accepts it.
    pub fn parse(schedule: &str) -> Result<Self> {
        let s = schedule.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err(Error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into()));
        }
        let five = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if s.starts_with("@every ") => {
                let d = &s["@every ".len()..];
                return go_duration(d)
                    .map(Schedule::Every)
                    .ok_or_else(|| Error(format!("failed to parse duration {s}: invalid duration {d:?}")));
            }
            _ if s.starts_with('@') => return Err(Error(format!("unrecognized descriptor: {s}"))),
            _ => s,
        };
        let fields: Vec<&str> = five.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(Error(format!("expected exactly 5 fields, found {}: {s}", fields.len())));
        }
        let f = |i: usize| field(fields[i], &BOUNDS[i]);
        Ok(Schedule::Fields { minute: f(0)?, hour: f(1)?, dom: f(2)?, month: f(3)?, dow: f(4)? })
    }

    /// Whether a civil minute matches (always false for `@every`).
    fn matches(&self, dt: DateTime) -> bool {
        let Schedule::Fields { minute, hour, month, .. } = self else { return false };
        month.has(dt.month()) && self.day_matches(dt) && hour.has(dt.hour()) && minute.has(dt.minute())
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let Schedule::Fields { dom, dow, .. } = self else { return false };
        let d = dom.has(dt.day());
        let w = dow.has(dt.weekday().to_sunday_zero_offset());
        if dom.star || dow.star { d && w } else { d || w }
    }

    /// The first run strictly after `t`, evaluated in `tz`; `None` if none within five
    /// years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let Schedule::Fields { minute, hour, month, .. } = self else {
            let Schedule::Every(secs) = self else { return None };
            return Timestamp::from_second(t.as_second() + secs).ok();
        };
        let start = t.to_zoned(tz.clone()).datetime();
        let mut dt =
            start.with().second(0).subsec_nanosecond(0).build().ok()?.checked_add(Span::new().minutes(1)).ok()?;
        let last_year = start.year() + 5;
        while dt.year() <= last_year {
            if !month.has(dt.month()) {
                let first = dt.date().first_of_month();
                dt = first.checked_add(Span::new().months(1)).ok()?.to_datetime(jiff::civil::time(0, 0, 0, 0));
            } else if !self.day_matches(dt) {
                dt = dt.date().tomorrow().ok()?.to_datetime(jiff::civil::time(0, 0, 0, 0));
            } else if !hour.has(dt.hour()) {
                dt = dt.with().minute(0).build().ok()?.checked_add(Span::new().hours(1)).ok()?;
            } else if !minute.has(dt.minute()) {
                dt = dt.checked_add(Span::new().minutes(1)).ok()?;
            } else {
                let ts = tz.to_zoned(dt).ok()?.timestamp();
                if ts > t {
                    return Some(ts);
                }
                dt = dt.checked_add(Span::new().minutes(1)).ok()?;
            }
        }
        None
    }

    /// The latest run at or before `now`, looking back at most `limit_minutes`.
    fn latest_at_or_before(&self, now: Timestamp, tz: &TimeZone, limit_minutes: i64) -> Option<Timestamp> {
        let mut dt = now.to_zoned(tz.clone()).datetime().with().second(0).subsec_nanosecond(0).build().ok()?;
        for _ in 0..limit_minutes {
            if self.matches(dt) {
                let ts = tz.to_zoned(dt).ok()?.timestamp();
                if ts <= now {
                    return Some(ts);
                }
            }
            dt = dt.checked_sub(Span::new().minutes(1)).ok()?;
        }
        None
    }
}

/// Runs due in `(earliest, now]`: the latest one and how many there were (counting
/// stops at `cap + 1`, which is all a caller needs to say "too many").
pub fn missed(
    sched: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
    cap: u32,
) -> (Option<Timestamp>, u32) {
    if let Schedule::Every(secs) = sched {
        let n = (now.as_second() - earliest.as_second()).max(0) / secs;
        let latest = (n > 0).then(|| Timestamp::from_second(earliest.as_second() + n * secs).ok()).flatten();
        return (latest, n.min(i64::from(cap) + 1) as u32);
    }
    let (mut latest, mut count, mut t) = (None, 0u32, earliest);
    while count <= cap {
        match sched.next_after(t, tz) {
            Some(n) if n <= now => {
                latest = Some(n);
                count += 1;
                t = n;
            }
            _ => return (latest, count),
        }
    }
    // Too many to walk: look back from now instead (within the span since earliest).
    let span = (now.as_second() - earliest.as_second()) / 60 + 1;
    (sched.latest_at_or_before(now, tz, span).or(latest), count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(s: &str, from: &str, tz: &str) -> String {
        let tz = TimeZone::get(tz).unwrap();
        let ts = Schedule::parse(s).unwrap().next_after(at(from), &tz).unwrap();
        ts.to_zoned(tz).strftime("%Y-%m-%dT%H:%M%:z").to_string()
    }

    #[test]
    fn parses_what_upstream_accepts() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 1 1 *",
            "0-59/15 1,2,3 ? jan-dec mon-fri",
            "5/10 * * * SUN",
            "@hourly",
            "@every 1h30m",
            "@every 90s",
            "@every 1.5h",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "@often",
            "@every x",
            "TZ=UTC * * * * *",
            "a * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        let e = Schedule::parse("* * * *").unwrap_err().to_string();
        assert_eq!(e, "expected exactly 5 fields, found 4: * * * *");
    }

    #[test]
    fn next_runs() {
        assert_eq!(next("* * * * *", "2024-03-01T10:00:00Z", "UTC"), "2024-03-01T10:01+00:00");
        assert_eq!(next("* * * * *", "2024-03-01T10:00:30Z", "UTC"), "2024-03-01T10:01+00:00");
        assert_eq!(next("*/15 * * * *", "2024-03-01T10:01:00Z", "UTC"), "2024-03-01T10:15+00:00");
        assert_eq!(next("@hourly", "2024-03-01T10:01:00Z", "UTC"), "2024-03-01T11:00+00:00");
        assert_eq!(next("@daily", "2024-12-31T23:59:00Z", "UTC"), "2025-01-01T00:00+00:00");
        assert_eq!(next("0 0 29 2 *", "2024-03-01T00:00:00Z", "UTC"), "2028-02-29T00:00+00:00");
        assert_eq!(next("30 9 * * mon", "2024-03-01T00:00:00Z", "UTC"), "2024-03-04T09:30+00:00");
        // Both day fields restricted: either matches (the 10th, a Sunday, or a Monday).
        assert_eq!(next("0 0 10 * mon", "2024-03-05T00:00:00Z", "UTC"), "2024-03-10T00:00+00:00");
        assert_eq!(next("0 0 15 * mon", "2024-03-05T00:00:00Z", "UTC"), "2024-03-11T00:00+00:00");
        // One is `*`: both must.
        assert_eq!(next("0 0 * * 1", "2024-03-05T00:00:00Z", "UTC"), "2024-03-11T00:00+00:00");
        // `*/1` keeps the star; `*/2` does not.
        assert_eq!(next("0 0 */2 * mon", "2024-03-05T00:00:00Z", "UTC"), "2024-03-05T00:00+00:00".replace("05", "07"));
        assert!(
            Schedule::parse("0 0 30 2 *").unwrap().next_after(at("2024-01-01T00:00:00Z"), &TimeZone::UTC).is_none()
        );
    }

    #[test]
    fn time_zones_and_dst() {
        assert_eq!(next("0 9 * * *", "2024-03-01T12:00:00Z", "Asia/Tokyo"), "2024-03-02T09:00+09:00");
        // 02:30 does not exist on 2024-03-10 in New York: the run moves past the gap.
        assert_eq!(next("30 2 * * *", "2024-03-09T12:00:00Z", "America/New_York"), "2024-03-10T03:30-04:00");
        assert_eq!(next("0 12 * * *", "2024-03-10T12:00:00Z", "America/New_York"), "2024-03-10T12:00-04:00");
    }

    #[test]
    fn every() {
        let s = Schedule::parse("@every 1h30m").unwrap();
        assert_eq!(s, Schedule::Every(5400));
        assert_eq!(s.next_after(at("2024-03-01T10:00:00Z"), &TimeZone::UTC), Some(at("2024-03-01T11:30:00Z")));
        let (latest, n) = missed(&s, &TimeZone::UTC, at("2024-03-01T10:00:00Z"), at("2024-03-01T14:00:00Z"), 100);
        assert_eq!((latest, n), (Some(at("2024-03-01T13:00:00Z")), 2));
    }

    #[test]
    fn missed_runs() {
        let s = Schedule::parse("* * * * *").unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(missed(&s, &utc, at("2024-03-01T10:00:10Z"), at("2024-03-01T10:00:50Z"), 100), (None, 0));
        assert_eq!(
            missed(&s, &utc, at("2024-03-01T10:00:10Z"), at("2024-03-01T10:03:00Z"), 100),
            (Some(at("2024-03-01T10:03:00Z")), 3)
        );
        // A day of missed minutes: more than the cap, and still the latest.
        assert_eq!(
            missed(&s, &utc, at("2024-03-01T10:00:00Z"), at("2024-03-02T10:00:30Z"), 100),
            (Some(at("2024-03-02T10:00:00Z")), 101)
        );
    }
}
