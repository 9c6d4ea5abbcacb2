"""The ``refine`` engine, the default: each correction is information. A
:class:`~polyrnn.modeling.refiner.Refiner` predicts a refined mask from the mask model's features, the polygon
and the annotator's vertices (averaged with its reading of the mirrored crop where the mask model reads the
mirror: ``mask_flip``); its outline replaces the polygon only between the fixed (or far) vertices on either
side of the edit (:func:`splice`). Then the refiner's focus pass, when it has one (:func:`_focus`),
redraws a window around the edit finer, changing nothing outside it."""

from __future__ import annotations

import cv2
import numpy as np

from polyrnn.data.crop import CropBox
from polyrnn.encoding import BoxEncoding, Click
from polyrnn.engines.base import Engine, EngineConfig, State
from polyrnn.geometry import nearest_edge, rasterize, signed_area, simplify


class Refine(Engine):
    name = "refine"
    takes_clicks = True

    def check(self, encoding: BoxEncoding) -> None:
        if encoding.refiner is None or encoding.mask_model is None:
            raise ValueError("the refine engine needs a mask model and its refiner")

    def propose(
        self, encoding: BoxEncoding, config: EngineConfig, before: State, manual: State, index: int
    ) -> State | None:
        enc, p = encoding, manual.polygon
        # outside the neighbourhood of the edit the polygon stays as it is
        contour = _local_outline(enc, config, before.polygon, p[manual.fixed], manual.clicks, p, p[index])
        # in crop pixels, half the automatic outline's (mask pixels of the 112 map): splicing at the
        # automatic density lost IoU on held-out training images (benchmarks/tune_corrections.py)
        tolerance = config.tolerance * enc.crop.side / enc.crop.crop_size
        state = None
        if contour is not None:
            state = splice(manual, contour, index, reach=config.confine * enc.long_side, tolerance=tolerance)
        return _then_focus(enc, config, state, manual, p[index], manual.clicks, tolerance)

    def propose_click(
        self,
        encoding: BoxEncoding,
        config: EngineConfig,
        before: State,
        clicks: list[Click],
        point: np.ndarray,
    ) -> State | None:
        """The refiner's mask for every click so far redraws the outline near the click (within ``confine``
        box long sides; the object's component is the one that overlaps the polygon most), spliced in
        between the fixed (or far) vertices on either side of the outline's point nearest the click
        (:func:`splice_region`), at the session's vertex density."""
        enc, p = encoding, before.polygon
        at = np.asarray(point, dtype=np.float64)
        contour = _local_outline(enc, config, p, p[before.fixed], clicks, p, at)
        # in crop pixels, as for drags
        tolerance = config.tolerance * enc.crop.side / enc.crop.crop_size
        state = None
        if contour is not None:
            state = splice_region(
                before, contour, at, reach=config.confine * enc.long_side, tolerance=tolerance
            )
        return _then_focus(enc, config, state, before, at, clicks, tolerance, region=True)


def _local_outline(
    enc: BoxEncoding,
    config: EngineConfig,
    before: np.ndarray,
    fixed_points: np.ndarray,
    clicks: list[Click],
    current: np.ndarray,
    at: np.ndarray,
) -> np.ndarray | None:
    """The object's outline (K, 2, image pixels, dense) where the refiner's mask (for the polygon ``before``,
    the fixed points and the clicks) replaces the ``current`` polygon's mask within ``confine`` box long sides
    of ``at``; None when nothing is left."""
    refined = enc.refined_mask(before, fixed_points, clicks)
    return _outline_within(enc.crop, refined, current, at, config.confine * enc.long_side)


def _outline_within(
    crop: CropBox, refined: np.ndarray, current: np.ndarray, at: np.ndarray, radius: float
) -> np.ndarray | None:
    """The object's outline (K, 2, image pixels, dense) where ``refined`` (bool (crop_size, crop_size) over
    ``crop``) replaces the ``current`` polygon's mask within ``radius`` image pixels of ``at``, traced at the
    crop's resolution; None when nothing is left."""
    size = crop.crop_size
    c = crop.image_to_map(at, size)[0]
    mask = rasterize([crop.image_to_map(current, size)], size, size)
    yy, xx = np.mgrid[:size, :size]
    near = (xx + 0.5 - c[0]) ** 2 + (yy + 0.5 - c[1]) ** 2 <= (radius / crop.pixels_per_crop) ** 2
    contour = _object_contour(np.where(near, refined, mask), mask, c)
    return None if contour is None else crop.crop_to_image(contour)


def _then_focus(
    enc: BoxEncoding,
    config: EngineConfig,
    state: State | None,
    plain: State,
    at: np.ndarray,
    clicks: list[Click],
    tolerance: float,
    *,
    region: bool = False,
) -> State | None:
    """The object pass's ``state`` (or, where it gave none, the ``plain`` edit) through the focus pass when
    the session has it on (:func:`_focus`); the object pass's ``state`` where the focus pass gives nothing."""
    if not config.focus:
        return state
    focused = _focus(enc, config, state if state is not None else plain, at, clicks, tolerance, region=region)
    return focused if focused is not None else state


def _focus(
    enc: BoxEncoding,
    config: EngineConfig,
    state: State,
    at: np.ndarray,
    clicks: list[Click],
    tolerance: float,
    *,
    region: bool = False,
) -> State | None:
    """The refiner's focus pass (FocalClick's focus crop; :class:`~polyrnn.modeling.refiner.FocusPass`):
    its window of crop sides centred on the edited vertex ``at`` (image pixels, a vertex of ``state``) is
    redrawn finer, and its outline replaces ``state``'s within 0.45 window sides of ``at`` (between vertices
    put on the polygon where it crosses that circle; those that end up on a straight edge are taken out
    again). None without a focus pass, for boxes smaller than its ``min_side``, or when nothing fits."""
    focus = enc.refiner.focus_pass if enc.refiner is not None else None
    if focus is None or enc.long_side < focus.min_side:
        return None
    crop = enc.crop
    window = CropBox.centred(
        at, focus.window * crop.side, crop_size=focus.input_size, grid_size=crop.grid_size
    )
    radius = min(0.45 * window.side, config.confine * enc.long_side)
    cut = _cut_at_circle(state, at, radius * (1 + 1e-6))
    refined = enc.focus_mask(window, cut.polygon, cut.polygon[cut.fixed], clicks)
    contour = _outline_within(window, refined, cut.polygon, at, radius)
    if contour is None:
        return None
    if region:
        out = splice_region(cut, contour, at, reach=radius, tolerance=tolerance)
    else:
        index = int(np.argmin(np.linalg.norm(cut.polygon - at, axis=1)))
        out = splice(cut, contour, index, reach=radius, tolerance=tolerance)
    if out is None:
        return None
    return _drop_straight(out, cut, state, tolerance)


def _cut_at_circle(state: State, at: np.ndarray, radius: float) -> State:
    """``state`` with a vertex wherever an edge crosses the circle of ``radius`` around ``at`` (not fixed)."""
    p, fixed = state.polygon, state.fixed
    poly, flags = [], []
    for k in range(len(p)):
        a, b = p[k], p[(k + 1) % len(p)]
        poly.append(a)
        flags.append(bool(fixed[k]))
        d, f = b - a, a - at
        qa, qb, qc = float(d @ d), 2 * float(f @ d), float(f @ f) - radius**2
        disc = qb * qb - 4 * qa * qc
        if qa <= 0 or disc <= 0:
            continue
        for t in sorted(((-qb - np.sqrt(disc)) / (2 * qa), (-qb + np.sqrt(disc)) / (2 * qa))):
            if 1e-9 < t < 1 - 1e-9:
                poly.append(a + t * d)
                flags.append(False)
    return State(np.array(poly, dtype=np.float64), np.array(flags, dtype=bool), list(state.clicks))


def _drop_straight(out: State, cut: State, state: State, tolerance: float) -> State:
    """``out`` without the vertices :func:`_cut_at_circle` added that lie within ``tolerance`` of the line
    through their neighbours."""
    own = {(float(q[0]), float(q[1])) for q in state.polygon}
    added = {(float(q[0]), float(q[1])) for q in cut.polygon} - own
    p, fixed = out.polygon, out.fixed
    keep = np.ones(len(p), dtype=bool)
    for k in range(len(p)):
        if (float(p[k][0]), float(p[k][1])) not in added:
            continue
        a, b = p[k - 1], p[(k + 1) % len(p)]
        d = b - a
        dist = abs(float(d[0] * (p[k] - a)[1] - d[1] * (p[k] - a)[0])) / max(float(np.linalg.norm(d)), 1e-12)
        if dist <= tolerance:
            keep[k] = False
    return State(p[keep], fixed[keep], list(out.clicks))


def _object_contour(mask: np.ndarray, current: np.ndarray, c: np.ndarray) -> np.ndarray | None:
    """The outer contour (K, 2, crop pixels through pixel centres) of the component of ``mask`` that is the
    object being edited: the one overlapping the ``current`` polygon's mask most (nearest to ``c``, the
    annotator's point, when none overlaps)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    overlap = np.bincount(labels[current.astype(bool)].ravel(), minlength=n)[1:]
    if overlap.max() > 0:
        k = 1 + int(np.argmax(overlap))
    else:
        ys, xs = np.nonzero(labels)
        j = int(np.argmin((xs + 0.5 - c[0]) ** 2 + (ys + 0.5 - c[1]) ** 2))
        k = int(labels[ys[j], xs[j]])
    contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    parts = [q.reshape(-1, 2).astype(np.float64) + 0.5 for q in contours if len(q) >= 3]
    return max(parts, key=lambda q: abs(signed_area(q))) if parts else None


def splice(manual: State, contour: np.ndarray, index: int, *, reach: float, tolerance: float) -> State | None:
    """Replace the polygon's stretch around vertex ``index`` by the matching stretch of ``contour``.

    The stretch runs from the nearest vertex before ``index`` that is fixed or farther than ``reach`` from it,
    to the same after it; those anchors and everything outside the stretch are kept exactly, ``index`` itself
    too. The contour (K, 2, image pixels, dense) is followed from the point nearest each anchor to the point
    nearest the edited vertex and on, simplified with ``tolerance``. None when the contour does not run so.
    """
    p, fixed = manual.polygon, manual.fixed
    n, m = len(p), len(contour)
    contour = _oriented(contour, p)
    c = p[index]

    def anchor(step: int) -> int:
        k = index
        for _ in range(n - 1):
            k = (k + step) % n
            if fixed[k] or np.linalg.norm(p[k] - c) > reach:
                return k
        return index

    def nearest(q: np.ndarray) -> int:
        return int(np.argmin(np.linalg.norm(contour - q, axis=1)))

    def run(i: int, j: int) -> np.ndarray:
        return _run(contour, i, j, tolerance)

    a, b = anchor(-1), anchor(1)
    qc = nearest(c)
    if a == index:  # nothing fixed or far: the whole outline is the contour's, from the edited vertex round
        mid = run(qc, qc)
        return State(np.concatenate([[c], mid]), np.array([True] + [False] * len(mid)))
    qa, qb = nearest(p[a]), nearest(p[b])
    first, second = (qc - qa) % m, (qb - qc) % m
    if a != b and first + second > 0.75 * m:  # the stretch would wrap round the contour: not a local change
        return None
    path1, path2 = run(qa, qc), run(qc, qb)
    middle = np.concatenate([path1, [c], path2])
    return _rejoin(manual, a, b, middle, np.arange(len(middle)) == len(path1))


def _rejoin(before: State, a: int, b: int, middle: np.ndarray, middle_fixed: np.ndarray) -> State:
    """``before``'s vertices from anchor ``b`` round to anchor ``a`` kept exactly (with their flags), then
    ``middle`` (M, 2) with ``middle_fixed`` (M,) in place of the stretch between them; numbered from where the
    polygon started when that vertex is kept, so indices move as little as possible."""
    p, fixed, n = before.polygon, before.fixed, len(before.polygon)
    kept = [(b + t) % n for t in range((a - b) % n + 1)] if a != b else [a]  # b .. round to .. a
    poly = np.concatenate([p[kept], middle.reshape(-1, 2)])
    flags = np.concatenate([fixed[kept], np.asarray(middle_fixed, dtype=bool)])
    shift = kept.index(min(kept))
    return State(np.roll(poly, -shift, axis=0), np.roll(flags, -shift))


def _oriented(contour: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """``contour`` turned to run the same way round as ``polygon``."""
    return contour[::-1] if signed_area(contour) * signed_area(polygon) < 0 else contour


def _arc(ring: np.ndarray, i: int, j: int) -> float:
    """The share of the closed ``ring``'s (K, 2) perimeter from its point i forward to its point j."""
    seg = np.linalg.norm(np.roll(ring, -1, axis=0) - ring, axis=1)
    total = float(seg.sum())
    idx = [(i + t) % len(ring) for t in range((j - i) % len(ring))]
    return float(seg[idx].sum()) / total if total > 0 else 0.0


def _run(contour: np.ndarray, i: int, j: int, tolerance: float) -> np.ndarray:
    """The closed ``contour``'s points strictly between its points i and j going forward (all the others when
    i == j), simplified with ``tolerance``."""
    m = len(contour)
    path = contour[[(i + t) % m for t in range(1, (j - i) % m or m)]]
    return simplify(path, tolerance) if len(path) >= 3 else path.reshape(-1, 2)


def splice_region(
    before: State, contour: np.ndarray, at: np.ndarray, *, reach: float, tolerance: float
) -> State | None:
    """Replace the stretch of the polygon nearest ``at`` (a click, image pixels) by the matching stretch of
    ``contour`` (K, 2, image pixels, dense).

    The stretch is the polygon's edge nearest ``at`` widened on both sides up to the first vertex that is
    fixed or farther than ``reach`` from ``at``; those anchors and everything beyond them are kept exactly
    (fixed vertices keep their flags), the stretch between them follows the contour from the point nearest one
    anchor to the point nearest the other, simplified with ``tolerance``. Without any anchor the whole outline
    is the contour's. When the new stretch would reach farther than ``reach`` from ``at`` (the guard rails
    refuse that), the anchors move inwards (0.75, 0.5, 0.35 of ``reach``). None when no stretch fits, or when
    the contour's stretch and the polygon's differ by more than half the perimeter (the contour runs between
    the anchors the other way round).
    """
    for share in (1.0, 0.75, 0.5, 0.35):
        out = _splice_region(before, contour, at, anchor_at=share * reach, tolerance=tolerance)
        if out is None:
            continue
        old = {(float(q[0]), float(q[1])) for q in before.polygon}
        new = np.array([q for q in out.polygon if (float(q[0]), float(q[1])) not in old]).reshape(-1, 2)
        if not len(new) or float(np.linalg.norm(new - at, axis=1).max()) <= reach:
            return out
    return None


def _splice_region(
    before: State, contour: np.ndarray, at: np.ndarray, *, anchor_at: float, tolerance: float
) -> State | None:
    """:func:`splice_region` with its anchors the first vertices fixed or farther than ``anchor_at``."""
    reach = anchor_at
    p, fixed = before.polygon, before.fixed
    n = len(p)
    contour = _oriented(contour, p)
    edge, _ = nearest_edge(p, at)

    def anchored(k: int) -> bool:
        return bool(fixed[k]) or float(np.linalg.norm(p[k] - at)) > reach

    a = next((k % n for k in range(edge, edge - n, -1) if anchored(k % n)), None)
    if a is None:  # nothing fixed or far: the outline is the contour's
        poly = simplify(contour, tolerance)
        return State(poly, np.zeros(len(poly), dtype=bool))
    b = next(k % n for k in range(edge + 1, edge + 1 + n) if anchored(k % n))

    def nearest(q: np.ndarray) -> int:
        return int(np.argmin(np.linalg.norm(contour - q, axis=1)))

    qa, qb = nearest(p[a]), nearest(p[b])
    if a != b and abs(_arc(contour, qa, qb) - _arc(p, a, b)) > 0.5:
        return None  # the contour runs between the anchors the other way round: not the same stretch
    path = _run(contour, qa, qb, tolerance)
    return _rejoin(before, a, b, path, np.zeros(len(path), dtype=bool))
