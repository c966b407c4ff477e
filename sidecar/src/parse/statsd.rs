//! The StatsD line protocol with the DogStatsD extensions:
//!
//! ```text
//! <name>:<value>[:<value>...]|<type>[|@<sample rate>][|#<tag>[:<value>],...][|T<unix secs>][|c:<container>]
//! ```
//!
//! Types: `c` counter, `g` gauge (a value with an explicit sign, `+3` or `-3`,
//! adjusts the last value, as in Etsy's StatsD), `ms` timer, `h` histogram,
//! `d` distribution, `s` set. Several values in one line (`name:1:2:3|d`) are
//! DogStatsD's packed form. Tags without a value (`#canary`) get the value
//! `true`, since Pulse tags always have one. Events (`_e{...}`) and service
//! checks (`_sc|...`) are not metrics and are refused as `unsupported`.
//! Unknown `|` fields are ignored, so newer clients still work.

use pulse_core::Tags;

use super::{Rejection, sanitize_name, sanitize_tag_key};

/// The StatsD metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Gauge,
    Timer,
    Histogram,
    Distribution,
    Set,
}

impl Kind {
    pub fn symbol(self) -> &'static str {
        match self {
            Kind::Counter => "c",
            Kind::Gauge => "g",
            Kind::Timer => "ms",
            Kind::Histogram => "h",
            Kind::Distribution => "d",
            Kind::Set => "s",
        }
    }

    fn parse(symbol: &str) -> Option<Kind> {
        Some(match symbol {
            "c" => Kind::Counter,
            "g" => Kind::Gauge,
            "ms" => Kind::Timer,
            "h" => Kind::Histogram,
            "d" => Kind::Distribution,
            "s" => Kind::Set,
            _ => return None,
        })
    }

    /// Timers, histograms and distributions: every sample is forwarded.
    pub fn is_sampled(self) -> bool {
        matches!(self, Kind::Timer | Kind::Histogram | Kind::Distribution)
    }
}

/// The values of one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Values<'a> {
    /// Numbers of counters, timers, histograms, distributions, and gauges set
    /// to a value.
    Numbers(Vec<f64>),
    /// A gauge adjustment (`+3`, `-2.5`).
    GaugeDelta(f64),
    /// Members of a set: any text, counted distinct per flush.
    Members(Vec<&'a str>),
}

/// One parsed StatsD line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub name: String,
    pub kind: Kind,
    pub values: Values<'a>,
    /// In (0, 1]; 1 when absent. Counters are scaled by its inverse.
    pub sample_rate: f64,
    pub tags: Tags,
    /// DogStatsD's `|T` timestamp, Unix seconds.
    pub timestamp_secs: Option<f64>,
}

/// Parses every line of one datagram; blank lines are skipped.
pub fn parse_packet(packet: &[u8]) -> impl Iterator<Item = Result<Line<'_>, Rejection>> {
    packet
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| match std::str::from_utf8(line) {
            Ok(text) => parse_line(text.trim()),
            Err(_) => Err(Rejection::malformed("line is not UTF-8")),
        })
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Line<'_>, Rejection> {
    if line.starts_with("_e{") || line.starts_with("_sc|") {
        return Err(Rejection::new(
            "unsupported",
            "DogStatsD events and service checks are not metrics",
        ));
    }
    let mut fields = line.split('|');
    let head = fields.next().unwrap_or_default();
    let (name, raw_values) = head
        .split_once(':')
        .ok_or_else(|| Rejection::malformed(format!("`{}` has no `:<value>`", clip(line))))?;
    if name.is_empty() {
        return Err(Rejection::malformed("the metric name is empty"));
    }
    let symbol = fields
        .next()
        .ok_or_else(|| Rejection::malformed(format!("`{}` has no `|<type>`", clip(line))))?;
    let kind = Kind::parse(symbol).ok_or_else(|| {
        Rejection::malformed(format!(
            "unknown type `{}`; use c, g, ms, h, d or s",
            clip(symbol)
        ))
    })?;
    let mut sample_rate = 1.0;
    let mut tags = Tags::new();
    let mut timestamp_secs = None;
    for field in fields {
        if let Some(rate) = field.strip_prefix('@') {
            sample_rate = rate
                .parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0 && *r <= 1.0)
                .ok_or_else(|| {
                    Rejection::malformed(format!(
                        "sample rate `{}` must be a number in (0, 1]",
                        clip(rate)
                    ))
                })?;
        } else if let Some(list) = field.strip_prefix('#') {
            parse_tags(list, &mut tags);
        } else if let Some(ts) = field.strip_prefix('T') {
            let secs = ts.parse::<u64>().map_err(|_| {
                Rejection::malformed(format!("timestamp `{}` must be Unix seconds", clip(ts)))
            })?;
            timestamp_secs = Some(secs as f64);
        }
        // `c:` (container id), `e:` (external data), `card:` and fields of
        // future protocol versions carry nothing Pulse stores.
    }
    let values = parse_values(kind, raw_values)?;
    Ok(Line {
        name: sanitize_name(name),
        kind,
        values,
        sample_rate,
        tags,
        timestamp_secs,
    })
}

fn parse_values(kind: Kind, raw: &str) -> Result<Values<'_>, Rejection> {
    if kind == Kind::Set {
        return Ok(Values::Members(raw.split(':').collect()));
    }
    if kind == Kind::Gauge && raw.starts_with(['+', '-']) && !raw.contains(':') {
        return number(raw).map(Values::GaugeDelta);
    }
    raw.split(':')
        .map(number)
        .collect::<Result<Vec<_>, _>>()
        .map(Values::Numbers)
}

fn number(text: &str) -> Result<f64, Rejection> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err(Rejection::new(
            "invalid_value",
            format!("value `{}` is not a finite number", clip(text)),
        )),
        Err(_) => Err(Rejection::malformed(format!(
            "value `{}` is not a number",
            clip(text)
        ))),
    }
}

/// `env:prod,canary,region:eu:west` → env=prod, canary=true, region=eu:west.
fn parse_tags(list: &str, tags: &mut Tags) {
    for tag in list.split(',').filter(|t| !t.is_empty()) {
        let (key, value) = match tag.split_once(':') {
            Some((key, value)) if !value.is_empty() => (key, value),
            Some((key, _)) => (key, "true"),
            None => (tag, "true"),
        };
        if !key.is_empty() {
            tags.insert(sanitize_tag_key(key), value.to_string());
        }
    }
}

/// Keeps error messages short whatever a client sends.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// Renders a line in the protocol; the inverse of [`parse_line`] for
/// well-formed lines (used by tests and the benchmark's load generator).
pub fn render(line: &Line<'_>) -> String {
    let values = match &line.values {
        Values::Numbers(values) => values
            .iter()
            .map(f64::to_string)
            .collect::<Vec<_>>()
            .join(":"),
        Values::GaugeDelta(delta) => format!("{delta:+}"),
        Values::Members(members) => members.join(":"),
    };
    let mut out = format!("{}:{values}|{}", line.name, line.kind.symbol());
    if line.sample_rate != 1.0 {
        out += &format!("|@{}", line.sample_rate);
    }
    if !line.tags.is_empty() {
        let tags: Vec<String> = line.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        out += &format!("|#{}", tags.join(","));
    }
    if let Some(ts) = line.timestamp_secs {
        out += &format!("|T{ts}");
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_type_parses_with_rate_tags_and_timestamp() {
        let line = parse_line("page.views:3|c|@0.5|#env:prod,canary|T1721199945").unwrap();
        assert_eq!(line.name, "page.views");
        assert_eq!(line.kind, Kind::Counter);
        assert_eq!(line.values, Values::Numbers(vec![3.0]));
        assert_eq!(line.sample_rate, 0.5);
        assert_eq!(line.tags, tags(&[("env", "prod"), ("canary", "true")]));
        assert_eq!(line.timestamp_secs, Some(1_721_199_945.0));
        for (text, kind) in [
            ("a:1|g", Kind::Gauge),
            ("a:1|ms", Kind::Timer),
            ("a:1|h", Kind::Histogram),
            ("a:1:2:3|d", Kind::Distribution),
            ("a:u1|s", Kind::Set),
        ] {
            assert_eq!(parse_line(text).unwrap().kind, kind, "{text}");
        }
        assert_eq!(
            parse_line("a:1:2.5:3|d").unwrap().values,
            Values::Numbers(vec![1.0, 2.5, 3.0])
        );
    }

    #[test]
    fn signed_gauges_are_deltas_and_unsigned_ones_set() {
        assert_eq!(
            parse_line("g:-4|g").unwrap().values,
            Values::GaugeDelta(-4.0)
        );
        assert_eq!(
            parse_line("g:+4|g").unwrap().values,
            Values::GaugeDelta(4.0)
        );
        assert_eq!(
            parse_line("g:4|g").unwrap().values,
            Values::Numbers(vec![4.0])
        );
        // On a counter a sign is just a sign.
        assert_eq!(
            parse_line("c:-4|c").unwrap().values,
            Values::Numbers(vec![-4.0])
        );
    }

    #[test]
    fn malformed_lines_say_why_and_events_are_unsupported() {
        for (line, reason) in [
            ("nocolon|c", "malformed"),
            ("a:1", "malformed"),
            ("a:1|x", "malformed"),
            ("a:one|c", "malformed"),
            (":1|c", "malformed"),
            ("a:1|c|@2", "malformed"),
            ("a:1|c|@0", "malformed"),
            ("a:1|c|Tnow", "malformed"),
            ("a:inf|g", "invalid_value"),
            ("a:NaN|ms", "invalid_value"),
            ("_e{5,4}:title|text", "unsupported"),
            ("_sc|redis.can_connect|0", "unsupported"),
        ] {
            assert_eq!(parse_line(line).unwrap_err().reason, reason, "{line}");
        }
    }

    #[test]
    fn a_packet_holds_many_lines_and_one_bad_line_spoils_only_itself() {
        let packet = b"a:1|c\n\nb:2|g\r\nbroken\n\xff\xfe:1|c\nc:3|ms\n";
        let results: Vec<_> = parse_packet(packet).collect();
        assert_eq!(results.len(), 5);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    }

    #[test]
    fn names_and_tag_keys_are_sanitised() {
        let line = parse_line("my metric/x:1|c|#some key:v,k:a:b").unwrap();
        assert_eq!(line.name, "my_metric_x");
        assert_eq!(line.tags, tags(&[("some_key", "v"), ("k", "a:b")]));
    }

    fn arb_line() -> impl Strategy<Value = (String, Kind, Vec<f64>, f64, Tags)> {
        let kind = prop_oneof![
            Just(Kind::Counter),
            Just(Kind::Timer),
            Just(Kind::Histogram),
            Just(Kind::Distribution),
        ];
        (
            "[a-z_][a-z0-9_.]{0,30}",
            kind,
            prop::collection::vec(-1e12f64..1e12, 1..4),
            prop_oneof![Just(1.0), 0.01f64..1.0],
            prop::collection::btree_map("[a-z_][a-z0-9_.-]{0,10}", "[a-zA-Z0-9_./-]{1,12}", 0..4),
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            for result in parse_packet(&bytes) {
                let _ = result;
            }
        }

        #[test]
        fn arbitrary_text_near_the_grammar_never_panics(text in "[a-z:|@#,.T0-9+-]{0,80}") {
            let _ = parse_line(&text);
        }

        #[test]
        fn rendered_lines_parse_back_to_the_same_line((name, kind, values, rate, tags) in arb_line()) {
            let line = Line {
                name,
                kind,
                values: Values::Numbers(values),
                sample_rate: rate,
                tags,
                timestamp_secs: None,
            };
            let text = render(&line);
            prop_assert_eq!(parse_line(&text).unwrap(), line);
        }
    }
}
