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
use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::point::Tags;

/// Stable 64-bit identity of a series (see the module docs for the exact recipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeriesId(pub u64);

const TAG_SEP: u8 = 0x1F;
const VALUE_SEP: u8 = 0x1E;
/// Series up to this many bytes (nearly all) are hashed from a stack buffer.
const INLINE_BYTES: usize = 256;

/// Hands the bytes of the id recipe (module docs) to `sink`, in order.
#[inline]
fn feed(metric: &str, tags: &Tags, mut sink: impl FnMut(&[u8])) {
    sink(metric.as_bytes());
    for (key, value) in tags {
        sink(&[TAG_SEP]);
        sink(key.as_bytes());
        sink(&[VALUE_SEP]);
        sink(value.as_bytes());
    }
}

impl SeriesId {
    /// Computes the id of `metric` with `tags`.
    ///
    /// This runs once per point in the processor, so it allocates nothing: the
    /// bytes go into a stack buffer and are hashed in one shot (the fastest
    /// form of xxh64 for short input), or, for the rare series longer than the
    /// buffer, are streamed into the hasher. Both give xxh64 of the same
    /// concatenation, so the id does not depend on the path taken.
    pub fn of(metric: &str, tags: &Tags) -> SeriesId {
        let mut buffer = [0u8; INLINE_BYTES];
        let mut len = 0;
        let mut fits = true;
        feed(metric, tags, |part| {
            match buffer.get_mut(len..len + part.len()) {
                Some(slot) if fits => slot.copy_from_slice(part),
                _ => fits = false,
            }
            len += part.len();
        });
        if fits {
            return SeriesId(xxh64(&buffer[..len], 0));
        }
        let mut hasher = Xxh64::new(0);
        feed(metric, tags, |part| hasher.update(part));
        SeriesId(hasher.digest())
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

    /// The recipe of the module docs, spelled out: one buffer, one-shot xxh64.
    fn concatenated(metric: &str, tags: &Tags) -> SeriesId {
        let mut bytes = metric.as_bytes().to_vec();
        for (key, value) in tags {
            bytes.push(TAG_SEP);
            bytes.extend_from_slice(key.as_bytes());
            bytes.push(VALUE_SEP);
            bytes.extend_from_slice(value.as_bytes());
        }
        SeriesId(xxhash_rust::xxh64::xxh64(&bytes, 0))
    }

    #[test]
    fn streamed_id_equals_the_documented_concatenation() {
        // Lengths around xxh64's 32-byte stripes and past the stack buffer.
        let long = "x".repeat(400);
        for metric in [
            "",
            "m",
            "cpu_usage",
            &long[..70],
            &long[..250],
            &long[..300],
        ] {
            for n in 0..5 {
                let pairs: Vec<(String, String)> = (0..n)
                    .map(|i| {
                        (
                            format!("key{i}{}", &long[..i * 7]),
                            format!("v{}", &long[..i * 13]),
                        )
                    })
                    .collect();
                let tags: Tags = pairs.into_iter().collect();
                assert_eq!(
                    SeriesId::of(metric, &tags),
                    concatenated(metric, &tags),
                    "{metric} {tags:?}"
                );
            }
        }
    }

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
