// polyrnn annotation page: draw a box, get the model's polygon, drag a vertex to have the rest
// re-predicted. The polygon being edited lives on the server (a session: this page sends it operations and
// shows what it returns); the page's own state (`S`: the image's shapes) changes through `change()` so
// undo/redo see it. Undo/redo go to the session while it has something to undo or redo.
import { api } from "./api.js";
import { segmentDistance } from "./geometry.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const S = {
  images: [], index: 0, name: null, width: 0, height: 0,
  labels: ["object"], label: 0,
  shapes: [],   // the file's shapes as read (every field kept); polygons are editable, the rest shown read-only
  readError: null, // why the image's annotation file could not be read (then it is not overwritten unasked)
  base: [],     // the shapes as read, for merging when another tab saved in between
  unsaved: false,
  cur: null,    // polygon being edited: {session, version, raw, fixed (placed by the annotator), ids, box, label}
  detail: null, // the outline's detail: simplification in mask pixels (null: the serving model's default)
  selected: null, undo: [], redo: [],  // selected: a vertex id (stable across the server's renumbering)
  view: { scale: 1, tx: 0, ty: 0 },
  busy: 0,
};
const stats = { corrections: [], predictions: [], errors: [] };
window.polyrnn = { state: S, stats };

// --- helpers ------------------------------------------------------------------------------------
const clone = (x) => JSON.parse(JSON.stringify(x));
const snapshot = () => clone({ shapes: S.shapes, cur: S.cur });
function change(mutate, { save = false } = {}) {
  S.undo.push(snapshot());
  if (S.undo.length > 200) S.undo.shift();
  S.redo = [];
  mutate();
  render();
  if (save) persist();
}
function restore(snap) { S.shapes = snap.shapes; S.cur = snap.cur; S.selected = null; render(); persist(); }
function pageUndo() { if (S.undo.length) { S.redo.push(snapshot()); restore(S.undo.pop()); status("undo"); } }
function pageRedo() { if (S.redo.length) { S.undo.push(snapshot()); restore(S.redo.pop()); status("redo"); } }
// while a polygon is being edited, undo/redo are the session's (one operation at a time); else the page's
function undo() { if (S.cur && S.cur.canUndo) sessionOp("undo"); else if (!S.busy) pageUndo(); }
function redo() { if (S.cur && S.cur.canRedo) sessionOp("redo"); else if (!S.busy) pageRedo(); }
const shownIdx = () => (S.cur ? S.cur.raw.map((_, i) => i) : []);  // every vertex of the session's polygon
const shown = () => shownIdx().map((i) => S.cur.raw[i].slice());
const shownFixed = () => shownIdx().map((i) => S.cur.fixed[i]);
const shownIds = () => shownIdx().map((i) => S.cur.ids[i]);
function status(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.style.color = error ? "#f77" : "";
  if (error) stats.errors.push(text);
}
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s.length ? s[Math.floor(s.length / 2)] : NaN; };
function showLatency() {
  const c = stats.corrections.map((r) => r.ms), p = stats.predictions.map((r) => r.ms);
  const parts = [];
  if (p.length) parts.push(`box→polygon ${p[p.length - 1].toFixed(0)} ms (median ${median(p).toFixed(0)})`);
  if (c.length) parts.push(`correction ${c[c.length - 1].toFixed(0)} ms (median ${median(c).toFixed(0)})`);
  $("latency").textContent = parts.join(" · ");
}
const nextFrame = () => new Promise((r) => requestAnimationFrame(() => r()));

let saveTimer = null, retryTimer = null;
let saving = Promise.resolve();
function markUnsaved(on, why = "") {
  S.unsaved = on;
  document.body.dataset.unsaved = on ? "1" : "";
  $("unsaved").hidden = !on;
  $("unsaved").title = why;
}
const versionOf = {};  // image name -> the version of its file our shapes started from
async function saveNow(name, shapes) {
  const here = name === S.name;
  let replace = false;
  if (here && S.readError) {
    replace = confirm(`${S.readError}\n\nSave anyway? The unreadable file is renamed (…unreadable-<time>) beside the new one, not deleted.`);
    if (!replace) { markUnsaved(true, "not saved: the existing file could not be read"); status("not saved: the existing annotation file could not be read", true); return; }
  }
  try {
    const r = await api.save(name, shapes, versionOf[name] ?? "", { replace });
    versionOf[name] = r.version;
    if (name === S.name) { S.readError = null; S.base = clone(shapes); }
    markUnsaved(false);
    status(`saved ${shapes.length} shape(s) of ${name}`);
    markCount(name, shapes.length);
  } catch (e) {
    markUnsaved(true, e.message);
    clearTimeout(retryTimer);
    if (e.status === 409 && name === S.name && !S.readError) { await conflict(name); return; }
    status(`NOT SAVED (${e.message})` + (e.status === 409 ? "" : " — retrying in 5 s; your polygons stay on screen"), true);
    if (e.status !== 409 && e.status !== 422) {
      retryTimer = setTimeout(() => {  // the image's latest shapes, even after moving to another image
        if (S.name === name) persist();
        else saving = saving.catch(() => {}).then(() => saveNow(name, shapes)).catch(() => {});
      }, 5000);
    }
    throw e;
  }
}
// another tab or tool saved this image since we read it: nothing of ours was written. Offer to merge ours
// into theirs (theirs, plus every shape we added or changed) or to reload theirs.
async function conflict(name) {
  let theirs;
  try { theirs = await api.annotations(name); } catch (e) { status(`NOT SAVED: ${e.message}`, true); return; }
  const key = (s) => JSON.stringify(s);
  const had = new Set(S.base.map(key)), have = new Set(theirs.shapes.map(key));
  const ours = S.shapes.filter((s) => !had.has(key(s)) && !have.has(key(s)) && s.polyrnn_kept === undefined);
  const merge = confirm(`${name} was saved elsewhere (another tab?) since you opened it.\n\nOK: keep theirs and add your ${ours.length} new or changed shape(s) to them, then save.\nCancel: load theirs and drop your changes.`);
  versionOf[name] = theirs.version; S.base = clone(theirs.shapes); S.readError = theirs.error;
  S.shapes = merge ? [...theirs.shapes, ...ours] : theirs.shapes;
  S.undo = []; S.redo = [];
  render();
  if (merge) persist(); else { markUnsaved(false); status(`reloaded ${name} as saved elsewhere`); }
}
function persist() {  // saves run one after another, each carrying the version the last one returned
  const name = S.name;
  clearTimeout(saveTimer);
  markUnsaved(true, "saving…");
  saveTimer = setTimeout(() => {
    saveTimer = null;
    saving = saving.catch(() => {}).then(() => saveNow(name, clone(S.shapes))).catch(() => {});
  }, 150);
}
window.polyrnn.flush = async () => {
  if (saveTimer) {
    clearTimeout(saveTimer); saveTimer = null;
    const name = S.name;
    saving = saving.catch(() => {}).then(() => saveNow(name, clone(S.shapes)));
  }
  await saving;
};

// --- drawing ------------------------------------------------------------------------------------
function el(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  parent.appendChild(e);
  return e;
}
const ptsAttr = (pts) => pts.map((p) => `${p[0]},${p[1]}`).join(" ");

function render() {
  const svg = $("overlay");
  svg.replaceChildren();
  const r = 5 / S.view.scale, w = 1.5 / S.view.scale;
  S.shapes.forEach((s, i) => {
    if (!s.points || !s.points.length) return;
    if (editable(s)) {
      const poly = el("polygon", { points: ptsAttr(s.points), class: "shape", "stroke-width": w, "data-shape": i }, svg);
      poly.addEventListener("mousedown", (ev) => { if (ev.button === 0 && !S.cur && !spaceDown) { ev.stopPropagation(); editShape(i); } });
    } else {
      drawReadOnly(s, i, svg, w);
    }
    const t = el("text", { x: s.points[0][0], y: s.points[0][1] - 4 / S.view.scale, class: "shape-label", "font-size": 12 / S.view.scale, "stroke-width": 3 / S.view.scale }, svg);
    t.textContent = s.label;
  });
  if (!S.cur) return;
  const pts = shown();
  el("polygon", { points: ptsAttr(pts), class: "current", "stroke-width": w, id: "current-polygon" }, svg);
  pts.forEach((p, i) => {
    const q = pts[(i + 1) % pts.length];
    const e = el("line", { x1: p[0], y1: p[1], x2: q[0], y2: q[1], class: "edge", "stroke-width": 8 / S.view.scale, "data-edge": i }, svg);
    e.addEventListener("mousedown", (ev) => { if (ev.button === 0 && !spaceDown) ev.stopPropagation(); });
    e.addEventListener("dblclick", (ev) => { ev.stopPropagation(); insertVertex(i, toImage(ev)); });
  });
  const fixed = shownFixed(), ids = shownIds();
  // the annotator's vertices are drawn last (on top) and larger: a model vertex never hides one
  const order = pts.map((_, i) => i).sort((a, b) => Number(fixed[a]) - Number(fixed[b]));
  order.forEach((i) => {
    const p = pts[i];
    const cls = "vertex" + (fixed[i] ? " fixed" : "") + (ids[i] === S.selected ? " selected" : "");
    const c = el("circle", { cx: p[0], cy: p[1], r: fixed[i] ? r * 1.3 : r, class: cls, "stroke-width": w, "data-vertex": i, "data-id": ids[i] }, svg);
    c.addEventListener("mousedown", (ev) => startVertexDrag(ev, i));
    c.addEventListener("contextmenu", (ev) => { ev.preventDefault(); deleteVertex(ids[i]); });
  });
}

// shapes the editor can edit: polygons; the others (rectangle, circle, point, line, linestrip, mask) are kept
const editable = (s) => (s.shape_type ?? "polygon") === "polygon" && Array.isArray(s.points) && s.points.length >= 3;
function drawReadOnly(s, i, svg, w) {
  const p = s.points, kind = s.shape_type ?? "polygon", a = { class: "shape readonly", "stroke-width": w, "data-shape": i };
  if ((kind === "rectangle" || kind === "mask") && p.length >= 2) {
    el("rect", { ...a, x: Math.min(p[0][0], p[1][0]), y: Math.min(p[0][1], p[1][1]), width: Math.abs(p[1][0] - p[0][0]), height: Math.abs(p[1][1] - p[0][1]) }, svg);
  } else if (kind === "circle" && p.length >= 2) {
    el("circle", { ...a, cx: p[0][0], cy: p[0][1], r: Math.hypot(p[1][0] - p[0][0], p[1][1] - p[0][1]) }, svg);
  } else if (kind === "point" || p.length === 1) {
    el("circle", { ...a, cx: p[0][0], cy: p[0][1], r: 4 / S.view.scale }, svg);
  } else if (kind === "polygon") {
    el("polygon", { ...a, points: ptsAttr(p) }, svg);
  } else {
    el("polyline", { ...a, points: ptsAttr(p), fill: "none" }, svg);
  }
}

function applyView() {
  const { scale, tx, ty } = S.view;
  $("stage").style.transform = `translate(${tx}px, ${ty}px) scale(${scale})`;
  render();
}
function fit() {
  const vp = $("viewport").getBoundingClientRect();
  if (!S.width) return;
  const scale = Math.min(vp.width / S.width, vp.height / S.height) * 0.98;
  S.view = { scale, tx: (vp.width - S.width * scale) / 2, ty: (vp.height - S.height * scale) / 2 };
  applyView();
}
function toImage(ev) {
  const vp = $("viewport").getBoundingClientRect();
  return [(ev.clientX - vp.left - S.view.tx) / S.view.scale, (ev.clientY - vp.top - S.view.ty) / S.view.scale];
}

// --- model calls: the server's session --------------------------------------------------------------
function applyState(r) {
  Object.assign(S.cur, { session: r.session, version: r.version, raw: r.polygon, fixed: r.fixed, ids: r.ids, canUndo: r.can_undo, canRedo: r.can_redo });
}
async function predictBox(box) {
  const t0 = performance.now();
  S.busy++;
  status("tracing…");
  try {
    const r = await api.open(S.name, box, null, S.detail);
    change(() => { S.cur = { box, label: S.label, detail: S.detail }; applyState(r); S.selected = null; });
    await nextFrame();
    stats.predictions.push({ ms: performance.now() - t0, server: r.ms });
    showLatency();
    status(`${r.polygon.length} vertices — drag one to correct, Enter to accept`);
  } catch (e) {
    status(`predict failed: ${e.message}`, true);
  } finally { S.busy--; }
}
// one operation on the session; a session the server no longer has (or at another version: another tab,
// a restart) is opened again from the polygon on screen, and the operation is not applied
async function sessionOp(op, vertex = null, point = null) {
  const cur = S.cur;
  if (!cur || S.busy) return null;
  const t0 = performance.now();
  S.busy++;
  try {
    const r = await api.op(cur.session, { version: cur.version, op, vertex, point });
    if (S.cur === cur) applyState(r);
    if (op === "move" || op === "insert" || op === "include" || op === "exclude") {
      await nextFrame();
      stats.corrections.push({ ms: performance.now() - t0, server: r.ms });
      showLatency();
    }
    return r;
  } catch (e) {
    if ((e.status === 404 || e.status === 409) && S.cur === cur) {
      try { applyState(await api.open(S.name, cur.box, cur.raw)); } catch (_) { /* reported below */ }
      status(`${op} not applied (${e.message}): the polygon was reloaded, try again`, true);
    } else status(`${op} failed: ${e.message}`, true);
    return null;
  } finally { S.busy--; render(); }
}

// --- editing ------------------------------------------------------------------------------------
function startVertexDrag(ev, index) {
  if (ev.button !== 0) return;
  ev.stopPropagation();
  ev.preventDefault();
  if (S.busy) return;
  const id = shownIds()[index], at = shownIdx()[index];
  const raw = S.cur.raw.map((p) => p.slice());
  const alt = ev.altKey;
  S.selected = id;
  let moved = false, last = raw[at];
  const onMove = (e) => {  // a preview: the session decides the polygon when the drag ends
    moved = true;
    last = toImage(e);
    S.cur.raw = raw.map((p, k) => (k === at ? last : p));
    render();
  };
  const onUp = async () => {
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
    if (!moved) { render(); return; }
    const r = await sessionOp(alt ? "alt-move" : "move", id, last);
    if (!r) { S.cur.raw = raw; render(); return; }
    status(alt ? `moved a vertex (no re-prediction)` : `corrected: ${r.polygon.length} vertices`);
  };
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
}

async function insertVertex(edge, p) {
  // the shown edge runs between two shown vertices; the new vertex goes on the raw edge between them nearest p
  const idx = shownIdx(), raw = S.cur.raw, n = raw.length;
  let k = idx[edge], best = k, bestD = Infinity;
  const end = idx[(edge + 1) % idx.length];
  do {
    const d = segmentDistance(p, raw[k], raw[(k + 1) % n]);
    if (d < bestD) { bestD = d; best = k; }
    k = (k + 1) % n;
  } while (k !== end);
  const r = await sessionOp("insert", S.cur.ids[best], p);
  if (!r) return;
  const at = r.polygon.findIndex((q, i) => r.fixed[i] && Math.hypot(q[0] - p[0], q[1] - p[1]) < 1e-6);
  S.selected = at >= 0 ? r.ids[at] : null;
  render();
  status(`inserted a vertex: ${r.polygon.length} vertices`);
}
// a positive (include) or negative (exclude) click: a region-level correction of the polygon being edited
async function clickRegion(p, include) {
  const before = JSON.stringify(S.cur.raw), what = include ? "include" : "exclude";
  const r = await sessionOp(what, null, p);
  if (!r) return;
  status(JSON.stringify(r.polygon) === before
    ? `${what} click: the model found no better outline there (remembered for the next correction)`
    : `${what} click: ${r.polygon.length} vertices (Ctrl+Z takes it back)`);
}
async function deleteVertex(id) {
  if (!S.cur || id === null || id === undefined) return;
  if (S.cur.raw.length <= 3) { status("a polygon needs at least 3 vertices", true); return; }
  const r = await sessionOp("delete", id);
  if (r) { S.selected = null; render(); status(`deleted a vertex: ${r.polygon.length} vertices`); }
}
function accept() {  // what is on screen (an operation still in flight no longer applies to it)
  if (!S.cur) return;
  const label = S.labels[S.cur.label] ?? S.cur.name ?? S.labels[0];
  const base = S.cur.base ?? { group_id: null, description: "", shape_type: "polygon", flags: {} };
  const { session, version } = S.cur;
  const at = S.cur.at ?? S.shapes.length;
  change(() => { S.shapes.splice(at, 0, { ...base, label, points: shown() }); S.cur = null; S.selected = null; S.last = S.shapes[at]; }, { save: true });
  api.op(session, { version, op: "accept" }).catch(() => {});  // the session ends (the shape is the page's now)
  status(`accepted a ${label} polygon`);
}
// P: accept the new polygon as another part of the object accepted just before (a person cut by a pole, a
// bicycle's wheels): both get one LabelMe group_id and that object's label; exports join them (COCO: one
// annotation with a list of polygons, CVAT: one group), and IoU is measured against the whole object
function acceptAsPart() {
  if (!S.cur) return;
  const prev = S.last && S.shapes.includes(S.last) && editable(S.last) ? S.last : null;
  if (S.cur.at !== undefined || !prev) {
    accept();
    status(prev ? "an edited shape keeps its own group: accepted" : "no object accepted before on this image: accepted on its own", true);
    return;
  }
  const { session, version } = S.cur;
  const used = S.shapes.map((s) => s.group_id).filter(Number.isInteger);
  const gid = Number.isInteger(prev.group_id) ? prev.group_id : (used.length ? Math.max(...used) + 1 : 1);
  change(() => {
    const i = S.shapes.indexOf(prev);
    S.shapes[i] = { ...prev, group_id: gid };
    S.shapes.push({ group_id: gid, description: "", shape_type: "polygon", flags: {}, label: prev.label, points: shown() });
    S.last = S.shapes[i]; S.cur = null; S.selected = null;
  }, { save: true });
  api.op(session, { version, op: "accept" }).catch(() => {});
  const parts = S.shapes.filter((s) => s.group_id === gid && s.label === prev.label).length;
  status(`accepted as part ${parts} of a ${prev.label} (group ${gid})`);
}
function cancel() { if (S.cur) { change(() => { S.cur = null; S.selected = null; }); status("cancelled"); } }
async function editShape(i) {
  const s = S.shapes[i];
  const xs = s.points.map((p) => p[0]), ys = s.points.map((p) => p[1]);
  const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
  const box = [clamp(Math.min(...xs), S.width), clamp(Math.min(...ys), S.height), clamp(Math.max(...xs), S.width), clamp(Math.max(...ys), S.height)];
  const { points, label, ...base } = s;
  S.busy++;
  let r;
  try { r = await api.open(S.name, box, points); } catch (e) { status(`cannot edit this shape: ${e.message}`, true); return; } finally { S.busy--; }
  change(() => {
    S.shapes.splice(i, 1);
    S.cur = { box, label: Math.max(0, S.labels.indexOf(label)), base, at: i, name: label };
    applyState(r);
  }, { save: true });
  selectLabel(S.cur.label);
  status(`editing a ${s.label} polygon — Enter to accept again`);
}
function selectLabel(i) {
  if (i < 0 || i >= S.labels.length) return;
  S.label = i;
  $("label-select").value = String(i);
  if (S.cur) S.cur.label = i;
  status(`label: ${S.labels[i]}`);
}
function fillLabels() {
  $("label-select").replaceChildren(...S.labels.map((l, i) => {
    const o = document.createElement("option");
    o.value = String(i);
    o.textContent = i < 9 ? `${i + 1} ${l}` : l;
    return o;
  }));
  $("label-select").value = String(Math.min(S.label, S.labels.length - 1));
}

// --- images -------------------------------------------------------------------------------------
function markCount(name, n) {
  const a = document.querySelector(`#image-list a[data-name="${CSS.escape(name)}"] .count`);
  if (a) a.textContent = n ? String(n) : "";
  const img = S.images.find((x) => x.name === name);
  if (img) img.annotated = n;
}
function listImages() {
  $("image-list").replaceChildren(...S.images.map((im, i) => {
    const a = document.createElement("a");
    a.href = "#";
    a.dataset.name = im.name;
    a.className = i === S.index ? "current" : "";
    a.innerHTML = `<span class="count">${im.annotated || ""}</span>`;
    a.appendChild(document.createTextNode(im.name));
    a.addEventListener("click", (e) => { e.preventDefault(); openImage(i); });
    return a;
  }));
}
async function openImage(i) {
  if (!S.images.length) return;
  i = (i + S.images.length) % S.images.length;
  if (window.polyrnn.flush && S.name) await window.polyrnn.flush().catch(() => {});
  S.index = i;
  S.name = S.images[i].name;
  S.cur = null; S.shapes = []; S.undo = []; S.redo = []; S.selected = null; S.readError = null; S.base = []; S.last = null;
  $("image-name").textContent = `${S.name} (${i + 1}/${S.images.length})`;
  history.replaceState(null, "", `#${encodeURIComponent(S.name)}`);
  listImages();
  const img = $("image");
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = () => reject(new Error("image failed to load")); img.src = api.imageUrl(S.name); })
    .catch((e) => status(e.message, true));
  S.width = img.naturalWidth; S.height = img.naturalHeight;
  const svg = $("overlay");
  svg.setAttribute("width", S.width); svg.setAttribute("height", S.height);
  svg.setAttribute("viewBox", `0 0 ${S.width} ${S.height}`);
  let problem = null;
  try {
    const a = await api.annotations(S.name);
    S.shapes = a.shapes;
    S.base = clone(a.shapes);
    versionOf[S.name] = a.version;
    S.readError = a.error;
    problem = a.error;
  } catch (e) { problem = `could not read annotations: ${e.message}`; S.readError = problem; }
  fit();
  if (problem) status(`${problem} — it will not be overwritten unless you confirm`, true);
  else {
    const kept = S.shapes.filter((s) => s.polyrnn_kept !== undefined).length;
    status(`${S.name}: ${S.shapes.length} shape(s) — drag a box around an object` +
      (kept ? ` (${kept} the editor cannot show are kept unchanged in the file)` : ""));
  }
  document.body.dataset.ready = S.name;
}

// --- mouse on the viewport: boxes, panning, zoom ---------------------------------------------------
let spaceDown = false;
$("viewport").addEventListener("mousedown", (ev) => {
  if (ev.button === 1 || (ev.button === 0 && spaceDown)) { // pan
    ev.preventDefault();
    const sx = ev.clientX, sy = ev.clientY, { tx, ty } = S.view;
    const move = (e) => { S.view.tx = tx + e.clientX - sx; S.view.ty = ty + e.clientY - sy; applyView(); };
    const up = () => { window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up); };
    window.addEventListener("mousemove", move); window.addEventListener("mouseup", up);
    return;
  }
  if (S.cur && ev.shiftKey && (ev.button === 0 || ev.button === 2)) {  // Shift+click: include, Shift+right: exclude
    ev.preventDefault();
    if (!S.busy) clickRegion(toImage(ev), ev.button === 0);
    return;
  }
  if (ev.button !== 0 || S.busy) return;
  ev.preventDefault();
  const a = toImage(ev);
  const rect = el("rect", { class: "rubber", x: a[0], y: a[1], width: 0, height: 0, "stroke-width": 1.5 / S.view.scale }, $("overlay"));
  let b = a;
  const move = (e) => {
    b = toImage(e);
    rect.setAttribute("x", Math.min(a[0], b[0])); rect.setAttribute("y", Math.min(a[1], b[1]));
    rect.setAttribute("width", Math.abs(b[0] - a[0])); rect.setAttribute("height", Math.abs(b[1] - a[1]));
  };
  const up = () => {
    window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up);
    rect.remove();
    const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
    const box = [clamp(Math.min(a[0], b[0]), S.width), clamp(Math.min(a[1], b[1]), S.height),
                 clamp(Math.max(a[0], b[0]), S.width), clamp(Math.max(a[1], b[1]), S.height)];
    if (box[2] - box[0] < 4 || box[3] - box[1] < 4) { S.selected = null; render(); return; }
    predictBox(box);
  };
  window.addEventListener("mousemove", move); window.addEventListener("mouseup", up);
});
$("viewport").addEventListener("wheel", (ev) => {
  ev.preventDefault();
  const vp = $("viewport").getBoundingClientRect();
  const mx = ev.clientX - vp.left, my = ev.clientY - vp.top;
  const f = Math.exp(-ev.deltaY * 0.0015);
  const scale = Math.max(0.05, Math.min(40, S.view.scale * f));
  S.view.tx = mx - (mx - S.view.tx) * (scale / S.view.scale);
  S.view.ty = my - (my - S.view.ty) * (scale / S.view.scale);
  S.view.scale = scale;
  applyView();
}, { passive: false });
$("viewport").addEventListener("contextmenu", (ev) => ev.preventDefault());

// --- keys ---------------------------------------------------------------------------------------
function toggleHelp(show) { $("help").hidden = show === undefined ? !$("help").hidden : !show; }
window.addEventListener("keydown", (ev) => {
  if ((ev.target instanceof HTMLInputElement && ev.target.type !== "range") || ev.target instanceof HTMLTextAreaElement) return;
  if (ev.target instanceof HTMLElement && ev.target !== document.body) ev.target.blur(); // shortcuts win over widgets
  const k = ev.key;
  if (k === " ") { spaceDown = true; $("viewport").classList.add("panning"); ev.preventDefault(); return; }
  if ((ev.ctrlKey || ev.metaKey) && (k === "z" || k === "Z")) { ev.preventDefault(); ev.shiftKey ? redo() : undo(); return; }
  if ((ev.ctrlKey || ev.metaKey) && (k === "y" || k === "Y")) { ev.preventDefault(); redo(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (k === "Enter" || k === "n" || k === "N") { ev.preventDefault(); accept(); }
  else if (k === "p" || k === "P") { ev.preventDefault(); acceptAsPart(); }
  else if (k === "Escape") { if (!$("help").hidden) toggleHelp(false); else cancel(); }
  else if (k === "a" || k === "A") openImage(S.index - 1);
  else if (k === "d" || k === "D") openImage(S.index + 1);
  else if (k === "f" || k === "F") fit();
  else if (k === "h" || k === "H" || k === "?") toggleHelp();
  else if ((k === "Delete" || k === "Backspace") && S.selected !== null) { ev.preventDefault(); deleteVertex(S.selected); }
  else if (/^[1-9]$/.test(k)) selectLabel(Number(k) - 1);
});
window.addEventListener("keyup", (ev) => { if (ev.key === " ") { spaceDown = false; $("viewport").classList.remove("panning"); } });

// --- top bar ------------------------------------------------------------------------------------
$("prev").onclick = () => openImage(S.index - 1);
$("next").onclick = () => openImage(S.index + 1);
$("undo").onclick = undo;
$("redo").onclick = redo;
$("help-button").onclick = () => toggleHelp(true);
$("help-close").onclick = () => toggleHelp(false);
$("label-select").onchange = (e) => { selectLabel(Number(e.target.value)); e.target.blur(); };
// the outline's detail (mask pixels; smaller is denser): an untouched new polygon is traced again at once,
// else it applies from the next box on (a polygon with corrections keeps its own)
$("detail").oninput = async (e) => {
  S.detail = Number(e.target.value);
  const cur = S.cur;
  if (cur && !cur.base && !cur.canUndo && !S.busy) {
    S.busy++;
    try {
      const r = await api.open(S.name, cur.box, null, S.detail);
      if (S.cur === cur) { cur.detail = S.detail; applyState(r); S.selected = null; }
      status(`detail ${S.detail}: ${r.polygon.length} vertices`);
    } catch (err) { status(`detail not applied: ${err.message}`, true); } finally { S.busy--; render(); }
  } else status(`detail ${S.detail}: applies to the next polygon` + (cur ? " (this one has corrections)" : ""));
};
$("edit-labels").onclick = async () => {
  const text = prompt("Labels, comma-separated (1–9 pick the first nine):", S.labels.join(", "));
  if (text === null) return;
  try {
    S.labels = (await api.setLabels(text.split(",").map((s) => s.trim()).filter(Boolean))).labels;
    S.label = Math.min(S.label, S.labels.length - 1);
    fillLabels();
    status(`labels: ${S.labels.join(", ")}`);
  } catch (e) { status(`labels not saved: ${e.message}`, true); }
};
// one button per export format, from the server's table of formats
function exportButtons(formats) {
  $("exports").replaceChildren(...formats.map((f) => {
    const b = document.createElement("button");
    b.dataset.export = f.name;
    b.textContent = f.title;
    b.onclick = () => exportAs(b);
    return b;
  }));
}
function exportAs(b) {
  return (async () => {
    await window.polyrnn.flush().catch(() => {});
    try {
      const r = await api.exportAs(b.dataset.export);
      const left = r.skipped.length ? ` — ${r.skipped.length} left out (first: ${r.skipped[0]})` : "";
      status(`exported ${r.instances} polygons on ${r.images} images as ${r.format}: ${r.path}${left}`);
      window.polyrnn.lastExport = r;
      const a = document.createElement("a");
      a.href = r.download; a.download = ""; document.body.appendChild(a); a.click(); a.remove();
    } catch (e) { status(`export failed: ${e.message}`, true); }
  })();
}
window.addEventListener("resize", fit);
// a save still pending when the page goes away is sent with keepalive, so it outlives the page
window.addEventListener("beforeunload", (ev) => {
  if (saveTimer) { clearTimeout(saveTimer); api.save(S.name, clone(S.shapes), versionOf[S.name] ?? "", { keepalive: true }); }
  else if (S.unsaved) { ev.preventDefault(); ev.returnValue = ""; }
});

// which model is serving, and the editor's own learning (polled: a new version is swapped in server-side)
async function showModel() {
  try {
    const l = await api.learning();
    window.polyrnn.learning = l;
    let text = `model: ${l.serving ?? l.model}`;
    if (l.enabled) {
      if (l.learned_from) text += ` (learned from ${l.learned_from} polygons)`;
      text += l.learning ? " · learning…" : ` · next at ${l.next_at} accepted (${l.accepted} now)`;
      if (l.last && l.last.accepted === false && l.last.finished) text += " · last try kept the old model";
    }
    $("model").textContent = text;
  } catch (e) { /* the footer keeps its last text; the next poll tries again */ }
}
setInterval(showModel, 5000);

// --- start --------------------------------------------------------------------------------------
(async () => {
  try {
    S.images = await api.images();
    S.labels = (await api.labels()).labels;
    const h = await api.health();
    if (typeof h.tolerance === "number") { S.detail = h.tolerance; $("detail").value = String(h.tolerance); }
    exportButtons(await api.exports());
  } catch (e) { status(`server unreachable: ${e.message}`, true); return; }
  fillLabels();
  showModel();
  const want = decodeURIComponent(location.hash.slice(1));
  const i = Math.max(0, S.images.findIndex((x) => x.name === want));
  await openImage(i);
})();
