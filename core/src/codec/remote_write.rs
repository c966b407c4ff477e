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

use prost::Message;

use super::body::{BodyError, IndexedPoint, ParsedBatch};
use crate::TimestampMs;
use crate::point::Tags;
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
/// `MetricMetadata.MetricType.HISTOGRAM`.
pub const METADATA_HISTOGRAM: i32 = 4;

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
pub fn to_points(
    request: WriteRequest,
    limits: &Limits,
    max_points: usize,
    now_ms: TimestampMs,
) -> Result<ParsedBatch, BodyError> {
    let count: usize = request.timeseries.iter().map(|s| s.samples.len()).sum();
    if count > max_points {
        return Err(BodyError::TooManyPoints {
            count,
            limit: max_points,
        });
    }
    let mut batch = ParsedBatch::default();
    let mut index = 0;
    for series in request.timeseries {
        let (metric, tags) = series_identity(series.labels);
        for sample in series.samples {
            let at = index;
            index += 1;
            if sample.value.to_bits() == STALE_NAN {
                continue;
            }
            let Some(metric) = metric.clone() else {
                batch.errors.push(PointError::new(
                    at,
                    Some("metric_name"),
                    RejectReason::InvalidName,
                    "the series has no `__name__` label",
                ));
                continue;
            };
            let point = UncheckedPoint {
                metric,
                tags: tags.clone(),
                value: sample.value,
                timestamp_secs: Some(sample.timestamp as f64 / 1000.0),
            };
            match validate(at, point, limits, now_ms) {
                Ok(point) => batch.points.push(IndexedPoint { index: at, point }),
                Err(error) => batch.errors.push(error),
            }
        }
    }
    Ok(batch)
}

/// One classic histogram of one series at one instant, put together from
/// its `_bucket{le}` series (and `_sum`) of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    /// The base name (`req_seconds` of `req_seconds_bucket`).
    pub metric: String,
    /// The labels without `le`.
    pub tags: Tags,
    pub timestamp_ms: TimestampMs,
    pub state: crate::histogram::Cumulative,
}

/// Takes the classic histograms out of a request: the `_bucket` series with
/// an `le` label, and the `_sum` and `_count` series of the same base name
/// and labels. Bucket series whose `le` is not a number stay plain series.
/// A histogram is kept only with its `+Inf` bucket (a request cut between
/// two of its buckets leaves the rest as plain series of their own names).
pub fn take_histograms(request: &mut WriteRequest) -> Vec<HistogramSample> {
    use std::collections::BTreeMap;

    type Key = (String, Tags, TimestampMs);
    let mut buckets: BTreeMap<Key, Vec<(f64, f64)>> = BTreeMap::new();
    for series in &request.timeseries {
        let Some((base, tags, le)) = bucket_of(&series.labels) else {
            continue;
        };
        for sample in &series.samples {
            if sample.value.to_bits() != STALE_NAN {
                let key = (base.clone(), tags.clone(), sample.timestamp);
                buckets.entry(key).or_default().push((le, sample.value));
            }
        }
    }
    buckets.retain(|_, b| b.iter().any(|(le, _)| *le == f64::INFINITY));
    if buckets.is_empty() {
        return Vec::new();
    }
    let bases: std::collections::BTreeSet<&str> = buckets.keys().map(|k| k.0.as_str()).collect();
    let mut sums: BTreeMap<Key, f64> = BTreeMap::new();
    request.timeseries.retain(|series| {
        let (metric, tags) = series_identity(series.labels.clone());
        let Some(metric) = metric else { return true };
        if bucket_of(&series.labels).is_some_and(|(base, _, _)| bases.contains(base.as_str())) {
            return false;
        }
        for suffix in ["_sum", "_count"] {
            if let Some(base) = metric.strip_suffix(suffix).filter(|b| bases.contains(b)) {
                if suffix == "_sum" {
                    for sample in &series.samples {
                        sums.insert(
                            (base.to_string(), tags.clone(), sample.timestamp),
                            sample.value,
                        );
                    }
                }
                return false;
            }
        }
        true
    });
    buckets
        .into_iter()
        .map(|(key, mut pairs)| {
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let sum = sums.get(&key).copied();
            let (metric, tags, timestamp_ms) = key;
            HistogramSample {
                metric,
                tags,
                timestamp_ms,
                state: crate::histogram::Cumulative {
                    bounds: pairs.iter().map(|p| p.0).collect(),
                    counts: pairs.iter().map(|p| p.1).collect(),
                    sum,
                },
            }
        })
        .collect()
}

/// `(base name, labels without le, le)` of a `_bucket` series.
fn bucket_of(labels: &[Label]) -> Option<(String, Tags, f64)> {
    let (metric, mut tags) = series_identity(labels.to_vec());
    let base = metric?.strip_suffix("_bucket")?.to_string();
    let le = tags.remove("le")?.trim().parse::<f64>().ok()?;
    Some((base, tags, le))
}

/// `__name__` and the other labels as tags.
fn series_identity(labels: Vec<Label>) -> (Option<String>, Tags) {
    let mut metric = None;
    let mut tags = Tags::new();
    for Label { name, value } in labels {
        if name == "__name__" {
            metric = Some(value);
        } else if !value.is_empty() {
            tags.insert(name, value);
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
        let batch = to_points(decoded, &Limits::default(), 10, NOW).unwrap();
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        let points: Vec<_> = batch.points.iter().map(|p| &p.point).collect();
        assert_eq!(points.len(), 2, "the staleness marker is no point");
        assert_eq!(points[0].metric, "reqs_total");
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
        let batch = to_points(request, &Limits::default(), 10, NOW).unwrap();
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
    fn classic_histograms_are_put_together_from_their_bucket_series() {
        let bucket = |le: &str, v: f64| {
            series(
                &[("__name__", "lat_bucket"), ("le", le), ("pod", "a")],
                &[(v, NOW)],
            )
        };
        let mut request = WriteRequest {
            timeseries: vec![
                bucket("0.5", 3.0),
                bucket("+Inf", 5.0),
                bucket("1.0", 4.0),
                series(&[("__name__", "lat_sum"), ("pod", "a")], &[(2.5, NOW)]),
                series(&[("__name__", "lat_count"), ("pod", "a")], &[(5.0, NOW)]),
                // No +Inf bucket: not a whole histogram, left as it is.
                series(&[("__name__", "cut_bucket"), ("le", "1")], &[(1.0, NOW)]),
                series(&[("__name__", "up")], &[(1.0, NOW)]),
            ],
            metadata: vec![],
        };
        let histograms = take_histograms(&mut request);
        assert_eq!(histograms.len(), 1);
        let h = &histograms[0];
        assert_eq!((h.metric.as_str(), h.timestamp_ms), ("lat", NOW));
        assert_eq!(h.tags.len(), 1);
        assert_eq!(h.state.bounds, [0.5, 1.0, f64::INFINITY]);
        assert_eq!(h.state.counts, [3.0, 4.0, 5.0]);
        assert_eq!(h.state.sum, Some(2.5));
        let left: Vec<_> = request
            .timeseries
            .iter()
            .map(|s| series_identity(s.labels.clone()).0.unwrap())
            .collect();
        assert_eq!(left, ["cut_bucket", "up"]);
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
            to_points(many, &Limits::default(), 2, NOW),
            Err(BodyError::TooManyPoints { count: 3, limit: 2 })
        ));
    }
}
