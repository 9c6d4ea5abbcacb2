"""Dataset summaries and the pipeline picture behind ``polyrnn data stats`` / ``data show``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from polyrnn.config import INFERENCE
from polyrnn.data.crop import CropBox
from polyrnn.data.instance import Dataset, Instance, load_image
from polyrnn.data.sequence import polygon_to_tokens, tokens_to_polygon
from polyrnn.io import atomic_write_bytes


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    """Counts of a dataset read without a size filter: images, usable non-crowd instances, per-class
    counts, vertex statistics and what was skipped (grouped by reason)."""
    verts = np.array([len(p) for i in ds.instances for p in i.polygons] or [0])
    reasons = Counter(s.reason.split(" (")[0] for s in ds.skipped)
    return {
        "format": ds.format,
        "root": ds.root,
        "images": ds.images,
        "instances": len(ds.instances),
        "parts": int(sum(len(i.polygons) for i in ds.instances)),
        "multi_part_instances": int(sum(len(i.polygons) > 1 for i in ds.instances)),
        "classes": dict(
            sorted(Counter(i.class_name for i in ds.instances).items(), key=lambda kv: (-kv[1], kv[0]))
        ),
        "vertices": {
            "min": int(verts.min()),
            "median": float(np.median(verts)),
            "mean": round(float(verts.mean()), 2),
            "max": int(verts.max()),
        },
        "box_long_side_ge_32": int(sum(i.long_side >= 32 for i in ds.instances)),
        "skipped": {
            "count": len(ds.skipped),
            "reasons": dict(reasons),
            "items": [str(s) for s in ds.skipped[:50]],
        },
    }


def format_stats(s: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`dataset_stats`."""
    lines = [
        f"dataset   {s['root']} ({s['format']})",
        f"images    {s['images']}",
        f"instances {s['instances']} ({s['parts']} parts, "
        f"{s['multi_part_instances']} objects in several parts;"
        f" {s['box_long_side_ge_32']} with box side >= 32 px)",
        "vertices  min {min}  median {median:g}  mean {mean:g}  max {max}".format(**s["vertices"]),
        f"classes   {len(s['classes'])}",
    ]
    lines += [f"  {n:>6}  {c}" for c, n in s["classes"].items()]
    sk = s["skipped"]
    lines.append(f"skipped   {sk['count']}")
    lines += [f"  {n:>6}  {r}" for r, n in sk["reasons"].items()]
    lines += [f"          - {item}" for item in sk["items"][:10]]
    return "\n".join(lines)


def render_instance(
    inst: Instance, *, context: float = INFERENCE.context, grid_size: int = 28, scale: int = 2
) -> np.ndarray:
    """The crop of an instance with its ground-truth parts (green), its quantised grid polygon (red,
    first vertex circled) and faint grid lines, as an RGB uint8 image of side ``224 * scale``."""
    crop = CropBox.around(inst.box, context=context, grid_size=grid_size)
    img = crop.crop_image(load_image(inst.image_path))
    side = crop.crop_size * scale
    canvas = cv2.resize(img, (side, side), interpolation=cv2.INTER_NEAREST)
    step = side / grid_size
    for k in range(1, grid_size):
        p = int(round(k * step))
        canvas[p, :] = (canvas[p, :] * 0.7 + 80).astype(np.uint8)
        canvas[:, p] = (canvas[:, p] * 0.7 + 80).astype(np.uint8)

    def to_px(xy_image: np.ndarray) -> np.ndarray:
        return np.round(crop.image_to_crop(xy_image) * scale * 16).astype(np.int32)  # 4 fractional bits

    for part in inst.polygons:
        cv2.polylines(canvas, [to_px(part)], True, (0, 220, 0), 2, cv2.LINE_AA, shift=4)
    grid_poly = tokens_to_polygon(polygon_to_tokens(inst.largest_polygon(), crop), crop)
    if len(grid_poly):
        pts = to_px(grid_poly)
        cv2.polylines(canvas, [pts], True, (230, 30, 30), 2, cv2.LINE_AA, shift=4)
        for q in pts:
            cv2.circle(canvas, tuple(int(v) for v in q), 3 * 16, (230, 30, 30), -1, cv2.LINE_AA, shift=4)
        cv2.circle(canvas, tuple(int(v) for v in pts[0]), 7 * 16, (255, 255, 0), 2, cv2.LINE_AA, shift=4)
    cv2.putText(
        canvas,
        f"{inst.class_name}  green: ground truth  red: {grid_size}x{grid_size} grid polygon",
        (6, 16),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return canvas


def save_png(path: Path | str, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(Path(path), buf.tobytes())
