"""YOLO segmentation folders: ``images/...`` and ``labels/...`` with one object a line,
``class x1 y1 x2 y2 ...`` normalised to 0..1."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import yaml

from polyrnn.data.common import box_of, check_box, find_images, image_size, parse_polygon, relative_key
from polyrnn.data.instance import DataError, Dataset, Instance, Skip
from polyrnn.formats.base import (
    BoxObject,
    BoxSet,
    Format,
    ImageBoxes,
    WriteOptions,
    by_image,
    clip,
    finish_boxes,
    flat_names,
    place_image,
)
from polyrnn.io import atomic_write_text

COCO80 = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]


def yolo_class_names(root: Path) -> list[str]:
    """Names from ``data.yaml`` (list or {id: name}) when present, else the 80 COCO names."""
    for cand in (root / "data.yaml", root.parent / "data.yaml"):
        if cand.is_file():
            try:
                cfg = yaml.safe_load(cand.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise DataError(f"{cand}: malformed YAML ({e})") from e
            names = cfg.get("names") if isinstance(cfg, dict) else None
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise DataError(f"{cand}: field 'names' must be a list or a mapping")
    return list(COCO80)


def yolo_label_path(image: Path, images_root: Path, labels_root: Path) -> Path:
    return (labels_root / image.relative_to(images_root)).with_suffix(".txt")


def yolo_lines(
    label: Path, names: list[str], skipped: list[Skip]
) -> Iterator[tuple[str, int, int, list[float]]]:
    """(where, line number, class id, numbers) of each non-empty line of a label file whose class is known;
    the others are recorded in ``skipped``."""
    for ln, line in enumerate(label.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        where = f"{label}:line {ln}"
        fields = line.split()
        if not fields:
            continue
        try:
            cls, values = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            skipped.append(Skip(where, "expected 'class x1 y1 ...' (or 'class cx cy w h') with numbers"))
            continue
        if not 0 <= cls < len(names):
            skipped.append(Skip(where + " class", f"class id {cls} not in 0..{len(names) - 1}"))
            continue
        yield where, ln, cls, values


def _label_instances(
    label: Path, image: Path, size: tuple[int, int], names: list[str], skipped: list[Skip]
) -> list[Instance]:
    """The instances of one label file (``class x1 y1 x2 y2 ...`` per line, normalised)."""
    out: list[Instance] = []
    for where, ln, cls, values in yolo_lines(label, names, skipped):
        if len(values) == 4:
            skipped.append(Skip(where, "a detection box, not a segmentation polygon"))
            continue
        poly = parse_polygon(values, where, skipped)
        if poly is None:
            continue
        poly = poly * [size[0], size[1]]
        box = check_box(box_of([poly]), size, where, skipped)
        if box is None:
            continue
        out.append(
            Instance(
                image_path=image,
                image_size=size,
                class_name=names[cls],
                box=box,
                polygons=[poly],
                source=f"{label.name}:line {ln}",
            )
        )
    return out


def read_yolo(root: Path | str) -> Dataset:
    """Read a YOLO segmentation dataset rooted at ``root`` (holding ``images/`` and ``labels/``).

    An image without a label file has no objects; a label file without an image, a line with an
    unknown class or a bad polygon is skipped with its reason.
    """
    root = Path(root)
    images_root, labels_root = root / "images", root / "labels"
    if not images_root.is_dir() or not labels_root.is_dir():
        raise DataError(f"{root}: a YOLO dataset needs folders 'images/' and 'labels/'")
    names = yolo_class_names(root)
    skipped: list[Skip] = []
    instances: list[Instance] = []
    images = find_images(images_root)
    seen_labels = set()
    n_images = 0
    for image in images:
        label = yolo_label_path(image, images_root, labels_root)
        seen_labels.add(label)
        try:
            size = image_size(image)
        except DataError as e:
            skipped.append(Skip(str(image), str(e).split(": ", 1)[-1]))
            continue
        n_images += 1
        if not label.is_file():
            continue
        instances += _label_instances(label, image, size, names, skipped)
    for label in sorted(labels_root.rglob("*.txt")):
        if label not in seen_labels:
            skipped.append(Skip(str(label), "label file without an image"))
    return Dataset(instances, images=n_images, skipped=skipped, format="yolo", root=str(root))


# --- YOLO ------------------------------------------------------------------------------------------------
def read_yolo_boxes(root: Path) -> BoxSet:
    """Boxes of a YOLO folder (``images/``, ``labels/``): ``class cx cy w h`` lines (normalised); a segment
    line ``class x1 y1 ...`` gives its polygon's box. Class names from ``data.yaml`` (else COCO's 80)."""
    from polyrnn.formats.yolo import yolo_class_names, yolo_label_path

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
    return finish_boxes(images, names, skipped, "yolo", images_root)


def _yolo_lines(label: Path, names: list[str], skipped: list[Skip]) -> list[BoxObject]:
    from polyrnn.formats.yolo import yolo_lines

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


def write_yolo(
    instances: Sequence[Instance], out: Path, *, root: Path, classes: Sequence[str], images: str = "copy"
) -> None:
    """YOLO segmentation: ``images/`` (copies, or with ``images="link"`` links to the originals),
    ``labels/`` (one line per polygon part: class, then x y pairs normalised to 0–1) and ``data.yaml`` with
    ``train``/``val`` and the class names, as ultralytics reads it (``data=out/data.yaml``): no ``path``
    key, so the dataset root is the YAML's own folder wherever it is moved (a relative ``path`` would be
    taken under ultralytics' ``datasets_dir``)."""
    import yaml

    ids = {c: i for i, c in enumerate(classes)}
    (out / "images").mkdir(parents=True, exist_ok=True)
    groups = sorted(by_image(instances).items())
    names = flat_names([image for image, _ in groups], root)
    for image, insts in groups:
        name = names[image]
        place_image(image, out / "images" / name, images)
        w, h = insts[0].image_size
        lines = []
        for inst in insts:
            for part in inst.polygons:
                xy = np.clip(clip(part, w, h) / (w, h), 0.0, 1.0).reshape(-1)
                lines.append(" ".join([str(ids[inst.class_name]), *(f"{v:.6f}" for v in xy)]))
        atomic_write_text(out / "labels" / (Path(name).stem + ".txt"), "\n".join(lines) + "\n")
    atomic_write_text(
        out / "data.yaml",
        yaml.safe_dump(
            {"train": "images", "val": "images", "names": dict(enumerate(classes))},
            sort_keys=False,
        ),
    )


def write(instances: Sequence[Instance], out: Path, opts: WriteOptions) -> Path:
    images = "link" if opts.keep_images else "copy"
    write_yolo(instances, out, root=opts.root, classes=opts.classes, images=images)
    return out


FORMAT = Format(
    "yolo", "YOLO-seg", read=read_yolo, read_boxes=lambda path, _: read_yolo_boxes(path), write=write
)
