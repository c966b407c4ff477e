//! Decoding of ingestion request bodies: content encodings (identity, gzip, zstd),
//! then JSON in the three accepted shapes (one object, an array, or NDJSON), then
//! per-point validation.

use std::borrow::Cow;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::TimestampMs;
use crate::point::{Point, Tags};
use crate::validate::{Limits, PointError, RejectReason, UncheckedPoint, validate};

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
    #[error("{count} points in one request; at most {limit} are accepted")]
    TooManyPoints { count: usize, limit: usize },
}

/// Undoes the `Content-Encoding` of a body, refusing to inflate beyond `max_len`
/// bytes so that a small compressed body cannot exhaust memory.
pub fn decode_content<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    max_len: usize,
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
        Some("gzip") | Some("x-gzip") => {
            inflate(flate2::read::MultiGzDecoder::new(body), max_len, "gzip")
        }
        Some("zstd") => {
            let decoder =
                zstd::stream::read::Decoder::new(body).map_err(|e| BodyError::Corrupt {
                    encoding: "zstd",
                    message: e.to_string(),
                })?;
            inflate(decoder, max_len, "zstd")
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

fn inflate<'a>(
    reader: impl Read,
    max_len: usize,
    encoding: &'static str,
) -> Result<Cow<'a, [u8]>, BodyError> {
    let mut out = Vec::new();
    let read = reader
        .take(max_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt {
            encoding,
            message: e.to_string(),
        })?;
    if read > max_len {
        return Err(BodyError::TooLarge {
            limit: max_len,
            after: " after decompression",
        });
    }
    Ok(Cow::Owned(out))
}

/// The points of one request: the valid ones in order, and an error per invalid one.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    pub points: Vec<Point>,
    pub errors: Vec<PointError>,
}

/// Parses and validates a decoded body.
///
/// A body starting with `[` is a JSON array; anything else is NDJSON, of which a
/// single JSON object is the one-line case. A syntax error inside one NDJSON line
/// rejects that line only; in an array it rejects the body, since nothing after
/// the error can be located reliably.
pub fn parse_points(
    body: &[u8],
    limits: &Limits,
    max_points: usize,
    now_ms: TimestampMs,
) -> Result<ParsedBatch, BodyError> {
    let text = trim_ascii(body);
    if text.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut batch = ParsedBatch::default();
    let mut accept = |index: usize, item: Result<UncheckedPoint, PointError>| match item
        .and_then(|p| validate(index, p, limits, now_ms))
    {
        Ok(point) => batch.points.push(point),
        Err(error) => batch.errors.push(error),
    };
    if text[0] == b'[' {
        // The common case, every point well typed, decodes in one pass; any
        // point the typed decode refuses sends the body through the path that
        // names each bad point and field.
        if let Ok(points) = serde_json::from_slice::<Vec<TypedPoint>>(text) {
            if points.len() > max_points {
                return Err(BodyError::TooManyPoints {
                    count: points.len(),
                    limit: max_points,
                });
            }
            for (index, point) in points.into_iter().enumerate() {
                accept(index, Ok(point.into()));
            }
            return Ok(batch);
        }
        let items: Vec<&RawValue> = serde_json::from_slice(text).map_err(json_error)?;
        if items.len() > max_points {
            return Err(BodyError::TooManyPoints {
                count: items.len(),
                limit: max_points,
            });
        }
        for (index, raw) in items.into_iter().enumerate() {
            accept(index, decode_point(index, raw.get().as_bytes()));
        }
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
            accept(index, decode_point(index, line));
        }
    }
    Ok(batch)
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
/// this accepts gives the same points as the field-by-field path.
#[derive(Deserialize)]
struct TypedPoint {
    metric_name: String,
    value: f64,
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(default)]
    tags: Option<Tags>,
}

impl From<TypedPoint> for UncheckedPoint {
    fn from(p: TypedPoint) -> UncheckedPoint {
        UncheckedPoint {
            metric: p.metric_name,
            tags: p.tags.unwrap_or_default(),
            value: p.value,
            timestamp_secs: p.timestamp,
        }
    }
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
}

fn decode_point(index: usize, json: &[u8]) -> Result<UncheckedPoint, PointError> {
    let malformed =
        |message: String| PointError::new(index, None, RejectReason::Malformed, message);
    if json.first() != Some(&b'{') {
        return Err(malformed("each point must be a JSON object".into()));
    }
    match serde_json::from_slice::<TypedPoint>(json) {
        Ok(point) => Ok(point.into()),
        Err(_) => decode_point_by_field(index, json),
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

    let value = wire
        .value
        .ok_or_else(|| field_err("value", RejectReason::InvalidValue, "is required"))?;
    let value: f64 = serde_json::from_str(value.get()).map_err(|_| {
        field_err(
            "value",
            RejectReason::InvalidValue,
            "must be a finite number (JSON number, not a string)",
        )
    })?;

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
        Some(raw) => serde_json::from_str::<Tags>(raw).map_err(|_| {
            field_err(
                "tags",
                RejectReason::InvalidTag,
                "must be an object of string keys to string values",
            )
        })?,
    };
    Ok(UncheckedPoint {
        metric,
        tags,
        value,
        timestamp_secs,
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
            r#"{"metric_name":"m","value":0,"tags":{"k":"first","k":"second"}}"#,
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
