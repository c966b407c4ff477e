//! Series identity.
//!
//! A series is a metric name plus its sorted tags. Its id is
//! `xxh64(seed = 0)` over the bytes
//!
//! ```text
//! metric_name ( 0x1F tag_key 0x1E tag_value )*     -- tags sorted by key
//! ```
//!
//! Validation forbids control characters in names, keys and values, so the two
//! separators can never be forged by content. The id is the Kafka record key, so
//! it must never change across processes or versions: the unit tests pin values.

use serde::{Deserialize, Serialize};

use crate::point::Tags;

/// Stable 64-bit identity of a series (see the module docs for the exact recipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeriesId(pub u64);

const TAG_SEP: u8 = 0x1F;
const VALUE_SEP: u8 = 0x1E;

impl SeriesId {
    /// Computes the id of `metric` with `tags`.
    pub fn of(metric: &str, tags: &Tags) -> SeriesId {
        let mut bytes = Vec::with_capacity(
            metric.len()
                + tags
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 2)
                    .sum::<usize>(),
        );
        bytes.extend_from_slice(metric.as_bytes());
        for (key, value) in tags {
            bytes.push(TAG_SEP);
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(VALUE_SEP);
            bytes.extend_from_slice(value.as_bytes());
        }
        SeriesId(xxhash_rust::xxh64::xxh64(&bytes, 0))
    }

    /// The id as a signed integer, the form SQL databases store without loss.
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    /// Inverse of [`SeriesId::as_i64`].
    pub fn from_i64(v: i64) -> SeriesId {
        SeriesId(v as u64)
    }

    /// The partition this series lives on when a topic has `partitions` partitions.
    pub fn partition(self, partitions: u32) -> u32 {
        (self.0 % u64::from(partitions.max(1))) as u32
    }
}

impl std::fmt::Display for SeriesId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ids_are_pinned_across_versions() {
        assert_eq!(
            SeriesId::of("cpu_usage", &Tags::new()).to_string(),
            PINNED[0]
        );
        assert_eq!(
            SeriesId::of("cpu_usage", &tags(&[("host", "web-01"), ("env", "prod")])).to_string(),
            PINNED[1]
        );
        assert_eq!(
            SeriesId::of("http.requests", &tags(&[("code", "200")])).to_string(),
            PINNED[2]
        );
    }

    const PINNED: [&str; 3] = ["0d17bbacf32fe102", "fd263ed8571c05ea", "b7a079dff8dbdaa9"];

    #[test]
    fn tag_order_does_not_change_identity() {
        let a = tags(&[("a", "1"), ("b", "2")]);
        let mut b = Tags::new();
        b.insert("b".into(), "2".into());
        b.insert("a".into(), "1".into());
        assert_eq!(SeriesId::of("m", &a), SeriesId::of("m", &b));
    }

    #[test]
    fn moving_bytes_between_key_and_value_changes_identity() {
        assert_ne!(
            SeriesId::of("m", &tags(&[("ab", "c")])),
            SeriesId::of("m", &tags(&[("a", "bc")]))
        );
        assert_ne!(
            SeriesId::of("m", &tags(&[("a", "b")])),
            SeriesId::of("ma", &tags(&[("", "b")]))
        );
    }

    #[test]
    fn i64_round_trip_keeps_every_bit() {
        let id = SeriesId(u64::MAX - 7);
        assert_eq!(SeriesId::from_i64(id.as_i64()), id);
    }
}
