"""Mask folders, the format of interactive-segmentation benchmarks (GrabCut, Berkeley).

One image and one mask per object with the same stem: ``images/<stem>.jpg`` + ``masks/<stem>.png``
(also accepted: ``data_GT/``, ``gt/``, or both in one folder with the mask named ``<stem>_mask.png`` /
``<stem>.png`` beside ``<stem>.jpg``). Mask pixels: 0 = background, 128 = ignore band, any other
non-zero = object.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from polyrnn.data.common import IMAGE_SUFFIXES, box_of, check_box, image_size
from polyrnn.data.instance import DataError, Dataset, Instance, Skip
from polyrnn.formats.base import Format
from polyrnn.geometry import mask_to_polygons

MASK_DIRS = ("masks", "data_GT", "gt", "GT", "boundary_GT")
IMAGE_DIRS = ("images", "data", "imgs")


def _pairs(root: Path) -> list[tuple[Path, Path | None]]:
    mask_dir = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    out: list[tuple[Path, Path | None]] = []
    for img in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if img.stem.endswith("_mask"):
            continue
        cands = []
        if mask_dir is not None:
            cands += [mask_dir / f"{img.stem}{s}" for s in (".png", ".bmp", ".gif", ".tif")]
        cands += [img.parent / f"{img.stem}_mask.png"]
        if mask_dir is None and img.suffix.lower() != ".png":
            cands.append(img.with_suffix(".png"))
        out.append((img, next((c for c in cands if c.is_file()), None)))
    return out


def read_masks(root: Path | str) -> Dataset:
    """Read a mask folder; an image without a mask, or an unreadable/empty mask, is skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    skipped: list[Skip] = []
    instances: list[Instance] = []
    pairs = _pairs(root)
    if not pairs:
        raise DataError(f"{root}: no images found")
    n_images = 0
    for img, mask_path in pairs:
        if mask_path is None:
            skipped.append(Skip(str(img), "no mask with the same stem"))
            continue
        try:
            size = image_size(img)
            with Image.open(mask_path) as im:
                m = np.asarray(im.convert("L"))
        except (DataError, OSError) as e:
            skipped.append(Skip(str(mask_path), f"cannot read ({e})"))
            continue
        n_images += 1
        if (m.shape[1], m.shape[0]) != size:
            skipped.append(
                Skip(str(mask_path), f"mask is {m.shape[1]}x{m.shape[0]}, image is {size[0]}x{size[1]}")
            )
            continue
        obj = (m > 0) & (m != 128)
        polygons = mask_to_polygons(obj)
        if not polygons:
            skipped.append(Skip(str(mask_path), "mask has no object pixels"))
            continue
        box = check_box(box_of(polygons), size, str(mask_path), skipped)
        if box is None:
            continue
        instances.append(
            Instance(
                image_path=img,
                image_size=size,
                class_name="object",
                box=box,
                polygons=polygons,
                mask_path=mask_path,
                source=mask_path.name,
            )
        )
    return Dataset(instances, images=n_images, skipped=skipped, format="masks", root=str(root))


FORMAT = Format("masks", "masks", read=read_masks)
