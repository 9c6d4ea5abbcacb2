"""The same pre-annotation on a Ray cluster (``polyrnn predict --dataset ... --runner ray``).

Ray Data carries the images' box lists to a pool of actors (``map_batches`` with a callable class: each actor
loads the models once and traces one image per call) and streams the records back to the driver, which writes
them to the run's shard file exactly as the local engine does, so a Ray run resumes, shards and merges like
any other. Start a cluster as usual (``ray start --head`` / ``ray start --address=...``, or a KubeRay/SLURM
launcher) and run the command on the head with ``--ray-address auto`` (or ``RAY_ADDRESS``); the images must be
readable at the same path on every node (a shared file system).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from polyrnn.batch import worker
from polyrnn.formats.base import ImageBoxes


class RayTracer:
    """A Ray Data actor: the models once, then ``{"job": [json, ...]}`` -> ``{"record": [json, ...]}``."""

    def __init__(self, models: dict[str, Any], threads: int) -> None:
        worker.init_worker(models, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        records = [worker.work(ImageBoxes.from_dict(json.loads(str(j)))) for j in batch["job"]]
        return {"record": [json.dumps(r) for r in records]}


def ray_records(
    jobs: list[ImageBoxes], *, models: dict[str, Any], threads: int, workers: int, address: str | None = None
) -> Iterator[dict[str, Any]]:
    """Records of ``jobs`` traced by ``workers`` Ray actors (one CPU each), in the order they finish.
    Connects to ``address`` (or ``RAY_ADDRESS``), else starts a local Ray runtime, unless Ray is running
    in this process already."""
    try:
        import ray
    except ImportError:
        raise ValueError("--runner ray needs Ray: pip install 'polyrnn[ray]'") from None
    if not jobs:
        return
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = ray.data.from_items(
        [{"job": json.dumps(j.to_dict())} for j in jobs],
        override_num_blocks=min(len(jobs), max(4 * workers, 200)),
    )
    ds = items.map_batches(
        RayTracer,
        fn_constructor_kwargs={"models": models, "threads": threads},
        batch_size=1,
        concurrency=workers,
        num_cpus=threads,
    )
    for row in ds.iter_rows():
        yield json.loads(row["record"])
