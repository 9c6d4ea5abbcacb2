"""Validation shared by the readers: polygons, boxes and JSON files, with messages naming file and field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polyrnn.data.instance import DataError, Skip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_json(path: Path) -> Any:
    """Parse a JSON file; an unreadable or malformed file is a :class:`DataError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def parse_polygon(values: Any, where: str, skipped: list[Skip]) -> np.ndarray | None:
    """Turn [x1, y1, x2, y2, ...] or [[x, y], ...] into a float (N, 2) array, or record why not."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        skipped.append(Skip(where, "polygon is not a list of numbers"))
        return None
    if arr.ndim == 1:
        if arr.size % 2:
            skipped.append(Skip(where, f"polygon has an odd number of coordinates ({arr.size})"))
            return None
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        skipped.append(Skip(where, f"polygon has shape {arr.shape}, expected (N, 2)"))
        return None
    if not np.isfinite(arr).all():
        skipped.append(Skip(where, "polygon has non-finite coordinates"))
        return None
    if len(arr) < 3:
        skipped.append(Skip(where, f"polygon has {len(arr)} points, at least 3 needed"))
        return None
    return arr


def box_of(polygons: list[np.ndarray]) -> tuple[float, float, float, float]:
    """Tight (x, y, w, h) box around polygon parts."""
    pts = np.concatenate(polygons, axis=0)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def check_box(
    box: tuple[float, float, float, float], size: tuple[int, int], where: str, skipped: list[Skip]
) -> tuple[float, float, float, float] | None:
    """Validate a box against the image size; a box partly outside is clipped, one wholly outside or
    empty is skipped with its reason."""
    x, y, w, h = box
    width, height = size
    if not all(np.isfinite([x, y, w, h])):
        skipped.append(Skip(where, f"box {box} is not finite"))
        return None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        skipped.append(
            Skip(where, f"box {tuple(round(v, 1) for v in box)} is outside the {width}x{height} image")
        )
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def relative_name(path: Path | str, root: Path | str) -> str:
    """``path`` relative to ``root`` as a POSIX string, by the names as given: a link inside ``root`` keeps
    its own name and is never followed to ``../../<where it leads>``. Where the names do not lead under
    ``root`` but the resolved ones do (``root`` given through a link), the resolved ones; else ``../`` steps.
    How exports name images (COCO ``file_name``, LabelMe ``imagePath``)."""
    lexical = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()
    if not lexical.startswith("../") and lexical != "..":
        return lexical
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except (ValueError, OSError, RuntimeError):
        return lexical


def relative_key(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (:func:`relative_name`; its file name when it lies
    elsewhere): how images are named in shards and Label Studio URLs."""
    name = relative_name(path, root)
    return path.name if name.startswith("../") else name


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the image header, or :class:`DataError` naming the file."""
    try:
        with Image.open(path) as im:
            return (int(im.width), int(im.height))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e


def find_images(folder: Path) -> list[Path]:
    """Image files under a folder, recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
