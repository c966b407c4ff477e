//! Closed window results: what the processor writes and the dashboard reads.

use crate::TimestampMs;
use crate::aggregate::{AggKind, Aggregate};
use crate::point::{MetricKind, Tags};
use crate::series::SeriesId;

/// The aggregate of one series over one closed window.
#[derive(Debug, Clone)]
pub struct WindowResult {
    pub series_id: SeriesId,
    pub metric: String,
    pub tags: Tags,
    /// Window label, e.g. `5m` or `10m/1m`.
    pub window: String,
    pub start_ms: TimestampMs,
    pub end_ms: TimestampMs,
    pub agg: Aggregate,
}

impl WindowResult {
    /// The value of one aggregation of this series' window.
    pub fn value(&self, kind: AggKind) -> Option<f64> {
        self.agg.value_over(kind, self.start_ms, self.end_ms)
    }
}

/// Windows of several series merged into one answer. Distributions merge
/// (count, sum, min, max, quantiles of the union, never a mean of
/// quantiles); what only makes sense per series adds up across them: a
/// counter's `increase` and `rate`, and the `last` of a counter (the total
/// of every series' latest count, not one series' value).
#[derive(Debug, Clone, Default)]
pub struct Combined {
    /// Every window merged.
    pub merged: Aggregate,
    increase: Option<f64>,
    rate: Option<f64>,
    /// The sum of each counter series' `last`.
    counter_last: Option<f64>,
}

impl Combined {
    /// Adds the window of one series (or one more window of a series whose
    /// other windows are added too, e.g. a group's windows of one start).
    pub fn add(&mut self, result: &WindowResult) {
        self.merged.merge(&result.agg);
        let add = |total: &mut Option<f64>, value: Option<f64>| {
            if let Some(v) = value {
                *total = Some(total.unwrap_or(0.0) + v);
            }
        };
        add(&mut self.increase, result.value(AggKind::Increase));
        add(&mut self.rate, result.value(AggKind::Rate));
        if result.agg.kind.is_counter() {
            add(&mut self.counter_last, result.value(AggKind::Last));
        }
    }

    /// The windows of `results` combined.
    pub fn of<'a>(results: impl IntoIterator<Item = &'a WindowResult>) -> Combined {
        let mut combined = Combined::default();
        results.into_iter().for_each(|r| combined.add(r));
        combined
    }

    /// The kind of the merged series (of the latest point among them).
    pub fn kind(&self) -> MetricKind {
        self.merged.kind
    }

    /// The value of one aggregation across the series.
    pub fn value(&self, kind: AggKind) -> Option<f64> {
        match kind {
            AggKind::Increase => self.increase,
            AggKind::Rate => self.rate,
            AggKind::Last if self.counter_last.is_some() => self.counter_last,
            _ => self.merged.value(kind),
        }
    }
}

/// Keeps the results whose tags contain every `key=value` of `filter`.
pub fn matches_tags(tags: &Tags, filter: &Tags) -> bool {
    filter.iter().all(|(k, v)| tags.get(k) == Some(v))
}

/// Most `key:value` pairs one tag filter may hold. A series carries at most
/// `limits.max_tags` (32 by default) tags, so a longer filter can match
/// nothing; the bound also keeps the store's query small.
pub const MAX_TAG_FILTERS: usize = 32;

/// Splits a tag filter at its commas, except inside double quotes.
fn filter_pairs(text: &str) -> Result<Vec<&str>, String> {
    let mut pairs = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pairs.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(format!(
            "tag filter `{text}` opens a double quote it does not close"
        ));
    }
    pairs.push(&text[start..]);
    Ok(pairs)
}

/// A filter value, unquoted: `"/a,b"` is `/a,b`, and inside the quotes `\"`
/// is a quote and `\\` a backslash.
fn filter_value(raw: &str) -> Result<String, String> {
    let Some(inner) = raw.strip_prefix('"') else {
        return Ok(raw.to_string());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or_else(|| format!("tag value `{raw}` must end with its closing double quote"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(
                chars
                    .next()
                    .ok_or_else(|| format!("tag value `{raw}` ends with a lone backslash"))?,
            ),
            '"' => {
                return Err(format!(
                    "tag value `{raw}`: write a quote inside quotes as \\\""
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Parses `host:web-01,env:prod` (or `host=web-01`) into a tag filter. A
/// value holding a comma is written in double quotes: `path:"/a,b"`. A key
/// given twice is refused (a series has one value per key, so
/// `host:a,host:b` would silently match nothing or keep one of them).
pub fn parse_tag_filter(text: &str) -> Result<Tags, String> {
    let mut tags = Tags::new();
    for pair in filter_pairs(text)?
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair
            .split_once(':')
            .or_else(|| pair.split_once('='))
            .ok_or_else(|| format!("tag filter `{pair}` must look like key:value"))?;
        let key = key.trim();
        if tags.contains_key(key) {
            return Err(format!(
                "tag key `{key}` is given twice; a series has one value per key"
            ));
        }
        if tags.len() == MAX_TAG_FILTERS {
            return Err(format!(
                "more than {MAX_TAG_FILTERS} tag filters; a series has at most as many tags"
            ));
        }
        tags.insert(key.to_string(), filter_value(value.trim())?);
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filters_parse_both_separators_and_match_subsets() {
        let filter = parse_tag_filter("host:web-01, env=prod").unwrap();
        assert_eq!(filter.len(), 2);
        let mut tags = filter.clone();
        tags.insert("region".into(), "eu".into());
        assert!(matches_tags(&tags, &filter));
        tags.insert("env".into(), "dev".into());
        assert!(!matches_tags(&tags, &filter));
        assert!(parse_tag_filter("host").is_err());
    }

    #[test]
    fn quoted_values_may_hold_commas_colons_and_quotes() {
        let filter = parse_tag_filter(r#"path:"/a,b", env:prod, q:"x\"y:z""#).unwrap();
        assert_eq!(filter["path"], "/a,b");
        assert_eq!(filter["env"], "prod");
        assert_eq!(filter["q"], "x\"y:z");
        assert!(
            parse_tag_filter(r#"path:"/a,b"#)
                .unwrap_err()
                .contains("double quote")
        );
        assert!(parse_tag_filter(r#"path:"/a"b""#).is_err());
    }

    #[test]
    fn a_repeated_key_or_too_many_filters_are_refused() {
        let error = parse_tag_filter("host:a,host:b").unwrap_err();
        assert!(error.contains("`host` is given twice"), "{error}");
        let many = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}:v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            parse_tag_filter(&many(MAX_TAG_FILTERS)).unwrap().len(),
            MAX_TAG_FILTERS
        );
        let error = parse_tag_filter(&many(MAX_TAG_FILTERS + 1)).unwrap_err();
        assert!(error.contains("more than 32 tag filters"), "{error}");
    }
}
