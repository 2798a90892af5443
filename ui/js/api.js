// The API client of the admin UI: the signed-in token (kept for this browser tab only) on
// every request, JSON in and out, and the API's error body turned into an ApiError.

const KEY = 'meridian.token';

export function token() {
  return sessionStorage.getItem(KEY);
}

export function signIn(t) {
  sessionStorage.setItem(KEY, t);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Sends `method path` (with `body` as JSON) and answers the parsed JSON. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
  if (!response.ok) {
    const err = parsed && parsed.error;
    const e = new ApiError(response.status, err ? err.code : `http_${response.status}`,
      err ? err.message : text.slice(0, 200));
    if (response.status === 401) window.dispatchEvent(new CustomEvent('meridian:unauthenticated', { detail: e }));
    throw e;
  }
  return parsed;
}

export const get = (path) => api('GET', path);
export const put = (path, body) => api('PUT', path, body);
export const post = (path, body) => api('POST', path, body ?? {});
export const del = (path) => api('DELETE', path);

/** `?a=1&b=2` of the non-empty parameters. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(s);
