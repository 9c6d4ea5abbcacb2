"""``PolygonPredictor``: the interactive wrapper around a trained :class:`PolygonRNN`.

Like SAM's predictor: ``set_image`` once, then ``predict(box)`` for each object and ``correct(index, xy)``
for each annotator correction. Encoder results are cached per box, so a correction only re-runs the
decoder from the corrected vertex on (reusing the cached decoder states before it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from polyrnn.config import MASK_FLIP, REJOIN
from polyrnn.data.crop import CropBox
from polyrnn.modeling.decoder import State
from polyrnn.modeling.mask_net import MaskNet, mask_polygon
from polyrnn.modeling.polygon_rnn import PolygonRNN


@dataclass
class Prediction:
    """A polygon for one box.

    Attributes:
        vertices: (N, 2) float polygon in image pixels (x, y): decoder vertices are grid cell centres,
            the annotator's vertices lie where they were put, the mask model's where it traced them.
        probs: (N,) probability of each vertex when the decoder chose it; 1.0 for annotator vertices and
            for vertices traced from the mask model's mask (which has no per-vertex probability).
        tokens: (N,) grid tokens ``r * D + c``.
        box: the (x1, y1, x2, y2) box it was predicted for.
        source: "mask" (the mask model's outline) or "rnn" (the recurrent decoder wrote vertices).
    """

    vertices: np.ndarray
    probs: np.ndarray
    tokens: np.ndarray
    box: tuple[float, float, float, float]
    fixed: int = 0  # vertices 0..fixed-1 were set by the annotator or kept from before a correction
    source: str = "rnn"


@dataclass
class _BoxCache:
    crop: CropBox
    static: torch.Tensor
    vertex_logits: torch.Tensor
    pixels: torch.Tensor | None = None
    tokens: list[int] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)  # image (x, y) of each token
    probs: list[float] = field(default_factory=list)
    states: list[State] = field(default_factory=list)


class PolygonPredictor:
    """Predict and correct polygons on one image at a time. Thread-safe: every public call holds a lock.

    Args:
        model: a :class:`PolygonRNN` (put in eval mode here).
        mask_model: optional :class:`MaskNet`; when given, the automatic polygon is its mask's outline
            and the recurrent decoder re-predicts everything after each corrected vertex.
        context: crop context ratio (the paper's 15 % at test time).
        eos_threshold: stop when p(end) >= this (see :meth:`PolygonRNN.decode`).
        cache_size: boxes whose encoder results are kept.
        rejoin: after a correction the decoder re-predicts until it comes within this many grid cells
            (chessboard) of the old polygon's rest, which is kept; None re-predicts everything (the paper).
        mask_flip: the mask model averages the crop's mask with its mirror image's.
    """

    def __init__(
        self,
        model: PolygonRNN,
        *,
        mask_model: MaskNet | None = None,
        context: float = 0.15,
        eos_threshold: float = 0.5,
        cache_size: int = 16,
        rejoin: int | None = REJOIN,
        mask_flip: bool = MASK_FLIP,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.mask_model = mask_model.eval().to(device) if mask_model is not None else None
        self.device = torch.device(device)
        self.context = context
        self.eos_threshold = eos_threshold
        self.cache_size = cache_size
        self.rejoin = rejoin
        self.mask_flip = mask_flip
        self._lock = threading.RLock()
        self._image: np.ndarray | None = None
        self._cache: OrderedDict[tuple[float, ...], _BoxCache] = OrderedDict()
        self._last_box: tuple[float, float, float, float] | None = None

    @classmethod
    def from_weights(
        cls,
        weights: str | Path | None = None,
        variant: str = "lite",
        *,
        mask_weights: str | Path | None = None,
        **kw: object,
    ) -> PolygonPredictor:
        """A predictor for a checkpoint file, or the variant's shipped model when ``weights`` is None, paired
        with a mask model by :func:`polyrnn.build.load_models` (the rule every entry point uses)."""
        from polyrnn.build import load_models

        models = load_models(weights, mask_weights, variant=variant)
        return cls(models.polygon, mask_model=models.mask, **kw)  # type: ignore[arg-type]

    # --- image and box -----------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> None:
        """Set the image: an RGB uint8 array of shape (H, W, 3). Clears the per-box cache."""
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
            self._cache.clear()
            self._last_box = None

    def _check_box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
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
        return (x1, y1, x2, y2)

    def _encode(self, box: tuple[float, float, float, float]) -> _BoxCache:
        key = tuple(round(v, 3) for v in box)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        x1, y1, x2, y2 = box
        crop = CropBox.around(
            (x1, y1, x2 - x1, y2 - y1),
            context=self.context,
            crop_size=self.model.crop_size,
            grid_size=self.model.grid_size,
        )
        assert self._image is not None
        pixels = crop.crop_image(self._image)
        x = torch.from_numpy(pixels).to(self.device).permute(2, 0, 1).unsqueeze(0).float()
        _, static, vertex = self.model.encode(x)
        entry = _BoxCache(crop=crop, static=static, vertex_logits=vertex, pixels=x)
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def _centres(self, entry: _BoxCache, tokens: list[int]) -> list[tuple[float, float]]:
        xy = entry.crop.cells_to_image(entry.crop.tokens_to_cells(np.array(tokens, dtype=np.int64)))
        return [(float(x), float(y)) for x, y in xy.reshape(-1, 2)]

    def _result(
        self, entry: _BoxCache, box: tuple[float, float, float, float], fixed: int, source: str = "rnn"
    ) -> Prediction:
        return Prediction(
            vertices=np.array(entry.points, dtype=np.float64).reshape(-1, 2),
            probs=np.array(entry.probs, dtype=np.float64),
            tokens=np.array(entry.tokens, dtype=np.int64),
            box=box,
            fixed=fixed,
            source=source,
        )

    # --- predict and correct -----------------------------------------------------------------------
    def predict(self, box: tuple[float, float, float, float]) -> Prediction:
        """The automatic polygon for a box: the mask model's outline when there is a mask model, else the
        first-vertex head and greedy decoding.

        Args:
            box: (x1, y1, x2, y2) in image pixels.
        """
        with self._lock:
            box = self._check_box(box)
            entry = self._encode(box)
            self._last_box = box
            if self.mask_model is not None and self._mask_start(entry):
                return self._result(entry, box, fixed=0, source="mask")
            idx, pr = self.model.first_vertices(entry.vertex_logits, 1)
            dec = self.model.decode(entry.static, [int(idx[0, 0])], eos_threshold=self.eos_threshold)
            entry.tokens, entry.probs, entry.states = (
                list(dec.tokens),
                [float(pr[0, 0]), *dec.probs],
                dec.states,
            )
            entry.points = self._centres(entry, entry.tokens)
            return self._result(entry, box, fixed=0)

    def _mask_start(self, entry: _BoxCache) -> bool:
        """Set ``entry``'s polygon to the mask model's outline; False when the mask is empty."""
        assert self.mask_model is not None and entry.pixels is not None
        prob = self.mask_model.predict_masks(entry.pixels, flip=self.mask_flip)[0].cpu().numpy()
        poly = mask_polygon(prob, entry.crop)
        if poly is None or len(poly) < 3:
            return False
        cells = entry.crop.image_to_cells(poly)
        entry.tokens = [int(t) for t in entry.crop.cells_to_tokens(cells)]
        entry.points = [(float(x), float(y)) for x, y in poly]
        entry.probs = [1.0] * len(entry.tokens)  # the mask's outline: no per-vertex probability
        entry.states = []
        return True

    def correct(
        self,
        index: int,
        xy: tuple[float, float],
        *,
        box: tuple[float, float, float, float] | None = None,
        vertices: np.ndarray | None = None,
    ) -> Prediction:
        """Move vertex ``index`` of the current polygon to ``xy`` (image pixels) and re-predict every vertex
        after it; vertices before it are kept.

        Args:
            index: the corrected vertex, 0 <= index < number of vertices (index == N appends).
            xy: the annotator's point (x, y) in image pixels; snapped to its grid cell.
            box: the box of the polygon to correct (default: the last predicted box).
            vertices: (N, 2) the polygon being corrected as the caller holds it (after its own edits,
                undo, ...); default: the predictor's last polygon for the box.
        """
        with self._lock:
            box = self._check_box(box) if box is not None else self._last_box
            if box is None:
                raise RuntimeError("call predict(box) before correct(index, xy)")
            entry = self._encode(box)
            if vertices is not None:
                v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
                tokens = [int(t) for t in entry.crop.cells_to_tokens(entry.crop.image_to_cells(v))]
                if tokens != entry.tokens:  # edited elsewhere: the cached decoder states no longer apply
                    entry.tokens, entry.probs, entry.states = tokens, [1.0] * len(tokens), []
                entry.points = [(float(x), float(y)) for x, y in v]
            if not entry.tokens:
                raise RuntimeError("no polygon to correct for this box: call predict(box) first")
            if not 0 <= index <= len(entry.tokens):
                raise IndexError(f"vertex index {index} out of range 0..{len(entry.tokens)}")
            cell = int(
                entry.crop.cells_to_tokens(entry.crop.image_to_cells(np.array([xy], dtype=np.float64)))[0]
            )
            kept = [k for k in range(index) if entry.tokens[k] != cell]
            keep = [entry.tokens[k] for k in kept]
            prefix = [*keep, cell]
            reuse = entry.states if len(keep) == index and len(entry.states) >= index else None
            rest = list(range(index + 1, len(entry.tokens)))  # the old vertices after the corrected one
            dec = self.model.decode(
                entry.static,
                prefix,
                eos_threshold=self.eos_threshold,
                prefix_states=reuse,
                max_len=len(prefix) + self.model.max_len,  # room after a long outline
                follow=[entry.tokens[k] for k in rest],
                rejoin=self.rejoin,
            )
            new = dec.tokens[len(prefix) : len(dec.tokens) - len(dec.followed)]
            old = [rest[j] for j in dec.followed]  # rejoined: the old vertices kept, with their points
            points, probs = entry.points, entry.probs
            entry.points = [points[k] for k in kept] + [(float(xy[0]), float(xy[1]))]
            entry.points += self._centres(entry, new) + [points[k] for k in old]
            entry.probs = [*(probs[k] for k in kept), 1.0, *dec.probs[: len(new)], *(probs[k] for k in old)]
            entry.tokens = dec.tokens
            entry.states = dec.states
            self._last_box = box
            return self._result(entry, box, fixed=len(prefix))
