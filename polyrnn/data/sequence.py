"""Polygon <-> target sequence on the D x D output grid (Castrejón et al. 2017, Sec. 3.1).

A target sequence is an int64 array of tokens: ``r * D + c`` for the cell (col c, row r), then the
end-of-sequence token ``D * D``. Its polygon is positively oriented (see ``polyrnn.geometry``) and
revisits no cell.
"""

from __future__ import annotations

import numpy as np

from polyrnn.data.crop import CropBox
from polyrnn.geometry import orient, signed_area


def chessboard(a: int, b: int, d: int) -> int:
    """Chessboard distance, in cells, between grid tokens ``a`` and ``b`` (``r * d + c``)."""
    return int(max(abs(a % d - b % d), abs(a // d - b // d)))


def _dedupe_cyclic(cells: np.ndarray) -> np.ndarray:
    """Drop consecutive repeats, including the last == first wrap-around."""
    if len(cells) == 0:
        return cells
    keep = np.any(cells != np.roll(cells, 1, axis=0), axis=1)
    if not keep.any():  # every vertex in one cell
        return cells[:1]
    return cells[keep]


def _drop_collinear(cells: np.ndarray) -> np.ndarray:
    """Remove vertices lying on the straight line through their neighbours (made by quantisation),
    repeating until none is left; also removes spikes that turn straight back."""
    c = cells
    while len(c) > 3:
        prev, nxt = np.roll(c, 1, axis=0), np.roll(c, -1, axis=0)
        a, b = c - prev, nxt - c
        cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
        straight = cross == 0
        if not straight.any():
            break
        # Remove one vertex per run so that neighbours are re-tested against new neighbours.
        idx = int(np.flatnonzero(straight)[0])
        c = np.delete(c, idx, axis=0)
    return c


def _drop_revisits(cells: np.ndarray) -> np.ndarray:
    """Keep only the first visit of every cell (the decoder may not revisit a cell either)."""
    _, first = np.unique(cells, axis=0, return_index=True)
    return cells[np.sort(first)]


def _cap_length(cells: np.ndarray, max_len: int) -> np.ndarray:
    """Shorten to at most ``max_len`` vertices, dropping the vertex whose removal changes the polygon
    least (smallest triangle area, Visvalingam) until it fits."""
    c = [tuple(v) for v in cells]
    while len(c) > max_len:
        arr = np.asarray(c, dtype=np.float64)
        prev, nxt = np.roll(arr, 1, axis=0), np.roll(arr, -1, axis=0)
        area = np.abs(
            (arr[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1])
            - (nxt[:, 0] - prev[:, 0]) * (arr[:, 1] - prev[:, 1])
        )
        del c[int(np.argmin(area))]
    return np.asarray(c, dtype=np.int64).reshape(-1, 2)


def polygon_to_cells(vertices_grid: np.ndarray, grid_size: int, *, max_len: int = 70) -> np.ndarray:
    """Quantise a polygon given in grid coordinates to its cell sequence.

    Steps: floor to cells (clipped to the grid), drop repeated cells, drop collinear vertices made by
    quantisation, keep the first visit of each cell, cap the length, orient positively.

    Args:
        vertices_grid: (N, 2) float polygon in grid units.
        grid_size: D.
        max_len: at most this many vertices (the paper used about 70 steps).

    Returns:
        (M, 2) int64 (col, row) cells, M may be < 3 for objects smaller than a few cells.
    """
    cells = np.clip(np.floor(np.asarray(vertices_grid, dtype=np.float64)), 0, grid_size - 1).astype(np.int64)
    cells = _dedupe_cyclic(cells)
    cells = _drop_collinear(cells)
    cells = _drop_revisits(cells)
    cells = _drop_collinear(_dedupe_cyclic(cells))
    if len(cells) > max_len:
        cells = _cap_length(cells, max_len)
    if len(cells) >= 3 and signed_area(cells) < 0:
        cells = orient(cells)
    return cells


def rotate_start(cells: np.ndarray, start: int) -> np.ndarray:
    """The same closed polygon starting at vertex ``start``."""
    return np.roll(cells, -int(start), axis=0)


def canonical_start(cells: np.ndarray) -> int:
    """A deterministic first vertex: the top-most cell, left-most among ties (used at evaluation)."""
    return int(np.lexsort((cells[:, 0], cells[:, 1]))[0])


def polygon_to_tokens(
    vertices_image: np.ndarray,
    crop: CropBox,
    *,
    max_len: int = 70,
    start: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Target tokens for an image polygon: cells of the crop's grid, then the end token.

    Args:
        vertices_image: (N, 2) polygon in image pixels.
        crop: the crop window and grid.
        max_len: vertex cap (the end token comes on top).
        start: index of the first vertex; random when ``rng`` is given, else :func:`canonical_start`.

    Returns:
        (M + 1,) int64 tokens; M = 0 when the polygon degenerates to fewer than 3 cells.
    """
    cells = polygon_to_cells(crop.image_to_grid(vertices_image), crop.grid_size, max_len=max_len)
    eos = crop.grid_size * crop.grid_size
    if len(cells) < 3:
        return np.array([eos], dtype=np.int64)
    if start is None:
        start = int(rng.integers(len(cells))) if rng is not None else canonical_start(cells)
    cells = rotate_start(cells, start)
    return np.concatenate([crop.cells_to_tokens(cells), [eos]]).astype(np.int64)


def tokens_to_polygon(tokens: np.ndarray, crop: CropBox) -> np.ndarray:
    """Tokens (end token and anything after it ignored) -> polygon of cell centres in image pixels."""
    t: np.ndarray = np.asarray(tokens, dtype=np.int64).reshape(-1)
    eos = crop.grid_size * crop.grid_size
    stop = np.flatnonzero(t >= eos)
    t = t[: stop[0]] if len(stop) else t
    return crop.cells_to_image(crop.tokens_to_cells(t))


def smooth_targets(
    tokens: np.ndarray, grid_size: int, *, radius: float = 2.0, sigma: float = 1.0
) -> np.ndarray:
    """Smoothed target distributions for the cross-entropy (the paper's label smoothing on the grid).

    Each vertex token spreads its mass over the cells within Euclidean distance ``radius`` of the true
    cell, with Gaussian weights exp(-d² / 2σ²), normalised to 1; the end token is one-hot.

    Returns:
        (T, D*D + 1) float32.
    """
    d2 = grid_size * grid_size
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    out = np.zeros((len(t), d2 + 1), dtype=np.float32)
    ys, xs = np.mgrid[0:grid_size, 0:grid_size]
    for i, tok in enumerate(t):
        if tok >= d2:
            out[i, d2] = 1.0
            continue
        r, c = divmod(int(tok), grid_size)
        dist2 = (xs - c) ** 2 + (ys - r) ** 2
        w = np.where(dist2 <= radius * radius, np.exp(-dist2 / (2.0 * sigma * sigma)), 0.0)
        out[i, :d2] = (w / w.sum()).reshape(-1)
    return out
