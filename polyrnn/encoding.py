"""One box's crop of an image and what the models compute from it, each once and only when asked: the
automatic polygon (the mask model's outline, or the recurrent decoder's), and the refiner's mask for a set of
corrections. Every session (:mod:`polyrnn.session`), engine (:mod:`polyrnn.engines`) and the batch annotator
read a box through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from polyrnn.config import INFERENCE
from polyrnn.data.crop import CropBox
from polyrnn.geometry import rasterize
from polyrnn.modeling.mask_net import MaskNet, mask_polygon
from polyrnn.modeling.polygon_rnn import PolygonRNN
from polyrnn.modeling.refiner import refiner_maps

if TYPE_CHECKING:
    from polyrnn.modeling.refiner import Refiner


@dataclass(frozen=True)
class Click:
    """One correction as the refiner reads it: the drag's ``middle`` (x, y image pixels, between where the
    outline ran and where the annotator put it) and its ``sign`` (+1 outward: the object was missed)."""

    middle: tuple[float, float]
    sign: int


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
        context: float = INFERENCE.context,
        mask_flip: bool = True,
        eos_threshold: float = INFERENCE.eos_threshold,
        start: str = "auto",
        tolerance: float = INFERENCE.tolerance,
    ) -> None:
        x1, y1, x2, y2 = box
        self.tolerance = tolerance  # the mask outline's simplification, mask pixels (a domain's own density)
        self.box = box
        self.image_size = (image.shape[1], image.shape[0])
        self.polygon_model, self.mask_model, self.refiner = polygon_model, mask_model, refiner
        self.mask_flip = mask_flip
        self.eos_threshold = eos_threshold
        self.start = start  # the automatic polygon: auto (the mask's when there is one), mask, rnn or box
        self.context = context
        self.crop = CropBox.around(
            (x1, y1, x2 - x1, y2 - y1),
            context=context,
            crop_size=polygon_model.crop_size,
            grid_size=polygon_model.grid_size,
        )
        self.image = image  # kept for focus windows (:meth:`focus_mask`)
        pixels = self.crop.crop_image(image)
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).float()
        self.long_side = max(x2 - x1, y2 - y1)

    def for_box(self, box: tuple[float, float, float, float]) -> BoxEncoding:
        """Another box (x1, y1, x2, y2, image pixels) of the same image, with the same models and settings:
        a further part of an object (:class:`~polyrnn.session.ObjectSession`)."""
        return BoxEncoding(
            self.image,
            box,
            polygon_model=self.polygon_model,
            mask_model=self.mask_model,
            refiner=self.refiner,
            context=self.context,
            mask_flip=self.mask_flip,
            eos_threshold=self.eos_threshold,
            start=self.start,
            tolerance=self.tolerance,
        )

    @cached_property
    def _views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The mask model's features (1, C, D, D) of the crop, probability (1, M, M) (mirror-averaged when
        asked) and the features of the mirrored crop (None without the mirror), from one batch."""
        assert self.mask_model is not None
        with torch.inference_mode():
            if self.mask_flip:
                return self.mask_model.mirrored_views(self.pixels)
            feats, prob = self.mask_model.features_and_masks(self.pixels, flip=False)
            return feats, prob, None

    def mask_probability(self) -> np.ndarray:
        """The mask model's (M, M) probability over the crop (mirror-averaged when asked)."""
        return self._views[1][0].numpy()

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
        poly = mask_polygon(self.mask_probability(), self.crop, tolerance=self.tolerance)
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

    def box_polygon(self) -> np.ndarray:
        """The box as a polygon (4, 2), image pixels, clockwise from the top-left corner."""
        x1, y1, x2, y2 = self.box
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)

    def automatic(self, tolerance: float | None = None) -> tuple[np.ndarray, str]:
        """The automatic polygon and where it came from: "mask", "rnn", or "box" (``start="box"``: where the
        model is expected to lose to the box, see :func:`polyrnn.learning.choose_start`). ``tolerance``: the
        mask outline's simplification in mask pixels when not the encoding's own (the editor's detail)."""
        if self.start == "box":
            return self.box_polygon(), "box"
        if self.start != "rnn" and self.mask_outline is not None:
            if tolerance is not None and tolerance != self.tolerance:
                poly = mask_polygon(self.mask_probability(), self.crop, tolerance=tolerance)
                if poly is not None and len(poly) >= 3:
                    return poly, "mask"
            return self.mask_outline.copy(), "mask"
        return self.decoder_polygon()[0], "rnn"

    # --- maps over the crop, for the refiner ------------------------------------------------------------
    def to_map(self, xy: np.ndarray, size: int) -> np.ndarray:
        """Image pixels -> pixels of a ``size`` x ``size`` map over the crop."""
        return self.crop.image_to_map(xy, size)

    def refined_mask(self, before: np.ndarray, fixed_points: np.ndarray, clicks: list[Click]) -> np.ndarray:
        """The refiner's mask over the crop, bool (crop_size, crop_size), for the polygon ``before`` the edit
        (image pixels), the fixed vertices (K, 2) and the corrections (:data:`Click`, image pixels); with the
        mask model's mirror (``mask_flip``) averaged with the refiner's reading of the mirrored crop
        (:meth:`~polyrnn.modeling.refiner.Refiner.mirror_averaged`)."""
        assert self.refiner is not None
        feats, prob, mirrored = self._views
        return self._refined(self.refiner, self.crop, (feats, prob), before, fixed_points, clicks, mirrored)

    def focus_mask(
        self, window: CropBox, before: np.ndarray, fixed_points: np.ndarray, clicks: list[Click]
    ) -> np.ndarray:
        """:meth:`refined_mask` over ``window`` (a square of the image around an edit) by the refiner's focus
        pass (:class:`~polyrnn.modeling.refiner.FocusPass`): the mask model reads the window at its input
        size (no mirror), so the outline is drawn finer. Bool (crop_size, crop_size) over the window."""
        assert self.refiner is not None and self.refiner.focus_pass is not None
        assert self.mask_model is not None
        pixels = torch.from_numpy(np.ascontiguousarray(window.crop_image(self.image)))
        with torch.inference_mode():
            seen = self.mask_model.features_and_masks(pixels.permute(2, 0, 1)[None].float(), flip=False)
        return self._refined(self.refiner.focus_pass.refiner, window, seen, before, fixed_points, clicks)

    def _refined(
        self,
        refiner: Refiner,
        crop: CropBox,
        seen: tuple[torch.Tensor, torch.Tensor],
        before: np.ndarray,
        fixed_points: np.ndarray,
        clicks: list[Click],
        mirrored: torch.Tensor | None = None,
    ) -> np.ndarray:
        s = refiner.size
        feats, prob = seen
        to_map = crop.image_to_map
        current = torch.from_numpy(rasterize([to_map(before, s)], s, s).astype(np.float32))[None]
        p = F.adaptive_avg_pool2d(prob[:, None], s)[:, 0]
        fixed = [tuple(q) for q in to_map(fixed_points, s)]
        mids = [(*to_map(np.array([c.middle]), s)[0], c.sign) for c in clicks]
        maps = refiner_maps(current, p, [fixed], [mids], s)  # type: ignore[list-item]
        c = crop.crop_size
        fine = torch.from_numpy(rasterize([to_map(before, c)], c, c).astype(np.float32))[None]
        with torch.inference_mode():
            if mirrored is None:
                residual = refiner.residual(feats, maps)
            else:
                residual = refiner.mirror_averaged(feats, mirrored, maps)
            logits = refiner.refine(residual, fine)
        return logits[0].numpy() > 0
