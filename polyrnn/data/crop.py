"""The paper's crop, and every coordinate mapping between image, crop and grid.

Frames (all continuous, x then y; see ``polyrnn.geometry``):

* image: pixels of the full image.
* crop: pixels of the ``crop_size`` x ``crop_size`` network input (224 by default).
* grid: units of output cells, 0..``grid_size`` (28 by default); cell (col c, row r) is the unit
  square [c, c+1) x [r, r+1) and its *token* is ``r * grid_size + c``.

A :class:`CropBox` is a square window of the image, ``side`` pixels wide with its top-left corner at
(``x0``, ``y0``); corner and side are whole pixels so the crop is an exact pixel window, resized with
OpenCV (area interpolation when shrinking), and the mapping image -> crop is exactly
``(xy - (x0, y0)) * crop_size / side``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from polyrnn.config import INFERENCE


@dataclass(frozen=True)
class CropBox:
    """A square image window resized to ``crop_size`` and divided into ``grid_size``² cells.

    Attributes:
        x0, y0: top-left corner of the window in image pixels (may be negative: zero padding).
        side: window side in image pixels (>= 1).
        crop_size: network input side in pixels.
        grid_size: output grid side in cells (D).
    """

    x0: int
    y0: int
    side: int
    crop_size: int = 224
    grid_size: int = 28

    @classmethod
    def around(
        cls,
        box: tuple[float, float, float, float],
        *,
        context: float = INFERENCE.context,
        crop_size: int = 224,
        grid_size: int = 28,
    ) -> CropBox:
        """The paper's window: the box's long side enlarged by ``context`` (0.15 = 15 %), as a square
        centred on the box.

        Args:
            box: (x, y, w, h) in image pixels.
            context: relative enlargement of the long side (0.10–0.20 random when training).
        """
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 or h > 0):
            raise ValueError(f"box {box} has no extent")
        side = max(1, int(round(max(w, h) * (1.0 + context))))
        cx, cy = x + w / 2.0, y + h / 2.0
        return cls(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side, crop_size, grid_size)

    @classmethod
    def centred(
        cls, at: tuple[float, float] | np.ndarray, side: float, *, crop_size: int = 224, grid_size: int = 28
    ) -> CropBox:
        """A square window ``side`` image pixels wide (rounded, at least 1) centred on ``at`` (x, y image
        pixels): the focus window around a correction, in training and at inference alike."""
        s = max(1, int(round(side)))
        return cls(int(round(at[0] - s / 2)), int(round(at[1] - s / 2)), s, crop_size, grid_size)

    # --- scales -----------------------------------------------------------------------------------
    @property
    def pixels_per_crop(self) -> float:
        """Image pixels per crop pixel."""
        return self.side / self.crop_size

    @property
    def cell(self) -> float:
        """Crop pixels per grid cell."""
        return self.crop_size / self.grid_size

    # --- point mappings ((N, 2) float arrays) ------------------------------------------------------
    def image_to_crop(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64) - (self.x0, self.y0)) / self.pixels_per_crop

    def crop_to_image(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) * self.pixels_per_crop + (self.x0, self.y0)

    def image_to_map(self, xy: np.ndarray, size: int) -> np.ndarray:
        """Image pixels -> pixels of a ``size`` x ``size`` map over the window: (N, 2) float."""
        return self.image_to_crop(np.asarray(xy, dtype=np.float64).reshape(-1, 2)) * (size / self.crop_size)

    def crop_to_grid(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) / self.cell

    def grid_to_crop(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) * self.cell

    def image_to_grid(self, xy: np.ndarray) -> np.ndarray:
        return self.crop_to_grid(self.image_to_crop(xy))

    def grid_to_image(self, xy: np.ndarray) -> np.ndarray:
        return self.crop_to_image(self.grid_to_crop(xy))

    # --- cells and tokens --------------------------------------------------------------------------
    def image_to_cells(self, xy: np.ndarray) -> np.ndarray:
        """Integer (col, row) of the cell holding each point, clipped to the grid: (N, 2) int64."""
        g = np.floor(self.image_to_grid(xy)).astype(np.int64)
        return np.clip(g, 0, self.grid_size - 1)

    def cells_to_image(self, cells: np.ndarray) -> np.ndarray:
        """Cell centres in image pixels: (N, 2) float."""
        return self.grid_to_image(np.asarray(cells, dtype=np.float64).reshape(-1, 2) + 0.5)

    def cells_to_tokens(self, cells: np.ndarray) -> np.ndarray:
        c = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        return c[:, 1] * self.grid_size + c[:, 0]

    def tokens_to_cells(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.int64).reshape(-1)
        return np.stack([t % self.grid_size, t // self.grid_size], axis=1)

    # --- pixels ------------------------------------------------------------------------------------
    def crop_image(self, image: np.ndarray) -> np.ndarray:
        """Cut the window out of an (H, W, C) or (H, W) image, zero padding outside it, and resize to
        (crop_size, crop_size[, C]) with the same dtype."""
        h, w = image.shape[:2]
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        window = np.zeros((self.side, self.side, *image.shape[2:]), dtype=image.dtype)
        sx0, sy0, sx1, sy1 = max(self.x0, 0), max(self.y0, 0), min(x1, w), min(y1, h)
        if sx1 > sx0 and sy1 > sy0:
            window[sy0 - self.y0 : sy1 - self.y0, sx0 - self.x0 : sx1 - self.x0] = image[sy0:sy1, sx0:sx1]
        if self.side == self.crop_size:
            return window
        interp = cv2.INTER_AREA if self.side > self.crop_size else cv2.INTER_LINEAR
        return cv2.resize(window, (self.crop_size, self.crop_size), interpolation=interp)

    def flipped(self, image_width: int) -> CropBox:
        """The same window in the horizontally flipped image (x -> image_width - x)."""
        return CropBox(
            image_width - (self.x0 + self.side), self.y0, self.side, self.crop_size, self.grid_size
        )
