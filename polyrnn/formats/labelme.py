"""LabelMe JSON folders: one JSON beside each image; ``group_id`` joins parts of one object and
``__ignore__`` shapes mark regions IoU must not count."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyrnn.data.common import (
    box_of,
    check_box,
    image_size,
    parse_polygon,
    read_json,
    relative_key,
    relative_name,
)
from polyrnn.data.instance import DataError, Dataset, Instance, Skip
from polyrnn.formats.base import (
    BoxObject,
    BoxSet,
    Format,
    ImageBoxes,
    WriteOptions,
    by_image,
    finish_boxes,
    flat_names,
    inside,
)
from polyrnn.io import atomic_write_json

IGNORE_LABEL = "__ignore__"


def _rectangle(points: np.ndarray) -> np.ndarray:
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _region(shape: object, where: str, skipped: list[Skip]) -> tuple[str, np.ndarray] | None:
    """(label, (N, 2) points) of a polygon or rectangle shape; None (reason in ``skipped``) otherwise."""
    if not isinstance(shape, dict):
        skipped.append(Skip(where, "shape is not an object"))
        return None
    kind = shape.get("shape_type") or "polygon"
    label = str(shape.get("label", ""))
    if kind == "polygon":
        pts = parse_polygon(shape.get("points"), where + ".points", skipped)
        return None if pts is None else (label, pts)
    if kind != "rectangle":
        skipped.append(Skip(where + ".shape_type", f"'{kind}' is not a region (polygon or rectangle)"))
        return None
    try:
        raw = np.asarray(shape.get("points"), dtype=np.float64).reshape(-1, 2)
        if len(raw) == 2 and np.isfinite(raw).all():
            return label, _rectangle(raw)
    except (TypeError, ValueError):
        pass
    skipped.append(Skip(where + ".points", "rectangle needs two corner points"))
    return None


def labelme_image(path: Path, data: dict) -> Path:
    """The image a LabelMe document names: ``imagePath`` relative to the JSON's folder (labelme's own
    default, ``<stem>.jpg``, without one)."""
    return path.parent / str(data.get("imagePath") or path.with_suffix(".jpg").name)


def read_labelme_file(
    path: Path, skipped: list[Skip], *, data: object = None, image_root: Path | None = None
) -> tuple[list[Instance], bool]:
    """Instances of one LabelMe JSON (``data``: its parsed content, when already read); returns
    (instances, image_found). With ``image_root``, an image that resolves outside it (an absolute or
    ``../`` ``imagePath``, a link leading out) is never opened: the file is skipped with its reason."""
    data = read_json(path) if data is None else data
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(f"{path}: not a LabelMe file (field 'shapes' missing or not a list)")
    image_path = labelme_image(path, data)
    if image_root is not None and not inside(image_path, image_root):
        skipped.append(Skip(f"{path}:imagePath", f"'{data.get('imagePath')}' leads outside {image_root}"))
        return [], False
    if not image_path.is_file():
        skipped.append(Skip(f"{path}:imagePath", f"image file '{image_path.name}' not found"))
        return [], False
    try:
        size = (int(data["imageWidth"]), int(data["imageHeight"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        size = image_size(image_path)
    if not (0 < size[0] <= 10**6 and 0 < size[1] <= 10**6):
        size = image_size(image_path)

    groups: dict[tuple[str, object], list[np.ndarray]] = {}  # insertion-ordered: the file's order
    ignore: list[np.ndarray] = []
    for i, shape in enumerate(data["shapes"]):
        where = f"{path}:shapes[{i}]"
        region = _region(shape, where, skipped)
        if region is None:
            continue
        label, pts = region
        if label == IGNORE_LABEL:
            ignore.append(pts)
            continue
        gid = shape.get("group_id")
        try:
            hash(gid)
        except TypeError:
            gid = str(gid)
        groups.setdefault((label, gid if gid is not None else ("shape", i)), []).append(pts)

    out = []
    for key, parts in groups.items():
        box = check_box(box_of(parts), size, f"{path}:shapes label={key[0]}", skipped)
        if box is None:
            continue
        out.append(
            Instance(
                image_path=image_path,
                image_size=size,
                class_name=key[0],
                box=box,
                polygons=parts,
                ignore_polygons=list(ignore),
                source=f"{path.name}:{key[0]}",
            )
        )
    return out, True


def _preferred(files: list[Path], image: Path) -> Path:
    """Of several LabelMe files naming one image, the one that holds its annotations: ``<name>.json``
    (what ``polyrnn serve`` writes when two images share a stem), else ``<stem>.json``, else the newest."""
    for want in (image.name + ".json", image.stem + ".json"):
        for f in files:
            if f.name == want:
                return f
    return max(files, key=lambda f: f.stat().st_mtime_ns)


def _one_per_image(files: list[Path], root: Path | None, skipped: list[Skip]) -> dict[Path, object]:
    """The parsed files to read, one per image (the others skipped as superseded, see :func:`_preferred`);
    files whose image lies outside ``root`` are left to :func:`read_labelme_file` to refuse."""
    docs: dict[Path, object] = {}
    by_image: dict[Path, list[Path]] = {}
    for path in files:
        try:
            docs[path] = data = read_json(path)
        except DataError as e:
            skipped.append(Skip(str(path), str(e).split(": ", 1)[-1]))
            continue
        if isinstance(data, dict):
            image = labelme_image(path, data)
            if root is not None and not inside(image, root):
                continue
            try:
                by_image.setdefault(image.resolve(), []).append(path)
            except (OSError, RuntimeError):
                continue
    for image, named in by_image.items():
        if len(named) > 1:
            keep = _preferred(named, image)
            for f in named:
                if f != keep:
                    skipped.append(Skip(str(f), f"superseded by {keep.name} (both name {image.name})"))
                    docs.pop(f)
    return docs


def read_labelme(
    folder: Path | str, *, exclude: Sequence[Path | str] = (), image_root: Path | str | None = None
) -> Dataset:
    """Read every LabelMe JSON in a folder (recursively; not below the ``exclude`` folders). A malformed
    file is skipped with its reason so the rest of the folder is still usable. Each image is read from one
    file: where several name the same image, the others are skipped as superseded (see
    :func:`_preferred`). With ``image_root``, images outside it are skipped (see :func:`read_labelme_file`).
    """
    folder = Path(folder)
    skip_dirs = [Path(e).resolve() for e in exclude]
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of LabelMe JSON files")
    skipped: list[Skip] = []
    files = [
        f
        for f in sorted(folder.rglob("*.json"))
        if not any(d == f.resolve().parent or d in f.resolve().parents for d in skip_dirs)
    ]
    if not files:
        raise DataError(f"{folder}: no LabelMe .json files found")
    root = Path(image_root) if image_root is not None else None
    docs = _one_per_image(files, root, skipped)
    instances: list[Instance] = []
    n_images = 0
    for path, data in docs.items():
        try:
            found, ok = read_labelme_file(path, skipped, data=data, image_root=root)
        except DataError as e:
            skipped.append(Skip(str(path), str(e).split(": ", 1)[-1]))
            continue
        n_images += int(ok)
        instances.extend(found)
    return Dataset(instances, images=n_images, skipped=skipped, format="labelme", root=str(folder))


# --- LabelMe ---------------------------------------------------------------------------------------------
def read_labelme_boxes(folder: Path) -> BoxSet:
    """Boxes of the LabelMe JSON files in ``folder`` (recursively): each ``rectangle`` shape, and each
    ``polygon``'s bounds (parts sharing a ``group_id`` and label: their joint bounds), so a folder of finished
    polygons is traced again from their boxes (``ref`` says "polygon's box"). Other shapes (points, lines,
    circles) are skipped with their reason."""
    skipped: list[Skip] = []
    images: dict[str, ImageBoxes] = {}
    for path in sorted(folder.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # tool state (.polyrnn/) and hidden folders
        try:
            data = read_json(path)
        except DataError as e:
            skipped.append(Skip(str(path), str(e).split(": ", 1)[-1]))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            skipped.append(Skip(str(path), "not a LabelMe file (field 'shapes' missing or not a list)"))
            continue
        image = labelme_image(path, data)
        if not image.is_file():
            skipped.append(Skip(f"{path}:imagePath", f"image file '{image.name}' not found"))
            continue
        try:
            size: tuple[int, int] | None = (int(data["imageWidth"]), int(data["imageHeight"]))
        except (KeyError, TypeError, ValueError):
            size = None
        entry = ImageBoxes(key=relative_key(image, folder), path=image, size=size)
        entry.objects = _shape_boxes(path, data["shapes"], skipped)
        images[entry.key] = entry
    return finish_boxes(images, [], skipped, "labelme", folder)


def _shape_boxes(path: Path, shapes: list[Any], skipped: list[Skip]) -> list[BoxObject]:
    """The boxes of one file's shapes: rectangles as drawn, polygons (joined by ``group_id``) by bounds."""
    out: list[BoxObject] = []
    groups: dict[tuple[Any, str], int] = {}  # (group_id, label) -> index in out
    for j, shape in enumerate(shapes):
        where = f"{path}:shapes[{j}]"
        region = _region(shape, where, skipped)
        if region is None:
            continue
        label, pts = region
        (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
        if not np.isfinite(pts).all() or x2 <= x1 or y2 <= y1:
            skipped.append(Skip(where + ".points", "the shape is empty or not finite"))
            continue
        box = (float(x1), float(y1), float(x2), float(y2))
        polygon = (shape.get("shape_type") or "polygon") == "polygon"
        ref = f"{path.name}:shapes[{j}]" + (" (polygon's box)" if polygon else "")
        gid = shape.get("group_id")
        key = (gid, label)
        if polygon and isinstance(gid, int) and not isinstance(gid, bool) and key in groups:
            o = out[groups[key]]
            o.box = (min(o.box[0], x1), min(o.box[1], y1), max(o.box[2], x2), max(o.box[3], y2))
            o.ref += f"+shapes[{j}]"
            continue
        if polygon and isinstance(gid, int) and not isinstance(gid, bool):
            groups[key] = len(out)
        out.append(BoxObject(box, label, ref))
    return out


def write_labelme(
    instances: Sequence[Instance], out: Path, *, root: Path, images: str = "copy", decimals: int = 2
) -> None:
    """LabelMe: each image copied into ``out`` with its JSON beside it (parts of one object share a
    ``group_id``); with ``images="refer"`` the images stay where they are and ``imagePath`` leads to them
    relative to the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    groups = sorted(by_image(instances).items())
    names = flat_names([image for image, _ in groups], root)
    for image, insts in groups:
        name = names[image]
        if images == "refer":
            image_path = relative_name(image, out)
        else:
            shutil.copyfile(image, out / name)
            image_path = name
        shapes = []
        for gid, inst in enumerate(insts):
            for part in inst.polygons:
                shapes.append(
                    {
                        "label": inst.class_name,
                        "points": np.asarray(part).round(decimals).tolist(),
                        "group_id": gid if len(inst.polygons) > 1 else None,
                        "description": "",
                        "shape_type": "polygon",
                        "flags": {},
                        **({"score": round(float(inst.score), 4)} if inst.score is not None else {}),
                    }
                )
        w, h = insts[0].image_size
        atomic_write_json(
            out / (Path(name).stem + ".json"),
            {
                "version": "5.4.1",
                "flags": {},
                "shapes": shapes,
                "imagePath": image_path,
                "imageData": None,
                "imageHeight": int(h),
                "imageWidth": int(w),
            },
        )


def write(instances: Sequence[Instance], out: Path, opts: WriteOptions) -> Path:
    images = "refer" if opts.keep_images else "copy"
    write_labelme(instances, out, root=opts.root, images=images, decimals=opts.decimals or 2)
    return out


FORMAT = Format(
    "labelme",
    "LabelMe",
    read=read_labelme,
    read_boxes=lambda path, _: read_labelme_boxes(path),
    write=write,
)
