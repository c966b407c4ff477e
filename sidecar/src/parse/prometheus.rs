//! The Prometheus text exposition format (version 0.0.4), as an app's
//! `/metrics` serves it.
//!
//! Every sample line becomes one point with the line's name, its labels as tags
//! and its timestamp (or the scrape time): a counter or gauge is one line, a
//! histogram is its `_bucket{le=...}`, `_sum` and `_count` lines, a summary its
//! `{quantile=...}`, `_sum` and `_count` lines, so they arrive in Pulse exactly
//! as Prometheus would store them. `_created` lines of counters, histograms and
//! summaries are timestamps, not measurements, and are skipped.
//!
//! Written here rather than taken from a crate: the crates on crates.io either
//! split labels on `,` and `=` without honouring quotes and escapes (a label
//! value `"/a,b"` comes out wrong), cannot read timestamps, or are LGPL;
//! none is actively maintained. The grammar is small, and this parser is
//! property-tested and fuzzed.

use std::collections::{HashMap, HashSet};

use pulse_core::validate::UncheckedPoint;
use pulse_core::{MetricKind, Tags, TimestampMs};

use super::{Rejection, canonical_bound, sanitize_name, sanitize_tag_key};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Tags,
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries one.
    pub timestamp_ms: Option<TimestampMs>,
}

/// What one scrape held: its samples, a rejection per unreadable line, and
/// the families `# TYPE` calls counters (or summaries, whose `_sum` and
/// `_count` count too).
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub rejected: Vec<Rejection>,
    pub counters: HashSet<String>,
}

/// Parses a whole exposition. Unreadable lines are rejected one by one; the
/// rest is kept.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    // Family name → type, from `# TYPE` lines.
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE")
                && let (Some(name), Some(kind)) = (words.next(), words.next())
            {
                types.insert(name, kind);
            }
            continue;
        }
        match parse_sample(line) {
            Ok(sample) if is_created(&sample.name, &types) => {}
            Ok(sample) => out.samples.push(sample),
            Err(rejection) => out.rejected.push(rejection),
        }
    }
    for (family, kind) in types {
        match kind {
            "counter" => {
                // 0.0.4 writes `# TYPE x_total counter`, OpenMetrics `# TYPE x counter`.
                out.counters.insert(family.to_string());
                out.counters.insert(format!("{family}_total"));
            }
            "summary" => {
                out.counters.insert(format!("{family}_sum"));
                out.counters.insert(format!("{family}_count"));
            }
            _ => {}
        }
    }
    out
}

/// `<family>_created` of a counter, histogram or summary. `prometheus_client`
/// (Python) declares it as a family of its own (`# TYPE x_created gauge`)
/// next to `# TYPE x_total counter`, so the family is looked for with and
/// without `_total`.
fn is_created(name: &str, types: &HashMap<&str, &str>) -> bool {
    let Some(family) = name.strip_suffix("_created") else {
        return false;
    };
    let timed = |family: &str| {
        types
            .get(family)
            .is_some_and(|kind| matches!(*kind, "counter" | "histogram" | "summary"))
    };
    timed(family) || timed(&format!("{family}_total"))
}

/// Parses one sample line: `name{label="value",...} value [timestamp]`.
pub fn parse_sample(line: &str) -> Result<Sample, Rejection> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Rejection::malformed(format!(
            "line `{}` does not start with a metric name",
            clip(line)
        )));
    }
    let mut rest = &line[name_end..];
    let mut labels = Tags::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut words = rest.split([' ', '\t']).filter(|w| !w.is_empty());
    let value = words
        .next()
        .ok_or_else(|| Rejection::malformed(format!("line `{}` has no value", clip(line))))?;
    let value = parse_value(value)
        .ok_or_else(|| Rejection::malformed(format!("value `{}` is not a number", clip(value))))?;
    let timestamp_ms = match words.next() {
        None => None,
        Some(ts) => Some(ts.parse::<i64>().map_err(|_| {
            Rejection::malformed(format!(
                "timestamp `{}` is not integer milliseconds",
                clip(ts)
            ))
        })?),
    };
    if words.next().is_some() {
        return Err(Rejection::malformed(format!(
            "line `{}` has text after the timestamp",
            clip(line)
        )));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Go's `ParseFloat` spellings, which exporters use: `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Option<f64> {
    text.parse::<f64>().ok()
}

/// Reads `label="value",...}` and returns what follows the `}`.
fn parse_labels<'a>(mut text: &'a str, labels: &mut Tags) -> Result<&'a str, Rejection> {
    loop {
        text = text.trim_start_matches([' ', '\t']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let key_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len());
        let key = &text[..key_end];
        if key.is_empty() {
            return Err(Rejection::malformed(format!(
                "expected a label name at `{}`",
                clip(text)
            )));
        }
        text = text[key_end..].trim_start_matches([' ', '\t']);
        text = text
            .strip_prefix('=')
            .ok_or_else(|| Rejection::malformed(format!("label `{key}` has no `=`")))?
            .trim_start_matches([' ', '\t']);
        text = text
            .strip_prefix('"')
            .ok_or_else(|| Rejection::malformed(format!("label `{key}` has no quoted value")))?;
        let (value, rest) = unescape_until_quote(text)
            .ok_or_else(|| Rejection::malformed(format!("label `{key}`'s value is not closed")))?;
        // An empty label value means the label is absent (Prometheus semantics).
        if !value.is_empty() {
            labels.insert(sanitize_tag_key(key), value);
        }
        text = rest.trim_start_matches([' ', '\t']);
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        } else if !text.starts_with('}') {
            return Err(Rejection::malformed(format!(
                "expected `,` or `}}` after label `{key}`"
            )));
        }
    }
}

/// The value up to the closing quote, with `\\`, `\"` and `\n` undone, and the
/// text after the quote.
fn unescape_until_quote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other @ ('\\' | '"') => value.push(other),
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

/// The points of an exposition: one per sample, stamped with its own
/// timestamp or `scraped_at_ms`; the samples of counter families are
/// cumulative counters. (Classic histograms are then put together by
/// `pulse_core::histogram`.)
pub fn to_points(exposition: Exposition, scraped_at_ms: TimestampMs) -> Vec<UncheckedPoint> {
    let counters = exposition.counters;
    exposition
        .samples
        .into_iter()
        .map(|mut sample| {
            for key in ["le", "quantile"] {
                if let Some(bound) = sample.labels.get_mut(key) {
                    *bound = canonical_bound(bound);
                }
            }
            let timestamp_secs = sample.timestamp_ms.unwrap_or(scraped_at_ms) as f64 / 1000.0;
            let mut point = UncheckedPoint::gauge(
                sanitize_name(&sample.name),
                sample.labels,
                sample.value,
                Some(timestamp_secs),
            );
            if counters.contains(&sample.name) {
                point.kind = MetricKind::Counter;
            }
            point
        })
        .collect()
}

/// Renders samples in the exposition format (the inverse of [`parse`], for
/// tests and the benchmark).
pub fn render(samples: &[Sample]) -> String {
    let mut out = String::new();
    for sample in samples {
        out.push_str(&sample.name);
        if !sample.labels.is_empty() {
            let labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            out.push('{');
            out.push_str(&labels.join(","));
            out.push('}');
        }
        out.push(' ');
        out.push_str(&render_value(sample.value));
        if let Some(ts) = sample.timestamp_ms {
            out.push(' ');
            out.push_str(&ts.to_string());
        }
        out.push('\n');
    }
    out
}

fn render_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EXPOSITION: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000
http_requests_total_created{method="post",code="200"} 1395066000
# A comment
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9
metric_without_timestamp_and_labels 12.47
job:rate5m 3
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.99",path="/a,b=c}"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;

    #[test]
    fn the_reference_exposition_parses_line_by_line() {
        let exposition = parse(EXPOSITION);
        assert!(exposition.rejected.is_empty(), "{:?}", exposition.rejected);
        let names: Vec<&str> = exposition.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 12, "{names:?}");
        assert!(!names.contains(&"http_requests_total_created"));
        let first = &exposition.samples[0];
        assert_eq!(first.labels["code"], "200");
        assert_eq!(first.value, 1027.0);
        assert_eq!(first.timestamp_ms, Some(1_395_066_363_000));
        let msdos = &exposition.samples[2];
        assert_eq!(msdos.labels["path"], "C:\\DIR\\FILE.TXT");
        assert_eq!(msdos.labels["error"], "Cannot find file:\n\"FILE.TXT\"");
        let bucket = &exposition.samples[6];
        assert_eq!(bucket.labels["le"], "+Inf");
        let quantile = &exposition.samples[9];
        assert_eq!(quantile.labels["path"], "/a,b=c}");
        assert_eq!(quantile.labels["quantile"], "0.99");
        assert_eq!(exposition.samples[4].name, "job:rate5m");
    }

    #[test]
    fn points_carry_labels_as_tags_and_the_scrape_time_by_default() {
        let exposition = parse("up 1\n# TYPE req counter\nreq_total{a=\"x\",b=\"\"} 2 1000\n");
        let points = to_points(exposition, 5_000);
        assert_eq!(points[0].kind, MetricKind::Gauge);
        assert_eq!(points[1].kind, MetricKind::Counter);
        assert_eq!(points[0].timestamp_secs, Some(5.0));
        assert_eq!(points[1].timestamp_secs, Some(1.0));
        assert_eq!(points[1].tags.len(), 1, "an empty label is no label");
    }

    #[test]
    fn created_families_of_prometheus_client_are_skipped() {
        // As Python's prometheus_client 0.21 writes a counter and a histogram.
        let text = "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total 3.0\n\
            # HELP jobs_created Jobs.\n# TYPE jobs_created gauge\njobs_created 1.7e9\n\
            # TYPE lat_seconds histogram\nlat_seconds_bucket{le=\"5\"} 1.0\n\
            # TYPE lat_seconds_created gauge\nlat_seconds_created 1.7e9\n\
            # TYPE boot_created gauge\nboot_created 1.0\n";
        let names: Vec<String> = parse(text).samples.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["jobs_total", "lat_seconds_bucket", "boot_created"]);
    }

    #[test]
    fn prometheus_client_output_gives_a_counter_and_one_histogram() {
        use pulse_core::histogram::{Baselines, Cumulative, classic_to_histograms};

        let exposition = parse(include_str!("fixtures/prometheus_client.txt"));
        assert!(exposition.rejected.is_empty());
        let mut points: Vec<(usize, UncheckedPoint)> = to_points(exposition, 1_000)
            .into_iter()
            .enumerate()
            .collect();
        // The histogram's previous scrape: nothing observed yet.
        let mut baselines = Baselines::new(8);
        let bounds = vec![0.1, 0.25, 1.0, 2.5, f64::INFINITY];
        let empty = Cumulative {
            counts: vec![0.0; 5],
            bounds,
            sum: Some(0.0),
        };
        baselines.set(pulse_core::SeriesId::of("req_seconds", &Tags::new()), empty);
        classic_to_histograms(&mut points, &baselines);
        let names: Vec<(&str, MetricKind)> = points
            .iter()
            .map(|(_, p)| (p.metric.as_str(), p.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("jobs_total", MetricKind::Counter),
                ("req_seconds", MetricKind::Histogram)
            ],
            "no _created series, one histogram under the base name"
        );
        let observations = points[1].1.sketch.as_ref().unwrap();
        assert_eq!(observations.count(), 100);
        assert!((observations.sum() - 16.7).abs() < 1e-9);
        // 6 of 100 took 2 s: the p95 is in the (1, 2.5] bucket.
        let p95 = observations.quantile(0.95).unwrap();
        assert!((1.0..=2.5 * 1.01).contains(&p95), "{p95}");
    }

    #[test]
    fn bucket_bounds_are_spelled_one_way() {
        let exposition = parse("a_bucket{le=\"5\"} 1\nb{quantile=\"0.50\"} 2\n");
        let points = to_points(exposition, 0);
        assert_eq!(points[0].tags["le"], "5.0");
        assert_eq!(points[1].tags["quantile"], "0.5");
    }

    #[test]
    fn broken_lines_are_rejected_one_by_one() {
        let exposition = parse(
            "ok 1\n{a=\"b\"} 1\nx{a=\"b} 1\nx{a=b} 1\nx 1 2 3\nx notanumber\nx 1 1.5\nx{a=\"1\" b=\"2\"} 1\nok2 2\n9x 1\n",
        );
        assert_eq!(exposition.samples.len(), 2);
        assert_eq!(exposition.rejected.len(), 8);
        assert!(exposition.rejected.iter().all(|r| r.reason == "malformed"));
    }

    #[test]
    fn special_values_parse_as_go_writes_them() {
        let exposition = parse("a NaN\nb +Inf\nc -Inf\nd 1e-3\n");
        let values: Vec<f64> = exposition.samples.iter().map(|s| s.value).collect();
        assert!(values[0].is_nan());
        assert_eq!(&values[1..], &[f64::INFINITY, f64::NEG_INFINITY, 0.001]);
    }

    fn arb_sample() -> impl Strategy<Value = Sample> {
        (
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "[ -~\n\u{e9}]{1,16}", 0..4),
            prop_oneof![
                any::<f64>().prop_filter("finite", |v| v.is_finite()),
                Just(f64::INFINITY)
            ],
            prop::option::of(0i64..4_000_000_000_000),
        )
            .prop_map(|(name, labels, value, timestamp_ms)| Sample {
                name,
                labels,
                value,
                timestamp_ms,
            })
            .prop_filter("not a _created line", |s| !s.name.ends_with("_created"))
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn text_near_the_grammar_never_panics(text in "[a-z{}=\",# \\\\\n0-9.+-]{0,120}") {
            let _ = parse(&text);
        }

        #[test]
        fn rendered_samples_parse_back(samples in prop::collection::vec(arb_sample(), 0..8)) {
            let text = render(&samples);
            let exposition = parse(&text);
            prop_assert!(exposition.rejected.is_empty(), "{:?}\n{}", exposition.rejected, text);
            prop_assert_eq!(exposition.samples, samples);
        }
    }
}
