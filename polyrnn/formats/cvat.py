"""CVAT for images XML 1.1: ``<box>`` elements read as boxes, ``<polygon>`` elements written
(``source="auto"`` for predictions; parts of one object share a ``group_id``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from polyrnn.data.common import relative_key
from polyrnn.data.instance import DataError, Instance, Skip
from polyrnn.formats.base import (
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
from polyrnn.io import atomic_write_bytes


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
    return finish_boxes(images, classes, skipped, "cvat", dirs[0])


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
    groups = sorted(by_image(instances).items())
    ET.SubElement(task, "size").text = str(len(groups))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for c in classes:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = c
        ET.SubElement(lab, "type").text = "polygon"
        ET.SubElement(lab, "attributes")
    group = 0
    for idx, (image, insts) in enumerate(groups):
        w, h = insts[0].image_size
        el = ET.SubElement(
            ann, "image", id=str(idx), name=relative_key(image, root), width=str(int(w)), height=str(int(h))
        )
        for inst in insts:
            if len(inst.polygons) > 1:
                group += 1
            for part in inst.polygons:
                pts = ";".join(f"{x:.{decimals}f},{y:.{decimals}f}" for x, y in clip(part, w, h))
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


def write(instances: Sequence[Instance], out: Path, opts: WriteOptions) -> Path:
    """``out/annotations.xml``; with ``keep_images`` the images under ``out/images/<name>`` (hard links, else
    copies), the layout datumaro imports as it is (CVAT matches ``name`` to the task's own images)."""
    path = out / "annotations.xml"
    write_cvat(instances, path, root=opts.root, classes=opts.classes, decimals=opts.decimals or 2)
    if opts.keep_images:
        for image in sorted(by_image(instances)):
            dest = out / "images" / relative_key(image, opts.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            place_image(image, dest, "hardlink")
    return path


FORMAT = Format("cvat", "CVAT XML", read_boxes=lambda path, d: read_cvat_boxes(path, d), write=write)
