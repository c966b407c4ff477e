//! The JSON shape of one point as Pulse writes it (the sidecar's NDJSON to
//! the gateway) and of a sketch as any client sends it. Reading is in
//! [`super::body`]; both sides share [`SketchJson`].
//!
//! ```json
//! {"metric_name":"requests_total","kind":"counter","value":1027,"timestamp":1721199945.25,"tags":{"pod":"a"}}
//! {"metric_name":"req_seconds","kind":"histogram","timestamp":1721199945,"tags":{"pod":"a"},
//!  "sketch":{"ddsketch":"AgAAAAAAAAAA...","sum":12.5,"min":0.002,"max":1.9}}
//! ```

use serde::{Deserialize, Serialize};

use crate::point::{MetricKind, Point, Tags};
use crate::sketch::{Distribution, SketchError};

/// The `sketch` of a histogram point: a DDSketch (relative accuracy 0.01,
/// 2048 bins, the defaults of DataDog's libraries) in DataDog's standard
/// binary encoding, base64; and the exact sum, min and max when known (the
/// sketch's own otherwise). The count is the sketch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ddsketch": "AgAAAAAAAAAAAA==", "sum": 12.5, "min": 0.002, "max": 1.9}))]
pub struct SketchJson {
    /// The DDSketch, DataDog's encoding, base64 (standard alphabet).
    #[schema(example = "AgAAAAAAAAAAAA==")]
    pub ddsketch: String,
    /// The exact sum of the observations.
    #[schema(example = 12.5)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
    /// The smallest observation.
    #[schema(example = 0.002)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest observation.
    #[schema(example = 1.9)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl SketchJson {
    /// The JSON of a distribution.
    pub fn of(d: &Distribution) -> SketchJson {
        SketchJson {
            ddsketch: d.sketch_base64(),
            sum: Some(d.sum()),
            min: Some(d.min()),
            max: Some(d.max()),
        }
    }

    /// The distribution it describes.
    pub fn distribution(&self) -> Result<Distribution, SketchError> {
        Distribution::from_sketch_base64(&self.ddsketch, self.sum, self.min, self.max)
    }
}

/// One point as Pulse writes it.
#[derive(Serialize)]
struct PointOut<'a> {
    metric_name: &'a str,
    #[serde(skip_serializing_if = "is_gauge")]
    kind: MetricKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    /// Unix seconds with millisecond precision; the reader rounds back to
    /// the same millisecond.
    timestamp: f64,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    tags: &'a Tags,
    #[serde(skip_serializing_if = "Option::is_none")]
    sketch: Option<SketchJson>,
}

fn is_gauge(kind: &MetricKind) -> bool {
    *kind == MetricKind::Gauge
}

/// Appends `point` as one JSON object (no newline) to `out`.
pub fn write_point(point: &Point, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let wire = PointOut {
        metric_name: &point.metric,
        kind: point.kind,
        value: point.sketch.is_none().then_some(point.value),
        timestamp: point.timestamp_ms as f64 / 1000.0,
        tags: &point.tags,
        sketch: point.sketch.as_deref().map(SketchJson::of),
    };
    serde_json::to_writer(out, &wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::body::parse_points;
    use crate::validate::Limits;

    const NOW: i64 = 1_721_199_945_000;

    #[test]
    fn every_kind_round_trips_through_the_reader() {
        let tags: Tags = [("pod".to_string(), "a".to_string())].into();
        let mut d = Distribution::of(&[0.004, 0.02, 0.5, 1.25]);
        d.set_sum(1.774);
        let points = [
            Point::gauge("cpu", tags.clone(), 3806.1772796135315, NOW),
            Point::counter("requests_total", tags.clone(), 1027.0, NOW - 1500),
            Point::delta_counter("jobs", Tags::new(), 3.0, NOW),
            Point::histogram("req_seconds", tags, d, NOW - 250),
        ];
        let mut body = Vec::new();
        for p in &points {
            write_point(p, &mut body).unwrap();
            body.push(b'\n');
        }
        let batch = parse_points(&body, &Limits::default(), 10, NOW).unwrap();
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        assert_eq!(batch.into_points(), points);
    }

    #[test]
    fn a_client_sketch_point_reads_as_documented() {
        let d = Distribution::of(&[0.1, 0.2, 0.3]);
        let body = format!(
            r#"{{"metric_name":"req_seconds","kind":"histogram","timestamp":1721199945,"sketch":{{"ddsketch":"{}","sum":0.6}}}}"#,
            d.sketch_base64()
        );
        let point = parse_points(body.as_bytes(), &Limits::default(), 10, NOW)
            .unwrap()
            .into_points()
            .remove(0);
        assert_eq!(point.kind, MetricKind::Histogram);
        let sketch = point.sketch.unwrap();
        assert_eq!((sketch.count(), sketch.sum(), sketch.min()), (3, 0.6, 0.1));
    }

    #[test]
    fn bad_kinds_and_sketches_name_their_field() {
        for (body, field) in [
            (r#"{"metric_name":"m","value":1,"kind":"summary"}"#, "kind"),
            (r#"{"metric_name":"m","value":1,"kind":3}"#, "kind"),
            (
                r#"{"metric_name":"m","sketch":{"ddsketch":"%%"}}"#,
                "sketch",
            ),
            (r#"{"metric_name":"m","sketch":{"bins":[]}}"#, "sketch"),
            (
                r#"{"metric_name":"m","kind":"histogram","value":2}"#,
                "sketch",
            ),
            (r#"{"metric_name":"m","kind":"counter"}"#, "value"),
        ] {
            let batch = parse_points(body.as_bytes(), &Limits::default(), 10, NOW).unwrap();
            assert_eq!(batch.errors.len(), 1, "{body}");
            assert_eq!(batch.errors[0].field.as_deref(), Some(field), "{body}");
        }
    }
}
