"""``PolygonPredictor``: the interactive wrapper around the trained models, one image at a time.

Like SAM's predictor: ``set_image`` once, then ``predict(box)`` for each object and ``correct(index, xy)`` /
``insert(edge, xy)`` for each annotator correction. Each box gets a :class:`~polyrnn.session.BoxSession`
(crop encodings computed once and kept for the last few boxes); the editor's server and the evaluation drive
the same sessions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyrnn.config import INFERENCE, MASK_FLIP, REJOIN
from polyrnn.geometry import within_image
from polyrnn.modeling.mask_net import MaskNet
from polyrnn.modeling.polygon_rnn import PolygonRNN
from polyrnn.modeling.refiner import Refiner
from polyrnn.session import CONFINE, ENGINES, BoxEncoding, BoxSession, Click, EngineConfig, State

Box = tuple[float, float, float, float]


@dataclass
class Prediction:
    """A polygon for one box.

    Attributes:
        vertices: (N, 2) float polygon in image pixels (x, y); the annotator's vertices lie exactly where
            they were put.
        fixed: (N,) bool, True for the vertices the annotator placed (never moved by a model).
        box: the (x1, y1, x2, y2) box it was predicted for.
        source: where the automatic polygon came from: "mask" (the mask model's outline) or "rnn" (the
            recurrent decoder).
        probs: (N,) the decoder's probability of each vertex of an automatic "rnn" polygon; None otherwise.
    """

    vertices: np.ndarray
    fixed: np.ndarray
    box: Box
    source: str = "mask"
    probs: np.ndarray | None = None


def _clicks_of(points: np.ndarray, start: np.ndarray | None) -> list[Click]:
    """Corrections for fixed vertices whose drags are unknown: at the vertex, outward when it lies outside
    the automatic polygon ``start``."""
    from shapely.geometry import Point, Polygon

    area = Polygon(start).buffer(0) if start is not None and len(start) >= 3 else None
    return [
        Click((float(x), float(y)), 1 if area is None or not area.covers(Point(x, y)) else -1)
        for x, y in points
    ]


class PolygonPredictor:
    """Predict and correct polygons on one image at a time. Thread-safe: every public call holds a lock.

    Args:
        model: a :class:`PolygonRNN` (put in eval mode here).
        mask_model: optional :class:`MaskNet`; when given, the automatic polygon is its mask's outline.
        refiner: optional :class:`Refiner` trained on ``mask_model``'s features: the ``refine`` engine.
        engine: how corrections update the polygon (:data:`polyrnn.session.ENGINES`); default ``refine``
            when there is a refiner, else ``rnn``.
        context: crop context ratio (the paper's 15 % at test time).
        eos_threshold, rejoin: the ``rnn`` engine's end rule and rejoin distance (cells; None: the paper).
        confine: guard rail, see :data:`polyrnn.session.CONFINE`.
        mask_flip: the mask model averages the crop's mask with its mirror image's, and the refiner's object
            pass its reading of the crop with its reading of the mirror image.
        cache_size: boxes whose sessions (and encodings) are kept.
        start: ``auto`` (the model's polygon) or ``box`` (the box: where the model is expected to lose to
            it, :func:`polyrnn.learning.choose_start`).
        tolerance: outlines' simplification in mask pixels (a learned domain's own vertex density,
            :func:`polyrnn.learning.choose_tolerance`).
    """

    def __init__(
        self,
        model: PolygonRNN,
        *,
        mask_model: MaskNet | None = None,
        refiner: Refiner | None = None,
        engine: str | None = None,
        context: float = INFERENCE.context,
        eos_threshold: float = INFERENCE.eos_threshold,
        rejoin: int | None = REJOIN,
        confine: float = CONFINE,
        mask_flip: bool = MASK_FLIP,
        cache_size: int = 16,
        device: str | torch.device = "cpu",
        start: str = "auto",
        tolerance: float = INFERENCE.tolerance,
        focus: bool = INFERENCE.focus,
    ) -> None:
        self.model = model.eval().to(device)
        self.mask_model = mask_model.eval().to(device) if mask_model is not None else None
        self.refiner = refiner.eval().to(device) if refiner is not None else None
        name = engine or ("refine" if refiner is not None and mask_model is not None else "rnn")
        if name not in ENGINES:
            raise ValueError(f"unknown engine '{name}' (one of {', '.join(ENGINES)})")
        if name == "refine" and (refiner is None or mask_model is None):
            raise ValueError("the refine engine needs a mask model and its refiner")
        self.engine = EngineConfig(
            name=name,
            confine=confine,
            rejoin=rejoin,
            eos_threshold=eos_threshold,
            mask_flip=mask_flip,
            context=context,
            start=start,
            tolerance=tolerance,
            focus=focus,
        )
        self.cache_size = cache_size
        self._lock = threading.RLock()
        self._image: np.ndarray | None = None
        self._sessions: OrderedDict[tuple[float, ...], BoxSession] = OrderedDict()
        self._last_box: Box | None = None

    @property
    def precision(self) -> str:
        """The type the mask model and the refiner compute in ("float32" or "bfloat16",
        :func:`polyrnn.build.load_models`' ``precision``)."""
        from polyrnn.modeling.inference import compute_dtype

        net = self.mask_model if self.mask_model is not None else self.refiner
        return str(compute_dtype(net)).removeprefix("torch.") if net is not None else "float32"

    @classmethod
    def from_weights(
        cls,
        weights: str | Path | None = None,
        variant: str = "lite",
        *,
        mask_weights: str | Path | None = None,
        refiner_weights: str | Path | None = None,
        **kw: object,
    ) -> PolygonPredictor:
        """A predictor for a checkpoint file, or the variant's shipped model when ``weights`` is None, paired
        with a mask model and a refiner by :func:`polyrnn.build.load_models` (the rule of every entry
        point)."""
        from polyrnn.build import load_models

        m = load_models(weights, mask_weights, variant=variant, refiner_weights=refiner_weights)
        return cls(m.polygon, mask_model=m.mask, refiner=m.refiner, **kw)  # type: ignore[arg-type]

    def with_models(
        self, models: Any, *, start: str | None = None, tolerance: float | None = None
    ) -> PolygonPredictor:
        """A new predictor with the same engine settings over other networks (a
        :class:`~polyrnn.build.Models`: the editor's swap to a newly learned model); its engine falls back to
        ``rnn`` when the new models have no refiner."""
        e = self.engine
        name = e.name if e.name != "refine" or models.refiner is not None else "rnn"
        new = PolygonPredictor(
            models.polygon,
            mask_model=models.mask,
            refiner=models.refiner,
            engine=name,
            cache_size=self.cache_size,
        )
        # every engine setting carries over (a new one cannot be forgotten here), bar what the model sets
        new.engine = replace(
            e,
            name=name,
            start=start or e.start,
            tolerance=tolerance if tolerance is not None else e.tolerance,
        )
        return new

    # --- image and box -----------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> None:
        """Set the image: an RGB uint8 array of shape (H, W, 3). Forgets the boxes of the last one."""
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            desc = f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
            raise ValueError(f"set_image expects an RGB uint8 array of shape (H, W, 3), got {desc}")
        with self._lock:
            self._image = np.ascontiguousarray(image)
            self._sessions.clear()
            self._last_box = None

    def _check_box(self, box: Box) -> Box:
        if self._image is None:
            raise RuntimeError("call set_image(image) before predict(box)")
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except (TypeError, ValueError) as e:
            raise ValueError(f"box must be four numbers x1, y1, x2, y2, got {box!r}") from e
        h, w = self._image.shape[:2]
        if not all(np.isfinite([x1, y1, x2, y2])) or x2 <= x1 or y2 <= y1:
            raise ValueError(f"box {box!r} must have x2 > x1 and y2 > y1")
        if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            raise ValueError(f"box {box!r} lies outside the {w}x{h} image")
        # clipped to the image, as every reader clips its boxes: a box to 1e9 must not make a 1e9 crop
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise ValueError(f"box {box!r} has less than a pixel inside the {w}x{h} image")
        return (x1, y1, x2, y2)

    def _within(self, points: Any, what: str) -> np.ndarray:
        if self._image is None:
            raise RuntimeError("call set_image(image) before correcting")
        h, w = self._image.shape[:2]
        return within_image(points, (w, h), what=what)

    def session(self, box: Box | None = None) -> BoxSession:
        """The box's session (created with its automatic polygon when new); default: the last box."""
        with self._lock:
            if box is None:
                if self._last_box is None:
                    raise RuntimeError("call predict(box) before correcting")
                box = self._last_box
            box = self._check_box(box)
            key = tuple(round(v, 3) for v in box)
            if key in self._sessions:
                self._sessions.move_to_end(key)
            else:
                assert self._image is not None
                enc = BoxEncoding(
                    self._image,
                    box,
                    polygon_model=self.model,
                    mask_model=self.mask_model,
                    refiner=self.refiner,
                    context=self.engine.context,
                    mask_flip=self.engine.mask_flip,
                    eos_threshold=self.engine.eos_threshold,
                    start=self.engine.start,
                    tolerance=self.engine.tolerance,
                )
                self._sessions[key] = BoxSession(enc, self.engine)
                while len(self._sessions) > self.cache_size:
                    self._sessions.popitem(last=False)
            self._last_box = box
            return self._sessions[key]

    def new_session(
        self, box: Box, *, polygon: np.ndarray | None = None, tolerance: float | None = None
    ) -> BoxSession:
        """A fresh session of its own for a box of the current image (the editor's server keeps one per
        object being edited): from the automatic polygon, or from ``polygon`` (N, 2, image pixels; an
        existing shape to edit, nothing fixed). ``tolerance``: its outlines' simplification in mask pixels
        (the editor's detail slider; default the predictor's). The box's encoding is shared with
        :meth:`session`'s."""
        with self._lock:
            enc = self.session(box).encoding
            start = None
            if polygon is not None:
                p = self._within(polygon, "polygon")
                if len(p) < 3:
                    raise ValueError("a polygon needs at least 3 vertices")
                start = State(p, np.zeros(len(p), dtype=bool))
            engine = self.engine if tolerance is None else replace(self.engine, tolerance=float(tolerance))
            return BoxSession(enc, engine, state=start)

    def _result(self, s: BoxSession, probs: np.ndarray | None = None) -> Prediction:
        return Prediction(
            vertices=s.polygon.copy(), fixed=s.fixed.copy(), box=s.encoding.box, source=s.source, probs=probs
        )

    # --- predict and correct -----------------------------------------------------------------------
    def predict(self, box: Box) -> Prediction:
        """The automatic polygon for a box (x1, y1, x2, y2 in image pixels): the mask model's outline when
        there is a mask model, else the first-vertex head and greedy decoding."""
        with self._lock:
            s = self.session(box)
            assert s.start is not None  # the automatic polygon, computed when the session was made
            s.reset()
            probs = s.encoding.decoder_polygon()[1] if s.source == "rnn" else None
            return self._result(s, probs)

    def _resume(self, box: Box | None, vertices: np.ndarray | None, fixed: np.ndarray | None) -> BoxSession:
        s = self.session(box)
        if vertices is not None:  # the polygon as the caller holds it (after its own edits, undo, ...)
            v = self._within(vertices, "polygon")
            f = np.zeros(len(v), bool) if fixed is None else np.asarray(fixed, dtype=bool).reshape(-1)
            if len(f) != len(v):
                raise ValueError(f"fixed has {len(f)} flags for {len(v)} vertices")
            if len(v) < 3:
                raise ValueError("a polygon needs at least 3 vertices")
            known = [st for st in (s.state, *reversed(s.history)) if st is not None and st.same(v, f)]
            if known:  # a state this session produced (the caller undid to it, or it is the current one)
                if known[0] is not s.state:
                    s.history.append(s.state.copy() if s.state is not None else known[0].copy())
                    s.state = known[0].copy()
            else:  # edited elsewhere: each fixed vertex counts as a correction on its side of the start
                s.adopt(State(v, f, _clicks_of(v[f], s.start)))
        return s

    def correct(
        self,
        index: int,
        xy: tuple[float, float],
        *,
        box: Box | None = None,
        vertices: np.ndarray | None = None,
        fixed: np.ndarray | None = None,
    ) -> Prediction:
        """Drag vertex ``index`` of the polygon to ``xy`` (image pixels); the engine updates the rest.

        Args:
            index: the dragged vertex.
            xy: where the annotator put it (x, y), kept exactly.
            box: the box of the polygon (default: the last one).
            vertices, fixed: (N, 2) the polygon as the caller holds it and (N,) which vertices the annotator
                placed (default: the session's own state).
        """
        with self._lock:
            px, py = self._within([xy], "point")[0]
            xy = (float(px), float(py))
            s = self._resume(box, vertices, fixed)
            s.move(index, xy)
            return self._result(s)

    def insert(
        self,
        edge: int,
        xy: tuple[float, float],
        *,
        box: Box | None = None,
        vertices: np.ndarray | None = None,
        fixed: np.ndarray | None = None,
    ) -> Prediction:
        """Insert a vertex at ``xy`` after vertex ``edge`` (then as :meth:`correct`)."""
        with self._lock:
            px, py = self._within([xy], "point")[0]
            xy = (float(px), float(py))
            s = self._resume(box, vertices, fixed)
            s.insert(edge, xy)
            return self._result(s)
