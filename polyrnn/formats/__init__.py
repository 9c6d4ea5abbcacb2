"""Annotation formats: one file each (its polygon reader, box reader and writer together) and one table,
:data:`FORMATS`. Adding a format, or an export to one, is one file and one line here; the editor's export
menu, ``polyrnn export --to``, ``predict --dataset`` and ``--format`` options read the table.

Dispatchers: :func:`load_dataset` (polygons), :func:`read_boxes` (boxes to pre-annotate), :func:`write`
and :func:`export_folder` (the editor's LabelMe folder as any format).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyrnn.data.common import IMAGE_SUFFIXES
from polyrnn.data.instance import DataError, Dataset, Instance, Skip
from polyrnn.formats import cityscapes, coco, cvat, labelme, labelstudio, masks, yolo
from polyrnn.formats.base import BoxObject, BoxSet, Format, ImageBoxes, WriteOptions, by_image, inside
from polyrnn.formats.coco import coco_json_for
from polyrnn.formats.masks import MASK_DIRS

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        coco.FORMAT,
        yolo.FORMAT,
        labelme.FORMAT,
        labelstudio.FORMAT,
        cvat.FORMAT,
        cityscapes.FORMAT,
        masks.FORMAT,
    )
}
DATASET_FORMATS = tuple(n for n, f in FORMATS.items() if f.read is not None)  # polygons: train, evaluate
BOX_FORMATS = tuple(n for n, f in FORMATS.items() if f.read_boxes is not None)  # predict --dataset
EXPORTS = tuple(n for n, f in FORMATS.items() if f.write is not None)  # export, predict outputs

__all__ = [
    "BOX_FORMATS",
    "DATASET_FORMATS",
    "EXPORTS",
    "FORMATS",
    "BoxObject",
    "BoxSet",
    "Format",
    "ImageBoxes",
    "WriteOptions",
    "detect_box_format",
    "detect_format",
    "export_folder",
    "load_dataset",
    "load_datasets",
    "read_boxes",
    "write",
]


# --- polygons ------------------------------------------------------------------------------------------
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
    raise DataError(
        f"{path}: cannot tell the dataset format (give --format, one of {', '.join(DATASET_FORMATS)})"
    )


def load_dataset(
    path: Path | str,
    format: str | None = None,
    *,
    include_crowd: bool = False,
    min_size: float = 0.0,
    classes: set[str] | None = None,
) -> Dataset:
    """Read a dataset in any format of :data:`DATASET_FORMATS` and apply the filters.

    Args:
        path: a COCO JSON, or a dataset folder (COCO image folder with a sibling ``annotations/``,
            YOLO root, LabelMe folder, Cityscapes ``gtFine`` folder, mask folder).
        format: one of :data:`DATASET_FORMATS`; detected from the layout when None.
        include_crowd: keep crowd regions (skipped by default).
        min_size: keep instances whose box's longer side is at least this many pixels.
        classes: keep only these class names.
    """
    path = Path(path)
    fmt = format or detect_format(path)
    reader = FORMATS[fmt].read if fmt in FORMATS else None
    if reader is None:
        raise DataError(f"unknown dataset format '{fmt}' (one of {', '.join(DATASET_FORMATS)})")
    return reader(path).filtered(include_crowd=include_crowd, min_size=min_size, classes=classes)


def load_datasets(paths: list[str | Path], format: str | None = None, **filters) -> Dataset:  # type: ignore[no-untyped-def]
    """Several sources combined into one dataset (e.g. coco128-seg + coco-mini/train2017 + coco-mval)."""
    parts = [load_dataset(p, format, **filters) for p in paths]
    out = Dataset([], 0, [], format="+".join(p.format for p in parts), root="+".join(str(p) for p in paths))
    for p in parts:
        out.instances.extend(p.instances)
        out.images += p.images
        out.skipped.extend(p.skipped)
    return out


# --- boxes ---------------------------------------------------------------------------------------------
def detect_box_format(path: Path) -> str:
    """Guess the format of a box file or folder; :class:`DataError` when nothing fits."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".xml":
            return "cvat"
        if path.suffix.lower() == ".json":
            head = path.read_text(encoding="utf-8", errors="replace")[:4096].lstrip()
            return "labelstudio" if head.startswith("[") else "coco"
        raise DataError(
            f"{path}: cannot tell the box format (give --format, one of {', '.join(BOX_FORMATS)})"
        )
    fmt = detect_format(path)
    if FORMATS[fmt].read_boxes is None:
        raise DataError(
            f"{path}: {fmt} datasets hold no boxes (give --format, one of {', '.join(BOX_FORMATS)})"
        )
    return fmt


def read_boxes(
    path: Path | str,
    format: str | None = None,
    *,
    image_dir: Path | str | None = None,
    allow_outside: bool = False,
) -> BoxSet:
    """Read boxes in any of :data:`BOX_FORMATS` (detected when ``format`` is None).

    Args:
        path: a COCO JSON or a COCO image folder (``X/val2017`` with ``X/annotations/``), a YOLO root, a
            LabelMe folder, a Label Studio JSON export, a CVAT XML file.
        image_dir: where the images are, for the formats that name them relative to a folder (COCO, Label
            Studio, CVAT).
        allow_outside: keep images whose file lies outside the image root (an absolute or ``../`` file
            name, a link leading out); by default they are skipped with their reason.
    """
    boxes = _read_boxes(path, format, image_dir=image_dir)
    return boxes if allow_outside else confine(boxes)


def confine(boxes: BoxSet) -> BoxSet:
    """``boxes`` without the images that resolve outside ``boxes.image_root`` (each one skipped with its
    reason): a box file must not make polyrnn read ``/etc/passwd`` or ``../other-project/x.jpg``."""
    kept: list[ImageBoxes] = []
    for entry in boxes.images:
        if inside(entry.path, boxes.image_root):
            kept.append(entry)
        else:
            boxes.skipped.append(
                Skip(
                    entry.key, f"the image lies outside {boxes.image_root} (--allow-outside-images reads it)"
                )
            )
    boxes.images = kept
    return boxes


def _read_boxes(
    path: Path | str, format: str | None = None, *, image_dir: Path | str | None = None
) -> BoxSet:
    path = Path(path)
    fmt = format or detect_box_format(path)
    reader = FORMATS[fmt].read_boxes if fmt in FORMATS else None
    if reader is None:
        raise DataError(f"unknown box format '{fmt}' (one of {', '.join(BOX_FORMATS)})")
    return reader(path, Path(image_dir) if image_dir is not None else None)


# --- writing -------------------------------------------------------------------------------------------
def write(fmt: str, instances: Sequence[Instance], out: Path, opts: WriteOptions) -> Path:
    """Write ``instances`` as ``fmt`` into the folder ``out``; returns the main file or folder written."""
    writer = FORMATS[fmt].write if fmt in FORMATS else None
    if writer is None:
        raise DataError(f"unknown export format '{fmt}' (one of {', '.join(EXPORTS)})")
    return writer(instances, Path(out), opts)


def export_folder(
    src: str | Path,
    fmt: str,
    out: str | Path,
    *,
    exclude: Sequence[Path] = (),
    labels: Sequence[str] = (),
    image_root: str | Path | None = None,
) -> dict[str, Any]:
    """Export a folder of LabelMe JSON files (what ``polyrnn serve`` saves) as ``fmt``. Class ids follow
    ``labels`` (the tool's label list) and then any other label in sorted order; COCO ``file_name`` is
    relative to ``image_root`` (default ``src``). Only images under ``image_root`` are exported: a file whose
    ``imagePath`` leads elsewhere (absolute, ``../``, a link out) is skipped, and so is a file superseded by
    another naming the same image; ``skipped`` says which and why."""
    if fmt not in EXPORTS:
        raise DataError(f"unknown export format '{fmt}' (one of {', '.join(EXPORTS)})")
    src, out = Path(src), Path(out)
    image_root = Path(image_root or src)
    ds = labelme.read_labelme(src, exclude=[*exclude, out], image_root=image_root)
    classes = list(dict.fromkeys([*labels, *sorted({i.class_name for i in ds.instances})]))
    path = write(fmt, ds.instances, out, WriteOptions(root=image_root, classes=classes))
    return {
        "path": path,
        "instances": len(ds.instances),
        "images": len(by_image(ds.instances)),
        "skipped": ds.skipped,
    }
