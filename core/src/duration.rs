//! Compact duration labels such as `1m`, `5m`, `15m`, `1h`: the names windows carry
//! in the API, the store and the config.

use std::time::Duration;

/// Renders `d` with the largest unit that divides it exactly (`300s` → `5m`).
pub fn label(d: Duration) -> String {
    let ms = d.as_millis();
    const UNITS: [(u128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses a duration written as humans do (`30s`, `5m`, `1h 30m`, `7d`).
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 30s, 5m or 1h ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_use_the_largest_exact_unit() {
        assert_eq!(label(Duration::from_secs(60)), "1m");
        assert_eq!(label(Duration::from_secs(300)), "5m");
        assert_eq!(label(Duration::from_secs(900)), "15m");
        assert_eq!(label(Duration::from_secs(3600)), "1h");
        assert_eq!(label(Duration::from_secs(90)), "90s");
        assert_eq!(label(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn parse_accepts_human_forms_and_rejects_garbage() {
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse("five minutes").is_err());
    }
}

/// Serde for durations as labels (`30s`, `7d`) so that `pulse config` prints what
/// people write, instead of humantime's `2months 29days 2h 52m 48s` for 90 days.
pub mod as_label {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::label(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}
