"""Boxes to pre-annotate, read from what detectors and labelling tools write.

Every reader returns a :class:`BoxSet`: one :class:`ImageBoxes` per image (its file, a stable key, the boxes
with their class names) and what it skipped, with the file and field. Boxes are kept as the file gives them
(pixels, or fractions of the image for YOLO and for Label Studio files without the image size) and turned into
pixels where the image is opened (:meth:`ImageBoxes.pixel_boxes`), so reading a million boxes never opens an
image.

Formats (``BOX_FORMATS``):

* ``coco``: an instances JSON; each non-crowd annotation's ``bbox`` [x, y, w, h] (segmentation optional).
* ``yolo``: a folder with ``images/`` and ``labels/`` (``class cx cy w h`` normalised; segment lines give
  their polygon's box); class names from ``data.yaml``.
* ``labelme``: a folder of LabelMe JSON files; ``rectangle`` shapes.
* ``labelstudio``: a Label Studio JSON export (a list of tasks); ``rectanglelabels`` results of the
  annotations (or of the predictions when a task has no annotation), percent coordinates.
* ``cvat``: CVAT for images XML 1.1; ``<box>`` elements.
"""

from __future__ import annotations

import math
import re
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyrnn.data.common import box_of, check_box, find_images, parse_polygon, read_json, relative_key
from polyrnn.data.instance import DataError, Skip

BOX_FORMATS = ("coco", "yolo", "labelme", "labelstudio", "cvat")

Box = tuple[float, float, float, float]


@dataclass
class BoxObject:
    """One box: (x1, y1, x2, y2) in pixels, or in fractions of the image width/height when its
    :class:`ImageBoxes` is ``normalized``; ``ref`` names where it came from (file and field or id)."""

    box: Box
    class_name: str
    ref: str


@dataclass
class ImageBoxes:
    """The boxes of one image.

    Attributes:
        key: the image's path relative to the dataset's image root (POSIX); unique, and what shards split on.
        path: the image file.
        objects: its boxes.
        size: (width, height) when the box file gives it, else None (read from the image).
        normalized: boxes are fractions of the image size (YOLO; Label Studio without the size).
        task: for Label Studio input, the task's ``data`` (kept so predictions attach to the same image).
    """

    key: str
    path: Path
    objects: list[BoxObject] = field(default_factory=list)
    size: tuple[int, int] | None = None
    normalized: bool = False
    task: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what travels to Ray workers)."""
        return {
            "key": self.key,
            "path": str(self.path),
            "objects": [{"box": list(o.box), "class_name": o.class_name, "ref": o.ref} for o in self.objects],
            "size": list(self.size) if self.size is not None else None,
            "normalized": self.normalized,
            "task": self.task,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageBoxes:
        return cls(
            key=d["key"],
            path=Path(d["path"]),
            objects=[BoxObject(tuple(o["box"]), o["class_name"], o["ref"]) for o in d["objects"]],  # type: ignore[arg-type]
            size=tuple(d["size"]) if d["size"] is not None else None,  # type: ignore[arg-type]
            normalized=bool(d["normalized"]),
            task=d["task"],
        )

    def pixel_boxes(self, size: tuple[int, int]) -> tuple[list[tuple[BoxObject, Box]], list[Skip]]:
        """(object, pixel box x1, y1, x2, y2 clipped to the image) for each usable box, and the skipped
        ones."""
        w, h = size
        out: list[tuple[BoxObject, Box]] = []
        skipped: list[Skip] = []
        for obj in self.objects:
            x1, y1, x2, y2 = obj.box
            if self.normalized:
                x1, y1, x2, y2 = x1 * w, y1 * h, x2 * w, y2 * h
            clipped = check_box((x1, y1, x2 - x1, y2 - y1), size, obj.ref, skipped)
            if clipped is not None:
                x, y, bw, bh = clipped
                out.append((obj, (x, y, x + bw, y + bh)))
        return out, skipped


@dataclass
class BoxSet:
    """What a box reader returns: images (sorted by key), class names in id order, what was skipped."""

    images: list[ImageBoxes]
    classes: list[str]
    skipped: list[Skip] = field(default_factory=list)
    format: str = ""
    image_root: Path = Path(".")

    @property
    def boxes(self) -> int:
        return sum(len(i.objects) for i in self.images)


def _finish(
    images: dict[str, ImageBoxes], classes: list[str], skipped: list[Skip], fmt: str, root: Path
) -> BoxSet:
    names = list(
        dict.fromkeys([*classes, *sorted({o.class_name for i in images.values() for o in i.objects})])
    )
    return BoxSet([images[k] for k in sorted(images)], names, skipped, fmt, root)


# --- COCO ------------------------------------------------------------------------------------------------
def read_coco_boxes(json_path: Path, image_dir: Path | None = None) -> BoxSet:
    """Boxes of a COCO instances JSON (``bbox``; crowd annotations skipped). Images are looked for in
    ``image_dir``, or beside the JSON as :func:`polyrnn.data.read_coco` does."""
    from polyrnn.data.coco import coco_categories, image_dir_candidates

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
        by_id[im_id] = ImageBoxes(key=Path(name).as_posix(), path=found / name, size=size)
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
            img.objects.append(BoxObject(box, cats[cat], ref))
    images = {b.key: b for b in by_id.values()}
    return _finish(images, [cats[k] for k in sorted(cats)], skipped, "coco", root)


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


# --- YOLO ------------------------------------------------------------------------------------------------
def read_yolo_boxes(root: Path) -> BoxSet:
    """Boxes of a YOLO folder (``images/``, ``labels/``): ``class cx cy w h`` lines (normalised); a segment
    line ``class x1 y1 ...`` gives its polygon's box. Class names from ``data.yaml`` (else COCO's 80)."""
    from polyrnn.data.yolo import yolo_class_names, yolo_label_path

    images_root, labels_root = root / "images", root / "labels"
    if not images_root.is_dir() or not labels_root.is_dir():
        raise DataError(f"{root}: a YOLO dataset needs folders 'images/' and 'labels/'")
    names = yolo_class_names(root)
    skipped: list[Skip] = []
    images: dict[str, ImageBoxes] = {}
    for image in find_images(images_root):
        entry = ImageBoxes(key=relative_key(image, images_root), path=image, normalized=True)
        images[entry.key] = entry
        label = yolo_label_path(image, images_root, labels_root)
        if label.is_file():
            entry.objects = _yolo_lines(label, names, skipped)
    return _finish(images, names, skipped, "yolo", images_root)


def _yolo_lines(label: Path, names: list[str], skipped: list[Skip]) -> list[BoxObject]:
    from polyrnn.data.yolo import yolo_lines

    out = []
    for where, ln, cls, values in yolo_lines(label, names, skipped):
        if len(values) == 4:
            cx, cy, w, h = values
            if not all(math.isfinite(v) for v in values) or w <= 0 or h <= 0:
                skipped.append(Skip(where, "box needs finite cx cy and positive w h"))
                continue
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            poly = parse_polygon(values, where, skipped)
            if poly is None:
                continue
            x, y, w, h = box_of([poly])
            box = (x, y, x + w, y + h)
        out.append(BoxObject(box, names[cls], f"{label.name}:line {ln}"))
    return out


# --- LabelMe ---------------------------------------------------------------------------------------------
def read_labelme_boxes(folder: Path) -> BoxSet:
    """``rectangle`` shapes of the LabelMe JSON files in ``folder`` (recursively); other shapes are left."""
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
        image = path.parent / str(data.get("imagePath") or path.with_suffix(".jpg").name)
        if not image.is_file():
            skipped.append(Skip(f"{path}:imagePath", f"image file '{image.name}' not found"))
            continue
        try:
            size: tuple[int, int] | None = (int(data["imageWidth"]), int(data["imageHeight"]))
        except (KeyError, TypeError, ValueError):
            size = None
        entry = ImageBoxes(key=relative_key(image, folder), path=image, size=size)
        for j, shape in enumerate(data["shapes"]):
            if not isinstance(shape, dict) or shape.get("shape_type") != "rectangle":
                continue
            where = f"{path}:shapes[{j}]"
            try:
                pts = np.asarray(shape.get("points"), dtype=np.float64).reshape(2, 2)
            except (TypeError, ValueError):
                skipped.append(Skip(where + ".points", "rectangle needs two corner points"))
                continue
            (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
            if not np.isfinite(pts).all() or x2 <= x1 or y2 <= y1:
                skipped.append(Skip(where + ".points", "rectangle is empty or not finite"))
                continue
            box = (float(x1), float(y1), float(x2), float(y2))
            entry.objects.append(BoxObject(box, str(shape.get("label", "")), f"{path.name}:shapes[{j}]"))
        images[entry.key] = entry
    return _finish(images, [], skipped, "labelme", folder)


# --- Label Studio ----------------------------------------------------------------------------------------
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded files with 8 hex digits


def label_studio_image(url: str, image_dir: Path) -> Path | None:
    """The local file for a task's image URL: ``/data/local-files/?d=REL`` (REL under ``image_dir``, or
    any suffix of it), ``/data/upload/N/abcd1234-name.jpg`` (``name.jpg``), a file path or a URL's
    file name, looked for in ``image_dir``; None when none is there. Only files under ``image_dir`` are ever
    returned (an absolute path elsewhere, ``../``, a link leading out: None)."""
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    rel = query.get("d", [urllib.parse.unquote(parsed.path)])[0]
    from polyrnn.data.labelme import inside

    if "\0" in rel or len(rel) > 4096:
        return None
    parts = [p for p in Path(rel).parts if p not in ("/", "..", ".")]
    cands = [image_dir / Path(*parts[k:]) for k in range(len(parts))] if parts else []
    name = Path(rel).name
    if name:
        cands += [image_dir / name, image_dir / _UPLOAD_PREFIX.sub("", name)]
    if Path(rel).is_absolute():
        cands.insert(0, Path(rel))
    # only files under image_dir, links followed: a task must not make polyrnn read /etc/passwd
    return next((c for c in cands if inside(c, image_dir) and c.is_file()), None)


def ls_results(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The results to read boxes from: the first annotation that was not cancelled, else the first
    prediction."""
    for group in ("annotations", "predictions"):
        for a in task.get(group) or []:
            if isinstance(a, dict) and not a.get("was_cancelled") and isinstance(a.get("result"), list):
                return [r for r in a["result"] if isinstance(r, dict)]
    return []


def read_label_studio_boxes(json_path: Path, image_dir: Path | None = None) -> BoxSet:
    """``rectanglelabels`` of a Label Studio JSON export (a list of tasks). Each task's image (``data``'s
    first value, or its ``image`` key) is found in ``image_dir`` (default: the JSON's folder) by
    :func:`label_studio_image`; the task's ``data`` is kept for the predictions written back."""
    tasks = read_json(json_path)
    if not isinstance(tasks, list):
        raise DataError(f"{json_path}: not a Label Studio JSON export (expected a list of tasks)")
    image_dir = image_dir or json_path.parent
    skipped: list[Skip] = []
    images: dict[str, ImageBoxes] = {}
    for t, task in enumerate(tasks):
        where = f"{json_path}:[{t}]"
        data = task.get("data") if isinstance(task, dict) else None
        url = (
            (data.get("image") or next(iter(data.values()), None))
            if isinstance(data, dict) and data
            else None
        )
        if not isinstance(url, str):
            skipped.append(Skip(where + ".data", "task has no image URL"))
            continue
        path = label_studio_image(url, image_dir)
        if path is None:
            skipped.append(Skip(where + ".data", f"image '{url}' not found under {image_dir}"))
            continue
        entry = ImageBoxes(key=relative_key(path, image_dir), path=path, normalized=True, task=dict(data))  # type: ignore[arg-type]
        if entry.key in images:
            skipped.append(Skip(where, f"a second task for image {entry.key} (the first is used)"))
            continue
        for r, res in enumerate(ls_results(task)):
            obj = ls_box(res, f"{where}.result[{r}]", skipped)
            if obj is not None:
                entry.objects.append(obj)
        images[entry.key] = entry
    return _finish(images, [], skipped, "labelstudio", image_dir)


def ls_box(res: dict[str, Any], where: str, skipped: list[Skip]) -> BoxObject | None:
    if res.get("type") != "rectanglelabels":
        return None
    v = res.get("value")
    try:
        if not isinstance(v, dict):
            raise TypeError("value is not an object")
        x, y, w, h = (float(v[k]) / 100.0 for k in ("x", "y", "width", "height"))
        rotation = float(v.get("rotation") or 0.0)
    except (KeyError, TypeError, ValueError, OverflowError):
        skipped.append(Skip(where + ".value", "rectangle needs numbers x, y, width, height (percent)"))
        return None
    if rotation != 0.0:
        skipped.append(Skip(where + ".value.rotation", "rotated rectangles are not supported"))
        return None
    if not all(math.isfinite(q) for q in (x, y, w, h)) or w <= 0 or h <= 0:
        skipped.append(Skip(where + ".value", "rectangle is empty or not finite"))
        return None
    labels = v.get("rectanglelabels")
    label = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else ""
    return BoxObject(
        (x, y, x + w, y + h), label, where.rsplit(":", 1)[-1] + f" id={str(res.get('id'))[:100]}"
    )


# --- CVAT ------------------------------------------------------------------------------------------------
def read_cvat_boxes(xml_path: Path, image_dir: Path | None = None) -> BoxSet:
    """``<box>`` elements of a CVAT for images XML 1.1 file; ``<image name=...>`` relative to ``image_dir``
    (default: the XML's folder, then its ``images/``); labels in ``<meta>`` order."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{xml_path}: not readable CVAT XML ({e})") from e
    if root.tag != "annotations":
        raise DataError(f"{xml_path}: not CVAT for images XML (root element is <{root.tag}>)")
    dirs = [image_dir] if image_dir is not None else [xml_path.parent, xml_path.parent / "images"]
    classes = [str(e.text) for e in root.iterfind(".//meta//labels/label/name")]
    skipped: list[Skip] = []
    images: dict[str, ImageBoxes] = {}
    for i, el in enumerate(root.iterfind("image")):
        where = f"{xml_path}:image[{i}]"
        name = el.get("name", "")
        found = next((d for d in dirs if name and (d / name).is_file()), None)
        if found is None:
            skipped.append(Skip(where, f"image file '{name}' not found in {', '.join(map(str, dirs))}"))
            continue
        try:
            size: tuple[int, int] | None = (int(el.get("width", "")), int(el.get("height", "")))
        except ValueError:
            size = None
        entry = ImageBoxes(key=Path(name).as_posix(), path=found / name, size=size)
        for j, b in enumerate(el.iterfind("box")):
            try:
                box = tuple(float(b.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr"))
            except ValueError:
                skipped.append(Skip(f"{where}.box[{j}]", "needs numbers xtl, ytl, xbr, ybr"))
                continue
            if float(b.get("rotation") or 0) != 0:
                skipped.append(Skip(f"{where}.box[{j}]", "rotated boxes are not supported"))
                continue
            entry.objects.append(BoxObject(box, b.get("label", ""), f"{xml_path.name}:image[{i}].box[{j}]"))  # type: ignore[arg-type]
        images[entry.key] = entry
    return _finish(images, classes, skipped, "cvat", dirs[0])


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
    from polyrnn.data import detect_format

    fmt = detect_format(path)
    if fmt not in ("coco", "yolo", "labelme"):
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
    from polyrnn.data.labelme import inside

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
    from polyrnn.data import coco_json_for

    path = Path(path)
    fmt = format or detect_box_format(path)
    img_dir = Path(image_dir) if image_dir is not None else None
    if fmt == "coco":
        if path.is_dir():
            found = coco_json_for(path)
            if found is None:
                raise DataError(f"{path}: no COCO instances JSON found for this folder")
            return read_coco_boxes(found[0], img_dir or found[1])
        return read_coco_boxes(path, img_dir)
    if fmt == "yolo":
        return read_yolo_boxes(path)
    if fmt == "labelme":
        return read_labelme_boxes(path)
    if fmt == "labelstudio":
        return read_label_studio_boxes(path, img_dir)
    if fmt == "cvat":
        return read_cvat_boxes(path, img_dir)
    raise DataError(f"unknown box format '{fmt}' (one of {', '.join(BOX_FORMATS)})")
