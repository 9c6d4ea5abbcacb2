"""Simulated annotators.

``threshold_protocol`` is the paper's (Castrejón et al. 2017, Sec. 4.2, Table 4), acting through the
editor's own :class:`~polyrnn.session.BoxSession`. The ground-truth polygon (its grid cells, in the model's
orientation) is rotated so that its first vertex is the one nearest (chessboard distance) to the polygon's
first vertex; the polygon's vertex k (one per grid cell, walked in order) is then matched with ground-truth
vertex k. Walking k = 0, 1, ...: a vertex farther than T cells from its match is moved to the match's cell
centre and the session's engine re-predicts after it (one correction). If the polygon ends before the last
ground-truth vertex, the annotator inserts the next one (one correction); if it runs past the last one, the
annotator cuts it there (one correction).

Clicks to quality, the annotator that acts in the editor, is :mod:`polyrnn.evaluation.clicks`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyrnn.data.sequence import chessboard

__all__ = ["chessboard", "threshold_protocol"]


def _walk(polygon: np.ndarray, crop: Any) -> list[tuple[int, int]]:
    """(grid token, vertex index) of a polygon's vertices as the annotator walks them: a vertex in the cell of
    one before it is passed over (the grid polygon has one vertex per cell)."""
    tokens = [int(t) for t in crop.cells_to_tokens(crop.image_to_cells(np.asarray(polygon).reshape(-1, 2)))]
    out, seen = [], set()
    for i, t in enumerate(tokens):
        if t not in seen:
            out.append((t, i))
            seen.add(t)
    return out


def threshold_protocol(session: Any, gt_tokens: list[int], threshold: int) -> tuple[np.ndarray, int]:
    """The paper's simulated annotator (see the module docstring) acting through a
    :class:`~polyrnn.session.BoxSession`, the editor's own session: a vertex farther than ``threshold`` cells
    from its ground-truth match is moved to the match's cell centre (the session's engine re-predicts after
    it); when the polygon ends early the next ground-truth vertex is inserted; when it runs past the last one
    the rest is deleted (one correction). Returns (final polygon (N, 2) image pixels, corrections)."""
    crop = session.encoding.crop
    d = crop.grid_size

    def centre(token: int) -> tuple[float, float]:
        x, y = crop.cells_to_image(crop.tokens_to_cells(np.array([token], dtype=np.int64)))[0]
        return float(x), float(y)

    walk = _walk(session.polygon, crop)
    start = min(range(len(gt_tokens)), key=lambda i: (chessboard(gt_tokens[i], walk[0][0], d), i))
    gt = gt_tokens[start:] + gt_tokens[:start]
    corrections = 0
    for k in range(len(gt)):
        walk = _walk(session.polygon, crop)
        if k >= len(walk):  # the polygon ended early: the annotator adds the next vertex after the last
            session.insert(len(session.polygon) - 1, centre(gt[k]))
            corrections += 1
        elif chessboard(walk[k][0], gt[k], d) > threshold:
            session.move(walk[k][1], centre(gt[k]))
            corrections += 1
    walk = _walk(session.polygon, crop)
    if len(walk) > len(gt) and len(gt) >= 3:  # ran past the last vertex: cut it there (one correction)
        cut = walk[len(gt)][1]
        while len(session.polygon) > max(cut, 3):
            session.delete(len(session.polygon) - 1)
        corrections += 1
    return session.polygon.copy(), corrections
