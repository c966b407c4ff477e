//! Decoding of ingestion request bodies: content encodings (identity, gzip, zstd),
//! then JSON in the three accepted shapes (one object, an array, or NDJSON), then
//! per-point validation.

use std::borrow::Cow;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::TimestampMs;
use crate::point::{MetricKind, Point, Tags};
use crate::sketch::Distribution;
use crate::validate::{Limits, PointError, RejectReason, UncheckedPoint, validate};

pub use super::json::SketchJson;

/// Why a whole request body was refused (as opposed to single points in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("content encoding `{0}` is not supported; send identity, gzip or zstd")]
    UnsupportedEncoding(String),
    #[error("body is larger than the limit of {limit} bytes{after}")]
    TooLarge { limit: usize, after: &'static str },
    #[error("body is not valid {encoding}: {message}")]
    Corrupt {
        encoding: &'static str,
        message: String,
    },
    #[error("body is empty; send a JSON point, a JSON array of points, or NDJSON")]
    Empty,
    #[error("body is not valid JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// Counting stops at the first point over the limit, so `count` is at
    /// most `limit + 1` for an array (the rest is never parsed).
    #[error("{count} or more points in one request; at most {limit} are accepted")]
    TooManyPoints { count: usize, limit: usize },
    /// The process-wide decode budget (`http.max_decode_bytes`) stayed full.
    #[error(
        "the server is decoding as many bytes as it allows at once; nothing was accepted, retry later"
    )]
    Busy,
}

/// Undoes the `Content-Encoding` of a body, refusing to inflate beyond `max_len`
/// bytes so that a small compressed body cannot exhaust memory.
pub fn decode_content<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    max_len: usize,
) -> Result<Cow<'a, [u8]>, BodyError> {
    decode_content_within(encoding, body, max_len, &mut |_| Ok(()))
}

/// How many inflated bytes are produced (and charged) at a time.
const INFLATE_STEP: usize = 64 << 10;

/// [`decode_content`], calling `reserve(n)` before `n` more inflated bytes
/// are kept, so a process-wide budget can refuse (with its own error) before
/// the memory is taken. Identity bodies are borrowed and reserve nothing.
pub fn decode_content_within<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    max_len: usize,
    reserve: &mut dyn FnMut(usize) -> Result<(), BodyError>,
) -> Result<Cow<'a, [u8]>, BodyError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > max_len {
                return Err(BodyError::TooLarge {
                    limit: max_len,
                    after: "",
                });
            }
            Ok(Cow::Borrowed(body))
        }
        Some("gzip") | Some("x-gzip") => inflate(
            flate2::read::MultiGzDecoder::new(body),
            max_len,
            gzip_size(body),
            "gzip",
            reserve,
        ),
        Some("zstd") => {
            let decoder =
                zstd::stream::read::Decoder::new(body).map_err(|e| BodyError::Corrupt {
                    encoding: "zstd",
                    message: e.to_string(),
                })?;
            let size = zstd::zstd_safe::get_frame_content_size(body)
                .ok()
                .flatten()
                .and_then(|n| usize::try_from(n).ok());
            inflate(decoder, max_len, size, "zstd", reserve)
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

/// The decompressed size a gzip body announces: the last member's `ISIZE`
/// (the size modulo 2^32). A hint only: a body may lie or hold several members.
fn gzip_size(body: &[u8]) -> Option<usize> {
    let tail: [u8; 4] = body.get(body.len().checked_sub(4)?..)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(tail)).ok()
}

/// Inflates step by step, each step reserved before it is kept, never past
/// `max_len + 1` bytes.
///
/// The output is allocated once for the size the body announces (or for
/// `max_len` when it announces none): growing by doubling would hold the old
/// and the new buffer at once on every growth, half again more than the
/// output. Pages not yet written take no memory, so a generous capacity
/// costs only address space. A body that lies about its size grows straight
/// to `max_len`, once.
fn inflate<'a>(
    reader: impl Read,
    max_len: usize,
    announced: Option<usize>,
    encoding: &'static str,
    reserve: &mut dyn FnMut(usize) -> Result<(), BodyError>,
) -> Result<Cow<'a, [u8]>, BodyError> {
    let mut reader = reader.take(max_len as u64 + 1);
    let mut out = Vec::with_capacity(announced.map_or(max_len, |n| n.min(max_len)));
    let mut step = vec![0u8; INFLATE_STEP];
    loop {
        let n = match reader.read(&mut step) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(BodyError::Corrupt {
                    encoding,
                    message: e.to_string(),
                });
            }
        };
        if out.len() + n > max_len {
            return Err(BodyError::TooLarge {
                limit: max_len,
                after: " after decompression",
            });
        }
        if out.len() + n > out.capacity() {
            // The copy into the larger buffer briefly holds both.
            reserve(out.len())?;
            out.reserve_exact(max_len - out.len());
        }
        reserve(n)?;
        out.extend_from_slice(&step[..n]);
    }
    Ok(Cow::Owned(out))
}

/// A valid point and its position in the request (0-based), so that answers
/// and later refusals (such as the gateway's active-series limit) name the
/// point as the client numbered it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedPoint {
    pub index: usize,
    pub point: Point,
}

/// The points of one request: the valid ones in order, and an error per invalid one.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    pub points: Vec<IndexedPoint>,
    pub errors: Vec<PointError>,
}

impl ParsedBatch {
    /// The valid points without their positions.
    pub fn into_points(self) -> Vec<Point> {
        self.points.into_iter().map(|p| p.point).collect()
    }
}

/// Parses and validates a decoded body.
///
/// A body starting with `[` is a JSON array; anything else is NDJSON, of which a
/// single JSON object is the one-line case. A syntax error inside one NDJSON line
/// rejects that line only; in an array it rejects the body, since nothing after
/// the error can be located reliably.
///
/// Both shapes are read as a stream, one point at a time, and reading stops at
/// the first point over `max_points`: memory follows the points kept, never the
/// number of JSON elements sent (an array of millions of `1`s is refused after
/// `max_points + 1` of them).
pub fn parse_points(
    body: &[u8],
    limits: &Limits,
    max_points: usize,
    now_ms: TimestampMs,
) -> Result<ParsedBatch, BodyError> {
    parse_points_within(body, limits, max_points, now_ms, &mut |_| Ok(()))
}

/// What one parsed element is charged beyond its JSON text: about what a
/// kept point (its strings and tag map) or a point error (its message) holds.
pub const ELEMENT_COST: usize = 256;

/// [`parse_points`], calling `reserve` before each element is parsed with its
/// share of memory (its JSON length plus [`ELEMENT_COST`]), so a process-wide
/// budget covers what the points and errors of a request hold, not only its
/// bytes. A refusal from `reserve` ends the parse with that error.
pub fn parse_points_within(
    body: &[u8],
    limits: &Limits,
    max_points: usize,
    now_ms: TimestampMs,
    reserve: &mut dyn FnMut(usize) -> Result<(), BodyError>,
) -> Result<ParsedBatch, BodyError> {
    let text = trim_ascii(body);
    if text.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut batch = ParsedBatch::default();
    let mut refused = None;
    let mut accept = |index: usize, json: &[u8]| -> bool {
        if let Err(error) = reserve(json.len() + ELEMENT_COST) {
            refused = Some(error);
            return false;
        }
        match decode_point(index, json).and_then(|p| validate(index, p, limits, now_ms)) {
            Ok(point) => batch.points.push(IndexedPoint { index, point }),
            Err(error) => batch.errors.push(error),
        }
        true
    };
    if text[0] == b'[' {
        let mut reader = serde_json::Deserializer::from_slice(text);
        let mut over = None;
        let stream = PointStream {
            max_points,
            over: &mut over,
            accept: &mut accept,
        };
        let read =
            serde::Deserializer::deserialize_seq(&mut reader, stream).and_then(|()| reader.end());
        if let Some(error) = refused {
            return Err(error);
        }
        if let Some(count) = over {
            return Err(BodyError::TooManyPoints {
                count,
                limit: max_points,
            });
        }
        read.map_err(json_error)?;
    } else {
        let lines = text
            .split(|b| *b == b'\n')
            .map(trim_ascii)
            .filter(|l| !l.is_empty());
        for (index, line) in lines.enumerate() {
            if index >= max_points {
                return Err(BodyError::TooManyPoints {
                    count: index + 1,
                    limit: max_points,
                });
            }
            if !accept(index, line) {
                break;
            }
        }
        if let Some(error) = refused {
            return Err(error);
        }
    }
    Ok(batch)
}

/// Walks a JSON array element by element, handing each one (still raw) to
/// `accept` with its index; stops with `over` set at element `max_points`, or
/// when `accept` says no.
struct PointStream<'s, F> {
    max_points: usize,
    over: &'s mut Option<usize>,
    accept: &'s mut F,
}

impl<'de, F: FnMut(usize, &[u8]) -> bool> serde::de::Visitor<'de> for PointStream<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of points")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if index >= self.max_points {
                *self.over = Some(index + 1);
                return Err(serde::de::Error::custom("too many points"));
            }
            if !(self.accept)(index, raw.get().as_bytes()) {
                return Err(serde::de::Error::custom("over the decode budget"));
            }
            index += 1;
        }
        Ok(())
    }
}

fn json_error(e: serde_json::Error) -> BodyError {
    BodyError::Json {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e),
    }
}

/// serde_json appends "at line L column C" to its messages; the position is
/// reported in its own fields, so keep the message short.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// One point of the wire contract decoded straight into its types. Unknown
/// fields are ignored and `null` means absent, as in [`WirePoint`], so a body
/// this accepts gives the same points as the field-by-field path. It is also
/// the `Point` schema of the ingest routes' OpenAPI documents.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = Point, example = json!({"metric_name": "cpu_usage", "value": 92.5, "timestamp": 1721199945, "tags": {"host": "web-01", "env": "prod"}}))]
pub struct TypedPoint {
    /// The metric: `[A-Za-z_][A-Za-z0-9_.:-]*`, at most 200 bytes.
    #[schema(
        example = "cpu_usage",
        pattern = "^[A-Za-z_][A-Za-z0-9_.:-]*$",
        max_length = 200
    )]
    metric_name: String,
    /// The value: a finite number (a JSON string is refused). Required,
    /// except for a point with a `sketch`. Read exactly: the double nearest
    /// to the decimal sent, so every value round-trips bit for bit.
    #[serde(default)]
    #[schema(example = 92.5)]
    value: Option<f64>,
    /// Event time in Unix seconds (fractions allowed); absent or `null` means
    /// the time of arrival. At most `limits.max_past` (1 d) old and
    /// `limits.max_future` (10 m) ahead.
    #[serde(default)]
    #[schema(example = 1721199945)]
    timestamp: Option<f64>,
    /// At most 32 tags: keys `[A-Za-z_][A-Za-z0-9_.-]*` up to 100 bytes, values
    /// 1 to 256 bytes without control characters, each key once.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>, example = json!({"host": "web-01", "env": "prod"}))]
    tags: Option<UniqueTags>,
    /// What the value means: `gauge` (the default), `counter` (a cumulative
    /// running total), `delta_counter` (the increment since the series'
    /// previous point) or `histogram` (the point carries a `sketch`).
    #[serde(default)]
    kind: Option<MetricKind>,
    /// The observations of a histogram point, instead of `value`.
    #[serde(default)]
    sketch: Option<SketchJson>,
}

/// Tags as sent, refusing a key given twice: keeping one of the two values
/// silently would store a series the client did not ask for (a duplicate
/// field of the point is refused the same way).
struct UniqueTags(Tags);

/// The start of the error [`UniqueTags`] gives, so the field-by-field path can
/// tell it from a wrong type.
const DUPLICATE_TAG: &str = "duplicate tag key";

impl<'de> Deserialize<'de> for UniqueTags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = UniqueTags;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of string keys to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueTags, A::Error> {
                let mut tags = Tags::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if tags.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE_TAG} `{key}`")));
                    }
                    tags.insert(key, value);
                }
                Ok(UniqueTags(tags))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// A point's `sketch` as a distribution, or the error naming the field.
fn read_sketch(
    index: usize,
    sketch: Option<SketchJson>,
) -> Result<Option<Box<Distribution>>, PointError> {
    sketch
        .map(|s| {
            s.distribution().map(Box::new).map_err(|e| {
                PointError::new(
                    index,
                    Some("sketch"),
                    RejectReason::InvalidValue,
                    e.to_string(),
                )
            })
        })
        .transpose()
}

/// The JSON object of one point, with each field kept raw so that a wrong type is
/// reported against its own field rather than as a generic parse failure.
#[derive(Deserialize)]
struct WirePoint<'a> {
    #[serde(borrow)]
    metric_name: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    tags: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    sketch: Option<&'a RawValue>,
}

fn decode_point(index: usize, json: &[u8]) -> Result<UncheckedPoint, PointError> {
    let malformed =
        |message: String| PointError::new(index, None, RejectReason::Malformed, message);
    if json.first() != Some(&b'{') {
        return Err(malformed("each point must be a JSON object".into()));
    }
    match serde_json::from_slice::<TypedPoint>(json) {
        Ok(p) if p.value.is_some() || p.sketch.is_some() => Ok(UncheckedPoint {
            metric: p.metric_name,
            tags: p.tags.map(|t| t.0).unwrap_or_default(),
            value: p.value.unwrap_or(0.0),
            timestamp_secs: p.timestamp,
            kind: p.kind.unwrap_or_default(),
            sketch: read_sketch(index, p.sketch)?,
        }),
        _ => decode_point_by_field(index, json),
    }
}

/// Decodes one point field by field, so that a wrong type is reported against
/// its own field rather than as a generic parse failure.
fn decode_point_by_field(index: usize, json: &[u8]) -> Result<UncheckedPoint, PointError> {
    let malformed =
        |message: String| PointError::new(index, None, RejectReason::Malformed, message);
    let wire: WirePoint = serde_json::from_slice(json)
        .map_err(|e| malformed(format!("not a valid JSON object: {}", strip_position(&e))))?;
    let field_err =
        |field: &str, reason, message: &str| PointError::new(index, Some(field), reason, message);

    let metric = wire
        .metric_name
        .ok_or_else(|| field_err("metric_name", RejectReason::InvalidName, "is required"))?;
    let metric: String = serde_json::from_str(metric.get())
        .map_err(|_| field_err("metric_name", RejectReason::InvalidName, "must be a string"))?;

    let kind = match wire.kind.map(RawValue::get) {
        None | Some("null") => MetricKind::Gauge,
        Some(raw) => serde_json::from_str::<String>(raw)
            .map_err(|_| "must be a string".to_string())
            .and_then(|k| k.parse())
            .map_err(|m| field_err("kind", RejectReason::InvalidValue, &m))?,
    };
    let sketch = match wire.sketch.map(RawValue::get) {
        None | Some("null") => None,
        Some(raw) => {
            let sketch = serde_json::from_str::<SketchJson>(raw).map_err(|e| {
                field_err(
                    "sketch",
                    RejectReason::InvalidValue,
                    &format!(
                        "must be an object {{\"ddsketch\": <base64>, \"sum\", \"min\", \"max\"}}: {}",
                        strip_position(&e)
                    ),
                )
            })?;
            read_sketch(index, Some(sketch))?
        }
    };

    let value = match (wire.value, &sketch) {
        (None, Some(_)) => 0.0,
        (None, None) => {
            return Err(field_err(
                "value",
                RejectReason::InvalidValue,
                "is required (or a `sketch` for a histogram point)",
            ));
        }
        (Some(value), _) => serde_json::from_str(value.get()).map_err(|_| {
            field_err(
                "value",
                RejectReason::InvalidValue,
                "must be a finite number (JSON number, not a string)",
            )
        })?,
    };

    let timestamp_secs = match wire.timestamp.map(RawValue::get) {
        None | Some("null") => None,
        Some(raw) => Some(serde_json::from_str::<f64>(raw).map_err(|_| {
            field_err(
                "timestamp",
                RejectReason::InvalidTimestamp,
                "must be a number of Unix seconds",
            )
        })?),
    };

    let tags = match wire.tags.map(RawValue::get) {
        None | Some("null") => Tags::new(),
        Some(raw) => {
            serde_json::from_str::<UniqueTags>(raw)
                .map_err(|e| {
                    let message = strip_position(&e);
                    let message = if message.starts_with(DUPLICATE_TAG) {
                        message.as_str()
                    } else {
                        "must be an object of string keys to string values"
                    };
                    field_err("tags", RejectReason::InvalidTag, message)
                })?
                .0
        }
    };
    Ok(UncheckedPoint {
        metric,
        tags,
        value,
        timestamp_secs,
        kind,
        sketch,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const NOW: i64 = 1_721_199_945_000;

    fn parse(body: &str) -> Result<ParsedBatch, BodyError> {
        parse_points(body.as_bytes(), &Limits::default(), 1000, NOW)
    }

    #[test]
    fn single_point_array_and_ndjson_are_accepted() {
        let one = r#"{"metric_name":"cpu_usage","value":92.5,"timestamp":1721199945,"tags":{"host":"web-01","env":"prod"}}"#;
        assert_eq!(parse(one).unwrap().points.len(), 1);
        assert_eq!(parse(&format!("[{one},{one}]")).unwrap().points.len(), 2);
        assert_eq!(
            parse(&format!("{one}\n\n{one}\r\n{one}\n"))
                .unwrap()
                .points
                .len(),
            3
        );
    }

    #[test]
    fn wrong_json_types_name_index_and_field() {
        let body = r#"[{"metric_name":"a","value":1},
            {"metric_name":"a","value":"1"},
            {"metric_name":7,"value":1},
            {"metric_name":"a","value":1,"timestamp":"now"},
            {"metric_name":"a","value":1,"tags":{"k":3}},
            [1,2],
            {"value":1}]"#;
        let batch = parse(body).unwrap();
        assert_eq!(batch.points.len(), 1);
        let got: Vec<(usize, Option<&str>)> = batch
            .errors
            .iter()
            .map(|e| (e.index, e.field.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some("value")),
                (2, Some("metric_name")),
                (3, Some("timestamp")),
                (4, Some("tags")),
                (5, None),
                (6, Some("metric_name"))
            ]
        );
    }

    #[test]
    fn the_typed_and_the_field_by_field_decodes_agree_on_valid_points() {
        let points = [
            r#"{"metric_name":"cpu","value":1.5,"timestamp":1721199945.25,"tags":{"b":"2","a":"1"}}"#,
            r#"{"metric_name":"cpu","value":-3,"timestamp":null,"tags":null}"#,
            r#"{"value":7e3,"metric_name":"m","unknown":{"nested":[1,2]}}"#,
            r#"{"metric_name":"\u0063pu","value":1,"tags":{}}"#,
        ];
        for json in points {
            let typed = decode_point(0, json.as_bytes()).unwrap();
            let by_field = decode_point_by_field(0, json.as_bytes()).unwrap();
            assert_eq!(typed, by_field, "{json}");
        }
        let body = format!("[{}]", points.join(","));
        let batch = parse(&body).unwrap();
        assert_eq!(batch.points.len(), points.len());
        assert!(batch.errors.is_empty());
    }

    #[test]
    fn truncated_array_is_a_body_error_with_position() {
        let err = parse(r#"[{"metric_name":"a","value":1},{"metric_na"#).unwrap_err();
        assert!(matches!(err, BodyError::Json { line: 1, .. }), "{err:?}");
    }

    #[test]
    fn a_broken_ndjson_line_rejects_only_that_line() {
        let batch = parse("{\"metric_name\":\"a\",\"value\":1}\n{\"metric_name\":\"a\",\"val\n{\"metric_name\":\"b\",\"value\":2}").unwrap();
        assert_eq!(batch.points.len(), 2);
        assert_eq!(batch.errors[0].index, 1);
    }

    #[test]
    fn empty_body_and_too_many_points_are_refused() {
        assert_eq!(parse("  \n ").unwrap_err(), BodyError::Empty);
        let many = format!(
            "[{}]",
            vec![r#"{"metric_name":"a","value":1}"#; 1001].join(",")
        );
        assert!(matches!(
            parse(&many).unwrap_err(),
            BodyError::TooManyPoints { count: 1001, .. }
        ));
    }

    #[test]
    fn an_element_flood_stops_at_the_point_limit_without_parsing_the_rest() {
        // A million elements after the limit, then a syntax error: refused for
        // the count, so the rest was never read.
        let flood = format!("[{}1,]x", "1,".repeat(1_000_000));
        assert_eq!(
            parse(&flood).unwrap_err(),
            BodyError::TooManyPoints {
                count: 1001,
                limit: 1000
            }
        );
    }

    #[test]
    fn valid_points_keep_their_index_in_the_request() {
        let batch = parse(
            r#"[{"metric_name":"a","value":"x"},{"metric_name":"a","value":1},7,{"metric_name":"b","value":2}]"#,
        )
        .unwrap();
        let indices: Vec<usize> = batch.points.iter().map(|p| p.index).collect();
        assert_eq!(indices, [1, 3]);
        assert_eq!(
            batch.errors.iter().map(|e| e.index).collect::<Vec<_>>(),
            [0, 2]
        );
    }

    #[test]
    fn a_duplicate_tag_key_is_refused_naming_the_key() {
        let batch =
            parse(r#"{"metric_name":"m","value":0,"tags":{"k":"first","k":"second"}}"#).unwrap();
        assert!(batch.points.is_empty());
        let error = &batch.errors[0];
        assert_eq!(error.field.as_deref(), Some("tags"));
        assert_eq!(error.reason, RejectReason::InvalidTag);
        assert!(
            error.message.contains("duplicate tag key `k`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn deep_nesting_and_invalid_utf8_are_errors_not_crashes() {
        // One element nested 100 000 deep: skipped over without recursion,
        // and refused as a point that is not an object.
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        let batch = parse(&deep).unwrap();
        assert_eq!((batch.points.len(), batch.errors.len()), (0, 1));
        let deep_point = format!(
            r#"{{"metric_name":"a","value":1,"x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        // An unknown field is skipped the same way, however deep.
        assert_eq!(parse(&deep_point).unwrap().points.len(), 1);
        let bad = b"{\"metric_name\":\"\xff\xfe\",\"value\":1}";
        let batch = parse_points(bad, &Limits::default(), 10, NOW).unwrap();
        assert_eq!(batch.errors.len(), 1);
        assert!(matches!(
            parse_points(b"[\"\xff\"]", &Limits::default(), 10, NOW),
            Err(BodyError::Json { .. })
        ));
    }

    #[test]
    fn inflating_charges_every_kept_byte_and_stops_when_refused() {
        let body = vec![b' '; 300 << 10];
        let zs = zstd::encode_all(&body[..], 3).unwrap();
        let mut charged = 0;
        let decoded = decode_content_within(Some("zstd"), &zs, 1 << 20, &mut |n| {
            charged += n;
            Ok(())
        })
        .unwrap();
        assert_eq!((decoded.len(), charged), (body.len(), body.len()));
        let refused =
            decode_content_within(Some("zstd"), &zs, 1 << 20, &mut |_| Err(BodyError::Busy));
        assert_eq!(refused.unwrap_err(), BodyError::Busy);
    }

    /// Every point of a parsed body is accounted for once, under its index:
    /// the property the gateway's fuzz target checks, here on stable for any
    /// mix of valid, invalid and broken elements.
    fn assert_each_index_once(batch: &ParsedBatch, max_points: usize) {
        let mut indices: Vec<usize> = batch.points.iter().map(|p| p.index).collect();
        indices.extend(batch.errors.iter().map(|e| e.index));
        indices.sort_unstable();
        assert!(indices.len() <= max_points);
        assert!(
            indices.iter().enumerate().all(|(i, &index)| i == index),
            "{indices:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panic_and_account_for_every_point(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            if let Ok(batch) = parse_points(&body, &Limits::default(), 16, NOW) {
                assert_each_index_once(&batch, 16);
            }
        }

        #[test]
        fn any_mix_of_elements_keeps_each_index(
            elements in proptest::collection::vec(
                proptest::sample::select(vec![
                    r#"{"metric_name":"a","value":1}"#,
                    r#"{"metric_name":"a","value":"x"}"#,
                    r#"{"metric_name":"b","value":2,"tags":{"k":"v","k":"w"}}"#,
                    "7", "null", "[]", r#"{"value":1}"#, r#"{"metric_name":"c","value":1e999}"#,
                ]),
                0..40,
            ),
            ndjson in proptest::bool::ANY,
        ) {
            // NDJSON whose first line opens with `[` is read as an array.
            proptest::prop_assume!(!(ndjson && elements.first() == Some(&"[]")));
            let body = if ndjson {
                elements.join("\n")
            } else {
                format!("[{}]", elements.join(","))
            };
            match parse(&body) {
                Ok(batch) => {
                    assert_each_index_once(&batch, 1000);
                    proptest::prop_assert_eq!(batch.points.len() + batch.errors.len(), elements.len());
                }
                Err(error) => proptest::prop_assert!(elements.is_empty() || matches!(error, BodyError::Json { .. }), "{error:?}"),
            }
        }
    }

    #[test]
    fn gzip_and_zstd_bodies_decode() {
        let body = br#"{"metric_name":"a","value":1}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(&*decode_content(Some("gzip"), &gz, 1024).unwrap(), body);
        let zs = zstd::encode_all(&body[..], 1).unwrap();
        assert_eq!(&*decode_content(Some("ZSTD"), &zs, 1024).unwrap(), body);
        assert_eq!(&*decode_content(None, body, 1024).unwrap(), body);
    }

    #[test]
    fn bad_encodings_and_bombs_are_refused() {
        assert!(matches!(
            decode_content(Some("br"), b"x", 10),
            Err(BodyError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            decode_content(Some("gzip"), b"not gzip", 10),
            Err(BodyError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_content(None, &[b' '; 11], 10),
            Err(BodyError::TooLarge { .. })
        ));
        let bomb = zstd::encode_all(&vec![b' '; 1 << 20][..], 3).unwrap();
        assert!(matches!(
            decode_content(Some("zstd"), &bomb, 1 << 16),
            Err(BodyError::TooLarge { .. })
        ));
    }
}
