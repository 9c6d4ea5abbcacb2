"""Baselines a user would pick instead of polyrnn: the box itself and OpenCV GrabCut initialised with
the box (the mask network is :class:`polyrnn.modeling.mask_net.MaskNet`)."""

from __future__ import annotations

import cv2
import numpy as np

from polyrnn.data.instance import Instance


def box_polygon(box: tuple[float, float, float, float]) -> np.ndarray:
    """The (x, y, w, h) box as a 4-vertex polygon in image pixels."""
    x, y, w, h = box
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)


def grabcut_mask(
    image: np.ndarray, inst: Instance, *, iterations: int = 5, margin: float = 0.2
) -> tuple[np.ndarray, bool]:
    """GrabCut initialised with the instance's box (outside = background, inside = probable foreground).

    It runs on a window of the box enlarged by ``margin`` (at least 8 px each side, clipped to the
    image), so the background model is local and the run fast. Returns (bool mask of the full image,
    collapsed): when GrabCut labels nothing foreground (it *collapsed*) or fails, the mask is the box
    itself and ``collapsed`` is True, so a collapse scores like the box baseline rather than 0.
    """
    h, w = image.shape[:2]
    x, y, bw, bh = inst.box
    mx, my = max(bw * margin, 8.0), max(bh * margin, 8.0)
    x0, y0 = int(max(np.floor(x - mx), 0)), int(max(np.floor(y - my), 0))
    x1, y1 = int(min(np.ceil(x + bw + mx), w)), int(min(np.ceil(y + bh + my), h))
    rx, ry = int(round(x)) - x0, int(round(y)) - y0
    rw, rh = max(int(round(bw)), 1), max(int(round(bh)), 1)
    box_mask = np.zeros((h, w), dtype=bool)
    box_mask[int(round(y)) : int(round(y)) + rh, int(round(x)) : int(round(x)) + rw] = True
    window = np.ascontiguousarray(image[y0:y1, x0:x1, ::-1])  # OpenCV wants BGR
    mask = np.zeros(window.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(
            window,
            mask,
            (rx, ry, min(rw, window.shape[1] - rx), min(rh, window.shape[0] - ry)),
            bgd,
            fgd,
            iterations,
            cv2.GC_INIT_WITH_RECT,
        )
    except cv2.error:
        return box_mask, True
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if not fg.any():
        return box_mask, True
    out = np.zeros((h, w), dtype=bool)
    out[y0:y1, x0:x1] = fg
    return out, False
