// Numbers and times as the page writes them.

const compact = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 4 });
const compactBig = new Intl.NumberFormat(undefined, { notation: "compact", maximumSignificantDigits: 4 });

/** A readable value: 4 significant digits, compact past a million, "–" for none. */
export function formatValue(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Math.abs(value) >= 1e6 ? compactBig.format(value) : compact.format(value);
}

/** The exact value, as JavaScript's shortest round-trip form (tooltips). */
export function formatExact(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return String(value);
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

/** A window start in local time, with the date when it is not today. */
export function formatTime(ms) {
  const date = new Date(ms);
  const today = new Date();
  return date.toDateString() === today.toDateString() ? timeFormat.format(date) : dateTimeFormat.format(date);
}

/** `90_000` as `1m 30s`, for "no update for …". */
export function formatDuration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  return s % 60 ? `${m}m ${s % 60}s` : `${m}m`;
}

/** Window labels (`1m`, `10m/1m`) and ranges (`6h`) in milliseconds: the size. */
export function durationMs(label) {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)/.exec(label ?? "");
  if (!match) return 0;
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2]];
  return Number(match[1]) * unit;
}

/** A `<input type="datetime-local">` value for `ms`, and back. */
export function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

export function fromLocalInput(text) {
  const ms = new Date(text).getTime();
  return Number.isFinite(ms) ? ms : null;
}
