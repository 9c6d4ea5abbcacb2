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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from polyrnn.geometry import mask_iou, nearest_edge, rasterize

NEAR = 0.05  # drag a vertex within this many box long sides of the target; otherwise insert one
# a piece of the object that the polygons cover less than this share of gets a part (a box around it)
PART_COVER = 0.1
# ... when its box's long side is at least this many object-box long sides (and MIN_PART_PX pixels)
MIN_PART = 0.1
MIN_PART_PX = 8.0
# ... and when it lies at least this many object-box long sides from every part's polygon (nearer, a drag
# reaches it: a piece cut off by a thin occluder is drawn as one polygon across the occluder)
PART_GAP = 0.05


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
    """What the simulated annotator does: ``op`` "move" (vertex ``index``) or "insert" (on edge ``index``) of
    part ``part``, to ``point`` (x, y) in image pixels, a point of the ground-truth boundary; or "part": a box
    ``box`` (x1, y1, x2, y2) around a piece of the object that no part covers, which becomes part ``part``
    (``point``: where the error was). ``missed``: the error it fixes is a part of the object the polygons
    left out."""

    op: str
    index: int
    point: tuple[float, float]
    missed: bool
    part: int = 0
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Pieces:
    """The ground truth's pieces, for adding parts: its 8-connected components (ignore regions left out).
    ``labels`` (H, W) int32, 0 outside; ``boxes`` (K + 1, 4) each piece's x1, y1, x2, y2 in image pixels
    (continuous frame); a piece whose box's long side is under ``min_side`` pixels is not worth a box."""

    labels: np.ndarray
    boxes: np.ndarray
    min_side: float
    min_gap: float = 0.0  # pixels: a piece nearer than this to the polygons is reached by a drag instead

    @classmethod
    def of(
        cls, gt: np.ndarray, ignore: np.ndarray | None, *, min_side: float, min_gap: float = 0.0
    ) -> Pieces:
        keep = gt if ignore is None else gt & ~ignore
        _, labels, stats, _ = cv2.connectedComponentsWithStats(keep.astype(np.uint8), connectivity=8)
        x, y, w, h = (stats[:, i].astype(np.float64) for i in range(4))
        return cls(labels, np.stack([x, y, x + w, y + h], axis=1), float(min_side), float(min_gap))

    def boxable(self) -> int:
        """How many pieces are big enough for a box of their own."""
        sides = np.maximum(self.boxes[1:, 2] - self.boxes[1:, 0], self.boxes[1:, 3] - self.boxes[1:, 1])
        return int((sides >= self.min_side).sum())

    def uncovered(self, pred: np.ndarray, x: float, y: float) -> tuple[float, float, float, float] | None:
        """The box of the piece at pixel centre (x, y) when ``pred`` (bool (H, W): the parts' union) covers
        less than :data:`PART_COVER` of it and it is big enough for a box; else None."""
        k = int(self.labels[int(y), int(x)])
        if k == 0:
            return None
        x1, y1, x2, y2 = self.boxes[k]
        if max(x2 - x1, y2 - y1) < self.min_side:
            return None
        window = np.s_[int(y1) : int(y2), int(x1) : int(x2)]
        piece = self.labels[window] == k
        if float(pred[window][piece].mean()) >= PART_COVER:
            return None
        if self.min_gap > 0 and pred.any():  # the polygons' distance, within min_gap around the piece's box
            g = int(np.ceil(self.min_gap))
            oy, ox = max(int(y1) - g, 0), max(int(x1) - g, 0)
            outside = ~pred[oy : int(y2) + g, ox : int(x2) + g]
            gap = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, 5)
            mine = np.s_[int(y1) - oy : int(y2) - oy, int(x1) - ox : int(x2) - ox]
            if float(gap[mine][piece & outside[mine]].min(initial=np.inf)) < self.min_gap:
                return None
        return float(x1), float(y1), float(x2), float(y2)


def _part_for(parts: Sequence[np.ndarray], q: np.ndarray, missed: bool) -> int:
    """The part an error at ``q`` is fixed on: where the polygons spilled, one that covers ``q`` (its own
    spill); else (or where they missed) the one whose outline runs nearest (ties: the first)."""
    from shapely.geometry import Point, Polygon

    d = np.array([float(np.linalg.norm(nearest_edge(p, q)[1] - q)) for p in parts])
    if not missed:
        over = [Polygon(p).buffer(0).covers(Point(float(q[0]), float(q[1]))) for p in parts]
        if any(over):
            d = np.where(over, d, np.inf)
    return int(np.argmin(d))


def next_correction(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    pred: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None,
    gt_boundary: np.ndarray,
    near_px: float,
    pieces: Pieces | None = None,
) -> Correction | None:
    """The next correction of an object whose parts are ``parts`` ((polygon (N, 2), fixed (N,)) each) and
    whose mask (their union) is ``pred``; None when nothing is wrong.

    In the largest error region (the next one when the correction would place a vertex where one already is):
    when it is a piece of the object that no part covers (``pieces``; None: no parts are added), a box around
    that piece adds a part. Otherwise, on the part whose outline runs nearest the region's innermost point,
    ``u`` is where the outline runs now (its point nearest that point) and ``v`` where it should (the
    ground-truth boundary point nearest it): the vertex nearest ``u`` that the annotator has not placed is
    dragged to ``v`` when it lies within ``near_px`` of ``u``, else ``v`` is inserted on ``u``'s edge.
    """
    if not len(gt_boundary) or not parts:
        return None
    for x, y, missed, _ in error_points(pred, gt, ignore, regions=5):
        if pieces is not None and missed:
            box = pieces.uncovered(pred, x, y)
            if box is not None:
                return Correction("part", -1, (x, y), missed, part=len(parts), box=box)
        v = np.array(nearest_point(gt_boundary, x, y))
        if any((np.abs(p - v).max(axis=1) < 1e-9).any() for p, _ in parts):
            continue  # already a vertex there: this region cannot be fixed by a vertex at v
        k = _part_for([p for p, _ in parts], np.array([x, y]), missed)
        polygon, fixed = parts[k]
        edge, u = nearest_edge(polygon, np.array([x, y]))
        free = np.flatnonzero(~fixed)
        if len(free):
            d = np.linalg.norm(polygon[free] - u, axis=1)
            if float(d.min()) <= near_px:
                return Correction("move", int(free[int(np.argmin(d))]), (float(v[0]), float(v[1])), missed, k)
        return Correction("insert", edge, (float(v[0]), float(v[1])), missed, k)
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


class Parts(Protocol):
    """An object in parts that the annotator can add to (:class:`polyrnn.session.ObjectSession`)."""

    @property
    def parts(self) -> Sequence[Clicker]: ...

    @property
    def long_side(self) -> float: ...  # the object's first box's longer side, pixels

    def add_part(self, box: tuple[float, float, float, float]) -> object: ...


def _parts_of(session: Editor | Parts) -> Sequence[Any]:
    return session.parts if hasattr(session, "add_part") else [session]  # type: ignore[union-attr]


def _pieces(
    session: Editor | Parts, gt: np.ndarray, ignore: np.ndarray | None, min_part: float
) -> Pieces | None:
    """The ground truth's pieces when the annotator may add parts (an object session, ``min_part`` finite)."""
    if not hasattr(session, "add_part") or not np.isfinite(min_part):
        return None
    return Pieces.of(
        gt, ignore, min_side=part_side(min_part, session.long_side), min_gap=PART_GAP * session.long_side
    )


def part_side(min_part: float, long_side: float) -> float:
    """The smallest piece (its box's long side, pixels) that gets a part of its own, for an object whose box's
    long side is ``long_side``."""
    return max(MIN_PART_PX, min_part * long_side)


def click_protocol(
    session: Clicker | Parts,
    gt: np.ndarray,
    ignore: np.ndarray | None,
    *,
    max_clicks: int = 20,
    min_part: float = MIN_PART,
) -> list[float]:
    """The standard click protocol of interactive segmentation (RITM, Sofiiuk et al. 2021), from the box's
    automatic polygon: each click goes to the innermost point of the largest error region, positive where the
    polygons missed the object, negative where they spilled, through the :meth:`click` of the part whose
    outline runs nearest. With an object session (:class:`Parts`), a positive click in a piece of the object
    that no part covers (:class:`Pieces`, at least ``min_part`` box long sides; ``inf``: never) adds a part
    instead: a box around the piece, counted as two clicks (its corners). IoU after k = 0..max_clicks clicks
    (repeated once nothing is wrong)."""
    h, w = gt.shape
    pieces = _pieces(session, gt, ignore, min_part)

    def mask() -> np.ndarray:
        return rasterize([p.polygon for p in _parts_of(session)], h, w)

    pred = mask()
    ious = [mask_iou(pred, gt, ignore)]
    while len(ious) <= max_clicks:
        worst = worst_error(pred, gt, ignore)
        if worst is None:
            ious.append(ious[-1])
            continue
        x, y, missed, _ = worst
        box = pieces.uncovered(pred, x, y) if pieces is not None and missed else None
        if box is not None:
            session.add_part(box)  # type: ignore[union-attr]
            ious.append(ious[-1])  # the box's first corner
        else:
            parts = _parts_of(session)
            parts[_part_for([p.polygon for p in parts], np.array([x, y]), missed)].click((x, y), missed)
        pred = mask()
        ious.append(mask_iou(pred, gt, ignore))
    return ious[: max_clicks + 1]


def clicks_to_quality(
    session: Editor | Parts,
    gt: np.ndarray,
    ignore: np.ndarray | None,
    *,
    max_corrections: int = 20,
    near: float = NEAR,
    min_part: float = MIN_PART,
    on_correction: Callable[[Correction, np.ndarray, np.ndarray], None] | None = None,
) -> list[float]:
    """IoU after k = 0..max_corrections corrections of an :class:`Editor` (a
    :class:`~polyrnn.session.BoxSession`, driven through its ``move`` / ``insert``) or of an object in parts
    (:class:`Parts`: a piece of the object that no part covers, at least ``min_part`` box long sides, gets a
    part of its own, one correction: a box dragged around it); once nothing is wrong the IoU is repeated.
    ``on_correction(correction, polygon before, polygon after)`` sees each drag and insert (the polygons
    of the part it changed)."""
    h, w = gt.shape
    boundary = boundary_points(gt)
    near_px = near * session.long_side
    pieces = _pieces(session, gt, ignore, min_part)

    def mask() -> np.ndarray:
        return rasterize([p.polygon for p in _parts_of(session)], h, w)

    pred = mask()
    ious = [mask_iou(pred, gt, ignore)]
    for _ in range(max_corrections):
        parts = _parts_of(session)
        c = next_correction(
            [(p.polygon, p.fixed) for p in parts], pred, gt, ignore, boundary, near_px, pieces
        )
        if c is None:
            ious.append(ious[-1])
            continue
        if c.op == "part":
            assert c.box is not None
            session.add_part(c.box)  # type: ignore[union-attr]
        else:
            part = parts[c.part]
            before = part.polygon.copy()
            if c.op == "move":
                part.move(c.index, c.point)
            else:
                part.insert(c.index, c.point)
            if on_correction is not None:
                on_correction(c, before, part.polygon.copy())
        pred = mask()
        ious.append(mask_iou(pred, gt, ignore))
    return ious
