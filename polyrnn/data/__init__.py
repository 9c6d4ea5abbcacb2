"""Dataset readers (one record type, :class:`Instance`), the crop and the grid sequences."""

from __future__ import annotations

from pathlib import Path

from polyrnn.data.cityscapes import read_cityscapes
from polyrnn.data.coco import read_coco
from polyrnn.data.common import IMAGE_SUFFIXES
from polyrnn.data.instance import DataError, Dataset, Instance, Skip, load_image
from polyrnn.data.labelme import read_labelme
from polyrnn.data.masks import MASK_DIRS, read_masks
from polyrnn.data.yolo import read_yolo

FORMATS = ("coco", "yolo", "labelme", "cityscapes", "masks")

__all__ = [
    "FORMATS",
    "DataError",
    "Dataset",
    "Instance",
    "Skip",
    "detect_format",
    "load_dataset",
    "load_image",
    "read_cityscapes",
    "read_coco",
    "read_labelme",
    "read_masks",
    "read_yolo",
]


def coco_json_for(path: Path) -> tuple[Path, Path | None] | None:
    """(COCO JSON, image folder or None to search) for a folder: ``instances.json`` inside it, a single
    ``annotations/instances_*.json``, or for an image folder ``X/val2017`` the sibling
    ``X/annotations/instances_val2017.json``."""
    if (path / "instances.json").is_file():
        return path / "instances.json", None
    sibling = path.parent / "annotations" / f"instances_{path.name}.json"
    if sibling.is_file():
        return sibling, path
    ann = sorted((path / "annotations").glob("instances_*.json")) if (path / "annotations").is_dir() else []
    return (ann[0], None) if len(ann) == 1 else None


def detect_format(path: Path | str) -> str:
    """Guess a dataset's format from its layout; :class:`DataError` when nothing fits."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".json":
            if path.name.endswith("_gtFine_polygons.json"):
                return "cityscapes"
            return "coco"
        raise DataError(f"{path}: cannot tell the format of this file (give --format)")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "yolo"
    if coco_json_for(path) is not None:
        return "coco"
    if next(path.rglob("*_gtFine_polygons.json"), None) is not None:
        return "cityscapes"
    if any((path / d).is_dir() for d in MASK_DIRS):
        return "masks"
    jsons = list(path.glob("*.json"))
    if jsons:
        return "labelme"
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        return "masks"
    raise DataError(f"{path}: cannot tell the dataset format (give --format, one of {', '.join(FORMATS)})")


def load_dataset(
    path: Path | str,
    format: str | None = None,
    *,
    include_crowd: bool = False,
    min_size: float = 0.0,
    classes: set[str] | None = None,
) -> Dataset:
    """Read a dataset in any supported format and apply the filters.

    Args:
        path: a COCO JSON, or a dataset folder (COCO image folder with a sibling ``annotations/``,
            YOLO root, LabelMe folder, Cityscapes ``gtFine`` folder, mask folder).
        format: one of :data:`FORMATS`; detected from the layout when None.
        include_crowd: keep crowd regions (skipped by default).
        min_size: keep instances whose box's longer side is at least this many pixels.
        classes: keep only these class names.
    """
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}' (one of {', '.join(FORMATS)})")
    if fmt == "coco":
        if path.is_dir():
            found = coco_json_for(path)
            if found is None:
                raise DataError(f"{path}: no COCO instances JSON found for this folder")
            ds = read_coco(found[0], image_dir=found[1])
        else:
            ds = read_coco(path)
    elif fmt == "yolo":
        ds = read_yolo(path)
    elif fmt == "labelme":
        ds = read_labelme(path)
    elif fmt == "cityscapes":
        ds = read_cityscapes(path)
    else:
        ds = read_masks(path)
    return ds.filtered(include_crowd=include_crowd, min_size=min_size, classes=classes)


def load_datasets(paths: list[str | Path], format: str | None = None, **filters) -> Dataset:  # type: ignore[no-untyped-def]
    """Several sources combined into one dataset (e.g. coco128-seg + coco-mini/train2017 + coco-mval)."""
    parts = [load_dataset(p, format, **filters) for p in paths]
    out = Dataset([], 0, [], format="+".join(p.format for p in parts), root="+".join(str(p) for p in paths))
    for p in parts:
        out.instances.extend(p.instances)
        out.images += p.images
        out.skipped.extend(p.skipped)
    return out
