// The three panel kinds: line charts over the range, stat panels with the latest
// value coloured by thresholds, and tables of series by tag.
//
// Every panel exposes its state to tests and tools as data- attributes on its
// element: data-state (loading|ready|empty|error), data-points (window starts
// drawn), data-series (lines drawn), data-rows (table rows), data-value and
// data-color (stat), data-updated-at (Date.now() of the last render with data).
//
// Anomalies (the processor does not emit them yet): a query_range answer may carry
// `anomalies: [{window_start_ms, tags?, value?, message?}]` (also per series), a
// live `window` event may carry the same array, and a live `anomaly` event may
// carry one such object with `metric_name` and `window`. All are drawn as markers.

import { ApiError, getJson, tagFilter } from "./api.js";
import { PALETTE, lineChart } from "./chart.js";
import { formatTime, formatValue } from "./format.js";

/** Live events of one commit arrive together; one refresh serves the burst. */
const DEBOUNCE_MS = 25;
const SPARK_HEIGHT = 84;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function sameTags(tags, filter) {
  return Object.entries(filter).every(([k, v]) => tags?.[k] === v);
}

function groupLabel(tags) {
  const entries = Object.entries(tags);
  if (entries.length === 0) return "all series";
  return entries.map(([k, v]) => (v === "" ? `${k} (none)` : `${k}=${v}`)).join(", ");
}

/**
 * Threshold colour of `value`: the highest threshold at or below it, "ok" below
 * them all, "none" without thresholds or value.
 */
export function thresholdColor(thresholds, value) {
  if (value === null || value === undefined || !thresholds?.length) return "none";
  let color = "ok";
  for (const t of thresholds ?? []) if (value >= t.value) color = t.color;
  return color;
}

function applyColor(node, color) {
  node.dataset.color = color;
  node.style.removeProperty("--tone");
  if (color.startsWith("#")) node.style.setProperty("--tone", color);
}

/** What panels share: the element, the query, refresh scheduling and errors. */
class Panel {
  constructor(def, ctx) {
    this.def = def;
    this.ctx = ctx;
    this.queue = Promise.resolve();
    this.pendingFrom = null;
    this.timer = null;
    this.destroyed = false;
    this.anomalies = [];
    this.el = el("article", `panel panel-${def.kind}`);
    this.el.dataset.panel = def.id;
    this.el.dataset.kind = def.kind;
    this.el.dataset.state = "loading";
    const head = el("header", "panel-head");
    this.titleEl = el("h2", "panel-title", def.title);
    this.metaEl = el("span", "panel-meta");
    this.badge = el("span", "panel-badge");
    head.append(this.titleEl, this.metaEl, this.badge);
    this.body = el("div", "panel-body");
    this.message = el("div", "panel-message");
    this.message.hidden = true;
    this.el.append(head, this.body, this.message);
  }

  /** The panel's query after the page's overrides (window, aggregation, filters, group-by). */
  query() {
    const q = this.ctx.query(this.def);
    this.metaEl.textContent = `${q.metric} · ${q.aggs.join(", ")} · ${q.window}` +
      (q.group_by.length ? ` · by ${q.group_by.join(", ")}` : "");
    return q;
  }

  /** Whether a live event concerns this panel. */
  matches(event) {
    const q = this.ctx.query(this.def);
    return event.metric_name === q.metric && event.window === q.window && sameTags(event.tags, q.tags);
  }

  /** A closed window, an open one's partial (or an anomaly) arrived: refresh from its start, soon. */
  onLive(name, event) {
    if (name === "anomaly") {
      this.anomalies.push(event);
      this.redraw();
      return;
    }
    if (Array.isArray(event.anomalies)) this.anomalies.push(...event.anomalies.map((a) => ({ tags: event.tags, ...a })));
    const start = event.window_start_ms;
    this.pendingFrom = this.pendingFrom === null ? start : Math.min(this.pendingFrom, start);
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      const from = this.pendingFrom;
      this.pendingFrom = null;
      this.run(() => this.refresh(from));
    }, DEBOUNCE_MS);
  }

  /** Runs loads one after another, so answers never land out of order. */
  run(task) {
    this.queue = this.queue.then(async () => {
      if (this.destroyed) return;
      try {
        await task();
      } catch (error) {
        this.fail(error);
      }
    });
    return this.queue;
  }

  load() {
    return this.run(() => this.fetchAll());
  }

  /** Re-reads what changed since `fromMs`; by default everything. */
  refresh() {
    return this.fetchAll();
  }

  /** Time moved on: drop what left the range and redraw. */
  tick() {}

  redraw() {}

  fail(error) {
    if (this.destroyed) return;
    if (error instanceof ApiError && error.needsToken) {
      this.ctx.onAuthError(error);
      this.show("loading", "Waiting for a read token…");
      return;
    }
    const text = error instanceof ApiError ? error.message : `Unexpected error: ${error?.message ?? error}`;
    if (!(error instanceof ApiError)) console.warn("panel", this.def.id, error);
    this.show("error", text);
  }

  /** Sets data-state and the message shown instead of (or over) the content. */
  show(state, text) {
    this.el.dataset.state = state;
    this.message.hidden = !text;
    this.message.textContent = text ?? "";
    this.message.className = `panel-message ${state}`;
  }

  markUpdated() {
    this.el.dataset.updatedAt = String(Date.now());
  }

  resize() {}

  destroy() {
    this.destroyed = true;
    clearTimeout(this.timer);
  }

  anomalyMarks(series) {
    return this.anomalies
      .filter((a) => series.some((s) => sameTags(a.tags ?? {}, s.tags)))
      .map((a) => ({ x: a.window_start_ms / 1000, y: a.value, label: a.message ?? "anomaly" }));
  }
}

/** One line per (group, aggregation) over the chosen range. */
class LinePanel extends Panel {
  constructor(def, ctx) {
    super(def, ctx);
    this.chartEl = el("div", "chart");
    this.legend = el("ul", "legend");
    this.body.append(this.chartEl, this.legend);
    // JSON(tags) -> {tags, points: Map(start -> aggregations), open: Set(starts of windows still open)}
    this.groups = new Map();
    this.aggs = [];
    this.chart = null;
    this.seriesKey = "";
    this.lines = [];
  }

  async fetchAll() {
    const q = this.query();
    const { fromMs, toMs } = this.ctx.range();
    const answer = await getJson("/api/v1/query_range", this.params(q, fromMs, toMs));
    this.groups.clear();
    this.aggs = q.aggs;
    this.anomalies = [];
    this.merge(answer, fromMs);
    this.render(answer.truncated);
  }

  async refresh(fromMs) {
    const q = this.query();
    const range = this.ctx.range();
    if (fromMs >= range.toMs) return;
    const from = Math.max(fromMs, range.fromMs);
    const answer = await getJson("/api/v1/query_range", this.params(q, from, range.toMs));
    this.merge(answer, from);
    this.render(answer.truncated);
  }

  params(q, fromMs, toMs) {
    return {
      metric: q.metric,
      window: q.window,
      from: (fromMs / 1000).toFixed(3),
      to: (toMs / 1000).toFixed(3),
      tags: tagFilter(q.tags),
      group_by: q.group_by.join(","),
      aggs: q.aggs.join(","),
      partial: "true",
    };
  }

  /** Replaces every point from `fromMs` on with the answer's. */
  merge(answer, fromMs) {
    for (const group of this.groups.values()) {
      for (const start of [...group.points.keys()]) if (start >= fromMs) group.points.delete(start);
      for (const start of [...group.open]) if (start >= fromMs) group.open.delete(start);
    }
    for (const s of answer.series ?? []) {
      const key = JSON.stringify(s.tags);
      if (!this.groups.has(key)) this.groups.set(key, { tags: s.tags, points: new Map(), open: new Set() });
      const group = this.groups.get(key);
      for (const p of s.points) {
        group.points.set(p.window_start_ms, p.aggregations);
        if (p.partial) group.open.add(p.window_start_ms); // still open: drawn provisional
      }
      for (const a of s.anomalies ?? []) this.anomalies.push({ tags: s.tags, ...a });
    }
    for (const a of answer.anomalies ?? []) this.anomalies.push(a);
    for (const [key, group] of this.groups) if (group.points.size === 0) this.groups.delete(key);
  }

  tick() {
    const { fromMs } = this.ctx.range();
    for (const group of this.groups.values()) {
      for (const start of [...group.points.keys()]) if (start < fromMs) group.points.delete(start);
      for (const start of [...group.open]) if (start < fromMs) group.open.delete(start);
    }
    this.render(this.truncated);
  }

  redraw() {
    this.chart?.redraw(false);
  }

  render(truncated) {
    if (this.destroyed) return;
    this.truncated = truncated;
    const groups = [...this.groups.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const starts = [...new Set(groups.flatMap(([, g]) => [...g.points.keys()]))].sort((a, b) => a - b);
    const lines = [];
    for (const [, group] of groups) {
      for (const agg of this.aggs) {
        const named = Object.keys(group.tags).length > 0;
        const label = named ? groupLabel(group.tags) + (this.aggs.length > 1 ? ` · ${agg}` : "") : agg;
        lines.push({ label, tags: group.tags, agg, points: group.points, open: group.open, color: PALETTE[lines.length % PALETTE.length] });
      }
    }
    const data = [
      starts.map((s) => s / 1000),
      ...lines.map((line) => starts.map((s) => line.points.get(s)?.[line.agg] ?? null)),
    ];
    this.lines = lines;
    this.el.dataset.points = String(starts.length);
    this.el.dataset.partial = String(new Set(groups.flatMap(([, g]) => [...g.open])).size);
    this.el.dataset.series = String(lines.length);
    this.badge.textContent = truncated ? "truncated" : "";
    this.badge.title = truncated ? "More windows than dashboard.max_points_per_query: the oldest are not shown" : "";
    if (starts.length === 0) {
      this.destroyChart();
      this.legend.replaceChildren();
      this.show("empty", "No closed windows in this range yet. A window appears once its end plus the allowed lateness has passed.");
      return;
    }
    this.show("ready");
    const key = lines.map((l) => l.label).join("\u0000");
    const range = () => {
      const r = this.ctx.range();
      return [r.fromMs / 1000, r.toMs / 1000];
    };
    if (this.chart && key === this.seriesKey) {
      this.chart.setData(data);
    } else {
      this.destroyChart();
      this.seriesKey = key;
      this.chart = lineChart(this.chartEl, {
        series: lines,
        data,
        range,
        anomalies: () => this.anomalyMarks(this.lines),
        provisional: () => this.provisionalMarks(this.lines),
      });
    }
    this.renderLegend(lines, data);
    this.markUpdated();
    this.ctx.onChart();
  }

  /** The points of windows still open, per visible line. */
  provisionalMarks(lines) {
    return lines.flatMap((line, i) =>
      this.chart?.series[i + 1]?.show === false
        ? []
        : [...line.open].map((start) => ({ x: start / 1000, y: line.points.get(start)?.[line.agg], color: line.color })),
    );
  }

  renderLegend(lines, data) {
    const items = lines.map((line, i) => {
      const values = data[i + 1];
      let last = null;
      for (let j = values.length - 1; j >= 0; j--) {
        if (values[j] !== null) {
          last = values[j];
          break;
        }
      }
      const item = el("li", "legend-item");
      item.dataset.hidden = String(this.chart?.series[i + 1]?.show === false);
      const swatch = el("span", "swatch");
      swatch.style.background = line.color;
      const button = el("button", "legend-label", line.label);
      button.type = "button";
      button.title = "Show or hide this line";
      button.addEventListener("click", () => {
        const shown = this.chart.series[i + 1].show;
        this.chart.setSeries(i + 1, { show: !shown });
        item.dataset.hidden = String(shown);
      });
      item.append(swatch, button, el("span", "legend-value", formatValue(last)));
      return item;
    });
    this.legend.replaceChildren(...items);
  }

  resize() {
    if (this.chart) this.chart.setSize({ width: Math.max(120, this.chartEl.clientWidth), height: this.chart.height });
  }

  destroyChart() {
    this.chart?.destroy();
    this.chart = null;
    this.seriesKey = "";
    this.chartEl.replaceChildren();
  }

  destroy() {
    super.destroy();
    this.destroyChart();
  }
}

/** The newest closed window's value, coloured by thresholds, over a sparkline. */
class StatPanel extends Panel {
  constructor(def, ctx) {
    super(def, ctx);
    this.valueEl = el("div", "stat-value", "–");
    this.subEl = el("div", "stat-sub");
    this.sparkEl = el("div", "sparkline");
    this.body.append(this.valueEl, this.subEl, this.sparkEl);
    this.spark = null;
  }

  /**
   * One query_range over the page's range: its newest point is the value (the
   * merge of every matching series' newest window, as `/dashboard` answers it),
   * the rest draws the sparkline.
   */
  async fetchAll() {
    const q = this.query();
    const agg = q.aggs[0];
    const { fromMs, toMs } = this.ctx.range();
    const answer = await getJson("/api/v1/query_range", {
      metric: q.metric,
      window: q.window,
      from: (fromMs / 1000).toFixed(3),
      to: (toMs / 1000).toFixed(3),
      tags: tagFilter(q.tags),
      aggs: agg,
    });
    if (this.destroyed) return;
    const points = answer.series?.[0]?.points ?? [];
    const last = points[points.length - 1];
    if (!last) {
      this.el.dataset.value = "";
      this.valueEl.textContent = "–";
      applyColor(this.valueEl, "none");
      this.el.dataset.color = "none";
      this.subEl.textContent = "";
      this.drawSpark([], agg);
      this.show("empty", `No closed ${q.window} window of ${q.metric} in this range yet.`);
      return;
    }
    const value = last.aggregations[agg];
    this.el.dataset.value = value === null ? "" : String(value);
    this.valueEl.textContent = formatValue(value);
    this.valueEl.title = String(value);
    const color = thresholdColor(this.def.thresholds, value);
    applyColor(this.valueEl, color);
    this.el.dataset.color = color;
    this.subEl.textContent = `${agg} of the ${q.window} window ending ${formatTime(last.window_end_ms)}`;
    this.drawSpark(points, agg);
    this.show("ready");
    this.markUpdated();
  }

  drawSpark(points, agg) {
    this.el.dataset.points = String(points.length);
    const data = [points.map((p) => p.window_start_ms / 1000), points.map((p) => p.aggregations[agg])];
    const range = () => {
      const r = this.ctx.range();
      return [r.fromMs / 1000, r.toMs / 1000];
    };
    if (this.spark) {
      this.spark.setData(data);
      return;
    }
    if (points.length === 0) return;
    this.spark = lineChart(this.sparkEl, {
      series: [{ label: agg, color: PALETTE[0] }],
      data,
      range,
      compact: true,
      height: SPARK_HEIGHT,
    });
  }

  tick() {
    // Re-reads the x range (it follows the clock) and redraws.
    this.spark?.setData(this.spark.data);
  }

  resize() {
    this.spark?.setSize({ width: Math.max(120, this.sparkEl.clientWidth), height: SPARK_HEIGHT });
  }

  destroy() {
    super.destroy();
    this.spark?.destroy();
  }
}

/** The newest value of each group of series, one row per group. */
class TablePanel extends Panel {
  constructor(def, ctx) {
    super(def, ctx);
    this.table = el("table", "series-table");
    const wrap = el("div", "table-wrap");
    wrap.append(this.table);
    this.body.append(wrap);
  }

  async fetchAll() {
    const q = this.query();
    const { fromMs, toMs } = this.ctx.range();
    const base = {
      metric: q.metric,
      window: q.window,
      from: (fromMs / 1000).toFixed(3),
      to: (toMs / 1000).toFixed(3),
      tags: tagFilter(q.tags),
    };
    let groupBy = q.group_by;
    if (groupBy.length === 0) {
      // "Series by tag": every tag key the series carry.
      const tags = await getJson("/api/v1/tags", base);
      groupBy = Object.keys(tags.keys);
    }
    const answer = await getJson("/api/v1/query_range", { ...base, group_by: groupBy.join(","), aggs: q.aggs.join(",") });
    if (this.destroyed) return;
    const rows = (answer.series ?? []).filter((s) => s.points.length > 0);
    this.el.dataset.rows = String(rows.length);
    this.el.dataset.points = String(rows.reduce((n, s) => n + s.points.length, 0));
    const head = el("tr");
    for (const key of groupBy) head.append(el("th", "tag", key));
    for (const agg of q.aggs) head.append(el("th", "num", agg));
    head.append(el("th", "time", "window start"));
    const body = rows.map((s) => {
      const last = s.points[s.points.length - 1];
      const tr = el("tr");
      for (const key of groupBy) tr.append(el("td", "tag", s.tags[key] || "—"));
      for (const agg of q.aggs) {
        const value = last.aggregations[agg];
        const td = el("td", "num", formatValue(value));
        td.title = String(value);
        applyColor(td, thresholdColor(this.def.thresholds, value));
        tr.append(td);
      }
      tr.append(el("td", "time", formatTime(last.window_start_ms)));
      return tr;
    });
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    tbody.append(...body);
    this.table.replaceChildren(thead, tbody);
    if (rows.length === 0) {
      this.show("empty", "No series with closed windows in this range yet.");
    } else {
      this.show("ready");
      this.markUpdated();
    }
  }
}

/** The panel object for a panel definition from /api/v1/dashboards/<name>. */
export function createPanel(def, ctx) {
  switch (def.kind) {
    case "stat":
      return new StatPanel(def, ctx);
    case "table":
      return new TablePanel(def, ctx);
    default:
      return new LinePanel(def, ctx);
  }
}
