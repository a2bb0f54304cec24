//! Quota days. Gemini's per-day quotas reset at midnight US/Pacific, so a
//! "day" is a calendar date in `America/Los_Angeles`, DST included.

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::America::Los_Angeles;

/// The Pacific calendar date at `now`: the key of the daily ledger.
pub fn pacific_day(now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&Los_Angeles).date_naive()
}

/// The instant the quota day containing `now` ends.
pub fn next_reset(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = pacific_day(now)
        .checked_add_days(Days::new(1))
        .expect("date in range");
    // Midnight exists on every date in Los Angeles: DST switches at 02:00.
    Los_Angeles
        .from_local_datetime(&tomorrow.and_hms_opt(0, 0, 0).expect("valid time"))
        .earliest()
        .expect("midnight exists in America/Los_Angeles")
        .with_timezone(&Utc)
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
            pacific_day(utc("2026-01-15T07:59:59Z")).to_string(),
            "2026-01-14"
        );
        assert_eq!(
            pacific_day(utc("2026-01-15T08:00:00Z")).to_string(),
            "2026-01-15"
        );
        assert_eq!(
            next_reset(utc("2026-01-15T12:00:00Z")),
            utc("2026-01-16T08:00:00Z")
        );
        // PDT is UTC-7: midnight is 07:00 UTC.
        assert_eq!(
            next_reset(utc("2026-07-01T12:00:00Z")),
            utc("2026-07-02T07:00:00Z")
        );
    }

    #[test]
    fn days_around_dst_changes_are_23_and_25_hours_long() {
        // 2026-03-08 springs forward, 2026-11-01 falls back.
        let start = next_reset(utc("2026-03-07T12:00:00Z"));
        assert_eq!(start, utc("2026-03-08T08:00:00Z"));
        assert_eq!((next_reset(start) - start).num_hours(), 23);
        let start = next_reset(utc("2026-10-31T12:00:00Z"));
        assert_eq!((next_reset(start) - start).num_hours(), 25);
    }
}
