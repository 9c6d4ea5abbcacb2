"""What every annotation format shares: the records box readers return, the options writers take, the
helpers writers use, and the :class:`Format` record each format file fills in (listed in
:data:`polyrnn.formats.FORMATS`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyrnn.data.common import check_box
from polyrnn.data.instance import Dataset, Instance, Skip

Box = tuple[float, float, float, float]


@dataclass
class BoxObject:
    """One box: (x1, y1, x2, y2) in pixels, or in fractions of the image width/height when its
    :class:`ImageBoxes` is ``normalized``; ``ref`` names where it came from (file and field or id), ``id`` is
    its own id in the input file (a COCO annotation id), which an output in the same format points back to."""

    box: Box
    class_name: str
    ref: str
    id: int | str | None = None


@dataclass
class ImageBoxes:
    """The boxes of one image.

    Attributes:
        key: the image's path relative to the dataset's image root (POSIX); unique, and what shards split on.
        path: the image file.
        objects: its boxes.
        size: (width, height) when the box file gives it, else None (read from the image).
        normalized: boxes are fractions of the image size (YOLO; Label Studio without the size).
        origin: the input file's own record of the image, which an output in the same format keeps so that
            it attaches to the same image: COCO its ``images`` entry, Label Studio the task's ``id`` and
            ``data``.
    """

    key: str
    path: Path
    objects: list[BoxObject] = field(default_factory=list)
    size: tuple[int, int] | None = None
    normalized: bool = False
    origin: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (what travels to Ray workers)."""
        return {
            "key": self.key,
            "path": str(self.path),
            "objects": [
                {"box": list(o.box), "class_name": o.class_name, "ref": o.ref, "id": o.id}
                for o in self.objects
            ],
            "size": list(self.size) if self.size is not None else None,
            "normalized": self.normalized,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageBoxes:
        return cls(
            key=d["key"],
            path=Path(d["path"]),
            objects=[
                BoxObject(tuple(o["box"]), o["class_name"], o["ref"], o.get("id"))  # type: ignore[arg-type]
                for o in d["objects"]
            ],
            size=tuple(d["size"]) if d["size"] is not None else None,  # type: ignore[arg-type]
            normalized=bool(d["normalized"]),
            origin=d.get("origin"),
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
    """What a box reader returns: images (sorted by key), class names in id order, what was skipped, and
    ``origin``: the input file's own records that an output in the same format keeps (COCO: its
    ``categories``)."""

    images: list[ImageBoxes]
    classes: list[str]
    skipped: list[Skip] = field(default_factory=list)
    format: str = ""
    image_root: Path = Path(".")
    origin: dict[str, Any] | None = None

    @property
    def boxes(self) -> int:
        return sum(len(i.objects) for i in self.images)


def finish_boxes(
    images: dict[str, ImageBoxes], classes: list[str], skipped: list[Skip], fmt: str, root: Path
) -> BoxSet:
    names = list(
        dict.fromkeys([*classes, *sorted({o.class_name for i in images.values() for o in i.objects})])
    )
    return BoxSet([images[k] for k in sorted(images)], names, skipped, fmt, root)


@dataclass(frozen=True)
class WriteOptions:
    """How a writer writes.

    Attributes:
        root: the image folder: names in the output are relative to it.
        classes: class names in id order.
        decimals: coordinates' decimals (None: the format's default; predictions use 6, see ``write_coco``).
        keep_images: leave the images where they are (LabelMe ``imagePath`` to the original, YOLO links)
            rather than copying them beside the output.
        model_version: the predictions' model version (Label Studio).
        origin_format, origin, origins: where the boxes came from: the input's format, its own records
            (:attr:`BoxSet.origin`) and, per image, the image's record (:attr:`ImageBoxes.origin`). The writer
            of that same format keeps them (COCO image and category ids, Label Studio task ids and data), so
            the output lines up with the input file; other writers ignore them.
    """

    root: Path
    classes: Sequence[str] = ()
    decimals: int | None = None
    keep_images: bool = False
    model_version: str = "polyrnn"
    origin_format: str = ""
    origin: dict[str, Any] | None = None
    origins: dict[Path, dict[str, Any]] | None = None

    def origins_for(self, fmt: str) -> tuple[dict[str, Any], dict[Path, dict[str, Any]]]:
        """(dataset records, per-image records) of the input when it was in ``fmt``, else empty ones."""
        if self.origin_format != fmt:
            return {}, {}
        return dict(self.origin or {}), dict(self.origins or {})


@dataclass(frozen=True)
class Format:
    """One annotation format: what it can do, by its file's functions (None: it cannot).

    Attributes:
        name: what ``--format`` / ``--to`` take.
        title: how the editor's export menu shows it.
        read: path -> :class:`~polyrnn.data.instance.Dataset` of polygons (training, ``evaluate``).
        read_boxes: (path, image folder or None) -> :class:`BoxSet` (``predict --dataset``).
        write: (instances, output folder, :class:`WriteOptions`) -> the main file or folder written.
    """

    name: str
    title: str
    read: Callable[[Path], Dataset] | None = None
    read_boxes: Callable[[Path, Path | None], BoxSet] | None = None
    write: Callable[[Sequence[Instance], Path, WriteOptions], Path] | None = None
    notes: str = field(default="", compare=False)


def inside(path: Path, root: Path) -> bool:
    """``path`` resolves (links followed) to a place under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def by_image(instances: Sequence[Instance]) -> dict[Path, list[Instance]]:
    out: dict[Path, list[Instance]] = {}
    for inst in instances:
        out.setdefault(Path(inst.image_path), []).append(inst)
    return out


def clip(part: np.ndarray, w: int, h: int) -> np.ndarray:
    """A polygon clipped to the image (like its box): cut along the image's edges where it crosses them,
    so every pixel inside the image stays in or out as it was."""
    p = np.asarray(part, dtype=np.float64).reshape(-1, 2)
    if ((p >= 0.0) & (p <= [w, h])).all():
        return p
    import shapely
    from shapely.geometry import Polygon

    g = shapely.clip_by_rect(Polygon(p), 0.0, 0.0, float(w), float(h)) if len(p) >= 3 else None
    if isinstance(g, Polygon) and not g.is_empty and g.is_valid:
        return np.asarray(g.exterior.coords, dtype=np.float64)[:-1]
    return np.clip(p, 0.0, [w, h])  # a self-crossing or split polygon: its vertices moved to the edge


def flat_names(images: Sequence[Path], root: Path) -> dict[Path, str]:
    """A file name for each image in a flat folder (YOLO ``images/``, LabelMe copies): its path under
    ``root`` joined with ``__`` (``sub/x.jpg`` -> ``sub__x.jpg``). Names never collide, whatever the file
    system's case rules: where two images would share a stem (``sub/x.jpg`` and ``sub__x.jpg``, or ``x.jpg``
    and ``x.png``, whose labels would both be ``x.txt``), each of them gets a short hash of its path
    (``sub__x-1a2b3c4d.jpg``)."""
    import hashlib

    from polyrnn.data.common import relative_name

    flat: dict[Path, str] = {}
    for image in images:
        rel = relative_name(image, root)
        flat[image] = "__".join(Path(rel).parts) if not rel.startswith("../") else image.name
    stems: dict[str, int] = {}
    for name in flat.values():
        stems[Path(name).stem.casefold()] = stems.get(Path(name).stem.casefold(), 0) + 1
    for image, name in flat.items():
        if stems[Path(name).stem.casefold()] > 1:
            tag = hashlib.sha1(str(image.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            flat[image] = f"{Path(name).stem}-{tag}{Path(name).suffix}"
    return flat


def place_image(image: Path, dest: Path, mode: str) -> None:
    """Put an image where a format expects it: ``copy``; ``link``, a symbolic link to the original by its
    absolute name (a link is not followed); or ``hardlink``, the same file under a second name where the file
    system allows it, else a copy (for readers such as datumaro that refuse a link leading out of their
    folder)."""
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if mode == "link":
        dest.symlink_to(os.path.abspath(image))
        return
    if mode == "hardlink":
        try:
            os.link(os.path.realpath(image), dest)
            return
        except OSError:  # another file system, or links not allowed: a copy
            pass
    shutil.copyfile(image, dest)
