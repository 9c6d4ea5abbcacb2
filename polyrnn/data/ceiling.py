"""The IoU ceiling of the output grid: how well the quantised ground truth itself scores."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from polyrnn.config import INFERENCE
from polyrnn.data.crop import CropBox
from polyrnn.data.instance import Instance
from polyrnn.data.sequence import polygon_to_tokens, tokens_to_polygon
from polyrnn.geometry import mask_iou, rasterize


def grid_polygon(
    inst: Instance, *, grid_size: int = 28, context: float = INFERENCE.context, max_len: int = 70
) -> np.ndarray:
    """The largest part of ``inst`` quantised to the grid and mapped back to image pixels (cell centres);
    (0, 2) when it degenerates."""
    crop = CropBox.around(inst.box, context=context, grid_size=grid_size)
    tokens = polygon_to_tokens(inst.largest_polygon(), crop, max_len=max_len)
    return tokens_to_polygon(tokens, crop)


def ceiling_iou(
    inst: Instance, *, grid_size: int = 28, context: float = INFERENCE.context, max_len: int = 70
) -> float:
    """IoU of the grid polygon (rasterised at full resolution) with the full ground-truth mask."""
    poly = grid_polygon(inst, grid_size=grid_size, context=context, max_len=max_len)
    pred = rasterize([poly], inst.height, inst.width)
    return mask_iou(pred, inst.mask(), inst.ignore_mask())


def ceiling(instances: Iterable[Instance], **kw: float) -> float:
    """Mean :func:`ceiling_iou` over instances."""
    vals = [ceiling_iou(i, **kw) for i in instances]  # type: ignore[arg-type]
    return float(np.mean(vals)) if vals else float("nan")
