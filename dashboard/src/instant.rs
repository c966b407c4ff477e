//! Instants as the API writes and reads them: Unix seconds or RFC 3339 in, RFC 3339
//! UTC out, milliseconds inside.

use pulse_core::TimestampMs;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the years RFC 3339
/// can write, so every instant the API accepts can also be printed back.
const MIN_SECS: f64 = -62_167_219_200.0;
const MAX_SECS: f64 = 253_402_300_799.0;

/// Parses Unix seconds (integer or fractional, like point timestamps) or an RFC 3339
/// date-time with any offset.
pub fn parse(text: &str) -> Result<TimestampMs, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        // `contains` is false for NaN and the infinities too.
        if !(MIN_SECS..=MAX_SECS).contains(&secs) {
            return Err(format!(
                "`{text}` is out of range: Unix seconds must lie between years 0 and 9999"
            ));
        }
        return Ok((secs * 1000.0).round() as TimestampMs);
    }
    let instant = OffsetDateTime::parse(text, &Rfc3339).map_err(|error| {
        // A `+` offset sent unencoded in a query string arrives as a space.
        let hint = if text.contains(' ') {
            " (write a `+` offset as %2B in a URL)"
        } else {
            ""
        };
        format!(
            "`{text}` is neither Unix seconds nor an RFC 3339 date-time like 2024-07-17T06:45:00Z: {error}{hint}"
        )
    })?;
    Ok(instant.unix_timestamp_nanos().div_euclid(1_000_000) as TimestampMs)
}

/// Formats `ms` as RFC 3339 in UTC (`2024-07-17T06:45:00Z`, with a fraction only
/// when there is one), or `None` outside the years RFC 3339 can write.
pub fn rfc3339(ms: TimestampMs) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_integer_and_fractional_become_milliseconds() {
        assert_eq!(parse("1721198700"), Ok(1_721_198_700_000));
        assert_eq!(parse(" 1721198700.25 "), Ok(1_721_198_700_250));
        assert_eq!(parse("0"), Ok(0));
    }

    #[test]
    fn rfc3339_with_any_offset_becomes_utc_milliseconds() {
        assert_eq!(parse("2024-07-17T06:45:00Z"), Ok(1_721_198_700_000));
        assert_eq!(parse("2024-07-17T08:45:00+02:00"), Ok(1_721_198_700_000));
        assert_eq!(parse("2024-07-17T06:45:00.5Z"), Ok(1_721_198_700_500));
    }

    #[test]
    fn garbage_and_out_of_range_instants_are_errors_not_panics() {
        for bad in [
            "",
            "yesterday",
            "NaN",
            "inf",
            "1e300",
            "-1e300",
            "2024-13-01T00:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let err = parse("2024-07-17T08:45:00 02:00").unwrap_err();
        assert!(err.contains("%2B"), "{err}");
    }

    #[test]
    fn formats_utc_with_a_fraction_only_when_needed() {
        assert_eq!(
            rfc3339(1_721_198_700_000).as_deref(),
            Some("2024-07-17T06:45:00Z")
        );
        assert_eq!(
            rfc3339(1_721_198_700_250).as_deref(),
            Some("2024-07-17T06:45:00.25Z")
        );
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(TimestampMs::MAX), None);
    }

    #[test]
    fn every_accepted_instant_prints_back() {
        for text in ["-62167219200", "253402300799", "2024-02-29T23:59:59.999Z"] {
            let ms = parse(text).unwrap();
            let printed = rfc3339(ms).unwrap();
            assert_eq!(parse(&printed), Ok(ms), "{text} -> {printed}");
        }
    }
}
