//! Validation of incoming points: names, tags, values and timestamps.
//!
//! Every rejection names the point's index in its batch and the offending field,
//! so a client can fix exactly what was wrong.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TimestampMs;
use crate::point::{MetricKind, Point, Tags};
use crate::sketch::Distribution;

/// Limits on what a point may look like. Part of the config (`[limits]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest metric name accepted, in bytes.
    pub max_name_len: usize,
    /// Most tags one point may carry.
    pub max_tags: usize,
    /// Longest tag key, in bytes.
    pub max_tag_key_len: usize,
    /// Longest tag value, in bytes.
    pub max_tag_value_len: usize,
    /// Oldest timestamp accepted, relative to the receiver's clock.
    #[serde(with = "crate::duration::as_label")]
    pub max_past: Duration,
    /// Furthest future timestamp accepted (clock skew allowance).
    #[serde(with = "crate::duration::as_label")]
    pub max_future: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_len: 200,
            max_tags: 32,
            max_tag_key_len: 100,
            max_tag_value_len: 256,
            max_past: Duration::from_secs(24 * 3600),
            max_future: Duration::from_secs(600),
        }
    }
}

/// Why one point of a request was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"index": 3, "field": "value", "reason": "invalid_value", "message": "`value` must be a finite number"}))]
pub struct PointError {
    /// Position of the point in its batch (0 for a single point).
    #[schema(example = 3)]
    pub index: usize,
    /// The field at fault (`metric_name`, `value`, `timestamp`, `tags`, `tags.<key>`),
    /// or absent when the point as a whole is malformed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "value")]
    pub field: Option<String>,
    /// Why, as a stable code (also the `reason` label of the rejected-points metric).
    #[schema(inline, example = "invalid_value")]
    pub reason: RejectReason,
    /// What is wrong with the point, for a person.
    #[schema(example = "`value` must be a finite number")]
    pub message: String,
}

/// Rejection reasons, also used as the `reason` label of the rejected-points metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Malformed,
    InvalidName,
    InvalidValue,
    InvalidTimestamp,
    TooOld,
    TooNew,
    TooManyTags,
    InvalidTag,
    /// A new series while the gateway already admits its most active series.
    TooManySeries,
}

impl RejectReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Malformed,
        RejectReason::InvalidName,
        RejectReason::InvalidValue,
        RejectReason::InvalidTimestamp,
        RejectReason::TooOld,
        RejectReason::TooNew,
        RejectReason::TooManyTags,
        RejectReason::InvalidTag,
        RejectReason::TooManySeries,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::InvalidName => "invalid_name",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::TooOld => "too_old",
            RejectReason::TooNew => "too_new",
            RejectReason::TooManyTags => "too_many_tags",
            RejectReason::InvalidTag => "invalid_tag",
            RejectReason::TooManySeries => "too_many_series",
        }
    }
}

impl PointError {
    pub fn new(
        index: usize,
        field: Option<&str>,
        reason: RejectReason,
        message: impl Into<String>,
    ) -> Self {
        PointError {
            index,
            field: field.map(str::to_string),
            reason,
            message: message.into(),
        }
    }
}

/// A point as it came off the wire, before validation. Timestamps are optional
/// (absent means "now") and may be fractional seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct UncheckedPoint {
    pub metric: String,
    pub tags: Tags,
    /// The number; ignored for a histogram point (its `value` becomes the
    /// mean of its observations).
    pub value: f64,
    pub timestamp_secs: Option<f64>,
    /// What the number means; [`MetricKind::Gauge`] unless the source knows.
    pub kind: MetricKind,
    /// The observations of a histogram point; a point with a sketch is a
    /// histogram whatever `kind` says, unless `kind` names another value
    /// kind (refused).
    pub sketch: Option<Box<Distribution>>,
}

impl UncheckedPoint {
    /// A gauge point as a source read it (set `kind` or `sketch` after for
    /// other kinds).
    pub fn gauge(
        metric: impl Into<String>,
        tags: Tags,
        value: f64,
        timestamp_secs: Option<f64>,
    ) -> UncheckedPoint {
        UncheckedPoint {
            metric: metric.into(),
            tags,
            value,
            timestamp_secs,
            kind: MetricKind::Gauge,
            sketch: None,
        }
    }
}

/// Checks `point` against `limits`, with `now_ms` as the receiver's clock.
pub fn validate(
    index: usize,
    point: UncheckedPoint,
    limits: &Limits,
    now_ms: TimestampMs,
) -> Result<Point, PointError> {
    let err = |field: &str, reason, msg: String| PointError::new(index, Some(field), reason, msg);
    check_name(&point.metric, limits.max_name_len)
        .map_err(|m| err("metric_name", RejectReason::InvalidName, m))?;
    let (kind, value) = match &point.sketch {
        None if point.kind == MetricKind::Histogram => {
            return Err(err(
                "sketch",
                RejectReason::InvalidValue,
                "is required for a point of kind `histogram`".into(),
            ));
        }
        None => (point.kind, point.value),
        Some(_) if !matches!(point.kind, MetricKind::Gauge | MetricKind::Histogram) => {
            return Err(err(
                "kind",
                RejectReason::InvalidValue,
                format!(
                    "is `{}`, but a point with a sketch is a `histogram`",
                    point.kind
                ),
            ));
        }
        Some(sketch) => {
            if let Some(problem) = sketch.problem() {
                return Err(err("sketch", RejectReason::InvalidValue, problem));
            }
            (MetricKind::Histogram, sketch.mean())
        }
    };
    if !value.is_finite() {
        return Err(err(
            "value",
            RejectReason::InvalidValue,
            "must be a finite number".into(),
        ));
    }
    if point.tags.len() > limits.max_tags {
        return Err(err(
            "tags",
            RejectReason::TooManyTags,
            format!(
                "{} tags given, at most {} allowed",
                point.tags.len(),
                limits.max_tags
            ),
        ));
    }
    for (key, value) in &point.tags {
        check_tag_key(key, limits.max_tag_key_len).map_err(|m| {
            err(
                "tags",
                RejectReason::InvalidTag,
                format!("tag key `{key}` {m}"),
            )
        })?;
        check_tag_value(value, limits.max_tag_value_len)
            .map_err(|m| err(&format!("tags.{key}"), RejectReason::InvalidTag, m))?;
    }
    let timestamp_ms = match point.timestamp_secs {
        None => now_ms,
        Some(secs) if !(0.0..=1e13).contains(&secs) => {
            return Err(err(
                "timestamp",
                RejectReason::InvalidTimestamp,
                "must be Unix seconds (integer or fractional)".into(),
            ));
        }
        Some(secs) => (secs * 1000.0).round() as i64,
    };
    let oldest = now_ms - limits.max_past.as_millis() as i64;
    let newest = now_ms + limits.max_future.as_millis() as i64;
    if timestamp_ms < oldest {
        return Err(err(
            "timestamp",
            RejectReason::TooOld,
            format!(
                "is {} in the past; at most {} is accepted (limits.max_past)",
                crate::duration::label(Duration::from_millis(
                    (now_ms - timestamp_ms) as u64 / 1000 * 1000
                )),
                crate::duration::label(limits.max_past)
            ),
        ));
    }
    if timestamp_ms > newest {
        return Err(err(
            "timestamp",
            RejectReason::TooNew,
            format!(
                "is in the future beyond the allowed clock skew of {} (limits.max_future)",
                crate::duration::label(limits.max_future)
            ),
        ));
    }
    Ok(Point {
        metric: point.metric,
        tags: point.tags,
        value,
        timestamp_ms,
        kind,
        sketch: point.sketch,
    })
}

/// Metric names: `[A-Za-z_][A-Za-z0-9_.:-]*`, the Prometheus alphabet plus the
/// dots and dashes StatsD users write.
fn check_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > max_len {
        return Err(format!(
            "is {} bytes long, at most {max_len} allowed",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or('_');
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(format!("`{name}` must start with a letter or `_`"));
    }
    if let Some(bad) =
        chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(format!(
            "`{name}` contains `{bad}`; use letters, digits, `_`, `.`, `:` and `-`"
        ));
    }
    Ok(())
}

/// Tag keys: `[A-Za-z_][A-Za-z0-9_.-]*`.
fn check_tag_key(key: &str, max_len: usize) -> Result<(), String> {
    if key.is_empty() || key.len() > max_len {
        return Err(format!("must be 1 to {max_len} bytes long"));
    }
    let mut chars = key.chars();
    let first = chars.next().unwrap_or('_');
    if !(first.is_ascii_alphabetic() || first == '_')
        || chars.any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(
            "must start with a letter or `_` and use letters, digits, `_`, `.` and `-`".into(),
        );
    }
    Ok(())
}

/// Tag values: any UTF-8 text without control characters, 1 to `max_len` bytes.
fn check_tag_value(value: &str, max_len: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max_len {
        return Err(format!(
            "value must be 1 to {max_len} bytes long, got {}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("value must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_721_199_945_000;

    fn point(metric: &str, value: f64, ts: Option<f64>, tags: &[(&str, &str)]) -> UncheckedPoint {
        UncheckedPoint::gauge(
            metric,
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
            ts,
        )
    }

    #[test]
    fn kinds_and_sketches_must_agree() {
        let mut counter = point("requests_total", 7.0, None, &[]);
        counter.kind = MetricKind::Counter;
        let p = validate(0, counter, &Limits::default(), NOW).unwrap();
        assert_eq!(
            (p.kind, p.value, p.sketch),
            (MetricKind::Counter, 7.0, None)
        );

        let mut histogram = point("req_seconds", f64::NAN, None, &[]);
        histogram.sketch = Some(Box::new(Distribution::of(&[1.0, 3.0])));
        let p = validate(0, histogram.clone(), &Limits::default(), NOW).unwrap();
        assert_eq!((p.kind, p.value), (MetricKind::Histogram, 2.0));

        histogram.kind = MetricKind::Counter;
        assert_eq!(reject(histogram.clone()).field.as_deref(), Some("kind"));
        histogram.kind = MetricKind::Histogram;
        histogram.sketch = Some(Box::new(Distribution::new()));
        assert_eq!(reject(histogram.clone()).field.as_deref(), Some("sketch"));
        histogram.sketch = None;
        assert_eq!(reject(histogram).field.as_deref(), Some("sketch"));
    }

    fn reject(p: UncheckedPoint) -> PointError {
        validate(4, p, &Limits::default(), NOW).unwrap_err()
    }

    #[test]
    fn the_original_contract_point_is_valid() {
        let p = validate(
            0,
            point(
                "cpu_usage",
                92.5,
                Some(1_721_199_945.0),
                &[("host", "web-01")],
            ),
            &Limits::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(p.timestamp_ms, NOW);
        assert_eq!(p.tags["host"], "web-01");
    }

    #[test]
    fn fractional_seconds_keep_milliseconds_and_absent_means_now() {
        let p = validate(
            0,
            point("m", 1.0, Some(1_721_199_940.125), &[]),
            &Limits::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(p.timestamp_ms, 1_721_199_940_125);
        let p = validate(0, point("m", 1.0, None, &[]), &Limits::default(), NOW).unwrap();
        assert_eq!(p.timestamp_ms, NOW);
    }

    #[test]
    fn invalid_names_are_rejected_with_index_and_field() {
        for name in ["", "9lives", "cpu usage", "cpu\u{1f}x", &"a".repeat(201)] {
            let e = reject(point(name, 1.0, None, &[]));
            assert_eq!(
                (e.index, e.field.as_deref(), e.reason),
                (4, Some("metric_name"), RejectReason::InvalidName),
                "{name}"
            );
        }
        for name in ["cpu_usage", "http.requests:rate", "_x-y"] {
            assert!(
                validate(0, point(name, 1.0, None, &[]), &Limits::default(), NOW).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn non_finite_values_are_rejected() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                reject(point("m", v, None, &[])).reason,
                RejectReason::InvalidValue
            );
        }
    }

    #[test]
    fn timestamps_far_in_the_past_or_future_are_rejected() {
        assert_eq!(
            reject(point("m", 1.0, Some(1_721_199_945.0 - 2.0 * 86400.0), &[])).reason,
            RejectReason::TooOld
        );
        assert_eq!(
            reject(point("m", 1.0, Some(1_721_199_945.0 + 3600.0), &[])).reason,
            RejectReason::TooNew
        );
        assert_eq!(
            reject(point("m", 1.0, Some(-5.0), &[])).reason,
            RejectReason::InvalidTimestamp
        );
        assert_eq!(
            reject(point("m", 1.0, Some(1e300), &[])).reason,
            RejectReason::InvalidTimestamp
        );
    }

    #[test]
    fn too_many_or_too_long_tags_are_rejected() {
        let many: Vec<(String, String)> = (0..33)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            reject(point("m", 1.0, None, &many)).reason,
            RejectReason::TooManyTags
        );
        let long = "v".repeat(257);
        let e = reject(point("m", 1.0, None, &[("host", &long)]));
        assert_eq!(
            (e.reason, e.field.as_deref()),
            (RejectReason::InvalidTag, Some("tags.host"))
        );
        assert_eq!(
            reject(point("m", 1.0, None, &[("bad key", "v")])).reason,
            RejectReason::InvalidTag
        );
        assert_eq!(
            reject(point("m", 1.0, None, &[("k", "")])).reason,
            RejectReason::InvalidTag
        );
        assert_eq!(
            reject(point("m", 1.0, None, &[("k", "a\nb")])).reason,
            RejectReason::InvalidTag
        );
    }
}
