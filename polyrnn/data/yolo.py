"""YOLO segmentation folders: ``images/...`` and ``labels/...`` with one object a line,
``class x1 y1 x2 y2 ...`` normalised to 0..1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from polyrnn.data.common import box_of, check_box, find_images, image_size, parse_polygon
from polyrnn.data.instance import DataError, Dataset, Instance, Skip

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
