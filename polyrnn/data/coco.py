"""COCO instances JSON: polygon segmentations; non-crowd RLE masks traced to polygons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from polyrnn.data.common import check_box, parse_polygon, read_json
from polyrnn.data.instance import DataError, Dataset, Instance, Skip
from polyrnn.geometry import mask_to_polygons


def image_dir_candidates(json_path: Path) -> list[Path]:
    """Where COCO images usually live relative to the annotation file."""
    here = json_path.parent
    out = [here / "images", here]
    stem = json_path.stem  # instances_val2017 -> val2017
    if stem.startswith("instances_"):
        split = stem[len("instances_") :]
        out = [here.parent / split, here / split, here.parent / "images" / split, *out]
    return out


def coco_categories(data: dict, json_path: Path) -> dict[int, str]:
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        try:
            cats[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{json_path}: categories[{i}] needs 'id' and 'name' ({e})") from e
    return cats


def _images(
    data: dict, json_path: Path, dirs: list[Path], skipped: list[Skip]
) -> dict[int, tuple[Path, tuple[int, int]]]:
    """image id -> (file, (width, height)) for the images whose file is found."""
    images: dict[int, tuple[Path, tuple[int, int]]] = {}
    for i, im in enumerate(data["images"]):
        where = f"{json_path}:images[{i}]"
        try:
            name, size, im_id = str(im["file_name"]), (int(im["width"]), int(im["height"])), int(im["id"])
        except (KeyError, TypeError, ValueError) as e:
            skipped.append(Skip(where, f"needs 'id', 'file_name', 'width', 'height' ({e})"))
            continue
        path = next((d / name for d in dirs if (d / name).is_file()), None)
        if path is None:
            skipped.append(Skip(where, f"image file '{name}' not found in {', '.join(map(str, dirs))}"))
            continue
        images[im_id] = (path, size)
    return images


def _segmentation(
    seg: object, size: tuple[int, int], where: str, skipped: list[Skip]
) -> list[np.ndarray] | None:
    """The polygons of an annotation's ``segmentation`` (polygon list, or RLE traced); None (with the reason
    in ``skipped``) when it is unusable."""
    polygons: list[np.ndarray] = []
    if isinstance(seg, list):
        for j, part in enumerate(seg):
            p = parse_polygon(part, f"{where}.segmentation[{j}]", skipped)
            if p is not None:
                polygons.append(p)
    elif isinstance(seg, dict) and "counts" in seg:
        try:
            rle = (
                seg if not isinstance(seg["counts"], list) else mask_utils.frPyObjects(seg, size[1], size[0])
            )
            polygons = mask_to_polygons(mask_utils.decode(rle).astype(bool))
        except Exception as e:  # pycocotools raises bare Exceptions on bad RLE
            skipped.append(Skip(where + ".segmentation", f"bad RLE ({e})"))
            return None
    else:
        skipped.append(Skip(where + ".segmentation", "missing or neither polygons nor RLE"))
        return None
    if not polygons:
        skipped.append(Skip(where + ".segmentation", "no usable polygon"))
        return None
    return polygons


def _bbox(ann: dict, size: tuple[int, int], where: str, skipped: list[Skip]) -> tuple[float, ...] | None:
    bbox = ann.get("bbox")
    try:
        box = tuple(float(v) for v in bbox) if bbox is not None else None
    except (TypeError, ValueError):
        box = None
    if box is None or len(box) != 4:
        skipped.append(Skip(where + ".bbox", f"bbox {bbox!r} is not [x, y, w, h]"))
        return None
    return check_box(box, size, where + ".bbox", skipped)  # type: ignore[arg-type]


def read_coco(json_path: Path | str, image_dir: Path | str | None = None) -> Dataset:
    """Read a COCO instances file.

    Args:
        json_path: the annotation JSON (``instances_*.json``).
        image_dir: folder holding the images; found next to the JSON when not given
            (``../<split>``, ``images/`` or the JSON's folder).

    Crowd annotations are returned with ``iscrowd=True`` (filter them with ``Dataset.filtered``); a
    non-crowd RLE mask is traced into polygons. Annotations with a bad polygon, bbox or image are
    skipped with their reason; a file that is not a COCO instances file raises :class:`DataError`.
    """
    json_path = Path(json_path)
    data = read_json(json_path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{json_path}: not a COCO instances file (field '{key}' missing or not a list)")
    skipped: list[Skip] = []
    cats = coco_categories(data, json_path)
    dirs = [Path(image_dir)] if image_dir is not None else image_dir_candidates(json_path)
    images = _images(data, json_path, dirs, skipped)
    instances: list[Instance] = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{json_path}:annotations[{i}]"
        if not isinstance(ann, dict):
            skipped.append(Skip(where, "annotation is not an object"))
            continue
        image_id, cat_id = ann.get("image_id"), ann.get("category_id")
        if image_id not in images:
            skipped.append(Skip(where + ".image_id", f"image {image_id} is missing or unusable"))
            continue
        if cat_id not in cats:
            skipped.append(Skip(where + ".category_id", f"unknown category {cat_id}"))
            continue
        path, size = images[image_id]
        polygons = _segmentation(ann.get("segmentation"), size, where, skipped)
        box = _bbox(ann, size, where, skipped) if polygons is not None else None
        if polygons is None or box is None:
            continue
        instances.append(
            Instance(
                image_path=path,
                image_size=size,
                class_name=cats[cat_id],
                box=box,  # type: ignore[arg-type]
                polygons=polygons,
                iscrowd=bool(ann.get("iscrowd", 0)),
                source=f"{json_path.name}:annotations[{i}] id={ann.get('id')}",
            )
        )
    return Dataset(instances, images=len(images), skipped=skipped, format="coco", root=str(json_path))
