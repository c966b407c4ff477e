// The dashboard API as the page uses it: JSON over fetch, with the read token
// (when one is needed) as a bearer header on every request.

const TOKEN_KEY = "pulse.readToken";

/** An answer in the API's error shape: {"error":{"code","message","details"}}. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** 401 (no token) or 403 (a wrong one): the page must ask for a token. */
  get needsToken() {
    return this.status === 401 || this.status === 403;
  }
}

/** The read token of this tab, or null. Session storage: it leaves with the tab. */
export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token then lasts until the page reloads.
  }
  memoryToken = value || null;
}

let memoryToken = null;

export function authHeaders() {
  const t = token() ?? memoryToken;
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/** `path` with the defined, non-empty `params` as a query string. */
export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** GETs JSON; throws ApiError for any non-2xx answer (network errors: status 0). */
export async function getJson(path, params, { signal } = {}) {
  let response;
  try {
    response = await fetch(url(path, params), {
      headers: { Accept: "application/json", ...authHeaders() },
      cache: "no-store",
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "Pulse is unreachable; retrying when the live stream reconnects.");
  }
  if (response.ok) return response.json();
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not our error shape (a proxy's page, say): keep the status line.
  }
  const error = body?.error ?? {};
  throw new ApiError(
    response.status,
    error.code ?? `http_${response.status}`,
    error.message ?? `${response.status} ${response.statusText}`,
    error.details,
  );
}

/**
 * Tags as the API writes a filter: `host:web-01,env:prod`. A value holding a
 * comma, a quote, a backslash or edge spaces goes in double quotes:
 * `path:"/a,b"`.
 */
export function tagFilter(tags) {
  return Object.entries(tags)
    .map(([k, v]) => (/[,"\\]|^\s|\s$/.test(v) ? `${k}:"${v.replace(/["\\]/g, "\\$&")}"` : `${k}:${v}`))
    .join(",");
}
