"""Data-parallel training (torchrun, gloo on CPU): the sampler's shares, one run folder written by rank 0,
resume, and weights close to one process with the doubled batch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from polyrnn.build import build_from_config
from polyrnn.config import load_train_config
from polyrnn.data.dataset import LengthGroupedBatchSampler
from polyrnn.data.instance import Instance
from polyrnn.training import run_training


def _instances(n_images: int, per_image: int) -> list[Instance]:
    square = np.array([[0, 0], [9, 0], [9, 9], [0, 9]], dtype=np.float64)
    return [
        Instance(
            image_path=f"im{i}.jpg", image_size=(64, 64), class_name="a", box=(0, 0, 9, 9), polygons=[square]
        )
        for i in range(n_images)
        for _ in range(per_image)
    ]  # type: ignore[arg-type]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_exactly_the_batches_of_one_process(world):
    insts = _instances(13, 3)  # 39 instances: uneven last batches
    lengths = [int(v) for v in np.random.default_rng(0).integers(4, 30, len(insts))]
    single = LengthGroupedBatchSampler(insts, lengths, batch_size=4 * world, seed=3, pool_images=5)
    ranks = [
        LengthGroupedBatchSampler(insts, lengths, batch_size=4, seed=3, pool_images=5, rank=r, world=world)
        for r in range(world)
    ]
    for epoch in (1, 2):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        per_rank = [list(r) for r in ranks]
        assert len({len(b) for b in per_rank}) == 1  # every rank steps the same number of times
        for k, whole in enumerate(single):
            shares = [b[k] for b in per_rank]
            assert all(shares)
            assert sorted(set().union(*shares)) == sorted(whole)
            assert sum(len(s) for s in shares) >= len(whole)
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedBatchSampler(insts, lengths, batch_size=4, rank=2, world=2)


def _update_distance(a: dict, b: dict, start: dict) -> float:
    """|(a - start) - (b - start)| / |b - start| over the trained parameters (not the BN statistics)."""
    num = den = 0.0
    for k in b:
        if b[k].is_floating_point() and "running" not in k:
            da, db = a[k] - start[k], b[k] - start[k]
            num += float(((da - db) ** 2).sum())
            den += float((db**2).sum())
    return (num / den) ** 0.5


@pytest.mark.shared
def test_two_process_training_matches_the_doubled_batch(datasets, tmp_path):
    common = ["epochs=1", "data.val=", f"out={tmp_path}", f"data.train=[{datasets / 'labelme-examples'}]"]
    env = {**os.environ, "POLYRNN_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "polyrnn.cli",
        "train",
        "--config",
        "tiny",
        *common,
        "batch_size=4",
        "--name",
        "ddp",
    ]
    r = subprocess.run([*cmd, "--nproc", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "data-parallel: 2 processes x batch 4 = 8 a step" in r.stdout
    assert r.stdout.count("run folder:") == 1  # rank 0 alone reports and writes
    run = tmp_path / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "results.csv", "results.png", "weights"]
    assert len((run / "results.csv").read_text().strip().splitlines()) == 2

    for name, batch in (("single8", 8), ("single4", 4)):
        run_training(
            load_train_config("tiny", [*common, f"batch_size={batch}", f"name={name}"]), log=lambda *_: None
        )
    load = lambda n: torch.load(tmp_path / n / "weights" / "last.pt", weights_only=True)["model"]  # noqa: E731
    torch.manual_seed(0)  # the runs' seed: the same initial weights
    start = build_from_config(load_train_config("tiny", []).model).state_dict()
    ddp, doubled, same_batch = load("ddp"), load("single8"), load("single4")
    # Tolerance: BatchNorm normalises each rank's half of the batch (SyncBatchNorm is CUDA-only) and the
    # decoder's loss is a mean over each rank's tokens, so the update is not bit-identical: it must lie within
    # half of its own size of the doubled batch's update, and nearer it than one process with the same batch.
    d = _update_distance(ddp, doubled, start)
    assert d < 0.5
    assert d < _update_distance(same_batch, doubled, start)

    r = subprocess.run(
        [*cmd, "--nproc", "2", "--resume", "--epochs", "2"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    assert int(torch.load(run / "weights" / "last.pt", weights_only=True)["epoch"]) == 2
    assert len((run / "results.csv").read_text().strip().splitlines()) == 3
