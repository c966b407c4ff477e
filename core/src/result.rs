//! Closed window results: what the processor writes and the dashboard reads.

use crate::TimestampMs;
use crate::aggregate::Aggregate;
use crate::point::Tags;
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

/// Keeps the results whose tags contain every `key=value` of `filter`.
pub fn matches_tags(tags: &Tags, filter: &Tags) -> bool {
    filter.iter().all(|(k, v)| tags.get(k) == Some(v))
}

/// Most `key:value` pairs one tag filter may hold. A series carries at most
/// `limits.max_tags` (32 by default) tags, so a longer filter can match
/// nothing; the bound also keeps the store's query small.
pub const MAX_TAG_FILTERS: usize = 32;

/// Parses `host:web-01,env:prod` (or `host=web-01`) into a tag filter. A key
/// given twice is refused (a series has one value per key, so
/// `host:a,host:b` would silently match nothing or keep one of them).
pub fn parse_tag_filter(text: &str) -> Result<Tags, String> {
    let mut tags = Tags::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
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
        tags.insert(key.to_string(), value.trim().to_string());
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
