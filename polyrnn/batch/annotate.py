"""The automatic polygons of many boxes on one image, batched: what ``polyrnn predict --dataset`` runs.

:class:`Annotator` holds the models (loaded once per process or actor) and turns an image and its boxes into
one :class:`Traced` per box: the polygon in image pixels, where it came from and a confidence. With a mask
model (the shipped pairing) every crop of the image and its mirror go through the mask model in one batch,
and the polygon is the same outline, with the same simplification, as the editor's and ``polyrnn evaluate``'s
automatic polygon (:class:`polyrnn.session.BoxEncoding`). Without one the recurrent decoder traces each box.

Confidence (``score``, 0..1): the IoU the mask model expects of its own mask, from its probabilities (sum of
p inside the mask over the mask's area plus the sum of p outside): a mask whose pixels are all near 0 or 1 is
one the model is sure of; a soft, spread-out mask scores low. It was chosen among the candidates of
:func:`confidences` on held-out training images (``python benchmarks/confidence.py --held-out``: Spearman 0.73
with IoU, against 0.67 for the agreement with the mirrored crop); its correlation on coco-mini val2017 is in
docs/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from polyrnn.build import Models
from polyrnn.config import INFERENCE
from polyrnn.data.crop import CropBox
from polyrnn.encoding import BoxEncoding
from polyrnn.modeling.mask_net import mask_polygon

Box = tuple[float, float, float, float]
SCORE = "expected_iou"  # the confidence written as ``score`` (one of :func:`confidences`' keys)


@dataclass
class Traced:
    """One box's automatic polygon.

    Attributes:
        polygon: (N, 2) float vertices in image pixels (x, y), or None when the model found no object (the
            mask is empty): the box is then left for review with score 0.
        score: confidence in 0..1 (see the module's docstring).
        source: "mask" (the mask model's outline) or "rnn" (the recurrent decoder).
        scores: every candidate confidence of :func:`confidences` (for measuring them).
    """

    polygon: np.ndarray | None
    score: float
    source: str
    scores: dict[str, float]


def confidences(direct: np.ndarray, mirrored: np.ndarray | None) -> dict[str, float]:
    """Candidate confidences from the mask model's (M, M) probabilities for a crop and for its mirror image
    (flipped back; None without test-time flipping).

    * ``flip_iou``: IoU of the two thresholded masks (1 when both are empty).
    * ``expected_iou``: the IoU the averaged mask expects with a mask drawn from its own probabilities,
      sum over the mask of p / (mask area + sum outside it of p).
    * ``product``: the two multiplied.
    """
    p = direct if mirrored is None else (direct + mirrored) / 2
    m = p >= 0.5
    union = m.sum() + p[~m].sum()
    expected = float(p[m].sum() / union) if union > 0 else 0.0
    if mirrored is None:
        flip = expected
    else:
        a, b = direct >= 0.5, mirrored >= 0.5
        u = np.logical_or(a, b).sum()
        flip = float(np.logical_and(a, b).sum() / u) if u else 1.0
    return {"flip_iou": flip, "expected_iou": expected, "product": flip * expected}


class Annotator:
    """Batched automatic polygons with the models of :func:`polyrnn.build.load_models`.

    Args:
        models: the polygon model, and the mask model when there is one (the automatic polygon's source).
        context: crop context ratio (the paper's 15 % at test time, as the editor).
        mask_flip: average the mask with the mirrored crop's (as the editor).
        tolerance: the outline's simplification in mask pixels (as
            :func:`polyrnn.modeling.mask_net.mask_polygon`).
        batch: boxes per forward pass (each with its mirror image).
        start: ``auto``, or ``box``: the box itself is the polygon, where the model is expected to lose to
            it (a learned model folder says so, :func:`polyrnn.learning.choose_start`).
    """

    def __init__(
        self,
        models: Models,
        *,
        context: float = INFERENCE.context,
        mask_flip: bool = True,
        tolerance: float = INFERENCE.tolerance,
        batch: int = 16,
        start: str = "auto",
    ) -> None:
        self.models = models
        self.polygon_model = models.polygon.eval()
        self.mask_model = models.mask.eval() if models.mask is not None else None
        self.context, self.mask_flip, self.tolerance, self.batch = context, mask_flip, tolerance, batch
        self.start = start

    @classmethod
    def from_weights(
        cls,
        weights: str | None = None,
        mask_weights: str | None = None,
        *,
        variant: str = "lite",
        context: float = INFERENCE.context,
        start: str = "auto",
        tolerance: float = INFERENCE.tolerance,
    ) -> Annotator:
        """An annotator with the models :func:`polyrnn.build.load_models` pairs (by default the shipped
        ones)."""
        from polyrnn.build import load_models

        models = load_models(weights, mask_weights, variant=variant, refiner_weights="none")
        return cls(models, context=context, start=start, tolerance=tolerance)

    def _crop(self, box: Box) -> CropBox:
        x1, y1, x2, y2 = box
        m = self.polygon_model
        return CropBox.around(
            (x1, y1, x2 - x1, y2 - y1), context=self.context, crop_size=m.crop_size, grid_size=m.grid_size
        )

    @torch.inference_mode()
    def annotate(self, image: np.ndarray, boxes: list[Box]) -> list[Traced]:
        """One :class:`Traced` per box (x1, y1, x2, y2 image pixels, inside the image) of an RGB uint8
        (H, W, 3) image."""
        if self.mask_model is None:
            return [self._decoder(image, b) for b in boxes]
        out: list[Traced] = []
        for start in range(0, len(boxes), self.batch):
            chunk = boxes[start : start + self.batch]
            crops = [self._crop(b) for b in chunk]
            pixels = np.stack([c.crop_image(image) for c in crops])
            x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
            _, direct, mirrored = self.mask_model.mask_views(x, flip=self.mask_flip)
            for k, crop in enumerate(crops):
                a = direct[k].numpy()
                b = mirrored[k].numpy() if mirrored is not None else None
                prob = a if b is None else (direct[k] + mirrored[k]).div(2).numpy()  # type: ignore[index]
                poly = mask_polygon(prob, crop, tolerance=self.tolerance)
                scores = confidences(a, b)
                if self.start == "box":  # the model is expected to lose to the box on this domain
                    x1, y1, x2, y2 = chunk[k]
                    rect = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)
                    out.append(Traced(rect, scores[SCORE], "box", scores))
                    continue
                ok = poly is not None and len(poly) >= 3
                out.append(Traced(poly if ok else None, scores[SCORE] if ok else 0.0, "mask", scores))
        return out

    def _decoder(self, image: np.ndarray, box: Box) -> Traced:
        enc = BoxEncoding(
            image, box, polygon_model=self.polygon_model, context=self.context, mask_flip=self.mask_flip
        )
        poly, probs = enc.decoder_polygon()
        score = float(np.exp(np.log(np.clip(probs, 1e-6, 1.0)).mean())) if len(probs) else 0.0
        ok = len(poly) >= 3
        return Traced(poly if ok else None, score if ok else 0.0, "rnn", {"vertex_prob": score})
