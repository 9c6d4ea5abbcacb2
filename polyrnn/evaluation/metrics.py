"""Accuracy figures: IoU per instance at full image resolution, mean over instances and over classes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from polyrnn.data.instance import Instance
from polyrnn.geometry import mask_iou, rasterize


def instance_iou(polygons: Sequence[np.ndarray], inst: Instance) -> float:
    """IoU of predicted polygon parts (image pixels) with the full ground truth of ``inst`` (all parts,
    occluders cut out), not counting its ignore region."""
    pred = rasterize(polygons, inst.height, inst.width)
    return mask_iou(pred, inst.mask(), inst.ignore_mask())


def summarize(ious: Sequence[float], classes: Sequence[str]) -> dict[str, Any]:
    """``mean_iou`` over instances, ``class_mean_iou`` (mean per class, then over classes) and per-class
    rows ``{class: {"iou", "count"}}``, IoUs as fractions 0–1."""
    if len(ious) != len(classes):
        raise ValueError(f"{len(ious)} IoUs for {len(classes)} class names")
    per: dict[str, list[float]] = defaultdict(list)
    for v, c in zip(ious, classes, strict=True):
        per[c].append(float(v))
    rows = {c: {"iou": float(np.mean(v)), "count": len(v)} for c, v in sorted(per.items())}
    return {
        "instances": len(ious),
        "mean_iou": float(np.mean(ious)) if len(ious) else float("nan"),
        "class_mean_iou": float(np.mean([r["iou"] for r in rows.values()])) if rows else float("nan"),
        "per_class": rows,
    }
