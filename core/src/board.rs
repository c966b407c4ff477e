//! Dashboards as configured: named boards of panels that the dashboard role serves
//! at `/d/<name>`.
//!
//! The same model comes from the config file today (`[[dashboards]]` in `pulse up`'s
//! TOML) and from the `Dashboard` custom resource's panels later, so it lives here,
//! pure, where the config and the operator can both use it. Everything a board can
//! get wrong on its own (names, aggregations, colours, duplicates) is refused when
//! the config is read, with the board and panel named; whether a panel's window is
//! one the processor computes depends on another section and is checked by
//! [`check_windows`].
//!
//! ```toml
//! [[dashboards]]
//! name = "web"
//! title = "Web fleet"
//!
//! [[dashboards.panels]]
//! title = "CPU by host"
//! metric = "cpu_usage"
//! window = "1m"
//! aggs = ["avg", "p95"]
//! group_by = ["host"]
//! tags = { env = "prod" }
//!
//! [[dashboards.panels]]
//! kind = "stat"
//! metric = "cpu_usage"
//! aggs = "p95"
//! thresholds = [{ value = 80, color = "orange" }, { value = 90, color = "red" }]
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::aggregate::AggKind;
use crate::point::Tags;

/// The name of the board that always exists: one panel per stored metric. It is
/// made by the dashboard from what the store holds, so a configured board may not
/// take it.
pub const DEFAULT_BOARD: &str = "default";

/// The longest board name, so names stay readable in a URL.
const MAX_NAME_LEN: usize = 64;

/// Every configured board, checked as a whole: each valid, names unique.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<Board>", into = "Vec<Board>")]
pub struct Boards(Vec<Board>);

impl Boards {
    /// Checks `boards` as the config loader does.
    pub fn new(boards: Vec<Board>) -> Result<Boards, BoardError> {
        for (i, board) in boards.iter().enumerate() {
            board.validate()?;
            if boards[..i].iter().any(|b| b.name == board.name) {
                return Err(BoardError(format!(
                    "dashboard `{}` is defined twice",
                    board.name
                )));
            }
        }
        Ok(Boards(boards))
    }

    pub fn as_slice(&self) -> &[Board] {
        &self.0
    }

    pub fn get(&self, name: &str) -> Option<&Board> {
        self.0.iter().find(|b| b.name == name)
    }
}

impl TryFrom<Vec<Board>> for Boards {
    type Error = BoardError;

    fn try_from(boards: Vec<Board>) -> Result<Boards, BoardError> {
        Boards::new(boards)
    }
}

impl From<Boards> for Vec<Board> {
    fn from(boards: Boards) -> Vec<Board> {
        boards.0
    }
}

/// A boards file: `[[dashboards]]` tables, as in the config file. The operator
/// writes one per pipeline (every `Dashboard` over it) and the dashboard
/// server re-reads it when it changes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardsFile {
    #[serde(default)]
    dashboards: Boards,
}

impl Boards {
    /// The boards as a boards file's text.
    pub fn to_file(&self) -> Result<String, BoardError> {
        toml::to_string_pretty(&BoardsFile {
            dashboards: self.clone(),
        })
        .map_err(|e| BoardError(format!("cannot render the boards file: {e}")))
    }

    /// Reads a boards file's text; every board is checked as the config loader checks them.
    pub fn from_file(text: &str) -> Result<Boards, BoardError> {
        toml::from_str::<BoardsFile>(text)
            .map(|file| file.dashboards)
            .map_err(|e| BoardError(format!("the boards file does not parse: {}", e.message())))
    }

    /// These boards followed by `more`, refused when a name is in both.
    pub fn with(&self, more: &Boards) -> Result<Boards, BoardError> {
        Boards::new(self.0.iter().chain(more.0.iter()).cloned().collect())
    }
}

/// Why a board was refused; the message names the board and the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardError(pub String);

impl fmt::Display for BoardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BoardError {}

/// One dashboard: a name for its URL, a title for people, and its panels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// `[a-z0-9][a-z0-9_-]*`, at most 64 characters: the `<name>` in `/d/<name>`.
    pub name: String,
    /// Shown in the page header; the name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub panels: Vec<Panel>,
}

/// What a panel draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PanelKind {
    /// Line chart over the chosen time range, one line per group and aggregation.
    #[default]
    Line,
    /// The latest closed window's value, coloured by the thresholds.
    Stat,
    /// The latest value of each group of series, one row per group.
    Table,
}

/// One panel of a board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    /// Shown above the panel; made from the metric and aggregation when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub kind: PanelKind,
    pub metric: String,
    /// A window label of `processor.windows` (`1m`, `10m/1m`); the first
    /// configured window when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Aggregations to show, as a list or a comma-separated string; `avg` when
    /// absent. Stat panels show the first.
    #[serde(
        default = "default_aggs",
        alias = "agg",
        deserialize_with = "aggs_from_list_or_text"
    )]
    pub aggs: Vec<String>,
    /// Only series carrying all of these tags.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// One line (or table row) per combination of these tag keys' values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// Colours from a value upwards; below the lowest threshold a value is "ok".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<Threshold>,
}

/// From `value` upwards (inclusive), the panel shows `color`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// The lowest value shown in `color`.
    #[schema(example = 90.0)]
    pub value: f64,
    /// A named colour (green, blue, yellow, orange, red, purple, grey) or `#rrggbb`.
    #[schema(example = "red")]
    pub color: String,
}

/// The colours a threshold may name; the UI maps each to a shade legible in
/// both light and dark themes.
pub const NAMED_COLORS: [&str; 7] = ["green", "blue", "yellow", "orange", "red", "purple", "grey"];

fn default_aggs() -> Vec<String> {
    vec!["avg".to_string()]
}

/// `aggs = "avg,p95"` and `aggs = ["avg", "p95"]` both work, like the API's `aggs=`.
fn aggs_from_list_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        Text(String),
        List(Vec<String>),
    }
    Ok(match ListOrText::deserialize(d)? {
        ListOrText::Text(text) => text.split(',').map(|s| s.trim().to_string()).collect(),
        ListOrText::List(list) => list,
    })
}

impl Board {
    /// The title shown for the board.
    pub fn title(&self) -> &str {
        self.title.as_deref().unwrap_or(&self.name)
    }

    /// Checks the board on its own, and normalises nothing: a valid board is
    /// served exactly as written.
    pub fn validate(&self) -> Result<(), BoardError> {
        check_board_name(&self.name)?;
        if self.name == DEFAULT_BOARD {
            return Err(BoardError(format!(
                "dashboard name `{DEFAULT_BOARD}` is reserved: that board is made from the stored metrics; pick another name"
            )));
        }
        for (i, panel) in self.panels.iter().enumerate() {
            panel.validate().map_err(|message| {
                let what = panel
                    .title
                    .as_deref()
                    .map_or_else(String::new, |t| format!(" (`{t}`)"));
                BoardError(format!(
                    "dashboard `{}` panel {}{what}: {message}",
                    self.name,
                    i + 1
                ))
            })?;
        }
        Ok(())
    }
}

impl Panel {
    /// A panel of `metric` with every option at its default.
    pub fn of_metric(metric: &str) -> Panel {
        Panel {
            title: None,
            kind: PanelKind::Line,
            metric: metric.to_string(),
            window: None,
            aggs: default_aggs(),
            tags: Tags::new(),
            group_by: Vec::new(),
            thresholds: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.metric.trim().is_empty() {
            return Err("`metric` is required".into());
        }
        if self.window.as_deref().is_some_and(|w| w.trim().is_empty()) {
            return Err(
                "`window` is empty; leave it out to use the first configured window".into(),
            );
        }
        let aggs = AggKind::parse_list(&self.aggs.join(",")).map_err(|e| format!("`aggs`: {e}"))?;
        if aggs.len() != self.aggs.len() {
            return Err("`aggs` names an aggregation twice or an empty one".into());
        }
        for key in &self.group_by {
            if key.trim().is_empty() || key.contains([',', ':', '=']) {
                return Err(format!("`group_by` takes tag keys, not `{key}`"));
            }
        }
        for (key, value) in &self.tags {
            if key.is_empty()
                || value.is_empty()
                || key.contains([',', ':', '='])
                || value.contains(',')
            {
                return Err(format!(
                    "`tags`: `{key} = \"{value}\"` cannot be a filter (empty, or a key with `,:=` or a value with `,`)"
                ));
            }
        }
        for (i, t) in self.thresholds.iter().enumerate() {
            if !t.value.is_finite() {
                return Err(format!("threshold {} has no finite value", i + 1));
            }
            if i > 0 && t.value <= self.thresholds[i - 1].value {
                return Err("`thresholds` must be listed in increasing value order".into());
            }
            if !is_color(&t.color) {
                return Err(format!(
                    "threshold colour `{}`: use one of {} or #rrggbb",
                    t.color,
                    NAMED_COLORS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

fn check_board_name(name: &str) -> Result<(), BoardError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(BoardError(format!(
            "dashboard name `{name}`: use 1 to {MAX_NAME_LEN} of a-z, 0-9, `-` and `_`, starting with a letter or digit (it is the <name> in /d/<name>)"
        )))
    }
}

fn is_color(color: &str) -> bool {
    NAMED_COLORS.contains(&color)
        || color
            .strip_prefix('#')
            .is_some_and(|hex| hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Panels whose window is not among `windows` (the configured labels), as
/// messages naming the board and panel; empty when every panel can be answered.
/// Such a panel is still served and shows the API's refusal, so one typo does not
/// take the whole dashboard role down.
pub fn check_windows(boards: &[Board], windows: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for board in boards {
        for (i, panel) in board.panels.iter().enumerate() {
            if let Some(window) = &panel.window
                && !windows.iter().any(|w| w == window)
            {
                problems.push(format!(
                        "dashboard `{}` panel {}: window `{window}` is not computed; processor.windows has {}",
                        board.name,
                        i + 1,
                        windows.join(", ")
                    ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boards_file_reads_back_as_written_and_names_clash_with_the_config() {
        let boards = Boards::new(vec![Board {
            name: "web".into(),
            title: Some("Web".into()),
            panels: vec![],
        }])
        .unwrap();
        let text = boards.to_file().unwrap();
        assert_eq!(Boards::from_file(&text).unwrap(), boards);
        assert_eq!(Boards::from_file("").unwrap(), Boards::default());
        assert!(Boards::from_file("[[dashboards]]\nname = \"Bad Name\"\n").is_err());
        let error = boards.with(&boards).unwrap_err();
        assert_eq!(error.0, "dashboard `web` is defined twice");
    }

    /// What the config file holds, through the same serde path as `Config`.
    #[derive(Debug, Deserialize, Serialize)]
    struct File {
        #[serde(default)]
        dashboards: Boards,
    }

    fn parse(text: &str) -> Result<Boards, String> {
        toml::from_str::<File>(text)
            .map(|f| f.dashboards)
            .map_err(|e| e.to_string())
    }

    const EXAMPLE: &str = r##"
[[dashboards]]
name = "web"
title = "Web fleet"

[[dashboards.panels]]
title = "CPU by host"
metric = "cpu_usage"
window = "1m"
aggs = ["avg", "p95"]
group_by = ["host"]
tags = { env = "prod" }

[[dashboards.panels]]
kind = "stat"
metric = "cpu_usage"
agg = "p95"
thresholds = [{ value = 80, color = "orange" }, { value = 90, color = "#d62728" }]

[[dashboards.panels]]
kind = "table"
metric = "mem_used"
aggs = "last, max"
"##;

    #[test]
    fn the_documented_example_parses_with_defaults_filled() {
        let boards = parse(EXAMPLE).unwrap();
        let web = boards.get("web").unwrap();
        assert_eq!(web.title(), "Web fleet");
        let [line, stat, table] = &web.panels[..] else {
            panic!("three panels")
        };
        assert_eq!(line.kind, PanelKind::Line);
        assert_eq!(line.aggs, ["avg", "p95"]);
        assert_eq!(line.tags["env"], "prod");
        assert_eq!(
            (stat.kind, stat.aggs.as_slice()),
            (PanelKind::Stat, &["p95".to_string()][..])
        );
        assert_eq!(stat.thresholds[1].color, "#d62728");
        assert_eq!(stat.window, None);
        assert_eq!(table.aggs, ["last", "max"]);
        assert!(parse("").unwrap().as_slice().is_empty());
    }

    #[test]
    fn boards_round_trip_through_toml() {
        let boards = parse(EXAMPLE).unwrap();
        let text = toml::to_string(&File {
            dashboards: boards.clone(),
        })
        .unwrap();
        assert_eq!(parse(&text).unwrap(), boards, "{text}");
    }

    #[test]
    fn bad_boards_are_refused_naming_board_and_panel() {
        let panel = |extra: &str| {
            format!(
                "[[dashboards]]\nname = \"ops\"\n[[dashboards.panels]]\ntitle = \"CPU\"\nmetric = \"cpu\"\n{extra}\n"
            )
        };
        let cases = [
            (
                panel("aggs = [\"avg\", \"median\"]"),
                "unknown aggregation `median`",
            ),
            (panel("aggs = \"avg,avg\""), "twice"),
            (panel("kind = \"pie\""), "unknown variant"),
            (panel("colour = \"red\""), "unknown field"),
            (
                panel(
                    "thresholds = [{ value = 9, color = \"red\" }, { value = 1, color = \"green\" }]",
                ),
                "increasing",
            ),
            (
                panel("thresholds = [{ value = 9, color = \"url(x)\" }]"),
                "#rrggbb",
            ),
            (panel("group_by = [\"host:a\"]"), "tag keys"),
            (panel("window = \" \""), "window"),
            (
                "[[dashboards]]\nname = \"ops\"\n[[dashboards.panels]]\nmetric = \" \"\n"
                    .to_string(),
                "`metric` is required",
            ),
            (
                "[[dashboards]]\nname = \"Web Fleet\"\n".to_string(),
                "a-z, 0-9",
            ),
            (
                "[[dashboards]]\nname = \"default\"\n".to_string(),
                "reserved",
            ),
            (
                "[[dashboards]]\nname = \"a\"\n[[dashboards]]\nname = \"a\"\n".to_string(),
                "defined twice",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{text}\n=> {err}");
        }
        let err = parse(&panel("aggs = \"nope\"")).unwrap_err();
        assert!(err.contains("dashboard `ops` panel 1 (`CPU`)"), "{err}");
    }

    #[test]
    fn panels_with_unconfigured_windows_are_reported() {
        let boards = parse(EXAMPLE).unwrap();
        let windows = |labels: &[&str]| labels.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_windows(boards.as_slice(), &windows(&["1m", "5m"])).is_empty());
        let problems = check_windows(boards.as_slice(), &windows(&["5m"]));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("dashboard `web` panel 1: window `1m`"),
            "{problems:?}"
        );
    }
}
