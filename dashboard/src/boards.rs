//! Dashboards as the UI reads them (`GET /api/v1/dashboards[/<name>]`): the
//! configured boards with every default filled in, and the `default` board made
//! from the stored metrics. Pure, so what a page will show is tested without HTTP.

use std::sync::Arc;

use pulse_core::board::{Board, Boards, DEFAULT_BOARD, Panel, PanelKind, Threshold};
use pulse_core::config::Config;
use pulse_core::{Tags, TimestampMs};
use pulse_engine::store::MetricInfo;
use pulse_server::reload::{FileError, KeyedFile, Reloading};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The boards the server serves: the config's `[[dashboards]]`, and those of
/// `dashboard.boards_file`, which is re-read when it changes (the operator's
/// ConfigMap of every `Dashboard` of a pipeline), so boards are added, changed
/// and removed without a restart. A changed file that does not load is logged
/// and skipped; the boards in force stay until it loads again.
#[derive(Debug, Clone)]
pub struct LiveBoards(Source);

#[derive(Debug, Clone)]
enum Source {
    Fixed(Arc<Vec<Board>>),
    File(Arc<Reloading<Vec<Board>>>),
}

impl LiveBoards {
    /// The config's boards only (the boards file, if any, is not read).
    pub fn fixed(config: &Config) -> LiveBoards {
        LiveBoards(Source::Fixed(Arc::new(
            config.dashboards.as_slice().to_vec(),
        )))
    }

    /// The config's boards and, when `dashboard.boards_file` is set, that
    /// file's; an unreadable or invalid file at start-up is an error naming it.
    pub fn load(config: &Config) -> Result<LiveBoards, FileError> {
        let Some(path) = &config.dashboard.boards_file else {
            return Ok(LiveBoards::fixed(config));
        };
        let file = KeyedFile::new("dashboard.boards_file", path);
        let fixed = config.dashboards.clone();
        let windows: Vec<String> = config
            .window_specs()
            .map(|specs| specs.into_iter().map(|w| w.label).collect())
            .unwrap_or_default();
        let key = file.clone();
        let parse = move |contents: &[Vec<u8>]| {
            let text = contents
                .first()
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .ok_or_else(|| key.error("is not UTF-8 text"))?;
            let boards = Boards::from_file(text)
                .and_then(|more| fixed.with(&more))
                .map_err(|e| key.error(e.to_string()))?;
            for problem in pulse_core::board::check_windows(boards.as_slice(), &windows) {
                tracing::warn!(message = "A dashboard panel asks for a window that is not computed; it will show the error.", %problem);
            }
            Ok(boards.as_slice().to_vec())
        };
        let reloading = Reloading::load("the dashboards' boards file", vec![file], parse)?;
        Ok(LiveBoards(Source::File(reloading)))
    }

    /// Re-reads the boards file every second until `shutdown` (nothing to do
    /// without one).
    pub fn watch(&self, shutdown: CancellationToken) {
        if let Source::File(file) = &self.0 {
            file.watch(shutdown);
        }
    }

    /// The boards in force.
    pub fn current(&self) -> Arc<Vec<Board>> {
        match &self.0 {
            Source::Fixed(boards) => Arc::clone(boards),
            Source::File(file) => file.current(),
        }
    }

    /// Re-reads the boards file now; `Ok(true)` when new boards went into force.
    pub fn reload(&self) -> Result<bool, FileError> {
        match &self.0 {
            Source::Fixed(_) => Ok(false),
            Source::File(file) => file.reload(),
        }
    }
}

/// Where a board comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BoardSource {
    /// `[[dashboards]]` in the config file (later: a `Dashboard` resource).
    Config,
    /// Made from `GET /api/v1/metrics`: one panel per stored metric.
    Metrics,
}

/// One line of `GET /api/v1/dashboards`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BoardSummary {
    /// The board's name, as in `/d/<name>` and `/api/v1/dashboards/<name>`.
    #[schema(example = "checkout")]
    pub name: String,
    /// Its title, for people.
    #[schema(example = "Checkout service")]
    pub title: String,
    /// Its panel count; `null` for the default board, whose panels depend on the stored metrics.
    #[schema(example = 4)]
    pub panels: Option<usize>,
    /// Where the board comes from.
    #[schema(inline, example = "config")]
    pub source: BoardSource,
}

/// `GET /api/v1/dashboards`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BoardList<'a> {
    /// Every board, `default` first.
    #[schema(example = json!([{"name": "default", "title": "All metrics", "panels": null, "source": "metrics"}]))]
    pub dashboards: Vec<BoardSummary>,
    /// The configured window labels.
    #[schema(value_type = Vec<String>, example = json!(["1m", "5m"]))]
    pub windows: &'a [String],
}

/// `GET /api/v1/dashboards/<name>`: a board ready to draw.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BoardView<'a> {
    /// The board's name.
    #[schema(example = "checkout")]
    pub name: String,
    /// Its title.
    #[schema(example = "Checkout service")]
    pub title: String,
    /// Where the board comes from.
    #[schema(inline, example = "config")]
    pub source: BoardSource,
    /// The windows one may pick in the UI: the configured ones.
    #[schema(value_type = Vec<String>, example = json!(["1m", "5m"]))]
    pub windows: &'a [String],
    /// Its panels, in order.
    #[schema(example = json!([{"id": "p1", "title": "CPU", "kind": "line", "metric": "cpu_usage", "window": "1m", "aggs": ["avg"], "tags": {}, "group_by": ["host"], "thresholds": []}]))]
    pub panels: Vec<PanelView>,
}

/// A panel with nothing left to default: the page sends these values as the
/// query parameters of `query_range` and `/dashboard`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PanelView {
    /// Stable within the board (`p1`, `p2`, …), for the page's element ids.
    #[schema(example = "p1")]
    pub id: String,
    /// The panel's title.
    #[schema(example = "CPU")]
    pub title: String,
    /// What it draws.
    #[schema(inline, example = "line")]
    pub kind: PanelKind,
    /// The metric it shows.
    #[schema(example = "cpu_usage")]
    pub metric: String,
    /// The window it reads.
    #[schema(example = "1m")]
    pub window: String,
    /// The aggregations it shows.
    #[schema(example = json!(["avg", "p95"]))]
    pub aggs: Vec<String>,
    /// The tag filter of its queries.
    #[schema(value_type = BTreeMap<String, String>, example = json!({"env": "prod"}))]
    pub tags: Tags,
    /// The tag keys it groups by (one line or row per combination).
    #[schema(example = json!(["host"]))]
    pub group_by: Vec<String>,
    /// Colours by value, lowest first.
    #[schema(example = json!([{"value": 90.0, "color": "red"}]))]
    pub thresholds: Vec<Threshold>,
    /// End of the metric's newest stored window, on the default board only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, example = 1764393660000_i64)]
    pub last_window_end_ms: Option<TimestampMs>,
}

/// The default board first, then the configured ones in config order.
pub fn list<'a>(boards: &[Board], windows: &'a [String]) -> BoardList<'a> {
    let default = BoardSummary {
        name: DEFAULT_BOARD.into(),
        title: "All metrics".into(),
        panels: None,
        source: BoardSource::Metrics,
    };
    let configured = boards.iter().map(|b| BoardSummary {
        name: b.name.clone(),
        title: b.title().to_string(),
        panels: Some(b.panels.len()),
        source: BoardSource::Config,
    });
    BoardList {
        dashboards: std::iter::once(default).chain(configured).collect(),
        windows,
    }
}

/// Whether `/d/<name>` exists, without reading the store.
pub fn exists(boards: &[Board], name: &str) -> bool {
    name == DEFAULT_BOARD || boards.iter().any(|b| b.name == name)
}

/// A configured board with its defaults filled: the first configured window
/// where a panel names none, and a title made from the metric where it has none.
pub fn view<'a>(board: &Board, windows: &'a [String]) -> BoardView<'a> {
    BoardView {
        name: board.name.clone(),
        title: board.title().to_string(),
        source: BoardSource::Config,
        windows,
        panels: board
            .panels
            .iter()
            .enumerate()
            .map(|(i, p)| panel_view(i, p, windows))
            .collect(),
    }
}

/// The `default` board: one line chart of the average per stored metric, in
/// name order, on the first configured window.
pub fn default_view<'a>(metrics: &[MetricInfo], windows: &'a [String]) -> BoardView<'a> {
    let mut metrics: Vec<&MetricInfo> = metrics.iter().collect();
    metrics.sort_by(|a, b| a.name.cmp(&b.name));
    BoardView {
        name: DEFAULT_BOARD.into(),
        title: "All metrics".into(),
        source: BoardSource::Metrics,
        windows,
        panels: metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut panel = panel_view(i, &Panel::of_metric(&m.name), windows);
                panel.title = m.name.clone();
                panel.last_window_end_ms = m.last_window_end_ms;
                panel
            })
            .collect(),
    }
}

fn panel_view(index: usize, panel: &Panel, windows: &[String]) -> PanelView {
    let window = panel
        .window
        .clone()
        .or_else(|| windows.first().cloned())
        .unwrap_or_default();
    let title = panel.title.clone().unwrap_or_else(|| {
        let by = if panel.group_by.is_empty() {
            String::new()
        } else {
            format!(" by {}", panel.group_by.join(", "))
        };
        format!("{} · {}{by}", panel.metric, panel.aggs.join(", "))
    });
    PanelView {
        id: format!("p{}", index + 1),
        title,
        kind: panel.kind,
        metric: panel.metric.clone(),
        window,
        aggs: panel.aggs.clone(),
        tags: panel.tags.clone(),
        group_by: panel.group_by.clone(),
        thresholds: panel.thresholds.clone(),
        last_window_end_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::board::Boards;
    use serde_json::json;

    use super::*;

    fn boards() -> Vec<Board> {
        let mut cpu = Panel::of_metric("cpu_usage");
        cpu.group_by = vec!["host".into()];
        cpu.aggs = vec!["avg".into(), "p95".into()];
        let mut stat = Panel::of_metric("mem_used");
        stat.kind = PanelKind::Stat;
        stat.title = Some("Memory".into());
        stat.window = Some("5m".into());
        let boards = Boards::new(vec![Board {
            name: "web".into(),
            title: Some("Web fleet".into()),
            panels: vec![cpu, stat],
        }])
        .unwrap();
        boards.as_slice().to_vec()
    }

    fn windows() -> Vec<String> {
        vec!["1m".into(), "5m".into()]
    }

    #[test]
    fn the_list_starts_with_the_default_board() {
        let windows = windows();
        let list = serde_json::to_value(list(&boards(), &windows)).unwrap();
        assert_eq!(
            list,
            json!({
                "dashboards": [
                    {"name": "default", "title": "All metrics", "panels": null, "source": "metrics"},
                    {"name": "web", "title": "Web fleet", "panels": 2, "source": "config"},
                ],
                "windows": ["1m", "5m"],
            })
        );
        assert!(exists(&boards(), "default") && exists(&boards(), "web"));
        assert!(!exists(&boards(), "nope") && !exists(&[], "web"));
    }

    #[test]
    fn configured_panels_get_the_first_window_and_a_title() {
        let windows = windows();
        let view = view(&boards()[0], &windows);
        let [cpu, stat] = &view.panels[..] else {
            panic!("two panels")
        };
        assert_eq!(
            (cpu.id.as_str(), cpu.window.as_str()),
            ("p1", "1m"),
            "the first configured window"
        );
        assert_eq!(cpu.title, "cpu_usage · avg, p95 by host");
        assert_eq!(
            (stat.title.as_str(), stat.window.as_str()),
            ("Memory", "5m")
        );
        let value = serde_json::to_value(&view).unwrap();
        assert_eq!(value["panels"][1]["kind"], "stat");
        assert_eq!(value["source"], "config");
        assert!(value["panels"][0].get("last_window_end_ms").is_none());
    }

    #[test]
    fn the_default_board_has_one_line_panel_per_metric_by_name() {
        let windows = windows();
        let metrics = [
            MetricInfo {
                name: "mem_used".into(),
                series: 2,
                last_window_end_ms: Some(60_000),
                kind: None,
            },
            MetricInfo {
                name: "cpu_usage".into(),
                series: 5,
                last_window_end_ms: None,
                kind: None,
            },
        ];
        let view = default_view(&metrics, &windows);
        let names: Vec<_> = view.panels.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(names, ["cpu_usage", "mem_used"]);
        assert!(
            view.panels
                .iter()
                .all(|p| p.kind == PanelKind::Line && p.window == "1m" && p.aggs == ["avg"])
        );
        assert_eq!(view.panels[1].last_window_end_ms, Some(60_000));
        assert!(default_view(&[], &windows).panels.is_empty());
    }
}
