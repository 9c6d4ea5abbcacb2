"""COCO instances JSON: polygon segmentations; non-crowd RLE masks traced to polygons."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from polyrnn.data.common import check_box, parse_polygon, read_json, relative_name
from polyrnn.data.instance import DataError, Dataset, Instance, Skip
from polyrnn.formats.base import (
    Box,
    BoxObject,
    BoxSet,
    Format,
    ImageBoxes,
    WriteOptions,
    by_image,
    clip,
    finish_boxes,
    place_image,
)
from polyrnn.geometry import mask_to_polygons
from polyrnn.io import atomic_write_json


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


# --- COCO ------------------------------------------------------------------------------------------------
def read_coco_boxes(json_path: Path, image_dir: Path | None = None) -> BoxSet:
    """Boxes of a COCO instances JSON (``bbox``; crowd annotations skipped). Images are looked for in
    ``image_dir``, or beside the JSON as :func:`polyrnn.data.read_coco` does."""
    from polyrnn.formats.coco import coco_categories, image_dir_candidates

    data = read_json(json_path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{json_path}: not a COCO instances file (field '{key}' missing or not a list)")
    cats = coco_categories(data, json_path)
    dirs = [image_dir] if image_dir is not None else image_dir_candidates(json_path)
    skipped: list[Skip] = []
    by_id: dict[int, ImageBoxes] = {}
    root = dirs[0]
    for i, im in enumerate(data["images"]):
        where = f"{json_path}:images[{i}]"
        try:
            name, im_id = str(im["file_name"]), int(im["id"])
            size = (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
        except (KeyError, TypeError, ValueError) as e:
            skipped.append(Skip(where, f"needs 'id' and 'file_name' ({e})"))
            continue
        found = next((d for d in dirs if (d / name).is_file()), None)
        if found is None:
            skipped.append(Skip(where, f"image file '{name}' not found in {', '.join(map(str, dirs))}"))
            continue
        root = found
        by_id[im_id] = ImageBoxes(key=Path(name).as_posix(), path=found / name, size=size, origin=dict(im))
    for i, ann in enumerate(data["annotations"]):
        where = f"{json_path}:annotations[{i}]"
        if not isinstance(ann, dict):
            skipped.append(Skip(where, "annotation is not an object"))
            continue
        if ann.get("iscrowd"):
            skipped.append(Skip(where, "crowd region"))
            continue
        img, cat = by_id.get(ann.get("image_id")), ann.get("category_id")  # type: ignore[arg-type]
        if img is None:
            skipped.append(Skip(where + ".image_id", f"image {ann.get('image_id')} is missing or unusable"))
            continue
        if cat not in cats:
            skipped.append(Skip(where + ".category_id", f"unknown category {cat}"))
            continue
        box = _xywh(ann.get("bbox"), where + ".bbox", skipped)
        if box is not None:
            ref = f"{json_path.name}:annotations[{i}] id={ann.get('id')}"
            ann_id = ann.get("id")
            ann_id = ann_id if isinstance(ann_id, int | str) and not isinstance(ann_id, bool) else None
            img.objects.append(BoxObject(box, cats[cat], ref, ann_id))
    images = {b.key: b for b in by_id.values()}
    boxes = finish_boxes(images, [cats[k] for k in sorted(cats)], skipped, "coco", root)
    boxes.origin = {"categories": [dict(c) for c in data["categories"]]}
    return boxes


def _xywh(value: Any, where: str, skipped: list[Skip]) -> Box | None:
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        skipped.append(Skip(where, f"{value!r} is not [x, y, w, h]"))
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        skipped.append(Skip(where, f"{value!r} is not a box with positive width and height"))
        return None
    return (x, y, x + w, y + h)


def write_coco(
    instances: Sequence[Instance],
    out_json: Path,
    *,
    root: Path,
    classes: Sequence[str],
    decimals: int = 2,
    origin: dict[str, Any] | None = None,
    origins: dict[Path, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A COCO instances JSON; ``file_name`` is each image's path relative to ``root``, the image folder
    (a trainer is pointed at it; links are not followed), and polygons are clipped to the image like the
    boxes and rounded to ``decimals`` (predictions keep 6: a mask's outline can run through pixel centres,
    where rounding to 1/100 px moves pixels in or out).

    When the boxes came from a COCO file (``origin``: its ``categories``; ``origins``: each image's own
    ``images`` entry), the output keeps that file's category ids, image ids, file names and sizes, and each
    annotation's ``source_id`` is the id of the annotation whose box it traced (:attr:`Instance.source_id`):
    the output lines up with the source, so ``COCO(source).loadRes`` and COCOeval take it. Classes and images
    the source lacks get ids after its largest."""
    source_cats = [c for c in (origin or {}).get("categories", []) if isinstance(c, dict)]
    cat_ids: dict[str, int] = {}
    for c in source_cats:
        cat_ids.setdefault(str(c.get("name")), int(c["id"]))
    next_cat = max(cat_ids.values(), default=0) + 1
    categories = [{**c} for c in source_cats]
    for name in [*classes, *sorted({i.class_name for i in instances} - set(classes))]:
        if name not in cat_ids:
            cat_ids[name] = next_cat
            categories.append({"id": next_cat, "name": name, "supercategory": ""})
            next_cat += 1
    origins = origins or {}
    next_image = max((int(o["id"]) for o in origins.values() if "id" in o), default=0) + 1
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image, insts in sorted(by_image(instances).items()):
        w, h = insts[0].image_size
        record = origins.get(image)
        if record is not None and "id" in record:
            img_id = int(record["id"])
            images.append({**record, "id": img_id, "width": int(w), "height": int(h)})
        else:
            img_id, next_image = next_image, next_image + 1
            images.append(
                {"id": img_id, "file_name": relative_name(image, root), "width": int(w), "height": int(h)}
            )
        for inst in insts:
            segs = [clip(p, w, h).reshape(-1).round(decimals).tolist() for p in inst.polygons]
            rle = mask_utils.merge(mask_utils.frPyObjects(segs, int(h), int(w)))
            x, y, bw, bh = inst.box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": cat_ids[inst.class_name],
                    "segmentation": segs,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [round(float(v), 2) for v in (x, y, bw, bh)],
                    "iscrowd": 0,
                    **({"score": round(float(inst.score), 4)} if inst.score is not None else {}),
                    **({"source_id": inst.source_id} if inst.source_id is not None else {}),
                }
            )
    doc = {
        "info": {"description": "exported by polyrnn"},
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
    atomic_write_json(out_json, doc)
    return doc


def write_coco_results(doc: dict[str, Any], out_json: Path) -> list[dict[str, Any]]:
    """The scored annotations of a :func:`write_coco` document as a COCO *results* file: a list of
    ``{image_id, category_id, segmentation (compressed RLE), bbox, score}`` (and ``source_id``), what
    ``COCO.loadRes`` and ``COCOeval(..., "segm")`` take as they are."""
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in doc["images"]}
    results: list[dict[str, Any]] = []
    for ann in doc["annotations"]:
        if "score" not in ann:
            continue
        h, w = sizes[ann["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "segmentation": rle,
                "bbox": ann["bbox"],
                "score": ann["score"],
                **({"source_id": ann["source_id"]} if "source_id" in ann else {}),
            }
        )
    atomic_write_json(out_json, results)
    return results


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


def _found(path: Path) -> tuple[Path, Path | None]:
    if not path.is_dir():
        return path, None
    found = coco_json_for(path)
    if found is None:
        raise DataError(f"{path}: no COCO instances JSON found for this folder")
    return found


def read(path: Path) -> Dataset:
    """A COCO instances JSON, or a folder holding one (see :func:`coco_json_for`)."""
    json_path, image_dir = _found(Path(path))
    return read_coco(json_path, image_dir=image_dir)


def read_boxes(path: Path, image_dir: Path | None) -> BoxSet:
    json_path, found_dir = _found(Path(path))
    return read_coco_boxes(json_path, image_dir or found_dir)


COCO_JSON = Path("annotations") / "instances_default.json"  # where a COCO output's JSON lies in its folder


def write(instances: Sequence[Instance], out: Path, opts: WriteOptions) -> Path:
    """The layout CVAT exports and datumaro and CVAT import as they are: ``out/annotations/
    instances_default.json`` (:data:`COCO_JSON`); with ``keep_images`` the images under
    ``out/images/default/<file_name>`` (hard links, else copies: datumaro refuses a symbolic link that leads
    out of the folder); for predictions (scored instances) also ``out/results.json``."""
    path = out / COCO_JSON
    origin, origins = opts.origins_for("coco")
    doc = write_coco(
        instances,
        path,
        root=opts.root,
        classes=opts.classes,
        decimals=opts.decimals or 2,
        origin=origin,
        origins=origins,
    )
    if opts.keep_images:
        for image, record in zip(sorted(by_image(instances)), doc["images"], strict=True):
            name = Path(str(record["file_name"]))
            if not name.is_absolute() and ".." not in name.parts:  # a source's "../x.jpg" gets no link
                dest = out / "images" / "default" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                place_image(image, dest, "hardlink")
    if any(i.score is not None for i in instances):
        write_coco_results(doc, out / "results.json")
    return path


FORMAT = Format("coco", "COCO", read=read, read_boxes=read_boxes, write=write)
