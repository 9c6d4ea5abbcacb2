"""Polygon geometry as pure functions.

Frames and conventions used everywhere in polyrnn:

* A polygon is a float array of shape (N, 2) in (x, y) order.
* Image coordinates are *continuous*: pixel (column c, row r) is the unit square
  [c, c+1) x [r, r+1), so its centre is (c + 0.5, r + 0.5). This is COCO's convention, and
  :func:`rasterize` (pycocotools' polygon rasteriser, the one used by the COCO benchmark) follows it:
  the polygon (2,2)-(6,2)-(6,6)-(2,6) covers exactly the 16 pixels with c, r in 2..5.
* Orientation: a polygon is *positively oriented* when its shoelace area, computed in (x, y) with y
  pointing down, is positive. On screen (y down) that is clockwise. Every target sequence uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import shapely
from pycocotools import mask as mask_utils
from shapely.geometry import Point, Polygon
from shapely.geometry.base import BaseGeometry


def signed_area(vertices: np.ndarray) -> float:
    """Shoelace area of an (N, 2) polygon; > 0 means positively oriented (clockwise on screen)."""
    v = np.asarray(vertices, dtype=np.float64)
    if len(v) < 3:
        return 0.0
    x, y = v[:, 0], v[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def orient(vertices: np.ndarray) -> np.ndarray:
    """Return the polygon positively oriented (reversed if needed), keeping its first vertex first."""
    v = np.asarray(vertices)
    if signed_area(v) < 0:
        return np.concatenate([v[:1], v[1:][::-1]], axis=0)
    return v


def within_image(
    points: np.ndarray | Sequence[Sequence[float]],
    size: tuple[int, int],
    *,
    what: str = "points",
    margin: float | None = None,
) -> np.ndarray:
    """``points`` as a float (N, 2) array when every one is finite and within the image of ``size`` (width,
    height) widened by ``margin`` pixels on each side (default: half the image's longer side); else
    ``ValueError`` naming ``what``. Every coordinate from outside (a request, a file) passes here before it
    reaches a model or a rasteriser: a vertex at 1e9 would make a 1e9-pixel crop or mask."""
    w, h = size
    m = 0.5 * max(w, h) if margin is None else margin
    try:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (x, y) number pairs") from None
    if not np.isfinite(p).all():
        raise ValueError(f"{what} must be finite numbers")
    if len(p) and ((p < -m).any() or (p[:, 0] > w + m).any() or (p[:, 1] > h + m).any()):
        raise ValueError(f"{what} must lie within the {w}x{h} image (at most {m:g} px outside it)")
    return p


def rasterize(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise the union of polygons into a bool mask of shape (height, width).

    Args:
        polygons: list of (N, 2) arrays in image pixels (continuous frame, see module docstring).
            Parts with fewer than 3 vertices are ignored.
        height, width: mask size in pixels.
    """
    flat = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in polygons if len(p) >= 3]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(flat, int(height), int(width))
    merged = mask_utils.merge(rles)
    return mask_utils.decode(merged).astype(bool)


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two bool masks, not counting pixels where ``ignore`` is True.

    Two empty masks have IoU 1 (nothing to find, nothing found).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs gt {gt.shape}")
    p, g = pred.astype(bool), gt.astype(bool)
    if ignore is not None:
        keep = ~ignore.astype(bool)
        p, g = p & keep, g & keep
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & g)) / float(union)


def polygon_iou(a: Sequence[np.ndarray], b: Sequence[np.ndarray], height: int, width: int) -> float:
    """IoU of two sets of polygon parts rasterised at (height, width)."""
    return mask_iou(rasterize(a, height, width), rasterize(b, height, width))


def simplify(vertices: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer–Douglas–Peucker simplification of a closed polygon; returns a new array.

    The input is never modified, so the raw prediction can be kept beside its simplified view.
    ``tolerance`` is in the polygon's own units (pixels for image polygons). At least 3 vertices are
    kept; the first vertex stays first.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if tolerance <= 0 or len(v) <= 3:
        return v.copy()
    closed = np.concatenate([v, v[:1]], axis=0).astype(np.float32).reshape(-1, 1, 2)
    out: np.ndarray = (
        cv2.approxPolyDP(closed, float(tolerance), closed=False).reshape(-1, 2).astype(np.float64)
    )
    out = out[:-1] if len(out) > 1 and np.allclose(out[0], out[-1]) else out
    if len(out) < 3:
        # Keep the three vertices spanning the largest triangle with the first one.
        far = int(np.argmax(np.linalg.norm(v - v[0], axis=1)))
        rest = [i for i in range(1, len(v)) if i != far]
        third = max(rest, key=lambda i: abs(signed_area(v[[0, far, i]])))
        return v[sorted([0, far, third])]
    return out


def edge_feet(vertices: np.ndarray, point: np.ndarray) -> np.ndarray:
    """(N, 2): for each edge k of the closed polygon (N, 2) (from vertex k to k + 1), its point nearest
    ``point`` (2,)."""
    a = np.asarray(vertices, dtype=np.float64)
    ab = np.roll(a, -1, axis=0) - a
    t = np.clip(((point - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    return a + t[:, None] * ab


def nearest_edge(vertices: np.ndarray, point: np.ndarray) -> tuple[int, np.ndarray]:
    """The closed polygon's (N, 2) edge nearest ``point`` (2,): its index k (from vertex k to k + 1) and the
    point of that edge nearest ``point`` (2,)."""
    feet = edge_feet(vertices, point)
    k = int(np.argmin(np.linalg.norm(feet - point, axis=1)))
    return k, feet[k]


def is_simple(vertices: np.ndarray) -> bool:
    """True when the polygon has >= 3 vertices, no self-intersection and a non-zero area."""
    if len(vertices) < 3:
        return False
    poly = Polygon(np.asarray(vertices, dtype=np.float64))
    return bool(poly.is_valid) and poly.area > 0


def repair(vertices: np.ndarray) -> np.ndarray:
    """Make a self-intersecting polygon simple: the exterior of its largest valid piece.

    A polygon that is already simple is returned unchanged (same vertices, same order). The result is
    positively oriented. Degenerate input (zero area) is returned as is.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if len(v) < 3 or is_simple(v):
        return v
    polys = _polygon_pieces(shapely.make_valid(Polygon(v)))
    if not polys:
        return v
    best = max(polys, key=lambda p: p.area)
    out = np.asarray(best.exterior.coords, dtype=np.float64)[:-1]
    return orient(out)


def _polygon_pieces(geom: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons inside any shapely geometry (collections flattened)."""
    if isinstance(geom, Polygon):
        return [geom] if geom.area > 0 else []
    out: list[Polygon] = []
    for g in getattr(geom, "geoms", []):
        out.extend(_polygon_pieces(g))
    return out


def mask_to_polygons(mask: np.ndarray, *, min_area: float = 1.0) -> list[np.ndarray]:
    """Trace the outer boundaries of a bool mask into polygons in the continuous image frame.

    OpenCV's contours run through the centres of the boundary pixels; they are moved to our frame
    (+0.5) and grown outwards by half a pixel (mitred offset) so that rasterising the polygon gives the
    mask back. Holes are not kept. Sorted by area, largest first, each positively oriented.
    """
    m = np.ascontiguousarray(mask.astype(np.uint8))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        p = c.reshape(-1, 2).astype(np.float64) + 0.5
        if len(p) == 1:
            grown = Point(p[0]).buffer(0.5, cap_style="square")
        else:
            # Each boundary segment grown separately: a joined ring loses the corners where a 1-pixel
            # wide part makes the contour turn back on itself.
            segments = shapely.linestrings(np.stack([p, np.roll(p, -1, axis=0)], axis=1))
            grown = shapely.union_all(shapely.buffer(segments, 0.5, cap_style="square", join_style="mitre"))
            if len(p) >= 3:
                grown = grown.union(shapely.make_valid(Polygon(p)))
        pieces = _polygon_pieces(grown)
        if not pieces:
            continue
        best = shapely.simplify(max(pieces, key=lambda g: g.area), 0.0)  # drops collinear vertices
        q = np.asarray(best.exterior.coords, dtype=np.float64)[:-1]
        if len(q) >= 3 and abs(signed_area(q)) >= min_area:
            out.append(orient(q))
    out.sort(key=lambda p: -abs(signed_area(p)))
    return out


def largest_part(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """The part with the largest area (the paper models one polygon per object)."""
    if not polygons:
        raise ValueError("no polygon parts")
    return max(polygons, key=lambda p: abs(signed_area(p)))
