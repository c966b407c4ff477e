//! OTLP metrics (`ExportMetricsServiceRequest`, protobuf or JSON) to points.
//!
//! The message types come from `opentelemetry-proto` (prost, plus its serde
//! mapping for OTLP/JSON). The mapping follows what a Prometheus user would
//! find, so data from either source queries alike:
//!
//! - gauge and sum data points: one point each (`asDouble` or `asInt`); a
//!   monotonic cumulative sum is a cumulative counter (its running total), a
//!   monotonic delta sum a delta counter (its increment), any other sum a
//!   gauge;
//! - histogram and exponential histogram data points: one histogram point
//!   under the metric's name, the observations of the interval as the
//!   pipeline's sketch (`crate::parse::otlp_buckets`); cumulative ones are
//!   differenced from the series' previous export (`baselines`; the first
//!   export of a series is its baseline, and counts going down mean the app
//!   restarted), delta ones taken as they are, with their min and max;
//! - summaries: `<name>_count`, `<name>_sum` and `<name>{quantile="..."}`.
//!
//! Tags are the data point's attributes plus the resource attributes named in
//! `otlp.resource_attributes`; attributes that are arrays, maps or bytes are
//! skipped, since a tag holds one text value. A data point flagged "no
//! recorded value" is skipped, as the specification asks.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, metric::Data, number_data_point};
use prost::Message;
use pulse_core::histogram::{Baselines, Cumulative};
use pulse_core::validate::UncheckedPoint;
use pulse_core::{MetricKind, SeriesId, Tags, TimestampMs};

use super::{Rejection, bound_text, otlp_buckets, sanitize_name, sanitize_tag_key};

/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const NO_RECORDED_VALUE: u32 = 1;

/// How the request body is encoded (from its `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Decodes a request body (already decompressed).
pub fn decode(body: &[u8], encoding: Encoding) -> Result<ExportMetricsServiceRequest, Rejection> {
    match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(body)
            .map_err(|e| Rejection::malformed(format!("not an OTLP protobuf request: {e}"))),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| Rejection::malformed(format!("not an OTLP JSON request: {e}"))),
    }
}

/// The points of one request, a rejection per unusable data point, and the
/// cumulative histograms' states to keep as baselines once the points are
/// buffered.
#[derive(Debug, Default)]
pub struct Mapped {
    pub points: Vec<UncheckedPoint>,
    pub rejected: Vec<Rejection>,
    pub baselines: Vec<(SeriesId, Cumulative)>,
}

/// `AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA`.
const DELTA: i32 = 1;
/// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: i32 = 2;

/// More points in one request than the receiver takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyPoints {
    pub limit: usize,
}

/// Maps a request to points. `keep_resource` names the resource attributes that
/// become tags; `now_ms` stamps data points without a time; `baselines` holds
/// each cumulative histogram series' previous export. Refuses the request
/// when it would make more than `max_points` points.
pub fn to_points(
    request: ExportMetricsServiceRequest,
    keep_resource: &[String],
    max_points: usize,
    now_ms: TimestampMs,
    baselines: &Baselines,
) -> Result<Mapped, TooManyPoints> {
    let mut out = Mapped::default();
    for resource_metrics in request.resource_metrics {
        let mut resource_tags = Tags::new();
        if let Some(resource) = &resource_metrics.resource {
            let kept = resource
                .attributes
                .iter()
                .filter(|kv| keep_resource.contains(&kv.key));
            add_attributes(&mut resource_tags, kept);
        }
        for metric in resource_metrics
            .scope_metrics
            .into_iter()
            .flat_map(|s| s.metrics)
        {
            let name = sanitize_name(&metric.name);
            let mut mapper = Mapper {
                out: &mut out,
                resource_tags: &resource_tags,
                now_ms,
                max_points,
                overflow: false,
                baselines,
            };
            match metric.data {
                Some(Data::Gauge(gauge)) => {
                    mapper.numbers(&name, gauge.data_points, MetricKind::Gauge)
                }
                Some(Data::Sum(sum)) => {
                    let kind = match (sum.is_monotonic, sum.aggregation_temporality) {
                        (true, CUMULATIVE) => MetricKind::Counter,
                        (true, DELTA) => MetricKind::DeltaCounter,
                        _ => MetricKind::Gauge,
                    };
                    mapper.numbers(&name, sum.data_points, kind)
                }
                Some(Data::Histogram(histogram)) => {
                    for dp in histogram.data_points {
                        if dp.flags & NO_RECORDED_VALUE == 0 {
                            let state = otlp_buckets::explicit(&dp);
                            let at = (dp.attributes.as_slice(), dp.time_unix_nano, dp.min, dp.max);
                            mapper.histogram(&name, at, state, histogram.aggregation_temporality);
                        }
                    }
                }
                Some(Data::ExponentialHistogram(histogram)) => {
                    for dp in histogram.data_points {
                        if dp.flags & NO_RECORDED_VALUE == 0 {
                            let state = otlp_buckets::exponential(&dp);
                            let at = (dp.attributes.as_slice(), dp.time_unix_nano, dp.min, dp.max);
                            mapper.histogram(&name, at, state, histogram.aggregation_temporality);
                        }
                    }
                }
                Some(Data::Summary(summary)) => {
                    for dp in summary.data_points {
                        if dp.flags & NO_RECORDED_VALUE != 0 {
                            continue;
                        }
                        let tags = mapper.tags(&dp.attributes);
                        let ts = mapper.timestamp(dp.time_unix_nano);
                        mapper.summary_totals(&name, &tags, ts, dp.count, dp.sum);
                        for q in dp.quantile_values {
                            let mut tags = tags.clone();
                            tags.insert("quantile".into(), bound_text(q.quantile));
                            mapper.push(UncheckedPoint::gauge(
                                name.clone(),
                                tags,
                                q.value,
                                Some(ts),
                            ));
                        }
                    }
                }
                None => mapper
                    .out
                    .rejected
                    .push(Rejection::malformed(format!("metric `{name}` has no data"))),
            }
            if mapper.overflow {
                return Err(TooManyPoints { limit: max_points });
            }
        }
    }
    Ok(out)
}

struct Mapper<'a> {
    out: &'a mut Mapped,
    resource_tags: &'a Tags,
    now_ms: TimestampMs,
    max_points: usize,
    /// A point beyond `max_points` was refused: the request is refused.
    overflow: bool,
    baselines: &'a Baselines,
}

/// A histogram data point's attributes, time, min and max.
type PointAt<'a> = (&'a [KeyValue], u64, Option<f64>, Option<f64>);

impl Mapper<'_> {
    fn numbers(&mut self, name: &str, data_points: Vec<NumberDataPoint>, kind: MetricKind) {
        for dp in data_points {
            if dp.flags & NO_RECORDED_VALUE != 0 {
                continue;
            }
            let value = match dp.value {
                Some(number_data_point::Value::AsDouble(v)) => v,
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                None => {
                    self.out.rejected.push(Rejection::malformed(format!(
                        "a data point of `{name}` has no value"
                    )));
                    continue;
                }
            };
            let tags = self.tags(&dp.attributes);
            let ts = self.timestamp(dp.time_unix_nano);
            self.push(UncheckedPoint {
                kind,
                ..UncheckedPoint::gauge(name, tags, value, Some(ts))
            });
        }
    }

    /// One histogram point of the observations since the series' previous
    /// export (cumulative) or of this export (delta).
    fn histogram(
        &mut self,
        name: &str,
        (attributes, time, min, max): PointAt<'_>,
        state: Result<Cumulative, String>,
        temporality: i32,
    ) {
        let state = match state {
            Ok(state) => state,
            Err(problem) => {
                self.out.rejected.push(Rejection::malformed(format!(
                    "a histogram point of `{name}` is unusable: {problem}"
                )));
                return;
            }
        };
        let tags = self.tags(attributes);
        let ts = self.timestamp(time);
        let increase = if temporality == DELTA {
            let zero = Cumulative {
                counts: vec![0.0; state.counts.len()],
                sum: state.sum.map(|_| 0.0),
                ..state.clone()
            };
            state.increase_since(Some(&zero))
        } else {
            let id = SeriesId::of(name, &tags);
            let earlier = self.out.baselines.iter().rev().find(|(k, _)| *k == id);
            let previous = earlier.map(|(_, s)| s).or_else(|| self.baselines.get(id));
            let increase = state.increase_since(previous);
            self.out.baselines.push((id, state));
            increase
        };
        let Some(mut observations) = increase.and_then(|i| i.distribution()) else {
            return;
        };
        if temporality == DELTA
            && let (Some(min), Some(max)) = (min, max)
        {
            observations.set_min_max(min, max);
        }
        self.push(UncheckedPoint {
            kind: MetricKind::Histogram,
            sketch: Some(Box::new(observations)),
            ..UncheckedPoint::gauge(name, tags, 0.0, Some(ts))
        });
    }

    /// A summary's `_count` and `_sum`: running totals, so counters.
    fn summary_totals(&mut self, name: &str, tags: &Tags, ts: f64, count: u64, sum: f64) {
        for (suffix, value) in [("_count", count as f64), ("_sum", sum)] {
            self.push(UncheckedPoint {
                kind: MetricKind::Counter,
                ..UncheckedPoint::gauge(format!("{name}{suffix}"), tags.clone(), value, Some(ts))
            });
        }
    }

    fn push(&mut self, point: UncheckedPoint) {
        if self.out.points.len() >= self.max_points {
            self.overflow = true;
            return;
        }
        self.out.points.push(point);
    }

    /// Resource tags overlaid with the data point's own attributes.
    fn tags(&self, attributes: &[KeyValue]) -> Tags {
        let mut tags = self.resource_tags.clone();
        add_attributes(&mut tags, attributes.iter());
        tags
    }

    /// Unix seconds of a data point; 0 (unset) means now.
    fn timestamp(&self, time_unix_nano: u64) -> f64 {
        if time_unix_nano == 0 {
            self.now_ms as f64 / 1000.0
        } else {
            // Milliseconds first, so the seconds carry no sub-millisecond noise.
            (time_unix_nano / 1_000_000) as f64 / 1000.0
        }
    }
}

fn add_attributes<'a>(tags: &mut Tags, attributes: impl Iterator<Item = &'a KeyValue>) {
    for kv in attributes {
        if let Some(value) = kv.value.as_ref().and_then(text)
            && !value.is_empty()
            && !kv.key.is_empty()
        {
            tags.insert(sanitize_tag_key(&kv.key), value);
        }
    }
}

/// The text of a scalar attribute value.
fn text(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use proptest::prelude::*;

    use super::*;

    const NOW: i64 = 1_721_199_945_000;

    fn keep() -> Vec<String> {
        vec!["service.name".to_string()]
    }

    fn attr(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![attr("service.name", "web"), attr("process.pid", "42")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn number(
        value: number_data_point::Value,
        ts_ns: u64,
        attrs: Vec<KeyValue>,
    ) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            time_unix_nano: ts_ns,
            value: Some(value),
            ..Default::default()
        }
    }

    /// The example of the OTLP specification's JSON encoding, trimmed to metrics
    /// of each kind: 64-bit integers as strings, enums as numbers.
    const SPEC_JSON: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
      "scopeMetrics":[{"scope":{"name":"my.library","version":"1.0.0"},"metrics":[
        {"name":"my.counter","unit":"1","sum":{"aggregationTemporality":1,"isMonotonic":true,
          "dataPoints":[{"asDouble":5,"startTimeUnixNano":"1544712660300000000","timeUnixNano":"1544712660300000000",
          "attributes":[{"key":"my.counter.attr","value":{"stringValue":"some value"}}]}]}},
        {"name":"my.gauge","gauge":{"dataPoints":[{"asInt":"10","timeUnixNano":"1544712660300000000"}]}},
        {"name":"my.histogram","histogram":{"aggregationTemporality":1,"dataPoints":[{"startTimeUnixNano":"1544712660300000000",
          "timeUnixNano":"1544712660300000000","count":"2","sum":2,"bucketCounts":["1","1"],"explicitBounds":[1],"min":0,"max":2}]}}
      ]}]}]}"#;

    #[test]
    fn the_specification_json_example_maps_to_points() {
        let request = decode(SPEC_JSON.as_bytes(), Encoding::Json).unwrap();
        let mapped = to_points(request, &keep(), 1000, NOW, &Baselines::new(8)).unwrap();
        assert!(mapped.rejected.is_empty(), "{:?}", mapped.rejected);
        let names: Vec<&str> = mapped.points.iter().map(|p| p.metric.as_str()).collect();
        assert_eq!(names, ["my.counter", "my.gauge", "my.histogram"]);
        let counter = &mapped.points[0];
        assert_eq!(
            counter.kind,
            MetricKind::DeltaCounter,
            "a monotonic delta sum"
        );
        assert_eq!(counter.value, 5.0);
        assert_eq!(counter.timestamp_secs, Some(1_544_712_660.3));
        assert_eq!(counter.tags["service.name"], "my.service");
        assert_eq!(counter.tags["my.counter.attr"], "some value");
        assert_eq!(mapped.points[1].value, 10.0);
        let histogram = &mapped.points[2];
        assert_eq!(histogram.kind, MetricKind::Histogram);
        let sketch = histogram.sketch.as_ref().unwrap();
        assert_eq!(
            (sketch.count(), sketch.sum(), sketch.min(), sketch.max()),
            (2, 2.0, 0.0, 2.0)
        );
    }

    #[test]
    fn cumulative_sums_count_and_cumulative_histograms_are_differenced() {
        let export = |counts: Vec<u64>, sum: f64| Metric {
            name: "lat".into(),
            data: Some(Data::Histogram(Histogram {
                aggregation_temporality: CUMULATIVE,
                data_points: vec![HistogramDataPoint {
                    count: counts.iter().sum(),
                    sum: Some(sum),
                    bucket_counts: counts,
                    explicit_bounds: vec![0.1, 1.0],
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let total = Metric {
            name: "jobs".into(),
            data: Some(Data::Sum(Sum {
                aggregation_temporality: CUMULATIVE,
                is_monotonic: true,
                data_points: vec![number(number_data_point::Value::AsInt(9), 0, vec![])],
            })),
            ..Default::default()
        };
        let mut baselines = Baselines::new(8);
        let first = to_points(
            request(vec![export(vec![1, 0, 0], 0.05), total]),
            &keep(),
            100,
            NOW,
            &baselines,
        )
        .unwrap();
        assert_eq!(
            first.points.len(),
            1,
            "the histogram's first export is a baseline"
        );
        assert_eq!(first.points[0].kind, MetricKind::Counter);
        for (id, state) in first.baselines {
            baselines.set(id, state);
        }
        let second = to_points(
            request(vec![export(vec![1, 4, 1], 3.05)]),
            &keep(),
            100,
            NOW,
            &baselines,
        )
        .unwrap();
        let sketch = second.points[0].sketch.as_ref().unwrap();
        assert_eq!((sketch.count(), sketch.sum()), (5, 3.0));
    }

    #[test]
    fn only_the_named_resource_attributes_become_tags() {
        let metric = Metric {
            name: "g".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![number(
                    number_data_point::Value::AsDouble(1.5),
                    0,
                    vec![attr("host", "a")],
                )],
            })),
            ..Default::default()
        };
        let mapped = to_points(
            request(vec![metric]),
            &keep(),
            1000,
            NOW,
            &Baselines::new(8),
        )
        .unwrap();
        let point = &mapped.points[0];
        assert_eq!(point.tags.len(), 2, "{:?}", point.tags);
        assert!(!point.tags.contains_key("process.pid"));
        assert_eq!(point.timestamp_secs, Some(NOW as f64 / 1000.0));
    }

    #[test]
    fn flagged_and_valueless_points_and_bad_buckets_are_handled() {
        let mut flagged = number(number_data_point::Value::AsInt(1), 0, vec![]);
        flagged.flags = NO_RECORDED_VALUE;
        let mut valueless = number(number_data_point::Value::AsInt(1), 0, vec![]);
        valueless.value = None;
        let sum = Metric {
            name: "s".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![flagged, valueless],
                ..Default::default()
            })),
            ..Default::default()
        };
        let histogram = Metric {
            name: "h".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 3,
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let mapped = to_points(
            request(vec![sum, histogram]),
            &keep(),
            1000,
            NOW,
            &Baselines::new(8),
        )
        .unwrap();
        assert!(mapped.points.is_empty());
        assert_eq!(mapped.rejected.len(), 2);
    }

    #[test]
    fn a_request_over_the_point_limit_is_refused() {
        let gauge = Metric {
            name: "g".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![number(number_data_point::Value::AsInt(1), 0, vec![]); 1001],
            })),
            ..Default::default()
        };
        assert_eq!(
            to_points(request(vec![gauge]), &keep(), 1000, NOW, &Baselines::new(8)).unwrap_err(),
            TooManyPoints { limit: 1000 }
        );
    }

    fn arb_metric() -> impl Strategy<Value = Metric> {
        let value = prop_oneof![
            // Up to 12 significant digits: read back exactly by serde_json's
            // default float parser (longer ones may land one ulp away).
            (-1_000_000_000i64..1_000_000_000)
                .prop_map(|v| number_data_point::Value::AsDouble(v as f64 / 1000.0)),
            any::<i32>().prop_map(|i| number_data_point::Value::AsInt(i64::from(i))),
        ];
        let dp = (value, 1u64..4_000_000_000_000_000_000, "[a-z]{1,5}")
            .prop_map(|(v, ts, host)| number(v, ts, vec![attr("host", &host)]));
        let points = prop::collection::vec(dp, 0..5);
        ("[a-z][a-z0-9_.]{0,20}", points, any::<bool>()).prop_map(|(name, data_points, gauge)| {
            Metric {
                name,
                data: Some(if gauge {
                    Data::Gauge(Gauge { data_points })
                } else {
                    Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: 2,
                        is_monotonic: true,
                    })
                }),
                ..Default::default()
            }
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            for encoding in [Encoding::Protobuf, Encoding::Json] {
                if let Ok(request) = decode(&bytes, encoding) {
                    let _ = to_points(request, &keep(), 10_000, NOW, &Baselines::new(8));
                }
            }
        }

        #[test]
        fn arbitrary_json_shapes_never_panic(text in "[\\[\\]{}:,\"a-zA-Z0-9 .-]{0,200}") {
            if let Ok(request) = decode(text.as_bytes(), Encoding::Json) {
                let _ = to_points(request, &keep(), 10_000, NOW, &Baselines::new(8));
            }
        }

        #[test]
        fn protobuf_and_json_round_trip_to_the_same_points(metrics in prop::collection::vec(arb_metric(), 0..4)) {
            let request = request(metrics.clone());
            let expected: usize = metrics.iter().map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                _ => 0,
            }).sum();
            let from_proto = decode(&request.encode_to_vec(), Encoding::Protobuf).unwrap();
            prop_assert_eq!(&from_proto, &request);
            let json = serde_json::to_vec(&request).unwrap();
            let from_json = decode(&json, Encoding::Json).unwrap();
            prop_assert_eq!(&from_json, &request);
            let mapped = to_points(from_proto, &keep(), 10_000, NOW, &Baselines::new(8)).unwrap();
            prop_assert_eq!(mapped.points.len(), expected);
            prop_assert!(mapped.rejected.is_empty());
        }
    }
}
