"""Writers: instances -> COCO instances JSON, YOLO segmentation, LabelMe JSON, Label Studio tasks with
predictions, CVAT for images XML 1.1 (what ``polyrnn export``, ``polyrnn predict --dataset`` and the tool's
export buttons produce). Every file is written atomically; a predicted instance's ``score`` is written where
the format has a place for it (COCO ``score``, LabelMe shape ``score``, Label Studio result ``score``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from polyrnn.data.common import relative_key
from polyrnn.data.instance import DataError, Instance
from polyrnn.data.labelme import read_labelme
from polyrnn.io import atomic_write_bytes, atomic_write_json, atomic_write_text

FORMATS = ("coco", "yolo", "labelme", "labelstudio", "cvat")
LS_LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL for files under its local-files root


def flat_names(images: Sequence[Path], root: Path) -> dict[Path, str]:
    """A file name for each image in a flat folder (YOLO ``images/``, LabelMe copies): its path under
    ``root`` joined with ``__`` (``sub/x.jpg`` -> ``sub__x.jpg``). Names never collide, whatever the file
    system's case rules: where two images would share a stem (``sub/x.jpg`` and ``sub__x.jpg``, or ``x.jpg``
    and ``x.png``, whose labels would both be ``x.txt``), each of them gets a short hash of its path
    (``sub__x-1a2b3c4d.jpg``)."""
    import hashlib

    flat: dict[Path, str] = {}
    for image in images:
        try:
            rel = image.resolve().relative_to(root.resolve())
        except ValueError:
            rel = Path(image.name)
        flat[image] = "__".join(rel.parts)
    stems: dict[str, int] = {}
    for name in flat.values():
        stems[Path(name).stem.casefold()] = stems.get(Path(name).stem.casefold(), 0) + 1
    for image, name in flat.items():
        if stems[Path(name).stem.casefold()] > 1:
            tag = hashlib.sha1(str(image.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            flat[image] = f"{Path(name).stem}-{tag}{Path(name).suffix}"
    return flat


def _by_image(instances: Sequence[Instance]) -> dict[Path, list[Instance]]:
    out: dict[Path, list[Instance]] = {}
    for inst in instances:
        out.setdefault(Path(inst.image_path), []).append(inst)
    return out


def _clip(part: np.ndarray, w: int, h: int) -> np.ndarray:
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


def write_coco(
    instances: Sequence[Instance], out_json: Path, *, root: Path, classes: Sequence[str], decimals: int = 2
) -> dict[str, Any]:
    """A COCO instances JSON; ``file_name`` is each image's path relative to ``root``, the image folder
    (a trainer is pointed at it), and polygons are clipped to the image like the boxes and rounded to
    ``decimals`` (predictions keep 6: a mask's outline can run through pixel centres, where rounding to
    1/100 px moves pixels in or out)."""
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
            segs = [_clip(p, w, h).reshape(-1).round(decimals).tolist() for p in inst.polygons]
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


def _place_image(image: Path, dest: Path, mode: str) -> None:
    """Put an image where a format expects it: ``copy``, or ``link`` (a symbolic link to the original)."""
    if mode == "link":
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(image.resolve())
    else:
        shutil.copyfile(image, dest)


def write_yolo(
    instances: Sequence[Instance], out: Path, *, root: Path, classes: Sequence[str], images: str = "copy"
) -> None:
    """YOLO segmentation: ``images/`` (copies, or with ``images="link"`` links to the originals),
    ``labels/`` (one line per polygon part: class, then x y pairs normalised to 0–1) and ``data.yaml`` with
    the class names."""
    import yaml

    ids = {c: i for i, c in enumerate(classes)}
    (out / "images").mkdir(parents=True, exist_ok=True)
    by_image = sorted(_by_image(instances).items())
    names = flat_names([image for image, _ in by_image], root)
    for image, insts in by_image:
        name = names[image]
        _place_image(image, out / "images" / name, images)
        w, h = insts[0].image_size
        lines = []
        for inst in insts:
            for part in inst.polygons:
                xy = np.clip(_clip(part, w, h) / (w, h), 0.0, 1.0).reshape(-1)
                lines.append(" ".join([str(ids[inst.class_name]), *(f"{v:.6f}" for v in xy)]))
        atomic_write_text(out / "labels" / (Path(name).stem + ".txt"), "\n".join(lines) + "\n")
    atomic_write_text(
        out / "data.yaml",
        yaml.safe_dump(
            {"path": ".", "train": "images", "val": "images", "names": dict(enumerate(classes))},
            sort_keys=False,
        ),
    )


def write_labelme(
    instances: Sequence[Instance], out: Path, *, root: Path, images: str = "copy", decimals: int = 2
) -> None:
    """LabelMe: each image copied into ``out`` with its JSON beside it (parts of one object share a
    ``group_id``); with ``images="refer"`` the images stay where they are and ``imagePath`` leads to them
    relative to the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    by_image = sorted(_by_image(instances).items())
    names = flat_names([image for image, _ in by_image], root)
    for image, insts in by_image:
        name = names[image]
        if images == "refer":
            image_path = Path(os.path.relpath(image.resolve(), out.resolve())).as_posix()
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


def label_studio_config(classes: Sequence[str], *, from_name: str = "label", to_name: str = "image") -> str:
    """The labelling configuration the Label Studio tasks of :func:`write_label_studio` match: an image and
    polygon labels for ``classes``."""
    from xml.sax.saxutils import quoteattr

    labels = "".join(f"\n    <Label value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View>\n  <Image name={quoteattr(to_name)} value="$image"/>\n'
        f"  <PolygonLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}>{labels}\n"
        "  </PolygonLabels>\n</View>\n"
    )


def polygon_result(
    polygon: np.ndarray,
    label: str,
    size: tuple[int, int],
    *,
    score: float | None = None,
    id: str = "r0",
    from_name: str = "label",
    to_name: str = "image",
) -> dict[str, Any]:
    """One Label Studio ``polygonlabels`` result: an (N, 2) polygon in image pixels of an image of ``size``
    (width, height), clipped to it, as points in percent of the image."""
    w, h = size
    pts = _clip(polygon, w, h) / (w, h) * 100.0
    return {
        "id": id,
        "type": "polygonlabels",
        "from_name": from_name,
        "to_name": to_name,
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"points": pts.tolist(), "closed": True, "polygonlabels": [label]},
        **({"score": round(float(score), 4)} if score is not None else {}),
    }


def write_label_studio(
    instances: Sequence[Instance],
    out_json: Path,
    *,
    root: Path,
    model_version: str = "polyrnn",
    tasks: dict[Path, dict[str, Any]] | None = None,
    url_prefix: str = LS_LOCAL_FILES,
    from_name: str = "label",
    to_name: str = "image",
    decimals: int = 4,
) -> list[dict[str, Any]]:
    """Label Studio tasks with pre-annotations: one task per image, its ``predictions`` holding one
    ``polygonlabels`` result per polygon part (points in percent of the image, ``closed``), each with the
    instance's ``score``, and the prediction's ``model_version`` and mean ``score``. Without a score the
    polygons are written as ``annotations`` instead (human work being moved between tools).

    Args:
        root: image folder; a task's image is ``url_prefix`` + the image's path relative to it (Label
            Studio's local-files URL by default) unless ``tasks`` gives the task's ``data`` for that image.
        from_name, to_name: the names of the PolygonLabels and Image tags (see :func:`label_studio_config`).
    """
    out: list[dict[str, Any]] = []
    for image, insts in sorted(_by_image(instances).items()):
        w, h = insts[0].image_size
        data = dict((tasks or {}).get(image) or {"image": url_prefix + relative_key(image, root)})
        results: list[dict[str, Any]] = []
        for inst in insts:
            for part in inst.polygons:
                r = polygon_result(part, inst.class_name, (w, h), score=inst.score, id=f"r{len(results)}")
                r.update(from_name=from_name, to_name=to_name)
                r["value"]["points"] = np.round(r["value"]["points"], decimals).tolist()
                results.append(r)
        scores = [float(i.score) for i in insts if i.score is not None]
        if len(scores) == len(insts):
            group = "predictions"
            entry: dict[str, Any] = {
                "model_version": model_version,
                "score": round(float(np.mean(scores)), 4),
            }
        else:
            group, entry = "annotations", {}
        out.append({"data": data, group: [{**entry, "result": results}]})
    atomic_write_json(out_json, out)
    return out


def write_cvat(
    instances: Sequence[Instance], out_xml: Path, *, root: Path, classes: Sequence[str], decimals: int = 2
) -> None:
    """CVAT for images XML 1.1: the labels in ``<meta>``, one ``<image>`` per image (``name`` relative to
    ``root``) with a ``<polygon>`` per part (``points`` "x,y;x,y;...", ``source`` "auto" for predicted
    instances); parts of one object share a ``group_id``."""
    import xml.etree.ElementTree as ET

    ann = ET.Element("annotations")
    ET.SubElement(ann, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(ann, "meta"), "task")
    by_image = sorted(_by_image(instances).items())
    ET.SubElement(task, "size").text = str(len(by_image))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for c in classes:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = c
        ET.SubElement(lab, "type").text = "polygon"
        ET.SubElement(lab, "attributes")
    group = 0
    for idx, (image, insts) in enumerate(by_image):
        w, h = insts[0].image_size
        el = ET.SubElement(
            ann, "image", id=str(idx), name=relative_key(image, root), width=str(int(w)), height=str(int(h))
        )
        for inst in insts:
            if len(inst.polygons) > 1:
                group += 1
            for part in inst.polygons:
                pts = ";".join(f"{x:.{decimals}f},{y:.{decimals}f}" for x, y in _clip(part, w, h))
                attrs = {
                    "label": inst.class_name,
                    "source": "auto" if inst.score is not None else "manual",
                    "occluded": "0",
                    "points": pts,
                    "z_order": "0",
                }
                if len(inst.polygons) > 1:
                    attrs["group_id"] = str(group)
                ET.SubElement(el, "polygon", attrs)
    ET.indent(ann)
    atomic_write_bytes(
        out_xml, b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(ann, encoding="unicode").encode()
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
    relative to ``image_root`` (default ``src``). Only images under ``image_root`` are exported: a file whose
    ``imagePath`` leads elsewhere (absolute, ``../``, a link out) is skipped, and so is a file superseded by
    another naming the same image; ``skipped`` says which and why."""
    if fmt not in FORMATS:
        raise DataError(f"unknown export format '{fmt}' (one of {', '.join(FORMATS)})")
    src, out = Path(src), Path(out)
    image_root = Path(image_root or src)
    ds = read_labelme(src, exclude=[*exclude, out], image_root=image_root)
    classes = list(dict.fromkeys([*labels, *sorted({i.class_name for i in ds.instances})]))
    if fmt == "coco":
        path = out / "annotations.json"
        write_coco(ds.instances, path, root=image_root, classes=classes)
    elif fmt == "yolo":
        path = out
        write_yolo(ds.instances, out, root=image_root, classes=classes)
    elif fmt == "labelstudio":
        path = out / "tasks.json"
        write_label_studio(ds.instances, path, root=image_root)
        atomic_write_text(out / "config.xml", label_studio_config(classes))
    elif fmt == "cvat":
        path = out / "annotations.xml"
        write_cvat(ds.instances, path, root=image_root, classes=classes)
    else:
        path = out
        write_labelme(ds.instances, out, root=image_root)
    return {
        "path": path,
        "instances": len(ds.instances),
        "images": len(_by_image(ds.instances)),
        "skipped": ds.skipped,
    }
