"""The work of one process of ``polyrnn predict --dataset``: load the models once, trace images one by one.

Used by :mod:`polyrnn.batch.run` (this process, or a pool of spawned ones) and by the Ray actors of
:mod:`polyrnn.batch.ray_engine`, so every engine traces an image with the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from polyrnn.data.instance import DataError, Skip
from polyrnn.formats.base import ImageBoxes


# --- one image -------------------------------------------------------------------------------------------
def trace_image(annotator: Any, job: ImageBoxes) -> dict[str, Any]:
    """One image's record: every box with its polygon (None when the model found nothing), score and
    source; the boxes left out and why; or the error that made the image unusable."""
    from polyrnn.data.instance import load_image

    record: dict[str, Any] = {"key": job.key, "image": str(job.path)}
    if job.origin is not None:
        record["origin"] = job.origin
    try:
        image = load_image(job.path)
    except DataError as e:
        record["error"] = str(e)
        return record
    h, w = image.shape[:2]
    record.update(width=w, height=h)
    usable, skipped = job.pixel_boxes((w, h))
    if job.size is not None and tuple(job.size) != (w, h):
        skipped.insert(
            0, Skip(job.key, f"the box file says {job.size[0]}x{job.size[1]}, the image is {w}x{h}")
        )
    traced = annotator.annotate(image, [b for _, b in usable]) if usable else []
    record["objects"] = [
        {
            "ref": obj.ref,
            "class": obj.class_name,
            "box": [round(v, 3) for v in box],
            "polygon": None if t.polygon is None else t.polygon.tolist(),  # exact: see write_coco
            "score": round(float(t.score), 4),
            "source": t.source,
            **({"id": obj.id} if obj.id is not None else {}),
        }
        for (obj, box), t in zip(usable, traced, strict=True)
    ]
    record["skipped"] = [{"where": s.where, "reason": s.reason} for s in skipped]
    return record


# --- a process's models ----------------------------------------------------------------------------------
_ANNOTATOR: Any = None
_LOADED: dict[str, Any] = {}


def init_worker(models: dict[str, Any], threads: int) -> None:
    """Load the models of this process (once: a second run with the same models reuses them)."""
    global _ANNOTATOR
    from polyrnn.runtime import set_threads

    set_threads(threads)
    if _ANNOTATOR is None or _LOADED != models:
        from polyrnn.batch.annotate import Annotator

        _ANNOTATOR = Annotator.from_weights(**models)
        _LOADED.clear()
        _LOADED.update(models)


def work(job: ImageBoxes) -> dict[str, Any]:
    return trace_image(_ANNOTATOR, job)


def local_records(
    jobs: list[ImageBoxes], *, models: dict[str, Any], workers: int, threads: int
) -> Iterator[dict[str, Any]]:
    """Records of ``jobs`` from ``workers`` processes (each loads the models once and uses ``threads``
    threads), in the order they finish; one worker runs in this process."""
    if not jobs:
        return
    if workers <= 1:
        init_worker(models, threads)
        for job in jobs:
            yield work(job)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a clean interpreter per worker: no torch thread pools inherited
    with ctx.Pool(workers, initializer=init_worker, initargs=(models, threads)) as pool:
        yield from pool.imap_unordered(work, jobs, chunksize=1)
