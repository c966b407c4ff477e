//! Prometheus remote write 1.0: a `prometheus.WriteRequest` protobuf,
//! snappy-compressed in the block format, as `POST /api/v1/write` receives it
//! from a Prometheus server (or an agent speaking the same protocol).
//!
//! The messages are declared here with prost's derive, field numbers as in
//! Prometheus' `prompb/remote.proto` and `prompb/types.proto`; only the
//! fields 1.0 defines are read (exemplars and native histograms are skipped,
//! unknown fields too, as protobuf readers do).
//!
//! Every sample becomes one point: `__name__` is the metric, the other labels
//! are its tags (an empty label value is no label), the timestamp is the
//! sample's. Prometheus' staleness markers (a NaN with one fixed bit
//! pattern, written when a series disappears) say "no value from here on",
//! not a measurement, and are skipped; any other non-finite value is refused
//! like a JSON point's.

use std::collections::HashSet;

use prost::Message;

use super::body::{BodyError, IndexedPoint, ParsedBatch};
use crate::TimestampMs;
use crate::histogram::{self, Baselines, Cumulative};
use crate::point::{MetricKind, Tags};
use crate::series::SeriesId;
use crate::validate::{Limits, PointError, RejectReason, UncheckedPoint, validate};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries` (labels sorted by name, samples in time order).
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a value at a time in milliseconds.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`: what a family is, sent now and then beside the
/// samples (`metadata_config.send`, on by default).
#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    /// `MetricType`: 1 counter, 2 gauge, 3 summary, 4 histogram, ...
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// `MetricMetadata.MetricType.COUNTER`.
pub const METADATA_COUNTER: i32 = 1;

/// The bit pattern of Prometheus' staleness marker (`value.StaleNaN`).
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// What a decoded message may hold per byte of protobuf, charged to the
/// decode budget before decoding: strings and vectors of the decoded
/// request cost about this many times their encoded size.
const DECODED_COST: usize = 3;

/// Undoes the snappy block compression (refusing an announced length over
/// `max_len` before a byte is inflated) and decodes the protobuf. Charges
/// the inflated bytes and the decoded message to `reserve`.
pub fn decode(
    body: &[u8],
    max_len: usize,
    reserve: &mut dyn FnMut(usize) -> Result<(), BodyError>,
) -> Result<WriteRequest, BodyError> {
    if body.is_empty() {
        return Err(BodyError::Empty);
    }
    let corrupt =
        |encoding: &'static str, message: String| BodyError::Corrupt { encoding, message };
    // The block format starts with the decompressed length, so a bomb is
    // refused from its header.
    let len = snap::raw::decompress_len(body).map_err(|e| corrupt("snappy", e.to_string()))?;
    if len > max_len {
        return Err(BodyError::TooLarge {
            limit: max_len,
            after: " after decompression",
        });
    }
    reserve(len.saturating_mul(1 + DECODED_COST))?;
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| corrupt("snappy", e.to_string()))?;
    WriteRequest::decode(raw.as_slice())
        .map_err(|e| corrupt("prometheus.WriteRequest protobuf", e.to_string()))
}

/// The points of a request, validated one by one: each sample is numbered
/// in request order (series by series), which is the index an error names.
/// More than `max_points` samples refuse the request, as for a JSON batch.
///
/// Kinds, as a Prometheus user expects them: a series named `*_total`, or
/// of a family the request's metadata calls a counter, is a cumulative
/// counter; a classic histogram (its `_bucket{le}` series with `+Inf`, and
/// `_sum`, `_count`) becomes one histogram point under its base name per
/// scrape, holding the observations since the previous scrape in
/// `baselines` (see [`crate::histogram`]). The histograms' new states come
/// back beside the points, to be kept once the points are accepted.
pub fn to_points(
    request: WriteRequest,
    limits: &Limits,
    max_points: usize,
    now_ms: TimestampMs,
    baselines: &Baselines,
) -> Result<(ParsedBatch, Vec<(SeriesId, Cumulative)>), BodyError> {
    let count: usize = request.timeseries.iter().map(|s| s.samples.len()).sum();
    if count > max_points {
        return Err(BodyError::TooManyPoints {
            count,
            limit: max_points,
        });
    }
    let counters: HashSet<&str> = request
        .metadata
        .iter()
        .filter(|m| m.r#type == METADATA_COUNTER)
        .map(|m| m.metric_family_name.as_str())
        .collect();
    let is_counter = |metric: &str| metric.ends_with("_total") || counters.contains(metric);
    let mut batch = ParsedBatch::default();
    let mut points = Vec::with_capacity(count);
    let mut index = 0;
    for series in request.timeseries.iter() {
        let (metric, tags) = series_identity(&series.labels);
        for sample in &series.samples {
            let at = index;
            index += 1;
            if sample.value.to_bits() == STALE_NAN {
                continue;
            }
            let Some(metric) = metric else {
                batch.errors.push(PointError::new(
                    at,
                    Some("metric_name"),
                    RejectReason::InvalidName,
                    "the series has no `__name__` label",
                ));
                continue;
            };
            let mut point = UncheckedPoint::gauge(
                metric,
                tags.clone(),
                sample.value,
                Some(sample.timestamp as f64 / 1000.0),
            );
            if is_counter(metric) {
                point.kind = MetricKind::Counter;
            }
            points.push((at, point));
        }
    }
    let keep = histogram::classic_to_histograms(&mut points, baselines);
    for (at, point) in points {
        match validate(at, point, limits, now_ms) {
            Ok(point) => batch.points.push(IndexedPoint { index: at, point }),
            Err(error) => batch.errors.push(error),
        }
    }
    batch.points.sort_by_key(|p| p.index);
    batch.errors.sort_by_key(|e| e.index);
    Ok((batch, keep))
}

/// `__name__` and the other labels as tags.
fn series_identity(labels: &[Label]) -> (Option<&str>, Tags) {
    let mut metric = None;
    let mut tags = Tags::new();
    for Label { name, value } in labels {
        if name == "__name__" {
            metric = Some(value.as_str());
        } else if !value.is_empty() {
            tags.insert(name.clone(), value.clone());
        }
    }
    (metric, tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
            samples: samples
                .iter()
                .map(|&(value, timestamp)| Sample { value, timestamp })
                .collect(),
        }
    }

    fn compress(request: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .unwrap()
    }

    const NOW: i64 = 1_765_000_000_000;

    #[test]
    fn samples_become_points_with_labels_as_tags() {
        let request = WriteRequest {
            timeseries: vec![
                series(
                    &[
                        ("__name__", "reqs_total"),
                        ("instance", "a:1"),
                        ("job", "app"),
                        ("x", ""),
                    ],
                    &[(3.0, NOW - 15_000), (5.0, NOW)],
                ),
                series(&[("__name__", "temp")], &[(f64::from_bits(STALE_NAN), NOW)]),
            ],
            metadata: vec![],
        };
        let decoded = decode(&compress(&request), 1 << 20, &mut |_| Ok(())).unwrap();
        assert_eq!(decoded.encode_to_vec(), request.encode_to_vec());
        let (batch, _) =
            to_points(decoded, &Limits::default(), 10, NOW, &Baselines::new(8)).unwrap();
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        let points: Vec<_> = batch.points.iter().map(|p| &p.point).collect();
        assert_eq!(points.len(), 2, "the staleness marker is no point");
        assert_eq!(points[0].metric, "reqs_total");
        assert_eq!(
            points[0].kind,
            MetricKind::Counter,
            "a `_total` series counts"
        );
        assert_eq!(points[0].tags.len(), 2, "an empty label is no label");
        assert_eq!(points[0].tags["job"], "app");
        assert_eq!((points[1].value, points[1].timestamp_ms), (5.0, NOW));
    }

    #[test]
    fn bad_samples_are_refused_one_by_one_and_name_their_index() {
        let request = WriteRequest {
            timeseries: vec![
                series(&[("job", "x")], &[(1.0, NOW)]),
                series(&[("__name__", "a")], &[(f64::NAN, NOW), (1.0, NOW)]),
            ],
            metadata: vec![],
        };
        let (batch, _) =
            to_points(request, &Limits::default(), 10, NOW, &Baselines::new(8)).unwrap();
        let errors: Vec<_> = batch.errors.iter().map(|e| (e.index, e.reason)).collect();
        assert_eq!(
            errors,
            [
                (0, RejectReason::InvalidName),
                (1, RejectReason::InvalidValue)
            ]
        );
        assert_eq!(batch.points[0].index, 2);
    }

    #[test]
    fn a_classic_histogram_is_one_histogram_point_of_each_scrapes_observations() {
        let scrape = |ts: i64, counts: [f64; 3], sum: f64| {
            let bucket = |le: &str, v: f64| {
                series(
                    &[("__name__", "lat_bucket"), ("le", le), ("pod", "a")],
                    &[(v, ts)],
                )
            };
            WriteRequest {
                timeseries: vec![
                    bucket("0.5", counts[0]),
                    bucket("1", counts[1]),
                    bucket("+Inf", counts[2]),
                    series(&[("__name__", "lat_sum"), ("pod", "a")], &[(sum, ts)]),
                    series(
                        &[("__name__", "lat_count"), ("pod", "a")],
                        &[(counts[2], ts)],
                    ),
                    series(&[("__name__", "jobs")], &[(7.0, ts)]),
                ],
                metadata: vec![MetricMetadata {
                    r#type: METADATA_COUNTER,
                    metric_family_name: "jobs".into(),
                    help: String::new(),
                    unit: String::new(),
                }],
            }
        };
        let mut baselines = Baselines::new(8);
        let limits = Limits::default();
        let (first, keep) = to_points(
            scrape(NOW - 1000, [1.0, 1.0, 2.0], 3.0),
            &limits,
            100,
            NOW,
            &baselines,
        )
        .unwrap();
        assert_eq!(
            first.points.len(),
            1,
            "a baseline and the counter: {:?}",
            first.points
        );
        assert_eq!(first.points[0].point.kind, MetricKind::Counter);
        for (id, state) in keep {
            baselines.set(id, state);
        }
        let (second, _) = to_points(
            scrape(NOW, [3.0, 4.0, 5.0], 4.5),
            &limits,
            100,
            NOW,
            &baselines,
        )
        .unwrap();
        let histogram = second
            .points
            .iter()
            .map(|p| &p.point)
            .find(|p| p.metric == "lat")
            .unwrap();
        assert_eq!(histogram.kind, MetricKind::Histogram);
        assert_eq!(histogram.tags.len(), 1);
        let sketch = histogram.sketch.as_ref().unwrap();
        assert_eq!((sketch.count(), sketch.sum()), (3, 1.5));
        assert_eq!(histogram.timestamp_ms, NOW);
    }

    #[test]
    fn broken_bombs_and_oversized_requests_are_refused_whole() {
        let no = &mut |_| Ok(());
        assert_eq!(decode(b"", 10, no), Err(BodyError::Empty));
        assert!(matches!(
            decode(b"\x04\xff", 10, no),
            Err(BodyError::Corrupt {
                encoding: "snappy",
                ..
            })
        ));
        // A valid block announcing 1 MiB, refused before inflating.
        let big = snap::raw::Encoder::new()
            .compress_vec(&[0u8; 1 << 20])
            .unwrap();
        assert!(matches!(
            decode(&big, 1 << 10, no),
            Err(BodyError::TooLarge { .. })
        ));
        let garbage = snap::raw::Encoder::new().compress_vec(b"\x0a\xff").unwrap();
        assert!(matches!(
            decode(&garbage, 1 << 10, no),
            Err(BodyError::Corrupt { .. })
        ));
        let many = WriteRequest {
            timeseries: vec![series(&[("__name__", "a")], &[(1.0, NOW); 3])],
            metadata: vec![],
        };
        assert!(matches!(
            to_points(many, &Limits::default(), 2, NOW, &Baselines::new(8)),
            Err(BodyError::TooManyPoints { count: 3, limit: 2 })
        ));
    }
}
