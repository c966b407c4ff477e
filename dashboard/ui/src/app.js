// Pulse's dashboard page. `/` lists the dashboards, `/d/<name>` shows one: its
// panels, the pickers that change them (range, window, aggregation, group-by,
// tag filters; kept in the URL so a view can be shared), and the live stream
// that moves the charts as windows close.

import { ApiError, getJson, setToken, tagFilter, token } from "./api.js";
import { LiveStream } from "./live.js";
import { createPanel } from "./panels.js";
import { durationMs, formatDuration, formatTime, fromLocalInput, toLocalInput } from "./format.js";

const RANGES = ["15m", "1h", "6h", "24h"];
const $ = (id) => document.getElementById(id);

/** What the pickers say, read from and written to the URL's query string. */
const state = readState(new URLSearchParams(location.search));

let board = null; // the answer of /api/v1/dashboards/<name>
let panels = [];
let live = null;
let firstChart = false;
let authPending = false;
let toolbarReady = false;

function readState(params) {
  const tags = {};
  for (const pair of (params.get("tags") ?? "").split(",")) {
    const at = pair.indexOf(":");
    if (at > 0) tags[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const from = Number(params.get("from"));
  const to = Number(params.get("to"));
  const custom = params.get("range") === "custom" && from > 0 && to > from;
  return {
    range: custom ? "custom" : RANGES.includes(params.get("range")) ? params.get("range") : "1h",
    fromMs: custom ? from * 1000 : null,
    toMs: custom ? to * 1000 : null,
    window: params.get("window") ?? "",
    agg: params.get("agg") ?? "",
    groupBy: params.get("group_by") ?? "",
    tags,
  };
}

function writeState() {
  const params = new URLSearchParams();
  if (state.range !== "1h") params.set("range", state.range);
  if (state.range === "custom") {
    params.set("from", String(Math.floor(state.fromMs / 1000)));
    params.set("to", String(Math.floor(state.toMs / 1000)));
  }
  if (state.window) params.set("window", state.window);
  if (state.agg) params.set("agg", state.agg);
  if (state.groupBy) params.set("group_by", state.groupBy);
  const tags = Object.entries(state.tags).map(([k, v]) => `${k}:${v}`).join(",");
  if (tags) params.set("tags", tags);
  const query = params.toString();
  history.replaceState(null, "", query ? `${location.pathname}?${query}` : location.pathname);
}

/** What panels ask of the page: their effective query, the range, callbacks. */
const ctx = {
  query(def) {
    let groupBy = def.group_by;
    if (state.groupBy === "-") groupBy = [];
    else if (state.groupBy) groupBy = [state.groupBy];
    return {
      metric: def.metric,
      window: state.window || def.window,
      aggs: state.agg ? [state.agg] : def.aggs,
      tags: { ...def.tags, ...state.tags },
      group_by: groupBy,
    };
  },
  range() {
    if (state.range === "custom") return { fromMs: state.fromMs, toMs: state.toMs };
    const toMs = Date.now();
    return { fromMs: toMs - durationMs(state.range), toMs };
  },
  onChart() {
    if (firstChart) return;
    firstChart = true;
    performance.mark("pulse:first-chart");
    document.body.dataset.firstChartMs = String(Math.round(performance.now()));
  },
  onAuthError(error) {
    askForToken(error);
  },
};

// ---------------------------------------------------------------- views

async function start() {
  const match = /^\/d\/([^/]+)\/?$/.exec(location.pathname);
  $("forget-token").hidden = !token();
  try {
    if (match) {
      const name = decodeURIComponent(match[1]);
      $("page-title").textContent = name;
      await showBoard(name);
    } else await showList();
  } catch (error) {
    if (error instanceof ApiError && error.needsToken) askForToken(error);
    else showError(error);
  }
}

async function showList() {
  const list = await getJson("/api/v1/dashboards");
  document.title = "Dashboards · Pulse";
  $("live").hidden = true; // nothing live to show on the list
  $("page-title").textContent = "Dashboards";
  const grid = document.createElement("div");
  grid.className = "board-list";
  for (const b of list.dashboards) {
    const card = document.createElement("a");
    card.className = "board-card";
    card.href = `/d/${encodeURIComponent(b.name)}`;
    card.dataset.board = b.name;
    const title = document.createElement("h2");
    title.textContent = b.title;
    const meta = document.createElement("p");
    meta.textContent =
      b.panels === null ? "One panel per metric seen" : `${b.panels} panel${b.panels === 1 ? "" : "s"}`;
    const foot = document.createElement("span");
    foot.className = "board-source";
    foot.textContent = b.source === "config" ? `/d/${b.name} · from the config file` : `/d/${b.name} · built in`;
    card.append(title, meta, foot);
    grid.append(card);
  }
  const intro = document.createElement("p");
  intro.className = "intro";
  intro.textContent = `Windows computed: ${list.windows.join(", ")}. Add dashboards with [[dashboards]] in the config file.`;
  $("main").replaceChildren(grid, intro);
  document.body.dataset.view = "list";
  document.body.dataset.loaded = "true";
}

async function showBoard(name) {
  let answer;
  try {
    answer = await getJson(`/api/v1/dashboards/${encodeURIComponent(name)}`);
  } catch (error) {
    if (error instanceof ApiError && error.code === "no_such_dashboard") return showNotFound(name, error);
    throw error;
  }
  board = answer;
  document.title = `${board.title} · Pulse`;
  $("page-title").textContent = board.title;
  fillBoardSelect(name);
  setupToolbar();
  renderPanels();
  document.body.dataset.view = "board";
  await loadPanels();
  document.body.dataset.loaded = "true";
  startLive();
  loadTagOptions();
}

function showNotFound(name, error) {
  const box = document.createElement("div");
  box.className = "notice";
  const h = document.createElement("h2");
  h.textContent = `No dashboard named “${name}”`;
  const p = document.createElement("p");
  p.textContent = "These exist:";
  const ul = document.createElement("ul");
  for (const other of error.details?.dashboards ?? ["default"]) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/d/${encodeURIComponent(other)}`;
    a.textContent = other;
    li.append(a);
    ul.append(li);
  }
  box.append(h, p, ul);
  $("page-title").textContent = "Not found";
  document.title = "Not found · Pulse";
  $("main").replaceChildren(box);
  document.body.dataset.view = "notfound";
  document.body.dataset.loaded = "true";
}

function showError(error) {
  const box = document.createElement("div");
  box.className = "notice error";
  const h = document.createElement("h2");
  h.textContent = "The dashboard could not load";
  const p = document.createElement("p");
  p.textContent = error?.message ?? String(error);
  const retry = document.createElement("button");
  retry.type = "button";
  retry.textContent = "Retry";
  retry.addEventListener("click", () => start());
  box.append(h, p, retry);
  $("main").replaceChildren(box);
  document.body.dataset.view = "error";
}

async function fillBoardSelect(current) {
  const select = $("board-select");
  try {
    const list = await getJson("/api/v1/dashboards");
    select.replaceChildren(
      ...list.dashboards.map((b) => {
        const option = new Option(b.title, b.name, false, b.name === current);
        return option;
      }),
    );
    select.hidden = false;
    $("page-title").hidden = true;
    select.onchange = () => {
      location.href = `/d/${encodeURIComponent(select.value)}${location.search}`;
    };
  } catch {
    // The title stays; switching boards goes through the list page.
  }
}

// ---------------------------------------------------------------- panels

function renderPanels() {
  for (const p of panels) p.destroy();
  panels = board.panels.map((def) => createPanel(def, ctx));
  const grid = document.createElement("div");
  grid.className = "panel-grid";
  grid.append(...panels.map((p) => p.el));
  if (panels.length === 0) {
    const empty = document.createElement("div");
    empty.className = "notice";
    empty.textContent =
      board.source === "metrics"
        ? "No metric has been stored yet. POST a point to the gateway and it appears here."
        : "This dashboard has no panels.";
    $("main").replaceChildren(empty);
    return;
  }
  $("main").replaceChildren(grid);
}

// ---------------------------------------------------------------- alerts

/**
 * The alerts firing now (anomalies of the last day whose rule has not
 * resolved), above the panels; refreshed with the panels and on live
 * `anomaly` events. Hidden when none fire. `data-firing` holds the count.
 */
async function loadAlerts() {
  const section = $("alerts");
  let answer;
  try {
    answer = await getJson("/api/v1/anomalies", {
      state: "firing",
      from: String(Math.floor(Date.now() / 1000) - 86_400),
      to: String(Math.floor(Date.now() / 1000) + 60),
    });
  } catch {
    return; // the panels show the API's trouble; the list keeps what it had
  }
  const firing = answer.anomalies ?? [];
  const list = $("alert-list");
  list.replaceChildren(
    ...firing.reverse().map((a) => {
      const item = document.createElement("li");
      item.dataset.id = a.id;
      item.textContent = `${formatTime(a.window_start_ms)} · ${a.message}`;
      return item;
    }),
  );
  section.dataset.firing = String(firing.length);
  section.hidden = firing.length === 0;
}

async function loadPanels() {
  loadAlerts();
  await Promise.all(panels.map((p) => p.load()));
}

function reloadPanels() {
  writeState();
  syncToolbar();
  return loadPanels();
}

// ---------------------------------------------------------------- toolbar

function setupToolbar() {
  $("toolbar").hidden = false;
  if (toolbarReady) {
    syncToolbar();
    return;
  }
  toolbarReady = true;
  const windowSelect = $("window-select");
  for (const w of board.windows) windowSelect.append(new Option(w, w));
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      const range = button.dataset.range;
      if (range === "custom") {
        const r = ctx.range();
        $("range-from").value = toLocalInput(r.fromMs);
        $("range-to").value = toLocalInput(r.toMs);
        $("custom-range").hidden = false;
        return;
      }
      $("custom-range").hidden = true;
      state.range = range;
      reloadPanels();
      loadTagOptions();
    });
  }
  $("custom-range").addEventListener("submit", (event) => {
    event.preventDefault();
    const from = fromLocalInput($("range-from").value);
    const to = fromLocalInput($("range-to").value);
    if (from === null || to === null || to <= from) {
      $("range-to").setCustomValidity("The end must come after the start.");
      $("range-to").reportValidity();
      return;
    }
    $("range-to").setCustomValidity("");
    Object.assign(state, { range: "custom", fromMs: from, toMs: to });
    reloadPanels();
    loadTagOptions();
  });
  windowSelect.addEventListener("change", () => {
    state.window = windowSelect.value;
    reloadPanels();
  });
  $("agg-select").addEventListener("change", () => {
    state.agg = $("agg-select").value;
    reloadPanels();
  });
  $("group-select").addEventListener("change", () => {
    state.groupBy = $("group-select").value;
    reloadPanels();
  });
  $("filter-select").addEventListener("change", () => {
    const value = $("filter-select").value;
    const at = value.indexOf(":");
    if (at > 0) {
      state.tags[value.slice(0, at)] = value.slice(at + 1);
      reloadPanels();
    }
    $("filter-select").value = "";
  });
  syncToolbar();
}

/** Makes every control show the state (after a change or on load). */
function syncToolbar() {
  for (const button of document.querySelectorAll("[data-range]")) {
    button.setAttribute("aria-pressed", String(button.dataset.range === state.range));
  }
  $("custom-range").hidden = state.range !== "custom";
  if (state.range === "custom") {
    $("range-from").value = toLocalInput(state.fromMs);
    $("range-to").value = toLocalInput(state.toMs);
  }
  ensureOption($("window-select"), state.window);
  ensureOption($("agg-select"), state.agg);
  ensureOption($("group-select"), state.groupBy);
  const chips = Object.entries(state.tags).map(([key, value]) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.dataset.tag = `${key}:${value}`;
    chip.title = "Remove this filter";
    chip.textContent = `${key} = ${value}`;
    const x = document.createElement("span");
    x.className = "chip-x";
    x.setAttribute("aria-hidden", "true");
    x.textContent = "×";
    chip.append(x);
    chip.addEventListener("click", () => {
      delete state.tags[key];
      reloadPanels();
    });
    return chip;
  });
  $("filters").replaceChildren(...chips);
}

/** Selects `value` in `select`, adding it first when the URL named an unknown one. */
function ensureOption(select, value) {
  if (![...select.options].some((o) => o.value === value)) select.append(new Option(value, value));
  select.value = value;
}

/** Tag keys and values of the board's series, for the filter and group-by pickers. */
async function loadTagOptions() {
  const pairs = new Map();
  for (const def of board.panels) {
    const q = ctx.query(def);
    pairs.set(`${q.metric}\u0000${q.window}`, { metric: def.metric, window: q.window, tags: def.tags });
  }
  const { fromMs, toMs } = ctx.range();
  const keys = new Map();
  await Promise.all(
    [...pairs.values()].map(async (p) => {
      try {
        const answer = await getJson("/api/v1/tags", {
          metric: p.metric,
          window: p.window,
          from: (fromMs / 1000).toFixed(3),
          to: (toMs / 1000).toFixed(3),
          tags: tagFilter(p.tags),
        });
        for (const [key, values] of Object.entries(answer.keys)) {
          if (!keys.has(key)) keys.set(key, new Set());
          for (const v of values) keys.get(key).add(v);
        }
      } catch {
        // A panel that cannot be queried shows its own error.
      }
    }),
  );
  const filter = $("filter-select");
  filter.replaceChildren(new Option("Add a tag filter…", ""));
  for (const key of [...keys.keys()].sort()) {
    const group = document.createElement("optgroup");
    group.label = key;
    for (const value of [...keys.get(key)].sort()) group.append(new Option(`${key} = ${value}`, `${key}:${value}`));
    filter.append(group);
  }
  const groupSelect = $("group-select");
  groupSelect.replaceChildren(new Option("Panel default", ""), new Option("None", "-"));
  for (const key of [...keys.keys()].sort()) groupSelect.append(new Option(key, key));
  ensureOption(groupSelect, state.groupBy);
  document.body.dataset.tagsLoaded = "true";
}

// ---------------------------------------------------------------- live

const STATUS_TEXT = {
  idle: () => "Not connected",
  connecting: () => "Connecting…",
  live: () => "Live",
  stale: (d) => `Stale · no data for ${formatDuration(d.quietMs ?? 0)}`,
  disconnected: (d) => `Disconnected · retrying in ${formatDuration(d.retryInMs ?? 0)}`,
  unauthorized: () => "Needs a read token",
};

function startLive() {
  live?.stop();
  live = new LiveStream({
    onEvent(name, data) {
      if (name !== "window" && name !== "anomaly") return;
      const badge = $("live");
      badge.dataset.lastEvent = String(Date.now());
      badge.title = `Last window closed: ${formatTime(data.window_end_ms ?? Date.now())}`;
      for (const p of panels) if (p.matches(data)) p.onLive(name, data);
      if (name === "anomaly") loadAlerts();
    },
    onStatus(status, detail) {
      const badge = $("live");
      badge.dataset.status = status;
      badge.querySelector(".label").textContent = STATUS_TEXT[status]?.(detail) ?? status;
      document.body.dataset.live = status;
      if (status === "unauthorized") askForToken(new ApiError(detail.httpStatus, "unauthorized", ""));
    },
    onReconnect() {
      loadPanels(); // windows may have closed while the stream was down
    },
  });
  live.start();
}

// ---------------------------------------------------------------- auth

function askForToken(error) {
  if (authPending) return;
  authPending = true;
  const dialog = $("token-dialog");
  $("token-reason").textContent =
    error?.status === 403
      ? "That token was refused (it is not one of dashboard.read_tokens). Try another."
      : "This Pulse asks for a read token (one of dashboard.read_tokens).";
  $("token-input").value = "";
  document.body.dataset.auth = "needed";
  dialog.showModal();
}

function setupAuth() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    setToken(value);
    $("token-dialog").close();
    authPending = false;
    document.body.dataset.auth = "given";
    live?.stop();
    live = null;
    start();
  });
  $("token-dialog").addEventListener("cancel", (event) => event.preventDefault());
  $("forget-token").addEventListener("click", () => {
    setToken(null);
    location.reload();
  });
}

// ---------------------------------------------------------------- page life

function setupPage() {
  setupAuth();
  // Relative ranges slide with the clock even when no window closes.
  setInterval(() => {
    if (state.range !== "custom") for (const p of panels) p.tick();
  }, 15_000);
  let frame = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(() => {
      for (const p of panels) p.resize();
    });
  }).observe($("main"));
  // Charts take their colours from the theme: redraw them when it flips.
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (board) {
      renderPanels();
      loadPanels();
    }
  });
}

setupPage();
start();
