"""Clicks to quality: a simulated annotator that corrects a polygon the way a person does in the editor.

At each step it finds the largest error between the polygon's mask and the ground truth (full image
resolution, ignore regions not counted), and in it the point farthest from the region's border (RITM's
protocol, Sofiiuk et al. 2021). The polygon's outline point nearest to it is where the outline runs now; the
ground-truth boundary point nearest to it is where it should run. Then it acts in the editor: it drags the
vertex nearest the first point that it has not placed itself onto the second when one lies within ``near`` box
long sides, and otherwise inserts a vertex at the second point on that edge. Every correction goes through
:class:`polyrnn.session.BoxSession`, the code the editor runs. Written up in ``docs/evaluation.md``.

Beside it, :func:`click_protocol` is the standard protocol of published interactive-segmentation tables:
positive and negative clicks at the innermost point of the largest error region, as region-level
corrections of the same session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from polyrnn.geometry import mask_iou, rasterize

NEAR = 0.05  # drag a vertex within this many box long sides of the target; otherwise insert one


def error_points(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, *, regions: int = 1
) -> list[tuple[float, float, bool, float]]:
    """For the ``regions`` largest error regions of ``pred`` against ``gt`` (bool masks of one shape), largest
    first: the point that lies farthest from the region's border, as (x, y) pixel centre, whether the object
    was missed there (a false negative), and that distance in pixels. Empty when there is no error."""
    err = (pred != gt) if ignore is None else ((pred != gt) & ~ignore)
    if not err.any():
        return []
    _, labels, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8), connectivity=8)
    out = []
    for k in 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:regions]:
        x0, y0, w, h = (int(v) for v in stats[k, :4])
        region = np.pad(labels[y0 : y0 + h, x0 : x0 + w] == k, 1).astype(np.uint8)  # outside = border
        dist = cv2.distanceTransform(region, cv2.DIST_L2, 5)
        yy, xx = np.unravel_index(int(np.argmax(dist)), dist.shape)
        y, x = y0 + int(yy) - 1, x0 + int(xx) - 1
        out.append((x + 0.5, y + 0.5, bool(gt[y, x]), float(dist[yy, xx])))
    return out


def worst_error(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[float, float, bool, float] | None:
    """The first of :func:`error_points`: the largest error region's innermost point; None without error."""
    pts = error_points(pred, gt, ignore)
    return pts[0] if pts else None


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """(M, 2) centres (x, y) of the boundary pixels of a bool mask (all parts), continuous frame."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.zeros((0, 2))
    return np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64) + 0.5


def nearest_point(points: np.ndarray, x: float, y: float) -> tuple[float, float]:
    j = int(np.argmin((points[:, 0] - x) ** 2 + (points[:, 1] - y) ** 2))
    return float(points[j, 0]), float(points[j, 1])


@dataclass(frozen=True)
class Correction:
    """What the simulated annotator does: ``op`` "move" (vertex ``index``) or "insert" (on edge ``index``),
    to ``point`` (x, y) in image pixels, a point of the ground-truth boundary; ``missed``: the error it fixes
    is a part of the object the polygon left out."""

    op: str
    index: int
    point: tuple[float, float]
    missed: bool


def _nearest_on_outline(polygon: np.ndarray, q: np.ndarray) -> tuple[int, np.ndarray]:
    """(edge index, point) of the polygon's outline nearest to ``q``; edge k runs from vertex k to k + 1."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    t = np.clip(((q - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    foot = a + t[:, None] * ab
    k = int(np.argmin(np.linalg.norm(foot - q, axis=1)))
    return k, foot[k]


def next_correction(
    polygon: np.ndarray,
    fixed: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None,
    gt_boundary: np.ndarray,
    near_px: float,
) -> Correction | None:
    """The next correction of ``polygon`` (N, 2) whose mask is ``pred``; None when nothing is wrong.

    In the largest error region (the next one when the correction would place a vertex where one already is),
    ``u`` is where the outline runs now (its point nearest the region's innermost point) and ``v`` where it
    should (the ground-truth boundary point nearest it): the vertex nearest ``u`` that the annotator has not
    placed is dragged to ``v`` when it lies within ``near_px`` of ``u``, else ``v`` is inserted on ``u``'s
    edge.
    """
    if not len(gt_boundary):
        return None
    for x, y, missed, _ in error_points(pred, gt, ignore, regions=5):
        v = np.array(nearest_point(gt_boundary, x, y))
        if (np.abs(polygon - v).max(axis=1) < 1e-9).any():
            continue  # already a vertex there: this region cannot be fixed by a vertex at v
        edge, u = _nearest_on_outline(polygon, np.array([x, y]))
        free = np.flatnonzero(~fixed)
        if len(free):
            d = np.linalg.norm(polygon[free] - u, axis=1)
            if float(d.min()) <= near_px:
                return Correction("move", int(free[int(np.argmin(d))]), (float(v[0]), float(v[1])), missed)
        return Correction("insert", edge, (float(v[0]), float(v[1])), missed)
    return None


def far_changes(
    before: np.ndarray, after: np.ndarray, at: tuple[float, float], radius: float
) -> tuple[int, int]:
    """How local an edit was: (the vertices of ``before`` (N, 2) farther than ``radius`` pixels from ``at``,
    how many of those are no longer exactly in ``after``)."""
    far = np.linalg.norm(before - np.asarray(at, dtype=np.float64), axis=1) > radius
    kept = {(float(p[0]), float(p[1])) for p in after}
    moved = sum((float(p[0]), float(p[1])) not in kept for p in before[far])
    return int(far.sum()), int(moved)


class Editor(Protocol):
    """What the simulated annotator drives: a :class:`~polyrnn.session.BoxSession`, or the editor's server
    through HTTP (``benchmarks/editor_replay.py``) — the same operations either way."""

    @property
    def polygon(self) -> np.ndarray: ...  # (N, 2) image pixels

    @property
    def fixed(self) -> np.ndarray: ...  # (N,) bool

    @property
    def long_side(self) -> float: ...  # the box's longer side, pixels

    def move(self, index: int, xy: tuple[float, float]) -> object: ...

    def insert(self, edge: int, xy: tuple[float, float]) -> object: ...


class Clicker(Editor, Protocol):
    """An :class:`Editor` that also takes region-level clicks (:meth:`polyrnn.session.BoxSession.click`)."""

    def click(self, xy: tuple[float, float], positive: bool) -> object: ...


def click_protocol(
    session: Clicker, gt: np.ndarray, ignore: np.ndarray | None, *, max_clicks: int = 20
) -> list[float]:
    """The standard click protocol of interactive segmentation (RITM, Sofiiuk et al. 2021), from the box's
    automatic polygon: each click goes to the innermost point of the largest error region, positive where the
    polygon missed the object, negative where it spilled, through the session's :meth:`click`. IoU after
    k = 0..max_clicks clicks (repeated once nothing is wrong)."""
    h, w = gt.shape

    def iou() -> float:
        return mask_iou(rasterize([session.polygon], h, w), gt, ignore)

    ious = [iou()]
    for _ in range(max_clicks):
        worst = worst_error(rasterize([session.polygon], h, w), gt, ignore)
        if worst is None:
            ious.append(ious[-1])
            continue
        x, y, missed, _ = worst
        session.click((x, y), missed)
        ious.append(iou())
    return ious


def clicks_to_quality(
    session: Editor,
    gt: np.ndarray,
    ignore: np.ndarray | None,
    *,
    max_corrections: int = 20,
    near: float = NEAR,
    on_correction: Callable[[Correction, np.ndarray, np.ndarray], None] | None = None,
) -> list[float]:
    """IoU after k = 0..max_corrections corrections of an :class:`Editor` (a
    :class:`~polyrnn.session.BoxSession`, driven through its ``move`` / ``insert``); once nothing is wrong the
    IoU is repeated. ``on_correction(correction, polygon before, polygon after)`` sees each one."""
    h, w = gt.shape
    boundary = boundary_points(gt)
    near_px = near * session.long_side

    def mask() -> np.ndarray:
        return rasterize([session.polygon], h, w)

    pred = mask()
    ious = [mask_iou(pred, gt, ignore)]
    for _ in range(max_corrections):
        c = next_correction(session.polygon, session.fixed, pred, gt, ignore, boundary, near_px)
        if c is None:
            ious.append(ious[-1])
            continue
        before = session.polygon.copy()
        if c.op == "move":
            session.move(c.index, c.point)
        else:
            session.insert(c.index, c.point)
        if on_correction is not None:
            on_correction(c, before, session.polygon.copy())
        pred = mask()
        ious.append(mask_iou(pred, gt, ignore))
    return ious
