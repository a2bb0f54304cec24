//! Quota days. Gemini's per-day quotas reset at midnight US/Pacific, so a
//! quota day is a calendar date in `America/Los_Angeles`, DST included.

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::America::Los_Angeles;
use std::fmt;
use std::str::FromStr;

/// The Pacific calendar date that a request counts against: the key of the
/// daily ledger. Shown and stored as `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuotaDay(NaiveDate);

impl QuotaDay {
    /// The quota day at `now`.
    pub fn of(now: DateTime<Utc>) -> QuotaDay {
        QuotaDay(now.with_timezone(&Los_Angeles).date_naive())
    }

    /// The quota day now.
    pub fn today() -> QuotaDay {
        QuotaDay::of(Utc::now())
    }

    /// The day before this one.
    pub fn previous(self) -> QuotaDay {
        QuotaDay(self.0.pred_opt().unwrap_or(self.0))
    }

    /// The instant this day ends and its quotas reset.
    pub fn reset(self) -> DateTime<Utc> {
        let Some(tomorrow) = self.0.checked_add_days(Days::new(1)) else {
            return DateTime::<Utc>::MAX_UTC;
        };
        // Midnight exists on every date in Los Angeles: DST switches at 02:00.
        Los_Angeles
            .from_local_datetime(&tomorrow.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map_or(DateTime::<Utc>::MAX_UTC, |t| t.with_timezone(&Utc))
    }
}

impl fmt::Display for QuotaDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.format("%Y-%m-%d").fmt(f)
    }
}

impl serde::Serialize for QuotaDay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for QuotaDay {
    type Err = chrono::ParseError;

    fn from_str(s: &str) -> Result<QuotaDay, chrono::ParseError> {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").map(QuotaDay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_day_turns_at_pacific_midnight_in_winter_and_summer() {
        // PST is UTC-8: midnight is 08:00 UTC.
        assert_eq!(
            QuotaDay::of(utc("2026-01-15T07:59:59Z")).to_string(),
            "2026-01-14"
        );
        assert_eq!(
            QuotaDay::of(utc("2026-01-15T08:00:00Z")).to_string(),
            "2026-01-15"
        );
        assert_eq!(
            QuotaDay::of(utc("2026-01-15T12:00:00Z")).reset(),
            utc("2026-01-16T08:00:00Z")
        );
        // PDT is UTC-7: midnight is 07:00 UTC.
        assert_eq!(
            QuotaDay::of(utc("2026-07-01T12:00:00Z")).reset(),
            utc("2026-07-02T07:00:00Z")
        );
    }

    #[test]
    fn days_around_dst_changes_are_23_and_25_hours_long() {
        // 2026-03-08 springs forward, 2026-11-01 falls back.
        let start = QuotaDay::of(utc("2026-03-07T12:00:00Z")).reset();
        assert_eq!(start, utc("2026-03-08T08:00:00Z"));
        assert_eq!((QuotaDay::of(start).reset() - start).num_hours(), 23);
        let start = QuotaDay::of(utc("2026-10-31T12:00:00Z")).reset();
        assert_eq!((QuotaDay::of(start).reset() - start).num_hours(), 25);
    }

    #[test]
    fn days_read_back_as_written() {
        let day = QuotaDay::of(utc("2026-11-29T04:00:00Z"));
        assert_eq!(day.to_string(), "2026-11-28");
        assert_eq!("2026-11-28".parse::<QuotaDay>().unwrap(), day);
        assert_eq!(day.previous().to_string(), "2026-11-27");
        assert!("28/11/2026".parse::<QuotaDay>().is_err());
    }
}
