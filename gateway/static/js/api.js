// Calls to musegate's JSON API, relative to the page's <base href> (works under any sub-path).
let csrf = "";

export function setCsrf(token) { csrf = token || ""; }

export class ApiError extends Error {
  constructor(status, message, field) { super(message); this.status = status; this.field = field; }
}

export async function call(method, url, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(url, init);
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (!resp.ok) {
    if (resp.status === 401 && url !== "session" && url !== "login") {
      window.dispatchEvent(new CustomEvent("musegate:logged-out"));
    }
    throw new ApiError(resp.status, (data && data.error) || `HTTP ${resp.status}`, data && data.field);
  }
  return data;
}

export const get = (url, params) => {
  const q = params ? "?" + new URLSearchParams(params).toString() : "";
  return call("GET", url + q);
};
export const post = (url, body) => call("POST", url, body);

export function streamUrl(trackId) { return `stream/${encodeURIComponent(trackId)}`; }
