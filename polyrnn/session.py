"""The interactive session: one object being annotated, apart from the trainable modules.

A :class:`BoxSession` holds one box's state: its crop and encodings (:class:`BoxEncoding`, computed once), the
current polygon in exact image pixels, which vertices the annotator placed (*fixed*: never moved by a model),
and an engine that turns each edit into a new polygon. Its operations are what the editor does: :meth:`move`,
:meth:`insert`, :meth:`delete`, :meth:`undo`. The server and ``polyrnn evaluate`` both drive it, so the
figures describe the product.

Engines (``ENGINES``):

* ``manual`` — the edit and nothing else: what a plain polygon editor (labelme, CVAT) gives from the
  same start.
* ``refine`` — the correction engine: a :class:`~polyrnn.modeling.refiner.Refiner` predicts a refined mask
  from the mask model's features, the polygon and the annotator's vertices; its outline replaces the polygon
  only between the fixed (or far) vertices on either side of the edit.
* ``rnn`` — the paper's behaviour: the recurrent decoder re-predicts the vertices after the edited one from it
  until it rejoins the old outline.

Guard rails every engine gets (:meth:`BoxSession._guard`): a proposal that moves or drops a fixed vertex,
intersects itself, or changes the polygon farther than ``confine`` x the box's long side from the edit is
refused, and the plain edit is kept instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from polyrnn.data.crop import CropBox
from polyrnn.geometry import is_simple, rasterize, signed_area, simplify
from polyrnn.modeling.mask_net import MaskNet, mask_polygon
from polyrnn.modeling.polygon_rnn import DecodeCursor, PolygonRNN
from polyrnn.modeling.refiner import refiner_maps

if TYPE_CHECKING:
    from polyrnn.modeling.refiner import Refiner

ENGINES = ("refine", "rnn", "manual")
CONFINE = 1.0  # a correction changes the polygon within this many box long sides of the edit (guard rail)


@dataclass
class EngineConfig:
    """How edits become polygons. ``confine``: see :data:`CONFINE`; ``rejoin``: the rnn engine's rejoin
    distance in grid cells (None: re-predict everything after the edit); ``eos_threshold``: its end rule."""

    name: str = "refine"
    confine: float = CONFINE
    rejoin: int | None = 1
    eos_threshold: float = 0.5
    mask_flip: bool = True
    context: float = 0.15


class BoxEncoding:
    """One box's crop of an image and what the models compute from it, each once and only when asked.

    Args:
        image: RGB uint8 (H, W, 3).
        box: (x1, y1, x2, y2) in image pixels.
    """

    def __init__(
        self,
        image: np.ndarray,
        box: tuple[float, float, float, float],
        *,
        polygon_model: PolygonRNN,
        mask_model: MaskNet | None = None,
        refiner: Refiner | None = None,
        context: float = 0.15,
        mask_flip: bool = True,
        eos_threshold: float = 0.5,
        start: str = "auto",
    ) -> None:
        x1, y1, x2, y2 = box
        self.box = box
        self.image_size = (image.shape[1], image.shape[0])
        self.polygon_model, self.mask_model, self.refiner = polygon_model, mask_model, refiner
        self.mask_flip = mask_flip
        self.eos_threshold = eos_threshold
        self.start = start  # the automatic polygon: auto (the mask's when there is one), mask or rnn
        self.crop = CropBox.around(
            (x1, y1, x2 - x1, y2 - y1),
            context=context,
            crop_size=polygon_model.crop_size,
            grid_size=polygon_model.grid_size,
        )
        pixels = self.crop.crop_image(image)
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).float()
        self.long_side = max(x2 - x1, y2 - y1)

    @cached_property
    def _mask(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (1, C, D, D), probability (1, M, M)) of the mask model, mirror-averaged."""
        assert self.mask_model is not None
        with torch.inference_mode():
            return self.mask_model.features_and_masks(self.pixels, flip=self.mask_flip)

    def mask_probability(self) -> np.ndarray:
        """The mask model's (M, M) probability over the crop (mirror-averaged when asked)."""
        return self._mask[1][0].numpy()

    @cached_property
    def _polygon(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(static decoder input, first-vertex logits) of the polygon model."""
        with torch.inference_mode():
            _, static, vertex = self.polygon_model.encode(self.pixels)
        return static, vertex

    @cached_property
    def mask_outline(self) -> np.ndarray | None:
        """The mask model's polygon (N, 2) in image pixels, or None (no mask model, or an empty mask)."""
        if self.mask_model is None:
            return None
        poly = mask_polygon(self.mask_probability(), self.crop)
        return poly if poly is not None and len(poly) >= 3 else None

    @cached_property
    def _decoded(self) -> tuple[np.ndarray, np.ndarray]:
        return self._decode()

    def decoder_polygon(self) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`_decode` (computed once per box)."""
        return self._decoded[0].copy(), self._decoded[1].copy()

    def _decode(self) -> tuple[np.ndarray, np.ndarray]:
        """The recurrent decoder's automatic polygon: (N, 2) image pixels, (N,) probabilities."""
        static, vertex = self._polygon
        m = self.polygon_model
        idx, pr = m.first_vertices(vertex, 1)
        dec = m.decode(static, [int(idx[0, 0])], eos_threshold=self.eos_threshold)
        xy = self.crop.cells_to_image(self.crop.tokens_to_cells(np.array(dec.tokens, dtype=np.int64)))
        return xy.reshape(-1, 2), np.array([float(pr[0, 0]), *dec.probs])

    def automatic(self) -> tuple[np.ndarray, str]:
        """The automatic polygon and where it came from ("mask" or "rnn")."""
        if self.start != "rnn" and self.mask_outline is not None:
            return self.mask_outline.copy(), "mask"
        return self.decoder_polygon()[0], "rnn"

    # --- maps over the crop, for the refiner ------------------------------------------------------------
    def to_map(self, xy: np.ndarray, size: int) -> np.ndarray:
        """Image pixels -> pixels of a ``size`` x ``size`` map over the crop."""
        return self.crop.image_to_crop(np.asarray(xy, dtype=np.float64).reshape(-1, 2)) * (
            size / self.crop.crop_size
        )

    def refined_mask(self, before: np.ndarray, fixed_points: np.ndarray, clicks: list[Click]) -> np.ndarray:
        """The refiner's mask over the crop, bool (crop_size, crop_size), for the polygon ``before`` the edit
        (image pixels), the fixed vertices (K, 2) and the corrections (:data:`Click`, image pixels)."""
        assert self.refiner is not None
        s = self.refiner.size
        feats, prob = self._mask
        current = torch.from_numpy(rasterize([self.to_map(before, s)], s, s).astype(np.float32))[None]
        p = F.adaptive_avg_pool2d(prob[:, None], s)[:, 0]
        fixed = [tuple(q) for q in self.to_map(fixed_points, s)]
        mids = [(*self.to_map(np.array([c.middle]), s)[0], c.sign) for c in clicks]
        maps = refiner_maps(current, p, [fixed], [mids], s)  # type: ignore[list-item]
        c = self.crop.crop_size
        fine = torch.from_numpy(rasterize([self.to_map(before, c)], c, c).astype(np.float32))[None]
        with torch.inference_mode():
            logits = self.refiner.refine(self.refiner.residual(feats, maps), fine)
        return logits[0].numpy() > 0


@dataclass(frozen=True)
class Click:
    """One correction as the refiner reads it: the drag's ``middle`` (x, y image pixels, between where the
    outline ran and where the annotator put it) and its ``sign`` (+1 outward: the object was missed)."""

    middle: tuple[float, float]
    sign: int


@dataclass
class State:
    """A polygon (N, 2) in image pixels, which of its vertices the annotator placed (N,) bool, and the
    corrections that led to it."""

    polygon: np.ndarray
    fixed: np.ndarray
    clicks: list[Click] = field(default_factory=list)

    def copy(self) -> State:
        return State(self.polygon.copy(), self.fixed.copy(), list(self.clicks))

    def same(self, polygon: np.ndarray, fixed: np.ndarray) -> bool:
        return bool(np.array_equal(self.polygon, polygon) and np.array_equal(self.fixed, fixed))


@dataclass
class BoxSession:
    """One object's editing state (see the module docstring).

    Args:
        encoding: the box's :class:`BoxEncoding`.
        engine: an :class:`EngineConfig`.
        state: the polygon to continue from (default: the automatic polygon, nothing fixed).
    """

    encoding: BoxEncoding
    engine: EngineConfig = field(default_factory=EngineConfig)
    state: State | None = None
    source: str = "mask"
    history: list[State] = field(default_factory=list)
    start: np.ndarray | None = None  # the automatic polygon

    def __post_init__(self) -> None:
        if self.engine.name not in ENGINES:
            raise ValueError(f"unknown engine '{self.engine.name}' (one of {', '.join(ENGINES)})")
        if self.engine.name == "refine" and (
            self.encoding.refiner is None or self.encoding.mask_model is None
        ):
            raise ValueError("the refine engine needs a mask model and its refiner")
        auto, self.source = self.encoding.automatic()
        if self.start is None:
            self.start = auto
        if self.state is None:
            self.state = State(auto, np.zeros(len(auto), dtype=bool))
        self.state = State(
            np.asarray(self.state.polygon, dtype=np.float64).reshape(-1, 2).copy(),
            np.asarray(self.state.fixed, dtype=bool).copy(),
        )
        if len(self.state.fixed) != len(self.state.polygon):
            raise ValueError(
                f"fixed has {len(self.state.fixed)} flags for {len(self.state.polygon)} vertices"
            )

    @property
    def polygon(self) -> np.ndarray:
        assert self.state is not None
        return self.state.polygon

    @property
    def fixed(self) -> np.ndarray:
        assert self.state is not None
        return self.state.fixed

    # --- the editor's operations ----------------------------------------------------------------------
    def move(self, index: int, xy: tuple[float, float]) -> State:
        """Drag vertex ``index`` to ``xy`` (image pixels): it becomes fixed; the engine updates the rest."""
        n = len(self.polygon)
        if not 0 <= index < n:
            raise IndexError(f"vertex index {index} out of range 0..{n - 1}")
        poly, fixed = self.polygon.copy(), self.fixed.copy()
        u = poly[index].copy()
        poly[index], fixed[index] = _point(xy), True
        return self._apply(State(poly, fixed, self._clicks(u, poly[index])), index)

    def insert(self, edge: int, xy: tuple[float, float]) -> State:
        """Insert a vertex at ``xy`` on edge ``edge`` (after vertex ``edge``); it becomes fixed."""
        n = len(self.polygon)
        if not 0 <= edge < n:
            raise IndexError(f"edge index {edge} out of range 0..{n - 1}")
        v = _point(xy)
        a, b = self.polygon[edge], self.polygon[(edge + 1) % n]
        ab = b - a
        u = a + np.clip(float(np.dot(v - a, ab) / max(float(np.dot(ab, ab)), 1e-12)), 0.0, 1.0) * ab
        poly = np.insert(self.polygon, edge + 1, v, axis=0)
        fixed = np.insert(self.fixed, edge + 1, True)
        return self._apply(State(poly, fixed, self._clicks(u, v)), edge + 1)

    def _clicks(self, u: np.ndarray, v: np.ndarray) -> list[Click]:
        """The corrections so far and the drag from ``u`` (where the outline ran) to ``v``."""
        from shapely.geometry import Point, Polygon

        outward = not Polygon(self.polygon).buffer(0).covers(Point(float(v[0]), float(v[1])))
        mid = (float(u[0] + v[0]) / 2, float(u[1] + v[1]) / 2)
        return [*self.state.clicks, Click(mid, 1 if outward else -1)] if self.state else [Click(mid, 1)]

    def delete(self, index: int) -> State:
        """Remove vertex ``index`` (no model: deleting says nothing about where the boundary is)."""
        n = len(self.polygon)
        if n <= 3:
            raise ValueError("a polygon needs at least 3 vertices")
        if not 0 <= index < n:
            raise IndexError(f"vertex index {index} out of range 0..{n - 1}")
        assert self.state is not None
        self.history.append(self.state.copy())
        self.state = State(
            np.delete(self.polygon, index, axis=0), np.delete(self.fixed, index), self.state.clicks
        )
        return self.state

    def undo(self) -> State:
        """Back to the exact state before the last operation."""
        if not self.history:
            raise ValueError("nothing to undo")
        self.state = self.history.pop()
        return self.state

    # --- engines --------------------------------------------------------------------------------------
    def _apply(self, manual: State, index: int) -> State:
        assert self.state is not None
        before = self.state
        proposal = None
        if self.engine.name == "refine" and self.encoding.refiner is not None:
            proposal = self._refine(before, manual, index)
        elif self.engine.name == "rnn":
            proposal = self._rnn(manual, index)
        self.history.append(before.copy())
        self.state = self._guard(manual, proposal, index)
        self.state.clicks = list(manual.clicks)
        return self.state

    def _guard(self, manual: State, proposal: State | None, index: int) -> State:
        """The proposal if it keeps every fixed vertex exactly and in order, is a simple polygon and changes
        nothing farther than ``confine`` long sides from the edit; else the plain edit."""
        if proposal is None or len(proposal.polygon) < 3:
            return manual
        if not _same_ring(manual.polygon[manual.fixed], proposal.polygon[proposal.fixed]):
            return manual
        if not is_simple(proposal.polygon):
            return manual
        old = {tuple(p) for p in manual.polygon}
        kept = {tuple(p) for p in proposal.polygon}
        new = np.array([p for p in proposal.polygon if tuple(p) not in old]).reshape(-1, 2)
        gone = np.array([p for p in manual.polygon if tuple(p) not in kept]).reshape(-1, 2)
        changed = np.concatenate([new, gone])  # vertices added and vertices dropped
        reach = self.engine.confine * self.encoding.long_side
        if len(changed) and float(np.max(np.linalg.norm(changed - manual.polygon[index], axis=1))) > reach:
            return manual
        return proposal

    def _refine(self, before: State, manual: State, index: int) -> State | None:
        enc, p = self.encoding, manual.polygon
        refined = enc.refined_mask(before.polygon, p[manual.fixed], manual.clicks)
        # outside the neighbourhood of the edit the polygon stays as it is
        reach_crop = self.engine.confine * enc.long_side * enc.crop.crop_size / enc.crop.side
        c = enc.to_map(p[index], enc.crop.crop_size)[0]
        yy, xx = np.mgrid[: enc.crop.crop_size, : enc.crop.crop_size]
        near = (xx + 0.5 - c[0]) ** 2 + (yy + 0.5 - c[1]) ** 2 <= reach_crop**2
        current = rasterize([enc.to_map(p, enc.crop.crop_size)], enc.crop.crop_size, enc.crop.crop_size)
        contour = _object_contour(np.where(near, refined, current), current, c)
        if contour is None:
            return None
        contour = enc.crop.crop_to_image(contour)
        return splice(
            manual,
            contour,
            index,
            reach=self.engine.confine * enc.long_side,
            tolerance=0.75 * enc.crop.side / enc.crop.crop_size,
        )

    def _rnn(self, manual: State, index: int) -> State | None:
        """Re-predict the vertices after ``index`` with the recurrent decoder until it rejoins the old outline
        (vertices before ``index`` kept); a fixed vertex after the edit is never passed over."""
        enc = self.encoding
        crop, m = enc.crop, enc.polygon_model
        static, _ = enc._polygon
        p, fixed = manual.polygon, manual.fixed
        tokens = [int(t) for t in crop.cells_to_tokens(crop.image_to_cells(p))]
        cell = tokens[index]
        kept = [k for k in range(index) if tokens[k] != cell and tokens[k] not in tokens[:k]]
        after = [k for k in range(index + 1, len(p)) if tokens[k] != cell]
        stop = next((j for j, k in enumerate(after) if fixed[k]), len(after))  # the next fixed vertex
        prefix = [tokens[k] for k in kept] + [cell]
        with torch.inference_mode():
            cur = DecodeCursor(
                m,
                static,
                prefix,
                eos_threshold=self.engine.eos_threshold,
                max_len=len(prefix) + m.max_len,
                follow=[tokens[k] for k in after],
                rejoin=self.engine.rejoin,
            )
            cur.ensure(10**9)
        new = cur.tokens[len(prefix) : len(cur.tokens) - len(cur.followed)]
        rest = [after[j] for j in cur.followed] if cur.followed else []
        if not rest or rest[0] not in after[: stop + 1]:  # rejoined past a fixed vertex: keep from it on
            rest = after[stop:]
        centres = crop.cells_to_image(crop.tokens_to_cells(np.array(new, dtype=np.int64))).reshape(-1, 2)
        keep_idx = kept + [index]
        poly = np.concatenate([p[keep_idx], centres, p[rest]])
        flags = np.concatenate([fixed[keep_idx], np.zeros(len(centres), bool), fixed[rest]])
        return State(
            poly, flags
        )  # a fixed vertex lost before the edit (it shared a cell) is refused by _guard


def _same_ring(want: np.ndarray, got: np.ndarray) -> bool:
    """The same points in the same cyclic order (exactly)."""
    if len(want) != len(got):
        return False
    if not len(want):
        return True
    starts = [k for k in range(len(got)) if np.array_equal(got[k], want[0])]
    return any(np.array_equal(np.roll(got, -k, axis=0), want) for k in starts)


def _point(xy: tuple[float, float]) -> np.ndarray:
    v = np.asarray(xy, dtype=np.float64).reshape(2)
    if not np.isfinite(v).all():
        raise ValueError(f"point {xy!r} must be two finite numbers")
    return v


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
    if signed_area(contour) * signed_area(p) < 0:
        contour = contour[::-1]
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
        """The contour strictly between its points i and j, going forward, simplified."""
        path = contour[[(i + t) % m for t in range(1, (j - i) % m or m)]]
        return simplify(path, tolerance) if len(path) >= 3 else path.reshape(-1, 2)

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
    kept = [(b + t) % n for t in range((a - b) % n + 1)] if a != b else [a]  # b .. round to .. a
    poly = np.concatenate([p[kept], path1, [c], path2])
    flags = np.concatenate([fixed[kept], np.zeros(len(path1), bool), [True], np.zeros(len(path2), bool)])
    # start where the polygon started when that vertex is kept, so indices move as little as possible
    first_kept = min(kept)
    shift = kept.index(first_kept)
    return State(np.roll(poly, -shift, axis=0), np.roll(flags, -shift))
