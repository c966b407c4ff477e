// Line charts on uPlot (vendored, global `uPlot`): themed from the page's CSS
// variables, a tooltip with exact values, and markers for anomalies.

import { formatExact, formatTime, formatValue } from "./format.js";

/** Distinct in light and dark themes, in the order series get them. */
export const PALETTE = [
  "#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6",
  "#06b6d4", "#ec4899", "#84cc16", "#f97316", "#64748b",
];

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/**
 * A line chart in `root`.
 *
 * `series`: [{label, color}], `data`: [xs (seconds), ...ys] as uPlot takes it,
 * `range()`: [from, to] in seconds for the x axis, `anomalies()`: markers
 * [{x (seconds), y?, label}], `provisional()`: points of windows still open
 * [{x (seconds), y, color}], drawn hollow and dashed since they will move,
 * `compact`: a sparkline (no axes, no tooltip).
 */
export function lineChart(root, { series, data, range, anomalies = () => [], provisional = () => [], compact = false, height = 240 }) {
  const text = cssVar("--muted") || "#667";
  const grid = cssVar("--grid") || "rgba(128,128,128,.15)";
  const axis = {
    stroke: text,
    grid: { stroke: grid, width: 1 },
    ticks: { stroke: grid, width: 1, size: 4 },
    font: "11px system-ui, sans-serif",
  };
  const opts = {
    width: Math.max(120, root.clientWidth),
    height,
    padding: compact ? [4, 0, 4, 0] : [10, 12, 0, 0],
    legend: { show: false },
    cursor: compact
      ? { show: false }
      : { drag: { x: false, y: false }, points: { size: 7 }, focus: { prox: 24 } },
    focus: { alpha: 0.35 },
    scales: {
      x: { time: true, range: () => range() },
      y: {
        range: (u, min, max) => {
          if (min === null || max === null) return [0, 1];
          if (min === max) return [min - Math.abs(min || 1) * 0.1, max + Math.abs(max || 1) * 0.1];
          const pad = (max - min) * 0.08;
          return [min >= 0 && min - pad < 0 ? 0 : min - pad, max + pad];
        },
      },
    },
    axes: compact
      ? [{ show: false }, { show: false }]
      : [axis, { ...axis, size: 56, values: (u, ticks) => ticks.map(formatValue) }],
    series: [
      {},
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: compact ? 1.5 : 2,
        fill: compact ? s.color + "22" : undefined,
        spanGaps: false,
        points: { show: (u, si, i0, i1) => i1 - i0 < 60, size: 5, fill: s.color },
      })),
    ],
    plugins: compact ? [] : [tooltipPlugin(series), anomalyPlugin(anomalies), provisionalPlugin(provisional)],
  };
  // eslint-disable-next-line no-undef
  return new uPlot(opts, data, root);
}

/** A floating box at the cursor with the time and every series' exact value. */
function tooltipPlugin(series) {
  let box;
  return {
    hooks: {
      init: (u) => {
        box = document.createElement("div");
        box.className = "chart-tooltip";
        box.hidden = true;
        u.over.appendChild(box);
        u.over.addEventListener("mouseleave", () => {
          box.hidden = true;
        });
      },
      setCursor: (u) => {
        const i = u.cursor.idx;
        if (i === null || i === undefined || u.cursor.left < 0) {
          box.hidden = true;
          return;
        }
        const x = u.data[0][i];
        box.replaceChildren();
        const title = document.createElement("div");
        title.className = "tt-time";
        title.textContent = formatTime(x * 1000);
        box.appendChild(title);
        let rows = 0;
        for (let s = 1; s < u.series.length; s++) {
          const value = u.data[s][i];
          if (!u.series[s].show || value === null || value === undefined) continue;
          const row = document.createElement("div");
          row.className = "tt-row";
          const swatch = document.createElement("span");
          swatch.className = "swatch";
          swatch.style.background = series[s - 1].color;
          const label = document.createElement("span");
          label.className = "tt-label";
          label.textContent = u.series[s].label;
          const val = document.createElement("span");
          val.className = "tt-value";
          val.textContent = formatExact(value);
          row.append(swatch, label, val);
          box.appendChild(row);
          rows += 1;
        }
        for (const a of u._pulseAnomalies ?? []) {
          if (a.x === x) {
            const row = document.createElement("div");
            row.className = "tt-anomaly";
            row.textContent = `⚠ ${a.label}`;
            box.appendChild(row);
            rows += 1;
          }
        }
        box.hidden = rows === 0;
        const width = u.over.clientWidth;
        const left = u.cursor.left + 14;
        box.style.left = `${left + box.offsetWidth > width ? u.cursor.left - box.offsetWidth - 14 : left}px`;
        box.style.top = `${Math.max(0, u.cursor.top - 10)}px`;
      },
    },
  };
}

/**
 * Anomaly markers: a dashed line at each anomaly's window and a ring at its
 * value. Nothing emits anomalies yet; the page passes any it finds in query
 * answers or on the live stream (see panels.js).
 */
function anomalyPlugin(anomalies) {
  return {
    hooks: {
      draw: (u) => {
        const list = anomalies();
        u._pulseAnomalies = list;
        u.root.dataset.anomalies = String(list.length);
        if (list.length === 0) return;
        const ctx = u.ctx;
        const color = cssVar("--c-red") || "#dc2626";
        const [top, height] = [u.bbox.top, u.bbox.height];
        ctx.save();
        ctx.strokeStyle = color;
        ctx.fillStyle = color;
        ctx.lineWidth = Math.max(1, devicePixelRatio);
        for (const a of list) {
          const x = Math.round(u.valToPos(a.x, "x", true));
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          ctx.setLineDash([]);
          if (a.y !== null && a.y !== undefined) {
            const y = u.valToPos(a.y, "y", true);
            ctx.beginPath();
            ctx.arc(x, y, 6 * devicePixelRatio, 0, 2 * Math.PI);
            ctx.lineWidth = 2 * devicePixelRatio;
            ctx.stroke();
          }
        }
        ctx.restore();
      },
    },
  };
}

/**
 * The open windows' points (`partial=true` answers): a hollow ring with a
 * dashed outline over the line's point, so a value that is still moving never
 * looks final. `data-provisional` on the chart holds how many are drawn.
 */
function provisionalPlugin(provisional) {
  return {
    hooks: {
      draw: (u) => {
        const list = provisional().filter((p) => p.y !== null && p.y !== undefined);
        u.root.dataset.provisional = String(list.length);
        if (list.length === 0) return;
        const ctx = u.ctx;
        const background = cssVar("--bg") || "#fff";
        ctx.save();
        ctx.lineWidth = 2 * devicePixelRatio;
        ctx.setLineDash([3 * devicePixelRatio, 2 * devicePixelRatio]);
        for (const p of list) {
          const x = u.valToPos(p.x, "x", true);
          const y = u.valToPos(p.y, "y", true);
          ctx.beginPath();
          ctx.arc(x, y, 5 * devicePixelRatio, 0, 2 * Math.PI);
          ctx.fillStyle = background;
          ctx.fill();
          ctx.strokeStyle = p.color;
          ctx.stroke();
        }
        ctx.restore();
      },
    },
  };
}
