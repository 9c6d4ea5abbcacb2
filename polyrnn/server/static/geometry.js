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

// Ramer–Douglas–Peucker on a closed polygon; the first vertex stays first, at least 3 are kept.
export function simplify(points, tol) {
  if (tol <= 0 || points.length <= 3) return points.map((p) => p.slice());
  const out = rdp([...points, points[0]], tol).slice(0, -1);
  return out.length >= 3 ? out.map((p) => p.slice()) : points.map((p) => p.slice());
}

export function nearestEdge(points, p) {
  let best = Infinity, at = -1;
  for (let i = 0; i < points.length; i++) {
    const d = segmentDistance(p, points[i], points[(i + 1) % points.length]);
    if (d < best) { best = d; at = i; }
  }
  return { index: at, distance: best };
}
