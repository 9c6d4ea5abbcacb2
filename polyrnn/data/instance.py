"""The one record every reader produces: an object instance, and the result of reading a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from polyrnn.geometry import largest_part, rasterize

__all__ = ["MAX_PIXELS", "DataError", "ImageTooLarge", "Dataset", "Instance", "Skip", "load_image"]


class DataError(ValueError):
    """A dataset file that cannot be used at all; the message names the file and the field."""


class ImageTooLarge(DataError):
    """An image with more pixels than :data:`MAX_PIXELS` (refused from its header, never decoded)."""


@dataclass(frozen=True)
class Skip:
    """Something a reader left out, and why (``where`` names the file and the field)."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True, eq=False)
class Instance:
    """One object to be traced.

    Attributes:
        image_path: the image file.
        image_size: (width, height) in pixels.
        class_name: category name.
        box: (x, y, w, h) in image pixels (continuous frame, see ``polyrnn.geometry``).
        polygons: the object's parts, each a float (N, 2) array of (x, y) image pixels.
        iscrowd: a crowd region (readers drop these unless asked to keep them).
        ignore_polygons: regions (image pixels) that IoU must not count, e.g. LabelMe ``__ignore__``.
        occluders: polygons drawn over this object (Cityscapes: later objects occlude earlier ones);
            they are cut out of :meth:`mask`.
        mask_path: for mask datasets, the mask file: non-zero = object, 128 = ignore band. When set, it
            is the exact ground truth and ``polygons`` are traced from it.
        source: "file:field" of the annotation, for messages and exports.
        score: a model's confidence in 0..1 for predicted instances (written by the exports), else None.
        source_id: for a predicted instance, the id of the input annotation whose box it traced (a COCO
            annotation id), which an output in the input's format points back to; else None.
    """

    image_path: Path
    image_size: tuple[int, int]
    class_name: str
    box: tuple[float, float, float, float]
    polygons: list[np.ndarray]
    iscrowd: bool = False
    ignore_polygons: list[np.ndarray] = field(default_factory=list)
    occluders: list[np.ndarray] = field(default_factory=list)
    mask_path: Path | None = None
    source: str = ""
    score: float | None = None
    source_id: int | str | None = None

    @property
    def width(self) -> int:
        return self.image_size[0]

    @property
    def height(self) -> int:
        return self.image_size[1]

    @property
    def long_side(self) -> float:
        """The box's longer side in pixels (what ``min_size`` filters on)."""
        return max(self.box[2], self.box[3])

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.box
        return (x, y, x + w, y + h)

    def largest_polygon(self) -> np.ndarray:
        """The largest part: the one polygon Polygon-RNN models for this object."""
        return largest_part(self.polygons)

    def mask(self) -> np.ndarray:
        """The full ground-truth mask (all parts, occluders cut out), bool (height, width)."""
        if self.mask_path is not None:
            m = _read_mask_file(self.mask_path, self.image_size)
            return (m > 0) & (m != 128)
        mask = rasterize(self.polygons, self.height, self.width)
        if self.occluders:
            mask &= ~rasterize(self.occluders, self.height, self.width)
        return mask

    def ignore_mask(self) -> np.ndarray | None:
        """Pixels IoU must not count, bool (height, width), or None when there are none."""
        if self.mask_path is not None:
            m = _read_mask_file(self.mask_path, self.image_size)
            band = m == 128
            return band if band.any() else None
        if self.ignore_polygons:
            return rasterize(self.ignore_polygons, self.height, self.width)
        return None


def _read_mask_file(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L"))
    except OSError as e:
        raise DataError(f"{path}: cannot read mask ({e})") from e
    if (m.shape[1], m.shape[0]) != tuple(size):
        raise DataError(f"{path}: mask is {m.shape[1]}x{m.shape[0]}, image is {size[0]}x{size[1]}")
    return m


MAX_PIXELS = 64_000_000  # the largest image decoded (8000 x 8000): a bigger one is refused, not decoded


def load_image(path: Path | str | BinaryIO, *, name: str | None = None) -> np.ndarray:
    """Read an image (a file, or a file object) as an RGB uint8 array of shape (H, W, 3); EXIF orientation
    is not applied (annotations of COCO-style datasets refer to the stored pixel grid). An image over
    :data:`MAX_PIXELS` pixels is refused from its header, before decoding (a decompression bomb), with a
    :class:`DataError` naming it (``name``, default the path)."""
    name = name or str(path)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageTooLarge(
                    f"{name}: {im.width}x{im.height} pixels, more than polyrnn decodes ({MAX_PIXELS:,})"
                )
            return np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{name}: more pixels than polyrnn decodes ({MAX_PIXELS:,}) ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"{name}: cannot read image ({e.__class__.__name__}: {e})") from e


@dataclass
class Dataset:
    """What a reader returns: the instances, the number of images seen, and what was skipped."""

    instances: list[Instance]
    images: int
    skipped: list[Skip] = field(default_factory=list)
    format: str = ""
    root: str = ""

    def __len__(self) -> int:
        return len(self.instances)

    def filtered(
        self, *, include_crowd: bool = False, min_size: float = 0.0, classes: set[str] | None = None
    ) -> Dataset:
        """A new dataset keeping instances that pass the filters.

        Args:
            include_crowd: keep crowd regions.
            min_size: keep instances whose box's longer side is at least this many pixels.
            classes: keep only these class names (None keeps all).
        """
        skipped = list(self.skipped)
        keep = []
        for i in self.instances:
            if i.iscrowd and not include_crowd:
                skipped.append(Skip(i.source or str(i.image_path), "crowd region"))
            elif i.long_side >= min_size and (classes is None or i.class_name in classes):
                keep.append(i)
        return Dataset(keep, self.images, skipped, self.format, self.root)
