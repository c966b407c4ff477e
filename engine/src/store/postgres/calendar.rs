//! Days of the UTC calendar, for naming and bounding daily partitions. A
//! partition is named by its date (`raw_points_p20260129`) and bounded by
//! the milliseconds of that day, so the store converts between a day number
//! since 1970-01-01 and a (proleptic Gregorian) date both ways.

use pulse_core::TimestampMs;

/// One partition (or chunk) per UTC day of the time column, in milliseconds.
pub(super) const DAY_MS: i64 = 86_400_000;

/// `(year, month, day)` of a day number since 1970-01-01 (proleptic Gregorian).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The day number since 1970-01-01 of a date (proleptic Gregorian).
pub(super) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC day holding `ts_ms`.
pub(super) fn day_of(ts_ms: TimestampMs) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// Today's UTC day by this machine's clock.
pub(super) fn today() -> i64 {
    day_of(pulse_core::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for day in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(day_of(-1), -1);
    }
}
