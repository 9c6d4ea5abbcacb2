"""Cityscapes ``gtFine`` polygon JSON, with the 8 instance classes of the Polygon-RNN paper.

Cityscapes draws objects in depth order: a later polygon occludes earlier ones. Each instance keeps
its full polygon for the record and the later polygons as ``occluders``; its visible parts (the
polygon minus the occluders, via shapely) become ``polygons`` and its box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from polyrnn.data.common import box_of, check_box, parse_polygon, read_json
from polyrnn.data.instance import DataError, Dataset, Instance, Skip
from polyrnn.formats.base import Format

CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def _image_for(json_path: Path) -> Path:
    """gtFine/<split>/<city>/<stem>_gtFine_polygons.json ->
    leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png"""
    name = json_path.name.replace("_gtFine_polygons.json", "_leftImg8bit.png")
    parts = list(json_path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "gtFine":
            parts[i] = "leftImg8bit"
            break
    return Path(*parts[:-1]) / name


def _visible_parts(poly: np.ndarray, occluders: list[np.ndarray]) -> list[np.ndarray]:
    shape = shapely.make_valid(Polygon(poly))
    if occluders:
        shape = shape.difference(shapely.union_all([shapely.make_valid(Polygon(o)) for o in occluders]))
    pieces = [g for g in getattr(shape, "geoms", [shape]) if isinstance(g, Polygon) and g.area >= 1.0]
    pieces.sort(key=lambda g: -g.area)
    return [np.asarray(g.exterior.coords, dtype=np.float64)[:-1] for g in pieces]


def read_cityscapes_file(
    path: Path, skipped: list[Skip], include_crowd: bool = True
) -> tuple[list[Instance], bool]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise DataError(f"{path}: not a Cityscapes polygon file (field 'objects' missing)")
    try:
        size = (int(data["imgWidth"]), int(data["imgHeight"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: fields 'imgWidth' and 'imgHeight' are required ({e})") from e
    image = _image_for(path)
    if not image.is_file():
        skipped.append(Skip(f"{path}", f"image '{image}' not found"))
        return [], False
    polys: list[np.ndarray | None] = []
    for i, obj in enumerate(data["objects"]):
        p = obj.get("polygon") if isinstance(obj, dict) else None
        polys.append(parse_polygon(p, f"{path}:objects[{i}].polygon", skipped))
    out = []
    for i, obj in enumerate(data["objects"]):
        label = str(obj.get("label", "")) if isinstance(obj, dict) else ""
        crowd = label.endswith("group")
        base = label[: -len("group")] if crowd else label
        poly = polys[i]
        if base not in CITYSCAPES_CLASSES or poly is None:
            continue
        occluders = [p for p in polys[i + 1 :] if p is not None]
        visible = _visible_parts(poly, occluders)
        where = f"{path}:objects[{i}]"
        if not visible:
            skipped.append(Skip(where, "fully occluded by later objects"))
            continue
        box = check_box(box_of(visible), size, where, skipped)
        if box is None:
            continue
        out.append(
            Instance(
                image_path=image,
                image_size=size,
                class_name=base,
                box=box,
                polygons=visible,
                iscrowd=crowd,
                occluders=occluders,
                source=f"{path.name}:objects[{i}]",
            )
        )
    return out, True


def read_cityscapes(root: Path | str) -> Dataset:
    """Read every ``*_gtFine_polygons.json`` under ``root`` (a ``gtFine`` folder, a split or a city)."""
    root = Path(root)
    files = sorted(root.rglob("*_gtFine_polygons.json")) if root.is_dir() else [root]
    if not files:
        raise DataError(f"{root}: no '*_gtFine_polygons.json' files found")
    skipped: list[Skip] = []
    instances: list[Instance] = []
    n_images = 0
    for f in files:
        try:
            found, ok = read_cityscapes_file(f, skipped)
        except DataError as e:
            skipped.append(Skip(str(f), str(e).split(": ", 1)[-1]))
            continue
        n_images += int(ok)
        instances.extend(found)
    return Dataset(instances, images=n_images, skipped=skipped, format="cityscapes", root=str(root))


FORMAT = Format("cityscapes", "Cityscapes", read=read_cityscapes)
