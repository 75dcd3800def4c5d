//! Fixed UTC windows (minute, day, week, month, and the endless one of a prepaid budget) computed from unix time, so every replica and every
//! restart agrees on where a window starts; no date crate, just the civil-calendar arithmetic.

const DAY: u64 = 86_400;

/// The windows that contain one instant, each as a number that grows by one per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Unix seconds / 60.
    pub minute: u64,
    /// Days since 1970-01-01.
    pub day: u64,
    /// Weeks (Monday to Sunday) since the one holding 1970-01-01, a Thursday.
    pub week: u64,
    /// `year * 12 + month - 1` of the UTC date.
    pub month: u64,
}

/// The length of window a counter or limit is kept over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// One UTC minute.
    Minute,
    /// One UTC day.
    Day,
    /// One UTC week, Monday 00:00 to Sunday 24:00.
    Week,
    /// One UTC calendar month.
    Month,
    /// Forever: a prepaid budget's one window, number 0, that never ends.
    Total,
}

/// 1970-01-01 was a Thursday: three days after the Monday its week started on.
const WEEK_SHIFT: u64 = 3;

impl Windows {
    /// The windows containing unix time `now`.
    pub fn at(now: u64) -> Windows {
        let day = now / DAY;
        let (y, m, _) = civil_from_days(day as i64);
        Windows {
            minute: now / 60,
            day,
            week: (day + WEEK_SHIFT) / 7,
            month: month_number(y, m),
        }
    }

    /// The number of the `span` window.
    pub fn of(&self, span: Span) -> u64 {
        match span {
            Span::Minute => self.minute,
            Span::Day => self.day,
            Span::Week => self.week,
            Span::Month => self.month,
            Span::Total => 0,
        }
    }
}

/// Unix time at which the `span` window containing `now` ends (`u64::MAX` for `Total`).
pub fn window_end(span: Span, now: u64) -> u64 {
    match span {
        Span::Minute => (now / 60 + 1) * 60,
        Span::Day => (now / DAY + 1) * DAY,
        Span::Week => ((now / DAY + WEEK_SHIFT) / 7 + 1) * 7 * DAY - WEEK_SHIFT * DAY,
        Span::Total => u64::MAX,
        Span::Month => {
            let (y, m, _) = civil_from_days((now / DAY) as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            // Unix time is never before 1970, so the first of next month is a positive day.
            days_from_civil(ny, nm, 1).max(0) as u64 * DAY
        }
    }
}

/// Whole seconds from `now` until the `span` window resets; at least 1.
pub fn reset_secs(span: Span, now: u64) -> u64 {
    window_end(span, now).saturating_sub(now).max(1)
}

fn month_number(year: i64, month: u32) -> u64 {
    (year.max(0) as u64) * 12 + u64::from(month) - 1
}

// One civil-calendar arithmetic for the whole program (the ledger's timestamps, `/usage`
// dates and these windows must agree on every date).
pub use crate::clock::{civil_from_days, days_from_civil};

#[cfg(test)]
mod tests {
    use crate::config::Limit;

    /// The window a limit is counted over; `None` for the in-flight count.
    fn span(l: Limit) -> Option<Span> {
        match l {
            Limit::RequestsPerMinute | Limit::TokensPerMinute => Some(Span::Minute),
            Limit::TokensPerDay | Limit::CostPerDay => Some(Span::Day),
            Limit::CostPerWeek => Some(Span::Week),
            Limit::TokensPerMonth | Limit::CostPerMonth => Some(Span::Month),
            Limit::CostTotal => Some(Span::Total),
            Limit::Concurrent => None,
        }
    }

    #[test]
    fn limit_kinds_have_spans() {
        assert_eq!(span(Limit::Concurrent), None);
        assert_eq!(span(Limit::TokensPerMonth), Some(Span::Month));
    }

    use super::*;

    /// Unix time of a UTC date and time, via the function under test's inverse.
    fn t(y: i64, mo: u32, d: u32, h: u64, mi: u64, s: u64) -> u64 {
        days_from_civil(y, mo, d) as u64 * DAY + h * 3600 + mi * 60 + s
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(59), (1970, 3, 1)); // 1970 is not a leap year
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29)); // 2000 is (divisible by 400)
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(civil_from_days(20_088), (2024, 12, 31));
        assert_eq!(civil_from_days(20_089), (2025, 1, 1));
        // 2100 is not a leap year (divisible by 100, not 400).
        assert_eq!(
            civil_from_days(days_from_civil(2100, 2, 28) + 1),
            (2100, 3, 1)
        );
    }

    #[test]
    fn days_round_trip_over_four_centuries() {
        let start = days_from_civil(1970, 1, 1);
        let mut expected = (1970, 1, 1);
        for day in start..start + 146_097 + 400 {
            let got = civil_from_days(day);
            assert_eq!(got, expected, "day {}", day);
            assert_eq!(days_from_civil(got.0, got.1, got.2), day);
            expected = next_date(expected);
        }
    }

    /// The next calendar date, the slow obvious way.
    fn next_date((y, m, d): (i64, u32, u32)) -> (i64, u32, u32) {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let len = match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if d < len {
            (y, m, d + 1)
        } else if m < 12 {
            (y, m + 1, 1)
        } else {
            (y + 1, 1, 1)
        }
    }

    #[test]
    fn windows_change_exactly_at_utc_boundaries() {
        let last = t(2024, 12, 31, 23, 59, 59);
        let first = last + 1;
        let (a, b) = (Windows::at(last), Windows::at(first));
        assert_eq!(b.minute, a.minute + 1);
        assert_eq!(b.day, a.day + 1);
        assert_eq!(b.month, a.month + 1);
        assert_eq!(a.month, 2024 * 12 + 11);
        assert_eq!(b.month, 2025 * 12);
        // Inside a minute nothing changes.
        assert_eq!(Windows::at(first + 59), b);
        assert_ne!(Windows::at(first + 60).minute, b.minute);
        // Leap day belongs to February; March starts a new month.
        let feb29 = Windows::at(t(2024, 2, 29, 12, 0, 0));
        let mar1 = Windows::at(t(2024, 3, 1, 0, 0, 0));
        assert_eq!(feb29.month, 2024 * 12 + 1);
        assert_eq!(mar1.month, feb29.month + 1);
        assert_eq!(mar1.day, feb29.day + 1);
    }

    #[test]
    fn weeks_run_monday_to_sunday() {
        // 2024-12-29 is a Sunday, 2024-12-30 a Monday.
        let sunday = Windows::at(t(2024, 12, 29, 23, 59, 59));
        let monday = Windows::at(t(2024, 12, 30, 0, 0, 0));
        assert_eq!(monday.week, sunday.week + 1);
        assert_eq!(Windows::at(t(2025, 1, 5, 23, 59, 59)).week, monday.week);
        assert_eq!(Windows::at(t(2025, 1, 6, 0, 0, 0)).week, monday.week + 1);
        assert_eq!(
            window_end(Span::Week, t(2025, 1, 1, 12, 0, 0)),
            t(2025, 1, 6, 0, 0, 0)
        );
        assert_eq!(
            window_end(Span::Week, t(2024, 12, 30, 0, 0, 0)),
            t(2025, 1, 6, 0, 0, 0)
        );
        assert_eq!(window_end(Span::Week, 0), t(1970, 1, 5, 0, 0, 0));
        assert_eq!(Windows::at(t(2025, 1, 1, 0, 0, 0)).of(Span::Total), 0);
        assert_eq!(window_end(Span::Total, 5), u64::MAX);
    }

    #[test]
    fn resets_count_to_the_next_boundary() {
        let now = t(2024, 2, 29, 23, 59, 30);
        assert_eq!(reset_secs(Span::Minute, now), 30);
        assert_eq!(reset_secs(Span::Day, now), 30);
        assert_eq!(reset_secs(Span::Month, now), 30);
        assert_eq!(window_end(Span::Month, now), t(2024, 3, 1, 0, 0, 0));
        // December rolls into January of the next year.
        let dec = t(2023, 12, 15, 0, 0, 0);
        assert_eq!(window_end(Span::Month, dec), t(2024, 1, 1, 0, 0, 0));
        assert_eq!(reset_secs(Span::Month, dec), 17 * DAY);
        // February of a common year has 28 days.
        assert_eq!(
            window_end(Span::Month, t(2023, 2, 1, 0, 0, 0)),
            t(2023, 3, 1, 0, 0, 0)
        );
        // Exactly on a boundary a whole window remains, never zero.
        let midnight = t(2025, 6, 1, 0, 0, 0);
        assert_eq!(reset_secs(Span::Minute, midnight), 60);
        assert_eq!(reset_secs(Span::Day, midnight), DAY);
        assert_eq!(reset_secs(Span::Month, midnight), 30 * DAY);
    }
}
