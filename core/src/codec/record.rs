//! The bus record format (Kafka topic `pulse.<namespace>.<pipeline>.points`).
//!
//! * key: the series id, 8 bytes big-endian (see [`crate::series`]);
//! * value: one format-version byte, then a protobuf message. Version `1` is
//!   `pulse.v1.Point` from `core/proto/pulse.proto`.
//!
//! A consumer that meets an unknown version byte must not guess: it sends the
//! record to its dead-letter path. Field numbers are never reused, so new optional
//! fields can be added to version 1 without breaking older readers.

use prost::Message;

use crate::TimestampMs;
use crate::idempotency::{BatchKey, BatchRef};
use crate::point::{MetricKind, Point, Tags};
use crate::series::SeriesId;
use crate::sketch::Distribution;

/// The record format version this build writes.
pub const RECORD_VERSION: u8 = 1;

/// `pulse.v1.Point`.
#[derive(Clone, PartialEq, Message)]
pub struct PointV1 {
    #[prost(string, tag = "1")]
    pub metric_name: String,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp_ms: i64,
    /// Sorted by key.
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<TagV1>,
    /// The idempotency key of the batch the point came in (16 bytes), empty
    /// when the client sent none.
    #[prost(bytes = "vec", tag = "5")]
    pub batch_key: Vec<u8>,
    /// The point's index within that batch.
    #[prost(uint32, tag = "6")]
    pub batch_index: u32,
    /// The index of the first point of the request that carried it.
    #[prost(uint32, tag = "7")]
    pub batch_start: u32,
    /// `pulse.v1.MetricKind`: 0 gauge, 1 counter, 2 delta counter, 3 histogram.
    #[prost(int32, tag = "8")]
    pub kind: i32,
    /// The observations of a histogram point.
    #[prost(message, optional, tag = "9")]
    pub sketch: Option<SketchV1>,
}

/// `pulse.v1.Sketch`.
#[derive(Clone, PartialEq, Message)]
pub struct SketchV1 {
    /// DDSketch (relative accuracy 0.01) in DataDog's standard binary encoding.
    #[prost(bytes = "vec", tag = "1")]
    pub ddsketch: Vec<u8>,
    #[prost(double, tag = "2")]
    pub sum: f64,
    #[prost(double, tag = "3")]
    pub min: f64,
    #[prost(double, tag = "4")]
    pub max: f64,
}

/// `pulse.v1.Tag`.
#[derive(Clone, PartialEq, Message)]
pub struct TagV1 {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A record that cannot be turned back into a point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is empty")]
    Empty,
    #[error(
        "record format version {0} is unknown to this build (it reads version {RECORD_VERSION})"
    )]
    UnknownVersion(u8),
    #[error("record does not decode as pulse.v1.Point: {0}")]
    Decode(String),
    #[error("record key is {0} bytes, expected 8 (the series id)")]
    BadKey(usize),
    #[error("record's batch key is {0} bytes, expected 16")]
    BadBatchKey(usize),
    #[error("record's metric kind {0} is unknown to this build")]
    UnknownKind(i32),
    #[error("record's sketch: {0}")]
    BadSketch(String),
}

/// The record key of a series.
pub fn encode_key(id: SeriesId) -> [u8; 8] {
    id.0.to_be_bytes()
}

/// Reads a record key back into a series id.
pub fn decode_key(key: &[u8]) -> Result<SeriesId, RecordError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| RecordError::BadKey(key.len()))?;
    Ok(SeriesId(u64::from_be_bytes(bytes)))
}

/// Encodes a point as a versioned record value.
pub fn encode_point(point: &Point) -> Vec<u8> {
    encode_record(point, None)
}

/// Encodes a point and, when it came with an idempotency key, where it sits
/// in its batch.
pub fn encode_record(point: &Point, batch: Option<&BatchRef>) -> Vec<u8> {
    let message = PointV1 {
        metric_name: point.metric.clone(),
        value: point.value,
        timestamp_ms: point.timestamp_ms,
        tags: point
            .tags
            .iter()
            .map(|(k, v)| TagV1 {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        batch_key: batch.map(|b| b.key.0.to_vec()).unwrap_or_default(),
        batch_index: batch.map_or(0, |b| b.index),
        batch_start: batch.map_or(0, |b| b.start),
        kind: point.kind.code(),
        sketch: point.sketch.as_deref().map(|d| SketchV1 {
            ddsketch: d.sketch_bytes(),
            sum: d.sum(),
            min: d.min(),
            max: d.max(),
        }),
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(RECORD_VERSION);
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Decodes a record value written by [`encode_point`].
pub fn decode_point(bytes: &[u8]) -> Result<Point, RecordError> {
    decode_record(bytes).map(|(point, _)| point)
}

/// Decodes a record value written by [`encode_record`]: the point and its
/// place in a keyed batch, if any.
pub fn decode_record(bytes: &[u8]) -> Result<(Point, Option<BatchRef>), RecordError> {
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != RECORD_VERSION {
        return Err(RecordError::UnknownVersion(version));
    }
    let message = PointV1::decode(body).map_err(|e| RecordError::Decode(e.to_string()))?;
    let batch = match message.batch_key.len() {
        0 => None,
        16 => {
            let mut key = [0; 16];
            key.copy_from_slice(&message.batch_key);
            Some(BatchRef {
                key: BatchKey(key),
                index: message.batch_index,
                start: message.batch_start,
            })
        }
        n => return Err(RecordError::BadBatchKey(n)),
    };
    let kind = MetricKind::from_code(i64::from(message.kind))
        .ok_or(RecordError::UnknownKind(message.kind))?;
    let sketch = message
        .sketch
        .map(|s| {
            Distribution::from_sketch_bytes(&s.ddsketch, Some(s.sum), Some(s.min), Some(s.max))
                .map(Box::new)
                .map_err(|e| RecordError::BadSketch(e.to_string()))
        })
        .transpose()?;
    let tags: Tags = message.tags.into_iter().map(|t| (t.key, t.value)).collect();
    let point = Point {
        metric: message.metric_name,
        tags,
        value: message.value,
        timestamp_ms: message.timestamp_ms as TimestampMs,
        kind,
        sketch,
    };
    Ok((point, batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Point {
        Point::gauge(
            "cpu_usage",
            [("env", "prod"), ("host", "web-01")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            92.5,
            1_721_199_945_000,
        )
    }

    #[test]
    fn points_round_trip() {
        assert_eq!(decode_point(&encode_point(&sample())).unwrap(), sample());
    }

    #[test]
    fn counters_and_histograms_round_trip() {
        let counter = Point::counter("requests_total", Tags::new(), 3806.1772796135315, 5);
        assert_eq!(decode_point(&encode_point(&counter)).unwrap(), counter);
        let mut d = Distribution::of(&[0.5, 0.25, 8.0]);
        d.set_sum(8.7);
        let histogram = Point::histogram("req_seconds", Tags::new(), d, 5);
        assert_eq!(decode_point(&encode_point(&histogram)).unwrap(), histogram);
        let mut unknown = PointV1::decode(&encode_point(&counter)[1..]).unwrap();
        unknown.kind = 9;
        let mut bytes = vec![RECORD_VERSION];
        unknown.encode(&mut bytes).unwrap();
        assert_eq!(decode_point(&bytes), Err(RecordError::UnknownKind(9)));
    }

    #[test]
    fn version_one_bytes_are_pinned() {
        let bytes = encode_point(&Point::gauge("m", Tags::new(), 1.0, 1));
        assert_eq!(
            bytes,
            [1, 10, 1, b'm', 17, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 24, 1]
        );
    }

    #[test]
    fn batch_references_round_trip_and_records_without_them_still_decode() {
        let batch = BatchRef {
            key: BatchKey([7; 16]),
            index: 41,
            start: 40,
        };
        let bytes = encode_record(&sample(), Some(&batch));
        assert_eq!(decode_record(&bytes).unwrap(), (sample(), Some(batch)));
        assert_eq!(decode_point(&bytes).unwrap(), sample());
        // A record written before batch references existed.
        assert_eq!(
            decode_record(&encode_point(&sample())).unwrap(),
            (sample(), None)
        );
        let mut short = PointV1::decode(&bytes[1..]).unwrap();
        short.batch_key.truncate(3);
        let mut bytes = vec![RECORD_VERSION];
        short.encode(&mut bytes).unwrap();
        assert_eq!(decode_record(&bytes), Err(RecordError::BadBatchKey(3)));
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        assert_eq!(decode_point(&[]), Err(RecordError::Empty));
        assert_eq!(
            decode_point(&[2, 1, 2]),
            Err(RecordError::UnknownVersion(2))
        );
        assert!(matches!(
            decode_point(&[1, 0xff, 0xff, 0xff]),
            Err(RecordError::Decode(_))
        ));
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_errors() {
        let id = sample().series_id();
        assert_eq!(decode_key(&encode_key(id)).unwrap(), id);
        assert_eq!(decode_key(&[1, 2]), Err(RecordError::BadKey(2)));
    }
}
