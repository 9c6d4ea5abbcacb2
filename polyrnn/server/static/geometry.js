// Polygon helpers in image pixels: simplification (kept reversible by the caller) and hit tests.

export function segmentDistance(p, a, b) {
  const dx = b[0] - a[0], dy = b[1] - a[1];
  const len2 = dx * dx + dy * dy;
  let t = len2 > 0 ? ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2 : 0;
  t = Math.max(0, Math.min(1, t));
  return Math.hypot(p[0] - (a[0] + t * dx), p[1] - (a[1] + t * dy));
}

function rdp(points, tol) {
  if (points.length <= 2) return points.slice();
  let worst = 0, at = 0;
  const a = points[0], b = points[points.length - 1];
  for (let i = 1; i < points.length - 1; i++) {
    const d = segmentDistance(points[i], a, b);
    if (d > worst) { worst = d; at = i; }
  }
  if (worst <= tol) return [a, b];
  const left = rdp(points.slice(0, at + 1), tol);
  return left.slice(0, -1).concat(rdp(points.slice(at), tol));
}

// Ramer–Douglas–Peucker on a closed polygon: the indices of the vertices kept (the first stays first, at
// least 3 are kept), so the shown vertices keep their ids.
export function simplifyIndices(points, tol) {
  const all = points.map((_, i) => i);
  if (tol <= 0 || points.length <= 3) return all;
  const tagged = points.map((p, i) => [p[0], p[1], i]);
  const out = rdp([...tagged, tagged[0]], tol).slice(0, -1).map((p) => p[2]);
  return out.length >= 3 ? out : all;
}

export function simplify(points, tol) {
  return simplifyIndices(points, tol).map((i) => points[i].slice());
}

export function nearestEdge(points, p) {
  let best = Infinity, at = -1;
  for (let i = 0; i < points.length; i++) {
    const d = segmentDistance(p, points[i], points[(i + 1) % points.length]);
    if (d < best) { best = d; at = i; }
  }
  return { index: at, distance: best };
}
