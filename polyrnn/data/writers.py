"""Writers: instances -> COCO instances JSON, YOLO segmentation, LabelMe JSON (what ``polyrnn export``
and the tool's export buttons produce). Every file is written atomically."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from polyrnn.data.instance import DataError, Instance
from polyrnn.data.labelme import read_labelme
from polyrnn.io import atomic_write_json, atomic_write_text

FORMATS = ("coco", "yolo", "labelme")


def _flat_name(image: Path, root: Path) -> str:
    try:
        rel = image.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(image.name)
    return "__".join(rel.parts)


def _by_image(instances: Sequence[Instance]) -> dict[Path, list[Instance]]:
    out: dict[Path, list[Instance]] = {}
    for inst in instances:
        out.setdefault(Path(inst.image_path), []).append(inst)
    return out


def _clip(part: np.ndarray, w: int, h: int) -> np.ndarray:
    """A polygon's vertices clipped to the image, like its box."""
    return np.clip(np.asarray(part, dtype=np.float64).reshape(-1, 2), 0.0, [w, h])


def write_coco(
    instances: Sequence[Instance], out_json: Path, *, root: Path, classes: Sequence[str]
) -> dict[str, Any]:
    """A COCO instances JSON; ``file_name`` is each image's path relative to ``root``, the image folder
    (a trainer is pointed at it), and polygons are clipped to the image like the boxes."""
    cat_ids = {c: i + 1 for i, c in enumerate(classes)}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for img_id, (image, insts) in enumerate(sorted(_by_image(instances).items()), start=1):
        w, h = insts[0].image_size
        images.append(
            {
                "id": img_id,
                "file_name": Path(os.path.relpath(image.resolve(), root.resolve())).as_posix(),
                "width": int(w),
                "height": int(h),
            }
        )
        for inst in insts:
            segs = [_clip(p, w, h).reshape(-1).round(2).tolist() for p in inst.polygons]
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
                }
            )
    doc = {
        "info": {"description": "exported by polyrnn"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": c, "supercategory": ""} for c, i in cat_ids.items()],
    }
    atomic_write_json(out_json, doc)
    return doc


def write_yolo(instances: Sequence[Instance], out: Path, *, root: Path, classes: Sequence[str]) -> None:
    """YOLO segmentation: ``images/``, ``labels/`` (one line per polygon part: class, then x y pairs
    normalised to 0–1) and ``data.yaml`` with the class names."""
    import yaml

    ids = {c: i for i, c in enumerate(classes)}
    (out / "images").mkdir(parents=True, exist_ok=True)
    for image, insts in sorted(_by_image(instances).items()):
        name = _flat_name(image, root)
        shutil.copyfile(image, out / "images" / name)
        w, h = insts[0].image_size
        lines = []
        for inst in insts:
            for part in inst.polygons:
                xy = np.clip(np.asarray(part, dtype=np.float64) / (w, h), 0.0, 1.0).reshape(-1)
                lines.append(" ".join([str(ids[inst.class_name]), *(f"{v:.6f}" for v in xy)]))
        atomic_write_text(out / "labels" / (Path(name).stem + ".txt"), "\n".join(lines) + "\n")
    atomic_write_text(
        out / "data.yaml",
        yaml.safe_dump(
            {"path": ".", "train": "images", "val": "images", "names": dict(enumerate(classes))},
            sort_keys=False,
        ),
    )


def write_labelme(instances: Sequence[Instance], out: Path, *, root: Path) -> None:
    """LabelMe: each image copied into ``out`` with its JSON beside it (parts of one object share a
    ``group_id``)."""
    out.mkdir(parents=True, exist_ok=True)
    for image, insts in sorted(_by_image(instances).items()):
        name = _flat_name(image, root)
        shutil.copyfile(image, out / name)
        shapes = []
        for gid, inst in enumerate(insts):
            for part in inst.polygons:
                shapes.append(
                    {
                        "label": inst.class_name,
                        "points": np.asarray(part).round(2).tolist(),
                        "group_id": gid if len(inst.polygons) > 1 else None,
                        "description": "",
                        "shape_type": "polygon",
                        "flags": {},
                    }
                )
        w, h = insts[0].image_size
        atomic_write_json(
            out / (Path(name).stem + ".json"),
            {
                "version": "5.4.1",
                "flags": {},
                "shapes": shapes,
                "imagePath": name,
                "imageData": None,
                "imageHeight": int(h),
                "imageWidth": int(w),
            },
        )


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
    relative to ``image_root`` (default ``src``)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown export format '{fmt}' (one of {', '.join(FORMATS)})")
    src, out = Path(src), Path(out)
    ds = read_labelme(src, exclude=[*exclude, out])
    classes = list(dict.fromkeys([*labels, *sorted({i.class_name for i in ds.instances})]))
    if fmt == "coco":
        path = out / "annotations.json"
        write_coco(ds.instances, path, root=Path(image_root or src), classes=classes)
    elif fmt == "yolo":
        path = out
        write_yolo(ds.instances, out, root=src, classes=classes)
    else:
        path = out
        write_labelme(ds.instances, out, root=src)
    return {
        "path": path,
        "instances": len(ds.instances),
        "images": len(_by_image(ds.instances)),
        "skipped": ds.skipped,
    }
