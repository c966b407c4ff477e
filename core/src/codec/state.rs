//! Checkpointed state of an open window, written in the same store transaction
//! as the offsets it covers so a restarted processor resumes exactly where the
//! last commit left it. Same framing as bus records: a version byte, then the
//! protobuf message `pulse.v1.WindowState`.

use prost::Message;

use super::record::{RECORD_VERSION, RecordError, TagV1};
use crate::aggregate::{Aggregate, AggregateParts};
use crate::point::{MetricKind, Tags};

/// `pulse.v1.WindowState`.
#[derive(Clone, PartialEq, Message)]
pub struct WindowStateV1 {
    #[prost(string, tag = "1")]
    pub metric_name: String,
    #[prost(message, repeated, tag = "2")]
    pub tags: Vec<TagV1>,
    #[prost(uint64, tag = "3")]
    pub count: u64,
    #[prost(double, tag = "4")]
    pub sum: f64,
    #[prost(double, tag = "5")]
    pub min: f64,
    #[prost(double, tag = "6")]
    pub max: f64,
    #[prost(double, tag = "7")]
    pub last: f64,
    #[prost(int64, tag = "8")]
    pub last_ts: i64,
    /// DDSketch in DataDog's standard binary encoding.
    #[prost(bytes = "vec", tag = "9")]
    pub sketch: Vec<u8>,
    /// Labels of the windows this window's aggregate still has to be merged
    /// into when it closes (see `pulse_processor::window::layout`).
    #[prost(string, repeated, tag = "10")]
    pub feeds: Vec<String>,
    /// `pulse.v1.MetricKind` of the point that gave `last`.
    #[prost(int32, tag = "11")]
    pub kind: i32,
    /// The earliest value point and a counter's growth since (see
    /// `pulse_core::counter`). States written before kinds existed have none:
    /// `first_ts` 0 with `count` > 0 reads as "unknown", a gauge's.
    #[prost(double, tag = "12")]
    pub first: f64,
    #[prost(int64, tag = "13")]
    pub first_ts: i64,
    #[prost(double, tag = "14")]
    pub increase: f64,
}

/// A decoded window state.
#[derive(Debug, Clone)]
pub struct WindowState {
    pub metric: String,
    pub tags: Tags,
    pub agg: Aggregate,
    pub feeds: Vec<String>,
}

/// Encodes the state of one window of the series `metric`/`tags`, and the
/// labels of the windows it feeds (empty for a closed window).
pub fn encode_state(metric: &str, tags: &Tags, agg: &Aggregate, feeds: &[&str]) -> Vec<u8> {
    let message = WindowStateV1 {
        metric_name: metric.to_string(),
        tags: tags
            .iter()
            .map(|(k, v)| TagV1 {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        count: agg.count,
        sum: agg.sum,
        min: agg.min,
        max: agg.max,
        last: agg.last,
        last_ts: agg.last_ts,
        sketch: agg.sketch_bytes(),
        feeds: feeds.iter().map(|f| f.to_string()).collect(),
        kind: agg.kind.code(),
        first: agg.first,
        first_ts: agg.first_ts,
        increase: agg.increase,
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(RECORD_VERSION);
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Decodes what [`encode_state`] wrote.
pub fn decode_state(bytes: &[u8]) -> Result<WindowState, RecordError> {
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != RECORD_VERSION {
        return Err(RecordError::UnknownVersion(version));
    }
    let m = WindowStateV1::decode(body).map_err(|e| RecordError::Decode(e.to_string()))?;
    let kind = MetricKind::from_code(i64::from(m.kind)).ok_or(RecordError::UnknownKind(m.kind))?;
    let agg = Aggregate::from_parts(AggregateParts {
        count: m.count,
        sum: m.sum,
        min: m.min,
        max: m.max,
        last: m.last,
        last_ts: m.last_ts,
        kind,
        first: m.first,
        first_ts: m.first_ts,
        increase: m.increase,
        sketch: &m.sketch,
    })
    .map_err(|e| RecordError::Decode(e.to_string()))?;
    Ok(WindowState {
        metric: m.metric_name,
        tags: m.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        agg,
        feeds: m.feeds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AggKind;

    #[test]
    fn window_state_round_trips() {
        let mut agg = Aggregate::new();
        for i in 0..100 {
            agg.add_value(f64::from(i % 40) * 1.5, i64::from(i), MetricKind::Counter);
        }
        let tags: Tags = [("host".to_string(), "a".to_string())].into();
        let back = decode_state(&encode_state("m", &tags, &agg, &["5m", "10m/1m"])).unwrap();
        assert_eq!((back.metric.as_str(), &back.tags), ("m", &tags));
        assert_eq!(back.feeds, ["5m", "10m/1m"]);
        for kind in AggKind::defaults()
            .into_iter()
            .chain([AggKind::Increase, AggKind::Rate])
        {
            assert_eq!(
                back.agg.value_over(kind, 0, 100),
                agg.value_over(kind, 0, 100),
                "{kind}"
            );
        }
        assert_eq!(
            (back.agg.kind, back.agg.increase),
            (MetricKind::Counter, agg.increase)
        );
    }
}
