//! Query-string parsing and validation, apart from the handlers so that every rule
//! a request can break is tested without HTTP. Every failure is a 400 in the shared
//! error shape that names the parameter and what it accepts.

use pulse_core::config::Config;
use pulse_core::result::{MAX_TAG_FILTERS, parse_tag_filter};
use pulse_core::window::WindowSpec;
use pulse_core::{AggKind, Tags, TimestampMs, WindowResult};
use pulse_server::ApiError;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::instant;

/// The longest span one `query_range` may cover. Results are kept 90 days by
/// default; this leaves room for longer retention while refusing typos such as a
/// `from` in milliseconds, which would otherwise scan the whole store.
pub const MAX_RANGE_MS: TimestampMs = 400 * 86_400_000;

/// What `query_range` covers when `from` is not given.
pub const DEFAULT_RANGE_MS: TimestampMs = 3_600_000;

/// Points per series a `query_range` answers when `max_points` is not given:
/// every window of any range a screen could draw, so a client that does not
/// ask for coarser points gets the windows as stored (the answer of earlier
/// releases); a board asks for `max_points=240` (one point per ~4 pixels of a
/// 1,000-pixel panel: 1 h stays at 1m, 6 h comes from 5m, 24 h from 15m).
pub const DEFAULT_MAX_POINTS: usize = MAX_MAX_POINTS;

/// The most `max_points` one may ask for: more than any screen draws.
pub const MAX_MAX_POINTS: usize = 10_000;

/// Raw parameters of `GET /dashboard`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LatestParams {
    /// Required: the metric's name.
    #[param(required = true, example = "cpu_usage")]
    pub metric: Option<String>,
    /// Required: a configured window label (`GET /api/v1/metrics` lists them); 400 `bad_window` otherwise.
    #[param(required = true, example = "1m")]
    pub window: Option<String>,
    /// Tag filter `key:value,key:value` (at most 32 keys, each once): only series with all of them.
    #[param(example = "env:prod,host:web-01")]
    pub tags: Option<String>,
    /// Aggregations, comma-separated: `count, sum, min, max, avg, last` and quantiles `p0`…`p100` (one decimal); default every one.
    #[param(example = "avg,max,p95")]
    pub aggs: Option<String>,
    /// `true`: also the window still open, as it stands (marked `"partial": true`; what has arrived so far, never stored).
    #[param(example = true)]
    pub partial: Option<bool>,
}

/// Raw parameters of `GET /api/v1/query_range`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeParams {
    /// Required: the metric's name.
    #[param(required = true, example = "cpu_usage")]
    pub metric: Option<String>,
    /// Required: a configured window label (`GET /api/v1/metrics` lists them); 400 `bad_window` otherwise.
    #[param(required = true, example = "1m")]
    pub window: Option<String>,
    /// Start of the range: Unix seconds or RFC 3339; default an hour before `to`.
    #[param(example = "2026-11-29T04:00:00Z")]
    pub from: Option<String>,
    /// End of the range: Unix seconds or RFC 3339; default now. At most 400 days after `from`.
    #[param(example = "2026-11-29T05:00:00Z")]
    pub to: Option<String>,
    /// Tag filter `key:value,key:value` (at most 32 keys, each once): only series with all of them.
    #[param(example = "env:prod,host:web-01")]
    pub tags: Option<String>,
    /// Tag keys to group by, comma-separated (at most 16): one series per combination of their values.
    #[param(example = "host")]
    pub group_by: Option<String>,
    /// Aggregations, comma-separated: `count, sum, min, max, avg, last` and quantiles `p0`…`p100` (one decimal); default every one.
    #[param(example = "avg,max,p95")]
    pub aggs: Option<String>,
    /// Most points per series (1 to 10000, default 10000: every window of the range). A board asks for about 240. When the range holds more windows, each point merges several: the finest configured window that fits is read (`source_window` in the answer), or consecutive windows are merged (`step_ms`).
    #[param(example = 240)]
    pub max_points: Option<String>,
    /// Width of each point, a multiple of the window's size (`5m`, `1h`); the answer may be coarser when `max_points` asks for it (`step_ms` says what was used). Not for sliding windows.
    #[param(example = "5m")]
    pub step: Option<String>,
    /// `true`: also the window still open, as it stands (marked `"partial": true`; what has arrived so far, never stored).
    #[param(example = true)]
    pub partial: Option<bool>,
}

/// Raw parameters of `GET /api/v1/live`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// Only this metric's windows (default every metric).
    #[param(example = "cpu_usage")]
    pub metric: Option<String>,
    /// Only this window: a configured window label (`GET /api/v1/metrics` lists them); 400 `bad_window` otherwise.
    #[param(example = "1m")]
    pub window: Option<String>,
    /// `true`: also `partial` events, the open windows as they stand, up to four a second per window.
    #[param(example = true)]
    pub partial: Option<bool>,
}

/// The window labels the pipeline computes, in configuration order. Only these
/// can have results, so any other `window=` is a mistake worth a 400, not a 404.
/// Their sizes let `query_range` read a coarser window instead of a finer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownWindows(Vec<String>, Vec<WindowSpec>);

impl KnownWindows {
    /// The windows of `config`. A validated config always has some; a
    /// broken one leaves none, so every query names the problem instead of the
    /// process panicking.
    pub fn from_config(config: &Config) -> KnownWindows {
        match config.window_specs() {
            Ok(specs) => KnownWindows::of(specs),
            Err(error) => {
                tracing::error!(message = "Invalid window configuration; every query will be refused.", %error);
                KnownWindows::of(Vec::new())
            }
        }
    }

    pub fn of(specs: Vec<WindowSpec>) -> KnownWindows {
        KnownWindows(specs.iter().map(|w| w.label.clone()).collect(), specs)
    }

    pub fn labels(&self) -> &[String] {
        &self.0
    }

    pub fn specs(&self) -> &[WindowSpec] {
        &self.1
    }

    /// Checks a required `window=` against the configured labels.
    pub fn resolve(&self, window: Option<&str>) -> Result<String, ApiError> {
        let window = window.map(str::trim).unwrap_or_default();
        if self.0.iter().any(|w| w == window) {
            return Ok(window.to_string());
        }
        let valid = if self.0.is_empty() {
            "none are configured (see processor.windows)".to_string()
        } else {
            self.0.join(", ")
        };
        let message = if window.is_empty() {
            format!("`window` is required; valid windows: {valid}")
        } else {
            format!("unknown window `{window}`; valid windows: {valid}")
        };
        Err(ApiError::bad_request("unknown_window", message)
            .with_details(serde_json::json!({ "valid_windows": self.0 })))
    }
}

/// A validated `GET /dashboard` request.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestRequest {
    pub metric: String,
    pub window: String,
    pub tags: Tags,
    pub aggs: Vec<AggKind>,
    /// Also the open window (`partial=true`).
    pub partial: bool,
}

impl LatestRequest {
    pub fn parse(params: &LatestParams, windows: &KnownWindows) -> Result<LatestRequest, ApiError> {
        Ok(LatestRequest {
            metric: metric(params.metric.as_deref())?,
            window: windows.resolve(params.window.as_deref())?,
            tags: tags(params.tags.as_deref())?,
            aggs: aggs(params.aggs.as_deref())?,
            partial: params.partial.unwrap_or(false),
        })
    }
}

/// A validated `GET /api/v1/query_range` request.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeRequest {
    pub metric: String,
    pub window: String,
    pub tags: Tags,
    pub group_by: Vec<String>,
    pub aggs: Vec<AggKind>,
    /// Window starts in `[from_ms, to_ms)`.
    pub from_ms: TimestampMs,
    pub to_ms: TimestampMs,
    /// Most points per series.
    pub max_points: usize,
    /// The width of a point asked for, if any.
    pub step_ms: Option<TimestampMs>,
    /// Also the open windows in the range (`partial=true`).
    pub partial: bool,
}

impl RangeRequest {
    /// `now` fills in a missing `to` (and so a missing `from`).
    pub fn parse(
        params: &RangeParams,
        windows: &KnownWindows,
        now: TimestampMs,
    ) -> Result<RangeRequest, ApiError> {
        let to_ms = match params.to.as_deref() {
            Some(text) => instant_param("to", text)?,
            None => now,
        };
        let from_ms = match params.from.as_deref() {
            Some(text) => instant_param("from", text)?,
            None => to_ms - DEFAULT_RANGE_MS,
        };
        if from_ms > to_ms {
            return Err(ApiError::bad_request(
                "bad_range",
                format!("`from` ({from_ms} ms) is after `to` ({to_ms} ms)"),
            ));
        }
        if to_ms - from_ms > MAX_RANGE_MS {
            return Err(ApiError::bad_request(
                "bad_range",
                "the range spans more than 400 days; narrow `from`/`to`",
            ));
        }
        Ok(RangeRequest {
            metric: metric(params.metric.as_deref())?,
            window: windows.resolve(params.window.as_deref())?,
            tags: tags(params.tags.as_deref())?,
            group_by: group_by(params.group_by.as_deref())?,
            aggs: aggs(params.aggs.as_deref())?,
            from_ms,
            to_ms,
            max_points: max_points(params.max_points.as_deref())?,
            step_ms: params.step.as_deref().map(step).transpose()?,
            partial: params.partial.unwrap_or(false),
        })
    }
}

/// Which closed windows a live subscriber wants; `None` lets everything through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFilter {
    pub metric: Option<String>,
    pub window: Option<String>,
    /// Also `partial` events.
    pub partial: bool,
}

impl LiveFilter {
    pub fn parse(params: &LiveParams, windows: &KnownWindows) -> Result<LiveFilter, ApiError> {
        let metric = params
            .metric
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        let window = params
            .window
            .as_deref()
            .filter(|w| !w.trim().is_empty())
            .map(|w| windows.resolve(Some(w)))
            .transpose()?;
        Ok(LiveFilter {
            metric: metric.map(str::to_string),
            window,
            partial: params.partial.unwrap_or(false),
        })
    }

    pub fn matches(&self, result: &WindowResult) -> bool {
        self.metric.as_ref().is_none_or(|m| *m == result.metric)
            && self.window.as_ref().is_none_or(|w| *w == result.window)
    }
}

fn metric(metric: Option<&str>) -> Result<String, ApiError> {
    match metric.map(str::trim) {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(ApiError::bad_request(
            "missing_metric",
            "`metric` is required, e.g. metric=cpu_usage",
        )),
    }
}

/// `aggs=avg,max,p95`; absent means [`AggKind::defaults`].
fn aggs(text: Option<&str>) -> Result<Vec<AggKind>, ApiError> {
    match text {
        None => Ok(AggKind::defaults()),
        Some(text) => AggKind::parse_list(text).map_err(|e| ApiError::bad_request("bad_aggs", e)),
    }
}

/// `tags=host:web-01,env:prod`; absent means every series. At most
/// [`MAX_TAG_FILTERS`] pairs, each key once.
fn tags(text: Option<&str>) -> Result<Tags, ApiError> {
    parse_tag_filter(text.unwrap_or_default()).map_err(|e| {
        ApiError::bad_request("bad_tags", e)
            .with_details(serde_json::json!({"limit": MAX_TAG_FILTERS}))
    })
}

/// Most tag keys one `group_by` may name: a series carries at most
/// `limits.max_tags` (32 by default), and each key multiplies the groups.
pub const MAX_GROUP_BY: usize = 16;

/// `group_by=host,env`: tag keys, each once, in the order given.
fn group_by(text: Option<&str>) -> Result<Vec<String>, ApiError> {
    let mut keys: Vec<String> = Vec::new();
    for key in text
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        if key.contains(':') || key.contains('=') {
            return Err(ApiError::bad_request(
                "bad_group_by",
                format!("`group_by` takes tag keys such as host,env, not `{key}`"),
            ));
        }
        if !keys.iter().any(|k| k == key) {
            if keys.len() == MAX_GROUP_BY {
                return Err(ApiError::bad_request(
                    "bad_group_by",
                    format!("`group_by` names more than {MAX_GROUP_BY} tag keys"),
                )
                .with_details(serde_json::json!({"limit": MAX_GROUP_BY})));
            }
            keys.push(key.to_string());
        }
    }
    Ok(keys)
}

/// `max_points=240`: 1 to [`MAX_MAX_POINTS`]; absent means [`DEFAULT_MAX_POINTS`].
fn max_points(text: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_MAX_POINTS);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_MAX_POINTS).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "bad_max_points",
            format!("`max_points` takes a whole number from 1 to {MAX_MAX_POINTS}, not `{text}`"),
        )
        .with_details(serde_json::json!({"limit": MAX_MAX_POINTS}))),
    }
}

/// `step=5m`: a duration of at least a second and at most [`MAX_RANGE_MS`].
fn step(text: &str) -> Result<TimestampMs, ApiError> {
    let bad = |why: String| ApiError::bad_request("bad_step", format!("`step`: {why}"));
    let duration = pulse_core::duration::parse(text).map_err(bad)?;
    let ms = TimestampMs::try_from(duration.as_millis()).unwrap_or(TimestampMs::MAX);
    if !(1_000..=MAX_RANGE_MS).contains(&ms) {
        return Err(bad(format!(
            "`{text}` is outside 1s to 400d; use e.g. step=5m"
        )));
    }
    Ok(ms)
}

fn instant_param(name: &str, text: &str) -> Result<TimestampMs, ApiError> {
    instant::parse(text).map_err(|e| ApiError::bad_request("bad_time", format!("`{name}`: {e}")))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn windows() -> KnownWindows {
        let min = |m: u64| std::time::Duration::from_secs(m * 60);
        KnownWindows::of(vec![
            WindowSpec::tumbling(min(1)).unwrap(),
            WindowSpec::tumbling(min(5)).unwrap(),
            WindowSpec::sliding(min(10), min(1)).unwrap(),
        ])
    }

    fn range(from: Option<&str>, to: Option<&str>) -> Result<RangeRequest, ApiError> {
        let params = RangeParams {
            metric: Some("cpu".into()),
            window: Some("1m".into()),
            from: from.map(Into::into),
            to: to.map(Into::into),
            ..RangeParams::default()
        };
        RangeRequest::parse(&params, &windows(), 10_000_000)
    }

    #[test]
    fn unknown_or_missing_window_is_a_400_naming_the_valid_ones() {
        for window in [Some("2m"), None] {
            let err = windows().resolve(window).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.code, "unknown_window");
            assert!(err.message.contains("1m, 5m, 10m/1m"), "{}", err.message);
        }
        assert_eq!(windows().resolve(Some("10m/1m")).unwrap(), "10m/1m");
    }

    #[test]
    fn latest_request_defaults_aggs_and_parses_filters() {
        let params = LatestParams {
            metric: Some(" cpu_usage ".into()),
            window: Some("5m".into()),
            tags: Some("host:web-01,env=prod".into()),
            aggs: None,
            partial: None,
        };
        let request = LatestRequest::parse(&params, &windows()).unwrap();
        assert_eq!(request.metric, "cpu_usage");
        assert_eq!(request.aggs, AggKind::defaults());
        assert_eq!(request.tags.len(), 2);
    }

    #[test]
    fn bad_metric_tags_and_aggs_are_400s_with_their_own_codes() {
        let base = || LatestParams {
            metric: Some("cpu".into()),
            window: Some("1m".into()),
            ..LatestParams::default()
        };
        let cases = [
            (
                LatestParams {
                    metric: Some(" ".into()),
                    ..base()
                },
                "missing_metric",
            ),
            (
                LatestParams {
                    tags: Some("host".into()),
                    ..base()
                },
                "bad_tags",
            ),
            (
                LatestParams {
                    aggs: Some("avg,median".into()),
                    ..base()
                },
                "bad_aggs",
            ),
        ];
        for (params, code) in cases {
            let err = LatestRequest::parse(&params, &windows()).unwrap_err();
            assert_eq!((err.status, err.code), (StatusCode::BAD_REQUEST, code));
        }
    }

    #[test]
    fn range_defaults_to_the_last_hour_before_now() {
        let request = range(None, None).unwrap();
        assert_eq!(
            (request.from_ms, request.to_ms),
            (10_000_000 - 3_600_000, 10_000_000)
        );
        let request = range(None, Some("7200")).unwrap();
        assert_eq!((request.from_ms, request.to_ms), (3_600_000, 7_200_000));
        let request = range(Some("1970-01-01T00:00:01Z"), None).unwrap();
        assert_eq!((request.from_ms, request.to_ms), (1_000, 10_000_000));
    }

    #[test]
    fn inverted_overlong_and_unparsable_ranges_are_400s() {
        for (from, to) in [
            (Some("20"), Some("10")),
            (Some("0"), Some("34560001")),
            (Some("soon"), None),
            (None, Some("1e400")),
        ] {
            let err = range(from, to).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{from:?} {to:?}");
        }
        assert!(range(Some("0"), Some("34560000")).is_ok());
        assert!(range(Some("10"), Some("10")).is_ok());
    }

    #[test]
    fn group_by_keeps_each_key_once_in_order_and_refuses_filters() {
        assert_eq!(group_by(Some("host, env,host,")).unwrap(), ["host", "env"]);
        assert!(group_by(None).unwrap().is_empty());
        assert_eq!(
            group_by(Some("host:web-01")).unwrap_err().code,
            "bad_group_by"
        );
    }

    #[test]
    fn group_by_and_tag_filters_are_bounded_and_the_400_names_the_limit() {
        let keys = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            group_by(Some(&keys(MAX_GROUP_BY))).unwrap().len(),
            MAX_GROUP_BY
        );
        let error = group_by(Some(&keys(MAX_GROUP_BY + 1))).unwrap_err();
        assert_eq!(
            (error.code, error.details.unwrap()["limit"].as_u64()),
            ("bad_group_by", Some(16))
        );
        let filters = (0..500)
            .map(|i| format!("k{i}:v"))
            .collect::<Vec<_>>()
            .join(",");
        let error = tags(Some(&filters)).unwrap_err();
        assert_eq!(error.code, "bad_tags");
        assert!(error.message.contains("more than 32"), "{}", error.message);
        assert!(
            tags(Some("host:a,host:b"))
                .unwrap_err()
                .message
                .contains("twice")
        );
    }

    #[test]
    fn live_filter_is_optional_but_checks_a_given_window() {
        let open = LiveFilter::parse(&LiveParams::default(), &windows()).unwrap();
        assert_eq!(
            open,
            LiveFilter {
                metric: None,
                window: None,
                partial: false,
            }
        );
        let params = LiveParams {
            metric: None,
            window: Some("7m".into()),
            partial: None,
        };
        assert!(LiveFilter::parse(&params, &windows()).is_err());
    }

    #[test]
    fn live_filter_lets_through_only_the_metric_and_window_asked() {
        let result = |metric: &str, window: &str| WindowResult {
            series_id: pulse_core::SeriesId(1),
            metric: metric.into(),
            tags: Tags::new(),
            window: window.into(),
            start_ms: 0,
            end_ms: 60_000,
            agg: pulse_core::Aggregate::new(),
        };
        let params = LiveParams {
            metric: Some("cpu".into()),
            window: Some("1m".into()),
            partial: None,
        };
        let filter = LiveFilter::parse(&params, &windows()).unwrap();
        assert!(filter.matches(&result("cpu", "1m")));
        assert!(!filter.matches(&result("cpu", "5m")));
        assert!(!filter.matches(&result("mem", "1m")));
        let open = LiveFilter::parse(&LiveParams::default(), &windows()).unwrap();
        assert!(open.matches(&result("mem", "5m")));
    }

    #[test]
    fn broken_window_config_leaves_no_windows_instead_of_panicking() {
        let mut config = Config::default();
        config.processor.windows = vec![pulse_core::config::WindowConfig::Tumbling(
            std::time::Duration::from_millis(1),
        )];
        let windows = KnownWindows::from_config(&config);
        assert!(windows.labels().is_empty());
        assert!(
            windows
                .resolve(Some("1m"))
                .unwrap_err()
                .message
                .contains("none are configured")
        );
    }
}
