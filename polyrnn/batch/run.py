"""Pre-annotate a whole dataset: resumable, sharded runs and the merge that writes the outputs.

Layout of an output folder ``DIR``::

    DIR/manifest.json                  what is being run (boxes, models, shard count): a resumed or parallel
                                       shard must match it
    DIR/shards/part-00000-of-00002.jsonl  one line per finished image (its boxes, polygons, scores, errors)
    DIR/shards/part-00000-of-00002.json   the shard's status, written when it finishes
    DIR/coco/annotations/instances_default.json  after the merge: COCO instances with a ``score`` per object
                                       (boxes from a COCO file: its image and category ids, ``source_id`` per
                                       object); ``images/default/``: the images hard-linked (datumaro)
    DIR/coco/results.json              the same as a COCO results file (RLE), for ``loadRes`` + COCOeval
    DIR/labelme/*.json                 LabelMe JSON per image (``imagePath`` leads to the original image)
    DIR/yolo/                          YOLO-seg labels, ``images/`` linking to the originals, ``data.yaml``
    DIR/labelstudio/tasks.json         Label Studio tasks with ``polygonlabels`` predictions (+ config.xml);
                                       boxes from Label Studio: the same task ids and data, and
                                       ``predictions.json`` to import onto the existing tasks
    DIR/cvat/annotations.xml           CVAT for images XML 1.1 with ``<polygon>`` elements (+ ``images/``)
    DIR/review.csv                     objects below ``--review-below``, least confident first
    DIR/skipped.csv                    every image and box left out, with the file and the reason

An image is the unit of work: shard ``i/n`` takes the images whose key (path relative to the image folder)
hashes to ``i`` (stable across machines and runs), a finished image is one JSON line (flushed as it is done),
and a restarted run skips the images its shard file already holds. The merge reads every shard file and
writes the outputs sorted by image, so they are identical however the work was split, ordered or restarted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polyrnn.batch.worker import local_records
from polyrnn.config import INFERENCE
from polyrnn.data.instance import Instance
from polyrnn.formats.base import BoxSet, ImageBoxes
from polyrnn.io import atomic_write_csv, atomic_write_json

MANIFEST = "manifest.json"
DECIMALS = 6  # predicted polygons are written to 1e-6 px, so the outputs score as the model's outline
OUTPUTS = ("coco", "labelme", "yolo", "labelstudio", "cvat")
# what must be the same for every shard and every restart of one output folder
JOB_KEYS = (
    "boxes",
    "format",
    "image_dir",
    "weights",
    "mask_weights",
    "variant",
    "context",
    "shards",
    "start",
)


FORMAT_BOXES = {  # what each box reader takes as a box, for the message when it found none
    "coco": "annotations' bbox (crowd regions left out)",
    "yolo": "label lines (class cx cy w h, or a polygon's bounds)",
    "labelme": "rectangle shapes and polygons' bounds",
    "labelstudio": "rectanglelabels results (unrotated) of each task's annotation or prediction",
    "cvat": "<box> elements",
}


class RunError(ValueError):
    """A run that cannot start or a merge that cannot finish; the message says why and what to do."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), as ``--shard i/n`` gives it."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise RunError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
        if n < 1 or not 0 <= i < n:
            raise RunError(f"--shard {text!r}: needs n >= 1 and 0 <= i < n")
        return cls(i, n)

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}"

    def holds(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard of an image key: a hash, so the split does not depend on the listing order or machine."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) % count


# --- shard files -----------------------------------------------------------------------------------------
def read_shard(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a shard file. A last line cut off by a kill is dropped (and, with ``repair``, cut from
    the file so appending continues cleanly); any other bad line is a :class:`RunError` naming it."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records, good = [], 0
    for n, line in enumerate(lines):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) - 1:  # the unfinished last line of a killed run
                break
            raise RunError(f"{path}: line {n + 1} is not JSON; the shard file is damaged") from None
        good += len(line) + 1
    if repair and good < len(raw):
        with open(path, "r+b") as f:
            f.truncate(min(good, len(raw)))
    return records


class ShardWriter:
    """Appends records to a shard file, one line each, flushed at once and synced every few seconds."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._synced = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()
        if time.monotonic() - self._synced > 5:
            os.fsync(self._f.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


# --- the manifest ----------------------------------------------------------------------------------------
def prepare(out: Path, job: dict[str, Any], boxes: BoxSet) -> dict[str, Any]:
    """Write the manifest of a new output folder, or check that an existing one describes the same job
    (:class:`RunError` naming the field that differs)."""
    path = out / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RunError(f"{path}: unreadable manifest ({e})") from e
        for k in JOB_KEYS:
            if old.get("job", {}).get(k) != job.get(k):
                raise RunError(
                    f"{out} holds a run with {k}={old.get('job', {}).get(k)!r}, this one has {job.get(k)!r}: "
                    "use another --out, or the same settings to resume"
                )
        return dict(old)
    manifest = {
        "format": "polyrnn-predict",
        "version": 1,
        "job": job,
        "image_root": str(boxes.image_root),
        "classes": boxes.classes,
        "images": len(boxes.images),
        "boxes": boxes.boxes,
        "read_skipped": [{"where": s.where, "reason": s.reason} for s in boxes.skipped[:10000]],
        "origin": boxes.origin,
    }
    atomic_write_json(path, manifest)
    return manifest


def todo(boxes: BoxSet, shard: Shard, shard_file: Path) -> tuple[list[ImageBoxes], int]:
    """(images of this shard not yet in its file, how many are done), repairing a cut-off last line."""
    done = {r["key"] for r in read_shard(shard_file, repair=True)}
    mine = [i for i in boxes.images if shard.holds(i.key)]
    left = [i for i in mine if i.key not in done]
    return left, len(mine) - len(left)


def drive(
    records: Iterable[dict[str, Any]],
    writer: ShardWriter,
    *,
    total: int,
    done: int,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``records`` as they come, with a progress bar (images, objects/s, ETA) on a terminal and a line
    every 30 s elsewhere; returns the counts."""
    from tqdm import tqdm

    counts: dict[str, Any] = {"images": 0, "objects": 0, "errors": 0, "skipped_boxes": 0}
    bar = tqdm(total=total, initial=done, unit="img", desc="predict", disable=not sys.stderr.isatty())
    t0 = last = time.perf_counter()
    shown_errors = 0
    for rec in records:
        writer.write(rec)
        counts["images"] += 1
        counts["objects"] += len(rec.get("objects", []))
        counts["skipped_boxes"] += len(rec.get("skipped", []))
        if "error" in rec:
            counts["errors"] += 1
            if log is not None and shown_errors < 10:
                log(f"skipped image {rec['image']}: {rec['error']}")
                shown_errors += 1
        dt = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(obj_s=f"{counts['objects'] / max(dt, 1e-9):.1f}", refresh=False)
        if log is not None and bar.disable and time.perf_counter() - last > 30:
            last = time.perf_counter()
            n = done + counts["images"]
            log(f"predict: {n}/{total} images, {counts['objects'] / dt:.2f} objects/s")
    bar.close()
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    return counts


def finish_shard(out: Path, shard: Shard, counts: dict[str, Any], total: int) -> None:
    atomic_write_json(out / "shards" / f"{shard.name}.json", {"finished": True, "images": total, **counts})


# --- merge -----------------------------------------------------------------------------------------------
def _instances(records: list[dict[str, Any]]) -> list[Instance]:
    """Instances for the writers; a box whose mask came out empty becomes its rectangle with score 0, so
    every box has an answer to review."""
    out = []
    for rec in records:
        for obj in rec.get("objects", []):
            x1, y1, x2, y2 = obj["box"]
            poly = obj["polygon"] or [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
            out.append(
                Instance(
                    image_path=Path(rec["image"]),
                    image_size=(int(rec["width"]), int(rec["height"])),
                    class_name=obj["class"],
                    box=(x1, y1, x2 - x1, y2 - y1),
                    polygons=[np.asarray(poly, dtype=np.float64)],
                    source=obj["ref"],
                    score=float(obj["score"]),
                    source_id=obj.get("id"),
                )
            )
    return out


def collect(out: Path, *, allow_partial: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(manifest, every image's record sorted by key) from all shard files of ``out``."""
    path = out / MANIFEST
    if not path.is_file():
        raise RunError(f"{out}: no {MANIFEST} (not a polyrnn predict output folder)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    n = int(manifest["job"]["shards"])
    missing = [i for i in range(n) if not (out / "shards" / f"{Shard(i, n).name}.json").is_file()]
    if missing and not allow_partial:
        raise RunError(
            f"{out}: shard(s) {', '.join(f'{i}/{n}' for i in missing[:20])} not finished; run them "
            "(the same command with --shard i/n), or merge what is there with --allow-partial"
        )
    by_key: dict[str, dict[str, Any]] = {}
    for i in range(n):
        for rec in read_shard(out / "shards" / f"{Shard(i, n).name}.jsonl"):
            by_key[rec["key"]] = rec
    return manifest, [by_key[k] for k in sorted(by_key)]


def merge(
    out: Path,
    *,
    review_below: float | None = None,
    formats: Iterable[str] = OUTPUTS,
    allow_partial: bool = False,
    model_version: str = "polyrnn",
) -> dict[str, Any]:
    """Write the outputs of ``out`` (see the module's docstring) from its shard files; returns a summary."""
    from polyrnn.formats import WriteOptions, write

    manifest, records = collect(out, allow_partial=allow_partial)
    root, classes = Path(manifest["image_root"]), list(manifest["classes"])
    insts = _instances(records)
    classes = list(dict.fromkeys([*classes, *sorted({i.class_name for i in insts})]))
    opts = WriteOptions(
        root=root,
        classes=classes,
        decimals=DECIMALS,
        keep_images=True,  # LabelMe and YOLO point at the original images
        model_version=model_version,
        origin_format=str(manifest["job"].get("format") or ""),
        origin=manifest.get("origin"),
        origins={Path(r["image"]): r["origin"] for r in records if "origin" in r},
    )
    written = {fmt: str(write(fmt, insts, out / fmt, opts)) for fmt in formats}
    review = _review_rows(records, review_below)
    if review_below is not None:
        atomic_write_csv(out / "review.csv", review, ["image", "ref", "class", "score", "source"])
    skipped = _skipped_rows(manifest, records)
    atomic_write_csv(out / "skipped.csv", skipped, ["where", "reason"])
    scores = [float(i.score) for i in insts if i.score is not None]
    summary = {
        "images": len(records),
        "objects": len(insts),
        "errors": sum("error" in r for r in records),
        "skipped": len(skipped),
        "review": len(review) if review_below is not None else None,
        "mean_score": round(float(np.mean(scores)), 4) if scores else None,
        "outputs": written,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def _review_rows(records: list[dict[str, Any]], below: float | None) -> list[dict[str, Any]]:
    if below is None:
        return []
    rows = [
        {
            "image": r["key"],
            "ref": o["ref"],
            "class": o["class"],
            "score": float(o["score"]),
            "source": o["source"],
        }
        for r in records
        for o in r.get("objects", [])
        if float(o["score"]) < below
    ]
    return sorted(rows, key=lambda x: (x["score"], x["image"], x["ref"]))


def _skipped_rows(manifest: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = list(manifest.get("read_skipped", []))
    for r in records:
        if "error" in r:
            rows.append({"where": r["image"], "reason": r["error"]})
        rows.extend(r.get("skipped", []))
    return rows


# --- the command -----------------------------------------------------------------------------------------
def predict_dataset(
    boxes_path: str | Path,
    out: str | Path,
    *,
    format: str | None = None,
    image_dir: str | Path | None = None,
    weights: str | None = None,
    mask_weights: str | None = None,
    variant: str = "lite",
    context: float = INFERENCE.context,
    shard: Shard = Shard(),
    workers: int = 1,
    threads: int = 1,
    runner: str = "local",
    ray_address: str | None = None,
    review_below: float | None = None,
    allow_outside: bool = False,
    start: str = "auto",
    tolerance: float = INFERENCE.tolerance,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Trace every box of a box file into ``out`` (see the module's docstring); the outputs are written when
    the run has one shard, else by :func:`merge` once all have finished. Images outside the image root are
    skipped unless ``allow_outside`` (:func:`polyrnn.formats.confine`). Returns the counts (and the
    merge's summary under ``"merged"``)."""
    from polyrnn.formats import read_boxes

    if runner not in ("local", "ray"):
        raise RunError(f"unknown runner '{runner}' (local or ray)")
    out = Path(out)
    boxes = read_boxes(boxes_path, format, image_dir=image_dir, allow_outside=allow_outside)
    job = {
        "boxes": str(Path(boxes_path).resolve()),
        "format": boxes.format,
        "image_dir": str(Path(image_dir).resolve()) if image_dir else None,
        "weights": str(Path(weights).resolve()) if weights and weights != "none" else weights,
        "mask_weights": str(Path(mask_weights).resolve())
        if mask_weights and mask_weights != "none"
        else mask_weights,
        "variant": variant,
        "context": context,
        "shards": shard.count,
        **({"start": start} if start != "auto" else {}),
        "tolerance": tolerance,  # always: the default changed once (0.75 -> 2.0), a resume must not mix them
    }
    prepare(out, job, boxes)
    shard_file = out / "shards" / f"{shard.name}.jsonl"
    jobs, done = todo(boxes, shard, shard_file)
    total = len(jobs) + done
    if log is not None:
        where = f"shard {shard.index}/{shard.count}: " if shard.count > 1 else ""
        log(
            f"polyrnn predict: {where}{total} images ({done} done before), {boxes.boxes} boxes in "
            f"{len(boxes.images)} images read from {boxes_path} ({boxes.format}); "
            f"{len(boxes.skipped)} skipped"
        )
        from_polygons = sum("polygon's box" in o.ref for i in boxes.images for o in i.objects)
        if from_polygons:
            log(f"{from_polygons} of the boxes are polygons' bounds: those objects are traced again")
        if boxes.boxes == 0:
            log(
                f"no box to trace in {boxes_path}: {boxes.format} boxes are "
                f"{FORMAT_BOXES.get(boxes.format, 'its boxes')}; see what was skipped below"
            )
        for s in boxes.skipped[:10]:
            log(f"skipped {s}")
    models = {
        "weights": weights,
        "mask_weights": mask_weights,
        "variant": variant,
        "context": context,
        "start": start,
        "tolerance": tolerance,
    }
    if runner == "ray":
        from polyrnn.batch.ray_engine import ray_records

        records = ray_records(jobs, models=models, threads=threads, workers=workers, address=ray_address)
    else:
        records = local_records(jobs, models=models, workers=workers, threads=threads)
    writer = ShardWriter(shard_file)
    try:
        counts = drive(records, writer, total=total, done=done, log=log)
    finally:
        writer.close()
    finish_shard(out, shard, counts, total)
    result: dict[str, Any] = {**counts, "done_before": done, "shard": f"{shard.index}/{shard.count}"}
    if shard.count == 1:
        result["merged"] = merge(out, review_below=review_below)
    return result
