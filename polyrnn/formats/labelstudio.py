"""Label Studio: a JSON export (a list of tasks) read for its ``rectanglelabels`` boxes, and tasks with
``polygonlabels`` predictions (or annotations) written with the labelling config they match. Task image URLs
are resolved under an image folder (``/data/local-files/?d=...``, uploads by file name)."""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyrnn.data.common import read_json, relative_key
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
)
from polyrnn.io import atomic_write_json, atomic_write_text

LS_LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL for files under its local-files root
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
    from polyrnn.formats.base import inside

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
    :func:`label_studio_image`; the task's ``id`` and ``data`` are kept (:attr:`ImageBoxes.origin`) so the
    predictions written back attach to the same tasks."""
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
        origin: dict[str, Any] = {"data": dict(data)}  # type: ignore[arg-type]
        task_id = task.get("id")  # type: ignore[union-attr]
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            origin["id"] = task_id
        entry = ImageBoxes(key=relative_key(path, image_dir), path=path, normalized=True, origin=origin)
        if entry.key in images:
            skipped.append(Skip(where, f"a second task for image {entry.key} (the first is used)"))
            continue
        for r, res in enumerate(ls_results(task)):
            obj = ls_box(res, f"{where}.result[{r}]", skipped)
            if obj is not None:
                entry.objects.append(obj)
        images[entry.key] = entry
    return finish_boxes(images, [], skipped, "labelstudio", image_dir)


BOX_TYPES = ("rectanglelabels", "rectangle")  # <RectangleLabels> (smart or not) and <Rectangle smart="true">


def ls_box(res: dict[str, Any], where: str, skipped: list[Skip]) -> BoxObject | None:
    """The box of a ``rectanglelabels`` or ``rectangle`` result, in fractions of the image (x1, y1, x2, y2).
    A rotated rectangle (Label Studio turns it about its top-left corner, in pixels) gives the bounds of its
    corners, which needs the result's ``original_width``/``original_height``. Other results are not boxes
    (None, not skipped); a box that cannot be read is skipped with its reason."""
    if res.get("type") not in BOX_TYPES:
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
    if not all(math.isfinite(q) for q in (x, y, w, h, rotation)) or w <= 0 or h <= 0:
        skipped.append(Skip(where + ".value", "rectangle is empty or not finite"))
        return None
    box = (x, y, x + w, y + h)
    if rotation % 360.0 != 0.0:
        try:
            size = (float(res["original_width"]), float(res["original_height"]))
        except (KeyError, TypeError, ValueError):
            size = (0.0, 0.0)
        if not all(math.isfinite(q) and q > 0 for q in size):
            skipped.append(
                Skip(where + ".value.rotation", "a rotated rectangle needs original_width, original_height")
            )
            return None
        box = _rotated_bounds(box, rotation, size)
    labels = v.get("rectanglelabels")
    label = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else ""
    return BoxObject(box, label, where.rsplit(":", 1)[-1] + f" id={str(res.get('id'))[:100]}")


def _rotated_bounds(
    box: tuple[float, float, float, float], degrees: float, size: tuple[float, float]
) -> tuple[float, float, float, float]:
    """The axis-aligned bounds (fractions) of a box (fractions) turned clockwise by ``degrees`` about its
    top-left corner in the pixels of an image of ``size`` (width, height), as Label Studio draws it."""
    w, h = size
    x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    corners = [(dx, dy) for dx in (0.0, x2 - x1) for dy in (0.0, y2 - y1)]
    xs = [x1 + dx * c - dy * s for dx, dy in corners]
    ys = [y1 + dx * s + dy * c for dx, dy in corners]
    return (min(xs) / w, min(ys) / h, max(xs) / w, max(ys) / h)


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
    pts = clip(polygon, w, h) / (w, h) * 100.0
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
    ``polygonlabels`` result per polygon part (points in percent of the image, ``closed``; ids unique in the
    task), each with the instance's ``score``, and the prediction's ``model_version`` and mean ``score``.
    Without a score the polygons are written as ``annotations`` instead (human work being moved between
    tools).

    Args:
        root: image folder; a task's image is ``url_prefix`` + the image's path relative to it (Label
            Studio's local-files URL by default) unless ``tasks`` gives the input task for that image
            (``{"id", "data"}``, :attr:`ImageBoxes.origin`): then the task keeps its ``id`` and ``data``.
        from_name, to_name: the names of the PolygonLabels and Image tags (see :func:`label_studio_config`).
    """
    out: list[dict[str, Any]] = []
    for image, insts in sorted(by_image(instances).items()):
        w, h = insts[0].image_size
        given = (tasks or {}).get(image) or {}
        data = dict(given.get("data") or {"image": url_prefix + relative_key(image, root)})
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
        task = {"id": given["id"]} if "id" in given else {}
        out.append({**task, "data": data, group: [{**entry, "result": results}]})
    atomic_write_json(out_json, out)
    return out


def prediction_imports(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The predictions of tasks that kept their Label Studio ``id``, as the list Label Studio's
    ``POST /api/projects/{id}/import/predictions`` (SDK: ``projects.import_predictions``) attaches to those
    existing tasks: ``{"task": id, "result", "score", "model_version"}``."""
    return [
        {"task": t["id"], **p}
        for t in tasks
        if isinstance(t.get("id"), int)
        for p in t.get("predictions", [])
    ]


def write(instances: Sequence[Instance], out: Path, opts: WriteOptions) -> Path:
    """``out/tasks.json`` and ``out/config.xml``; when the boxes came from Label Studio tasks with ids, also
    ``out/predictions.json`` (:func:`prediction_imports`)."""
    path = out / "tasks.json"
    _, origins = opts.origins_for("labelstudio")
    tasks = write_label_studio(
        instances,
        path,
        root=opts.root,
        model_version=opts.model_version,
        tasks=origins,
        decimals=opts.decimals or 4,
    )
    imports = prediction_imports(tasks)
    if imports:
        atomic_write_json(out / "predictions.json", imports)
    atomic_write_text(out / "config.xml", label_studio_config(list(opts.classes)))
    return path


FORMAT = Format(
    "labelstudio", "Label Studio", read_boxes=lambda path, d: read_label_studio_boxes(path, d), write=write
)
