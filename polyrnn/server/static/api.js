// The server's JSON API. Every call throws an Error carrying the server's message on a 4xx/5xx.

async function call(method, url, body, extra = {}) {
  const opts = { method, headers: {}, ...extra };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(url, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    let msg = data.detail ?? res.statusText;
    if (Array.isArray(msg)) msg = msg.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    const err = new Error(`${res.status}: ${msg}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

const enc = (name) => name.split("/").map(encodeURIComponent).join("/");

export const api = {
  images: () => call("GET", "/api/images"),
  imageUrl: (name) => `/api/images/${enc(name)}/file`,
  annotations: (name) => call("GET", `/api/annotations/${enc(name)}`),
  save: (name, shapes, version, { replace = false, keepalive = false } = {}) =>
    call("PUT", `/api/annotations/${enc(name)}`, { shapes, version, replace_unreadable: replace }, keepalive ? { keepalive } : {}),
  labels: () => call("GET", "/api/labels"),
  setLabels: (labels) => call("PUT", "/api/labels", { labels }),
  predict: (image, box) => call("POST", "/api/predict", { image, box }),
  // the server owns the polygon being edited: open a session, then send it operations with its version
  // tolerance: the outline's detail in mask pixels (null: the serving model's)
  open: (image, box, polygon = null, tolerance = null) =>
    call("POST", "/api/sessions", { image, box, ...(polygon ? { polygon } : {}), ...(tolerance !== null ? { tolerance } : {}) }),
  health: () => call("GET", "/health"),
  op: (session, body) => call("POST", `/api/sessions/${encodeURIComponent(session)}`, body),
  exports: () => call("GET", "/api/exports"),
  learning: () => call("GET", "/api/learning"),
  exportAs: (fmt) => call("POST", `/api/export/${fmt}`),
};
