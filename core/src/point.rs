//! The metric point: one measurement of one series at one instant.

use std::collections::BTreeMap;

use crate::TimestampMs;
use crate::series::SeriesId;

/// Tags of a series, kept sorted by key so that identity and rendering are stable.
pub type Tags = BTreeMap<String, String>;

/// A validated metric point. Points only exist in this form after
/// [`crate::validate`] accepted them, so every consumer may rely on a well-formed
/// name, tags within limits and a finite value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: String,
    pub tags: Tags,
    pub value: f64,
    pub timestamp_ms: TimestampMs,
}

impl Point {
    /// The stable identity of the series this point belongs to.
    pub fn series_id(&self) -> SeriesId {
        SeriesId::of(&self.metric, &self.tags)
    }
}
