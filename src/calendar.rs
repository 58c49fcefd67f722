//! Civil dates in UTC for retention: days, ISO weeks, months and years as
//! numbered periods, and when each begins. Pure arithmetic (Howard
//! Hinnant's algorithms), valid before 1970 as after it.

/// Seconds in a day.
pub const DAY_SECS: i64 = 86_400;

/// The civil date (year, month 1-12, day 1-31) of a day counted from
/// 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day, counted from 1970-01-01, of a civil date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A kind of calendar period: its numbering is dense (consecutive periods
/// have consecutive numbers), so "N periods later" is arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC day.
    Day,
    /// An ISO week, Monday to Sunday.
    Week,
    /// A calendar month.
    Month,
    /// A calendar year.
    Year,
}

impl Period {
    /// The number of the period that holds `secs` (seconds since the epoch).
    pub fn of(self, secs: i64) -> i64 {
        let days = secs.div_euclid(DAY_SECS);
        match self {
            Period::Day => days,
            // 1970-01-01 was a Thursday: day 4 is the first Monday.
            Period::Week => (days + 3).div_euclid(7),
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + m - 1
            }
            Period::Year => civil_from_days(days).0,
        }
    }

    /// When period number `n` begins (seconds since the epoch).
    pub fn start(self, n: i64) -> i64 {
        let days = match self {
            Period::Day => n,
            Period::Week => n * 7 - 3,
            Period::Month => days_from_civil(n.div_euclid(12), n.rem_euclid(12) + 1, 1),
            Period::Year => days_from_civil(n, 1, 1),
        };
        days.saturating_mul(DAY_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        // 2026-12-07 is a Monday: its week begins that day.
        let t = days_from_civil(2026, 12, 7) * DAY_SECS + 3600;
        assert_eq!(
            Period::Week.start(Period::Week.of(t)),
            days_from_civil(2026, 12, 7) * DAY_SECS
        );
        // The Sunday before belongs to the week before.
        assert_eq!(Period::Week.of(t - 2 * DAY_SECS), Period::Week.of(t) - 1);
        assert_eq!(
            Period::Month.start(Period::Month.of(t)),
            days_from_civil(2026, 12, 1) * DAY_SECS
        );
        assert_eq!(
            Period::Month.start(Period::Month.of(t) + 1),
            days_from_civil(2027, 1, 1) * DAY_SECS
        );
        assert_eq!(Period::Year.of(t), 2026);
    }

    proptest! {
        #[test]
        fn every_period_starts_where_its_number_begins(secs in -4_000_000_000i64..8_000_000_000) {
            let d = secs.div_euclid(DAY_SECS);
            let (y, m, dd) = civil_from_days(d);
            prop_assert_eq!(days_from_civil(y, m, dd), d);
            for p in [Period::Day, Period::Week, Period::Month, Period::Year] {
                let n = p.of(secs);
                prop_assert!(p.start(n) <= secs && secs < p.start(n + 1), "{:?}", p);
                prop_assert_eq!(p.of(p.start(n)), n);
                prop_assert_eq!(p.of(p.start(n + 1)), n + 1);
            }
            let w = Period::Week.start(Period::Week.of(secs)).div_euclid(DAY_SECS);
            // a Monday: 1970-01-05 was one
            prop_assert_eq!((w - 4).rem_euclid(7), 0);
        }
    }
}
