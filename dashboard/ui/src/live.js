// The live stream: `GET /api/v1/live` (server-sent events) read with fetch, so
// the read token travels as a header (EventSource cannot set one, and a token in
// the URL would end up in logs and history). Reconnects by itself and reports
// whether the page is live, stale or disconnected.

import { authHeaders } from "./api.js";

/** The server sends a keep-alive comment every 15 s; twice that without a byte is stale. */
const STALE_AFTER_MS = 35_000;
/** ...and four times that is a dead connection, even if the socket did not say so. */
const DEAD_AFTER_MS = 65_000;
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 15_000;

export class LiveStream {
  /**
   * @param {object} o
   * @param {(name: string, data: any) => void} o.onEvent  one parsed SSE event
   * @param {(status: string, detail: object) => void} o.onStatus
   *   "connecting" | "live" | "stale" | "disconnected" | "unauthorized"
   * @param {() => void} o.onReconnect  called when a stream opens after a break,
   *   since windows may have closed meanwhile
   */
  constructor({ path = "/api/v1/live", onEvent, onStatus, onReconnect }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.onReconnect = onReconnect;
    this.status = "idle";
    this.failures = 0;
    this.everOpened = false;
    this.lastActivity = 0;
    this.controller = null;
    this.retryTimer = null;
    this.stopped = true;
    this.watchdog = null;
    this.onOnline = () => this.reconnectNow();
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("online", this.onOnline);
    this.watchdog = setInterval(() => this.check(), 5_000);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    this.controller?.abort();
    this.controller = null;
  }

  /** Drops any wait and connects again (the token changed, or the network came back). */
  reconnectNow() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    this.controller?.abort();
    this.failures = 0;
    this.connect();
  }

  setStatus(status, detail = {}) {
    this.status = status;
    this.onStatus?.(status, detail);
  }

  check() {
    if (this.status !== "live" && this.status !== "stale") return;
    const quiet = Date.now() - this.lastActivity;
    if (quiet > DEAD_AFTER_MS) {
      this.controller?.abort(); // the read loop then schedules a reconnect
    } else if (quiet > STALE_AFTER_MS && this.status === "live") {
      this.setStatus("stale", { quietMs: quiet });
    }
  }

  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    this.setStatus("connecting");
    let reason = "the stream ended";
    try {
      const response = await fetch(this.path, {
        headers: { Accept: "text/event-stream", ...authHeaders() },
        cache: "no-store",
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        this.setStatus("unauthorized", { httpStatus: response.status });
        return; // until the page has a token and calls reconnectNow()
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      this.lastActivity = Date.now();
      this.failures = 0;
      this.setStatus("live");
      if (this.everOpened) this.onReconnect?.();
      this.everOpened = true;
      await this.read(response.body.getReader(), controller);
    } catch (error) {
      reason = error?.name === "AbortError" ? "no data for too long" : String(error?.message ?? error);
    }
    if (this.stopped || this.controller !== controller) return;
    this.scheduleRetry(reason);
  }

  scheduleRetry(reason) {
    const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** this.failures) * (0.8 + 0.4 * Math.random());
    this.failures += 1;
    this.setStatus("disconnected", { retryInMs: delay, reason });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  async read(reader, controller) {
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || controller.signal.aborted) return;
      this.lastActivity = Date.now();
      if (this.status === "stale") this.setStatus("live");
      buffer += decoder.decode(value, { stream: true });
      const frames = buffer.split(/\r?\n\r?\n/);
      buffer = frames.pop();
      for (const frame of frames) this.dispatch(frame);
    }
  }

  /** One SSE frame: `event:` and `data:` lines; `:` lines are keep-alive comments. */
  dispatch(frame) {
    let name = "message";
    const data = [];
    for (const line of frame.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return;
    let parsed;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch {
      return; // not ours to show
    }
    this.onEvent?.(name, parsed);
  }
}
