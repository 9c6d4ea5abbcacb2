"""Training augmentations of the paper: horizontal flip, random context, random starting vertex
(the last is ``polygon_to_tokens(..., rng=...)``)."""

from __future__ import annotations

import numpy as np


def hflip(image: np.ndarray, polygons: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mirror an (H, W, ...) image and its (N, 2) image-pixel polygons left-right (x -> W - x).

    Mirroring reverses a polygon's orientation; quantisation re-orients it, so targets keep one
    orientation under flips.
    """
    w = image.shape[1]
    flipped = [np.column_stack([w - p[:, 0], p[:, 1]]) for p in polygons]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def hflip_box(box: tuple[float, float, float, float], image_width: int) -> tuple[float, float, float, float]:
    """The (x, y, w, h) box in the mirrored image."""
    x, y, w, h = box
    return (image_width - x - w, y, w, h)


def random_context(rng: np.random.Generator, low: float = 0.10, high: float = 0.20) -> float:
    """Context ratio drawn uniformly from [low, high] (the paper's 10–20 %)."""
    return float(rng.uniform(low, high))
