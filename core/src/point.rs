//! The metric point: one measurement of one series at one instant.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::TimestampMs;
use crate::series::SeriesId;
use crate::sketch::Distribution;

/// Tags of a series, kept sorted by key so that identity and rendering are stable.
pub type Tags = BTreeMap<String, String>;

/// What a point's number means, after Prometheus's and OpenTelemetry's
/// metric types. It decides what `increase`, `rate` and a `last` across
/// series answer; every other aggregation treats all kinds alike.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A value that goes up and down (the default).
    #[default]
    Gauge,
    /// A cumulative counter: a running total that only grows, except when
    /// its process restarts (a reset to a smaller value).
    Counter,
    /// A delta counter: each point is the increment since the previous one.
    DeltaCounter,
    /// A distribution of observations: the point carries a [`Distribution`]
    /// of the interval since the previous point of its series.
    Histogram,
}

impl MetricKind {
    /// Every kind, in code order.
    pub const ALL: [MetricKind; 4] = [
        MetricKind::Gauge,
        MetricKind::Counter,
        MetricKind::DeltaCounter,
        MetricKind::Histogram,
    ];

    /// The name on the wire and in answers: `gauge`, `counter`,
    /// `delta_counter`, `histogram`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::DeltaCounter => "delta_counter",
            MetricKind::Histogram => "histogram",
        }
    }

    /// The number of the kind in the bus record (`pulse.v1.MetricKind`) and
    /// the stores' `kind` columns.
    pub fn code(self) -> i32 {
        match self {
            MetricKind::Gauge => 0,
            MetricKind::Counter => 1,
            MetricKind::DeltaCounter => 2,
            MetricKind::Histogram => 3,
        }
    }

    /// The kind of a [`MetricKind::code`], `None` for an unknown code.
    pub fn from_code(code: i64) -> Option<MetricKind> {
        MetricKind::ALL
            .into_iter()
            .find(|k| i64::from(k.code()) == code)
    }

    /// Whether points of this kind count something (cumulative or delta).
    pub fn is_counter(self) -> bool {
        matches!(self, MetricKind::Counter | MetricKind::DeltaCounter)
    }
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MetricKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MetricKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown kind `{s}`: use gauge, counter, delta_counter or histogram")
            })
    }
}

/// A validated metric point. Points only exist in this form after
/// [`crate::validate`] accepted them, so every consumer may rely on a well-formed
/// name, tags within limits and a finite value.
///
/// Build points with [`Point::gauge`], [`Point::counter`],
/// [`Point::delta_counter`] and [`Point::histogram`], which keep `kind`,
/// `value` and `sketch` consistent.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: String,
    pub tags: Tags,
    /// The number; for a histogram point, the mean of its observations.
    pub value: f64,
    pub timestamp_ms: TimestampMs,
    pub kind: MetricKind,
    /// The observations of a histogram point (`Some` exactly when `kind` is
    /// [`MetricKind::Histogram`]); boxed so value points stay small.
    pub sketch: Option<Box<Distribution>>,
}

impl Point {
    /// A point of `kind` with one value (not a histogram).
    fn valued(
        kind: MetricKind,
        metric: impl Into<String>,
        tags: Tags,
        value: f64,
        timestamp_ms: TimestampMs,
    ) -> Point {
        Point {
            metric: metric.into(),
            tags,
            value,
            timestamp_ms,
            kind,
            sketch: None,
        }
    }

    /// A gauge point: a value that goes up and down.
    pub fn gauge(
        metric: impl Into<String>,
        tags: Tags,
        value: f64,
        timestamp_ms: TimestampMs,
    ) -> Point {
        Point::valued(MetricKind::Gauge, metric, tags, value, timestamp_ms)
    }

    /// A cumulative counter point: the running total at `timestamp_ms`.
    pub fn counter(
        metric: impl Into<String>,
        tags: Tags,
        total: f64,
        timestamp_ms: TimestampMs,
    ) -> Point {
        Point::valued(MetricKind::Counter, metric, tags, total, timestamp_ms)
    }

    /// A delta counter point: the increment since the series' previous point.
    pub fn delta_counter(
        metric: impl Into<String>,
        tags: Tags,
        increment: f64,
        timestamp_ms: TimestampMs,
    ) -> Point {
        Point::valued(
            MetricKind::DeltaCounter,
            metric,
            tags,
            increment,
            timestamp_ms,
        )
    }

    /// A histogram point: the observations of one interval as a sketch.
    pub fn histogram(
        metric: impl Into<String>,
        tags: Tags,
        observations: Distribution,
        timestamp_ms: TimestampMs,
    ) -> Point {
        Point {
            metric: metric.into(),
            tags,
            value: observations.mean(),
            timestamp_ms,
            kind: MetricKind::Histogram,
            sketch: Some(Box::new(observations)),
        }
    }

    /// The stable identity of the series this point belongs to.
    pub fn series_id(&self) -> SeriesId {
        SeriesId::of(&self.metric, &self.tags)
    }
}
